//! End-to-end tests only (`tests/e2e.rs`, one test binary): install.sh, the init script, the Debian package, hot-added plugins and log rotation against the built workspace.
#![deny(clippy::undocumented_unsafe_blocks)]
