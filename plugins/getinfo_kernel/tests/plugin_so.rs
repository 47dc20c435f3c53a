//! Loads the real `libgetinfo_kernel.so` through the host's loader and
//! checks its answer against `uname` and libc.

use basicagent_abi::retcode;
use basicagent_testsupport::plugin::{call, data, load_built};

fn uname(flag: &str) -> String {
    let out = std::process::Command::new("uname")
        .arg(flag)
        .output()
        .expect("run uname");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim_end_matches('\n')
        .to_owned()
}

#[test]
fn descriptor_and_usage() {
    let p = load_built("getinfo_kernel");
    assert_eq!(p.info().name, "getinfo_kernel");
    assert_eq!(p.info().methods, vec!["getinfo.kernel".to_owned()]);
    assert!(p.info().usage.contains("uptime_seconds"));
}

#[test]
fn matches_uname_and_proc() {
    let p = load_built("getinfo_kernel");
    let data = data(&call(&p, r#"{"method":"getinfo.kernel"}"#));
    for (flag, key) in [
        ("-s", "sysname"),
        ("-n", "nodename"),
        ("-r", "release"),
        ("-v", "version"),
        ("-m", "machine"),
    ] {
        assert_eq!(data[key].as_str(), Some(uname(flag).as_str()), "{key}");
    }
    let cmdline = std::fs::read_to_string("/proc/cmdline").expect("cmdline");
    assert_eq!(data["cmdline"].as_str(), Some(cmdline.trim()));
    let stat = std::fs::read_to_string("/proc/stat").expect("stat");
    let btime: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .expect("btime");
    assert_eq!(data["boot_time"].as_u64(), Some(btime));
    let up: f64 = std::fs::read_to_string("/proc/uptime")
        .expect("uptime")
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("uptime value");
    let got = data["uptime_seconds"].as_f64().expect("uptime_seconds");
    assert!(got > 0.0 && got <= up + 0.01, "{got} vs {up}");
    assert!(data["domainname"].is_string());
}

#[test]
fn args_are_refused_with_usage() {
    let p = load_built("getinfo_kernel");
    let c = call(&p, r#"{"method":"getinfo.kernel","args":"-A"}"#);
    assert_eq!(c.retcode, retcode::INVALID_PARAMS);
    assert!(c.message.contains("takes no arguments"), "{}", c.message);
    assert!(c.data.is_none());
    let c = call(&p, r#"{"method":"getinfo.kernel","args":""}"#);
    assert_eq!(c.retcode, retcode::SUCCESS);
}
