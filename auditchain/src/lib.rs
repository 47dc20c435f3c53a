//! The audit log's chain rule, shared by the daemon that writes the log
//! (`host/src/audit.rs`) and `BasicAgentCtl audit verify`: one definition
//! of `prev`, of rotation names, and of what verification accepts.
//!
//! Each line is a JSON object whose `prev` is the lowercase hex SHA-256 of
//! the previous line's bytes (without its `\n`); the first line of a log
//! has [`GENESIS`]; the first line of a file after a rotation carries
//! `rotated_from: {"file", "last"}` with `prev` equal to `last`.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod record;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The `prev` of the very first line of a log.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The file of rotation `n` (`audit.log.3`).
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Where and how the chain broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {what}", .file.display())]
pub struct VerifyError {
    pub file: PathBuf,
    /// 1-based; 0 for the file itself.
    pub line: usize,
    pub what: String,
}

/// A chain that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub lines: usize,
    pub files: usize,
    /// The hash of the last line (record it elsewhere: an edit of the very
    /// last line is only found against it).
    pub last: String,
    /// Remarks (a torn line recorded, a predecessor not given).
    pub notes: Vec<String>,
}

/// The configured log's files, oldest first (`PATH.KEEP` … `PATH.1`, `PATH`),
/// those that exist.
pub fn default_files(path: &Path, keep: u32) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = (1..=keep)
        .rev()
        .map(|n| rotated_path(path, n))
        .filter(|p| p.exists())
        .collect();
    v.push(path.to_owned());
    v
}

/// Verifies the chain through `files`, oldest first.
pub fn verify(files: &[PathBuf]) -> Result<Verified, VerifyError> {
    let mut last: Option<String> = None;
    let mut lines = 0;
    let mut notes = Vec::new();
    for (k, file) in files.iter().enumerate() {
        let err = |line: usize, what: String| VerifyError {
            file: file.clone(),
            line,
            what,
        };
        let bytes = std::fs::read(file).map_err(|e| err(0, format!("cannot read: {e}")))?;
        if bytes.is_empty() {
            continue;
        }
        let mut parts: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        let torn = parts.pop().filter(|p| !p.is_empty());
        for (i, raw) in parts.iter().enumerate() {
            let n = i + 1;
            let v: Value =
                serde_json::from_slice(raw).map_err(|e| err(n, format!("bad JSON: {e}")))?;
            let prev = v
                .get("prev")
                .and_then(Value::as_str)
                .ok_or_else(|| err(n, "no \"prev\" field".into()))?;
            let rotated = v.get("rotated_from");
            let expected = match (&last, i, rotated) {
                (Some(h), 0, Some(r)) => {
                    let named = r.get("last").and_then(Value::as_str).unwrap_or("");
                    if named != h {
                        return Err(err(
                            n,
                            format!(
                                "chain break across files: rotated_from names {named}, the previous file ends with {h}"
                            ),
                        ));
                    }
                    h.clone()
                }
                (Some(_), 0, None) => {
                    return Err(err(
                        n,
                        "chain break across files: the first line has no rotated_from".into(),
                    ))
                }
                (Some(h), _, _) => h.clone(),
                (None, _, Some(r)) if k == 0 && i == 0 => {
                    let named = r
                        .get("last")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    notes.push(format!(
                        "{}: continues a rotated file ({}) not given",
                        file.display(),
                        r.get("file").and_then(Value::as_str).unwrap_or("?")
                    ));
                    named
                }
                (None, _, _) => GENESIS.to_owned(),
            };
            if prev != expected {
                let what = if i == 0 && last.is_none() {
                    format!("prev {prev} is not the start of a chain (lines before it removed?)")
                } else {
                    format!(
                        "hash mismatch of prev: {prev}, the line before hashes to {expected} (a line edited, removed or reordered)"
                    )
                };
                return Err(err(n, what));
            }
            if v.get("torn").is_some() {
                notes.push(format!(
                    "{}:{n}: records a torn line cut at start ({})",
                    file.display(),
                    v["torn"]
                ));
            }
            last = Some(sha256_hex(raw));
            lines += 1;
        }
        if let Some(t) = torn {
            return Err(err(
                parts.len() + 1,
                format!("torn last line ({} bytes without a line end)", t.len()),
            ));
        }
    }
    Ok(Verified {
        lines,
        files: files.len(),
        last: last.unwrap_or_else(|| GENESIS.to_owned()),
        notes,
    })
}
