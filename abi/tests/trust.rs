//! The file-trust rule in the loader, as root, against a real C plugin
//! whose ELF constructor writes a marker file: every refused file is
//! proven never to have run (no marker) and to give its reason; a good
//! file still loads (marker written). And `fini_all` after a reload
//! reaches the old copy of the real `sync.bash` plugin.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use basicagent_abi::{retcode, Completion, HostSettings, LoadError, Plugin, PluginRegistry};
use basicagent_testsupport::cplugin::{compile_marking, CTOR_PLUGIN};
use basicagent_testsupport::{chmod, is_root};

const NOBODY: u32 = 65534;

macro_rules! needs_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (chown, another user)");
            return;
        }
    };
}

/// A scratch tree: `base` (0755, root) with `staging/` holding the
/// compiled fixture (0644) and the marker path it writes.
struct Scratch {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    so: PathBuf,
    marker: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_owned();
        chmod(&base, 0o755);
        let staging = base.join("staging");
        std::fs::create_dir(&staging).unwrap();
        chmod(&staging, 0o755);
        let marker = base.join("constructor-ran");
        let so = staging.join("libgetinfo_ctor.so");
        compile_marking(CTOR_PLUGIN, &so, &marker);
        chmod(&so, 0o644);
        Scratch {
            _tmp: tmp,
            base,
            so,
            marker,
        }
    }

    /// A new directory under base with `mode`.
    fn dir(&self, name: &str, mode: u32) -> PathBuf {
        let d = self.base.join(name);
        std::fs::create_dir_all(&d).unwrap();
        chmod(&d, mode);
        d
    }

    fn ran(&self) -> bool {
        self.marker.exists()
    }
}

fn registry(dir: &Path) -> PluginRegistry {
    PluginRegistry::new(dir, HostSettings::default())
}

/// Asserts `get("getinfo.ctor")` is refused by the trust rule with
/// `reason` and that the constructor did not run.
fn assert_refused(s: &Scratch, dir: &Path, reason: &str) -> String {
    let err = registry(dir).get("getinfo.ctor").unwrap_err();
    assert!(matches!(err, LoadError::Untrusted(_)), "{err}");
    assert_eq!(err.retcode(), retcode::PLUGIN_FAILURE);
    let text = err.to_string();
    assert!(text.contains(reason), "{text} should say {reason}");
    assert!(
        text.starts_with(&dir.join("libgetinfo_ctor.so").display().to_string()),
        "{text} names the file"
    );
    assert!(!s.ran(), "the constructor of a refused file ran: {text}");
    text
}

fn call(plugin: &Plugin, request: &str) -> Completion {
    let (tx, rx) = mpsc::channel();
    plugin.call(
        request.as_bytes(),
        Box::new(move |c| {
            let _ = tx.send(c);
        }),
    );
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the plugin completes")
}

