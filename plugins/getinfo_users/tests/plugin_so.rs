//! Loads the real `libgetinfo_users.so` through the host's loader and
//! checks its answers against this host's /etc/passwd.

use std::collections::BTreeSet;

use basicagent_abi::retcode;
use basicagent_testsupport::plugin::{call_args, data, load_built};
use serde_json::Value;

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
    let p = load_built("getinfo_users");
    assert_eq!(p.info().name, "getinfo_users");
    assert_eq!(p.info().methods, vec!["getinfo.users".to_owned()]);
    for word in ["-U NAME", "login_shell", "shadow", "uid_min"] {
        assert!(p.info().usage.contains(word), "usage lacks {word}");
    }
}

#[test]
fn all_matches_etc_passwd() {
    let p = load_built("getinfo_users");
    let v = data(&call_args(&p, "-A"));
    let lines = passwd_lines();
    assert_eq!(v["count"].as_u64(), Some(lines.len() as u64));
    let expected: Vec<String> = lines.iter().map(|f| f[0].clone()).collect();
    assert_eq!(names(&v), expected);
    // The default is -A.
    assert_eq!(data(&call_args(&p, "")), v);
}

#[test]
fn root_record() {
    let p = load_built("getinfo_users");
    let v = data(&call_args(&p, "-U root"));
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
    let p = load_built("getinfo_users");
    let all: BTreeSet<String> = names(&data(&call_args(&p, "-A"))).into_iter().collect();
    let normal: BTreeSet<String> = names(&data(&call_args(&p, "-u"))).into_iter().collect();
    let system: BTreeSet<String> = names(&data(&call_args(&p, "-S"))).into_iter().collect();
    assert!(normal.is_disjoint(&system));
    assert_eq!(normal.union(&system).cloned().collect::<BTreeSet<_>>(), all);
    assert!(system.contains("root"));
}

#[test]
fn no_hash_from_the_real_shadow() {
    let p = load_built("getinfo_users");
    let out = call_args(&p, "-A").data.expect("data");
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
    let p = load_built("getinfo_users");
    for args in ["-x", "-A -S", "stray", "-U", "-U 'unterminated"] {
        let c = call_args(&p, args);
        assert_eq!(c.retcode, retcode::INVALID_PARAMS, "{args}: {}", c.message);
        assert!(c.message.contains("usage: getinfo.users"), "{}", c.message);
    }
    let c = call_args(&p, "-U no-such-user-basicagent");
    assert_eq!(c.retcode, retcode::UNKNOWN_USER, "{}", c.message);
    assert!(c.message.contains("no-such-user-basicagent"));
}
