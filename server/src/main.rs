//! BasicAgentServer: the reference control server (tests, the demo, small fleets), and its admin client.
//!
//! Key decisions: one process holds a fleet. tokio (one worker per core)
//! runs each agent session as one task on one descriptor; a router
//! (`registry`) hands frames to sessions through bounded queues; the
//! operator's HTTP API (`api`, axum) and the Unix admin socket share one
//! call engine (`call`); a writer thread batches everything durable into
//! the store (`storage`, SQLite under `--state-dir`). All wire JSON comes
//! from `basicagent-proto`. The same binary is the client: `list`, `tasks`
//! and `call` talk to the HTTP API with `--api`, else to the admin socket;
//! `send` uses the admin socket. `main` only parses flags.
#![deny(clippy::undocumented_unsafe_blocks)]

mod admin;
mod admin_client;
mod api;
mod api_client;
mod call;
mod console;
mod events;
mod identity;
mod loadtest;
mod metrics;
mod node;
mod registry;
mod serve;
mod session;
mod state;
mod storage;
mod tls;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use admin::AdminRequest;
use basicagent_proto::handshake::{strict_list, InitPolicy};
use basicagent_proto::DEFAULT_MAX_FRAME;
use serve::ServeOptions;
use state::Settings;

const DEFAULT_ADMIN: &str = "/run/basicagent-server.sock";
const DEFAULT_LISTEN: &str = "127.0.0.1:8443";
const DEFAULT_API: &str = "127.0.0.1:8080";
const DEFAULT_CALL_TIMEOUT: f64 = 130.0;
const DEFAULT_SEND_TIMEOUT: f64 = 2.0;

const USAGE: &str = "\
Usage:
  BasicAgentServer serve [--listen ADDR] --cert PEM --key PEM [--client-ca PEM]
                         [--redirect LIST | --spread LIST | --reject MESSAGE]
                         [--heartbeat SECS] [--admin SOCK] [--events FILE]
                         [--auto-ack | --no-auto-ack] [--handshake-timeout SECS]
                         [--max-frame BYTES] [--api ADDR|none] [--api-token-file FILE]
                         [--state-dir DIR|none] [--max-sessions N]
                         [--keep-calls-days D] [--keep-tasks-days D]
                         [--max-calls N] [--max-results N] [--max-tasks N]
                         [--nats URL|@FILE --db postgres://...|@FILE --node-name N [--peer-addr ADDR]]
  BasicAgentServer list  [--admin SOCK | --api ADDR [--api-token-file FILE]]
  BasicAgentServer tasks [--admin SOCK | --api ADDR [--api-token-file FILE]]
  BasicAgentServer call  [--admin SOCK | --api ADDR [--api-token-file FILE]]
                         (--host ID | --all) [--timeout SECS] 'JSON-REQUEST'
  BasicAgentServer send  [--admin SOCK] --host ID [--timeout SECS] 'RAW LINE' | -   (- reads stdin)
  BasicAgentServer loadtest --listen ADDR --cert PEM --key PEM --requests N --depth D
                         [--json REQUEST] [--warmup N] [--timeout SECS]
      accepts one agent, sends N requests (at most D in flight), prints one JSON line:
      {\"requests\",\"depth\",\"seconds\",\"rate_per_s\",\"p50_us\",\"p99_us\",\"max_us\",\"errors\"}

Defaults: --listen 127.0.0.1:8443, --admin /run/basicagent-server.sock,
--api 127.0.0.1:8080 (serve; list/tasks/call use it, or the admin socket when
nothing listens there or --admin is given),
--state-dir none (memory only), --max-sessions: descriptor limit minus 64,
--heartbeat: none sent (0..=3600), keep calls and tasks 30 days, at most
100000 calls, 5000000 call results, 1000000 task results;
call --timeout 130, send --timeout 2, --handshake-timeout 10, --max-frame 16777216;
loadtest --json '{\"method\":\"getinfo.kernel\"}', --warmup 0, --timeout 120.
Log level: RUST_LOG (default info).";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("BasicAgentServer: {message}");
            ExitCode::from(2)
        }
    }
}

