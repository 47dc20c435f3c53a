//! Compiles `shim/descriptor_shim.c` into `libfuzz_descriptor.so` (for the
//! `plugin_descriptor` target) and passes its path as `FUZZ_DESCRIPTOR_SO`.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    let source = manifest.join("shim/descriptor_shim.c");
    let built = out.join("libfuzz_descriptor.so");
    println!("cargo:rerun-if-changed={}", source.display());
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    // No sanitizer or coverage flags: the shim is not what is fuzzed.
    let status = Command::new(cc)
        .args(["-O2", "-fPIC", "-shared", "-o"])
        .arg(&built)
        .arg(&source)
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!("compiling {} failed: {other:?}", source.display()),
    }
    println!("cargo:rustc-env=FUZZ_DESCRIPTOR_SO={}", built.display());
}
