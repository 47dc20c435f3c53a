//! Compiles the C example plugin with the strictest warnings against the
//! header alone, and puts `libgetinfo_hello.so` beside the other plugins
//! (target/<profile>/), so the ctl tool and tests find it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let include = manifest.join("../../abi/include");
    let source = manifest.join("getinfo_hello.c");
    println!("cargo:rerun-if-changed={}", source.display());
    println!(
        "cargo:rerun-if-changed={}",
        include.join("basicagent_plugin.h").display()
    );
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let built = out.join("libgetinfo_hello.so");
    let status = Command::new(&cc)
        .args([
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-std=c11",
            "-O2",
            "-fPIC",
            "-shared",
        ])
        .arg("-I")
        .arg(&include)
        .arg("-o")
        .arg(&built)
        .arg(&source)
        .status()
        .expect("run the C compiler");
    assert!(status.success(), "compiling {} failed", source.display());
    // OUT_DIR is target/<profile>/build/<pkg>-<hash>/out: the profile
    // directory is three levels up.
    let profile_dir = out
        .ancestors()
        .nth(3)
        .expect("OUT_DIR has the cargo layout");
    std::fs::copy(&built, profile_dir.join("libgetinfo_hello.so"))
        .expect("copy libgetinfo_hello.so");
    println!("cargo:rustc-env=GETINFO_HELLO_SO={}", built.display());
}
