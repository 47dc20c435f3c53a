//! `BasicAgent`: the host agent daemon. Parses flags and delegates to
//! [`basicagent_host::agent::run`].
#![deny(clippy::undocumented_unsafe_blocks)]

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "Usage: BasicAgent [-c CONFIG] [-L LOGFILE] [-P PIDFILE] [-f] [-l LEVEL]

Dials out to the control server over TLS, registers, and answers requests
(see docs/protocol.md). Without -f it detaches and reports start-up errors
before exiting. SIGTERM/SIGINT stop it, SIGHUP reopens the log and reloads
the configuration and changed plugins, SIGUSR1 reopens the log.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Hidden: the helper process of an isolated plugin (host/src/io/isolate.rs).
    if args.first().map(String::as_str) == Some("--plugin-host") {
        let method = args.get(1).cloned().unwrap_or_default();
        let config = (args.get(2).map(String::as_str) == Some("-c"))
            .then(|| args.get(3).map(PathBuf::from))
            .flatten();
        env_logger::Builder::new()
            .filter_level(log::LevelFilter::Warn)
            .init();
        let code = basicagent_host::isolate::helper_main(&method, config.as_deref());
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let mut opts = getopts::Options::new();
    opts.optopt(
        "c",
        "config",
        "configuration file (default /etc/basicagent/agent.toml if present)",
        "CONFIG",
    );
    opts.optopt("L", "log", "log file (default: stderr)", "LOGFILE");
    opts.optopt("P", "pidfile", "pid file, locked while running", "PIDFILE");
    opts.optflag("f", "foreground", "stay in the foreground");
    opts.optopt(
        "l",
        "level",
        "log level: error, warn, info (default), debug, trace",
        "LEVEL",
    );
    opts.optflag("h", "help", "print this help");
    opts.optflag("V", "version", "print the version");
    let m = match opts.parse(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("BasicAgent: {e}\n\n{}", opts.usage(USAGE));
            return ExitCode::from(2);
        }
    };
    if m.opt_present("h") {
        println!("{}", opts.usage(USAGE));
        return ExitCode::SUCCESS;
    }
    if m.opt_present("V") {
        println!("BasicAgent {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    if let Some(extra) = m.free.first() {
        eprintln!(
            "BasicAgent: unexpected argument {extra:?}\n\n{}",
            opts.usage(USAGE)
        );
        return ExitCode::from(2);
    }
    let level = match m
        .opt_str("l")
        .as_deref()
        .unwrap_or("info")
        .parse::<log::LevelFilter>()
    {
        Ok(l) => l,
        Err(_) => {
            eprintln!("BasicAgent: -l takes error, warn, info, debug or trace");
            return ExitCode::from(2);
        }
    };
    let options = basicagent_host::agent::Options {
        config: m.opt_str("c").map(PathBuf::from),
        log_file: m.opt_str("L").map(PathBuf::from),
        pid_file: m.opt_str("P").map(PathBuf::from),
        foreground: m.opt_present("f"),
        level,
    };
    match basicagent_host::agent::run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("BasicAgent: {e}");
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}
