//! The session's socket ↔ link pump: init in the client's last TLS flight, frames over many reads, and the recorded end of a session.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use serde_json::Value;
use util::{Agent, Pki, Server, NAME, WAIT};

const INIT: &str =
    r#"{"method":"init","hostname":"link-early","version":"0.1.0","name":"n","plugins":[]}"#;

#[test]
fn an_init_sent_with_the_clients_finished_is_served() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let sock = TcpStream::connect(server.listen).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut conn = ClientConnection::new(
        pki.client_config(false),
        ServerName::try_from(NAME).unwrap(),
    )
    .unwrap();
    // Written before the handshake: rustls sends it right behind its
    // Finished, in the same flight, and a ping behind it.
    conn.writer()
        .write_all(format!("{INIT}\n{{\"id\":7,\"method\":\"ping\"}}\n").as_bytes())
        .unwrap();
    let mut stream = StreamOwned::new(conn, sock);
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while text.matches('\n').count() < 2 {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {text}");
        text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["method"], "init");
    assert_eq!(lines[0]["resp"], "success");
    assert_eq!(lines[1]["id"], 7);
    assert_eq!(lines[1]["retcode"], 2);
}

#[test]
fn a_frame_far_larger_than_the_read_buffer_is_answered_and_the_next_one_too() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    let mut agent = Agent::connect(server.listen, pki.client_config(false)).unwrap();
    assert!(agent.init("link-big").contains("\"resp\":\"success\""));
    let id = "x".repeat(300 << 10);
    // Two frames in one write: 300 KiB then a small one.
    agent
        .send(&format!(
            "{{\"id\":\"{id}\",\"method\":\"ping\"}}\n{{\"id\":2,\"method\":\"ping\"}}"
        ))
        .unwrap();
    let big = agent.recv_json();
    assert_eq!(big["id"].as_str().map(str::len), Some(300 << 10));
    assert_eq!(big["retcode"], 2);
    let small = agent.recv_json();
    assert_eq!(small["id"], 2);
}

#[test]
fn the_end_of_a_session_is_recorded_in_the_same_words() {
    let pki = Pki::new();
    let server = Server::start(&pki, &[]);
    // A clean close: close_notify, then the socket.
    let mut agent = Agent::connect(server.listen, pki.client_config(false)).unwrap();
    assert!(agent.init("link-clean").contains("\"resp\":\"success\""));
    let stream = agent.stream.get_mut();
    stream.conn.send_close_notify();
    stream.conn.complete_io(&mut stream.sock).unwrap();
    stream.sock.shutdown(std::net::Shutdown::Write).unwrap();
    let e = server.wait_event("disconnect", |e| e["host"] == "link-clean");
    assert_eq!(e["reason"], "closed by peer", "{e}");
    drop(agent);
    // The socket closed without close_notify.
    let mut agent = Agent::connect(server.listen, pki.client_config(false)).unwrap();
    assert!(agent.init("link-cut").contains("\"resp\":\"success\""));
    agent
        .stream
        .get_mut()
        .sock
        .shutdown(std::net::Shutdown::Both)
        .unwrap();
    let e = server.wait_event("disconnect", |e| e["host"] == "link-cut");
    let reason = e["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("read: peer closed connection without sending TLS close_notify"),
        "{reason}"
    );
    // Garbage after init: a TLS error, and the server goes on serving.
    let mut agent = Agent::connect(server.listen, pki.client_config(false)).unwrap();
    assert!(agent.init("link-garbage").contains("\"resp\":\"success\""));
    agent
        .stream
        .get_mut()
        .sock
        .write_all(&[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5])
        .unwrap();
    let e = server.wait_event("disconnect", |e| e["host"] == "link-garbage");
    let reason = e["reason"].as_str().unwrap();
    assert!(reason.starts_with("read: "), "{reason}");
    let mut again = Agent::connect(server.listen, pki.client_config(false)).unwrap();
    assert!(again.init("link-after").contains("\"resp\":\"success\""));
}
