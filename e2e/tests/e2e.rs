//! End to end, with the real artefacts on loopback: the install
//! tree from `scripts/install.sh --destdir`, the LSB init script driving
//! it, the Debian package from `scripts/package.sh` (dpkg -i / -r / -P),
//! plugins dropped into a running daemon's directory and replaced under
//! SIGHUP, and the log file renamed under SIGHUP and SIGUSR1.
//!
//! Needs the workspace built in debug (`scripts/test.sh` does) and root
//! (CI runs as root). Every daemon and server is stopped and every
//! temporary directory and the package are removed, also on failure
//! (guards with `Drop`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use basicagent_testsupport::wait::wait_until;
use basicagent_testsupport::{
    alive, bins, free_addr_on, is_root, script, wait_for, workspace, AgentConfig, Dns, Pki, Server,
    NAME, WAIT,
};

// ---------------------------------------------------------------- paths

/// target/debug, with what these tests need built.
fn bin_dir() -> PathBuf {
    bins::bin_dir_with(&[
        "BasicAgent",
        "BasicAgentCtl",
        "BasicAgentServer",
        "libgetinfo_hello.so",
        "libgetinfo_kernel.so",
        "libsync_bash.so",
    ])
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd} >/dev/null 2>&1")])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed: {}", text(&out));
    out
}

fn kill(pid: i32, sig: libc::c_int) {
    // Whether it was sent does not matter here: gone is fine.
    let _ = basicagent_testsupport::kill(pid, sig);
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
}

/// Kills the daemon named by a pid file when dropped (detached daemons are
/// not our children), if it still runs and is a BasicAgent.
struct PidGuard(PathBuf);

impl Drop for PidGuard {
    fn drop(&mut self) {
        if let Some(pid) = read_pid(&self.0) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "BasicAgent" {
                kill(pid, libc::SIGKILL);
            }
        }
    }
}

// ---------------------------------------------------------------- server, agent config

/// The server on `ip` (a port free there) with the Pki's certificate.
fn server_on(pki: &Pki, ip: &str) -> Server {
    Server::serve(pki, &free_addr_on(ip).to_string(), "server", &[])
}

/// Writes an agent configuration for `server` into `dir/agent.toml`
/// (with a private hosts file); `plugin_dir` None leaves the default.
fn agent_config(server: &Server, dir: &Path, plugin_dir: Option<&Path>, pki: &Pki) -> PathBuf {
    let ip = server.listen.ip().to_string();
    let mut config = AgentConfig::new(pki, server.listen.port(), &[&ip]);
    config.name = Some(NAME.to_owned());
    config.dns = Dns::Nxdomain;
    config.plugin_dir = plugin_dir.map(Path::to_owned);
    // Its own control socket (DIR/run/ctl.sock), never the default
    // /run/basicagent/ctl.sock: tests run at once, and a BasicAgentCtl
    // call of one test must not reach the daemon of another.
    config.private_ctl = true;
    config.write(dir)
}