#[test]
fn a_good_file_loads_and_its_constructor_runs() {
    // The positive control: the marker does work.
    let s = Scratch::new();
    let dir = s.dir("plugins", 0o755);
    std::fs::copy(&s.so, dir.join("libgetinfo_ctor.so")).unwrap();
    chmod(&dir.join("libgetinfo_ctor.so"), 0o644);
    let plugin = registry(&dir).get("getinfo.ctor").unwrap();
    assert!(s.ran());
    let c = call(&plugin, r#"{"method":"getinfo.ctor"}"#);
    assert_eq!(c.retcode, retcode::SUCCESS);
}

#[test]
fn a_so_dropped_by_nobody_into_a_world_writable_dir_never_runs() {
    needs_root!();
    let s = Scratch::new();
    let dir = s.dir("plugins", 0o777);
    // Really copied by nobody, as an attacker would.
    let ok = Command::new("cp")
        .arg(&s.so)
        .arg(dir.join("libgetinfo_ctor.so"))
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp as nobody");
    let text = assert_refused(
        &s,
        &dir,
        &format!(
            "directory {}: group- or world-writable (mode 0777)",
            dir.display()
        ),
    );
    assert!(!text.contains("(refused earlier"), "{text}");
    // The operator closes the directory: the file is still nobody's.
    chmod(&dir, 0o755);
    assert_refused(&s, &dir, "owned by uid 65534, not by root");
}

#[test]
fn a_0666_so_in_a_root_owned_dir_never_runs_until_fixed() {
    needs_root!();
    let s = Scratch::new();
    let dir = s.dir("plugins", 0o755);
    let file = dir.join("libgetinfo_ctor.so");
    std::fs::copy(&s.so, &file).unwrap();
    chmod(&file, 0o666);
    let reg = registry(&dir);
    for _ in 0..2 {
        let err = reg.get("getinfo.ctor").unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: group- or world-writable (mode 0666)", file.display())
        );
        assert!(!s.ran());
    }
    // Fixed by chmod alone (same inode, same mtime): the next call loads.
    chmod(&file, 0o644);
    let plugin = reg.get("getinfo.ctor").unwrap();
    assert!(s.ran());
    assert_eq!(
        call(&plugin, r#"{"method":"getinfo.ctor"}"#).retcode,
        retcode::SUCCESS
    );
}

#[test]
fn a_symlink_to_a_good_so_never_runs() {
    needs_root!();
    let s = Scratch::new();
    let dir = s.dir("plugins", 0o755);
    std::os::unix::fs::symlink(&s.so, dir.join("libgetinfo_ctor.so")).unwrap();
    assert_refused(&s, &dir, "a symbolic link (not followed)");
    // Plugin::load (the ctl tool's and fuzzers' way in) refuses it too.
    let err = Plugin::load(
        &dir.join("libgetinfo_ctor.so"),
        &HostSettings::default(),
        false,
    )
    .unwrap_err();
    assert!(matches!(err, LoadError::Untrusted(_)), "{err}");
    assert!(!s.ran());
}

#[test]
fn a_user_owned_plugin_dir_never_runs() {
    needs_root!();
    let s = Scratch::new();
    let dir = s.dir("home-of-nobody", 0o755);
    let file = dir.join("libgetinfo_ctor.so");
    std::fs::copy(&s.so, &file).unwrap();
    chmod(&file, 0o644);
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    assert_refused(
        &s,
        &dir,
        &format!(
            "directory {}: owned by uid 65534, not by root",
            dir.display()
        ),
    );
}

#[test]
fn a_writable_parent_directory_never_runs() {
    needs_root!();
    let s = Scratch::new();
    let parent = s.dir("shared", 0o777);
    let dir = s.dir("shared/plugins", 0o755);
    let file = dir.join("libgetinfo_ctor.so");
    std::fs::copy(&s.so, &file).unwrap();
    chmod(&file, 0o644);
    assert_refused(
        &s,
        &dir,
        &format!(
            "directory {}: group- or world-writable (mode 0777)",
            parent.display()
        ),
    );
    // Group-writable is as bad for root; a sticky parent (like /tmp) is
    // fine: no one else may rename the root-owned directory in it.
    chmod(&parent, 0o775);
    assert_refused(&s, &dir, "group- or world-writable (mode 0775)");
    chmod(&parent, 0o1777);
    registry(&dir).get("getinfo.ctor").unwrap();
    assert!(s.ran());
}

#[test]
fn the_scan_refuses_untrusted_files_without_running_them() {
    needs_root!();
    let s = Scratch::new();
    let dir = s.dir("plugins", 0o755);
    std::fs::copy(&s.so, dir.join("libgetinfo_ctor.so")).unwrap();
    chmod(&dir.join("libgetinfo_ctor.so"), 0o664);
    std::os::unix::fs::symlink(&s.so, dir.join("libgetinfo_link.so")).unwrap();
    let found = registry(&dir).scan().unwrap();
    assert_eq!(found.len(), 2);
    for entry in &found {
        assert!(matches!(entry, Err(LoadError::Untrusted(_))), "{entry:?}");
    }
    assert!(!s.ran());
}

// --- one log line per refused file version --------------------------------

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        LINES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record.args().to_string());
    }
    fn flush(&self) {}
}

fn lines_about(file: &Path) -> Vec<String> {
    let needle = file.display().to_string();
    LINES
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(&needle))
        .cloned()
        .collect()
}

#[test]
fn a_refusal_is_logged_once_per_file_version() {
    needs_root!();
    let _ = log::set_logger(&Capture);
    log::set_max_level(log::LevelFilter::Trace);
    let s = Scratch::new();
    let dir = s.dir("plugins", 0o755);
    let file = dir.join("libgetinfo_ctor.so");
    std::fs::copy(&s.so, &file).unwrap();
    chmod(&file, 0o666);
    let reg = registry(&dir);
    for _ in 0..5 {
        reg.get("getinfo.ctor").unwrap_err();
    }
    assert_eq!(
        lines_about(&file),
        vec![format!(
            "refusing plugin {}: group- or world-writable (mode 0666)",
            file.display()
        )]
    );
    // Another version (another mode): one more line.
    chmod(&file, 0o606);
    for _ in 0..5 {
        reg.get("getinfo.ctor").unwrap_err();
    }
    assert_eq!(lines_about(&file).len(), 2, "{:?}", lines_about(&file));
    assert!(!s.ran());
}

// --- item 10: fini_all reaches the old copy after a reload ----------------

