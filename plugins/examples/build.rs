//! Compiles the C example plugins with the strictest warnings against the
//! header alone, and puts `libgetinfo_hello.so` and `libgetinfo_loadavg.so`
//! beside the other plugins (target/<profile>/), so the ctl tool and tests
//! find them.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let include = manifest.join("../../abi/include");
    println!(
        "cargo:rerun-if-changed={}",
        include.join("basicagent_plugin.h").display()
    );
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    // OUT_DIR is target/<profile>/build/<pkg>-<hash>/out: the profile
    // directory is three levels up.
    let profile_dir = out
        .ancestors()
        .nth(3)
        .expect("OUT_DIR has the cargo layout")
        .to_owned();
    for (stem, env) in [
        ("getinfo_hello", "GETINFO_HELLO_SO"),
        ("getinfo_loadavg", "GETINFO_LOADAVG_SO"),
    ] {
        let source = manifest.join(format!("{stem}.c"));
        println!("cargo:rerun-if-changed={}", source.display());
        let file = format!("lib{stem}.so");
        let built = out.join(&file);
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
        std::fs::copy(&built, profile_dir.join(&file)).expect("copy the built plugin");
        println!("cargo:rustc-env={env}={}", built.display());
    }
}
