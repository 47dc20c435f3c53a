//! `BasicAgentCtl audit verify [-C CONFIG] [FILE...]`: checks the audit
//! log's hash chain (the daemon's rule, `basicagent_host::audit::verify`).
//!
//! Without files: the configured log (`[audit] path`, else
//! `agent.state_dir/audit.log` of CONFIG, default
//! `/etc/basicagent/agent.toml`) and its rotated predecessors, oldest
//! first. Exit 0: the chain holds (line count printed); 1: the first line
//! that was edited, removed or reordered, as FILE:LINE; 2: usage.

use std::path::PathBuf;
use std::process::ExitCode;

use basicagent_host::audit;
use basicagent_host::config::Config;

const USAGE: &str = "Usage: BasicAgentCtl audit verify [-C CONFIG] [FILE...]

Verifies the audit log's hash chain, FILEs oldest first; without FILEs the
configured log and its rotated files (PATH.KEEP ... PATH.1, PATH).
Exit status: 0 the chain holds, 1 a line was edited, removed or reordered
(FILE:LINE and what broke), 2 usage or configuration error.";

/// Runs `audit ARGS...`.
pub fn main(args: &[String]) -> ExitCode {
    let mut opts = getopts::Options::new();
    opts.optopt("C", "config", "the daemon's config", "FILE");
    opts.optflag("h", "help", "print this help");
    let m = match opts.parse(args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("BasicAgentCtl audit: {e}\n\n{}", opts.usage(USAGE));
            return ExitCode::from(2);
        }
    };
    if m.opt_present("h") {
        out!("{}", opts.usage(USAGE));
        return ExitCode::SUCCESS;
    }
    if m.free.first().map(String::as_str) != Some("verify") {
        eprintln!(
            "BasicAgentCtl audit: expected \"verify\"\n\n{}",
            opts.usage(USAGE)
        );
        return ExitCode::from(2);
    }
    let files: Vec<PathBuf> = if m.free.len() > 1 {
        m.free[1..].iter().map(PathBuf::from).collect()
    } else {
        let config = match Config::load(m.opt_str("C").map(PathBuf::from).as_deref()) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("BasicAgentCtl audit: {e}");
                return ExitCode::from(2);
            }
        };
        audit::default_files(&config.audit_path(), config.audit.keep)
    };
    match audit::verify(&files) {
        Ok(ok) => {
            for n in &ok.notes {
                out!("note: {n}");
            }
            out!(
                "OK: {} line(s) in {} file(s); last hash {}",
                ok.lines,
                ok.files,
                ok.last
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            out!("BROKEN: {e}");
            eprintln!("BasicAgentCtl audit verify: {e}");
            ExitCode::from(1)
        }
    }
}
