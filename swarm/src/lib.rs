//! BasicAgentSwarm: one process that plays N BasicAgent agents against a control server, to measure the server.
//!
//! Key decision: tokio on one thread (a current-thread runtime by default)
//! with tokio-rustls, one task per simulated agent, so 19 000 idle sessions
//! cost one core at most and a few KiB each. TLS is the agent's own client
//! configuration ([`basicagent_host::tls::client_config`]) and the wire is
//! `basicagent-proto`, so the server sees what real agents send. Map:
//! [`options`] (flags), [`ident`] (host ids and names), [`canned`] (the
//! answers), [`certs`] (per-agent client certificates), [`agent`] (one session), [`run`] (the whole run), [`stats`]
//! (counters and the report), [`sys`] (limits and /proc).
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod agent;
pub mod canned;
pub mod certs;
pub mod ident;
pub mod options;
pub mod run;
pub mod stats;
pub mod sys;
