//! `BasicAgentCtl audit verify`: OK with the line count on a real chain,
//! exit 1 naming FILE:LINE for an edited, a deleted and a swapped line,
//! the configured log and its rotated files by default.

use std::path::Path;
use std::process::Command;

use serde_json::json;

fn sha256_hex(b: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, b);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a chained log by the documented rule (independently of the
/// daemon's writer): `n` lines, rotated into `PATH.1` … every
/// `per_file` lines (the newest file last).
fn write_lines(path: &Path, n: usize, per_file: usize) {
    let mut files: Vec<String> = vec![String::new()];
    let mut prev = "0".repeat(64);
    for i in 0..n {
        let mut line = json!({"n": i, "command": format!("echo {i}"), "prev": prev});
        if i > 0 && i % per_file == 0 {
            files.push(String::new());
            line["rotated_from"] = json!({"file": "audit.log.1", "last": prev});
        }
        let text = line.to_string();
        prev = sha256_hex(text.as_bytes());
        files.last_mut().unwrap().push_str(&format!("{text}\n"));
    }
    let count = files.len();
    for (k, body) in files.into_iter().enumerate() {
        let age = count - 1 - k;
        let p = if age == 0 {
            path.to_owned()
        } else {
            let mut s = path.as_os_str().to_owned();
            s.push(format!(".{age}"));
            s.into()
        };
        std::fs::write(p, body).unwrap();
    }
}

fn ctl(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_BasicAgentCtl"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn edit(path: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    f(&mut lines);
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn verify_reports_ok_then_the_first_broken_line() {
    let dir = tempfile::tempdir().unwrap();
    for (name, change, line) in [("edited", 0, 4), ("deleted", 1, 3), ("swapped", 2, 3)] {
        let path = dir.path().join(name);
        write_lines(&path, 6, usize::MAX);
        let p = path.to_str().unwrap();
        let (code, out) = ctl(&["audit", "verify", p]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("OK: 6 line(s)"), "{out}");
        edit(&path, |l| match change {
            0 => l[2] = l[2].replace("echo 2", "echo 9"),
            1 => {
                l.remove(2);
            }
            _ => l.swap(2, 3),
        });
        let (code, out) = ctl(&["audit", "verify", p]);
        assert_eq!(code, 1, "{name}: {out}");
        assert!(out.contains(&format!("{p}:{line}:")), "{name}: {out}");
    }
}

#[test]
fn verify_defaults_to_the_configured_log_and_its_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nname = \"x\"\nport = 1\nca = \"/x\"\n[agent]\nstate_dir = \"{}\"\n[audit]\nkeep = 5\n",
            state.display()
        ),
    )
    .unwrap();
    write_lines(&state.join("audit.log"), 60, 10);
    assert!(state.join("audit.log.5").exists());
    let (code, out) = ctl(&["audit", "verify", "-C", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("in 6 file(s)"), "{out}");
    // The oldest rotated file is gone entirely past keep: still a chain
    // (noted), but removing a middle one is a break.
    std::fs::remove_file(state.join("audit.log.3")).unwrap();
    let (code, out) = ctl(&["audit", "verify", "-C", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("chain break across files"), "{out}");
    // Usage errors are 2.
    assert_eq!(ctl(&["audit", "check"]).0, 2);
}
