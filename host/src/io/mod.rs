//! Everything of the daemon that touches the OS: the [`reactor`] (one mio
//! `Poll` driving the core), the [`resolve`]r thread, the local control
//! socket ([`ctlsock`]), the [`upstream`] TCP socket, isolated plugin helpers ([`isolate`]), the
//! process edge ([`process`]: detach, pid file), the [`logfile`] and
//! [`memory`] habits.

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
