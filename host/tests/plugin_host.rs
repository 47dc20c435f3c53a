//! A host that survives its plugins (issue 17 items 1 and 5), against the
//! real `BasicAgent` and `BasicAgentCtl` binaries: per-call deadlines
//! (3023, the late completion retired, no pending call left), quarantine
//! after repeated expiry or panics (3025 without calling the plugin, listed
//! in `agent.info` and `BasicAgentCtl -l`), released by a changed file or
//! `BasicAgentCtl plugin release`, and the ctl through the daemon's
//! root-only control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use basicagent_testsupport::mini::{MiniConn, MiniServer};
use basicagent_testsupport::*;
use serde_json::Value;

const ACCEPTED: &str =
    r#"{"method":"init","resp":"success","retcode":2,"message":"Normal termination"}"#;
const T: Duration = Duration::from_secs(30);
const TESTKIT: &str = "libfixture_misbehave.so";

struct Rig {
    _pki: Pki,
    server: MiniServer,
    agent: Agent,
    plugins: PathBuf,
    socket: PathBuf,
}

/// A mini server on a fresh 127.0.x.y, an agent with a private plugin
/// directory holding a copy of the fixture, its control socket in its own
/// directory, and `[plugins]` settings `plugins`.
fn rig(last_octet: u8, plugins_toml: &str) -> Rig {
    let pki = Pki::new();
    let ip = format!("127.0.{}.{last_octet}", 100 + (std::process::id() % 50));
    let server = MiniServer::start(&pki, &format!("{ip}:0"), ACCEPTED);
    let agent = Agent::configure(&pki, server.addr.port(), &[&ip], "dns = false", "");
    let plugins = agent.path("plugins");
    std::fs::create_dir(&plugins).unwrap();
    std::fs::set_permissions(&plugins, std::fs::Permissions::from_mode(0o755)).unwrap();
    install(&plugins);
    let socket = agent.path("run/ctl.sock");
    let config = std::fs::read_to_string(agent.path("agent.toml")).unwrap();
    let config = config.replace(
        &format!("plugin_dir = \"{}\"", bin_dir().display()),
        &format!("plugin_dir = \"{}\"", plugins.display()),
    );
    // The harness gives every daemon its own socket: agent.path("run/ctl.sock").
    assert!(config.contains(&format!("ctl_socket = \"{}\"", socket.display())));
    let config = format!("{config}\n[plugins]\n{plugins_toml}\n");
    std::fs::write(agent.path("agent.toml"), config).unwrap();
    Rig {
        _pki: pki,
        server,
        agent,
        plugins,
        socket,
    }
}

/// Copies the fixture into `dir` as a new file (a new inode: a new version).
fn install(dir: &Path) {
    let tmp = dir.join(".fixture.tmp");
    std::fs::copy(bin_dir().join(TESTKIT), &tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, dir.join(TESTKIT)).unwrap();
}

