//! The client subcommands (`list`, `tasks`, `call`, `send`): one admin request, results to stdout, problems to stderr.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::admin::{AdminDone, AdminProblem, AdminRequest};

/// Why a subcommand could not talk to the server.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("cannot connect to the admin socket {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("admin socket I/O: {0}")]
    Io(#[from] io::Error),
    #[error("the server closed the admin connection without finishing")]
    Truncated,
}

/// Runs one request; returns whether the server reported success.
pub fn run(
    admin: &Path,
    request: &AdminRequest,
    payload: Option<&[u8]>,
) -> Result<bool, AdminClientError> {
    let mut stream = UnixStream::connect(admin).map_err(|source| AdminClientError::Connect {
        path: admin.to_owned(),
        source,
    })?;
    let mut header = serde_json::to_vec(request).map_err(io::Error::other)?;
    header.push(b'\n');
    stream.write_all(&header)?;
    if let Some(bytes) = payload {
        stream.write_all(bytes)?;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let stdout = io::stdout();
    let mut stdout = stdout.lock();
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if let Ok(done) = serde_json::from_str::<AdminDone>(&line) {
            return Ok(done.admin_done);
        }
        if let Ok(problem) = serde_json::from_str::<AdminProblem>(&line) {
            eprintln!("BasicAgentServer: {}", problem.admin_error);
            continue;
        }
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
    }
    Err(AdminClientError::Truncated)
}
