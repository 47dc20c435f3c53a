//! What every crate's integration tests share, in one place (a
//! dev-dependency only; nothing here is shipped): the PKI made with rcgen
//! ([`pki`]), the real `BasicAgentServer` and `BasicAgent` as child
//! processes ([`server`], [`agent`]), the paths of what `cargo build`
//! left in `target/debug` ([`bins`]), polling with a generous bound
//! ([`wait`]), loopback addresses of a test's own ([`net`]), a minimal
//! TLS control server whose every byte the test decides ([`mini`]), a
//! fake agent speaking lines over rustls ([`fake`]) and calls into a
//! dlopened plugin ([`plugin`]).
//!
//! Key design decisions:
//! - Test code: it panics with a message naming what failed (and the
//!   child's log where there is one) instead of returning errors.
//! - No wall-clock assertion: every wait polls a condition up to a bound
//!   ([`wait::WAIT`], a minute) far above what a loaded machine needs;
//!   the bound only turns a hang into a failure.
//! - Nothing leaves the machine: servers listen on 127.x.y.z, agent
//!   configs resolve the server name through a private hosts file and
//!   either turn DNS off (`server.dns = false`) or ask a local server
//!   that answers NXDOMAIN.
//! - Binaries and plugins are found beside the running test executable
//!   (`target/<profile>/deps/..`), so every crate's tests use what the
//!   workspace build made, never an installed copy.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod agent;
pub mod bins;
pub mod cplugin;
pub mod fake;
pub mod files;
pub mod mini;
pub mod net;
pub mod ns;
pub mod pki;
pub mod plugin;
pub mod server;
pub mod wait;

pub use agent::{agent_bin, pgrep, Agent, AgentConfig, Dns};
pub use bins::{bin, bin_dir, built_plugin, script, workspace};
pub use files::chmod;
pub use net::{
    alive, free_addr, free_addr_on, free_port, is_root, kill, nxdomain_server, unique_ip,
};
pub use pki::{make_ca, Pki, CLIENT_HOST_ID, NAME};
pub use server::{server_bin, stdout_lines, Server};
pub use wait::{wait_for, wait_until, WAIT};