fn ctl(args: &[&str]) -> Output {
    Command::new(bin_dir().join("BasicAgentCtl"))
        .args(args)
        .env_remove("BASICAGENT_PLUGIN_DIR")
        .env_remove("BASICAGENT_CTL_SOCKET")
        .output()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn fixture(conn: &mut MiniConn, args: &str) -> Value {
    conn.call(
        &format!(r#"{{"method":"fixture.misbehave","args":"{args}"}}"#),
        T,
    )
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_owned()
}

#[test]
fn a_call_past_its_deadline_gets_3023_its_late_completion_is_retired_and_repeated_expiry_quarantines_until_the_file_changes(
) {
    let mut r = rig(
        10,
        "default_timeout = 1\nquarantine_after = 2\nquarantine_window = 3600\n",
    );
    r.agent.spawn(&["-f"]);
    let mut conn = r.server.accept(T);

    // Completes after 2.5 s, past its 1 s deadline.
    let late = fixture(&mut conn, "-L 2500");
    assert_eq!(late["retcode"], 3023, "{late}");
    assert!(
        text(&late, "message").starts_with("Timeout: fixture.misbehave did not answer within 1 s"),
        "{late}"
    );
    let log = wait_for("the late completion", T, || {
        let log = r.agent.log();
        log.contains("late complete of call").then_some(log)
    });
    assert!(
        log.contains("BA_STATUS_UNKNOWN_CALL"),
        "the late complete found no call: {log}"
    );
    let info = conn.call(r#"{"method":"agent.info"}"#, T);
    assert_eq!(info["data"]["in_flight"], 0, "{info}");
    assert_eq!(info["data"]["calls_pending"], 0, "nothing leaked: {info}");
    assert_eq!(info["data"]["quarantined"], serde_json::json!([]), "{info}");
    // No second answer was sent for the late call.
    let ping = conn.call(r#"{"method":"ping"}"#, T);
    assert_eq!(ping["retcode"], 2);

    // The second expiry within the window quarantines the plugin.
    let never = fixture(&mut conn, "-d");
    assert_eq!(never["retcode"], 3023, "{never}");
    let refused = fixture(&mut conn, "-e");
    assert_eq!(refused["retcode"], 3025, "{refused}");
    let message = text(&refused, "message");
    assert!(
        message.starts_with("Plugin failure: quarantined until 20"),
        "{message}"
    );
    assert!(message.contains("timed out"), "{message}");
    let info = conn.call(r#"{"method":"agent.info"}"#, T);
    let q = &info["data"]["quarantined"];
    assert_eq!(q[0]["plugin"], "fixture_misbehave", "{info}");
    assert!(text(&q[0], "reason").contains("2 calls"), "{info}");
    assert_eq!(
        info["data"]["calls_pending"], 0,
        "the -d call was retired: {info}"
    );

    // BasicAgentCtl -l through the daemon lists it with the reason; a call
    // through the daemon is refused the same way.
    let listed = ctl(&["-l", "-S", s(&r.socket)]);
    let out = String::from_utf8_lossy(&listed.stdout);
    assert!(out.contains("Quarantined by the running daemon:"), "{out}");
    assert!(out.contains("fixture_misbehave"), "{out}");
    assert!(out.contains("timed out"), "{out}");
    let through = ctl(&["-S", s(&r.socket), "-c", "fixture.misbehave"]);
    assert_eq!(through.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&through.stdout).unwrap();
    assert_eq!(v["retcode"], 3025, "{v}");

    // A new version of the file lifts the quarantine and is loaded.
    install(&r.plugins);
    let served = fixture(&mut conn, "-e");
    assert_eq!(served["retcode"], 2, "{served}");
    let log = r.agent.log();
    assert!(log.contains("released from quarantine"), "{log}");
    assert!(r.agent.running());
}

#[test]
fn repeated_panics_quarantine_a_plugin_and_basicagentctl_plugin_release_lifts_it() {
    let mut r = rig(
        11,
        "default_timeout = 30\nquarantine_after = 2\nquarantine_window = 3600\n",
    );
    r.agent.spawn(&["-f"]);
    let mut conn = r.server.accept(T);
    for _ in 0..2 {
        let p = fixture(&mut conn, "-p");
        assert_eq!(p["retcode"], 3025, "{p}");
        assert!(text(&p, "message").contains("panicked"), "{p}");
    }
    let refused = fixture(&mut conn, "-e");
    assert!(
        text(&refused, "message").starts_with("Plugin failure: quarantined until"),
        "{refused}"
    );
    assert!(text(&refused, "message").contains("panicked"), "{refused}");

    // Bad input: an unknown name is a clear error and nothing changes.
    let bad = ctl(&["plugin", "release", "getinfo_nosuch", "-S", s(&r.socket)]);
    assert_eq!(bad.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(v["retcode"], 3021, "{v}");
    assert!(text(&v, "message").contains("is not quarantined"), "{v}");
    assert_eq!(fixture(&mut conn, "-e")["retcode"], 3025);

    let ok = ctl(&["plugin", "release", "fixture_misbehave", "-S", s(&r.socket)]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let v: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["data"]["released"], true, "{v}");
    assert_eq!(fixture(&mut conn, "-e")["retcode"], 2);
}

#[test]
fn the_ctl_goes_through_the_daemon_socket_with_the_same_output_and_refuses_non_root_callers() {
    let mut r = rig(12, "");
    r.agent.spawn(&["-f"]);
    let mut conn = r.server.accept(T);
    wait_for("the control socket", T, || r.socket.exists().then_some(()));
    let dir_mode = std::fs::metadata(r.socket.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    let sock_mode = std::fs::metadata(&r.socket).unwrap().permissions().mode();
    assert_eq!(sock_mode & 0o777, 0o600);

    // Same bytes through the daemon and locally (-e echoes the request).
    let args = [
        "-c",
        "fixture.misbehave",
        "-a",
        "-e",
        "-j",
        r#"{"x":"é\u0001"}"#,
    ];
    let mut via: Vec<&str> = vec!["-S", s(&r.socket)];
    via.extend(args);
    let through = ctl(&via);
    assert!(
        through.status.success(),
        "{}",
        String::from_utf8_lossy(&through.stderr)
    );
    let mut local: Vec<&str> = vec!["--local", "-p", s(&r.plugins)];
    local.extend(args);
    let here = ctl(&local);
    assert!(here.status.success());
    assert_eq!(
        String::from_utf8_lossy(&through.stdout),
        String::from_utf8_lossy(&here.stdout)
    );
    // The daemon served it: its request counter moved.
    let info = conn.call(r#"{"method":"agent.info"}"#, T);
    assert!(
        info["data"]["requests_served"].as_u64().unwrap() >= 2,
        "{info}"
    );
    // A failure prints the same way (exit 1, message on stderr).
    let fail = ctl(&["-S", s(&r.socket), "-c", "getinfo.nosuch"]);
    assert_eq!(fail.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&fail.stdout).unwrap();
    assert_eq!(v["retcode"], 3022, "{v}");

    // Garbage and an endless line: a clear answer, the daemon serves on.
    let mut raw = UnixStream::connect(&r.socket).unwrap();
    raw.write_all(b"{not json\n").unwrap();
    let mut line = String::new();
    BufReader::new(&raw).read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["retcode"], 3020, "{line}");
    let mut raw = UnixStream::connect(&r.socket).unwrap();
    let chunk = vec![b'x'; 1 << 20];
    let mut answered = String::new();
    for _ in 0..20 {
        if raw.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = BufReader::new(&raw).read_line(&mut answered);
    assert!(
        answered.contains("3020") || answered.is_empty(),
        "{answered}"
    );

    // A non-root caller: the directory is 0700, connect is refused.
    let nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(bin_dir().join("BasicAgentCtl"))
            .args(args)
            .output()
            .unwrap()
    };
    let denied = nobody(&["-S", s(&r.socket), "-c", "fixture.misbehave"]);
    assert_eq!(denied.status.code(), Some(1));
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("root-only"), "{err}");
    assert!(
        denied.stdout.is_empty(),
        "no local fallback: {:?}",
        denied.stdout
    );
    // Even with the modes opened up, SO_PEERCRED refuses it in one line.
    for p in [r.agent.dir.path(), r.socket.parent().unwrap()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    std::fs::set_permissions(&r.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused = nobody(&["-S", s(&r.socket), "-c", "fixture.misbehave"]);
    assert_eq!(refused.status.code(), Some(1));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("refused: the control socket serves uid 0 only (the client is uid 65534)"),
        "{err}"
    );
    assert!(r.agent.log().contains("refused a client with uid 65534"));
    // And root is still served.
    let again = ctl(&["-S", s(&r.socket), "-c", "fixture.misbehave"]);
    assert!(again.status.success());
    assert!(r.agent.running());

    // --local still works with no daemon listening.
    let gone = r.agent.path("run/none.sock");
    let alone = ctl(&[
        "-S",
        s(&gone),
        "--local",
        "-p",
        s(&r.plugins),
        "-c",
        "fixture.misbehave",
    ]);
    assert!(alone.status.success());
    // Without --local and no daemon there: the local path (an answer, from
    // whichever plugin directory the tool finds, not a socket error).
    let fallback = ctl(&["-S", s(&gone), "-c", "fixture.misbehave"]);
    let v: Value = serde_json::from_slice(&fallback.stdout).unwrap();
    assert!(v["retcode"] == 2 || v["retcode"] == 3022, "{v}");
}

/// Starts the daemon with core dumps off (a test crash leaves no core).
fn spawn_without_core(agent: &mut Agent) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_BasicAgent"));
    cmd.args(agent.args("debug", &["-f"]));
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            Ok(())
        });
    }
    agent.spawn_command(cmd);
}

#[test]
fn a_plugin_that_segfaults_the_daemon_is_refused_after_the_restart_until_its_file_changes() {
    let mut r = rig(13, "");
    // A second plugin, called in between: the marker must name the plugin
    // of the call that crashed, after another was noted (the note is
    // rewritten only when the plugin changes).
    let kernel = r.plugins.join("libgetinfo_kernel.so");
    std::fs::copy(bin_dir().join("libgetinfo_kernel.so"), &kernel).unwrap();
    std::fs::set_permissions(&kernel, std::fs::Permissions::from_mode(0o755)).unwrap();
    spawn_without_core(&mut r.agent);
    let mut conn = r.server.accept(T);
    for _ in 0..2 {
        let k = conn.call(r#"{"method":"getinfo.kernel"}"#, T);
        assert_eq!(k["retcode"], 2, "{k}");
        assert_eq!(fixture(&mut conn, "-e")["retcode"], 2);
    }
    conn.send(r#"{"id":"boom","method":"fixture.misbehave","args":"-S"}"#);
    // The supervisor's part: the daemon died of the signal; start it again.
    let child = r.agent.child.as_mut().unwrap();
    let status = wait_for("the daemon to die", T, || child.try_wait().unwrap());
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGSEGV), "{status:?}");
    spawn_without_core(&mut r.agent);
    let mut conn = r.server.accept(T);
    let refused = fixture(&mut conn, "-e");
    assert_eq!(refused["retcode"], 3025, "{refused}");
    let message = text(&refused, "message");
    assert!(
        message.starts_with("Plugin failure: quarantined until its file changes"),
        "{message}"
    );
    assert!(
        message.contains("crashed the daemon (signal 11)"),
        "{message}"
    );
    let log = r.agent.log();
    assert!(
        log.contains("died of signal 11 in a call of plugin fixture_misbehave"),
        "{log}"
    );
    let info = conn.call(r#"{"method":"agent.info"}"#, T);
    assert_eq!(
        info["data"]["quarantined"][0]["until"], "its file changes",
        "{info}"
    );
    // Other plugins and built-ins are served meanwhile.
    assert_eq!(conn.call(r#"{"method":"ping"}"#, T)["retcode"], 2);
    // A replacement that does not load keeps the old code out.
    let tmp = r.plugins.join(".broken.tmp");
    std::fs::write(&tmp, b"not an ELF file").unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, r.plugins.join(TESTKIT)).unwrap();
    let still = fixture(&mut conn, "-e");
    assert_eq!(still["retcode"], 3025, "{still}");
    assert!(
        text(&still, "message").contains("its new file did not load"),
        "{still}"
    );
    // A new version of the file is loaded and served.
    install(&r.plugins);
    assert_eq!(fixture(&mut conn, "-e")["retcode"], 2);
    // The marker was cleared: a clean restart quarantines nothing.
    r.agent.signal(libc::SIGTERM);
    r.agent.wait_exit(T);
    spawn_without_core(&mut r.agent);
    let mut conn = r.server.accept(T);
    assert_eq!(fixture(&mut conn, "-e")["retcode"], 2);
}

#[test]
fn the_ctl_wait_limit_through_the_daemon_prints_3023_like_a_local_call() {
    let mut r = rig(14, "default_timeout = 3600\n");
    r.agent.spawn(&["-f"]);
    let _conn = r.server.accept(T);
    wait_for("the control socket", T, || r.socket.exists().then_some(()));
    let out = ctl(&[
        "-S",
        s(&r.socket),
        "-t",
        "0.5",
        "-c",
        "fixture.misbehave",
        "-a",
        "-d",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["retcode"], 3023, "{v}");
    assert!(text(&v, "message").starts_with("Timeout: "), "{v}");
    // The daemon keeps the call until its own deadline and serves on.
    let ok = ctl(&["-S", s(&r.socket), "-c", "fixture.misbehave", "-a", "-e"]);
    assert!(ok.status.success());
}

#[test]
fn a_namespace_timeout_expires_sync_bash_and_its_quarantine_also_refuses_async_bash() {
    let mut r = rig(
        15,
        "timeouts = { sync = 1 }\nquarantine_after = 1\nquarantine_window = 3600\n",
    );
    install_sync_bash(&r.plugins);
    r.agent.spawn(&["-f"]);
    let mut conn = r.server.accept(T);
    let slow = conn.call(
        r#"{"method":"sync.bash","cmd":"sleep 30; echo plugin-host-nslimit"}"#,
        T,
    );
    assert_eq!(slow["retcode"], 3023, "{slow}");
    assert!(text(&slow, "message").starts_with("Timeout: sync.bash did not answer within 1 s"));
    let task = conn.call(r#"{"method":"async.bash","cmd":"true"}"#, T);
    assert_eq!(task["retcode"], 3025, "{task}");
    assert!(
        text(&task, "message").starts_with("Plugin failure: quarantined until"),
        "{task}"
    );
    let info = conn.call(r#"{"method":"agent.info"}"#, T);
    assert_eq!(
        info["data"]["quarantined"][0]["plugin"], "sync_bash",
        "{info}"
    );
    // The cancelled command is gone (sync.bash killed it on cancel).
    wait_for("the cancelled command to end", T, || {
        let out = Command::new("pgrep")
            .args(["-f", "plugin-host-nslimit"])
            .output()
            .unwrap();
        (!out.status.success()).then_some(())
    });
}

fn install_sync_bash(dir: &Path) {
    let tmp = dir.join(".sync.tmp");
    std::fs::copy(bin_dir().join("libsync_bash.so"), &tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&tmp, dir.join("libsync_bash.so")).unwrap();
}

/// The median time of `n` calls through the control socket (one
/// connection each; the mini server's polling reads would dominate).
fn timed_calls(socket: &Path, n: u32) -> Duration {
    let mut times = Vec::new();
    for _ in 0..n {
        let start = std::time::Instant::now();
        let mut s = UnixStream::connect(socket).unwrap();
        s.write_all(b"{\"method\":\"fixture.misbehave\",\"args\":\"-e\"}\n")
            .unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        times.push(start.elapsed());
        assert!(line.contains("\"retcode\":2"), "{line}");
    }
    times.sort();
    times[times.len() / 2]
}

#[test]
fn an_isolated_plugin_that_segfaults_answers_3025_the_daemon_lives_on_and_the_helper_restarts() {
    let mut r = rig(16, "isolate = [\"fixture.misbehave\"]\n");
    spawn_without_core(&mut r.agent);
    let mut conn = r.server.accept(T);
    let echo = fixture(&mut conn, "-e");
    assert_eq!(echo["retcode"], 2, "{echo}");
    assert_eq!(
        echo["data"]["args"], "-e",
        "the request's bytes reach the plugin: {echo}"
    );
    let log = r.agent.log();
    assert!(
        log.contains("isolated plugin fixture.misbehave: helper pid"),
        "{log}"
    );
    // A call in flight when the helper crashes, and the crash itself.
    conn.send(r#"{"id":"slow","method":"fixture.misbehave","args":"-s 60000"}"#);
    let crash = fixture(&mut conn, "-S");
    assert_eq!(crash["retcode"], 3025, "{crash}");
    assert!(
        text(&crash, "message").contains("crashed during the call"),
        "{crash}"
    );
    let slow = conn.read_until(T, |v| v["id"] == "slow");
    assert_eq!(slow["retcode"], 3025, "the call in flight too: {slow}");
    assert!(r.agent.running(), "the daemon lives on");
    assert_eq!(conn.call(r#"{"method":"ping"}"#, T)["retcode"], 2);
    // Restarted with backoff: refused meanwhile, then served.
    let served = wait_for("the helper to restart", T, || {
        let v = fixture(&mut conn, "-e");
        if v["retcode"] == 2 {
            return Some(v);
        }
        assert!(text(&v, "message").contains("restarting in"), "{v}");
        None
    });
    assert_eq!(served["retcode"], 2);
    assert!(r.agent.log().contains("restarting after"));
    // Overhead (printed, not asserted): the same calls in process.
    let isolated = timed_calls(&r.socket, 500);
    let mut plain = rig(17, "");
    plain.agent.spawn(&["-f"]);
    let _pconn = plain.server.accept(T);
    wait_for("the control socket", T, || {
        plain.socket.exists().then_some(())
    });
    let in_process = timed_calls(&plain.socket, 500);
    eprintln!(
        "isolated call {:?}, in-process {:?}: overhead {:?} per call",
        isolated,
        in_process,
        isolated.saturating_sub(in_process)
    );
}

#[test]
fn a_call_to_an_isolated_plugin_is_audited_like_one_in_process() {
    let mut r = rig(18, "isolate = [\"fixture.misbehave\"]\n");
    r.agent.spawn(&["-f"]);
    let mut conn = r.server.accept(T);
    let echo = fixture(&mut conn, "-e");
    assert_eq!(echo["retcode"], 2, "{echo}");
    assert!(
        r.agent
            .log()
            .contains("isolated plugin fixture.misbehave: helper pid"),
        "the call ran in the helper"
    );
    // The answer is released only after its audit line is written.
    let log = std::fs::read_to_string(r.agent.path("state/audit.log")).unwrap_or_default();
    let line = log
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["method"] == "fixture.misbehave")
        .unwrap_or_else(|| panic!("no audit line for the isolated call: {log}"));
    assert_eq!(line["id"], echo["id"], "{line} {echo}");
    assert_eq!(line["retcode"], 2, "{line}");
}
