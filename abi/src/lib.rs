//! The BasicAgent plugin contract (ABI v1) and the only stable boundary of
//! the project.
//!
//! The contract is the C header `include/basicagent_plugin.h`; [`ffi`] is
//! its hand-written `#[repr(C)]` mirror (not abi_stable, which is
//! Rust-to-Rust only and cannot describe a plugin written in C). Plugins
//! use [`sdk`] and [`export_plugin!`]; hosts (the daemon and the ctl tool)
//! use [`loader`] and [`host`]. Bytes cross as (pointer, length) and are
//! copied by the receiver; calls are identified by tokens, not pointers.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod args;
pub mod ffi;
pub mod host;
pub mod loader;
mod params;
pub mod retcode;
pub mod sdk;
pub mod signature;

pub use host::{pending_calls, Completion, HostSettings};
pub use loader::{
    file_name_for, plugin_dir, split_method, LoadError, Plugin, PluginInfo, PluginRegistry,
};
pub use sdk::{Call, Host, InitError, PluginSpec};

/// The path of the C header, for build scripts and tests.
pub const HEADER_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/include/basicagent_plugin.h");
