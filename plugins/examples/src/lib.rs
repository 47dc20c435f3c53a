//! Example plugins written against the C header alone; the build script
//! compiles `getinfo_hello.c` into `libgetinfo_hello.so` beside the Rust
//! plugins. This crate has no Rust code of its own.

/// Where the build script put the freshly compiled C plugin.
pub const GETINFO_HELLO_SO: &str = env!("GETINFO_HELLO_SO");
