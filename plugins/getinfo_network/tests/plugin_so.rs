//! Loads the real `libgetinfo_network.so` through the host's loader and
//! compares its answer with the /sys/class/net listing, the loopback's
//! 127.0.0.1/8 and ::1/128, and an interface without addresses: a dummy
//! one made here with `ip` (root only; skipped with a note if impossible)
//! and any address-less interface the host already has.

use std::time::Duration;

use basicagent_abi::retcode;
use basicagent_testsupport::plugin::{
    assert_collector, call_args, call_args_timed, data, load_built, COMMON_BAD_ARGS,
};

const NAME: &str = "getinfo_network";
const METHOD: &str = "getinfo.network";

#[test]
fn descriptor_usage_and_refusals() {
    assert_collector(NAME, METHOD, &COMMON_BAD_ARGS);
}

/// Removes the dummy interface when dropped, even if the test failed.
struct Dummy(&'static str);

impl Dummy {
    fn create(name: &'static str) -> Option<Dummy> {
        let ok = std::process::Command::new("ip")
            .args(["link", "add", name, "type", "dummy"])
            .output();
        match ok {
            Ok(out) if out.status.success() => Some(Dummy(name)),
            Ok(out) => {
                eprintln!(
                    "note: cannot create a dummy interface ({}); that part is skipped",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("note: `ip` not runnable ({e}); the dummy interface part is skipped");
                None
            }
        }
    }
}

impl Drop for Dummy {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", self.0])
            .output();
    }
}

fn sys_class_net() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .expect("/sys/class/net")
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn matches_sys_class_net_and_loopback() {
    let p = load_built(NAME);
    let (c, took) = call_args_timed(&p, "");
    let d = data(&c);
    assert!(took < Duration::from_millis(500), "took {took:?}");
    let mut got: Vec<String> = d["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .map(|i| i["name"].as_str().expect("name").to_owned())
        .collect();
    got.sort();
    assert_eq!(got, sys_class_net());
    let c = call_args(&p, "-i lo");
    let d = data(&c);
    let lo = &d["interfaces"][0];
    assert_eq!(lo["name"], "lo");
    assert_eq!(lo["type_name"], "loopback");
    assert!(lo["flags"]
        .as_array()
        .expect("flags")
        .iter()
        .any(|f| f == "loopback"));
    let mtu: u64 = std::fs::read_to_string("/sys/class/net/lo/mtu")
        .expect("mtu")
        .trim()
        .parse()
        .expect("mtu value");
    assert_eq!(lo["mtu"].as_u64(), Some(mtu));
    assert!(lo["stats"]["rx_bytes"].is_u64());
    let addrs = lo["addresses"].as_array().expect("addresses");
    let has = |a: &str, len: u64| {
        addrs
            .iter()
            .any(|x| x["address"] == a && x["prefix_len"].as_u64() == Some(len))
    };
    assert!(has("127.0.0.1", 8), "{addrs:?}");
    // ::1 only where IPv6 is enabled on lo.
    let v6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
    if v6
        .lines()
        .any(|l| l.starts_with("00000000000000000000000000000001"))
    {
        assert!(has("::1", 128), "{addrs:?}");
    }
}

#[test]
fn interfaces_without_addresses() {
    let p = load_built(NAME);
    let dummy = Dummy::create("batest0");
    if dummy.is_some() {
        let c = call_args(&p, "-i batest0");
        let d = data(&c);
        let i = &d["interfaces"][0];
        assert_eq!(i["name"], "batest0");
        assert_eq!(i["addresses"], serde_json::json!([]), "{i}");
        assert!(i["mac"].is_string());
    }
    // Whatever the host has: an interface that getifaddrs gives no IP
    // address (per /proc/net/if_inet6 and the answer) must still be listed.
    let c = call_args(&p, "");
    let d = data(&c);
    let mut without = 0;
    for i in d["interfaces"].as_array().expect("interfaces") {
        assert!(i["addresses"].is_array(), "{i}");
        assert!(i["stats"].is_object(), "{i}");
        let name = i["name"].as_str().expect("name");
        let ip = std::process::Command::new("ip")
            .args(["-o", "addr", "show", "dev", name])
            .output();
        if let Ok(out) = ip {
            if out.status.success() && out.stdout.is_empty() {
                assert_eq!(i["addresses"], serde_json::json!([]), "{i}");
                without += 1;
            }
        }
    }
    eprintln!("note: {without} interfaces of this host have no address (per `ip addr`)");
    drop(dummy);
    let c = call_args(&p, "-i batest0");
    assert_eq!(c.retcode, retcode::INVALID_PARAMS, "{}", c.message);
}