/// Parses the subcommand and its flags, then delegates.
fn dispatch(args: &[String]) -> Result<ExitCode, String> {
    let Some((command, rest)) = args.split_first() else {
        return Err(format!("missing command\n{USAGE}"));
    };
    let mut opts = getopts::Options::new();
    opts.optopt("", "admin", "admin socket", "SOCK");
    opts.optflag("h", "help", "show usage");
    match command.as_str() {
        "serve" => {
            for (name, hint) in [
                ("listen", "ADDR"),
                ("cert", "PEM"),
                ("key", "PEM"),
                ("client-ca", "PEM"),
                ("redirect", "LIST"),
                ("spread", "LIST"),
                ("reject", "MESSAGE"),
                ("heartbeat", "SECS"),
                ("events", "FILE"),
                ("handshake-timeout", "SECS"),
                ("max-frame", "BYTES"),
                ("api", "ADDR"),
                ("api-token-file", "FILE"),
                ("state-dir", "DIR"),
                ("max-sessions", "N"),
                ("keep-calls-days", "D"),
                ("keep-tasks-days", "D"),
                ("max-calls", "N"),
                ("max-results", "N"),
                ("max-tasks", "N"),
                ("nats", "URL"),
                ("db", "URL"),
                ("node-name", "N"),
                ("peer-addr", "ADDR"),
            ] {
                opts.optopt("", name, "", hint);
            }
            opts.optflag("", "auto-ack", "acknowledge task.done at once (default)");
            opts.optflag("", "no-auto-ack", "do not acknowledge task.done");
        }
        "call" | "send" => {
            opts.optopt("", "host", "agent host id", "ID");
            opts.optopt("", "timeout", "seconds to wait", "SECS");
            if command == "call" {
                opts.optflag("", "all", "every connected agent");
                opts.optopt("", "api", "HTTP API address", "ADDR");
                opts.optopt("", "api-token-file", "bearer token file", "FILE");
            }
        }
        "list" | "tasks" => {
            opts.optopt("", "api", "HTTP API address", "ADDR");
            opts.optopt("", "api-token-file", "bearer token file", "FILE");
        }
        "loadtest" => {
            for (name, hint) in [
                ("listen", "ADDR"),
                ("cert", "PEM"),
                ("key", "PEM"),
                ("requests", "N"),
                ("depth", "D"),
                ("json", "REQUEST"),
                ("warmup", "N"),
                ("timeout", "SECS"),
            ] {
                opts.optopt("", name, "", hint);
            }
        }
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            return Ok(ExitCode::SUCCESS);
        }
        other => return Err(format!("unknown command {other:?}\n{USAGE}")),
    }
    let m = opts.parse(rest).map_err(|e| format!("{e}\n{USAGE}"))?;
    if m.opt_present("help") {
        println!("{USAGE}");
        return Ok(ExitCode::SUCCESS);
    }
    let admin = PathBuf::from(
        m.opt_str("admin")
            .unwrap_or_else(|| DEFAULT_ADMIN.to_owned()),
    );
    if command == "serve" {
        let options = serve_options(&m, admin)?;
        serve::run(options).map_err(|e| e.to_string())?;
        return Ok(ExitCode::SUCCESS);
    }
    if command == "loadtest" {
        let report = loadtest::run(&loadtest_options(&m)?).map_err(|e| e.to_string())?;
        println!("{}", report.to_json());
        return Ok(ExitCode::SUCCESS);
    }
    let timeout = |default: f64| -> Result<f64, String> {
        match m.opt_str("timeout") {
            None => Ok(default),
            Some(t) => t
                .parse::<f64>()
                .ok()
                .filter(|t| t.is_finite() && *t >= 0.0)
                .ok_or(format!("bad --timeout {t:?}")),
        }
    };
    // list/tasks/call: the HTTP API with --api; with neither --api nor
    // --admin, the default API first and the default admin socket if
    // nothing listens there; with --admin, the admin socket.
    let (api, defaulted) = match command.as_str() {
        "send" => (None, false),
        _ => match m.opt_str("api") {
            Some(a) => (Some(a), false),
            None if m.opt_present("admin") => (None, false),
            None => (Some(DEFAULT_API.to_owned()), true),
        },
    };
    if let Some(api) = api {
        let client = api_client::Client::new(&api, m.opt_str("api-token-file").as_deref())
            .map_err(|e| e.to_string())?;
        let outcome = match command.as_str() {
            "list" => client.list(),
            "tasks" => client.tasks(),
            _ => {
                let [text] = m.free.as_slice() else {
                    return Err(format!("call takes one JSON request\n{USAGE}"));
                };
                let all = m.opt_present("all");
                let host = m.opt_str("host");
                if all == host.is_some() {
                    return Err("call needs exactly one of --host ID and --all".into());
                }
                client.call(host.as_deref(), timeout(DEFAULT_CALL_TIMEOUT)?, text)
            }
        };
        match outcome {
            Ok(ok) => {
                return Ok(if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                })
            }
            Err(api_client::ApiClientError::Connect { .. }) if defaulted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    let (request, payload) = match command.as_str() {
        "list" => (AdminRequest::List, None),
        "tasks" => (AdminRequest::Tasks, None),
        "call" => {
            let [text] = m.free.as_slice() else {
                return Err(format!("call takes one JSON request\n{USAGE}"));
            };
            let all = m.opt_present("all");
            let host = m.opt_str("host");
            if all == host.is_some() {
                return Err("call needs exactly one of --host ID and --all".into());
            }
            (
                AdminRequest::Call {
                    host,
                    all,
                    timeout: timeout(DEFAULT_CALL_TIMEOUT)?,
                    request: text.clone(),
                },
                None,
            )
        }
        _ => {
            let host = m.opt_str("host").ok_or("send needs --host ID")?;
            let [line] = m.free.as_slice() else {
                return Err(format!("send takes one line (or -)\n{USAGE}"));
            };
            let bytes = if line == "-" {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .map_err(|e| format!("reading stdin: {e}"))?;
                buf
            } else {
                line.clone().into_bytes()
            };
            let request = AdminRequest::Send {
                host,
                len: bytes.len() as u64,
                timeout: timeout(DEFAULT_SEND_TIMEOUT)?,
            };
            (request, Some(bytes))
        }
    };
    let ok = admin_client::run(&admin, &request, payload.as_deref()).map_err(|e| e.to_string())?;
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn serve_options(m: &getopts::Matches, admin: PathBuf) -> Result<ServeOptions, String> {
    let listen_text = m
        .opt_str("listen")
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen: SocketAddr = listen_text
        .parse()
        .map_err(|_| format!("bad --listen {listen_text:?} (want IP:PORT)"))?;
    let cert = m.opt_str("cert").ok_or("serve needs --cert PEM")?;
    let key = m.opt_str("key").ok_or("serve needs --key PEM")?;
    let chosen: Vec<&str> = ["redirect", "spread", "reject"]
        .into_iter()
        .filter(|o| m.opt_present(o))
        .collect();
    if chosen.len() > 1 {
        return Err(format!("--{} cannot be combined", chosen.join(" and --")));
    }
    let policy = if let Some(list) = m.opt_str("redirect") {
        strict_list(&list, listen.port()).map_err(|e| format!("--redirect: {e}"))?;
        InitPolicy::Redirect(list.trim().to_owned())
    } else if let Some(list) = m.opt_str("spread") {
        InitPolicy::Spread(strict_list(&list, listen.port()).map_err(|e| format!("--spread: {e}"))?)
    } else if let Some(message) = m.opt_str("reject") {
        InitPolicy::Reject(message)
    } else {
        InitPolicy::Accept
    };
    if m.opt_present("auto-ack") && m.opt_present("no-auto-ack") {
        return Err("--auto-ack and --no-auto-ack cannot be combined".into());
    }
    let number = |name: &str| -> Result<Option<u64>, String> {
        m.opt_str(name)
            .map(|v| v.parse::<u64>().map_err(|_| format!("bad --{name} {v:?}")))
            .transpose()
    };
    let handshake_timeout = number("handshake-timeout")?.unwrap_or(10).max(1);
    let heartbeat = number("heartbeat")?;
    if let Some(h) = heartbeat {
        if h > serve::HEARTBEAT_MAX {
            return Err(format!(
                "bad --heartbeat {h}: the range is 0..={} seconds (0: none sent)",
                serve::HEARTBEAT_MAX
            ));
        }
    }
    let api = match m.opt_str("api").as_deref() {
        Some("none") => None,
        other => {
            let text = other.unwrap_or(DEFAULT_API);
            Some(
                text.parse::<SocketAddr>()
                    .map_err(|_| format!("bad --api {text:?} (want IP:PORT or none)"))?,
            )
        }
    };
    let state_dir = match m.opt_str("state-dir").as_deref() {
        None | Some("none") => None,
        Some(dir) => Some(PathBuf::from(dir)),
    };
    let max_sessions = number("max-sessions")?.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let mut retention = basicagent_store::Retention::default();
    let day = Duration::from_secs(24 * 3600);
    if let Some(d) = number("keep-calls-days")? {
        retention.calls = day.saturating_mul(u32::try_from(d).unwrap_or(u32::MAX));
    }
    if let Some(d) = number("keep-tasks-days")? {
        retention.tasks = day.saturating_mul(u32::try_from(d).unwrap_or(u32::MAX));
    }
    if let Some(n) = number("max-calls")? {
        retention.max_calls = n;
    }
    if let Some(n) = number("max-results")? {
        retention.max_results = n;
    }
    if let Some(n) = number("max-tasks")? {
        retention.max_tasks = n;
    }
    let cluster = match (m.opt_str("nats"), m.opt_str("db")) {
        (None, None) => {
            for o in ["node-name", "peer-addr"] {
                if m.opt_present(o) {
                    return Err(format!(
                        "--{o} needs --nats URL and --db URL (cluster mode)"
                    ));
                }
            }
            None
        }
        (Some(nats), Some(db)) => {
            let (nats, db) = (node::url_arg("nats", &nats)?, node::url_arg("db", &db)?);
            if m.opt_present("state-dir") {
                return Err(
                    "--state-dir and --db cannot be combined (the cluster's store is PostgreSQL)"
                        .into(),
                );
            }
            let node_name = m
                .opt_str("node-name")
                .ok_or("cluster mode needs --node-name N")?;
            let peer_addr = match m.opt_str("peer-addr") {
                Some(p) => p,
                None if !listen.ip().is_unspecified() => listen.to_string(),
                None => return Err("--listen is a wildcard address: give --peer-addr ADDR (where agents are redirected to)".into()),
            };
            Some(serve::ClusterOptions {
                nats,
                db,
                node_name,
                peer_addr,
            })
        }
        _ => return Err("--nats URL and --db URL go together (cluster mode)".into()),
    };
    let max_frame = number("max-frame")?.map_or(DEFAULT_MAX_FRAME, |v| {
        usize::try_from(v).unwrap_or(usize::MAX)
    });
    Ok(ServeOptions {
        listen,
        cert: cert.into(),
        key: key.into(),
        client_ca: m.opt_str("client-ca").map(PathBuf::from),
        admin,
        events: m.opt_str("events").map(PathBuf::from),
        api,
        api_token_file: m.opt_str("api-token-file").map(PathBuf::from),
        state_dir,
        max_sessions,
        retention,
        cluster,
        settings: Settings {
            listen,
            policy,
            heartbeat: heartbeat.filter(|&h| h > 0),
            auto_ack: !m.opt_present("no-auto-ack"),
            handshake_timeout: Duration::from_secs(handshake_timeout),
            max_frame,
        },
    })
}

fn loadtest_options(m: &getopts::Matches) -> Result<loadtest::LoadOptions, String> {
    let need = |name: &str| m.opt_str(name).ok_or(format!("loadtest needs --{name}"));
    let number = |name: &str, default: Option<u64>| -> Result<u64, String> {
        match m.opt_str(name) {
            Some(v) => v.parse::<u64>().map_err(|_| format!("bad --{name} {v:?}")),
            None => default.ok_or(format!("loadtest needs --{name}")),
        }
    };
    let listen_text = need("listen")?;
    let listen: SocketAddr = listen_text
        .parse()
        .map_err(|_| format!("bad --listen {listen_text:?} (want IP:PORT)"))?;
    let timeout = match m.opt_str("timeout") {
        None => 120.0,
        Some(t) => t
            .parse::<f64>()
            .ok()
            .filter(|t| t.is_finite() && *t > 0.0)
            .ok_or(format!("bad --timeout {t:?}"))?,
    };
    Ok(loadtest::LoadOptions {
        listen,
        cert: need("cert")?.into(),
        key: need("key")?.into(),
        requests: number("requests", None)?,
        depth: number("depth", None)?,
        request: m
            .opt_str("json")
            .unwrap_or_else(|| r#"{"method":"getinfo.kernel"}"#.to_owned()),
        warmup: number("warmup", Some(0))?,
        timeout: Duration::try_from_secs_f64(timeout)
            .map_err(|_| format!("bad --timeout {timeout}"))?,
    })
}
