//! Issue 12 item 5: every answer fits the host's frame bound by
//! construction, however its output escapes (a `\x01` takes 6 bytes as
//! `\u0001`). Alone in its process so that the peak RSS it prints is its
//! own.

mod common;

use basicagent_abi::retcode;
use basicagent_proto::Response;
use serde_json::json;
use serde_json::value::RawValue;

const MAX_FRAME: usize = 16 << 20;

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The frame the host writes for this answer, as `host/src/dispatch.rs`
/// builds it (the request's raw id echoed, the plugin's data verbatim).
fn frame(id: &str, c: basicagent_abi::Completion) -> Vec<u8> {
    let id = RawValue::from_string(id.to_owned()).unwrap();
    let response = Response::from_plugin_owned(Some(id), c.retcode, c.message, c.data);
    let mut out = Vec::new();
    response.write_frame(&mut out);
    out
}

#[test]
fn sixteen_mib_of_control_bytes_on_both_streams_fit_the_frame() {
    // The default bound (16 MiB) is what the plugin assumes with no
    // max_frame key; say it anyway, as the host would.
    let p = common::plugin(&format!(r#"{{"max_frame":{MAX_FRAME}}}"#));
    let _ = common::run_with(p, json!({"cmd":"echo warm"}));
    std::fs::write("/proc/self/clear_refs", "5").unwrap(); // reset VmHWM
    let idle = status_kib("VmRSS:");
    let id = r#""a-long-request-id-0123456789-0123456789""#;
    let cmd = "head -c 16777216 /dev/zero | tr '\\0' '\\1'; head -c 16777216 /dev/zero | tr '\\0' '\\1' >&2";
    let (_, rx) = common::start(
        p,
        &json!({"id":"a-long-request-id-0123456789-0123456789","method":"sync.bash",
                "cmd":cmd,"max_output":16 << 20,"timeout":120}),
    );
    let c = rx
        .recv_timeout(std::time::Duration::from_secs(300))
        .expect("answer");
    assert_eq!(c.retcode, retcode::SUCCESS, "{}", c.message);
    let out = frame(id, c);
    let peak = status_kib("VmHWM:");
    eprintln!(
        "frame {} bytes (bound {MAX_FRAME}); idle {idle} KiB, peak {peak} KiB, growth {} KiB",
        out.len(),
        peak.saturating_sub(idle)
    );
    assert!(out.len() <= MAX_FRAME, "frame of {} bytes", out.len());
    assert_eq!(out.last(), Some(&b'\n'));
    let v: serde_json::Value = serde_json::from_slice(&out).expect("the frame is JSON");
    let d = &v["data"];
    assert_eq!(
        (
            d["stdout_truncated"].as_bool(),
            d["stderr_truncated"].as_bool()
        ),
        (Some(true), Some(true))
    );
    assert_eq!(
        (d["stdout_bytes"].as_u64(), d["stderr_bytes"].as_u64()),
        (Some(16 << 20), Some(16 << 20))
    );
    let (o, e) = (d["stdout"].as_str().unwrap(), d["stderr"].as_str().unwrap());
    assert!(o.bytes().all(|b| b == 1) && e.bytes().all(|b| b == 1));
    // The room is shared: both streams keep about as much.
    assert!(o.len().abs_diff(e.len()) <= 1, "{} vs {}", o.len(), e.len());
    // And is used: the frame is nearly full.
    assert!(out.len() > MAX_FRAME - 4096, "{}", out.len());
    // The plugin keeps serving.
    let a = common::run_with(p, json!({"cmd":"echo still here"}));
    assert_eq!(a.data["stdout"], "still here\n");
}

/// A peek's answer fits the bound too.
#[test]
fn peek_fits_the_frame() {
    let p = common::plugin(&format!(r#"{{"max_frame":{MAX_FRAME}}}"#));
    let _reap = common::Reap(vec![vec!["sleep", "1021"]]);
    let (id, rx) = common::start(
        p,
        &json!({"cmd":"head -c 4000000 /dev/zero | tr '\\0' '\\1'; sleep 1021","max_output":16 << 20,"timeout":60}),
    );
    let t0 = std::time::Instant::now();
    loop {
        let (_, prx) = common::start(p, &json!({"id":7,"peek":id}));
        let c = prx
            .recv_timeout(std::time::Duration::from_secs(60))
            .unwrap();
        assert_eq!(c.retcode, retcode::SUCCESS, "{}", c.message);
        let out = frame("7", c);
        assert!(out.len() <= MAX_FRAME, "{}", out.len());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        if v["data"]["stdout_bytes"].as_u64() == Some(4_000_000) {
            assert_eq!(v["data"]["stdout_truncated"], true);
            break;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(60));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    p.cancel(id);
    let _ = rx.recv_timeout(std::time::Duration::from_secs(60)).unwrap();
}
