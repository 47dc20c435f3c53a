//! Example plugins written against the C header alone; the build script
//! compiles `getinfo_hello.c` and `getinfo_loadavg.c` into
//! `libgetinfo_hello.so` and `libgetinfo_loadavg.so` beside the Rust
//! plugins. This crate has no Rust code of its own.
#![deny(clippy::undocumented_unsafe_blocks)]

/// Where the build script put the freshly compiled C plugin.
pub const GETINFO_HELLO_SO: &str = env!("GETINFO_HELLO_SO");
/// The ABI 1.1 example (getopt on `args_argv`, `param_*`).
pub const GETINFO_LOADAVG_SO: &str = env!("GETINFO_LOADAVG_SO");
