//! Hardening of the daemon (issue 12, items 3, 4, 5, 6 and 12), each
//! against the real `BasicAgent` binary: a hostile init reply, absurd
//! configuration durations, a full disk at start, answers larger than the
//! frame limit, a server that stops reading, and secrets in logs and
//! loose files. The control server is the harness's tiny rustls server
//! (`basicagent_testsupport::mini`), so the test decides every byte the agent receives.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use basicagent_testsupport::mini::{MiniConn, MiniServer};
use basicagent_testsupport::*;
use serde_json::Value;

const ACCEPTED: &str =
    r#"{"method":"init","resp":"success","retcode":2,"message":"Normal termination"}"#;
const T: Duration = Duration::from_secs(20);

/// A mini server on a fresh 127.0.0.x address and an agent configured for it.
fn setup(
    reply: &str,
    last_octet: u8,
    server_extra: &str,
    agent_extra: &str,
) -> (Pki, MiniServer, Agent) {
    let pki = Pki::new();
    let ip = format!("127.0.{}.{last_octet}", 40 + (std::process::id() % 50));
    let server = MiniServer::start(&pki, &format!("{ip}:0"), reply);
    let agent = Agent::configure(
        &pki,
        server.addr.port(),
        &[&ip],
        &format!("dns = false\n{server_extra}"),
        agent_extra,
    );
    (pki, server, agent)
}

