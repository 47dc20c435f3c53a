//! Pure, never-panicking parsers for the kernel's socket tables
//! (`/proc/net/tcp`, `tcp6`, `udp`, `udp6`) and for `/proc/PID/fd` link
//! targets. No I/O: tests feed fixture bytes.
//!
//! Addresses: the kernel prints each 32-bit word of the address as it
//! lies in memory, read as a native-endian integer (`%08X`): IPv4
//! 127.0.0.1 is `0100007F` on a little-endian host, and an IPv6 address is
//! four such words. So each word goes back to bytes with `to_ne_bytes`.
//! Ports are printed in host order already.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The table a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Tcp6,
    Udp,
    Udp6,
}

impl Proto {
    /// Every table, in report order.
    pub const ALL: [Proto; 4] = [Proto::Tcp, Proto::Tcp6, Proto::Udp, Proto::Udp6];

    /// The file name under /proc/net, also the `proto` field.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Tcp6 => "tcp6",
            Proto::Udp => "udp",
            Proto::Udp6 => "udp6",
        }
    }

    pub fn is_tcp(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Tcp6)
    }
}

/// TCP_LISTEN in the kernel's `st` column.
pub const TCP_LISTEN: u8 = 0x0A;
/// TCP_ESTABLISHED; a connected UDP socket shows it too.
pub const TCP_ESTABLISHED: u8 = 0x01;
/// TCP_CLOSE: for UDP, an unconnected socket.
pub const TCP_CLOSE: u8 = 0x07;

/// One line of a socket table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub local: IpAddr,
    pub local_port: u16,
    pub remote: IpAddr,
    pub remote_port: u16,
    pub state: u8,
    pub uid: u32,
    /// 0 for sockets no file refers to any more (TIME_WAIT, say).
    pub inode: u64,
}

impl Entry {
    /// TCP LISTEN, or UDP unconnected (bound, receiving from anyone).
    pub fn listening(&self, proto: Proto) -> bool {
        if proto.is_tcp() {
            self.state == TCP_LISTEN
        } else {
            self.state == TCP_CLOSE
        }
    }
}

