//! The resolver against a real (tiny, hand-written) DNS server on
//! 127.0.0.1: hosts-file lines first, then DNS answers, duplicates dropped;
//! an unreachable nameserver still yields the hosts lines. Loopback only.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use basicagent_host::resolve::{DnsLimits, ResolveError, Resolved, Resolver};

const TEST_NAME: &str = "agent.basicagent.test";

/// Answers A queries for [`TEST_NAME`] with 127.0.0.5 and 127.0.0.6, AAAA
/// queries for it with no record, anything else with NXDOMAIN.
struct DnsServer {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DnsServer {
    fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let queries = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (q, s) = (Arc::clone(&queries), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer(&buf[..n]) {
                    q.fetch_add(1, Ordering::Relaxed);
                    socket.send_to(&reply, peer).unwrap();
                }
            }
        });
        DnsServer {
            addr,
            queries,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Builds the reply to one query, `None` for something that is not one.
fn answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 || u16::from_be_bytes([query[4], query[5]]) != 1 {
        return None;
    }
    // Question: labels, then QTYPE and QCLASS.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(query.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*query.get(i)?, *query.get(i + 1)?]);
    let question = &query[12..i + 4];
    let ours = labels.join(".") == TEST_NAME;
    let answers: &[[u8; 4]] = if ours && qtype == 1 {
        &[[127, 0, 0, 5], [127, 0, 0, 6]]
    } else {
        &[]
    };
    let rcode = if ours { 0 } else { 3 }; // NOERROR / NXDOMAIN

    let mut r = Vec::with_capacity(512);
    r.extend_from_slice(&query[0..2]); // id
    r.push(0x80 | 0x04 | (query[2] & 0x01)); // QR, AA, RD copied
    r.push(0x80 | rcode); // RA, RCODE
    r.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    r.extend_from_slice(&(answers.len() as u16).to_be_bytes()); // ANCOUNT
    r.extend_from_slice(&[0, 0, 0, 0]); // NSCOUNT, ARCOUNT
    r.extend_from_slice(question);
    for ip in answers {
        r.extend_from_slice(&[0xc0, 12]); // pointer to the question's name
        r.extend_from_slice(&1u16.to_be_bytes()); // A
        r.extend_from_slice(&1u16.to_be_bytes()); // IN
        r.extend_from_slice(&60u32.to_be_bytes()); // TTL
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(ip);
    }
    Some(r)
}

struct Loop {
    poll: mio::Poll,
    resolver: Resolver,
}

impl Loop {
    fn new(hosts: &Path, nameserver: SocketAddr, limits: DnsLimits) -> Loop {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(1)).unwrap());
        let resolver =
            Resolver::spawn_with_limits(waker, hosts.to_owned(), vec![nameserver], limits).unwrap();
        Loop { poll, resolver }
    }

    /// Requests `name` and waits (in mio, as the reactor would) for the result.
    fn resolve(&mut self, token: u64, name: &str, port: u16) -> Resolved {
        self.resolver.request(token, name.to_owned(), port);
        let mut events = mio::Events::with_capacity(4);
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut merged: Vec<SocketAddr> = Vec::new();
        loop {
            while let Some(r) = self.resolver.try_result() {
                assert_eq!(r.token, token);
                match r.result {
                    Ok(v) => merged.extend(v),
                    Err(e) if merged.is_empty() => {
                        return Resolved {
                            token,
                            result: Err(e),
                            last: true,
                        }
                    }
                    Err(_) => {}
                }
                if r.last {
                    return Resolved {
                        token,
                        result: Ok(merged),
                        last: true,
                    };
                }
            }
            assert!(Instant::now() < deadline, "no result for {name}");
            self.poll
                .poll(&mut events, Some(Duration::from_secs(30)))
                .unwrap();
        }
    }
}

fn addrs(list: &[&str]) -> Vec<SocketAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// A UDP port on 127.0.0.1 that nothing listens on.
fn closed_port() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

fn fast() -> DnsLimits {
    DnsLimits {
        timeout: Duration::from_millis(300),
        attempts: 1,
    }
}

#[test]
fn hosts_lines_first_then_dns_deduplicated() {
    let dns = DnsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!(
            "127.0.0.6 {TEST_NAME}\n# 127.0.0.9 {TEST_NAME}\n127.0.0.1 other {}\n",
            TEST_NAME.to_uppercase()
        ),
    )
    .unwrap();
    let mut lp = Loop::new(&hosts, dns.addr, DnsLimits::default());

    let r = lp.resolve(1, TEST_NAME, 8443);
    assert_eq!(
        r.result.unwrap(),
        addrs(&["127.0.0.6:8443", "127.0.0.1:8443", "127.0.0.5:8443"])
    );
    assert!(dns.queries.load(Ordering::Relaxed) >= 1, "DNS was asked");

    // No hosts line: DNS alone, in answer order.
    std::fs::write(&hosts, "").unwrap();
    assert_eq!(
        lp.resolve(2, TEST_NAME, 1).result.unwrap(),
        addrs(&["127.0.0.5:1", "127.0.0.6:1"])
    );

    // NXDOMAIN with a hosts line: the hosts line; without one: an error.
    std::fs::write(&hosts, "127.0.0.7 missing.basicagent.test\n").unwrap();
    assert_eq!(
        lp.resolve(3, "missing.basicagent.test", 2).result.unwrap(),
        addrs(&["127.0.0.7:2"])
    );
    let e = lp
        .resolve(4, "nothing.basicagent.test", 2)
        .result
        .unwrap_err();
    assert!(matches!(e, ResolveError::Dns { .. }), "{e}");
    assert!(e.to_string().contains("nothing.basicagent.test"), "{e}");
}

#[test]
fn unreachable_nameserver_still_yields_hosts_entries() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.2 {TEST_NAME}\n::1 {TEST_NAME}\n127.0.0.2 {TEST_NAME}\n"),
    )
    .unwrap();
    let mut lp = Loop::new(&hosts, closed_port(), fast());

    assert_eq!(
        lp.resolve(1, TEST_NAME, 8443).result.unwrap(),
        addrs(&["127.0.0.2:8443", "[::1]:8443"])
    );
    let e = lp
        .resolve(2, "absent.basicagent.test", 8443)
        .result
        .unwrap_err();
    assert!(matches!(e, ResolveError::Dns { .. }), "{e}");
}

#[test]
fn dropping_the_resolver_does_not_wait_for_a_silent_nameserver() {
    // A socket that receives queries and never answers.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    let lp = Loop::new(
        &hosts,
        silent.local_addr().unwrap(),
        DnsLimits {
            timeout: Duration::from_secs(20),
            attempts: 2,
        },
    );
    lp.resolver.request(1, TEST_NAME.to_owned(), 1);
    let mut buf = [0u8; 512];
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    silent.recv_from(&mut buf).unwrap(); // the lookup is in flight
    let started = Instant::now();
    drop(lp);
    assert!(started.elapsed() < Duration::from_secs(5));
}
