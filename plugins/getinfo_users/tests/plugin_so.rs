//! Loads the real `libgetinfo_users.so` through the host's loader and
//! checks its answers against this host's /etc/passwd.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use basicagent_abi::{retcode, Completion, HostSettings, Plugin};
use serde_json::Value;

/// The built cdylib, next to this test binary (target/debug/deps/) or one
/// directory up (target/debug/).
fn plugin_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let name = "libgetinfo_users.so";
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not found near {}", exe.display()))
}

fn load() -> Plugin {
    let path = plugin_path();
    Plugin::load(&path, &HostSettings::default(), false)
        .unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
}

/// Calls the plugin and waits for its one completion (which may come from
/// another thread: the NSS fallback).
fn call(plugin: &Plugin, args: &str) -> Completion {
    let (tx, rx) = mpsc::channel();
    let request =
        serde_json::json!({"id": "1", "method": "getinfo.users", "args": args}).to_string();
    plugin.call(
        request.as_bytes(),
        Box::new(move |c| {
            let _ = tx.send(c);
        }),
    );
    rx.recv_timeout(Duration::from_secs(30))
        .expect("no completion within 30 s")
}

fn data(c: &Completion) -> Value {
    assert_eq!(c.retcode, retcode::SUCCESS, "{}", c.message);
    serde_json::from_str(c.data.as_deref().expect("data")).expect("json")
}

fn names(v: &Value) -> Vec<String> {
    v["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["name"].as_str().expect("name").to_owned())
        .collect()
}

/// The records of /etc/passwd as the plugin should see them.
fn passwd_lines() -> Vec<Vec<String>> {
    std::fs::read_to_string("/etc/passwd")
        .expect("read /etc/passwd")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_owned).collect())
        .collect()
}

fn is_root() -> bool {
    uzers::get_effective_uid() == 0
}

#[test]
fn descriptor_and_usage() {
    let p = load();
    assert_eq!(p.info().name, "getinfo_users");
    assert_eq!(p.info().methods, vec!["getinfo.users".to_owned()]);
    for word in ["-U NAME", "login_shell", "shadow", "uid_min"] {
        assert!(p.info().usage.contains(word), "usage lacks {word}");
    }
}

#[test]
fn all_matches_etc_passwd() {
    let p = load();
    let v = data(&call(&p, "-A"));
    let lines = passwd_lines();
    assert_eq!(v["count"].as_u64(), Some(lines.len() as u64));
    let expected: Vec<String> = lines.iter().map(|f| f[0].clone()).collect();
    assert_eq!(names(&v), expected);
    // The default is -A.
    assert_eq!(data(&call(&p, "")), v);
}

#[test]
fn root_record() {
    let p = load();
    let v = data(&call(&p, "-U root"));
    assert_eq!(v["count"], 1);
    let root = &v["users"][0];
    let line = passwd_lines()
        .into_iter()
        .find(|f| f[0] == "root")
        .expect("root in /etc/passwd");
    assert_eq!(root["name"], "root");
    assert_eq!(root["uid"], 0);
    assert_eq!(root["gid"], 0);
    assert_eq!(root["group"], "root");
    assert_eq!(root["home"].as_str(), Some(line[5].as_str()));
    assert_eq!(root["shell"].as_str(), Some(line[6].as_str()));
    assert_eq!(root["kind"], "system");
    if is_root() && std::fs::metadata("/etc/shadow").is_ok() {
        let state = root["shadow"]["password"]
            .as_str()
            .expect("shadow.password");
        assert!(["set", "empty", "locked", "none"].contains(&state));
        assert!(v.get("shadow_note").is_none());
    } else {
        assert!(root.get("shadow").is_none());
        assert!(v["shadow_note"].is_string());
    }
}

#[test]
fn normal_and_system_partition_all() {
    let p = load();
    let all: BTreeSet<String> = names(&data(&call(&p, "-A"))).into_iter().collect();
    let normal: BTreeSet<String> = names(&data(&call(&p, "-u"))).into_iter().collect();
    let system: BTreeSet<String> = names(&data(&call(&p, "-S"))).into_iter().collect();
    assert!(normal.is_disjoint(&system));
    assert_eq!(normal.union(&system).cloned().collect::<BTreeSet<_>>(), all);
    assert!(system.contains("root"));
}

#[test]
fn no_hash_from_the_real_shadow() {
    let p = load();
    let out = call(&p, "-A").data.expect("data");
    assert!(
        !out.contains("$6$")
            && !out.contains("$y$")
            && !out.contains("$5$")
            && !out.contains("$1$")
    );
    if let Ok(shadow) = std::fs::read_to_string("/etc/shadow") {
        for field in shadow.lines().filter_map(|l| l.split(':').nth(1)) {
            if field.len() > 3 {
                assert!(!out.contains(field), "a shadow password field leaked");
            }
        }
    }
}

#[test]
fn errors() {
    let p = load();
    for args in ["-x", "-A -S", "stray", "-U", "-U 'unterminated"] {
        let c = call(&p, args);
        assert_eq!(c.retcode, retcode::INVALID_PARAMS, "{args}: {}", c.message);
        assert!(c.message.contains("usage: getinfo.users"), "{}", c.message);
    }
    let c = call(&p, "-U no-such-user-basicagent");
    assert_eq!(c.retcode, retcode::UNKNOWN_USER, "{}", c.message);
    assert!(c.message.contains("no-such-user-basicagent"));
}
