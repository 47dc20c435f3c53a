//! `BasicAgentCtl audit verify [-C CONFIG] [FILE...]`: checks the audit
//! log's hash chain (the daemon's rule, `basicagent_auditchain::verify`).
//!
//! Without files: the configured log (`[audit] path`, else
//! `agent.state_dir/audit.log` of CONFIG, default
//! `/etc/basicagent/agent.toml`) and its rotated predecessors, oldest
//! first. Exit 0: the chain holds (line count printed); 1: the first line
//! that was edited, removed or reordered, as FILE:LINE; 2: usage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use basicagent_auditchain as audit;

/// Where the daemon looks when no `-C` is given.
const DEFAULT_CONFIG: &str = "/etc/basicagent/agent.toml";

/// The configured log and `keep` from the daemon's config: `[audit] path`
/// (else `[agent] state_dir`/audit.log, state_dir default
/// `/var/lib/basicagent`) and `[audit] keep` (default 10). A missing
/// default config means the defaults.
fn configured(config: Option<&Path>) -> Result<(PathBuf, u32), String> {
    let (path, must) = match config {
        Some(p) => (p, true),
        None => (Path::new(DEFAULT_CONFIG), false),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if !must && e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let v: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let get = |table: &str, key: &str| v.get(table).and_then(|t| t.get(key)).cloned();
    let log = match get("audit", "path") {
        Some(toml::Value::String(p)) => PathBuf::from(p),
        Some(_) => return Err(format!("{}: audit.path: not a string", path.display())),
        None => {
            let state = match get("agent", "state_dir") {
                Some(toml::Value::String(s)) => PathBuf::from(s),
                Some(_) => {
                    return Err(format!("{}: agent.state_dir: not a string", path.display()))
                }
                None => PathBuf::from("/var/lib/basicagent"),
            };
            state.join("audit.log")
        }
    };
    let keep = match get("audit", "keep") {
        Some(toml::Value::Integer(k)) if (1..=1000).contains(&k) => k as u32,
        Some(_) => {
            return Err(format!(
                "{}: audit.keep: must be between 1 and 1000",
                path.display()
            ))
        }
        None => 10,
    };
    Ok((log, keep))
}

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
        match configured(m.opt_str("C").map(PathBuf::from).as_deref()) {
            Ok((log, keep)) => audit::default_files(&log, keep),
            Err(e) => {
                eprintln!("BasicAgentCtl audit: {e}");
                return ExitCode::from(2);
            }
        }
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
