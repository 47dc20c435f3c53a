//! `BasicAgentCtl` and the daemon's control socket, without a daemon:
//! a missing socket means a local call, `plugin release` needs a daemon
//! and says so, a peer that is not the daemon is reported, never
//! replaced by a local call. (With the real daemon: host/tests/plugin_host.rs.)

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Output};

fn ctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_BasicAgentCtl"))
        .args(args)
        .env_remove("BASICAGENT_PLUGIN_DIR")
        .env_remove("BASICAGENT_CTL_SOCKET")
        .output()
        .unwrap()
}

fn plugin_dir() -> PathBuf {
    basicagent_testsupport::bin_dir()
}

#[test]
fn plugin_release_without_a_daemon_says_so_and_bad_usage_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("ctl.sock");
    let out = ctl(&[
        "plugin",
        "release",
        "fixture_misbehave",
        "-S",
        sock.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no daemon answers there"), "{err}");
    assert_eq!(ctl(&["plugin", "release"]).status.code(), Some(2));
    assert_eq!(ctl(&["plugin", "release", "a", "b"]).status.code(), Some(2));
}

#[test]
fn a_missing_socket_means_a_local_call_and_local_flags_skip_the_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("none.sock");
    let dir = plugin_dir();
    // No -p: the socket is tried, missing, and the tool loads the plugin
    // from its default directory (an answer either way, no socket error).
    let out = ctl(&[
        "-S",
        sock.to_str().unwrap(),
        "-c",
        "fixture.misbehave",
        "-a",
        "-e",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["retcode"] == 2 || v["retcode"] == 3022, "{v}");
    for args in [
        vec!["-S", sock.to_str().unwrap(), "-p", dir.to_str().unwrap()],
        vec!["--local", "-p", dir.to_str().unwrap()],
    ] {
        let mut a = args.clone();
        a.extend(["-c", "fixture.misbehave", "-a", "-e"]);
        let out = ctl(&a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["retcode"], 2);
    }
}

#[test]
fn a_peer_that_answers_with_a_refusal_line_is_an_error_not_a_local_call() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("ctl.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        s.write_all(
            b"BasicAgent: refused: the control socket serves uid 0 only (the client is uid 7)\n",
        )
        .unwrap();
    });
    let out = ctl(&["-S", sock.to_str().unwrap(), "-c", "fixture.misbehave"]);
    server.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no local answer");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused: the control socket serves uid 0 only"),
        "{err}"
    );
}