/// A daemon started in the foreground by the test (its child).
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(exe: &Path, config: &Path, log: &Path) -> Daemon {
        let child = Command::new(exe)
            .arg("-c")
            .arg(config)
            .arg("-L")
            .arg(log)
            .args(["-f", "-l", "debug"])
            .env_remove("BASICAGENT_PLUGIN_DIR")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Daemon {
            child,
            log: log.to_owned(),
        }
    }

    fn signal(&self, sig: libc::c_int) {
        kill(self.child.id() as i32, sig);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) {
        wait_until(&format!("{needle:?} in the log"), || {
            self.log().contains(needle)
        });
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server on `ip` and a daemon in the foreground whose plugin directory
/// starts with copies of the built `initial` plugins; `build/` for the
/// test's own plugin builds. Everything is stopped and removed on drop.
struct HotDir {
    // Dropped first: the daemon, then the server, then the files.
    daemon: Daemon,
    server: Server,
    host: String,
    plugins: PathBuf,
    build: PathBuf,
    _pki: Pki,
    _tmp: tempfile::TempDir,
}

impl HotDir {
    fn start(ip: &str, initial: &[&str]) -> HotDir {
        let bins = bin_dir();
        let pki = Pki::new();
        let server = server_on(&pki, ip);
        let tmp = tempfile::tempdir().unwrap();
        let plugins = tmp.path().join("plugins");
        let build = tmp.path().join("build");
        std::fs::create_dir_all(&plugins).unwrap();
        std::fs::create_dir_all(&build).unwrap();
        for name in initial {
            install_plugin(&bins.join(name), &plugins, name);
        }
        let config = agent_config(&server, tmp.path(), Some(&plugins), &pki);
        let log = tmp.path().join("agent.log");
        let daemon = Daemon::start(&bins.join("BasicAgent"), &config, &log);
        let host = server.wait_agent(WAIT);
        // Its own control socket: another test's BasicAgentCtl never reaches it.
        let ctl = tmp.path().join("run/ctl.sock");
        wait_until("the daemon's own control socket", || ctl.exists());
        HotDir {
            daemon,
            server,
            host,
            plugins,
            build,
            _pki: pki,
            _tmp: tmp,
        }
    }
}

/// Copies `src` into `dir/name` the way operators must: a temporary name
/// in the same directory, then rename(2) over the target.
fn install_plugin(src: &Path, dir: &Path, name: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

// ---------------------------------------------------------------- the init script on an install tree

fn init(defaults: &Path, action: &str) -> Output {
    Command::new("sh")
        .arg(script("basicagent.init"))
        .arg(action)
        .env("BASICAGENT_DEFAULTS", defaults)
        .env_remove("BASICAGENT_DAEMON")
        .env_remove("BASICAGENT_CONFIG")
        .env_remove("BASICAGENT_LOGFILE")
        .env_remove("BASICAGENT_PIDFILE")
        .env_remove("BASICAGENT_OPTS")
        .env_remove("BASICAGENT_PLUGIN_DIR")
        .output()
        .unwrap()
}

/// [`init_at`], asserting the exit status `code` (`what` names the step).
fn init_expect(init_path: &Path, defaults: &Path, action: &str, code: i32, what: &str) -> Output {
    let out = init_at(init_path, defaults, action);
    assert_eq!(out.status.code(), Some(code), "{what}: {}", text(&out));
    out
}

fn init_at(init_path: &Path, defaults: &Path, action: &str) -> Output {
    Command::new(init_path)
        .arg(action)
        .env("BASICAGENT_DEFAULTS", defaults)
        .env_remove("BASICAGENT_PLUGIN_DIR")
        .output()
        .unwrap()
}

#[test]
fn install_tree_and_the_init_script_start_status_reload_stop() {
    let bins = bin_dir();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    run_ok(
        Command::new(script("install.sh"))
            .arg("--destdir")
            .arg(&root)
            .arg("--build-dir")
            .arg(&bins),
    );
    for f in [
        "usr/sbin/BasicAgent",
        "usr/bin/BasicAgentCtl",
        "usr/lib/basicagent/plugins/libgetinfo_kernel.so",
        "usr/lib/basicagent/plugins/libsync_bash.so",
        "usr/lib/systemd/system/basicagent.service",
        "etc/init.d/basicagent",
        "etc/default/basicagent",
        "etc/basicagent/agent.toml",
        "etc/logrotate.d/basicagent",
        "usr/lib/basicagent/install-manifest",
        "usr/include/basicagent/basicagent_plugin.h",
        "usr/share/pkgconfig/basicagent-plugin.pc",
        "usr/share/doc/basicagent/examples/getinfo_loadavg.c",
    ] {
        assert!(root.join(f).exists(), "{f} installed");
    }
    for f in [
        "libfixture_misbehave.so",
        "libgetinfo_hello.so",
        "libgetinfo_loadavg.so",
    ] {
        assert!(
            !root.join("usr/lib/basicagent/plugins").join(f).exists(),
            "{f} is not installed"
        );
    }
    assert!(root.join("var/lib/basicagent").is_dir());
    // The default configuration is the commented one, valid as it stands,
    // and a second install keeps an edited one.
    let shipped = std::fs::read_to_string(root.join("etc/basicagent/agent.toml")).unwrap();
    assert_eq!(
        shipped,
        std::fs::read_to_string(script("agent.toml")).unwrap()
    );
    std::fs::write(
        root.join("etc/basicagent/agent.toml"),
        format!("{shipped}\n# edited\n"),
    )
    .unwrap();
    let again = run_ok(
        Command::new(script("install.sh"))
            .arg("--destdir")
            .arg(&root)
            .arg("--build-dir")
            .arg(&bins),
    );
    assert!(String::from_utf8_lossy(&again.stdout).contains("kept existing"));
    assert!(
        std::fs::read_to_string(root.join("etc/basicagent/agent.toml"))
            .unwrap()
            .ends_with("# edited\n")
    );

    // The installed configuration for this test: the server on 127.0.7.1,
    // the installed plugins.
    let pki = Pki::new();
    let server = server_on(&pki, "127.0.7.1");
    let etc = root.join("etc/basicagent");
    let config = agent_config(
        &server,
        &etc,
        Some(&root.join("usr/lib/basicagent/plugins")),
        &pki,
    );
    let pid_file = root.join("run/basicagent.pid");
    let log_file = root.join("var/log/basicagent/agent.log");
    let defaults = root.join("etc/default/basicagent");
    std::fs::write(
        &defaults,
        format!(
            "DAEMON={}\nCONFIG={}\nLOGFILE={}\nPIDFILE={}\nDAEMON_OPTS=\"-l debug\"\n",
            root.join("usr/sbin/BasicAgent").display(),
            config.display(),
            log_file.display(),
            pid_file.display()
        ),
    )
    .unwrap();
    let _guard = PidGuard(pid_file.clone());
    let init_script = root.join("etc/init.d/basicagent");

    init_expect(&init_script, &defaults, "status", 3, "not running yet");
    init_expect(&init_script, &defaults, "start", 0, "start");
    // The starter returned after the daemon took the pid file.
    let pid = read_pid(&pid_file).expect("the pid file is written when start returns");
    assert!(alive(pid));
    let out = init_expect(&init_script, &defaults, "status", 0, "status");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&pid.to_string()));

    let host = server.wait_agent(WAIT);
    let kernel = server.call(&host, r#"{"method":"getinfo.kernel"}"#);
    assert_eq!(kernel["retcode"], 2, "{kernel}");
    let info = server.call(&host, r#"{"method":"agent.info"}"#);
    assert_eq!(
        info["data"]["plugin_dir"],
        root.join("usr/lib/basicagent/plugins").to_str().unwrap()
    );

    // A second start is harmless: same daemon, exit 0.
    let out = init_expect(&init_script, &defaults, "start", 0, "second start");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already running"),
        "{}",
        text(&out)
    );
    assert_eq!(read_pid(&pid_file), Some(pid));
    // And the daemon itself refuses a second instance on the same pid file.
    let direct = Command::new(root.join("usr/sbin/BasicAgent"))
        .arg("-c")
        .arg(&config)
        .arg("-P")
        .arg(&pid_file)
        .output()
        .unwrap();
    assert_eq!(direct.status.code(), Some(1), "{}", text(&direct));
    assert!(String::from_utf8_lossy(&direct.stderr).contains("already running"));
    assert_eq!(read_pid(&pid_file), Some(pid));

    // reload → SIGHUP: the log is reopened, the daemon keeps serving.
    init_expect(&init_script, &defaults, "reload", 0, "reload");
    wait_for("the reload in the log", Duration::from_secs(10), || {
        std::fs::read_to_string(&log_file)
            .unwrap_or_default()
            .contains("log reopened")
            .then_some(())
    });
    init_expect(&init_script, &defaults, "force-reload", 0, "force-reload");
    assert_eq!(server.call(&host, r#"{"method":"ping"}"#)["retcode"], 2);
    assert_eq!(read_pid(&pid_file), Some(pid));

    // stop waits for the process to end.
    init_expect(&init_script, &defaults, "stop", 0, "stop");
    assert!(!alive(pid), "stop returned while pid {pid} still ran");
    assert!(!pid_file.exists(), "the daemon removed its pid file");
    init_expect(&init_script, &defaults, "status", 3, "status after stop");
    init_expect(&init_script, &defaults, "stop", 0, "stop when stopped");
    init_expect(&init_script, &defaults, "reload", 7, "reload when stopped");
    init_expect(&init_script, &defaults, "bogus", 2, "an unknown action");

    // A stale pid file (a crash): status 1, and start still works.
    std::fs::write(&pid_file, "999999999\n").unwrap();
    init_expect(&init_script, &defaults, "status", 1, "stale pid file");
    init_expect(&init_script, &defaults, "restart", 0, "restart");
    let pid2 = read_pid(&pid_file).unwrap();
    assert!(pid2 != pid && alive(pid2));
    // The repository copy (environment overrides only) sees the same daemon.
    let out = init(&defaults, "status");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = init_at(&init_script, &defaults, "stop");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!alive(pid2));

    // A configuration error: start fails with the daemon's message, status 3.
    std::fs::write(&config, "[server]\nprot = 1\n").unwrap();
    let out = init_expect(&init_script, &defaults, "start", 1, "bad config");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("prot"),
        "{}",
        text(&out)
    );
    assert_eq!(
        init_at(&init_script, &defaults, "status").status.code(),
        Some(3)
    );

    // --uninstall removes what it installed and keeps configuration and state.
    run_ok(
        Command::new(script("install.sh"))
            .arg("--uninstall")
            .arg("--destdir")
            .arg(&root),
    );
    for gone in [
        "usr/sbin/BasicAgent",
        "usr/bin/BasicAgentCtl",
        "usr/lib/basicagent",
        "usr/include/basicagent",
        "usr/share/pkgconfig/basicagent-plugin.pc",
        "usr/lib/systemd/system/basicagent.service",
        "etc/init.d/basicagent",
        "etc/logrotate.d/basicagent",
    ] {
        assert!(!root.join(gone).exists(), "{gone} removed");
    }
    for kept in [
        "etc/basicagent/agent.toml",
        "etc/default/basicagent",
        "var/lib/basicagent",
    ] {
        assert!(root.join(kept).exists(), "{kept} kept");
    }
}

// ---------------------------------------------------------------- the Debian package

/// dpkg serialises on its lock; another dpkg (apt on the same machine)
/// makes it fail at once, so retry for a while.
fn dpkg(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let start = Instant::now();
    loop {
        let mut cmd = Command::new("dpkg");
        cmd.args(args).env_remove("BASICAGENT_PLUGIN_DIR");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success()
            && err.contains("lock")
            && start.elapsed() < Duration::from_secs(120)
        {
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        return out;
    }
}

struct PurgeGuard;

impl Drop for PurgeGuard {
    fn drop(&mut self) {
        let _ = dpkg(&["-P", "basicagent"], &[]);
    }
}

#[test]
fn the_debian_package_installs_runs_and_removes_cleanly() {
    if !have("dpkg") || !have("dpkg-deb") {
        eprintln!(
            "SKIP the_debian_package_installs_runs_and_removes_cleanly: dpkg or dpkg-deb not found"
        );
        return;
    }
    assert!(
        is_root(),
        "this test installs a package: run it as root (CI does)"
    );
    let status = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "basicagent"])
        .output()
        .unwrap();
    if String::from_utf8_lossy(&status.stdout).contains("installed") {
        eprintln!("SKIP the_debian_package_installs_runs_and_removes_cleanly: a basicagent package is already installed here; not touching it");
        return;
    }
    let bins = bin_dir();
    let tmp = tempfile::tempdir().unwrap();
    let out = run_ok(
        Command::new(script("package.sh"))
            .arg("--build-dir")
            .arg(&bins)
            .arg("--output")
            .arg(tmp.path())
            .args(["--compress", "none"]),
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    let name = deb.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        name.starts_with(&format!("basicagent_{}_", env!("CARGO_PKG_VERSION")))
            && name.ends_with(".deb"),
        "{name}"
    );
    let info = run_ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Package"));
    assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), "basicagent");

    let _purge = PurgeGuard;
    let out = dpkg(&["-i", deb.to_str().unwrap()], &[]);
    assert!(out.status.success(), "dpkg -i: {}", text(&out));
    for f in [
        "/usr/sbin/BasicAgent",
        "/usr/bin/BasicAgentCtl",
        "/usr/lib/basicagent/plugins/libgetinfo_kernel.so",
        "/usr/lib/basicagent/plugins/libsync_bash.so",
        "/usr/lib/systemd/system/basicagent.service",
        "/etc/init.d/basicagent",
        "/etc/basicagent/agent.toml",
        "/etc/default/basicagent",
        "/etc/logrotate.d/basicagent",
    ] {
        assert!(Path::new(f).exists(), "{f} installed by the package");
    }
    assert!(!Path::new("/usr/lib/basicagent/install-manifest").exists());
    let conffiles =
        run_ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "basicagent"]));
    let conffiles = String::from_utf8_lossy(&conffiles.stdout).into_owned();
    for c in [
        "/etc/basicagent/agent.toml",
        "/etc/default/basicagent",
        "/etc/init.d/basicagent",
        "/etc/logrotate.d/basicagent",
    ] {
        assert!(conffiles.contains(c), "{c} is a conffile: {conffiles}");
    }
    // The ctl tool from the package finds the installed plugins.
    let ctl = Command::new("/usr/bin/BasicAgentCtl")
        .args(["-c", "getinfo.kernel"])
        .env_remove("BASICAGENT_PLUGIN_DIR")
        .output()
        .unwrap();
    assert!(ctl.status.success(), "{}", text(&ctl));

    // The daemon from the package, started by the package's init script,
    // against the reference server. Configuration, log and pid file are the
    // test's (BASICAGENT_DEFAULTS); binary, plugins and init script are the
    // package's.
    let pki = Pki::new();
    let server = server_on(&pki, "127.0.7.2");
    let run = tmp.path().join("run");
    let config = agent_config(&server, &run, None, &pki);
    let pid_file = run.join("agent.pid");
    let defaults = run.join("defaults");
    std::fs::write(
        &defaults,
        format!(
            "CONFIG={}\nLOGFILE={}\nPIDFILE={}\n",
            config.display(),
            run.join("agent.log").display(),
            pid_file.display()
        ),
    )
    .unwrap();
    let _guard = PidGuard(pid_file.clone());
    let init_script = Path::new("/etc/init.d/basicagent");
    let out = init_at(init_script, &defaults, "start");
    assert_eq!(out.status.code(), Some(0), "start: {}", text(&out));
    let pid = read_pid(&pid_file).unwrap();
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/exe")).unwrap(),
        Path::new("/usr/sbin/BasicAgent")
    );
    let host = server.wait_agent(WAIT);
    let info = server.call(&host, r#"{"method":"agent.info"}"#);
    assert_eq!(
        info["data"]["plugin_dir"], "/usr/lib/basicagent/plugins",
        "{info}"
    );
    let bash = server.call(
        &host,
        r#"{"method":"sync.bash","cmd":"echo from the package"}"#,
    );
    assert_eq!(bash["data"]["stdout"], "from the package\n", "{bash}");
    assert_eq!(
        init_at(init_script, &defaults, "status").status.code(),
        Some(0)
    );

    // dpkg -r: prerm stops the daemon (the same defaults reach it through
    // dpkg's environment), files go, conffiles stay.
    let out = dpkg(&["-r", "basicagent"], &[("BASICAGENT_DEFAULTS", &defaults)]);
    assert!(out.status.success(), "dpkg -r: {}", text(&out));
    assert!(!alive(pid), "prerm stopped the daemon");
    for f in [
        "/usr/sbin/BasicAgent",
        "/usr/bin/BasicAgentCtl",
        "/usr/lib/basicagent",
        "/usr/lib/systemd/system/basicagent.service",
        "/usr/share/doc/basicagent",
    ] {
        assert!(!Path::new(f).exists(), "{f} removed by dpkg -r");
    }
    for f in [
        "/etc/basicagent/agent.toml",
        "/etc/init.d/basicagent",
        "/etc/default/basicagent",
    ] {
        assert!(Path::new(f).exists(), "conffile {f} kept by dpkg -r");
    }
    let status = run_ok(Command::new("dpkg-query").args(["-W", "-f=${Status}", "basicagent"]));
    assert_eq!(
        String::from_utf8_lossy(&status.stdout),
        "deinstall ok config-files"
    );
    // The init script left behind (a conffile) is harmless without the binary.
    let out = Command::new(init_script).arg("start").output().unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "start without the daemon: {}",
        text(&out)
    );
    assert!(!Path::new("/run/basicagent.pid").exists());

    // dpkg -P: the conffiles and the state go too.
    let out = dpkg(&["-P", "basicagent"], &[]);
    assert!(out.status.success(), "dpkg -P: {}", text(&out));
    for f in [
        "/etc/basicagent",
        "/etc/init.d/basicagent",
        "/etc/default/basicagent",
        "/etc/logrotate.d/basicagent",
        "/var/lib/basicagent",
    ] {
        assert!(!Path::new(f).exists(), "{f} removed by dpkg -P");
    }
    for rc in [
        "rc0.d", "rc1.d", "rc2.d", "rc3.d", "rc4.d", "rc5.d", "rc6.d",
    ] {
        let links: Vec<String> = std::fs::read_dir(Path::new("/etc").join(rc))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with("basicagent"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            links.is_empty(),
            "/etc/{rc} links removed by dpkg -P: {links:?}"
        );
    }
    let status = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "basicagent"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&status.stdout).contains("installed"),
        "{}",
        text(&status)
    );
}

