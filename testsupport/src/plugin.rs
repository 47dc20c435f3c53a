//! Calls into a plugin the workspace build made, loaded through the
//! host's own loader (real dlopen), waiting for its completion.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use basicagent_abi::{retcode, Completion, HostSettings, Plugin};
use serde_json::Value;

use crate::bins::built_plugin;

/// How long [`call`] waits for a completion before failing the test.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The freshest built `lib{lib_stem}.so` (see [`built_plugin`]).
pub fn plugin_path(lib_stem: &str) -> PathBuf {
    built_plugin(lib_stem)
}

/// Loads `lib{lib_stem}.so` with `settings`.
pub fn load_with(lib_stem: &str, settings: &HostSettings) -> Plugin {
    let path = built_plugin(lib_stem);
    Plugin::load(&path, settings, false).unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
}

/// Loads `lib{lib_stem}.so` with default host settings.
pub fn load_built(lib_stem: &str) -> Plugin {
    load_with(lib_stem, &HostSettings::default())
}

/// Starts a call with the raw `request` bytes; returns the call id and
/// the receiver of its one completion.
pub fn start(plugin: &Plugin, request: impl AsRef<[u8]>) -> (u64, mpsc::Receiver<Completion>) {
    let (tx, rx) = mpsc::channel();
    let id = plugin.call(
        request.as_ref(),
        Box::new(move |c| {
            let _ = tx.send(c);
        }),
    );
    (id, rx)
}

/// Waits up to [`TIMEOUT`] for a completion of [`start`].
pub fn wait(rx: &mpsc::Receiver<Completion>) -> Completion {
    rx.recv_timeout(TIMEOUT)
        .unwrap_or_else(|_| panic!("no completion within {TIMEOUT:?}"))
}

/// Calls `plugin` with the raw `request` bytes and waits for its one completion.
pub fn call(plugin: &Plugin, request: impl AsRef<[u8]>) -> Completion {
    let (_, rx) = start(plugin, request);
    wait(&rx)
}

/// The plugin's first method.
pub fn first_method(plugin: &Plugin) -> String {
    plugin
        .info()
        .methods
        .first()
        .cloned()
        .expect("the plugin serves a method")
}

/// The request `{"id":"1","method":METHOD,"args":ARGS}` for the plugin's
/// first method.
pub fn args_request(plugin: &Plugin, args: &str) -> String {
    serde_json::json!({ "id": "1", "method": first_method(plugin), "args": args }).to_string()
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

/// A completion's data as JSON (`Value::Null` when it has none); panics
/// on data that is not JSON.
pub fn data_json(c: &Completion) -> Value {
    match c.data.as_deref() {
        None => Value::Null,
        Some(text) => {
            serde_json::from_str(text).unwrap_or_else(|e| panic!("data is not JSON ({e}): {text}"))
        }
    }
}

/// Calls `plugin` and returns the retcode and the data (`Value::Null`
/// when the completion has none); panics on data that is not JSON.
pub fn call_json(plugin: &Plugin, request: impl AsRef<[u8]>) -> (u32, Value) {
    let c = call(plugin, request);
    (c.retcode, data_json(&c))
}

/// The data of a successful completion; panics (with the message) on
/// any other retcode or on data that is not JSON.
pub fn data(c: &Completion) -> Value {
    assert_eq!(c.retcode, retcode::SUCCESS, "{}", c.message);
    assert!(c.data.is_some(), "a success carries data");
    data_json(c)
}

/// Checks the refusals every collector shares: request bytes that are not
/// a JSON object answer `3020`; each of `bad_args`, and an `args` that is
/// not a string, answer `3021` with the usage in the message and no data.
pub fn assert_refusals(plugin: &Plugin, bad_args: &[&str]) {
    for request in [&b"[1,2]"[..], b"not json"] {
        let c = call(plugin, request);
        assert_eq!(c.retcode, retcode::INVALID_REQUEST, "{}", c.message);
    }
    let method = first_method(plugin);
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

/// The bad `args` every getopt-style collector refuses: an unknown
/// option, an unterminated quote, an operand.
pub const COMMON_BAD_ARGS: [&str; 3] = ["-Z", "'unterminated", "stray operand"];

/// Loads the collector `lib{lib_stem}.so` and checks what every collector
/// promises: its descriptor names it `lib_stem` and serves `method` only,
/// and it refuses what [`assert_refusals`] sends, with `bad_args`.
pub fn assert_collector(lib_stem: &str, method: &str, bad_args: &[&str]) -> Plugin {
    let p = load_built(lib_stem);
    assert_eq!(p.info().name, lib_stem);
    assert_eq!(p.info().methods, vec![method.to_owned()]);
    assert_refusals(&p, bad_args);
    p
}
