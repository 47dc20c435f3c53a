//! `BasicAgentCtl` (the real binary, as root) never runs the code of a file
//! the trust rule refuses: `-c` through `$BASICAGENT_PLUGIN_DIR` and `-l`
//! over an attacker's directory print the reason, and the fixture's ELF
//! constructor, which writes a marker file, never ran.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use basicagent_testsupport::cplugin::{compile_marking, CTOR_PLUGIN};
use basicagent_testsupport::{chmod, is_root};

const NOBODY: u32 = 65534;

/// base (0755) / staging / libgetinfo_ctor.so (0644), and its marker.
fn fixture(base: &Path) -> (PathBuf, PathBuf) {
    fixture_marking(base, base)
}

/// Like [`fixture`], the marker written in `marks`.
fn fixture_marking(base: &Path, marks: &Path) -> (PathBuf, PathBuf) {
    chmod(base, 0o755);
    let staging = base.join("staging");
    std::fs::create_dir(&staging).unwrap();
    chmod(&staging, 0o755);
    let marker = marks.join("constructor-ran");
    let so = staging.join("libgetinfo_ctor.so");
    compile_marking(CTOR_PLUGIN, &so, &marker);
    chmod(&so, 0o644);
    (so, marker)
}

fn ctl(args: &[&str], env_dir: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_BasicAgentCtl"));
    cmd.args(args).env_remove("BASICAGENT_PLUGIN_DIR");
    if let Some(dir) = env_dir {
        cmd.env("BASICAGENT_PLUGIN_DIR", dir);
    }
    cmd.output().expect("BasicAgentCtl runs")
}

#[test]
fn a_user_owned_basicagent_plugin_dir_is_refused_and_never_run() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (so, marker) = fixture(tmp.path());
    let dir = tmp.path().join("nobodys-plugins");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    std::fs::copy(&so, dir.join("libgetinfo_ctor.so")).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = ctl(&["-c", "getinfo.ctor"], Some(&dir));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let reason = format!(
        "{}: directory {}: owned by uid 65534, not by root",
        dir.join("libgetinfo_ctor.so").display(),
        dir.display()
    );
    assert!(stdout.contains("3025"), "{stdout}");
    assert!(stdout.contains(&reason), "{stdout}");
    assert!(
        stderr.contains(&format!("refusing plugin {reason}")),
        "{stderr}"
    );
    assert!(!marker.exists(), "the constructor ran");
}

#[test]
fn list_over_an_attackers_directory_loads_nothing_and_gives_reasons() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (so, marker) = fixture(tmp.path());
    let dir = tmp.path().join("dropbox");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o777);
    // Dropped by nobody, as an attacker would; plus a 0666 copy and a
    // symlink, each under its own name.
    for name in ["libgetinfo_ctor.so", "libgetinfo_wide.so"] {
        let ok = Command::new("cp")
            .arg(&so)
            .arg(dir.join(name))
            .uid(NOBODY)
            .gid(NOBODY)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    chmod(&dir.join("libgetinfo_wide.so"), 0o666);
    std::os::unix::fs::symlink(&so, dir.join("libgetinfo_link.so")).unwrap();
    let list = |dir: &Path| ctl(&["-l", "-p", dir.to_str().unwrap()], None);

    let out = list(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(stdout.matches("REFUSED: ").count(), 3, "{stdout}");
    assert!(
        stdout.contains(&format!(
            "directory {}: group- or world-writable (mode 0777)",
            dir.display()
        )),
        "{stdout}"
    );
    assert!(!marker.exists(), "-l ran a refused file's constructor");

    // The directory closed: each file still gives its own reason.
    chmod(&dir, 0o755);
    let out = list(&dir);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for reason in [
        format!(
            "REFUSED: {}: owned by uid 65534, not by root",
            dir.join("libgetinfo_ctor.so").display()
        ),
        format!(
            "REFUSED: {}: a symbolic link (not followed)",
            dir.join("libgetinfo_link.so").display()
        ),
        format!(
            "REFUSED: {}: owned by uid 65534, not by root",
            dir.join("libgetinfo_wide.so").display()
        ),
    ] {
        assert!(stdout.contains(&reason), "{reason} in {stdout}");
    }
    assert!(!marker.exists(), "-l ran a refused file's constructor");

    // A good directory: listed, loaded (the constructor runs), exit 0.
    let good = tmp.path().join("good");
    std::fs::create_dir(&good).unwrap();
    chmod(&good, 0o755);
    std::fs::copy(&so, good.join("libgetinfo_ctor.so")).unwrap();
    let out = list(&good);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("getinfo.ctor  (getinfo_ctor 1.0.0)"),
        "{stdout}"
    );
    assert!(marker.exists(), "the good file was loaded");
}

#[test]
fn run_as_a_user_the_rule_is_root_or_me_and_not_world_writable() {
    if !is_root() {
        eprintln!("skipped: needs root to switch to nobody");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o755);
    let mine = tmp.path().join("nobodys");
    std::fs::create_dir(&mine).unwrap();
    std::os::unix::fs::chown(&mine, Some(NOBODY), Some(NOBODY)).unwrap();
    let (so, marker) = fixture_marking(tmp.path(), &mine);
    let dir = mine.join("plugins");
    let as_nobody = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_BasicAgentCtl"))
            .args(args)
            .env_remove("BASICAGENT_PLUGIN_DIR")
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .unwrap()
    };
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 002 && mkdir {d} && cp {so} {d}/libgetinfo_ctor.so",
            d = dir.display(),
            so = so.display()
        ))
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .unwrap()
        .success();
    assert!(ok);
    // nobody's own files, group-writable (umask 002): loaded for nobody.
    let out = as_nobody(&["-l", "-p", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("getinfo.ctor"), "{stdout}");
    assert!(marker.exists(), "loaded as nobody");
    std::fs::remove_file(&marker).unwrap();
    // World-writable: refused for nobody too, the constructor not run.
    chmod(&dir.join("libgetinfo_ctor.so"), 0o646);
    let out = as_nobody(&["-l", "-p", dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "REFUSED: {}: world-writable (mode 0646)",
            dir.join("libgetinfo_ctor.so").display()
        )),
        "{stdout}"
    );
    assert!(!marker.exists());
    // And nobody's directory is refused for root (another owner).
    chmod(&dir.join("libgetinfo_ctor.so"), 0o644);
    let out = ctl(&["-l", "-p", dir.to_str().unwrap()], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("owned by uid 65534, not by root"),
        "{stdout}"
    );
    assert!(!marker.exists());
}
