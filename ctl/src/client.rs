//! The ctl tool through the running daemon: one request line over the
//! daemon's root-only control socket (`agent.ctl_socket`), the answer line
//! back, printed exactly as a local call prints it.
//!
//! Rule: the socket is used when it exists and accepts the connection; a
//! missing socket or one nobody listens on (`ENOENT`, `ECONNREFUSED`)
//! means no daemon runs and the tool loads the plugin itself. Any other
//! failure (`EACCES` for a non-root caller, a refusal line) is reported,
//! never silently replaced by a local call that would not see the
//! daemon's quarantine and limits.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the daemon listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/basicagent/ctl.sock";

/// Why the daemon could not answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}: {source} (the control socket is root-only; run as root, or use --local)", .path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error("{}: the daemon closed the connection without an answer", .0.display())]
    NoAnswer(PathBuf),
    #[error("Timeout: no answer from the daemon within the -t limit")]
    Timeout,
}

/// The socket to use: `-S`, else `$BASICAGENT_CTL_SOCKET`, else
/// `agent.ctl_socket` of the config (`-C`, or the default one if it
/// exists), else [`DEFAULT_SOCKET`].
pub fn socket_path(explicit: Option<PathBuf>, config: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p;
    }
    if let Some(p) = std::env::var_os("BASICAGENT_CTL_SOCKET").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let config = config.unwrap_or(Path::new("/etc/basicagent/agent.toml"));
    let configured = std::fs::read_to_string(config)
        .ok()
        .and_then(|t| toml::from_str::<toml::Value>(&t).ok())
        .and_then(|v| {
            v.get("agent")
                .and_then(|a| a.get("ctl_socket"))
                .and_then(|s| s.as_str().map(PathBuf::from))
        });
    configured.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Sends `request` (one JSON object, no `\n`) to the daemon. `Ok(None)`:
/// no daemon listens there (use the local path); `Ok(Some(line))`: the
/// answer line, without `\n`.
pub fn ask(
    path: &Path,
    request: &[u8],
    wait: Option<Duration>,
) -> Result<Option<String>, ClientError> {
    let mut stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(source) => {
            return Err(ClientError::Connect {
                path: path.to_owned(),
                source,
            })
        }
    };
    let io = |source| ClientError::Io {
        path: path.to_owned(),
        source,
    };
    stream.set_read_timeout(wait).map_err(io)?;
    let mut frame = Vec::with_capacity(request.len() + 1);
    frame.extend_from_slice(request);
    frame.push(b'\n');
    // A refused peer may see its write fail after the refusal line was
    // sent: read the line either way.
    let written = stream.write_all(&frame);
    let mut line = String::new();
    let read = BufReader::new(&stream).read_line(&mut line);
    match read {
        Ok(0) => {}
        Ok(_) => {
            let line = line.trim_end_matches('\n').to_owned();
            if line.starts_with('{') {
                return Ok(Some(line));
            }
            return Err(ClientError::Refused(line));
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(ClientError::Timeout)
        }
        Err(e) => return Err(io(e)),
    }
    written.map_err(io)?;
    Err(ClientError::NoAnswer(path.to_owned()))
}
