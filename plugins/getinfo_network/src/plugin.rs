//! The thin glue: request → interface filter, getifaddrs(3), the sysfs
//! reads (directory injectable) and the report; completes synchronously.

use std::error::Error;
use std::ffi::CStr;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use basicagent_abi::Call;
use basicagent_collector_kit::{self as kit, CollectorError};
use serde::Serialize;

use crate::parse::{flag_names, parse_hex, type_name, IfAddr};
use crate::USAGE;

/// Parses the request: `Some(IF)` for `-i IF`.
pub fn parse_request(request: &[u8]) -> Result<Option<String>, CollectorError> {
    let mut opts = getopts::Options::new();
    opts.optopt("i", "", "one interface", "IF");
    Ok(kit::parse_request(request, USAGE, |words| {
        interface_name(&opts, words)
    })?)
}

fn interface_name(
    opts: &getopts::Options,
    words: &[String],
) -> Result<Option<String>, Box<dyn Error + Send + Sync>> {
    match kit::parse_opts(opts, words)?.opt_str("i") {
        None => Ok(None),
        // IFNAMSIZ is 16 with the NUL; names never hold '/' or whitespace,
        // and "." or ".." would leave /sys/class/net.
        Some(name)
            if name.is_empty()
                || name.len() > 15
                || name == "."
                || name == ".."
                || name
                    .bytes()
                    .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0) =>
        {
            Err(format!("-i wants an interface name, got {name:?}").into())
        }
        Some(name) => Ok(Some(name)),
    }
}

/// One interface in the response.
#[derive(Debug, Serialize)]
struct Interface {
    name: String,
    index: Option<u64>,
    mac: Option<String>,
    mtu: Option<u64>,
    operstate: Option<String>,
    carrier: Option<bool>,
    flags: Option<Vec<&'static str>>,
    #[serde(rename = "type")]
    kind: Option<u32>,
    type_name: Option<&'static str>,
    speed_mbps: Option<u64>,
    stats: Stats,
    addresses: Vec<IfAddr>,
}

#[derive(Debug, Serialize)]
struct Stats {
    rx_bytes: Option<u64>,
    rx_packets: Option<u64>,
    rx_errors: Option<u64>,
    rx_dropped: Option<u64>,
    tx_bytes: Option<u64>,
    tx_packets: Option<u64>,
    tx_errors: Option<u64>,
    tx_dropped: Option<u64>,
}

#[derive(Serialize)]
struct Report {
    interfaces: Vec<Interface>,
    count: usize,
}

