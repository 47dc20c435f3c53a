//! The ctl tool's work: build the request, call the plugin, wait, print.

use std::path::Path;
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use basicagent_abi::signature::SignaturePolicy;
use basicagent_abi::{Completion, HostSettings, Plugin, PluginRegistry};
use basicagent_proto::{Response, Retcode};
use serde_json::{Map, Value};

/// A request the ctl tool could not build from its flags.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("-j must be a JSON object: {0}")]
    BadJson(String),
}

/// `{"method": METHOD, "args": ARGS, ...JSON}`: `-j` keys are merged in;
/// `method` always comes from `-c`.
pub fn build_request(
    method: &str,
    args: Option<String>,
    json: Option<String>,
) -> Result<Vec<u8>, RequestError> {
    let mut obj = Map::new();
    if let Some(text) = json {
        match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => obj = map,
            Ok(_) => return Err(RequestError::BadJson("not an object".to_owned())),
            Err(e) => return Err(RequestError::BadJson(e.to_string())),
        }
    }
    if let Some(args) = args {
        obj.insert("args".to_owned(), Value::String(args));
    }
    obj.insert("method".to_owned(), Value::String(method.to_owned()));
    Ok(serde_json::to_vec(&Value::Object(obj)).unwrap_or_default())
}

/// Prints an answer line from the daemon as a local answer is printed.
pub fn print_line(line: &str) -> ExitCode {
    match Response::parse(line.as_bytes()) {
        Ok(r) => print_response(r),
        Err(e) => {
            eprintln!("BasicAgentCtl: the daemon's answer is not a response: {e}");
            ExitCode::from(1)
        }
    }
}

/// Prints a response as the tool's output (stdout JSON, stderr line on a
/// failure) and gives the exit status.
pub fn print_response(mut response: Response) -> ExitCode {
    response.omit_id = true;
    out!("{}", response.to_json());
    if response.retcode.is_success() {
        ExitCode::SUCCESS
    } else {
        eprintln!("BasicAgentCtl: {} {}", response.retcode.0, response.message);
        ExitCode::from(1)
    }
}

/// Loads the plugin for `method`, calls it, waits for its completion and
/// prints the response. SIGINT/SIGTERM cancel the call (the plugin then
/// answers `3028 Cancelled`, which is printed like any answer).
pub fn call(
    dir: &Path,
    method: &str,
    request: &[u8],
    wait: Option<Duration>,
    policy: SignaturePolicy,
) -> ExitCode {
    let signals = block_stop_signals();
    let registry = PluginRegistry::with_signatures(dir, HostSettings::default(), policy);
    let plugin = match registry.get(method) {
        Ok(p) => p,
        Err(e) => return print_response(Response::failed(None, Retcode(e.retcode()), e.message())),
    };
    let (tx, rx) = mpsc::channel();
    let on_signal = tx.clone();
    let id = plugin.call(
        request,
        Box::new(move |c| {
            let _ = tx.send(c);
        }),
    );
    if let Some(set) = signals {
        forward_signals_as_cancel(set, Arc::clone(&plugin), id, on_signal);
    }
    let received = match wait {
        Some(limit) => rx.recv_timeout(limit).ok(),
        None => rx.recv().ok(),
    };
    let response = match received {
        Some(c) => {
            // The call is over: the plugin may shut down in order.
            registry.fini_all();
            Response::from_plugin(None, c.retcode, &c.message, c.data.as_deref())
        }
        None => {
            // Still in flight: fini would race it; the process exit ends it.
            plugin.cancel(id);
            Response::failed(
                None,
                Retcode::TIMEOUT,
                "Timeout: no answer from the plugin within the -t limit",
            )
        }
    };
    print_response(response)
}

/// Blocks SIGINT and SIGTERM in this thread (and so in every thread a
/// plugin starts later) so that a waiting thread can receive them.
fn block_stop_signals() -> Option<libc::sigset_t> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it,
    // and pthread_sigmask only changes this thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return None;
        }
        Some(set)
    }
}

/// On SIGINT/SIGTERM: ask the plugin to cancel; if it has not answered
/// after [`CANCEL_GRACE`], answer `3028` ourselves so the tool never hangs.
fn forward_signals_as_cancel(
    set: libc::sigset_t,
    plugin: Arc<Plugin>,
    id: u64,
    done: mpsc::Sender<Completion>,
) {
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialised sigset; sigwait writes `sig`.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            return;
        }
        log::warn!("signal {sig}: cancelling the call");
        plugin.cancel(id);
        std::thread::sleep(CANCEL_GRACE);
        let _ = done.send(Completion {
            call: id,
            retcode: Retcode::CANCELLED.0,
            message: format!(
                "Cancelled: interrupted by signal {sig}; the plugin did not answer the cancel"
            ),
            data: None,
        });
    });
}

/// How long a cancelled call may take to answer before the tool gives up.
const CANCEL_GRACE: Duration = Duration::from_secs(3);

/// `-l`: every plugin in the directory with its methods, version and
/// usage; refused files are listed with the reason (exit 1 if any).
pub fn list(dir: &Path, policy: SignaturePolicy, quarantined: Option<&Value>) -> ExitCode {
    let registry = PluginRegistry::with_signatures(dir, HostSettings::default(), policy);
    let found = match registry.scan() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("BasicAgentCtl: {e}");
            return ExitCode::from(1);
        }
    };
    out!("Plugins in {}:", dir.display());
    if found.is_empty() {
        out!("  (none)");
    }
    let mut refused = false;
    for entry in found {
        match entry {
            Ok(info) => {
                out!();
                out!(
                    "{}  ({} {})",
                    info.methods.join(", "),
                    info.name,
                    info.version
                );
                out!("  {}", info.description);
                out!("  file: {}", info.path.display());
                for line in info.usage.lines() {
                    out!("    {line}");
                }
            }
            Err(e) => {
                refused = true;
                out!();
                out!("REFUSED: {e}");
            }
        }
    }
    if let Some(q) = quarantined {
        let entries = q.as_array().map(Vec::as_slice).unwrap_or_default();
        out!();
        out!("Quarantined by the running daemon:");
        if entries.is_empty() {
            out!("  (none)");
        }
        for e in entries {
            out!(
                "  {} {} until {}: {}",
                e["plugin"].as_str().unwrap_or("?"),
                e["version"].as_str().unwrap_or("?"),
                e["until"].as_str().unwrap_or("?"),
                e["reason"].as_str().unwrap_or("?")
            );
            out!("    file: {}", e["file"].as_str().unwrap_or("?"));
        }
    }
    if refused {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
