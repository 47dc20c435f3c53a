//! The audit trail end to end: the real daemon behind real TLS writes a
//! hash-chained line for sync.bash, async.bash and getinfo.* (when on)
//! before each answer; with `commands = "hash"` the text is absent and its
//! SHA-256 matches; the server's certificate fingerprint is recorded.

mod common;

use std::time::Duration;

use basicagent_host::audit;
use common::*;
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
    let server = Server::start(&pki, &listen, "server", &[]);
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
    let server = Server::start(&pki, &listen, "server", &[]);
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
