//! `sync.bash` through the real shared object: every "done when" item.

mod common;

use std::time::{Duration, Instant};

use basicagent_abi::retcode;
use common::{gone, live, start, wait, Answer, Reap};
use serde_json::{json, Value};

fn run(request: Value) -> Answer {
    common::run_with(common::plugin(r#"{"kill_grace_ms":1000}"#), request)
}

fn ok(request: Value) -> Value {
    let a = run(request);
    assert_eq!(a.retcode, retcode::SUCCESS, "{a:?}");
    a.data
}

#[test]
fn descriptor() {
    let p = common::plugin(r#"{"kill_grace_ms":1000}"#);
    assert_eq!(p.info().name, "sync_bash");
    assert_eq!(p.info().methods, vec!["sync.bash".to_owned()]);
    assert!(p.info().usage.contains("max_output"));
}

#[test]
fn root_by_default() {
    let d = ok(json!({"cmd":"id -u; id -g; echo $HOME; echo $USER; pwd"}));
    assert_eq!(d["stdout"], "0\n0\n/root\nroot\n/root\n");
    assert_eq!(
        (d["exitcode"].as_i64(), d["uid"].as_i64(), d["gid"].as_i64()),
        (Some(0), Some(0), Some(0))
    );
    assert_eq!(d["signal"], Value::Null);
    assert_eq!(d["user"], "root");
}

#[test]
fn as_nobody() {
    let d = ok(
        json!({"id":"1","method":"sync.bash","cmd":"id -u; id -g; echo $HOME; echo $USER; echo $LOGNAME; pwd",
        "user":"nobody"}),
    );
    assert_eq!(
        d["stdout"],
        "65534\n65534\n/nonexistent\nnobody\nnobody\n/\n"
    );
    assert_eq!(
        (d["uid"].as_i64(), d["gid"].as_i64()),
        (Some(65534), Some(65534))
    );
    assert_eq!(d["groups"], json!([65534]));
}

#[test]
fn group_daemon() {
    let d = ok(json!({"cmd":"id -g; id -G","user":"nobody","group":"daemon"}));
    let out = d["stdout"].as_str().unwrap();
    assert!(out.starts_with("1\n"), "{out}");
    assert_eq!(d["gid"], 1);
    assert_eq!(d["group"], "daemon");
}

struct TestUser {
    user: String,
    group: String,
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("userdel")
            .arg(&self.user)
            .status();
        let _ = std::process::Command::new("groupdel")
            .arg(&self.group)
            .status();
    }
}

#[test]
fn supplementary_group() {
    let n = std::process::id();
    let t = TestUser {
        user: format!("basu{n}"),
        group: format!("basg{n}"),
    };
    let st = std::process::Command::new("groupadd")
        .arg(&t.group)
        .status()
        .unwrap();
    assert!(st.success());
    let st = std::process::Command::new("useradd")
        .args([
            "-M",
            "-N",
            "-g",
            "nogroup",
            "-G",
            &t.group,
            "-d",
            "/nonexistent",
            "-s",
            "/bin/sh",
            &t.user,
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let d = ok(json!({"cmd":"id -Gn; echo $SHELL","user":t.user}));
    let out = d["stdout"].as_str().unwrap();
    assert!(
        out.lines().next().unwrap().split(' ').any(|g| g == t.group),
        "{out}"
    );
    assert!(out.ends_with("/bin/sh\n"), "{out}");
    assert_eq!(d["groups"].as_array().unwrap().len(), 2);
}

#[test]
fn timeout_kills_the_group() {
    let _reap = Reap(vec![vec!["sleep", "1001"]]);
    let t0 = Instant::now();
    let a = run(json!({"cmd":"echo partial; echo err >&2; sleep 1001 & sleep 1001","timeout":1}));
    let took = t0.elapsed();
    assert_eq!(a.retcode, retcode::TIMEOUT, "{a:?}");
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(a.message.starts_with("Timeout"), "{}", a.message);
    assert_eq!(a.data["stdout"], "partial\n");
    assert_eq!(a.data["stderr"], "err\n");
    assert_eq!(a.data["signal"], "SIGTERM");
    assert_eq!(a.data["signal_sent_by_agent"], true);
    assert!(
        gone(&["sleep", "1001"], Duration::from_secs(1)),
        "sleep 1001 survived: {:?}",
        live(&["sleep", "1001"])
    );
}

#[test]
fn timeout_escalates_to_sigkill() {
    let _reap = Reap(vec![vec!["sleep", "1007"]]);
    let t0 = Instant::now();
    let a = run(json!({"cmd":"trap '' TERM; sleep 1007 & trap '' TERM; wait; wait","timeout":1}));
    assert_eq!(a.retcode, retcode::TIMEOUT, "{a:?}");
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(a.data["signal"], "SIGKILL");
    assert!(gone(&["sleep", "1007"], Duration::from_secs(1)));
}

#[test]
fn background_daemon_does_not_hold_the_answer() {
    let _reap = Reap(vec![vec!["sleep", "1002"], vec!["sleep", "1003"]]);
    let t0 = Instant::now();
    let d =
        ok(json!({"cmd":"(setsid sleep 1002 &); nohup sleep 1003 & echo started","timeout":30}));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(d["stdout"], "started\n");
    assert_eq!(d["exitcode"], 0);
    // The daemons keep running: the agent does not own them any more
    // (nohup may not have exec'd sleep yet when the answer arrives).
    for argv in [["sleep", "1002"], ["sleep", "1003"]] {
        let t0 = Instant::now();
        while live(&argv).is_empty() && t0.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!live(&argv).is_empty(), "{argv:?} is not running");
    }
}

#[test]
fn big_output_is_truncated() {
    let d = ok(json!({"cmd":"head -c 200000000 /dev/zero | tr '\\0' a; echo done >&2"}));
    assert_eq!(d["stdout_truncated"], true);
    assert_eq!(d["stdout_bytes"], 200_000_000u64);
    assert_eq!(d["stdout"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(d["stderr"], "done\n");
    assert_eq!(d["stderr_truncated"], false);
}

#[test]
fn max_output_per_request() {
    let d = ok(json!({"cmd":"echo 0123456789abcdef","max_output":10}));
    assert_eq!(d["stdout"], "0123456789");
    assert_eq!(
        (d["stdout_bytes"].as_u64(), d["stdout_truncated"].as_bool()),
        (Some(17), Some(true))
    );
    let a = run(json!({"cmd":"true","max_output":16777217}));
    assert_eq!(a.retcode, retcode::INVALID_PARAMS);
    assert_eq!(a.message, "Invalid params: max_output must be <= 16777216");
}

#[test]
fn stdin_cwd_env() {
    let d = ok(
        json!({"cmd":"cat; pwd; echo $FOO ${CARGO_PKG_NAME:-clean} $PATH","stdin":"line1\nline2\n",
        "cwd":"/tmp","env":{"FOO":"bar baz"}}),
    );
    assert_eq!(
        d["stdout"],
        "line1\nline2\n/tmp\nbar baz clean /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );
    // No stdin: /dev/null, so cat ends at once.
    let d = ok(json!({"cmd":"cat; readlink /proc/self/fd/0","timeout":5}));
    assert_eq!(d["stdout"], "/dev/null\n");
}

#[test]
fn big_stdin_and_unread_stdin() {
    let big = "x".repeat(3 << 20);
    let d = ok(json!({"cmd":"wc -c","stdin":big}));
    assert_eq!(d["stdout"].as_str().unwrap().trim(), (3 << 20).to_string());
    let t0 = Instant::now();
    let d = ok(json!({"cmd":"true","stdin":big}));
    assert_eq!(d["exitcode"], 0);
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn missing_cwd() {
    let a = run(json!({"cmd":"pwd","cwd":"/no/such/dir"}));
    assert_eq!(a.retcode, retcode::INVALID_PARAMS, "{a:?}");
    assert!(a.message.contains("/no/such/dir"), "{}", a.message);
}

#[test]
fn non_utf8_output() {
    let d = ok(json!({"cmd":"printf 'ok\\377\\376!'; printf 'fine' >&2"}));
    assert_eq!(d["stdout"], "ok\u{FFFD}\u{FFFD}!");
    assert_eq!(
        (d["stdout_lossy"].as_bool(), d["stderr_lossy"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(d["stdout_bytes"], 5);
    assert_eq!(d["stderr"], "fine");
}

#[test]
fn exit_codes_and_signals() {
    let d = ok(json!({"cmd":"exit 3"}));
    assert_eq!(
        (d["exitcode"].as_i64(), d["signal"].is_null()),
        (Some(3), true)
    );
    let a = run(json!({"cmd":"kill -SEGV $$"}));
    assert_eq!(a.retcode, retcode::SUCCESS);
    assert_eq!(a.data["signal"], "SIGSEGV");
    assert_eq!(a.data["exitcode"], Value::Null);
    assert_eq!(a.data["signal_sent_by_agent"], false);
    assert!(a.message.contains("not sent by the agent"), "{}", a.message);
    assert!(a.data["elapsed_ms"].is_u64() && a.data["pid"].as_i64().unwrap() > 1);
}

#[test]
fn unknown_user_and_group() {
    let a = run(json!({"cmd":"true","user":"no_such_user_ba"}));
    assert_eq!(
        (a.retcode, a.message.as_str()),
        (
            retcode::UNKNOWN_USER,
            "Unknown user or group: no such user \"no_such_user_ba\""
        )
    );
    let a = run(json!({"cmd":"true","group":"no_such_group_ba"}));
    assert_eq!(a.retcode, retcode::UNKNOWN_USER);
}

#[test]
fn invalid_params() {
    for (req, msg) in [
        (json!({}), "Invalid params: cmd must be a non-empty string"),
        (
            json!({"cmd":""}),
            "Invalid params: cmd must be a non-empty string",
        ),
        (
            json!({"cmd":"true","timeout":0}),
            "Invalid params: timeout must be >= 1",
        ),
        (
            json!({"cmd":"true","timeout":86401}),
            "Invalid params: timeout must be <= 86400",
        ),
        (
            json!({"cmd":"true","timeout":"5"}),
            "Invalid params: timeout must be an integer (seconds)",
        ),
        (
            json!({"cmd":"true","env":{"A":1}}),
            "Invalid params: env value of \"A\" must be a string",
        ),
    ] {
        let a = run(req);
        assert_eq!(
            (a.retcode, a.message.as_str()),
            (retcode::INVALID_PARAMS, msg)
        );
    }
    let p = common::plugin(r#"{"kill_grace_ms":1000}"#);
    let (tx, rx) = std::sync::mpsc::channel();
    p.call(b"not json", Box::new(move |c| tx.send(c).unwrap()));
    assert_eq!(rx.recv().unwrap().retcode, retcode::INVALID_REQUEST);
}

#[test]
fn cancel_stops_the_group() {
    let _reap = Reap(vec![vec!["sleep", "1004"]]);
    let p = common::plugin(r#"{"kill_grace_ms":1000}"#);
    let (id, rx) = start(p, &json!({"cmd":"echo before; sleep 1004","timeout":60}));
    let t0 = Instant::now();
    while live(&["sleep", "1004"]).is_empty() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    p.cancel(id);
    let a = wait(&rx);
    assert_eq!(a.retcode, retcode::CANCELLED, "{a:?}");
    assert_eq!(a.data["stdout"], "before\n");
    assert_eq!(a.data["signal_sent_by_agent"], true);
    assert!(gone(&["sleep", "1004"], Duration::from_secs(1)));
    p.cancel(id); // already answered: ignored
}

#[test]
fn fifty_concurrent() {
    let p = common::plugin(r#"{"kill_grace_ms":1000}"#);
    let t0 = Instant::now();
    let calls: Vec<_> = (0..50)
        .map(|i| start(p, &json!({"cmd":format!("sleep 1; echo {i}")})))
        .collect();
    for (i, (_, rx)) in calls.iter().enumerate() {
        let a = wait(rx);
        assert_eq!(a.retcode, retcode::SUCCESS, "{a:?}");
        assert_eq!(a.data["stdout"], format!("{i}\n"));
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(4), "{took:?}");
}

/// Zombie children of this process, as "pid (comm)" lines.
fn zombie_children() -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        if fields.get(1) == Some(&me.as_str()) && fields[0] == "Z" {
            out.push(stat);
        }
    }
    out
}

#[test]
fn no_zombie_children() {
    let d = ok(json!({"cmd":"true"}));
    // The command itself is reaped before it is answered.
    let pid = d["pid"].as_i64().unwrap();
    assert!(
        !zombie_children()
            .iter()
            .any(|z| z.starts_with(&format!("{pid} "))),
        "command {pid} left a zombie"
    );
    // Orphans of other tests' commands come back to this process (a
    // child subreaper) and are reaped by the plugin's reaper, within a
    // few of its rounds.
    let t0 = Instant::now();
    loop {
        let z = zombie_children();
        if z.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "zombie children: {z:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Item 2 of issue 12: ids above 16 bits survive the switch exactly (on
/// i386/armhf the legacy 16-bit calls made uid 70000 into 4464 and could
/// make a group 0). A user of uid >= 65536 in two supplementary groups of
/// gid >= 65536.
#[test]
fn ids_above_16_bits_are_exact() {
    // Unique per run: the branch name and our pid.
    let n = std::process::id();
    let base = 200_000 + (n % 100_000) * 4;
    let (uid, g1, g2, g3) = (base + 65_536 * 3, base + 1, base + 2, base + 3);
    let user = format!("hardexec-u{n}");
    let groups = [
        (format!("hardexec-p{n}"), g1),
        (format!("hardexec-a{n}"), g2),
        (format!("hardexec-b{n}"), g3),
    ];
    struct Cleanup(String, Vec<String>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("userdel").arg(&self.0).status();
            for g in &self.1 {
                let _ = std::process::Command::new("groupdel").arg(g).status();
            }
        }
    }
    let _cleanup = Cleanup(user.clone(), groups.iter().map(|g| g.0.clone()).collect());
    for (name, gid) in &groups {
        let st = std::process::Command::new("groupadd")
            .args(["-g", &gid.to_string(), name])
            .status()
            .unwrap();
        assert!(st.success(), "groupadd {name}");
    }
    let st = std::process::Command::new("useradd")
        .args([
            "-M",
            "-N",
            "-u",
            &uid.to_string(),
            "-g",
            &groups[0].0,
            "-G",
            &format!("{},{}", groups[1].0, groups[2].0),
            "-d",
            "/nonexistent",
            "-s",
            "/bin/sh",
            &user,
        ])
        .status()
        .unwrap();
    assert!(st.success(), "useradd {user}");
    let d = ok(
        json!({"cmd":"id -u; id -g; id -G; cat /proc/self/status | grep -E '^(Uid|Gid|Groups):'","user":user}),
    );
    let out = d["stdout"].as_str().unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(uid.to_string().as_str()), "{out}");
    assert_eq!(lines.next(), Some(g1.to_string().as_str()), "{out}");
    let mut got: Vec<u32> = lines
        .next()
        .unwrap()
        .split(' ')
        .map(|g| g.parse().unwrap())
        .collect();
    got.sort_unstable();
    assert_eq!(got, vec![g1, g2, g3], "{out}");
    // Real, effective, saved and filesystem ids, straight from the kernel.
    assert!(
        out.contains(&format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("Gid:\t{g1}\t{g1}\t{g1}\t{g1}")),
        "{out}"
    );
    assert!(
        !out.contains("\t0\t") && !out.contains("Groups:\t0"),
        "{out}"
    );
    assert_eq!(
        (d["uid"].as_u64(), d["gid"].as_u64()),
        (Some(uid as u64), Some(g1 as u64))
    );
}