// ---------------------------------------------------------------- plugins

/// Serialises the C compiler runs (cheap, but keep the machine calm).
static CC: Mutex<()> = Mutex::new(());

/// Compiles a tiny plugin serving `method` whose data is {"version": V}.
/// `entry: false` leaves out the entry symbol (a shared object that is
/// not a plugin).
fn c_plugin(dir: &Path, method: &str, version: &str, entry: bool) -> PathBuf {
    let _lock = CC.lock().unwrap_or_else(|e| e.into_inner());
    let stem = method.replace('.', "_");
    let src = dir.join(format!("{stem}_{version}.c"));
    let out = dir.join(format!("lib{stem}_{version}.so"));
    let entry_fn = if entry {
        "const ba_plugin_descriptor *basicagent_plugin_v1(void) { return &desc; }"
    } else {
        "const ba_plugin_descriptor *not_the_entry(void) { return &desc; }"
    };
    std::fs::write(
        &src,
        format!(
            r#"#include <string.h>
#include "basicagent_plugin.h"
static const ba_host_api *host;
static ba_status p_init(const ba_host_api *api) {{ host = api; return BA_STATUS_OK; }}
static void p_call(ba_call_id call, const char *req, size_t len) {{
    static const char data[] = "{{\"version\":\"{version}\"}}";
    (void)req; (void)len;
    host->complete(call, BA_RETCODE_SUCCESS, NULL, 0, data, sizeof data - 1);
}}
static const char *const methods[] = {{"{method}", NULL}};
static const ba_plugin_descriptor desc = {{
    .abi_version = BA_ABI_VERSION, .size = sizeof(ba_plugin_descriptor),
    .name = "{stem}", .version = "{version}", .description = "ops test plugin",
    .methods = methods, .usage = "none", .init = p_init, .call = p_call,
    .cancel = NULL, .fini = NULL,
}};
{entry_fn}
"#
        ),
    )
    .unwrap();
    run_ok(
        Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".to_owned()))
            .args([
                "-Wall", "-Werror", "-std=c11", "-O1", "-fPIC", "-shared", "-I",
            ])
            .arg(workspace().join("abi/include"))
            .arg("-o")
            .arg(&out)
            .arg(&src),
    );
    out
}

