//! Shared helpers: load the real libsync_bash.so and run requests through it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use basicagent_abi::{Completion, HostSettings, Plugin};
use serde_json::Value;

/// The freshest built libsync_bash.so (`target/<profile>/deps` or its parent).
pub fn plugin_path() -> PathBuf {
    basicagent_testsupport::built_plugin("sync_bash")
}

/// The plugin, loaded once per test binary with `config`.
pub fn plugin(config: &str) -> &'static Plugin {
    static PLUGIN: OnceLock<Plugin> = OnceLock::new();
    PLUGIN.get_or_init(|| {
        let settings = HostSettings {
            config_json: config.to_owned(),
            max_log_level: 3,
        };
        Plugin::load(&plugin_path(), &settings, false).unwrap()
    })
}

/// One answer: retcode, message, data.
#[derive(Debug)]
pub struct Answer {
    pub retcode: u32,
    pub message: String,
    pub data: Value,
}

impl From<Completion> for Answer {
    fn from(c: Completion) -> Self {
        let data = match c.data {
            Some(d) => serde_json::from_str(&d).expect("data is valid JSON"),
            None => Value::Null,
        };
        Answer {
            retcode: c.retcode,
            message: c.message,
            data,
        }
    }
}

/// Starts a request; returns the call id and the receiver of its answer.
pub fn start(p: &Plugin, request: &Value) -> (u64, mpsc::Receiver<Completion>) {
    let bytes = serde_json::to_vec(request).unwrap();
    basicagent_testsupport::plugin::start(p, bytes)
}

pub fn wait(rx: &mpsc::Receiver<Completion>) -> Answer {
    basicagent_testsupport::plugin::wait(rx).into()
}

pub fn run_with(p: &Plugin, request: Value) -> Answer {
    let (_, rx) = start(p, &request);
    wait(&rx)
}

/// Pids of live processes whose argv is exactly `argv` (zombies have no argv).
pub fn live(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read(entry.path().join("cmdline")).is_ok_and(|c| c == want) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits up to `within` for no live process with that argv.
pub fn gone(argv: &[&str], within: Duration) -> bool {
    basicagent_testsupport::wait::within(within, || live(argv).is_empty())
}

/// Kills leftovers of a test (by exact argv) when dropped, even on failure.
pub struct Reap(pub Vec<Vec<&'static str>>);

impl Drop for Reap {
    fn drop(&mut self) {
        for argv in &self.0 {
            for pid in live(argv) {
                // SAFETY: kill(2) takes no pointer; the pid is a child this test started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}
