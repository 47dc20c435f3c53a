//! Loads the real `libgetinfo_cpu.so` through the host's loader and
//! compares its answer with `os.cpu_count()` (python3) or `nproc`,
//! sysconf(3) and /proc/loadavg.

use std::time::Duration;

use basicagent_testsupport::plugin::{
    assert_collector, call_args, call_args_timed, data, load_built, COMMON_BAD_ARGS,
};

const NAME: &str = "getinfo_cpu";
const METHOD: &str = "getinfo.cpu";

#[test]
fn descriptor_usage_and_refusals() {
    assert_collector(NAME, METHOD, &COMMON_BAD_ARGS);
}

/// The logical cpu count from an independent source: python3's
/// os.cpu_count(), else nproc, else sysconf(_SC_NPROCESSORS_ONLN).
fn independent_cpu_count() -> u64 {
    for (cmd, args) in [
        ("python3", &["-c", "import os; print(os.cpu_count())"][..]),
        ("nproc", &["--all"][..]),
    ] {
        if let Ok(out) = std::process::Command::new(cmd).args(args).output() {
            if let Ok(n) = String::from_utf8_lossy(&out.stdout).trim().parse() {
                return n;
            }
        }
    }
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    u64::try_from(n).expect("sysconf")
}

#[test]
fn matches_cpu_count_and_loadavg() {
    let p = load_built(NAME);
    let (c, took) = call_args_timed(&p, "");
    let d = data(&c);
    assert!(took < Duration::from_millis(500), "took {took:?}");
    let n = independent_cpu_count();
    assert_eq!(d["logical"].as_u64(), Some(n), "{d}");
    assert_eq!(d["online_count"].as_u64(), Some(n), "{d}");
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").expect("online");
    assert_eq!(d["online"].as_str(), Some(online.trim()));
    let cores = d["cores"].as_u64().expect("cores");
    let sockets = d["sockets"].as_u64().expect("sockets");
    assert!(sockets >= 1 && sockets <= cores && cores <= n, "{d}");
    assert_eq!(d["mhz"].as_array().map(Vec::len), Some(n as usize));
    assert!(d.get("flags").is_none());
    // /proc/loadavg: the totals move, so compare within a margin.
    let text = std::fs::read_to_string("/proc/loadavg").expect("loadavg");
    let f: Vec<&str> = text.split_whitespace().collect();
    let avg15: f64 = f[2].parse().expect("avg15");
    let got = d["load"]["avg15"].as_f64().expect("avg15");
    assert!((got - avg15).abs() < 0.5, "{got} vs {avg15}");
    let total: u64 = f[3]
        .split('/')
        .nth(1)
        .and_then(|t| t.parse().ok())
        .expect("total");
    let got = d["load"]["total"].as_u64().expect("total");
    assert!(got.abs_diff(total) < 200, "{got} vs {total}");
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .expect("cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|x| x.1.trim().to_owned())
        });
    if let Some(model) = model {
        assert_eq!(d["model"].as_str(), Some(model.as_str()));
    }
}

#[test]
fn flags_only_with_dash_f() {
    let p = load_built(NAME);
    let c = call_args(&p, "-f");
    let d = data(&c);
    let flags = d["flags"].as_array().expect("flags");
    if cfg!(target_arch = "x86_64") {
        assert!(flags.iter().any(|f| f == "sse2"), "{flags:?}");
    }
}
