//! `BasicAgentCtl`: calls one plugin once and prints the response object
//! the daemon would send: through the running daemon's control socket
//! ([`client`]) when it answers, else (or with `--local`) by loading the
//! plugin itself.
//!
//! `main` parses flags and delegates to [`run`]. The ctl tool uses the very
//! same loader and ABI as the daemon, so what it prints is what a server
//! would receive (without the `id`).
#![deny(clippy::undocumented_unsafe_blocks)]

/// `println!` that treats a closed stdout (`BasicAgentCtl -l | head`) as
/// the end of the output, not as a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod audit;
mod client;
mod run;
mod sign;

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "Usage: BasicAgentCtl -c METHOD [-a ARGS] [-j JSON] [--local] [-p PLUGIN_DIR] [-C CONFIG] [-S SOCKET]
       BasicAgentCtl -l [--local] [-p PLUGIN_DIR] [-C CONFIG] [-S SOCKET]
       BasicAgentCtl plugin release NAME [-S SOCKET]
       BasicAgentCtl plugin keygen|sign|verify ... (BasicAgentCtl plugin -h)
       BasicAgentCtl audit verify [-C CONFIG] [FILE...]

Calls the plugin serving METHOD (getinfo.users -> libgetinfo_users.so) and
prints its response as JSON: {\"resp\",\"retcode\",\"message\",\"data\"}.
Exit status: 0 success, 1 the call failed (message on stderr too), 2 usage.

When the daemon runs, the request goes through its root-only control
socket (-S, else $BASICAGENT_CTL_SOCKET, else agent.ctl_socket of CONFIG,
else /run/basicagent/ctl.sock), so the answer reflects the daemon's
plugins, quarantine and limits; -l adds the daemon's quarantined plugins.
--local, -p or $BASICAGENT_PLUGIN_DIR load the plugin in this process.
`plugin release NAME` lifts the daemon's quarantine of plugin NAME.

Plugin directory: -p, else $BASICAGENT_PLUGIN_DIR, else
/usr/lib/basicagent/plugins if it exists, else this program's directory.
Plugin signatures are checked as the daemon checks them, by [agent]
trusted_keys and require_signature of CONFIG (default
/etc/basicagent/agent.toml, if it exists).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("plugin")
        && args.get(1).map(String::as_str) == Some("release")
    {
        return release(&args[2..]);
    }
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
        "",
        "local",
        "load the plugin in this process even when the daemon runs",
    );
    opts.optopt("S", "socket", "the daemon's control socket", "SOCKET");
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
    let config = m.opt_str("C").map(PathBuf::from);
    // Only a local load checks signatures itself (the daemon applies its
    // own policy): read the config's keys only then.
    let policy = || {
        sign::policy_from_config(config.as_deref()).map_err(|e| {
            eprintln!("BasicAgentCtl: {e}");
            ExitCode::from(2)
        })
    };
    let socket = (!m.opt_present("local")
        && !m.opt_present("p")
        && std::env::var_os("BASICAGENT_PLUGIN_DIR").is_none())
    .then(|| client::socket_path(m.opt_str("S").map(PathBuf::from), config.as_deref()));
    if m.opt_present("l") {
        if let Some(socket) = &socket {
            match client::ask(socket, br#"{"method":"agent.info"}"#, None) {
                Ok(None) => {}
                Ok(Some(line)) => {
                    let info: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                    let data = &info["data"];
                    let dir = data["plugin_dir"]
                        .as_str()
                        .map_or_else(|| dir.clone(), PathBuf::from);
                    return match policy() {
                        Ok(p) => run::list(&dir, p, Some(&data["quarantined"])),
                        Err(code) => code,
                    };
                }
                Err(e) => {
                    eprintln!("BasicAgentCtl: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        return match policy() {
            Ok(p) => run::list(&dir, p, None),
            Err(code) => code,
        };
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
        Ok(request) => {
            if let Some(socket) = &socket {
                match client::ask(socket, &request, wait) {
                    Ok(None) => {}
                    Ok(Some(line)) => return run::print_line(&line),
                    Err(client::ClientError::Timeout) => {
                        // As a local call prints it: a 3023 response.
                        return run::print_response(basicagent_proto::Response::failed(
                            None,
                            basicagent_proto::Retcode::TIMEOUT,
                            "Timeout: no answer from the daemon within the -t limit",
                        ));
                    }
                    Err(e) => {
                        eprintln!("BasicAgentCtl: {e}");
                        return ExitCode::from(1);
                    }
                }
            }
            match policy() {
                Ok(p) => run::call(&dir, &method, &request, wait, p),
                Err(code) => code,
            }
        }
        Err(e) => {
            eprintln!("BasicAgentCtl: {e}");
            ExitCode::from(2)
        }
    }
}

/// `plugin release NAME [-S SOCKET]`: asks the running daemon to lift the
/// quarantine of plugin NAME (`fixture_misbehave` or `fixture.misbehave`).
fn release(args: &[String]) -> ExitCode {
    let mut socket = None;
    let mut name = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-S" => socket = it.next().map(PathBuf::from),
            _ if name.is_none() && !a.starts_with('-') => name = Some(a.clone()),
            _ => {
                eprintln!("BasicAgentCtl: usage: BasicAgentCtl plugin release NAME [-S SOCKET]");
                return ExitCode::from(2);
            }
        }
    }
    let Some(name) = name else {
        eprintln!("BasicAgentCtl: usage: BasicAgentCtl plugin release NAME [-S SOCKET]");
        return ExitCode::from(2);
    };
    let path = client::socket_path(socket, None);
    let request = serde_json::json!({"method": "agent.release", "plugin": name}).to_string();
    match client::ask(&path, request.as_bytes(), None) {
        Ok(Some(line)) => run::print_line(&line),
        Ok(None) => {
            eprintln!(
                "BasicAgentCtl: {}: no daemon answers there (a quarantine lives in the running daemon)",
                path.display()
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("BasicAgentCtl: {e}");
            ExitCode::from(1)
        }
    }
}
