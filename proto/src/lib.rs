//! BasicAgent wire types: the one place that knows JSON.
//!
//! Frames are JSON objects, one per `\n`-terminated line. This crate turns
//! bytes into typed messages and typed messages into bytes for both ends
//! (the agent and any server); it does no I/O and never panics on input
//! (it is fuzzed). Key decision: decoders read a frame into borrowed raw
//! fields and check each one by name, so errors say which field is wrong
//! and unknown fields are always tolerated.
//!
//! Map: [`frame`] splits bytes into lines; [`incoming`] says what a line
//! is; [`request`], [`response`], [`init`], [`task`] read and write each
//! message; [`handshake`] is the server's side of init (accept, redirect
//! or reject by policy); [`server_list`] parses redirect targets;
//! [`retcode`] holds the result codes (the one table); [`builtins`] the
//! agent's built-in methods as types (it re-exports serde_json's `Value`,
//! `Map` and `RawValue`, handed over as parts of those types);
//! [`schedule`], [`quarantine`] and [`audit`] hold the agent's
//! `schedule.*` types, its quarantine entries and audit health.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod audit;
pub mod builtins;
pub mod envelope;
pub mod frame;
pub mod handshake;
pub mod incoming;
pub mod init;
pub mod quarantine;
pub mod request;
pub mod response;
pub mod retcode;
pub mod schedule;
pub mod server_list;
pub mod task;

pub use builtins::{
    AgentInfo, MarkerInfo, PluginSettings, Released, SyncBashPeek, TaskCancelling, TaskInfo,
    TaskList, TaskMarker, TaskStarted,
};
pub use envelope::MessageError;
pub use frame::{FrameDecoder, FrameError, FrameTooLong, DEFAULT_MAX_FRAME};
pub use handshake::{answer_init, InitContext, InitPolicy, Verdict};
pub use incoming::{Incoming, IncomingError, IncomingErrorKind};
pub use init::{redirect_json, Init, InitReply};
pub use request::{ping_json, Request, RequestError};
pub use response::Response;
pub use retcode::Retcode;
pub use server_list::{
    parse_server_addr, parse_server_list, ServerAddr, ServerAddrError, ServerList,
};
pub use task::{ScheduleRun, TaskAck, TaskDone};
