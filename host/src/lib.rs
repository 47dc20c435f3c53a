//! The BasicAgent daemon: a sans-IO session state machine ([`session`])
//! driven by a thin single-threaded mio reactor ([`reactor`]) that hands
//! requests to the [`dispatch`]er and never blocks on a plugin, a child
//! process or DNS ([`resolve`] runs on its own thread). Configuration,
//! host identity, TLS and process plumbing are separate modules, each
//! unit-tested on its own; `main.rs` only parses flags.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod agent;
pub mod audit;
pub mod config;
pub mod crashmark;
pub mod ctlsock;
pub mod daemon;
pub mod deadline;
pub mod dispatch;
pub mod hostid;
pub mod isolate;
pub mod quarantine;
pub mod reactor;
pub mod resolve;
pub mod schedule;
pub mod session;
pub mod tasks;
pub mod tls;
