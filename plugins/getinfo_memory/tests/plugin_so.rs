//! Loads the real `libgetinfo_memory.so` through the host's loader and
//! compares its answer with /proc/meminfo parsed here and libc sysinfo(2).

use std::time::Duration;

use basicagent_abi::retcode;
use basicagent_testsupport::plugin::{
    assert_collector, call_args, call_args_timed, data, load_built, COMMON_BAD_ARGS,
};

const NAME: &str = "getinfo_memory";
const METHOD: &str = "getinfo.memory";

#[test]
fn descriptor_usage_and_refusals() {
    assert_collector(NAME, METHOD, &COMMON_BAD_ARGS);
}

fn meminfo_kb(key: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/meminfo"))
}

#[test]
fn matches_proc_meminfo_and_sysinfo() {
    let p = load_built(NAME);
    let (c, took) = call_args_timed(&p, "");
    let d = data(&c);
    assert!(took < Duration::from_millis(500), "took {took:?}");
    let total = d["total"].as_u64().expect("total");
    assert_eq!(total, meminfo_kb("MemTotal") * 1024);
    assert_eq!(
        d["swap_total"].as_u64(),
        Some(meminfo_kb("SwapTotal") * 1024)
    );
    // SAFETY: sysinfo is plain old data; all-zero bytes are a valid value,
    // and the pointer is valid and writable for the call.
    let mut si: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    assert_eq!(unsafe { libc::sysinfo(&mut si) }, 0);
    let si_total = si.totalram as u64 * u64::from(si.mem_unit);
    // sysinfo's totalram is in pages; meminfo rounds to kB.
    assert!(
        total.abs_diff(si_total) < 4096,
        "{total} vs sysinfo {si_total}"
    );
    let si_swap = si.totalswap as u64 * u64::from(si.mem_unit);
    assert!(d["swap_total"]
        .as_u64()
        .is_some_and(|s| s.abs_diff(si_swap) < 4096));
    for key in ["available", "free", "used", "buffers", "cached"] {
        let v = d[key].as_u64().unwrap_or_else(|| panic!("{key}"));
        assert!(v <= total, "{key} {v} > total {total}");
    }
    assert_eq!(d.as_object().map(|o| o.len()), Some(13));
}

#[test]
fn any_argument_is_refused() {
    let p = load_built(NAME);
    let c = call_args(&p, "-a");
    assert_eq!(c.retcode, retcode::INVALID_PARAMS);
    assert!(c.message.contains("takes no arguments"), "{}", c.message);
}
