//! The real daemon against hostile files on disk (issue 12 items 1, 10,
//! 11, 13): pid and log paths that are symbolic links or sit in a
//! directory others can write, a writable CA bundle, a readable client
//! key, an untrusted plugin, and a plugin replaced while one of its
//! commands runs, then a shutdown.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use basicagent_testsupport::*;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// An agent with its own config: `plugins` as the plugin directory, DNS
/// off, `server_extra` in `[server]`.
fn agent_with(pki: &Pki, port: u16, ip: &str, plugins: &Path, server_extra: &str) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hosts"), format!("{ip} config.cargo.com\n")).unwrap();
    let config = format!(
        "[server]\nport = {port}\nca = \"{ca}\"\nhosts_file = \"{hosts}\"\ndns = false\nconnect_timeout = 2\nhandshake_timeout = 3\n{server_extra}\n\
         [agent]\nstate_dir = \"{state}\"\nplugin_dir = \"{plugins}\"\n",
        ca = pki.path("ca.pem").display(),
        hosts = dir.path().join("hosts").display(),
        state = dir.path().join("state").display(),
        plugins = plugins.display(),
    );
    std::fs::write(dir.path().join("agent.toml"), config).unwrap();
    Agent { child: None, dir }
}

/// Runs the daemon in the foreground with `args` until it exits.
fn run_once(agent: &Agent, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_BasicAgent"))
        .arg("-c")
        .arg(agent.path("agent.toml"))
        .arg("-f")
        .args(args)
        .output()
        .unwrap()
}

/// A root-owned 0755 plugin directory with copies of the built plugins.
fn plugin_copy(names: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    for name in names {
        let to = dir.join(name);
        std::fs::copy(bin_dir().join(name), &to).unwrap();
        chmod(&to, 0o644);
    }
    (tmp, dir)
}

