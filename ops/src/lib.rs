//! Operations tests only (`tests/ops.rs`): install.sh, the init script, the Debian package, hot-added plugins and log rotation against the built workspace.
#![deny(clippy::undocumented_unsafe_blocks)]
