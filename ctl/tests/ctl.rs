//! The real `BasicAgentCtl` binary against the real plugins built beside it
//! (`cargo build --workspace` first; `scripts/test.sh` does).

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_BasicAgentCtl"))
}

fn plugin_dir() -> PathBuf {
    basicagent_testsupport::bins::bin_dir_with(&[
        "libgetinfo_kernel.so",
        "libgetinfo_users.so",
        "libfixture_misbehave.so",
        "libgetinfo_hello.so",
    ])
}

fn ctl(args: &[&str]) -> Output {
    Command::new(exe())
        .args(["-p", plugin_dir().to_str().unwrap()])
        .args(args)
        .env_remove("BASICAGENT_PLUGIN_DIR")
        .output()
        .expect("BasicAgentCtl runs")
}

/// Runs the ctl tool and parses the one JSON object it prints.
fn ctl_json(args: &[&str]) -> (Value, Output) {
    let out = ctl(args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is one JSON object ({e}): {text:?} stderr {:?}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (v, out)
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

#[test]
fn the_c_example_plugin_answers() {
    let (v, out) = ctl_json(&["-c", "getinfo.hello", "-a", "-n ops"]);
    assert_eq!(code(&out), 0);
    assert_eq!(v["resp"], "success");
    assert_eq!(v["retcode"], 2);
    assert_eq!(v["message"], "Normal termination");
    assert_eq!(v["data"]["greeting"], "hello, ops");
    assert_eq!(v["data"]["language"], "C");
    assert!(v.get("id").is_none(), "the ctl output carries no id: {v}");
    let (v, out) = ctl_json(&["-c", "getinfo.hello", "-a", "--bogus"]);
    assert_eq!(code(&out), 1);
    assert_eq!(v["retcode"], 3021);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("3021"),
        "message on stderr too"
    );
}

#[test]
fn a_panicking_rust_plugin_yields_3025() {
    for (arg, expect) in [
        ("-p", "fixture asked to panic"),
        ("-t", "fixture asked to panic in a thread"),
    ] {
        let (v, out) = ctl_json(&["-c", "fixture.misbehave", "-a", arg]);
        assert_eq!(code(&out), 1);
        assert_eq!(v["resp"], "failed");
        assert_eq!(v["retcode"], 3025, "{v}");
        assert!(v["message"].as_str().unwrap().contains(expect), "{v}");
    }
}

#[test]
fn a_misbehaving_plugin_never_breaks_the_output() {
    let (v, _) = ctl_json(&["-c", "fixture.misbehave", "-a", "-b"]);
    assert_eq!(v["retcode"], 3025);
    assert!(
        v["message"].as_str().unwrap().contains("invalid JSON"),
        "{v}"
    );
    // Completing twice: the first answer counts, the second is ignored.
    let (v, out) = ctl_json(&["-c", "fixture.misbehave", "-a", "-x"]);
    assert_eq!(code(&out), 0);
    assert_eq!(v["data"]["first"], true);
    // A call the plugin never completes: -t gives up with 3023.
    let (v, out) = ctl_json(&["-t", "0.5", "-c", "fixture.misbehave", "-a", "-d"]);
    assert_eq!(code(&out), 1);
    assert_eq!(v["retcode"], 3023);
    assert_eq!(
        v["message"], "Timeout: no answer from the plugin within the -t limit",
        "the ctl's own message starts with the standard text"
    );
    // The SDK's ABI 1.1 readers, from a plugin thread.
    let (v, out) = ctl_json(&[
        "-c",
        "fixture.misbehave",
        "-a",
        "-r -n '1 2'",
        "-j",
        r#"{"s":"x y","i":5,"f":1.5,"b":true}"#,
    ]);
    assert_eq!(code(&out), 0, "{v}");
    assert_eq!(
        v["data"],
        serde_json::json!({"argv":["fixture.misbehave","-r","-n","1 2"],"s":"x y","i":5,"f":1.5,"b":true,"missing":"not found"})
    );
    // Completed later from another thread.
    let (v, _) = ctl_json(&["-c", "fixture.misbehave", "-a", "-s 20"]);
    assert_eq!(v["data"]["slept_ms"], 20);
}

#[test]
fn the_request_carries_args_and_merged_json() {
    let (v, _) = ctl_json(&[
        "-c",
        "fixture.misbehave",
        "-a",
        "-e",
        "-j",
        r#"{"x":1,"method":"ignored"}"#,
    ]);
    assert_eq!(v["data"]["method"], "fixture.misbehave");
    assert_eq!(v["data"]["args"], "-e");
    assert_eq!(v["data"]["x"], 1);
}

#[test]
fn bad_method_names_and_unknown_methods_are_3022() {
    for m in ["../../etc/passwd", "getinfo", "getinfo.USERS", "a.b.c"] {
        let (v, out) = ctl_json(&["-c", m]);
        assert_eq!(code(&out), 1, "{m}");
        assert_eq!(v["retcode"], 3022, "{m}: {v}");
        assert!(
            v["message"]
                .as_str()
                .unwrap()
                .contains("invalid method name"),
            "{v}"
        );
    }
    let (v, _) = ctl_json(&["-c", "getinfo.nosuchthing"]);
    assert_eq!(v["retcode"], 3022);
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("libgetinfo_nosuchthing.so not found"),
        "{v}"
    );
}

