//! The BasicAgent daemon: a sans-IO core that decides ([`core`]: the
//! session with its TLS and framing, the dispatcher, the task table) and
//! a thin io side that touches the OS ([`io`]: a single-threaded mio
//! reactor, the resolver thread, plugin completions, task files, the
//! process edge). The reactor never blocks on a plugin, a child process,
//! DNS or a disk write. Configuration, host identity and TLS set-up are
//! separate modules, each unit-tested on its own; `main.rs` only parses
//! flags.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod agent;
pub mod audit;
pub mod config;
pub mod core;
pub mod crashmark;
pub mod deadline;
pub mod hostid;
pub mod io;
pub mod quarantine;
pub mod schedule;
pub mod tls;

// The modules' earlier paths, kept for the integration tests and benches
// that import them.
pub use crate::core::{dispatch, session};
pub use crate::io::{ctlsock, isolate, reactor, resolve};

/// The task table and its files (now in [`core::tasks`] and
/// [`io::taskfiles`]).
pub mod tasks {
    pub use crate::core::tasks::*;
    pub use crate::io::taskfiles::{open, prepare_dir, unix_now, write_result, DirError};
}

/// The process edge, the log file and memory habits (now in [`io`]).
pub mod daemon {
    pub use crate::io::logfile::*;
    pub use crate::io::memory::*;
    pub use crate::io::process::*;
}
