//! `BasicAgentCtl audit verify`: OK with the line count on a real chain,
//! exit 1 naming FILE:LINE for an edited, a deleted and a swapped line,
//! the configured log and its rotated files by default.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use basicagent_host::audit::{FileDisk, Job, Writer};
use basicagent_host::config::AuditFsync;
use serde_json::{Map, Value};

fn write_lines(path: &Path, n: usize, max_bytes: u64) {
    let (disk, start) = FileDisk::open(path, 5).unwrap();
    let mut w = Writer::new(disk, start, max_bytes, AuditFsync::Batch, Arc::default());
    let jobs = (0..n)
        .map(|i| Job {
            entry: Map::from_iter([
                ("n".to_owned(), Value::from(i)),
                ("command".to_owned(), Value::String(format!("echo {i}"))),
            ]),
            then: Box::new(|| {}),
        })
        .collect();
    w.write_batch(jobs);
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
        write_lines(&path, 6, 1 << 20);
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
            "[server]\nname = \"x\"\nport = 1\nca = \"/x\"\n[agent]\nstate_dir = \"{}\"\n[audit]\nkeep = 5\nmax_bytes = 4096\n",
            state.display()
        ),
    )
    .unwrap();
    write_lines(&state.join("audit.log"), 200, 4096);
    assert!(state.join("audit.log.3").exists());
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