fn pids_of(pattern: &str) -> Vec<i32> {
    let out = Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn a_pid_or_log_path_that_is_a_symlink_is_refused_and_its_target_untouched() {
    let pki = Pki::new();
    let agent = agent_with(&pki, free_port(), "127.0.41.1", &bin_dir(), "");
    let victim = agent.path("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let pid_link = agent.path("agent.pid");
    std::os::unix::fs::symlink(&victim, &pid_link).unwrap();
    let out = run_once(&agent, &["-P", pid_link.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "refusing pid file {}: a symbolic link (not followed)",
            pid_link.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");

    let log_link = agent.path("agent.log");
    std::os::unix::fs::symlink(&victim, &log_link).unwrap();
    let out = run_once(&agent, &["-L", log_link.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "refusing log file {}: a symbolic link (not followed)",
            log_link.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}

#[test]
fn a_pid_or_log_file_in_a_directory_others_can_write_is_refused() {
    let pki = Pki::new();
    let agent = agent_with(&pki, free_port(), "127.0.41.2", &bin_dir(), "");
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // A /tmp-style sticky directory is refused too: anyone may add a name.
    let modes: &[u32] = if root {
        &[0o777, 0o1777, 0o770]
    } else {
        &[0o777, 0o1777]
    };
    for &mode in modes {
        let dir = agent.path(&format!("run-{mode:o}"));
        std::fs::create_dir_all(&dir).unwrap();
        chmod(&dir, mode);
        for (flag, what) in [("-P", "pid"), ("-L", "log")] {
            let file = dir.join(format!("agent.{what}"));
            let out = run_once(&agent, &[flag, file.to_str().unwrap()]);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{err}");
            let rule = format!(
                "refusing {what} file {}: directory {}: {}world-writable (mode {mode:04o})",
                file.display(),
                dir.display(),
                if root { "group- or " } else { "" }
            );
            assert!(err.contains(&rule), "{rule} in {err}");
            assert!(!file.exists(), "{} created", file.display());
        }
    }
}

#[test]
fn a_log_symlink_planted_before_a_reopen_is_refused_and_logging_goes_on() {
    let pki = Pki::new();
    let port = free_port();
    let server = Server::serve(&pki, &format!("127.0.41.3:{port}"), "server", &[]);
    let mut agent = agent_with(&pki, port, "127.0.41.3", &bin_dir(), "");
    agent.spawn(&["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    let victim = agent.path("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    // logrotate-style rename, then an attacker's link at the log's name.
    std::fs::rename(agent.path("agent.log"), agent.path("agent.log.1")).unwrap();
    std::os::unix::fs::symlink(&victim, agent.path("agent.log")).unwrap();
    agent.signal(libc::SIGUSR1);
    wait_for("the signal in the old log", Duration::from_secs(10), || {
        std::fs::read_to_string(agent.path("agent.log.1"))
            .unwrap_or_default()
            .contains(&format!("signal {} received", libc::SIGUSR1))
            .then_some(())
    });
    assert_eq!(server.call(&host, r#"{"method":"ping"}"#)["retcode"], 2);
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(10)), Some(0));
    // Logging went on to the file already open; the target is untouched.
    let old = std::fs::read_to_string(agent.path("agent.log.1")).unwrap();
    assert!(old.contains("stopped"), "{old}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let mut stderr = String::new();
    use std::io::Read;
    agent
        .child
        .as_mut()
        .unwrap()
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("cannot reopen the log: refusing log file")
            && stderr.contains("a symbolic link (not followed)"),
        "{stderr}"
    );
}

#[test]
fn a_writable_ca_fails_the_start_and_a_readable_key_is_a_warning() {
    let pki = Pki::new();
    let port = free_port();
    let ca = pki.path("ca.pem");
    let agent = agent_with(&pki, port, "127.0.41.4", &bin_dir(), "");
    chmod(&ca, 0o666);
    let out = run_once(&agent, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("refusing server.ca {}: ", ca.display()))
            && err.contains("world-writable (mode 0666)"),
        "{err}"
    );
    chmod(&ca, 0o644);

    // mTLS with a key readable by others: a warning line, and it works.
    let server = Server::serve(
        &pki,
        &format!("127.0.41.4:{port}"),
        "server",
        &["--client-ca", ca.to_str().unwrap()],
    );
    let key = pki.path("host-client.key");
    chmod(&key, 0o644);
    let client = format!(
        "cert = \"{}\"\nkey = \"{}\"",
        pki.path("host-client.pem").display(),
        key.display()
    );
    let mut agent = agent_with(&pki, port, "127.0.41.4", &bin_dir(), &client);
    // Under --client-ca the server binds the host id to the certificate:
    // the agent claims the id its certificate was issued for ([agent] is last).
    let config = agent.path("agent.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("host_id = \"{}\"\n", CLIENT_HOST_ID));
    std::fs::write(&config, text).unwrap();
    agent.spawn(&["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    assert_eq!(host, CLIENT_HOST_ID);
    assert_eq!(server.call(&host, r#"{"method":"ping"}"#)["retcode"], 2);
    let warning = format!(
        "server.key {}: readable by group or others (mode 0644); used anyway, make it 0600",
        key.display()
    );
    assert!(agent.log().contains(&warning), "{}", agent.log());
}

#[test]
fn an_untrusted_plugin_is_answered_3025_with_the_reason_logged_once() {
    let pki = Pki::new();
    let port = free_port();
    let server = Server::serve(&pki, &format!("127.0.41.5:{port}"), "server", &[]);
    let (_tmp, plugins) = plugin_copy(&["libgetinfo_kernel.so", "libgetinfo_os.so"]);
    let loose = plugins.join("libgetinfo_os.so");
    chmod(&loose, 0o666);
    let mut agent = agent_with(&pki, port, "127.0.41.5", &plugins, "");
    agent.spawn(&["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    let reason = format!("{}: group- or world-writable (mode 0666)", loose.display());
    for _ in 0..3 {
        let answer = server.call(&host, r#"{"method":"getinfo.os"}"#);
        assert_eq!(answer["retcode"], 3025, "{answer}");
        assert!(
            answer["message"].as_str().unwrap_or("").contains(&reason),
            "{answer}"
        );
    }
    // Still serving, the good plugin too.
    assert_eq!(
        server.call(&host, r#"{"method":"getinfo.kernel"}"#)["retcode"],
        2
    );
    let log = agent.log();
    assert_eq!(
        log.matches(&format!("refusing plugin {reason}")).count(),
        1,
        "{log}"
    );
    // Fixed by chmod: served without a restart.
    chmod(&loose, 0o644);
    assert_eq!(
        server.call(&host, r#"{"method":"getinfo.os"}"#)["retcode"],
        2
    );
}

#[test]
fn shutdown_kills_a_command_of_a_plugin_copy_replaced_by_a_reload() {
    let pki = Pki::new();
    let port = free_port();
    let server = Server::serve(&pki, &format!("127.0.41.6:{port}"), "server", &[]);
    let (_tmp, plugins) = plugin_copy(&["libsync_bash.so"]);
    let mut agent = agent_with(&pki, port, "127.0.41.6", &plugins, "");
    agent.spawn(&["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    // Ignores SIGTERM, so the shutdown's cancel alone does not stop it.
    let marker = format!("sleep 4{}.3", std::process::id());
    let request =
        format!(r#"{{"method":"sync.bash","cmd":"trap '' TERM; {marker}","timeout":3600}}"#);
    let admin = server.admin.clone();
    let call = std::thread::spawn(move || {
        Command::new(server_bin())
            .arg("call")
            .arg("--admin")
            .arg(admin)
            .args(["--host", &host, "--timeout", "60", &request])
            .output()
            .unwrap()
    });
    let pids = wait_for("the command to run", Duration::from_secs(15), || {
        let pids = pids_of(&marker);
        (!pids.is_empty()).then_some(pids)
    });
    // Replace the plugin by rename (a new inode), then SIGHUP.
    let staged = plugins.join(".libsync_bash.so.new");
    std::fs::copy(bin_dir().join("libsync_bash.so"), &staged).unwrap();
    chmod(&staged, 0o644);
    std::fs::rename(&staged, plugins.join("libsync_bash.so")).unwrap();
    agent.signal(libc::SIGHUP);
    wait_for("the reload", Duration::from_secs(10), || {
        agent
            .log()
            .contains("reloaded plugin sync_bash")
            .then_some(())
    });
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(Duration::from_secs(20)), Some(0));
    let gone = (0..200).any(|_| {
        if !pgrep(&marker) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
        false
    });
    if !gone {
        for pid in pids.into_iter().chain(pids_of(&marker)) {
            // SAFETY: kill(2) on the processes this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    assert!(gone, "the old copy's command survived the shutdown");
    let _ = call.join();
}

#[test]
fn a_ca_made_writable_is_refused_at_sighup_and_the_agent_keeps_serving() {
    let pki = Pki::new();
    let port = free_port();
    let server = Server::serve(&pki, &format!("127.0.41.7:{port}"), "server", &[]);
    let mut agent = agent_with(&pki, port, "127.0.41.7", &bin_dir(), "");
    agent.spawn(&["-f"]);
    let host = server.wait_agent(Duration::from_secs(15));
    let ca = pki.path("ca.pem");
    chmod(&ca, 0o666);
    agent.signal(libc::SIGHUP);
    let line = format!(
        "reload: refusing server.ca {}: group- or world-writable (mode 0666); keeping the running configuration",
        ca.display()
    );
    wait_for("the refused reload", Duration::from_secs(10), || {
        agent.log().contains(&line).then_some(())
    });
    assert_eq!(server.call(&host, r#"{"method":"ping"}"#)["retcode"], 2);
}

#[test]
fn a_refused_pid_file_fails_a_detaching_start_with_the_reason() {
    let pki = Pki::new();
    let agent = agent_with(&pki, free_port(), "127.0.41.8", &bin_dir(), "");
    let dir = agent.path("sticky");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o1777);
    let pid = dir.join("agent.pid");
    // No -f: the starter waits for the detached daemon's report.
    let out = Command::new(env!("CARGO_BIN_EXE_BasicAgent"))
        .arg("-c")
        .arg(agent.path("agent.toml"))
        .arg("-P")
        .arg(&pid)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "refusing pid file {}: directory {}: ",
            pid.display(),
            dir.display()
        )) && err.contains("(mode 1777)"),
        "{err}"
    );
    assert!(!pid.exists());
}