/// The state's name, as `ss` prints it (`UNCONN` for unconnected UDP).
pub fn state_name(proto: Proto, state: u8) -> &'static str {
    match state {
        0x01 => "ESTABLISHED",
        0x02 => "SYN_SENT",
        0x03 => "SYN_RECV",
        0x04 => "FIN_WAIT1",
        0x05 => "FIN_WAIT2",
        0x06 => "TIME_WAIT",
        0x07 if !proto.is_tcp() => "UNCONN",
        0x07 => "CLOSE",
        0x08 => "CLOSE_WAIT",
        0x09 => "LAST_ACK",
        0x0A => "LISTEN",
        0x0B => "CLOSING",
        0x0C => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

fn hex_u32(s: &str) -> Option<u32> {
    if s.len() != 8 {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

/// `ADDR:PORT` in the table's hex form; IPv4 (8 digits) or IPv6 (32).
pub fn parse_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    if port.len() != 4 {
        return None;
    }
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(hex_u32(addr)?.to_ne_bytes())),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                let word = hex_u32(addr.get(i * 8..i * 8 + 8)?)?;
                chunk.copy_from_slice(&word.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// One data line (`sl local rem st tx:rx tr:when retrnsmt uid timeout
/// inode ...`); `None` for the header and anything malformed.
pub fn parse_line(line: &str) -> Option<Entry> {
    let mut f = line.split_ascii_whitespace();
    let _sl = f.next()?.strip_suffix(':')?;
    let (local, local_port) = parse_endpoint(f.next()?)?;
    let (remote, remote_port) = parse_endpoint(f.next()?)?;
    let st = f.next()?;
    if st.len() != 2 {
        return None;
    }
    let state = u8::from_str_radix(st, 16).ok()?;
    let _queues = f.next()?;
    let _timer = f.next()?;
    let _retransmits = f.next()?;
    let uid = f.next()?.parse().ok()?;
    let _timeout = f.next()?;
    let inode = f.next()?.parse().ok()?;
    Some(Entry {
        local,
        local_port,
        remote,
        remote_port,
        state,
        uid,
        inode,
    })
}

/// The entries of a whole table, in file order (bad lines skipped).
pub fn parse_table(text: &[u8]) -> impl Iterator<Item = Entry> + '_ {
    text.split(|&b| b == b'\n')
        .filter_map(|l| std::str::from_utf8(l).ok())
        .filter_map(parse_line)
}

/// The inode of an fd link target `socket:[12345]`.
pub fn socket_inode(target: &[u8]) -> Option<u64> {
    let digits = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &[u8] = b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20001 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 20002 1 0000000000000000 20 4 30 10 -1\n\
   2: 0A00020F:0016 0102A8C0:C350 06 00000000:00000000 03:00001234 00000000     0        0 0 3 0000000000000000\n\
   3: garbage\n";

    const TCP6: &[u8] = b"  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000000000000000000001000000:0277 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 30001 1 0000000000000000 100 0 0 10 0\n\
   1: B80D0120000000000000000001000000:01BB 0000000000000000FFFF00000100007F:A000 01 00000000:00000000 00:00000000 00000000    33        0 30002 1\n";

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv4_table() {
        let e: Vec<Entry> = parse_table(TCP).collect();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].local, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(e[0].local_port, 8080);
        assert_eq!(e[0].remote, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(e[0].state, TCP_LISTEN);
        assert_eq!(e[0].inode, 20001);
        assert_eq!(e[1].local_port, 0xD431);
        assert_eq!(e[1].remote_port, 8080);
        assert_eq!(e[1].uid, 1000);
        assert_eq!(e[2].local, IpAddr::from([15, 2, 0, 10]));
        assert_eq!(e[2].remote, IpAddr::from([192, 168, 2, 1]));
        assert_eq!(e[2].remote_port, 50000);
        assert_eq!(state_name(Proto::Tcp, e[2].state), "TIME_WAIT");
        assert_eq!(e[2].inode, 0);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn ipv6_table_words() {
        let e: Vec<Entry> = parse_table(TCP6).collect();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].local, "::1".parse::<IpAddr>().unwrap());
        assert_eq!(e[0].local_port, 631);
        assert_eq!(e[0].remote, "::".parse::<IpAddr>().unwrap());
        assert_eq!(e[1].local, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(e[1].local_port, 443);
        assert_eq!(e[1].remote, "::ffff:127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(e[1].remote.to_string(), "::ffff:127.0.0.1");
        assert_eq!(e[1].uid, 33);
    }

    #[test]
    fn endpoints_refused() {
        for bad in [
            "",
            ":",
            "0100007F",
            "0100007F:1F9",
            "0100007F:1F900",
            "0100007G:1F90",
            "100007F:1F90",
            "0000000000000000000000000100000:0000",
            "0000000000000000000000000100000Z:0000",
            "ééééé7F:1F90",
        ] {
            assert_eq!(parse_endpoint(bad), None, "{bad}");
        }
    }

    #[test]
    fn lines_refused() {
        assert_eq!(parse_line(""), None);
        assert_eq!(parse_line("  sl  local_address rem_address   st"), None);
        assert_eq!(
            parse_line("0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0"),
            None,
            "no inode"
        );
        assert_eq!(
            parse_line("0: 0100007F:1F90 00000000:0000 XYZ 0:0 0:0 0 0 0 1"),
            None
        );
        assert!(parse_line("0: 0100007F:1F90 00000000:0000 0A 0:0 0:0 0 0 0 1").is_some());
        assert_eq!(parse_table(b"\xff\xfe\n\n").count(), 0);
    }

    #[test]
    fn states_and_listening() {
        assert_eq!(state_name(Proto::Udp, TCP_CLOSE), "UNCONN");
        assert_eq!(state_name(Proto::Tcp6, TCP_CLOSE), "CLOSE");
        assert_eq!(state_name(Proto::Udp6, TCP_ESTABLISHED), "ESTABLISHED");
        assert_eq!(state_name(Proto::Tcp, 0x0C), "NEW_SYN_RECV");
        assert_eq!(state_name(Proto::Tcp, 0x42), "UNKNOWN");
        let e = parse_line("0: 0100007F:1F90 00000000:0000 07 0:0 0:0 0 0 0 1").unwrap();
        assert!(e.listening(Proto::Udp));
        assert!(!e.listening(Proto::Tcp));
    }

    #[test]
    fn fd_links() {
        assert_eq!(socket_inode(b"socket:[12345]"), Some(12345));
        assert_eq!(socket_inode(b"socket:[]"), None);
        assert_eq!(socket_inode(b"socket:[12"), None);
        assert_eq!(socket_inode(b"pipe:[12]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        assert_eq!(socket_inode(b"anon_inode:[eventfd]"), None);
    }
}
