//! The harness of the plugins' integration tests (feature `test-support`,
//! for dev-dependencies only): load the plugin `cargo build` or `cargo
//! test` just built, through the host's own loader, call it and wait for
//! its completion.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use basicagent_abi::{retcode, Completion, HostSettings, Plugin};
use serde_json::Value;

/// How long [`call`] waits for a completion before failing the test.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The freshest `lib{lib_stem}.so` of `target/debug` and
/// `target/debug/deps`, found from the running test executable (which
/// lives in `deps`). Panics if there is none.
pub fn built_plugin(lib_stem: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("the test executable has a directory");
    let file = format!("lib{lib_stem}.so");
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    [Some(deps), deps.parent()]
        .into_iter()
        .flatten()
        .map(|dir| dir.join(&file))
        .filter_map(|p| modified(&p).map(|t| (t, p)))
        .max_by_key(|(t, _): &(SystemTime, PathBuf)| *t)
        .map(|(_, p)| p)
        .unwrap_or_else(|| panic!("{file} not found near {}", exe.display()))
}

/// Loads [`built_plugin`]`(lib_stem)` with default host settings.
pub fn load_built(lib_stem: &str) -> Plugin {
    let path = built_plugin(lib_stem);
    Plugin::load(&path, &HostSettings::default(), false)
        .unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
}

/// Calls `plugin` with the raw `request` bytes and waits up to
/// [`TIMEOUT`] for its one completion.
pub fn call(plugin: &Plugin, request: impl AsRef<[u8]>) -> Completion {
    let (tx, rx) = mpsc::channel();
    plugin.call(
        request.as_ref(),
        Box::new(move |c| {
            let _ = tx.send(c);
        }),
    );
    rx.recv_timeout(TIMEOUT)
        .unwrap_or_else(|_| panic!("no completion within {TIMEOUT:?}"))
}

/// The request `{"id":"1","method":METHOD,"args":ARGS}` for the plugin's
/// first method.
pub fn args_request(plugin: &Plugin, args: &str) -> String {
    let method = plugin
        .info()
        .methods
        .first()
        .expect("the plugin serves a method");
    serde_json::json!({ "id": "1", "method": method, "args": args }).to_string()
}

/// Calls the plugin's first method with `args` (see [`args_request`]).
pub fn call_args(plugin: &Plugin, args: &str) -> Completion {
    call(plugin, args_request(plugin, args))
}

/// [`call_args`], and how long the completion took.
pub fn call_args_timed(plugin: &Plugin, args: &str) -> (Completion, Duration) {
    let start = std::time::Instant::now();
    let c = call_args(plugin, args);
    (c, start.elapsed())
}

/// Calls `plugin` and returns the retcode and the data (`Value::Null`
/// when the completion has none); panics on data that is not JSON.
pub fn call_json(plugin: &Plugin, request: impl AsRef<[u8]>) -> (u32, Value) {
    let c = call(plugin, request);
    let data = match c.data.as_deref() {
        None => Value::Null,
        Some(text) => {
            serde_json::from_str(text).unwrap_or_else(|e| panic!("data is not JSON ({e}): {text}"))
        }
    };
    (c.retcode, data)
}

/// The data of a successful completion; panics (with the message) on
/// any other retcode or on data that is not JSON.
pub fn data(c: &Completion) -> Value {
    assert_eq!(c.retcode, retcode::SUCCESS, "{}", c.message);
    let text = c.data.as_deref().expect("a success carries data");
    serde_json::from_str(text).unwrap_or_else(|e| panic!("data is not JSON ({e}): {text}"))
}

/// Checks the refusals every collector shares: request bytes that are not
/// a JSON object answer `3020`; each of `bad_args`, and an `args` that is
/// not a string, answer `3021` with the usage in the message and no data.
pub fn assert_refusals(plugin: &Plugin, bad_args: &[&str]) {
    for request in [&b"[1,2]"[..], b"not json"] {
        let c = call(plugin, request);
        assert_eq!(c.retcode, retcode::INVALID_REQUEST, "{}", c.message);
    }
    let method = plugin
        .info()
        .methods
        .first()
        .expect("the plugin serves a method");
    let not_a_string = serde_json::json!({ "method": method, "args": 5 }).to_string();
    let refused = bad_args
        .iter()
        .map(|args| (args.to_string(), call_args(plugin, args)))
        .chain([(not_a_string.clone(), call(plugin, &not_a_string))]);
    for (what, c) in refused {
        assert_eq!(c.retcode, retcode::INVALID_PARAMS, "{what}: {}", c.message);
        assert!(c.message.contains("; usage: "), "{what}: {}", c.message);
        assert!(c.data.is_none(), "{what}");
    }
}
