//! `getinfo.testkit`: a plugin that misbehaves on request, so tests can
//! prove the host survives it (panics, dropped calls, double completion,
//! invalid JSON, slow completions). Never installed.
#![deny(clippy::undocumented_unsafe_blocks)]

use basicagent_abi::retcode;
use basicagent_abi::sdk::{Call, PluginSpec};

basicagent_abi::export_plugin!(PluginSpec {
    name: "getinfo_testkit",
    version: env!("CARGO_PKG_VERSION"),
    description: "test fixture: misbehaves on request (never installed)",
    methods: &["getinfo.testkit"],
    usage: "args: -p panic now | -t panic in a thread | -d never complete (forget) | -x complete twice\n      -b invalid JSON data | -e echo the request | -s MS complete after MS ms\n      -f fail with 3021 | -L MS complete late (after MS ms) and log complete's status | -S segfault\n      | -g BYTES [MS] complete after MS ms (from a thread) with BYTES bytes of data\n      -r read \"s\", \"i\", \"f\", \"b\" and argv through the SDK's ABI 1.1 readers, on a thread",
    init: None,
    call,
    cancel: None,
    fini: None,
});

fn args_of(request: &[u8]) -> String {
    // A deliberately naive scan: this fixture must not depend on a JSON
    // parser so that its behaviour stays obvious.
    let text = String::from_utf8_lossy(request);
    text.split("\"args\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("")
        .to_owned()
}

fn call(call: Call, request: &[u8]) {
    let args = args_of(request);
    let mut words = args.split_whitespace();
    match words.next() {
        Some("-p") => panic!("testkit asked to panic"),
        Some("-t") => {
            std::thread::spawn(move || {
                let _keep = call;
                panic!("testkit asked to panic in a thread");
            });
        }
        Some("-d") => std::mem::forget(call),
        Some("-x") => {
            let id = call.id();
            call.success("{\"first\":true}");
            log::info!("completing call {id} a second time");
            basicagent_abi::sdk::complete_again_for_tests(id);
        }
        Some("-b") => call.success("{not json"),
        Some("-e") => {
            let text = String::from_utf8_lossy(request).into_owned();
            call.success(&text);
        }
        Some("-s") => {
            let ms: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(100);
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                call.success(&format!("{{\"slept_ms\":{ms}}}"));
            });
        }
        Some("-L") => {
            // Completes after MS ms and logs what `complete` returned: a
            // call whose deadline passed was retired by the host.
            let ms: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(100);
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                let id = call.id();
                let unknown = basicagent_abi::sdk::complete_again_for_tests(id);
                std::mem::forget(call);
                log::warn!(
                    "late complete of call {id}: {}",
                    if unknown {
                        "BA_STATUS_UNKNOWN_CALL"
                    } else {
                        "accepted"
                    }
                );
            });
        }
        Some("-S") => {
            // SAFETY: none, deliberately: a load from an unmapped address,
            // the wild pointer this fixture exists to model. The kernel
            // sends SIGSEGV at the faulting instruction (a raise(3) would
            // be swallowed by Rust's own stack-overflow handler, which
            // returns for a fault outside a guard page).
            unsafe {
                let wild = std::hint::black_box(8usize) as *const u8;
                std::ptr::read_volatile(wild);
            }
            call.fail(retcode::PLUGIN_FAILURE, "testkit survived its SIGSEGV");
        }
        Some("-f") => call.fail(retcode::INVALID_PARAMS, "testkit asked to fail"),
        Some("-g") => {
            let bytes: usize = words.next().and_then(|w| w.parse().ok()).unwrap_or(1000);
            let ms: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(ms));
                let mut data = String::with_capacity(bytes + 16);
                data.push_str("{\"blob\":\"");
                data.push_str(&"x".repeat(bytes));
                data.push_str("\"}");
                call.success(&data);
            });
        }
        Some("-r") => {
            // From another thread while the call is pending, as allowed.
            std::thread::spawn(move || {
                let argv = call.args_argv();
                let (s, i, f, b) = (
                    call.param_str("s"),
                    call.param_i64("i"),
                    call.param_f64("f"),
                    call.param_bool("b"),
                );
                let missing = call.param_str("missing");
                let text = format!(
                    "{{\"argv\":{:?},\"s\":{:?},\"i\":{:?},\"f\":{:?},\"b\":{:?},\"missing\":{:?}}}",
                    argv.unwrap_or_default(),
                    s.unwrap_or_default(),
                    i.unwrap_or(-1),
                    f.unwrap_or(-1.0),
                    b.unwrap_or(false),
                    missing.err().map(|e| e.to_string()).unwrap_or_default(),
                );
                call.success(&text);
            });
        }
        _ => call.success("{\"ok\":true}"),
    }
}