fn built_sync_bash() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    let so = deps.parent().unwrap().join("libsync_bash.so");
    assert!(
        so.exists(),
        "{} missing: run `cargo build --workspace` first (scripts/test.sh does)",
        so.display()
    );
    so
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

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fini_all_kills_the_commands_of_a_copy_replaced_by_a_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    let target = dir.join("libsync_bash.so");
    std::fs::copy(built_sync_bash(), &target).unwrap();
    chmod(&target, 0o644);
    let reg = registry(&dir);
    let old = reg.get("sync.bash").unwrap();
    // A command that ignores SIGTERM (so only a kill by fini stops it).
    let marker = format!("sleep 3{}.{}", std::process::id(), 7);
    let request =
        format!(r#"{{"method":"sync.bash","cmd":"trap '' TERM; {marker}","timeout":3600}}"#);
    let (tx, rx) = mpsc::channel();
    old.call(
        request.as_bytes(),
        Box::new(move |c| {
            let _ = tx.send(c);
        }),
    );
    wait_until("the command to run", || !pids_of(&marker).is_empty());
    let pids = pids_of(&marker);
    // Replaced by rename (new inode): a second copy is mapped.
    let staged = dir.join(".libsync_bash.so.new");
    std::fs::copy(built_sync_bash(), &staged).unwrap();
    chmod(&staged, 0o644);
    std::fs::rename(&staged, &target).unwrap();
    let reloaded = reg.reload_changed();
    assert_eq!(reloaded.len(), 1, "{reloaded:?}");
    assert!(reloaded[0].is_ok(), "{reloaded:?}");
    assert_eq!(reg.loaded_copies(), 2);
    let new = reg.get("sync.bash").unwrap();
    assert!(!std::ptr::eq(&*old, &*new));
    // Shutdown: the old copy's command is killed and answered.
    reg.fini_all();
    let answer = rx.recv_timeout(Duration::from_secs(30));
    let gone = {
        let start = Instant::now();
        loop {
            if pids_of(&marker).is_empty() {
                break true;
            }
            if start.elapsed() > Duration::from_secs(15) {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    if !gone {
        for pid in pids.into_iter().chain(pids_of(&marker)) {
            // SAFETY: kill(2) on the command this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    assert!(gone, "the old copy's command survived fini_all");
    let answer = answer.expect("the old copy answered its call at shutdown");
    assert_ne!(answer.retcode, retcode::SUCCESS);
}

#[test]
fn fini_all_reaches_a_touched_copy_once() {
    // touch keeps the inode: glibc hands back the same library, which is
    // one copy to finish, not two.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    let target = dir.join("libsync_bash.so");
    std::fs::copy(built_sync_bash(), &target).unwrap();
    chmod(&target, 0o644);
    let reg = registry(&dir);
    let plugin = reg.get("sync.bash").unwrap();
    let marker = format!("sleep 5{}.9", std::process::id());
    let request =
        format!(r#"{{"method":"sync.bash","cmd":"trap '' TERM; {marker}","timeout":3600}}"#);
    let (tx, rx) = mpsc::channel();
    plugin.call(
        request.as_bytes(),
        Box::new(move |c| {
            let _ = tx.send(c);
        }),
    );
    wait_until("the command to run", || !pids_of(&marker).is_empty());
    let f = std::fs::File::options().append(true).open(&target).unwrap();
    f.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
        .unwrap();
    drop(f);
    let reloaded = reg.reload_changed();
    assert_eq!(reloaded.len(), 1, "{reloaded:?}");
    assert_eq!(reg.loaded_copies(), 1);
    reg.fini_all();
    reg.fini_all();
    let answer = rx.recv_timeout(Duration::from_secs(30));
    let gone = pids_of(&marker).is_empty()
        || (0..300).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            pids_of(&marker).is_empty()
        });
    if !gone {
        for pid in pids_of(&marker) {
            // SAFETY: kill(2) on the command this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    assert!(gone, "the command survived fini_all");
    assert!(answer.is_ok(), "the call was answered at shutdown");
}

#[test]
fn a_reload_never_runs_an_untrusted_replacement_and_the_old_copy_serves() {
    needs_root!();
    let good = Scratch::new();
    let evil = Scratch::new();
    let dir = good.dir("plugins", 0o755);
    let file = dir.join("libgetinfo_ctor.so");
    std::fs::copy(&good.so, &file).unwrap();
    chmod(&file, 0o644);
    let reg = registry(&dir);
    reg.get("getinfo.ctor").unwrap();
    assert!(good.ran());
    // Replaced by a symlink to another build, then by a 0666 copy of it.
    let link = dir.join(".link");
    std::os::unix::fs::symlink(&evil.so, &link).unwrap();
    std::fs::rename(&link, &file).unwrap();
    let reloaded = reg.reload_changed();
    assert_eq!(reloaded.len(), 1);
    let err = reloaded[0].as_ref().unwrap_err();
    assert!(matches!(err, LoadError::Untrusted(_)), "{err}");
    assert!(err.to_string().contains("a symbolic link"), "{err}");
    assert!(reg.reload_changed().is_empty(), "reported once");
    let loose = dir.join(".loose");
    std::fs::copy(&evil.so, &loose).unwrap();
    chmod(&loose, 0o666);
    std::fs::rename(&loose, &file).unwrap();
    let reloaded = reg.reload_changed();
    assert!(
        reloaded[0]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("group- or world-writable (mode 0666)"),
        "{reloaded:?}"
    );
    assert!(!evil.ran(), "the replacement's constructor ran");
    // The old copy keeps serving.
    let plugin = reg.get("getinfo.ctor").unwrap();
    assert_eq!(
        call(&plugin, r#"{"method":"getinfo.ctor"}"#).retcode,
        retcode::SUCCESS
    );
}