/// Reads one small sysfs attribute, trimmed; `None` if unreadable or empty.
fn attr(dir: &Path, name: &str, buf: &mut String) -> Option<String> {
    buf.clear();
    let mut f = std::fs::File::open(dir.join(name)).ok()?;
    // Attributes are a few bytes; bound a misbehaving one.
    f.by_ref().take(4096).read_to_string(buf).ok()?;
    let t = buf.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

fn num(dir: &Path, name: &str, buf: &mut String) -> Option<u64> {
    attr(dir, name, buf)?.parse().ok()
}

fn interface(dir: &Path, name: String, addrs: &[IfAddr]) -> Interface {
    let mut buf = String::with_capacity(64);
    let b = &mut buf;
    let stats_dir = dir.join("statistics");
    let s = |n: &str, b: &mut String| num(&stats_dir, n, b);
    let flags = attr(dir, "flags", b).and_then(|f| parse_hex(&f));
    let kind = num(dir, "type", b).and_then(|t| u32::try_from(t).ok());
    Interface {
        index: num(dir, "ifindex", b),
        mac: attr(dir, "address", b),
        mtu: num(dir, "mtu", b),
        operstate: attr(dir, "operstate", b),
        carrier: num(dir, "carrier", b).map(|c| c != 0),
        flags: flags.map(flag_names),
        kind,
        type_name: kind.and_then(type_name),
        // "-1" (unknown) does not parse as u64: null.
        speed_mbps: num(dir, "speed", b),
        stats: Stats {
            rx_bytes: s("rx_bytes", b),
            rx_packets: s("rx_packets", b),
            rx_errors: s("rx_errors", b),
            rx_dropped: s("rx_dropped", b),
            tx_bytes: s("tx_bytes", b),
            tx_packets: s("tx_packets", b),
            tx_errors: s("tx_errors", b),
            tx_dropped: s("tx_dropped", b),
        },
        addresses: addrs
            .iter()
            .filter(|a| a.interface == name)
            .cloned()
            .collect(),
        name,
    }
}

/// Builds the report from the sysfs directory (normally
/// `/sys/class/net`) and the address list; the `data` JSON. Entries that
/// are not directories (`bonding_masters`) are skipped.
pub fn collect(
    sys_net: &Path,
    addrs: &[IfAddr],
    only: Option<&str>,
) -> Result<String, CollectorError> {
    let mut names: Vec<String> = match only {
        Some(name) => {
            if !sys_net.join(name).is_dir() {
                return Err(CollectorError::InvalidValue(format!(
                    "no interface {name:?}; usage: {USAGE}"
                )));
            }
            vec![name.to_owned()]
        }
        None => std::fs::read_dir(sys_net)
            .map_err(|source| CollectorError::List {
                path: sys_net.to_path_buf(),
                source,
            })?
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
    };
    names.sort();
    let mut interfaces: Vec<Interface> = names
        .into_iter()
        .map(|n| interface(&sys_net.join(&n), n, addrs))
        .collect();
    interfaces.sort_by_key(|i| (i.index.unwrap_or(u64::MAX), i.name.clone()));
    let report = Report {
        count: interfaces.len(),
        interfaces,
    };
    kit::to_data(&report)
}

/// The IPv4 and IPv6 addresses of every interface, via getifaddrs(3).
pub fn getifaddrs() -> Result<Vec<IfAddr>, CollectorError> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid place for the list pointer; on success the
    // list is ours until freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(CollectorError::Sys {
            call: "getifaddrs",
            source: std::io::Error::last_os_error(),
        });
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, which
        // stays valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        // SAFETY: the sockaddr pointers are null or point to a sockaddr of
        // the family in sa_family, owned by the list.
        let (addr, mask) = unsafe { (sockaddr_ip(ifa.ifa_addr), sockaddr_ip(ifa.ifa_netmask)) };
        if let Some(addr) = addr {
            out.push(IfAddr::new(&name, addr, mask));
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed exactly once; no
    // reference into the list outlives this point (names were copied).
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The IP address in a sockaddr, for AF_INET and AF_INET6 only.
///
/// # Safety
/// `sa` is null or points to a valid sockaddr whose real size matches its
/// `sa_family` (as getifaddrs guarantees).
unsafe fn sockaddr_ip(sa: *const libc::sockaddr) -> Option<IpAddr> {
    if sa.is_null() {
        return None;
    }
    // SAFETY: non-null and valid per the contract.
    match i32::from(unsafe { (*sa).sa_family }) {
        libc::AF_INET => {
            // SAFETY: the family says this is a sockaddr_in.
            let sin = unsafe { &*sa.cast::<libc::sockaddr_in>() };
            Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                sin.sin_addr.s_addr,
            ))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this is a sockaddr_in6.
            let sin6 = unsafe { &*sa.cast::<libc::sockaddr_in6>() };
            Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
        }
        _ => None,
    }
}