#[test]
fn usage_errors_exit_2_with_usage() {
    for args in [
        &["-c", "getinfo.kernel", "-j", "[1]"][..],
        &["-j", "{"][..],
        &["--nope"][..],
        &[][..],
        &["-t", "x", "-c", "a.b"][..],
    ] {
        let out = ctl(args);
        assert_eq!(code(&out), 2, "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    let out = ctl(&["-h"]);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: BasicAgentCtl"));
}

#[test]
fn list_shows_every_plugin_with_usage() {
    let out = ctl(&["-l"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "getinfo.kernel",
        "getinfo.users",
        "getinfo.hello",
        "-U NAME",
        "file: ",
    ] {
        assert!(text.contains(needle), "{needle} not in:\n{text}");
    }
}

#[test]
fn list_names_refused_files_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        plugin_dir().join("libgetinfo_hello.so"),
        dir.path().join("libgetinfo_hello.so"),
    )
    .unwrap();
    std::fs::write(dir.path().join("libgetinfo_broken.so"), "not elf").unwrap();
    let out = Command::new(exe())
        .args(["-l", "-p", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code(&out), 1);
    assert!(text.contains("getinfo.hello"), "{text}");
    assert!(
        text.contains("REFUSED") && text.contains("libgetinfo_broken.so: not a shared object"),
        "{text}"
    );
}

#[test]
fn the_plugin_dir_comes_from_the_environment_then_the_exe_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(exe())
        .args(["-c", "getinfo.hello"])
        .env("BASICAGENT_PLUGIN_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(code(&out), 1, "an empty env dir has no plugin");
    std::fs::copy(
        plugin_dir().join("libgetinfo_hello.so"),
        dir.path().join("libgetinfo_hello.so"),
    )
    .unwrap();
    let out = Command::new(exe())
        .args(["-c", "getinfo.hello"])
        .env("BASICAGENT_PLUGIN_DIR", dir.path())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    if !std::path::Path::new("/usr/lib/basicagent/plugins").exists() {
        let out = Command::new(exe())
            .args(["-c", "getinfo.hello"])
            .env_remove("BASICAGENT_PLUGIN_DIR")
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "found beside the executable");
    }
}

fn uname(flag: &str) -> String {
    let out = Command::new("uname").arg(flag).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end_matches('\n')
        .to_owned()
}

#[test]
fn getinfo_kernel_agrees_with_uname() {
    let (v, out) = ctl_json(&["-c", "getinfo.kernel"]);
    assert_eq!(code(&out), 0, "{v}");
    let d = &v["data"];
    assert_eq!(d["sysname"], uname("-s"));
    assert_eq!(d["nodename"], uname("-n"));
    assert_eq!(d["release"], uname("-r"));
    assert_eq!(d["version"], uname("-v"));
    assert_eq!(d["machine"], uname("-m"));
    let (v, out) = ctl_json(&["-c", "getinfo.kernel", "-a", "-x"]);
    assert_eq!(code(&out), 1);
    assert_eq!(v["retcode"], 3021);
}

fn passwd_names() -> Vec<String> {
    std::fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').next().unwrap().to_owned())
        .collect()
}

fn names(v: &Value) -> Vec<String> {
    v["data"]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn getinfo_users_agrees_with_etc_passwd() {
    let (root, out) = ctl_json(&["-c", "getinfo.users", "-a", "-U root"]);
    assert_eq!(code(&out), 0, "{root}");
    let users = root["data"]["users"].as_array().unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0]["name"], "root");
    assert_eq!(users[0]["uid"], 0);
    assert_eq!(users[0]["gid"], 0);
    assert_eq!(users[0]["home"], "/root");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("$6$") && !text.contains("$y$") && !text.contains("$5$"),
        "no hash leaves the host: {text}"
    );

    let (all, _) = ctl_json(&["-c", "getinfo.users", "-a", "-A"]);
    let (default, _) = ctl_json(&["-c", "getinfo.users"]);
    let (normal, _) = ctl_json(&["-c", "getinfo.users", "-a", "-u"]);
    let (system, _) = ctl_json(&["-c", "getinfo.users", "-a", "-S"]);
    let mut all_names = names(&all);
    assert_eq!(all_names, names(&default));
    let mut expected = passwd_names();
    all_names.sort();
    expected.sort();
    assert_eq!(all_names, expected, "-A lists /etc/passwd");
    let mut union: Vec<String> = names(&normal).into_iter().chain(names(&system)).collect();
    union.sort();
    assert_eq!(union, all_names, "-u and -S partition -A");
    assert!(names(&system).contains(&"root".to_owned()));

    let (v, out) = ctl_json(&["-c", "getinfo.users", "-a", "-U no_such_user_xyz"]);
    assert_eq!(code(&out), 1);
    assert_eq!(v["retcode"], 3024);
    let (v, _) = ctl_json(&["-c", "getinfo.users", "-a", "-Q"]);
    assert_eq!(v["retcode"], 3021);
    assert!(
        v["message"].as_str().unwrap().contains("-U"),
        "usage in the message: {v}"
    );
}
