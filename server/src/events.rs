//! The `--events` file: one JSON object per line per event, written and flushed at once (tests read it).
//!
//! Every line has `"event"` (the name) and `"ts"` (Unix time in seconds,
//! with milliseconds) followed by the event's fields. Names: `listening`,
//! `tls_handshake_failed`, `init`, `init_invalid`, `redirect`, `rejected`,
//! `replaced`, `refused` (session limit), `identity_mismatch` (mTLS),
//! `request`, `response`, `task_done`, `invalid_frame`, `disconnect`,
//! `shutdown`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::lock;

/// Where events go; a no-op without `--events`.
#[derive(Debug, Default)]
pub struct EventLog {
    file: Option<Mutex<File>>,
}

/// Seconds since the Unix epoch, with millisecond precision.
pub fn unix_now() -> f64 {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (d.as_millis() as f64) / 1000.0
}

impl EventLog {
    /// Opens `path` for appending (created if missing).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(EventLog {
            file: Some(Mutex::new(file)),
        })
    }

    /// Whether events are written at all (callers skip building them otherwise).
    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    /// Appends one event; `fields` should be a JSON object (anything else
    /// is stored under `"value"`). Write errors are logged, never fatal.
    pub fn emit(&self, name: &str, fields: Value) {
        let Some(file) = &self.file else { return };
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
        let mut f = lock(file);
        if let Err(e) = f.write_all(line.as_bytes()).and_then(|()| f.flush()) {
            log::warn!("cannot write event {name}: {e}");
        }
    }
}
