//! `BasicAgentCtl`: loads one plugin, calls it once, prints the response
//! object the daemon would send.
//!
//! `main` parses flags and delegates to [`run`]. The ctl tool uses the very
//! same loader and ABI as the daemon, so what it prints is what a server
//! would receive (without the `id`).

/// `println!` that treats a closed stdout (`BasicAgentCtl -l | head`) as
/// the end of the output, not as a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod audit;
mod run;
mod sign;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "Usage: BasicAgentCtl -c METHOD [-a ARGS] [-j JSON] [-p PLUGIN_DIR] [-C CONFIG]
       BasicAgentCtl -l [-p PLUGIN_DIR] [-C CONFIG]
       BasicAgentCtl plugin keygen|sign|verify ... (BasicAgentCtl plugin -h)
       BasicAgentCtl audit verify [-C CONFIG] [FILE...]

Loads the plugin serving METHOD (getinfo.users -> libgetinfo_users.so) and
prints its response as JSON: {\"resp\",\"retcode\",\"message\",\"data\"}.
Exit status: 0 success, 1 the call failed (message on stderr too), 2 usage.

Plugin directory: -p, else $BASICAGENT_PLUGIN_DIR, else
/usr/lib/basicagent/plugins if it exists, else this program's directory.
Plugin signatures are checked as the daemon checks them, by [agent]
trusted_keys and require_signature of CONFIG (default
/etc/basicagent/agent.toml, if it exists).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("plugin") {
        let mut rest = args[1..].to_vec();
        // `plugin verify -C FILE ...`: the daemon's config for trusted_keys.
        let mut config = None;
        if let Some(i) = rest.iter().position(|a| a == "-C") {
            if i + 1 < rest.len() {
                config = Some(PathBuf::from(rest.remove(i + 1)));
                rest.remove(i);
            }
        }
        return sign::main(&rest, || sign::policy_from_config(config.as_deref()));
    }
    if args.first().map(String::as_str) == Some("audit") {
        return audit::main(&args[1..]);
    }
    let mut opts = getopts::Options::new();
    opts.optopt("c", "call", "method to call, e.g. getinfo.kernel", "METHOD");
    opts.optopt(
        "a",
        "args",
        "getopt-style arguments for getinfo.* (the request's \"args\")",
        "ARGS",
    );
    opts.optopt(
        "j",
        "json",
        "a JSON object of parameters merged into the request",
        "JSON",
    );
    opts.optopt("p", "plugin-dir", "plugin directory", "DIR");
    opts.optopt(
        "C",
        "config",
        "the daemon's config, for trusted_keys and require_signature",
        "FILE",
    );
    opts.optopt(
        "t",
        "wait",
        "give up after SECS seconds without an answer (default: wait)",
        "SECS",
    );
    opts.optflag(
        "l",
        "list",
        "list the plugins found, with methods, versions and usage",
    );
    opts.optflagmulti(
        "v",
        "verbose",
        "more log output on stderr (repeat for more)",
    );
    opts.optflag("h", "help", "print this help");
    opts.optflag("V", "version", "print the version");
    let usage = || opts.usage(USAGE);
    let m = match opts.parse(&args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("BasicAgentCtl: {e}\n\n{}", usage());
            return ExitCode::from(2);
        }
    };
    if m.opt_present("h") {
        out!("{}", usage());
        return ExitCode::SUCCESS;
    }
    if m.opt_present("V") {
        out!("BasicAgentCtl {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let level = match m.opt_count("v") {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        2 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    env_logger::Builder::new()
        .filter_level(level)
        .parse_env("BASICAGENT_LOG")
        .init();
    let dir = basicagent_abi::plugin_dir(m.opt_str("p").map(PathBuf::from).as_deref());
    if !m.free.is_empty() {
        eprintln!(
            "BasicAgentCtl: unexpected argument {:?}\n\n{}",
            m.free[0],
            usage()
        );
        return ExitCode::from(2);
    }
    let policy = match sign::policy_from_config(m.opt_str("C").map(PathBuf::from).as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("BasicAgentCtl: {e}");
            return ExitCode::from(2);
        }
    };
    if m.opt_present("l") {
        return run::list(&dir, policy);
    }
    let Some(method) = m.opt_str("c") else {
        eprintln!("BasicAgentCtl: -c METHOD or -l is required\n\n{}", usage());
        return ExitCode::from(2);
    };
    let wait = match m.opt_str("t").map(|t| t.parse::<f64>()) {
        None => None,
        Some(Ok(secs)) if secs > 0.0 && secs.is_finite() => {
            Some(std::time::Duration::from_secs_f64(secs))
        }
        Some(_) => {
            eprintln!(
                "BasicAgentCtl: -t takes a positive number of seconds\n\n{}",
                usage()
            );
            return ExitCode::from(2);
        }
    };
    match run::build_request(&method, m.opt_str("a"), m.opt_str("j")) {
        Ok(request) => run::call(&dir, &method, &request, wait, policy),
        Err(e) => {
            eprintln!("BasicAgentCtl: {e}");
            ExitCode::from(2)
        }
    }
}
