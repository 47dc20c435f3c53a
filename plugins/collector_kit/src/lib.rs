//! What every collector plugin shares: the request envelope and its
//! getopt-style `args` turned into typed options, with the `3020` and
//! `3021` answers; the collectors' one error type and their call glue.
//!
//! Key design decision: the kit parses, the plugin decides. Each plugin
//! keeps its own `getopts::Options`, its checks of option values and its
//! usage text; the kit owns only what must be the same everywhere: a
//! request is a JSON object, `"args"` is absent, `null` or a string,
//! words split like a shell's, operands are refused, and every refused
//! `args` is answered `3021 "REASON; usage: USAGE"`. It is an rlib linked
//! into every plugin, so it exports no `#[no_mangle]` symbol.
//!
//! Every collector fails with the one [`CollectorError`] (its retcode and
//! text fixed here) and completes through [`complete`]; the tests that
//! load a built plugin live in basicagent-testsupport (`plugin`).
//!
//! A plugin's request parsing, whole:
//!
//! ```
//! use basicagent_collector_kit::{parse_opts, parse_request, Refusal};
//!
//! const USAGE: &str = "args: [-f] (also the flags)";
//!
//! fn with_flags(request: &[u8]) -> Result<bool, Refusal> {
//!     parse_request(request, USAGE, |words| {
//!         let mut opts = getopts::Options::new();
//!         opts.optflagmulti("f", "", "also the flags");
//!         Ok::<_, basicagent_collector_kit::ArgsError>(parse_opts(&opts, words)?.opt_present("f"))
//!     })
//! }
//!
//! assert_eq!(with_flags(br#"{"method":"getinfo.x","args":"-f"}"#).ok(), Some(true));
//! let refused = with_flags(br#"{"args":"-q"}"#).unwrap_err();
//! assert_eq!(refused.retcode(), 3021);
//! assert_eq!(refused.to_string(), "Unrecognized option: 'q'; usage: args: [-f] (also the flags)");
//! ```
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod args;
pub mod error;
pub mod request;

pub use args::{parse_opts, split_args, ArgsError};
pub use error::{complete, to_data, CollectorError};
pub use request::{no_args, parse_request, request_args, Refusal, RequestError};