/// The plugin's `call`: validate, collect, complete at once.
pub fn call(call: Call, request: &[u8]) {
    let result = parse_request(request).and_then(|only| {
        let addrs = getifaddrs()?;
        collect(Path::new("/sys/class/net"), &addrs, only.as_deref())
    });
    kit::complete(call, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use basicagent_abi::retcode;
    use serde_json::Value;
    use std::fs;

    #[test]
    fn requests() {
        assert_eq!(parse_request(b"").unwrap(), None);
        assert_eq!(
            parse_request(br#"{"args":"-i eth0"}"#).unwrap().as_deref(),
            Some("eth0")
        );
        assert_eq!(
            parse_request(br#"{"args":"-ilo"}"#).unwrap().as_deref(),
            Some("lo")
        );
        for bad in [
            &br#"{"args":"-i"}"#[..],
            br#"{"args":"-i ../etc"}"#,
            br#"{"args":"-i .."}"#,
            br#"{"args":"-i ''"}"#,
            br#"{"args":"-i 'a b'"}"#,
            br#"{"args":"-i abcdefghijklmnopq"}"#,
            br#"{"args":"-x"}"#,
            br#"{"args":"eth0"}"#,
        ] {
            let e = parse_request(bad).unwrap_err();
            assert_eq!(e.retcode(), retcode::INVALID_PARAMS, "{e}");
            assert!(e.to_string().contains("-i IF"), "{e}");
        }
        assert_eq!(
            parse_request(b"\"x\"").unwrap_err().retcode(),
            retcode::INVALID_REQUEST
        );
    }

    /// eth0 complete; noaddr has no addresses and no statistics directory;
    /// odd has garbage everywhere; bonding_masters is a plain file.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let w = |path: &str, content: &str| {
            let p = dir.path().join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        };
        w("eth0/ifindex", "2\n");
        w("eth0/address", "02:fc:00:00:00:01\n");
        w("eth0/mtu", "1500\n");
        w("eth0/operstate", "up\n");
        w("eth0/carrier", "1\n");
        w("eth0/flags", "0x1003\n");
        w("eth0/type", "1\n");
        w("eth0/speed", "1000\n");
        for s in [
            "rx_bytes",
            "rx_packets",
            "rx_errors",
            "rx_dropped",
            "tx_bytes",
            "tx_packets",
            "tx_errors",
            "tx_dropped",
        ] {
            w(&format!("eth0/statistics/{s}"), "7\n");
        }
        w("noaddr/ifindex", "3\n");
        w("noaddr/operstate", "down\n");
        w("noaddr/speed", "-1\n");
        w("odd/ifindex", "x\n");
        w("odd/mtu", "\u{fffd}\n");
        w("odd/flags", "0xZZ\n");
        w("odd/type", "99999999999\n");
        w("odd/address", "\n");
        w("bonding_masters", "\n");
        dir
    }

    fn addrs() -> Vec<IfAddr> {
        let a = |s: &str| s.parse::<IpAddr>().unwrap();
        vec![
            IfAddr::new("eth0", a("192.0.2.2"), Some(a("255.255.255.0"))),
            IfAddr::new("eth0", a("fe80::1"), Some(a("ffff:ffff:ffff:ffff::"))),
            IfAddr::new("gone", a("10.0.0.1"), None),
        ]
    }

    #[test]
    fn odd_entries_never_panic() {
        let dir = fixture();
        let v: Value = serde_json::from_str(&collect(dir.path(), &addrs(), None).unwrap()).unwrap();
        assert_eq!(v["count"], 3);
        let ifs = v["interfaces"].as_array().unwrap();
        let names: Vec<&str> = ifs.iter().map(|i| i["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["eth0", "noaddr", "odd"]);
        let eth0 = &ifs[0];
        assert_eq!(
            eth0["flags"],
            serde_json::json!(["up", "broadcast", "multicast"])
        );
        assert_eq!(eth0["type_name"], "ether");
        assert_eq!(eth0["carrier"], true);
        assert_eq!(eth0["speed_mbps"], 1000);
        assert_eq!(eth0["stats"]["tx_dropped"], 7);
        assert_eq!(
            eth0["addresses"][0],
            serde_json::json!({"family":"inet","address":"192.0.2.2","prefix_len":24,"scope":"global"})
        );
        assert_eq!(eth0["addresses"][1]["prefix_len"], 64);
        assert_eq!(eth0["addresses"][1]["scope"], "link");
        let noaddr = &ifs[1];
        assert_eq!(noaddr["addresses"], serde_json::json!([]));
        assert!(noaddr["stats"]["rx_bytes"].is_null());
        assert!(noaddr["speed_mbps"].is_null());
        assert!(noaddr["mac"].is_null());
        let odd = &ifs[2];
        for k in [
            "index",
            "mac",
            "mtu",
            "flags",
            "type",
            "type_name",
            "operstate",
        ] {
            assert!(odd[k].is_null(), "{k}: {}", odd[k]);
        }
    }

    #[test]
    fn one_interface_and_unknown() {
        let dir = fixture();
        let v: Value =
            serde_json::from_str(&collect(dir.path(), &addrs(), Some("noaddr")).unwrap()).unwrap();
        assert_eq!(v["count"], 1);
        assert_eq!(v["interfaces"][0]["name"], "noaddr");
        let e = collect(dir.path(), &addrs(), Some("nope")).unwrap_err();
        assert_eq!(e.retcode(), retcode::INVALID_PARAMS);
        let e = collect(dir.path(), &addrs(), Some("bonding_masters")).unwrap_err();
        assert_eq!(e.retcode(), retcode::INVALID_PARAMS);
        let e = collect(&dir.path().join("none"), &[], None).unwrap_err();
        assert_eq!(e.retcode(), retcode::PLUGIN_FAILURE);
    }

    #[test]
    fn getifaddrs_has_loopback() {
        let a = getifaddrs().unwrap();
        assert!(a
            .iter()
            .any(|x| x.interface == "lo" && x.address == "127.0.0.1" && x.prefix_len == 8));
    }
}
