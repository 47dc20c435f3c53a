//! In-memory tests: a client and a server `Link` with rcgen certificates
//! handshake and exchange frames by shuttling bytes, no sockets.

use std::io;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

use super::*;

type Frames = Vec<Result<Vec<u8>, FrameError>>;

struct Pki {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

fn pki() -> Pki {
    let ck = rcgen::generate_simple_self_signed(vec!["link.test".to_owned()]).expect("cert");
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let server = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
    let mut roots = RootCertStore::empty();
    roots.add(cert).expect("root");
    let client = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Pki {
        server: Arc::new(server),
        client: Arc::new(client),
    }
}

fn client_link(pki: &Pki, max_frame: usize) -> Link<ClientConnection> {
    let name = ServerName::try_from("link.test").expect("name");
    Link::new(
        ClientConnection::new(Arc::clone(&pki.client), name).expect("client"),
        max_frame,
    )
}

fn server_link(pki: &Pki, max_frame: usize) -> Link<ServerConnection> {
    Link::new(
        ServerConnection::new(Arc::clone(&pki.server)).expect("server"),
        max_frame,
    )
}

/// Feeds `bytes` in pieces of at most `piece` bytes, pulling frames
/// whenever the link stops taking; everything must be taken.
fn feed<C, S>(link: &mut Link<C>, bytes: &[u8], piece: usize) -> Result<Frames, LinkError>
where
    C: Deref<Target = ConnectionCommon<S>> + DerefMut,
    S: SideData,
{
    let mut frames = Vec::new();
    for chunk in bytes.chunks(piece.max(1)) {
        let mut off = 0;
        while off < chunk.len() {
            let n = link.handle_ciphertext(&chunk[off..])?;
            off += n;
            let before = frames.len();
            while let Some(f) = link.next_frame() {
                frames.push(f);
            }
            assert!(
                n > 0 || frames.len() > before,
                "the link took nothing and had no frame"
            );
        }
    }
    while let Some(f) = link.next_frame() {
        frames.push(f);
    }
    Ok(frames)
}

/// Everything one link has to send, in several turns if need be.
fn transmit_all<C, S>(link: &mut Link<C>) -> (Vec<u8>, usize)
where
    C: Deref<Target = ConnectionCommon<S>> + DerefMut,
    S: SideData,
{
    let mut out = Vec::new();
    let mut turns = 0;
    loop {
        let t = link.poll_transmit(&mut out).expect("transmit");
        turns += 1;
        assert!(!t.blocked, "a Vec never blocks");
        if !t.more {
            return (out, turns);
        }
    }
}

/// Shuttles bytes both ways until neither side has anything to send;
/// returns the frames each side received (client's, server's).
fn shuttle(
    c: &mut Link<ClientConnection>,
    s: &mut Link<ServerConnection>,
    piece: usize,
) -> (Frames, Frames) {
    let (mut at_client, mut at_server) = (Vec::new(), Vec::new());
    for _ in 0..1000 {
        let (to_server, _) = transmit_all(c);
        at_server.extend(feed(s, &to_server, piece).expect("server reads"));
        let (to_client, _) = transmit_all(s);
        at_client.extend(feed(c, &to_client, piece).expect("client reads"));
        if to_server.is_empty() && to_client.is_empty() {
            return (at_client, at_server);
        }
    }
    panic!("the links never went quiet");
}

fn ok(frames: &[&[u8]]) -> Frames {
    frames.iter().map(|f| Ok(f.to_vec())).collect()
}

fn connected(pki: &Pki, max_frame: usize) -> (Link<ClientConnection>, Link<ServerConnection>) {
    let (mut c, mut s) = (client_link(pki, max_frame), server_link(pki, max_frame));
    let (a, b) = shuttle(&mut c, &mut s, usize::MAX);
    assert!(a.is_empty() && b.is_empty());
    assert!(!c.is_handshaking() && !s.is_handshaking());
    (c, s)
}

#[test]
fn client_and_server_handshake_and_exchange_frames() {
    let pki = pki();
    let (mut c, mut s) = (client_link(&pki, 1024), server_link(&pki, 1024));
    assert!(c.is_handshaking() && c.wants_write());
    // Frames queued before the handshake wait for it.
    c.queue_frame(b"{\"method\":\"init\"}\n".to_vec())
        .expect("queued");
    assert_eq!(c.queued_bytes(), 18);
    let (at_client, at_server) = shuttle(&mut c, &mut s, usize::MAX);
    assert!(at_client.is_empty());
    assert_eq!(at_server, ok(&[b"{\"method\":\"init\"}"]));
    assert!(!c.is_handshaking() && !s.is_handshaking());
    assert_eq!(c.queued_bytes(), 0);
    assert_eq!(
        s.conn().server_name(),
        Some("link.test"),
        "the inner connection is reachable"
    );
    assert!(c.conn().peer_certificates().is_some());
    s.queue_frame(b"{\"id\":1,\"resp\":\"success\"}\r\n".to_vec())
        .expect("queued");
    s.queue_frame(b"{\"id\":2}\n".to_vec()).expect("queued");
    let (at_client, at_server) = shuttle(&mut c, &mut s, usize::MAX);
    assert!(at_server.is_empty());
    assert_eq!(
        at_client,
        ok(&[b"{\"id\":1,\"resp\":\"success\"}", b"{\"id\":2}"])
    );
    assert!(!c.wants_write() && !s.wants_write());
    assert!(c.wants_read() && s.wants_read());
}

#[test]
fn frames_split_anywhere_arrive_whole_and_in_order() {
    let pki = pki();
    let (mut c, mut s) = connected(&pki, 1024);
    let mut want = Vec::new();
    for i in 0..300u32 {
        let frame = format!("{{\"id\":{i},\"method\":\"getinfo.kernel\"}}\n");
        // Frame boundaries and queue boundaries differ: each frame is
        // queued in two pieces, cut at a different place.
        let bytes = frame.into_bytes();
        let cut = (i as usize * 7) % bytes.len();
        want.push(Ok(bytes[..bytes.len() - 1].to_vec()));
        c.queue_frame(bytes[..cut].to_vec()).expect("queued");
        c.queue_frame(bytes[cut..].to_vec()).expect("queued");
    }
    let (ciphertext, _) = transmit_all(&mut c);
    // The same ciphertext, fed in pieces of every size from 1 byte up.
    for piece in [1, 2, 3, 5, 64, 4095, 4097, 16 << 10, usize::MAX] {
        let mut s2 = server_link(&pki, 1024);
        let mut c2 = client_link(&pki, 1024);
        shuttle(&mut c2, &mut s2, usize::MAX);
        for i in 0..300u32 {
            let frame = format!("{{\"id\":{i},\"method\":\"getinfo.kernel\"}}\n");
            c2.queue_frame(frame.into_bytes()).expect("queued");
        }
        let (bytes, _) = transmit_all(&mut c2);
        let got = feed(&mut s2, &bytes, piece).expect("read");
        assert_eq!(got, want, "pieces of {piece} bytes");
    }
    assert_eq!(feed(&mut s, &ciphertext, 1).expect("read"), want);
}

#[test]
fn one_call_stops_at_the_first_complete_frame() {
    let pki = pki();
    let (mut c, mut s) = connected(&pki, 8192);
    // Two TLS records, each one frame, each larger than what rustls
    // reads at once (4 KiB).
    let a = format!("{{\"a\":\"{}\"}}", "a".repeat(5000));
    let b = format!("{{\"b\":\"{}\"}}", "b".repeat(5000));
    c.queue_frame(format!("{a}\n").into_bytes())
        .expect("queued");
    let (mut bytes, _) = transmit_all(&mut c);
    c.queue_frame(format!("{b}\n").into_bytes())
        .expect("queued");
    bytes.extend(transmit_all(&mut c).0);
    let n = s.handle_ciphertext(&bytes).expect("read");
    assert!(n > 0 && n < bytes.len(), "took {n} of {}", bytes.len());
    assert!(s.has_frame() && !s.wants_read());
    assert_eq!(
        s.handle_ciphertext(&bytes[n..]).expect("read"),
        0,
        "a frame waits"
    );
    assert_eq!(s.next_frame(), Some(Ok(a.into_bytes())));
    assert_eq!(s.next_frame(), None);
    assert_eq!(
        s.handle_ciphertext(&bytes[n..]).expect("read"),
        bytes.len() - n
    );
    assert_eq!(s.next_frame(), Some(Ok(b.into_bytes())));
}

#[test]
fn a_too_long_frame_is_one_error_and_skipped() {
    let pki = pki();
    let (mut c, mut s) = connected(&pki, 64);
    c.queue_frame(b"{\"id\":1}\n".to_vec()).expect("queued");
    let mut big = vec![b'x'; 10_000];
    big.push(b'\n');
    c.queue_frame(big).expect("queued");
    c.queue_frame(b"{\"id\":3}\n".to_vec()).expect("queued");
    let (_, at_server) = shuttle(&mut c, &mut s, 100);
    assert_eq!(
        at_server,
        vec![
            Ok(b"{\"id\":1}".to_vec()),
            Err(FrameError::TooLong { limit: 64 }),
            Ok(b"{\"id\":3}".to_vec()),
        ]
    );
    assert_eq!(s.buffered_len(), 0, "the long line was never buffered");
}

#[test]
fn the_queue_bound_congests_then_refuses_past_the_cap() {
    let pki = pki();
    let mut c = client_link(&pki, 1024);
    assert_eq!(c.bound(), ANSWER_BOUND_MIN);
    let frame = vec![b'x'; 1 << 20];
    let mut queued = 0;
    while queued + frame.len() < c.bound() {
        c.queue_frame(frame.clone()).expect("under the bound");
        queued += frame.len();
        assert!(!c.congested());
    }
    c.queue_frame(frame.clone()).expect("the bound is soft");
    assert!(c.congested(), "at the bound");
    assert!(c.wants_read(), "still reading: refusals must be heard");
    // Past the read stop the link no longer reads ...
    c.queue_frame(vec![b'y'; read_stop(1024) - c.queued_bytes() + 1])
        .expect("under the cap");
    assert!(!c.wants_read());
    assert_eq!(
        c.handle_ciphertext(b"\x16\x03\x03").expect("nothing read"),
        0
    );
    // ... and refuses a frame that would cross the hard cap, handing it back.
    let err = c
        .queue_frame(vec![b'z'; READ_STOP_SLACK + 1])
        .expect_err("past the cap");
    assert_eq!(err.frame.len(), READ_STOP_SLACK + 1);
    assert_eq!(err.limit, queue_limit(1024));
    assert!(err.to_string().contains("send queue full"));
    let small = c.queue_frame(b"{}\n".to_vec());
    assert!(small.is_ok(), "what still fits is queued");
    assert!(c.queued_bytes() <= queue_limit(1024));
}

#[test]
fn the_bounds_follow_the_frame_limit() {
    assert_eq!(answer_bound(1024), 8 << 20);
    assert_eq!(answer_bound(64 << 20), 64 << 20);
    assert_eq!(read_stop(16 << 20), (32 << 20) + READ_STOP_SLACK);
    assert_eq!(read_stop(usize::MAX), usize::MAX);
    assert_eq!(queue_limit(usize::MAX), usize::MAX);
}

#[test]
fn the_write_budget_caps_one_turn_and_a_huge_frame_goes_over_several_in_order() {
    let pki = pki();
    let max = 8 << 20;
    let (mut c, mut s) = connected(&pki, max);
    let mut huge: Vec<u8> = (0..(3 << 20) + 12_345)
        .map(|i: u32| b"abcdefghijklmnopqrstuvwxyz0123456789"[i as usize % 36])
        .collect();
    huge.push(b'\n');
    c.queue_frame(b"{\"before\":1}\n".to_vec()).expect("queued");
    c.queue_frame(huge.clone()).expect("queued");
    c.queue_frame(b"{\"after\":1}\n".to_vec()).expect("queued");
    let mut out = Vec::new();
    let t = c.poll_transmit(&mut out).expect("transmit");
    assert_eq!(t.plaintext, WRITE_BUDGET, "one turn moves the budget");
    assert!(t.more && !t.blocked);
    assert!(t.ciphertext > WRITE_BUDGET && t.ciphertext == out.len());
    let (rest, turns) = transmit_all(&mut c);
    assert!(turns >= 3, "the rest took {turns} more turns");
    out.extend(rest);
    let got = feed(&mut s, &out, 64 << 10).expect("read");
    huge.pop();
    assert_eq!(
        got,
        vec![
            Ok(b"{\"before\":1}".to_vec()),
            Ok(huge),
            Ok(b"{\"after\":1}".to_vec())
        ]
    );
}

/// Takes `room` bytes, then says `WouldBlock`.
struct Tight {
    buf: Vec<u8>,
    room: usize,
}

impl io::Write for Tight {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = b.len().min(self.room);
        self.room -= n;
        self.buf.extend_from_slice(&b[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_blocked_sink_is_not_an_error_and_sending_resumes() {
    let pki = pki();
    let (mut c, mut s) = connected(&pki, 1 << 20);
    let frames: Vec<Vec<u8>> = (0..50)
        .map(|i| format!("{{\"id\":{i},\"pad\":\"{}\"}}\n", "p".repeat(3000)).into_bytes())
        .collect();
    for f in &frames {
        c.queue_frame(f.clone()).expect("queued");
    }
    let mut sink = Tight {
        buf: Vec::new(),
        room: 10_000,
    };
    let t = c.poll_transmit(&mut sink).expect("transmit");
    assert!(t.blocked && !t.more);
    assert_eq!(sink.buf.len(), 10_000);
    assert!(c.wants_write());
    for _ in 0..1000 {
        sink.room = 7_000;
        let t = c.poll_transmit(&mut sink).expect("transmit");
        if !t.blocked {
            break;
        }
    }
    assert!(!c.wants_write());
    let got = feed(&mut s, &sink.buf, 1000).expect("read");
    let want: Frames = frames
        .iter()
        .map(|f| Ok(f[..f.len() - 1].to_vec()))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn garbage_ciphertext_is_a_typed_error_and_an_alert() {
    let pki = pki();
    let mut s = server_link(&pki, 1024);
    let err = s
        .handle_ciphertext(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect_err("not TLS");
    assert!(matches!(err, LinkError::Tls(_)), "{err:?}");
    assert!(err.to_string().starts_with("TLS: "), "{err}");
    assert!(s.is_failed() && !s.wants_read());
    assert!(matches!(
        s.handle_ciphertext(b"more"),
        Err(LinkError::Failed)
    ));
    // The alert telling the peer why still goes out; no plaintext does.
    s.queue_frame(b"{}\n".to_vec()).expect("queued");
    let mut out = Vec::new();
    let t = s.poll_transmit(&mut out).expect("alert");
    assert!(t.ciphertext > 0 && t.plaintext == 0);
    assert_eq!(out[0], 0x15, "a TLS alert record");
    // Garbage after a good handshake fails the same way.
    let (mut c, mut s) = connected(&pki, 1024);
    assert!(matches!(
        s.handle_ciphertext(&[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5]),
        Err(LinkError::Tls(_))
    ));
    drop(c.queue_frame(b"{}\n".to_vec()));
}

#[test]
fn an_untrusted_server_fails_the_client_with_a_tls_error() {
    let (good, other) = (pki(), pki());
    let mut c = client_link(&other, 1024);
    let mut s = server_link(&good, 1024);
    let (hello, _) = transmit_all(&mut c);
    feed(&mut s, &hello, usize::MAX).expect("server reads the hello");
    let (answer, _) = transmit_all(&mut s);
    let err = feed(&mut c, &answer, usize::MAX).expect_err("unknown issuer");
    assert!(
        matches!(err, LinkError::Tls(rustls::Error::InvalidCertificate(_))),
        "{err:?}"
    );
    // The client's alert reaches the server as a TLS error too.
    let (alert, _) = transmit_all(&mut c);
    assert!(!alert.is_empty());
    assert!(matches!(
        feed(&mut s, &alert, usize::MAX),
        Err(LinkError::Tls(rustls::Error::AlertReceived(_)))
    ));
}

#[test]
fn close_notify_ends_reading_and_stops_plaintext() {
    let pki = pki();
    let (mut c, mut s) = connected(&pki, 1024);
    c.queue_frame(b"{\"last\":1}\n".to_vec()).expect("queued");
    let (mut bytes, _) = transmit_all(&mut c);
    c.queue_frame(b"{\"never\":1}\n".to_vec()).expect("queued");
    c.send_close_notify();
    assert!(c.wants_write());
    bytes.extend(transmit_all(&mut c).0);
    assert_eq!(c.queued_bytes(), 12, "nothing goes out after close_notify");
    let got = feed(&mut s, &bytes, usize::MAX).expect("read");
    assert_eq!(got, ok(&[b"{\"last\":1}"]));
    assert!(s.peer_closed() && !s.wants_read());
    assert_eq!(s.handle_ciphertext(b"x").expect("ignored"), 0);
}

#[test]
fn one_call_takes_at_most_the_read_budget() {
    let pki = pki();
    let max = 16 << 20;
    let (mut c, mut s) = connected(&pki, max);
    // One frame of 6 MiB: no frame completes before the budget is spent.
    let mut big = vec![b'q'; 6 << 20];
    big.push(b'\n');
    c.queue_frame(big).expect("queued");
    let (bytes, _) = transmit_all(&mut c);
    let n = s.handle_ciphertext(&bytes).expect("read");
    assert!(n <= READ_BUDGET && n > READ_BUDGET - (20 << 10), "took {n}");
    assert!(!s.has_frame());
    let got = feed(&mut s, &bytes[n..], usize::MAX).expect("read");
    assert_eq!(got.len(), 1);
    assert!(matches!(&got[0], Ok(f) if f.len() == 6 << 20));
}

#[test]
fn the_end_of_the_stream_is_clean_only_after_close_notify() {
    let pki = pki();
    let (mut c, mut s) = connected(&pki, 1024);
    c.send_close_notify();
    let (bytes, _) = transmit_all(&mut c);
    assert!(feed(&mut s, &bytes, usize::MAX).expect("read").is_empty());
    s.handle_eof().expect("a clean close");
    assert!(!s.wants_read());
    let (_, mut s) = connected(&pki, 1024);
    let err = s.handle_eof().expect_err("no close_notify");
    assert!(
        matches!(&err, LinkError::Plaintext(e) if e.kind() == io::ErrorKind::UnexpectedEof),
        "{err:?}"
    );
    assert!(err.to_string().contains("close_notify"), "{err}");
    assert!(!s.wants_read() && !s.is_failed());
    assert_eq!(s.handle_ciphertext(b"late").expect("ignored"), 0);
}

#[test]
fn arbitrary_bytes_never_panic_and_fail_for_good() {
    let pki = pki();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..60 {
        // Fresh links and links past their handshake, both ends.
        let (mut c, mut s) = if round % 3 == 0 {
            connected(&pki, 256)
        } else {
            (client_link(&pki, 256), server_link(&pki, 256))
        };
        for _ in 0..8 {
            let len = (next() % 600) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 2 == 0 && !bytes.is_empty() {
                // Often a plausible record header in front.
                bytes[0] = [0x14, 0x15, 0x16, 0x17][(next() % 4) as usize];
            }
            for link_is_server in [true, false] {
                let result = if link_is_server {
                    s.handle_ciphertext(&bytes)
                } else {
                    c.handle_ciphertext(&bytes)
                };
                let failed = if link_is_server {
                    s.is_failed()
                } else {
                    c.is_failed()
                };
                match result {
                    Ok(n) => assert!(n <= bytes.len()),
                    Err(_) => assert!(failed, "an error fails the link"),
                }
                if failed {
                    let again = if link_is_server {
                        s.handle_ciphertext(b"x")
                    } else {
                        c.handle_ciphertext(b"x")
                    };
                    assert!(matches!(again, Err(LinkError::Failed)));
                }
                while s.next_frame().is_some() {}
                while c.next_frame().is_some() {}
            }
            let mut out = Vec::new();
            let _ = s.poll_transmit(&mut out);
            let _ = c.poll_transmit(&mut out);
        }
    }
}