fn status_kib(pid: i32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

// ---------------------------------------------------------------- item 3

#[test]
fn a_huge_heartbeat_in_the_init_reply_is_clamped_and_the_agent_keeps_serving() {
    for (i, hb) in ["18446744073709551615", "6148914691236517206"]
        .iter()
        .enumerate()
    {
        let reply = format!(
            r#"{{"method":"init","resp":"success","retcode":2,"message":"Normal termination","heartbeat":{hb}}}"#
        );
        let (_pki, server, mut agent) = setup(&reply, 10 + i as u8, "", "");
        agent.spawn(&["-f"]);
        let mut conn = server.accept(T);
        assert_eq!(conn.call(r#"{"method":"ping"}"#, T)["retcode"], 2);
        let kernel = conn.call(r#"{"method":"getinfo.kernel"}"#, T);
        assert_eq!(kernel["retcode"], 2, "{kernel}");
        assert!(agent.running(), "the agent is still up (heartbeat {hb})");
        let log = agent.log();
        assert!(
            log.contains(&format!(
                "init reply heartbeat {hb} s is outside 1..=86400 s; using 86400 s"
            )),
            "{log}"
        );
    }
}

#[test]
fn a_duration_past_its_range_in_the_configuration_is_a_clear_error_at_start() {
    for (table, key, value) in [
        ("server", "connect_timeout", "1e19"),
        ("server", "handshake_timeout", "6148914691236517206"),
        ("agent", "heartbeat", "1e19"),
        ("agent", "heartbeat", "6148914691236517206"),
        ("agent", "task_retention", "1e19"),
    ] {
        let (server_extra, agent_extra) = if table == "server" {
            (format!("{key} = {value}"), String::new())
        } else {
            (String::new(), format!("{key} = {value}"))
        };
        // The harness sets connect/handshake timeouts: override by
        // appending a second table would be a TOML error, so write the
        // file by hand.
        let (_pki, _server, agent) = setup(ACCEPTED, 20, "", "");
        let path = agent.path("agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} =")))
            .collect::<Vec<_>>()
            .join("\n")
            .replace("[server]\n", &format!("[server]\n{server_extra}\n"))
            .replace("[agent]\n", &format!("[agent]\n{agent_extra}\n"));
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_BasicAgent"))
            .arg("-c")
            .arg(&path)
            .arg("-f")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{table}.{key} = {value}: {err}");
        assert!(
            err.contains(&format!("{table}.{key}")) && err.contains("maximum"),
            "{table}.{key} = {value}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_reload_with_a_duration_past_its_range_is_refused_and_the_agent_keeps_serving() {
    let (_pki, server, mut agent) = setup(ACCEPTED, 21, "", "");
    agent.spawn(&["-f"]);
    let conn = server.accept(T);
    let path = agent.path("agent.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        good.replace("[agent]\n", "[agent]\nheartbeat = 1e19\n"),
    )
    .unwrap();
    agent.signal(libc::SIGHUP);
    wait_for("the refused reload", T, || {
        agent
            .log()
            .contains("keeping the running configuration")
            .then_some(())
    });
    // The next connection still uses sane durations.
    conn.close();
    let mut conn = server.accept(T);
    assert_eq!(conn.call(r#"{"method":"ping"}"#, T)["retcode"], 2);
    assert!(agent.running());
    let log = agent.log();
    assert!(
        log.contains("agent.heartbeat") && log.contains("maximum"),
        "{log}"
    );
}

// ---------------------------------------------------------------- item 4

#[test]
fn a_full_disk_at_start_does_not_keep_the_agent_from_starting_and_the_result_comes_from_memory() {
    let (_pki, server, mut agent) = setup(
        ACCEPTED,
        30,
        "",
        "host_id = \"0b7f5d1c-445e-49c0-8612-111b741b920f\"",
    );
    let task = "6a0d3c52-2f0e-4a49-9a3b-8e1f1d5b7c01";
    let marker = agent.path("marker");
    std::fs::write(
        &marker,
        format!(r#"{{"task":"{task}","cmd":"sleep 1000","started":1}}"#),
    )
    .unwrap();
    let state = agent.path("state");
    std::fs::create_dir(&state).unwrap();
    // A 64 KiB tmpfs over the state directory, in a private mount
    // namespace, holding the marker and filled up; then the daemon.
    let script = r#"set -e
mount -t tmpfs -o size=64k,mode=0700 tmpfs "$S"
mkdir -m 700 "$S/tasks"
cp "$M" "$S/tasks/$ID.running"
dd if=/dev/zero of="$S/fill" bs=1k 2>/dev/null || true
exec "$@""#;
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", script, "sh"])
        .arg(env!("CARGO_BIN_EXE_BasicAgent"))
        .args(agent.args("debug", &["-f"]))
        .env("S", &state)
        .env("M", &marker)
        .env("ID", task);
    agent.spawn_command(cmd);
    let mut conn = server.accept(T);
    let done = conn.read_until(T, |v| v["method"] == "task.done");
    assert_eq!(done["task"], task, "{done}");
    assert_eq!(done["retcode"], 3025, "{done}");
    assert!(
        done["message"]
            .as_str()
            .unwrap()
            .contains("agent stopped while the task was running"),
        "{done}"
    );
    assert_eq!(conn.call(r#"{"method":"ping"}"#, T)["retcode"], 2);
    let log = agent.log();
    assert!(log.contains("marker kept"), "{log}");
    // The marker is still there (inside the daemon's mount namespace), so
    // a later start on a disk with room writes the result.
    let inside = format!(
        "/proc/{}/root{}/tasks/{task}.running",
        agent.pid(),
        state.display()
    );
    assert!(std::path::Path::new(&inside).exists(), "{inside}");
    // task.status is served from memory too.
    let status = conn.call(&format!(r#"{{"method":"task.status","task":"{task}"}}"#), T);
    assert_eq!(status["data"]["state"], "done", "{status}");
    assert_eq!(status["data"]["result"]["retcode"], 3025, "{status}");
    // The ack ends it, marker included.
    conn.send(&format!(r#"{{"method":"task.ack","task":"{task}"}}"#));
    wait_for("the marker to go", T, || {
        (!std::path::Path::new(&inside).exists()).then_some(())
    });
    assert!(agent.running());
}

#[test]
fn a_detached_start_reports_an_unusable_outbox_to_the_starting_process() {
    let (_pki, _server, agent) = setup(ACCEPTED, 31, "", "");
    std::fs::create_dir(agent.path("state")).unwrap();
    std::fs::write(agent.path("state/tasks"), b"not a directory").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_BasicAgent"))
        .args(agent.args("info", &[]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the starter saw the failure: {err}"
    );
    assert!(err.contains("tasks"), "names the outbox: {err}");
}

// ---------------------------------------------------------------- item 5

#[test]
fn an_answer_larger_than_the_frame_limit_becomes_3025_and_the_agent_keeps_serving() {
    let (_pki, server, mut agent) = setup(ACCEPTED, 40, "max_frame = 65536", "");
    agent.spawn(&["-f"]);
    let mut conn = server.accept(T);
    let id = "big-1";
    conn.send(&format!(
        r#"{{"id":"{id}","method":"fixture.misbehave","args":"-g 200000"}}"#
    ));
    let line = loop {
        let line = conn.read_line(T).expect("an answer");
        if line.windows(id.len()).any(|w| w == id.as_bytes()) {
            break line;
        }
    };
    assert!(
        line.len() <= 65536,
        "never a frame over the limit: {} bytes",
        line.len()
    );
    let v: Value = serde_json::from_slice(&line).unwrap();
    assert_eq!(v["id"], id);
    assert_eq!(v["retcode"], 3025, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("larger than the frame limit of 65536 bytes"),
        "{v}"
    );
    // Below the limit: answered in full.
    let ok = conn.call(r#"{"method":"fixture.misbehave","args":"-g 1000"}"#, T);
    assert_eq!(ok["retcode"], 2, "{ok}");
    // A task whose output cannot fit: the host hands `server.max_frame` to
    // sync.bash in its plugin config, so the plugin cuts the capture until the
    // whole task.done fits, with the truncation flag set (a result that still
    // would not fit is stored as a 3025: the tasks.rs unit tests).
    let started = conn.call(
        r#"{"method":"async.bash","cmd":"head -c 300000 /dev/zero | tr '\\0' x"}"#,
        T,
    );
    assert_eq!(started["retcode"], 2, "{started}");
    let task = started["data"]["task"].as_str().unwrap().to_owned();
    let done = conn.read_until(T, |v| {
        v["method"] == "task.done" && v["task"] == task.as_str()
    });
    assert_eq!(done["retcode"], 2, "{done}");
    assert_eq!(done["data"]["stdout_truncated"], true, "{done}");
    let stdout = done["data"]["stdout"].as_str().unwrap();
    assert!(
        stdout.len() > 30_000 && stdout.bytes().all(|b| b == b'x'),
        "a head of the output is kept: {} bytes",
        stdout.len()
    );
    let frame = serde_json::to_string(&done).unwrap();
    assert!(
        frame.len() <= 65536,
        "the task.done fits: {} bytes",
        frame.len()
    );
    assert_eq!(conn.call(r#"{"method":"ping"}"#, T)["retcode"], 2);
}

/// Reads `task.done` pushes on `conn` until every id in `tasks` was seen.
fn read_pushes(conn: &mut MiniConn, tasks: &[String], agent: &Agent) {
    let mut seen = std::collections::HashSet::new();
    while seen.len() < tasks.len() {
        let v = conn.read_until(T, |v| v["method"] == "task.done");
        let _ = agent;
        seen.insert(v["task"].as_str().unwrap().to_owned());
    }
}

#[test]
fn results_the_server_never_acknowledges_do_not_block_new_tasks_for_ever() {
    let (_pki, server, mut agent) = setup(ACCEPTED, 41, "", "max_tasks = 2");
    agent.spawn(&["-f"]);
    let mut conn = server.accept(T);
    let mut tasks = Vec::new();
    for word in ["a", "b"] {
        let v = conn.call(
            &format!(r#"{{"method":"async.bash","cmd":"echo {word}"}}"#),
            T,
        );
        assert_eq!(v["retcode"], 2, "{v}");
        tasks.push(v["data"]["task"].as_str().unwrap().to_owned());
    }
    read_pushes(&mut conn, &tasks, &agent); // push 1 (live)
                                            // Full, and the results were pushed once only: refused as before.
    let v = conn.call(r#"{"method":"async.bash","cmd":"echo c"}"#, T);
    assert_eq!(v["retcode"], 3026, "{v}");
    // Two more sessions, each pushing both again, never acknowledged.
    for _ in 0..2 {
        conn.close();
        conn = server.accept(T);
        read_pushes(&mut conn, &tasks, &agent);
    }
    let v = conn.call(r#"{"method":"async.bash","cmd":"echo d"}"#, T);
    assert_eq!(
        v["retcode"],
        2,
        "a rejected result made room: {v}\n{}",
        agent.log()
    );
    let log = agent.log();
    assert!(log.contains("dropped 1 rejected result(s)"), "{log}");
}

// ---------------------------------------------------------------- item 6

#[test]
fn a_server_that_stops_reading_keeps_the_agent_bounded_and_new_requests_get_3026() {
    // The fixture is outside `getinfo.*`: with the audit trail on (the
    // default) each answer waits on the audit writer's queue until its
    // line is written, and those bytes count against the answer bound
    // too (the agent before this check held 195 MB here).
    stops_reading(50, "");
}

#[test]
fn a_server_that_stops_reading_keeps_the_agent_bounded_with_the_audit_trail_off() {
    // As for a `getinfo.*` call: the bound measured is the send queue's.
    stops_reading(52, "[audit]\nenabled = false\n");
}

/// Answers of 6 MB each, completing 60 ms apart, while the server reads
/// nothing: the old agent queued them all (288 MB).
fn stops_reading(last_octet: u8, agent_extra: &str) {
    let (_pki, server, mut agent) = setup(ACCEPTED, last_octet, "", agent_extra);
    agent.spawn(&["-f"]);
    let mut conn = server.accept(T);
    let count = 48;
    for i in 0..count {
        conn.send(&format!(
            r#"{{"id":"big-{i}","method":"fixture.misbehave","args":"-g 6000000 {}"}}"#,
            200 + i * 60
        ));
    }
    wait_for("answers replaced by 3026", Duration::from_secs(60), || {
        agent
            .log()
            .contains("32 answer(s) replaced by 3026")
            .then_some(())
    });
    // Let the rest complete, then measure.
    std::thread::sleep(Duration::from_millis(1500));
    let pid = agent.pid();
    let (rss, hwm) = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));
    eprintln!(
        "agent with 48 x 6 MB answers unread ({agent_extra:?}): VmRSS {rss} KiB, VmHWM {hwm} KiB"
    );
    conn.send(r#"{"id":"late","method":"getinfo.kernel"}"#);
    let mut full = 0;
    let mut busy = 0;
    let late = loop {
        let line = conn.read_line(Duration::from_secs(60)).expect("answers");
        let v: Value = serde_json::from_slice(&line).unwrap();
        if v["id"] == "late" {
            break v;
        }
        match v["retcode"].as_u64() {
            Some(2) => full += 1,
            Some(3026) => busy += 1,
            _ => {}
        }
    };
    eprintln!("{full} answers sent whole, {busy} replaced by 3026");
    assert_eq!(late["retcode"], 3026, "{late}");
    assert!(
        late["message"].as_str().unwrap().starts_with("Busy"),
        "{late}"
    );
    assert!(busy >= 32, "{busy}");
    // Bounded: the 8 MiB answer bound, the answers being made by the
    // plugin's threads and the agent itself (43-48 MB measured, audit on
    // or off, 56-113 MiB on a busier machine); 288 MB unbounded, 195 MB
    // seen with audit-held answers uncounted.
    assert!(
        hwm < 150 * 1024,
        "peak RSS {hwm} KiB: the queue is bounded (the old agent held 288 MB)"
    );
    // Drained: served normally again.
    let again = conn.call(r#"{"method":"getinfo.kernel"}"#, Duration::from_secs(60));
    assert_eq!(again["retcode"], 2, "{again}");
}

#[test]
fn sigterm_while_a_large_answer_is_blocked_stops_the_daemon() {
    let (_pki, server, mut agent) = setup(ACCEPTED, 51, "", "");
    agent.spawn(&["-f"]);
    let mut conn = server.accept(T);
    for i in 0..4 {
        conn.send(&format!(
            r#"{{"id":"big-{i}","method":"fixture.misbehave","args":"-g 12000000"}}"#
        ));
    }
    wait_for("the answers to queue", Duration::from_secs(60), || {
        (status_kib(agent.pid(), "VmRSS:") > 20 * 1024).then_some(())
    });
    agent.signal(libc::SIGTERM);
    let code = agent.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}", agent.log());
    drop(conn);
}

// --------------------------------------------------------------- item 12

fn sha12(text: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn command_lines_are_logged_only_at_debug_level() {
    for (i, level) in ["info", "debug"].iter().enumerate() {
        let (_pki, server, mut agent) = setup(ACCEPTED, 60 + i as u8, "", "");
        agent.spawn_at(level, &["-f"]);
        let mut conn = server.accept(T);
        let cmd = "mysql -uroot -pS3cretXYZ -e 'select 1' 2>/dev/null; true";
        let v = conn.call(
            &serde_json::json!({"method": "async.bash", "cmd": cmd}).to_string(),
            T,
        );
        assert_eq!(v["retcode"], 2, "{v}");
        let v = conn.call(
            &serde_json::json!({"method": "sync.bash", "cmd": "echo S3cretXYZ >/dev/null"})
                .to_string(),
            T,
        );
        assert_eq!(v["retcode"], 2, "{v}");
        let log = wait_for("the task line", T, || {
            let log = agent.log();
            log.contains("started (command sha256").then_some(log)
        });
        assert!(log.contains(&sha12(cmd)), "{log}");
        if *level == "info" {
            assert!(!log.contains("S3cret"), "a secret at info level:\n{log}");
        } else {
            assert!(log.contains("S3cretXYZ"), "debug shows the command:\n{log}");
        }
    }
}

#[test]
fn markers_are_0600_and_state_directories_0700_whatever_the_umask() {
    let (_pki, server, mut agent) = setup(ACCEPTED, 62, "", "");
    let state = agent.path("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(state.join("tasks")).unwrap();
    std::fs::set_permissions(state.join("tasks"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "umask 000; exec \"$@\"", "sh"])
        .arg(env!("CARGO_BIN_EXE_BasicAgent"))
        .args(agent.args("debug", &["-f"]));
    agent.spawn_command(cmd);
    let mut conn = server.accept(T);
    let v = conn.call(r#"{"method":"async.bash","cmd":"sleep 1091"}"#, T);
    assert_eq!(v["retcode"], 2, "{v}");
    let task = v["data"]["task"].as_str().unwrap().to_owned();
    let marker = state.join(format!("tasks/{task}.running"));
    wait_for("the marker", T, || marker.exists().then_some(()));
    assert_eq!(mode(&marker), 0o600, "marker mode under umask 000");
    assert_eq!(mode(&state), 0o700, "state_dir forced to 0700");
    assert_eq!(mode(&state.join("tasks")), 0o700, "tasks/ forced to 0700");
    let log = agent.log();
    assert!(log.contains("mode was 0777; set to 0700"), "{log}");
    let v = conn.call(&format!(r#"{{"method":"task.cancel","task":"{task}"}}"#), T);
    assert_eq!(v["retcode"], 2, "{v}");
    conn.read_until(T, |v| v["method"] == "task.done");
    assert!(!pgrep("sleep 1091"));
}

#[test]
fn a_state_directory_owned_by_another_user_or_shared_is_refused_at_start() {
    for (i, how) in ["owner", "sticky"].iter().enumerate() {
        let (_pki, _server, agent) = setup(ACCEPTED, 63 + i as u8, "", "");
        let state = agent.path("state");
        std::fs::create_dir(&state).unwrap();
        if *how == "owner" {
            std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
        } else {
            std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o1777)).unwrap();
        }
        let mut agent = agent;
        agent.spawn_at("info", &["-f"]);
        // The old agent started and served: this wait then fails.
        let code = agent.wait_exit(T);
        let mut err = String::new();
        let stderr = agent.child.as_mut().unwrap().stderr.as_mut().unwrap();
        std::io::Read::read_to_string(stderr, &mut err).unwrap();
        assert_eq!(code, Some(1), "{how}: {err}");
        let needle = if *how == "owner" {
            "owned by uid 65534"
        } else {
            "sticky bit"
        };
        assert!(
            err.contains(needle) && err.contains("state"),
            "{how}: {err}"
        );
    }
}
