//! Loopback addresses of a test's own, a DNS server that answers
//! NXDOMAIN, and whether a process still runs.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// A port free on 127.0.0.1 (and, in practice, on the other 127.0.0.x).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// A loopback address of this test binary's own: `127.B.x.y`, where `B`
/// (2..=250) is chosen by the caller's crate so that test binaries run
/// at once do not meet, and `x.y` counts up per call in this process.
pub fn unique_ip_in(block: u8) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // 1..=250 in the last byte, then the next third byte: never .0 or .255.
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let (hi, lo) = (n / 250, n % 250 + 1);
    format!("127.{block}.{}.{lo}", hi % 250 + 1)
}

/// [`unique_ip_in`] in a block derived from this test executable's name,
/// so two test binaries (even of one crate) seldom share addresses.
pub fn unique_ip() -> String {
    static BLOCK: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    let block = *BLOCK.get_or_init(|| {
        let exe = std::env::current_exe().unwrap_or_default();
        let name = exe.file_name().map(|n| n.to_string_lossy().into_owned());
        let sum = name
            .unwrap_or_default()
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        // 100..=249: clear of the fixed 127.0.x.y addresses tests use.
        100 + (sum % 150) as u8
    });
    unique_ip_in(block)
}

/// `ip` with a port free there (the kernel's choice, released again).
pub fn free_addr_on(ip: &str) -> SocketAddr {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("a free port on {ip}: {e}"))
}

/// A free address on a loopback address of its own (127.0.0.20 and up,
/// as the server's tests always had).
pub fn free_addr() -> SocketAddr {
    static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(20);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    free_addr_on(&format!("127.0.0.{n}"))
}

/// A DNS server on loopback that answers NXDOMAIN to everything, so that
/// an agent's DNS step is quick and nothing leaves the machine.
pub fn nxdomain_server() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("a UDP socket on 127.0.0.1");
    let addr = socket.local_addr().expect("its address");
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            if n < 12 {
                continue;
            }
            let mut reply = buf[..n].to_vec();
            reply[2] |= 0x80; // QR: a response
            reply[3] = (reply[3] & 0xf0) | 0x80 | 3; // RA, RCODE NXDOMAIN
            let _ = socket.send_to(&reply, peer);
        }
    });
    addr
}

/// Whether `pid` runs (a zombie of ours counts as gone).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Sends `sig` to `pid` (a process the test started); whether it was sent.
pub fn kill(pid: i32, sig: libc::c_int) -> bool {
    // SAFETY: kill(2) takes no pointer; the caller names a process it started.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Whether this test runs as root (the identity and install tests need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
