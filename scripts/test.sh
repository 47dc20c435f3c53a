#!/usr/bin/env bash
# The test suite: builds every crate (plugins are cdylibs the tests dlopen
# from target/debug), then runs every test. Run as root for the identity
# and process tests (CI does). Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --all-targets
cargo test --workspace "$@"
