//! Where the workspace build put things: the binaries and plugins of
//! `target/<profile>`, found from the running test executable, and the
//! workspace's own folders (scripts/).

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The workspace root (the folder holding `Cargo.lock`).
pub fn workspace() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .unwrap_or_else(|| panic!("{} has no parent", here.display()))
        .to_owned()
}

/// `scripts/NAME` of the workspace.
pub fn script(name: &str) -> PathBuf {
    workspace().join("scripts").join(name)
}

/// `target/<profile>`: the folder of the running test executable, or its
/// parent when that is `deps` (integration tests live in `deps`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().expect("the test executable has a folder");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_owned()
    } else {
        dir.to_owned()
    }
}

/// `target/<profile>/NAME`, which must exist (a binary or plugin of the
/// workspace build).
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} missing: run `cargo build --workspace` first (scripts/test.sh does)",
        p.display()
    );
    p
}

/// Panics unless every one of `names` is in [`bin_dir`]; returns it.
pub fn bin_dir_with(names: &[&str]) -> PathBuf {
    for name in names {
        bin(name);
    }
    bin_dir()
}

/// The freshest `lib{lib_stem}.so` of `target/<profile>/deps` and
/// `target/<profile>`: cargo rebuilds the one in `deps` for a crate's
/// own tests (its cdylib and rlib come from one rustc run) while the
/// other may hold an older copy from the last `cargo build`.
pub fn built_plugin(lib_stem: &str) -> PathBuf {
    let file = format!("lib{lib_stem}.so");
    let dir = bin_dir();
    let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
    [dir.join("deps"), dir.clone()]
        .into_iter()
        .map(|d| d.join(&file))
        .filter_map(|p| modified(&p).map(|t| (t, p)))
        .max_by_key(|(t, _): &(SystemTime, PathBuf)| *t)
        .map(|(_, p)| p)
        .unwrap_or_else(|| panic!("{file} not found in {} or its deps/", dir.display()))
}
