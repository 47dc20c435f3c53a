//! The `--events` file: one JSON object per line per event, written in order by a thread of its own (tests read it).
//!
//! Every line has `"event"` (the name) and `"ts"` (Unix time in seconds,
//! with milliseconds) followed by the event's fields. Names: `listening`,
//! `tls_handshake_failed`, `init`, `init_invalid`, `redirect`, `rejected`,
//! `replaced`, `refused` (session limit), `identity_mismatch` (mTLS),
//! `request`, `response`, `task_done`, `invalid_frame`, `disconnect`,
//! `shutdown`.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

enum Msg {
    Line(String),
    /// Answered once everything before it is written.
    Sync(Sender<()>),
}

/// Where events go; a no-op without `--events`. Lines are written by a
/// thread of their own (so a fan-out to thousands of hosts does not wait
/// on thousands of writes), in order, flushed whenever nothing more is
/// queued.
#[derive(Debug, Default)]
pub struct EventLog {
    tx: Option<Sender<Msg>>,
}

/// Seconds since the Unix epoch, with millisecond precision.
pub fn unix_now() -> f64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_millis() as f64) / 1000.0
}

fn write_loop(file: std::fs::File, rx: &Receiver<Msg>) {
    let mut out = BufWriter::new(file);
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                Msg::Line(line) => {
                    if let Err(e) = out.write_all(line.as_bytes()) {
                        log::warn!("cannot write an event: {e}");
                    }
                }
                Msg::Sync(done) => {
                    let _ = out.flush();
                    let _ = done.send(());
                }
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            log::warn!("cannot write events: {e}");
        }
    }
}

impl EventLog {
    /// Opens `path` for appending (created if missing) and starts its writer thread.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let (tx, rx) = channel();
        std::thread::Builder::new()
            .name("events".into())
            .spawn(move || write_loop(file, &rx))?;
        Ok(EventLog { tx: Some(tx) })
    }

    /// Whether events are written at all (callers skip building them otherwise).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Appends one event; `fields` should be a JSON object (anything else
    /// is stored under `"value"`). Write errors are logged, never fatal.
    pub fn emit(&self, name: &str, fields: Value) {
        let Some(tx) = &self.tx else { return };
        let mut obj = Map::new();
        obj.insert("event".into(), Value::from(name));
        obj.insert("ts".into(), Value::from(unix_now()));
        match fields {
            Value::Object(map) => obj.extend(map),
            Value::Null => {}
            other => {
                obj.insert("value".into(), other);
            }
        }
        let mut line = Value::Object(obj).to_string();
        line.push('\n');
        let _ = tx.send(Msg::Line(line));
    }

    /// Waits until every event emitted so far is written (at shutdown).
    pub fn sync(&self) {
        let Some(tx) = &self.tx else { return };
        let (done, wait) = channel();
        if tx.send(Msg::Sync(done)).is_ok() {
            let _ = wait.recv_timeout(std::time::Duration::from_secs(2));
        }
    }
}
