//! Loads the real `libgetinfo_groups.so` through the host's loader and
//! checks its answers against this host's /etc/group, /etc/passwd and
//! `getent group root`.

use basicagent_abi::retcode;
use basicagent_testsupport::plugin::{call, call_args, data, load_built};
use serde_json::Value;

/// (name, gid, members) of every well-formed line of /etc/group.
fn etc_group() -> Vec<(String, u64, Vec<String>)> {
    std::fs::read_to_string("/etc/group")
        .expect("read /etc/group")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(['#', '+', '-']))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() != 4 {
                return None;
            }
            let members = f[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect();
            Some((f[0].to_owned(), f[2].parse().ok()?, members))
        })
        .collect()
}

#[test]
fn descriptor_and_usage() {
    let p = load_built("getinfo_groups");
    assert_eq!(p.info().name, "getinfo_groups");
    assert_eq!(p.info().methods, vec!["getinfo.groups".to_owned()]);
    for word in ["-G NAME", "members", "primary_users", "gid", "3024"] {
        assert!(p.info().usage.contains(word), "usage lacks {word}");
    }
}

#[test]
fn all_matches_etc_group() {
    let p = load_built("getinfo_groups");
    let v = data(&call_args(&p, ""));
    let expected = etc_group();
    assert_eq!(v["count"].as_u64(), Some(expected.len() as u64));
    let groups = v["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), expected.len());
    for (g, (name, gid, members)) in groups.iter().zip(&expected) {
        assert_eq!(g["name"].as_str(), Some(name.as_str()));
        assert_eq!(g["gid"].as_u64(), Some(*gid));
        let got: Vec<&str> = g["members"]
            .as_array()
            .expect("members")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(got, *members, "members of {name}");
    }
}

#[test]
fn primary_users_match_etc_passwd() {
    let p = load_built("getinfo_groups");
    let v = data(&call_args(&p, ""));
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    for g in v["groups"].as_array().expect("groups") {
        let gid = g["gid"].as_u64().expect("gid").to_string();
        let expected: Vec<&str> = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .filter(|f| f.len() == 7 && f[3] == gid)
            .map(|f| f[0])
            .collect();
        let got: Vec<&str> = g["primary_users"]
            .as_array()
            .expect("primary_users")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(got, expected, "primary users of gid {gid}");
    }
}

#[test]
fn root_matches_getent() {
    let out = std::process::Command::new("getent")
        .args(["group", "root"])
        .output()
        .expect("run getent");
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).expect("utf-8");
    let f: Vec<&str> = line.trim_end().split(':').collect();
    assert_eq!(f.len(), 4, "{line}");
    let p = load_built("getinfo_groups");
    for args in ["-G root", "-G 0", "-G'root'"] {
        let v = data(&call_args(&p, args));
        assert_eq!(v["count"], 1);
        let g = &v["groups"][0];
        assert_eq!(g["name"].as_str(), Some(f[0]));
        assert_eq!(
            g["gid"].as_u64().map(|g| g.to_string()).as_deref(),
            Some(f[2])
        );
        let members: Vec<&str> = f[3].split(',').filter(|m| !m.is_empty()).collect();
        assert_eq!(g["members"], serde_json::json!(members));
        assert!(g["primary_users"]
            .as_array()
            .expect("primary_users")
            .contains(&Value::from("root")));
    }
}

#[test]
fn errors() {
    let p = load_built("getinfo_groups");
    let c = call_args(&p, "-G no-such-group-xyz");
    assert_eq!(c.retcode, retcode::UNKNOWN_USER, "{}", c.message);
    assert!(c.message.contains("no-such-group-xyz"));
    for bad in ["-x", "-G", "root", "-G 'a", "-G a -G b"] {
        let c = call_args(&p, bad);
        assert_eq!(c.retcode, retcode::INVALID_PARAMS, "{bad}: {}", c.message);
        assert!(
            c.message.contains("primary_users"),
            "usage missing: {}",
            c.message
        );
        assert!(c.data.is_none());
    }
    let c = call(&p, r#"{"method":"getinfo.groups","args":["-G","root"]}"#);
    assert_eq!(c.retcode, retcode::INVALID_PARAMS);
    for bad in ["[1]", "\"x\"", "{", "42"] {
        assert_eq!(call(&p, bad).retcode, retcode::INVALID_REQUEST, "{bad}");
    }
}
