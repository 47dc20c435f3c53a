//! BasicAgent wire types: the one place that knows JSON.
//!
//! Frames are JSON objects, one per `\n`-terminated line. This crate turns
//! bytes into typed requests and typed responses into bytes; it does no
//! I/O and never panics on input (it is fuzzed).

pub mod response;
pub mod retcode;
pub mod request;

pub use request::{Request, RequestError};
pub use response::Response;
pub use retcode::Retcode;
