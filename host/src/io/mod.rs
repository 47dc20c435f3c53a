//! Everything of the daemon that touches the OS: the [`reactor`] (one mio
//! `Poll` driving the core), the [`resolve`]r thread, the local control
//! socket ([`ctlsock`]), the [`upstream`] TCP socket, isolated plugin helpers ([`isolate`]), the
//! process edge ([`process`]: detach, pid file), the [`logfile`] and
//! [`memory`] habits.
//!
//! Must not: decide anything a server can see (no JSON, no retcodes, no
//! timers of its own: every deadline is the core's `poll_timeout`), touch
//! the core from a thread other than the loop's, or block the loop (disk
//! writes go to the task-file thread, DNS to the resolver thread).
//! Exceptions kept from before: the control socket's refusal line for a
//! request over `max_frame` (`ctlsock`), written with `proto::Response`.

pub mod ctlsock;
pub mod isolate;
pub mod logfile;
pub mod mailbox;
pub mod memory;
pub mod process;
pub mod reactor;
pub mod resolve;
pub mod signals;
pub mod taskfiles;
pub mod upstream;
