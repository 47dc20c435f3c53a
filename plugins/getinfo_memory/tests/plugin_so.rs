//! Loads the real `libgetinfo_memory.so` through the host's loader and
//! compares its answer with /proc/meminfo parsed here and libc sysinfo(2).

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use basicagent_abi::{retcode, Completion, HostSettings, Plugin};
use serde_json::Value;

const NAME: &str = "getinfo_memory";
const METHOD: &str = "getinfo.memory";

/// The built cdylib, next to this test binary (target/debug/deps/) or one
/// directory up (target/debug/).
fn plugin_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let name = format!("lib{NAME}.so");
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join(&name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not found near {}", exe.display()))
}

fn load() -> Plugin {
    let path = plugin_path();
    Plugin::load(&path, &HostSettings::default(), false)
        .unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
}

/// Calls the plugin with raw request bytes and waits for its completion.
fn call_raw(plugin: &Plugin, request: &[u8]) -> Completion {
    let (tx, rx) = mpsc::channel();
    plugin.call(
        request,
        Box::new(move |c| {
            let _ = tx.send(c);
        }),
    );
    rx.recv_timeout(Duration::from_secs(30))
        .expect("no completion within 30 s")
}

/// Calls the plugin with `args` and returns the completion and its time.
fn call(plugin: &Plugin, args: &str) -> (Completion, Duration) {
    let request = serde_json::json!({"id": "1", "method": METHOD, "args": args}).to_string();
    let start = Instant::now();
    let c = call_raw(plugin, request.as_bytes());
    (c, start.elapsed())
}

fn data(c: &Completion) -> Value {
    assert_eq!(c.retcode, retcode::SUCCESS, "{}", c.message);
    serde_json::from_str(c.data.as_deref().expect("data")).expect("json")
}

#[test]
fn descriptor_usage_and_refusals() {
    let p = load();
    assert_eq!(p.info().name, NAME);
    assert_eq!(p.info().methods, vec![METHOD.to_owned()]);
    let c = call_raw(&p, b"[1,2]");
    assert_eq!(c.retcode, retcode::INVALID_REQUEST, "{}", c.message);
    let c = call_raw(&p, b"not json");
    assert_eq!(c.retcode, retcode::INVALID_REQUEST, "{}", c.message);
    for args in ["-Z", "'unterminated", "stray operand"] {
        let (c, _) = call(&p, args);
        assert_eq!(c.retcode, retcode::INVALID_PARAMS, "{args}: {}", c.message);
        assert!(c.message.contains("usage"), "{}", c.message);
        assert!(c.data.is_none());
    }
    let c = call_raw(
        &p,
        format!(r#"{{"method":"{METHOD}","args":5}}"#).as_bytes(),
    );
    assert_eq!(c.retcode, retcode::INVALID_PARAMS, "{}", c.message);
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
    let p = load();
    let (c, took) = call(&p, "");
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
    let p = load();
    let (c, _) = call(&p, "-a");
    assert_eq!(c.retcode, retcode::INVALID_PARAMS);
    assert!(c.message.contains("takes no arguments"), "{}", c.message);
}
