//! `list`, `tasks` and `call` as clients of the HTTP API (`--api ADDR`, or the default address): same output as over the admin socket.
//!
//! `list` prints one agent object per line as `GET /v1/agents` gives it;
//! `tasks` one task result per line, sorted by host and task; `call` the
//! agents' answers (with `--all` each with `"host"` first, with `--host`
//! without it) and the server's own lines for hosts that did not answer on
//! stderr, exiting non-zero unless every host answered.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::call::ServerCode;

/// Why the API could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ApiClientError {
    #[error("bad --api {0:?} (want IP:PORT)")]
    Addr(String),
    #[error("API token file {path}: {source}")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error("API {url}: {message}")]
    Http { url: String, message: String },
    #[error("API {url}: cannot connect: {message}")]
    Connect { url: String, message: String },
    #[error("API answer: {0}")]
    Io(#[from] std::io::Error),
}

/// One API endpoint and its token.
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    pub fn new(addr: &str, token_file: Option<&str>) -> Result<Client, ApiClientError> {
        let sa: std::net::SocketAddr = addr
            .parse()
            .map_err(|_| ApiClientError::Addr(addr.to_owned()))?;
        let token = match token_file {
            Some(path) => Some(
                std::fs::read_to_string(Path::new(path))
                    .map_err(|source| ApiClientError::Token {
                        path: path.to_owned(),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .build();
        Ok(Client {
            base: format!("http://{sa}"),
            token,
            agent,
        })
    }

    fn request(&self, method: &str, path: &str) -> (ureq::Request, String) {
        let url = format!("{}{path}", self.base);
        let mut r = self.agent.request(method, &url);
        if let Some(t) = &self.token {
            r = r.set("Authorization", &format!("Bearer {t}"));
        }
        (r, url)
    }

    fn answer(
        url: String,
        r: Result<ureq::Response, ureq::Error>,
    ) -> Result<ureq::Response, ApiClientError> {
        match r {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(code, r)) => {
                let body: Value = r.into_json().unwrap_or(Value::Null);
                let message = body["error"]["message"]
                    .as_str()
                    .map_or_else(|| format!("HTTP {code}"), |m| format!("HTTP {code}: {m}"));
                Err(ApiClientError::Http { url, message })
            }
            Err(ureq::Error::Transport(t)) if t.kind() == ureq::ErrorKind::ConnectionFailed => {
                Err(ApiClientError::Connect {
                    url,
                    message: t.to_string(),
                })
            }
            Err(e) => Err(ApiClientError::Http {
                url,
                message: e.to_string(),
            }),
        }
    }

    fn get_json(&self, path: &str) -> Result<Value, ApiClientError> {
        let (r, url) = self.request("GET", path);
        let r = Self::answer(url, r.call())?;
        Ok(r.into_json()?)
    }

    pub fn list(&self) -> Result<bool, ApiClientError> {
        let agents = self.get_json("/v1/agents")?;
        let mut out = std::io::stdout().lock();
        for a in agents.as_array().into_iter().flatten() {
            writeln!(out, "{a}")?;
        }
        Ok(true)
    }

    pub fn tasks(&self) -> Result<bool, ApiClientError> {
        let tasks = self.get_json("/v1/tasks?limit=10000")?;
        let mut list: Vec<Value> = tasks.as_array().cloned().unwrap_or_default();
        list.sort_by(|a, b| {
            (a["host"].as_str(), a["task"].as_str()).cmp(&(b["host"].as_str(), b["task"].as_str()))
        });
        let mut out = std::io::stdout().lock();
        for t in list {
            writeln!(out, "{t}")?;
        }
        Ok(true)
    }

    /// One call; true when every targeted host answered.
    pub fn call(
        &self,
        host: Option<&str>,
        timeout: f64,
        request: &str,
    ) -> Result<bool, ApiClientError> {
        let request: Value = serde_json::from_str(request).map_err(|e| ApiClientError::Http {
            url: self.base.clone(),
            message: format!("invalid request: {e}"),
        })?;
        let target = match host {
            Some(h) => json!({"hosts": [h]}),
            None => json!({"all": true}),
        };
        let timeout = if timeout > 0.0 { timeout } else { 0.001 };
        let body = json!({"target": target, "request": request, "timeout": timeout});
        let (r, url) = self.request("POST", "/v1/call");
        let r = Self::answer(url, r.send_json(body))?;
        let mut out = std::io::stdout().lock();
        let mut ok = true;
        for line in BufReader::new(r.into_reader()).lines() {
            let line = line?;
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if let Some(s) = v.get("summary") {
                let bad = ["failed", "offline", "timed_out"]
                    .iter()
                    .any(|k| s[k].as_u64().unwrap_or(0) > 0);
                return Ok(ok && !bad);
            }
            let code = v["retcode"].as_u64().unwrap_or(0);
            let server_made = (u64::from(ServerCode::OFFLINE.0)
                ..=u64::from(ServerCode::QUEUE_FULL.0))
                .contains(&code);
            if server_made {
                ok = false;
                eprintln!(
                    "BasicAgentServer: {}",
                    v["message"].as_str().unwrap_or("no answer")
                );
                continue;
            }
            let printed = match v["host"].as_str().filter(|_| host.is_some()) {
                Some(h) => {
                    let prefix = format!(
                        "{{\"host\":{},",
                        serde_json::to_string(h).unwrap_or_default()
                    );
                    line.strip_prefix(&prefix)
                        .map_or(line.clone(), |rest| format!("{{{rest}"))
                }
                None => line.clone(),
            };
            writeln!(out, "{printed}")?;
            out.flush()?;
        }
        Err(ApiClientError::Http {
            url: self.base.clone(),
            message: "the call stream ended without a summary".into(),
        })
    }
}