#[test]
fn plugins_dropped_into_a_running_daemon_are_served_and_replaced_on_sighup() {
    let bins = bin_dir();
    let hot = HotDir::start("127.0.7.3", &["libsync_bash.so"]);
    let (server, daemon, host) = (&hot.server, &hot.daemon, hot.host.clone());
    let (plugins, build) = (hot.plugins.clone(), hot.build.clone());

    // Not there yet: unknown method.
    let v = server.call(&host, r#"{"method":"getinfo.hello"}"#);
    assert_eq!(v["retcode"], 3022, "{v}");
    // Dropped in: served at once, no restart, no signal.
    install_plugin(
        &bins.join("libgetinfo_hello.so"),
        &plugins,
        "libgetinfo_hello.so",
    );
    let v = server.call(&host, r#"{"method":"getinfo.hello","args":"-n ops"}"#);
    assert_eq!(v["retcode"], 2, "{v}");
    assert_eq!(v["data"]["greeting"], "hello, ops");

    // Two builds of one plugin; the second replaces the first by rename.
    let v1 = c_plugin(&build, "getinfo.opsver", "1", true);
    let v2 = c_plugin(&build, "getinfo.opsver", "2", true);
    install_plugin(&v1, &plugins, "libgetinfo_opsver.so");
    let v = server.call(&host, r#"{"method":"getinfo.opsver"}"#);
    assert_eq!(v["data"]["version"], "1", "{v}");
    install_plugin(&v2, &plugins, "libgetinfo_opsver.so");
    // Until SIGHUP the loaded copy keeps serving (documented).
    let v = server.call(&host, r#"{"method":"getinfo.opsver"}"#);
    assert_eq!(v["data"]["version"], "1", "{v}");

    // A call in flight in a plugin that is replaced meanwhile finishes
    // normally in the old copy.
    let slow = {
        let admin = server.admin.clone();
        let host = host.clone();
        std::thread::spawn(move || {
            Command::new(bin_dir().join("BasicAgentServer"))
                .arg("call")
                .arg("--admin")
                .arg(admin)
                .args([
                    "--host",
                    &host,
                    "--timeout",
                    "30",
                    r#"{"method":"sync.bash","cmd":"sleep 1.5; echo survived"}"#,
                ])
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    install_plugin(&bins.join("libsync_bash.so"), &plugins, "libsync_bash.so");

    daemon.signal(libc::SIGHUP);
    daemon.wait_log("reloaded plugin getinfo_opsver 2");
    let v = server.call(&host, r#"{"method":"getinfo.opsver"}"#);
    assert_eq!(v["data"]["version"], "2", "the new build after SIGHUP: {v}");
    let slow = slow.join().unwrap();
    let slow_text = String::from_utf8_lossy(&slow.stdout);
    assert!(slow_text.contains("survived"), "{}", text(&slow));
    let v = server.call(&host, r#"{"method":"sync.bash","cmd":"echo new copy"}"#);
    assert_eq!(v["data"]["stdout"], "new copy\n", "{v}");

    // Broken files are refused with a log line naming them; the rest keep working.
    std::fs::write(plugins.join("libgetinfo_garbage.so"), b"this is not ELF\n").unwrap();
    let v = server.call(&host, r#"{"method":"getinfo.garbage"}"#);
    assert_eq!(v["retcode"], 3025, "{v}");
    let noentry = c_plugin(&build, "getinfo.noentry", "1", false);
    install_plugin(&noentry, &plugins, "libgetinfo_noentry.so");
    let v = server.call(&host, r#"{"method":"getinfo.noentry"}"#);
    assert_eq!(v["retcode"], 3025, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains("libgetinfo_noentry.so"),
        "{v}"
    );
    // SIGHUP with broken files around: nothing breaks.
    daemon.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    for (m, check) in [
        (r#"{"method":"getinfo.hello"}"#, "greeting"),
        (r#"{"method":"getinfo.opsver"}"#, "version"),
    ] {
        let v = server.call(&host, m);
        assert_eq!(v["retcode"], 2, "{v}");
        assert!(v["data"].get(check).is_some(), "{v}");
    }
    assert_eq!(server.call(&host, r#"{"method":"ping"}"#)["retcode"], 2);
    // Refusals are logged with the file (at debug level for a call; the
    // daemon runs with -l debug here).
    let log = daemon.log();
    for f in ["libgetinfo_garbage.so", "libgetinfo_noentry.so"] {
        assert!(log.contains(f), "the log names {f}:\n{log}");
    }
}

/// A file refused once (a shared object without the entry symbol) and then
/// replaced by a good build of the same name is served: the refused copy
/// does not stand in for the new file.
#[test]
fn a_refused_plugin_replaced_by_a_good_build_is_served() {
    let hot = HotDir::start("127.0.7.5", &[]);
    let (server, daemon, host) = (&hot.server, &hot.daemon, hot.host.clone());
    let (plugins, build) = (hot.plugins.clone(), hot.build.clone());
    let bad = c_plugin(&build, "getinfo.fixme", "1", false);
    install_plugin(&bad, &plugins, "libgetinfo_fixme.so");
    let v = server.call(&host, r#"{"method":"getinfo.fixme"}"#);
    assert_eq!(v["retcode"], 3025, "{v}");
    let good = c_plugin(&build, "getinfo.fixme", "2", true);
    install_plugin(&good, &plugins, "libgetinfo_fixme.so");
    let v = server.call(&host, r#"{"method":"getinfo.fixme"}"#);
    assert_eq!(v["data"]["version"], "2", "after replacing: {v}");
    // And a SIGHUP afterwards changes nothing.
    daemon.signal(libc::SIGHUP);
    daemon.wait_log("log reopened");
    let v = server.call(&host, r#"{"method":"getinfo.fixme"}"#);
    assert_eq!(v["data"]["version"], "2", "after SIGHUP: {v}");
}

// ---------------------------------------------------------------- log rotation

#[test]
fn a_renamed_log_is_replaced_by_a_fresh_file_on_sighup_and_sigusr1() {
    let bins = bin_dir();
    let pki = Pki::new();
    let server = server_on(&pki, "127.0.7.4");
    let tmp = tempfile::tempdir().unwrap();
    let config = agent_config(&server, tmp.path(), Some(&bins), &pki);
    let log = tmp.path().join("agent.log");
    let daemon = Daemon::start(&bins.join("BasicAgent"), &config, &log);
    let host = server.wait_agent(WAIT);
    daemon.wait_log("BasicAgent");

    for (round, sig) in [(1, libc::SIGHUP), (2, libc::SIGUSR1)] {
        let rotated = tmp.path().join(format!("agent.log.round{round}"));
        std::fs::rename(&log, &rotated).unwrap();
        // logrotate's create mode: a new empty file before the signal.
        if round == 2 {
            std::fs::write(&log, b"").unwrap();
        }
        daemon.signal(sig);
        daemon.wait_log("log reopened");
        // Requests after the reopen are logged in the fresh file only.
        let before = std::fs::metadata(&rotated).unwrap().len();
        for _ in 0..3 {
            assert_eq!(
                server.call(&host, r#"{"method":"nosuch.method"}"#)["retcode"],
                3022
            );
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(!daemon.log().is_empty());
        assert_eq!(
            std::fs::metadata(&rotated).unwrap().len(),
            before,
            "round {round}: the rotated file no longer grows"
        );
    }

    // The shipped logrotate configuration, pointed at this log and pid file,
    // if logrotate is installed.
    if have("logrotate") {
        let pid_file = tmp.path().join("agent.pid");
        std::fs::write(&pid_file, format!("{}\n", daemon.child.id())).unwrap();
        let conf = std::fs::read_to_string(script("basicagent.logrotate"))
            .unwrap()
            .replace("/var/log/basicagent/agent.log", log.to_str().unwrap())
            .replace("/run/basicagent.pid", pid_file.to_str().unwrap())
            .replace("create 0640 root adm", "create 0640 root root");
        let conf_path = tmp.path().join("logrotate.conf");
        std::fs::write(&conf_path, conf).unwrap();
        run_ok(
            Command::new("logrotate")
                .arg("-f")
                .arg("-s")
                .arg(tmp.path().join("logrotate.state"))
                .arg(&conf_path),
        );
        daemon.wait_log("log reopened");
        assert!(tmp.path().join("agent.log.1").exists());
    } else {
        eprintln!("logrotate not installed: the shipped configuration was not run");
    }
}

/// At the default log level (info, what the init script and the unit use)
/// a plugin file that is refused must leave a line naming it in the log.
#[test]
fn a_refused_plugin_is_logged_at_the_default_level() {
    let bins = bin_dir();
    let pki = Pki::new();
    let server = server_on(&pki, "127.0.7.6");
    let tmp = tempfile::tempdir().unwrap();
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let config = agent_config(&server, tmp.path(), Some(&plugins), &pki);
    let log = tmp.path().join("agent.log");
    let child = Command::new(bins.join("BasicAgent"))
        .arg("-c")
        .arg(&config)
        .arg("-L")
        .arg(&log)
        .arg("-f")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = Daemon { child, log };
    let host = server.wait_agent(WAIT);
    std::fs::write(plugins.join("libgetinfo_junk.so"), b"not a plugin\n").unwrap();
    let v = server.call(&host, r#"{"method":"getinfo.junk"}"#);
    assert_eq!(v["retcode"], 3025, "{v}");
    std::thread::sleep(Duration::from_millis(300));
    let text = daemon.log();
    assert!(
        text.contains("libgetinfo_junk.so"),
        "no log line names the refused file at level info:\n{text}"
    );
}

// ---------------------------------------------------------------- scripts/lib/loopback.sh

/// The set-up demo.sh, bench.sh and soak.sh share, run as they run it:
/// certificates with openssl, the hosts file, the agent config (DNS off),
/// a port free on two addresses, the real server and agent, the wait for
/// the agent, the stop; and, as root, a private /etc by unshare -m.
#[test]
fn the_scripts_loopback_library_brings_up_a_server_and_an_agent() {
    if !have("openssl") {
        eprintln!("skipped: needs openssl");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bins = bin_dir();
    let script = r#"
set -euo pipefail
. scripts/lib/loopback.sh
D=$1 BIN=$2
ba_certs "$D" >/dev/null
PORT=$(ba_free_port 127.0.7.8 127.0.7.9)
ba_hosts_file "$D/hosts" 127.0.7.9 127.0.7.8
ba_agent_config "$D/agent.toml" "$D" "$PORT" "$BIN" "ctl_socket = \"$D/run/ctl.sock\""
"$BIN/BasicAgentServer" serve --listen "127.0.7.8:$PORT" --cert "$D/server.pem" --key "$D/server.key" \
    --admin "$D/admin.sock" --api none 2>"$D/server.log" &
SERVER=$!
ba_wait_socket "$D/admin.sock" || { cat "$D/server.log" >&2; exit 1; }
ba_wait_port 127.0.7.8 "$PORT"
"$BIN/BasicAgent" -c "$D/agent.toml" -f -L "$D/agent.log" &
AGENT=$!
HOST=$(ba_wait_agent "$BIN/BasicAgentServer" "$D/admin.sock") || { tail "$D/agent.log" >&2; exit 1; }
echo "host=$HOST"
ba_stop "$AGENT" "$SERVER"
kill -0 "$AGENT" 2>/dev/null && { echo "the agent survived ba_stop" >&2; exit 1; }
if [ "$(id -u)" = 0 ] && [ -e /etc/hostname ]; then
    mkdir "$D/etc"
    printf 'e2e-private-etc\n' > "$D/etc/hostname"
    ba_private_etc "$D/etc" 60 -- cat /etc/hostname
fi
"#;
    let out = run_ok(
        Command::new("bash")
            .args(["-c", script, "loopback"])
            .arg(tmp.path())
            .arg(&bins)
            .current_dir(workspace()),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("host="), "{}", text(&out));
    let config = std::fs::read_to_string(tmp.path().join("agent.toml")).unwrap();
    assert!(config.contains("dns = false"), "{config}");
    let hosts = std::fs::read_to_string(tmp.path().join("hosts")).unwrap();
    assert_eq!(
        hosts,
        "127.0.7.9 config.cargo.com\n127.0.7.8 config.cargo.com\n"
    );
    if is_root() && Path::new("/etc/hostname").exists() {
        assert!(stdout.contains("e2e-private-etc"), "{}", text(&out));
        let real = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
        assert!(
            !real.contains("e2e-private-etc"),
            "the machine's /etc is untouched"
        );
    }
}
