//! The audit trail end to end: the real daemon behind real TLS writes a
//! hash-chained line for sync.bash, async.bash and getinfo.* (when on)
//! before each answer; with `commands = "hash"` the text is absent and its
//! SHA-256 matches; the server's certificate fingerprint is recorded.

use std::time::Duration;

use basicagent_host::audit;
use basicagent_testsupport::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};

fn audit_lines(agent: &Agent) -> Vec<Value> {
    std::fs::read_to_string(agent.path("state/audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_daemon_audits_sync_async_and_getinfo_before_answering() {
    let pki = Pki::new();
    let port = free_port();
    let ip = "127.0.41.7";
    let listen = format!("{ip}:{port}");
    let server = Server::serve(&pki, &listen, "server", &[]);
    let agent = Agent::start(
        &pki,
        port,
        &[ip],
        "dns = false",
        "\n[audit]\ncommands = \"hash\"\ngetinfo = \"on\"\n",
        &["-f"],
    );
    let host = server.wait_agent(Duration::from_secs(15));

    let cmd = "echo audit-secret; echo err >&2; exit 3";
    let v = server.call(
        &host,
        &json!({"method": "sync.bash", "cmd": cmd, "timeout": 30}).to_string(),
    );
    assert_eq!(v["data"]["exitcode"], 3, "{v}");
    // Written before the answer went out: already there, no waiting.
    let lines = audit_lines(&agent);
    let line = lines
        .iter()
        .find(|l| l["method"] == "sync.bash")
        .unwrap_or_else(|| panic!("no sync.bash line before the answer: {lines:?}"));
    assert!(line.get("command").is_none(), "{line}");
    assert_eq!(line["command_sha256"], audit::sha256_hex(cmd.as_bytes()));
    assert_eq!(line["exitcode"], 3);
    assert_eq!(line["retcode"], v["retcode"]);
    assert_eq!(line["stdout_bytes"], 13);
    assert_eq!(line["stderr_bytes"], 4);
    assert_eq!(line["stdout_sha256"], v["data"]["stdout_sha256"]);
    assert_eq!(line["uid"], v["data"]["uid"]);
    assert_eq!(line["user"], v["data"]["user"]);
    assert_eq!(line["limits"]["timeout"], 30);
    assert!(line["usage"].is_object(), "{line}");
    assert_eq!(line["server"], listen);
    let der = CertificateDer::from_pem_file(pki.path("server.pem")).unwrap();
    assert_eq!(line["fingerprint"], audit::sha256_hex(der.as_ref()));
    assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
    assert!(line["unix_ms"].as_i64().unwrap() > 0);

    let v = server.call(&host, r#"{"method":"getinfo.kernel"}"#);
    assert_eq!(v["retcode"], 2, "{v}");
    assert!(audit_lines(&agent)
        .iter()
        .any(|l| l["method"] == "getinfo.kernel"));

    let v = server.call(&host, r#"{"method":"async.bash","cmd":"echo async-audit"}"#);
    let task = v["data"]["task"].as_str().unwrap().to_owned();
    let line = wait_for("the async.bash line", Duration::from_secs(15), || {
        audit_lines(&agent)
            .into_iter()
            .find(|l| l["method"] == "async.bash" && l["task"] == task)
    });
    assert_eq!(
        line["command_sha256"],
        audit::sha256_hex(b"echo async-audit")
    );
    assert_eq!(line["exitcode"], 0);

    // Bad input is answered (its line records the refusal) and the daemon serves on.
    let v = server.call(
        &host,
        r#"{"method":"sync.bash","cmd":"true","timeout":"x"}"#,
    );
    assert_eq!(v["retcode"], 3021, "{v}");
    assert!(audit_lines(&agent).iter().any(|l| l["retcode"] == 3021));
    assert_eq!(server.call(&host, r#"{"method":"ping"}"#)["retcode"], 2);

    let ok = audit::verify(&[agent.path("state/audit.log")]).unwrap();
    assert_eq!(ok.lines, audit_lines(&agent).len());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(agent.path("state/audit.log"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn scheduled_runs_are_audited_as_local_and_a_rotated_daemon_log_verifies() {
    let pki = Pki::new();
    let port = free_port();
    let ip = "127.0.41.8";
    let listen = format!("{ip}:{port}");
    let server = Server::serve(&pki, &listen, "server", &[]);
    let mut agent = Agent::start(
        &pki,
        port,
        &[ip],
        "dns = false",
        "\n[audit]\nmax_bytes = 4096\nkeep = 3\nfsync = \"batch\"\n",
        &["-f"],
    );
    let host = server.wait_agent(Duration::from_secs(15));
    let v = server.call(
        &host,
        &json!({"method": "schedule.add", "every": 1,
                "request": {"method": "sync.bash", "cmd": "echo scheduled-audit"}})
        .to_string(),
    );
    assert_eq!(v["retcode"], 2, "{v}");
    let sid = v["data"]["schedule"].as_str().unwrap().to_owned();
    let line = wait_for("a scheduled run's line", Duration::from_secs(15), || {
        audit_lines(&agent)
            .into_iter()
            .find(|l| l["schedule"] == sid.as_str())
    });
    assert_eq!(line["server"], "local");
    assert_eq!(line["fingerprint"], "local");
    assert_eq!(
        line["command"], "echo scheduled-audit",
        "commands = full by default"
    );
    assert!(line["task"].is_string(), "{line}");
    // Enough commands (each line ~1 KiB) to rotate several times.
    for i in 0..40 {
        let v = server.call(
            &host,
            &json!({"method": "sync.bash", "cmd": format!("echo rotate-{i}")}).to_string(),
        );
        assert_eq!(v["retcode"], 2, "{v}");
    }
    let log = agent.path("state/audit.log");
    assert!(
        audit::rotated_path(&log, 2).exists(),
        "rotated at least twice"
    );
    let files = audit::default_files(&log, 3);
    let ok = audit::verify(&files).unwrap();
    // keep = 3: the oldest files are gone; the kept ones chain, and the
    // oldest kept one is noted as continuing a file no longer there.
    assert_eq!(ok.files, 4, "{ok:?}");
    assert!(ok.notes.iter().any(|n| n.contains("not given")), "{ok:?}");
    // A restart continues the chain in the same file.
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit(Duration::from_secs(15)).is_some());
    agent.spawn(&["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    let v = server.call(
        &host,
        r#"{"method":"sync.bash","cmd":"echo after-restart"}"#,
    );
    assert_eq!(v["retcode"], 2, "{v}");
    let files = audit::default_files(&log, 3);
    audit::verify(&files).unwrap();
    assert!(audit_lines(&agent)
        .iter()
        .any(|l| l["command"] == "echo after-restart"));
}

/// A tmpfs of 16 KiB for the audit log, unmounted on drop.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn new(at: std::path::PathBuf) -> SmallFs {
        std::fs::create_dir(&at).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16k,mode=0700", "tmpfs"])
            .arg(&at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs (the test runs as root)");
        SmallFs(at)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        // Lazy: a daemon still holding the log (a failed assertion) must not
        // leave the mount behind.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn a_full_disk_still_answers_then_refuse_mode_refuses_until_there_is_room() {
    let pki = Pki::new();
    let port = free_port();
    let ip = "127.0.41.9";
    let listen = format!("{ip}:{port}");
    let server = Server::serve(&pki, &listen, "server", &[]);
    let mut agent = Agent::configure(
        &pki,
        port,
        &[ip],
        "dns = false",
        "", // [audit] below, once the mount exists
    );
    let fs = SmallFs::new(agent.path("auditfs"));
    let log = fs.0.join("audit.log");
    let mut config = std::fs::read_to_string(agent.path("agent.toml")).unwrap();
    config.push_str(&format!(
        "\n[audit]\npath = \"{}\"\non_failure = \"refuse\"\n",
        log.display()
    ));
    std::fs::write(agent.path("agent.toml"), config).unwrap();
    agent.spawn(&["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    let call = |cmd: &str| {
        server.call(
            &host,
            &json!({"method": "sync.bash", "cmd": cmd}).to_string(),
        )
    };
    assert_eq!(call("echo fits")["retcode"], 2);
    // Fill the file system: the next line cannot be written (ENOSPC).
    let filler = fs.0.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 64 << 10]);
    // A line of ~5 KiB needs a page the file system no longer has.
    let v = call(&format!("echo ran-unaudited # {}", "a".repeat(5000)));
    assert_eq!(v["retcode"], 2, "the command ran: its answer goes out: {v}");
    assert_eq!(v["data"]["stdout"], "ran-unaudited\n");
    let v = call("echo refused");
    assert_eq!(v["retcode"], 3026, "{v}");
    assert!(v["message"].as_str().unwrap().contains("audit log"), "{v}");
    assert_eq!(server.call(&host, r#"{"method":"ping"}"#)["retcode"], 2);
    assert!(agent.log().contains("audit log: cannot write a line"));
    let info = server.call(&host, r#"{"method":"agent.info"}"#);
    // (`failing` may be false again: the small refusal line may fit.)
    assert!(
        info["data"]["audit"]["failures"].as_u64().unwrap() >= 1,
        "{info}"
    );
    // Room again: the refusal's own line is written and clears the failure.
    std::fs::remove_file(&filler).unwrap();
    let v = wait_for("commands accepted again", Duration::from_secs(10), || {
        let v = call("echo again");
        (v["retcode"] == 2).then_some(v)
    });
    assert_eq!(v["data"]["stdout"], "again\n");
    let ok = audit::verify(std::slice::from_ref(&log)).unwrap();
    let lines = audit_lines_at(&log);
    assert!(lines.iter().any(|l| l["refused"].is_string()), "{lines:?}");
    assert!(!lines.iter().any(|l| l["command"]
        .as_str()
        .is_some_and(|c| c.starts_with("echo ran-unaudited"))));
    assert_eq!(ok.lines, lines.len());
    agent.signal(libc::SIGTERM);
    let _ = agent.wait_exit(Duration::from_secs(15));
    drop(fs);
}

fn audit_lines_at(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
