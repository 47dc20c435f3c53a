//! Loads the real `libgetinfo_sockets.so` through the host's loader and
//! finds the sockets this test opens itself (loopback only), with its own
//! pid and name.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

use basicagent_abi::{retcode, Plugin};
use basicagent_testsupport::plugin::{self, call_args, data, load_built};
use serde_json::Value;

fn call(plugin: &Plugin, args: &str) -> Vec<Value> {
    let v = data(&call_args(plugin, args));
    let sockets = v["sockets"].as_array().expect("sockets").clone();
    assert_eq!(v["count"].as_u64(), Some(sockets.len() as u64));
    sockets
}

/// The kernel's comm for this process: the executable's name, cut to 15
/// bytes (independent of /proc).
fn my_comm() -> String {
    let exe = std::env::current_exe().expect("current_exe");
    let name = exe.file_name().expect("file name").to_string_lossy();
    name.chars().take(15).collect()
}

fn find<'a>(sockets: &'a [Value], proto: &str, local: SocketAddr) -> Option<&'a Value> {
    sockets.iter().find(|s| {
        s["proto"] == proto
            && s["local_address"] == local.ip().to_string().as_str()
            && s["local_port"] == local.port()
    })
}

fn assert_mine(s: &Value) {
    assert_eq!(s["pid"], std::process::id(), "{s}");
    assert_eq!(s["process"].as_str(), Some(my_comm().as_str()), "{s}");
    assert!(s["inode"].as_u64().is_some_and(|i| i > 0));
}

#[test]
fn descriptor_and_usage() {
    let p = load_built("getinfo_sockets");
    assert_eq!(p.info().name, "getinfo_sockets");
    assert_eq!(p.info().methods, vec!["getinfo.sockets".to_owned()]);
    for word in [
        "-l",
        "-t",
        "-u",
        "-a",
        "proto",
        "local_address",
        "local_port",
        "remote_address",
        "remote_port",
        "state",
        "uid",
        "inode",
        "pid",
        "process",
        "UNCONN",
    ] {
        assert!(p.info().usage.contains(word), "usage lacks {word}");
    }
}

#[test]
fn own_tcp_listener_and_udp_socket() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind tcp");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let (l_addr, u_addr) = (
        listener.local_addr().expect("addr"),
        udp.local_addr().expect("addr"),
    );
    let p = load_built("getinfo_sockets");
    let all = call(&p, "");
    let l = find(&all, "tcp", l_addr).expect("listener found");
    assert_eq!(l["state"], "LISTEN");
    assert_eq!(l["remote_address"], "0.0.0.0");
    assert_eq!(l["remote_port"], 0);
    assert_mine(l);
    let u = find(&all, "udp", u_addr).expect("udp socket found");
    assert_eq!(u["state"], "UNCONN");
    assert_mine(u);
    // -l keeps both; -t and -u split them.
    let listening = call(&p, "-l");
    assert!(find(&listening, "tcp", l_addr).is_some());
    assert!(find(&listening, "udp", u_addr).is_some());
    let tcp = call(&p, "-t");
    assert!(tcp
        .iter()
        .all(|s| s["proto"] == "tcp" || s["proto"] == "tcp6"));
    assert!(find(&tcp, "tcp", l_addr).is_some());
    let udp_only = call(&p, "-u");
    assert!(udp_only
        .iter()
        .all(|s| s["proto"] == "udp" || s["proto"] == "udp6"));
    assert!(find(&udp_only, "udp", u_addr).is_some());
}

#[test]
fn established_pair_and_connected_udp() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let server_addr = listener.local_addr().expect("addr");
    let client = TcpStream::connect(server_addr).expect("connect");
    let (_server_side, peer) = listener.accept().expect("accept");
    let client_addr = client.local_addr().expect("addr");
    assert_eq!(peer, client_addr);
    let a = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    let b = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
    a.connect(b.local_addr().expect("addr"))
        .expect("udp connect");
    let p = load_built("getinfo_sockets");
    let all = call(&p, "");
    let c = find(&all, "tcp", client_addr).expect("client side");
    assert_eq!(c["state"], "ESTABLISHED");
    assert_eq!(c["remote_port"], server_addr.port());
    assert_eq!(c["remote_address"], "127.0.0.1");
    assert_mine(c);
    let s = all
        .iter()
        .find(|s| {
            s["proto"] == "tcp"
                && s["local_port"] == server_addr.port()
                && s["remote_port"] == client_addr.port()
        })
        .expect("server side");
    assert_eq!(s["state"], "ESTABLISHED");
    assert_mine(s);
    let u = find(&all, "udp", a.local_addr().expect("addr")).expect("connected udp");
    assert_eq!(u["state"], "ESTABLISHED");
    assert_eq!(u["remote_port"], b.local_addr().expect("addr").port());
    // -l leaves the connections out.
    let listening = call(&p, "-l");
    assert!(find(&listening, "tcp", client_addr).is_none());
    assert!(find(&listening, "udp", a.local_addr().expect("addr")).is_none());
    assert!(find(&listening, "tcp", server_addr).is_some());
}

#[test]
fn ipv6_loopback() {
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        eprintln!("no IPv6 loopback here; skipped");
        return;
    };
    let udp = UdpSocket::bind("[::1]:0").expect("bind udp6");
    let p = load_built("getinfo_sockets");
    let all = call(&p, "-l");
    let l = find(&all, "tcp6", listener.local_addr().expect("addr")).expect("tcp6 listener");
    assert_eq!(l["local_address"], "::1");
    assert_eq!(l["remote_address"], "::");
    assert_mine(l);
    let u = find(&all, "udp6", udp.local_addr().expect("addr")).expect("udp6 socket");
    assert_mine(u);
}

#[test]
fn errors() {
    let p = load_built("getinfo_sockets");
    for bad in ["-x", "-l -a", "tcp", "-t 'x", "--all"] {
        let request = serde_json::json!({"args": bad}).to_string();
        let c = plugin::call(&p, &request);
        assert_eq!(c.retcode, retcode::INVALID_PARAMS, "{bad}: {}", c.message);
        assert!(
            c.message.contains("remote_address"),
            "usage missing: {}",
            c.message
        );
        assert!(c.data.is_none());
    }
    for bad in ["[1]", "\"x\"", "{", "42"] {
        assert_eq!(
            plugin::call(&p, bad).retcode,
            retcode::INVALID_REQUEST,
            "{bad}"
        );
    }
}
