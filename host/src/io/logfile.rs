//! The daemon's log: stderr or a log file that can be reopened after
//! logrotate (`reopen()` on SIGHUP/SIGUSR1 opens the path again, which is
//! all logrotate needs). The file is opened by the file-trust rule
//! ([`basicagent_fstrust::create_file`]): `O_NOFOLLOW` (a symbolic link is
//! refused and its target never appended to), and a directory writable by
//! group or others is refused.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use basicagent_fstrust::{CreateHow, TrustError};

use basicagent_fstrust::Violation;
use log::LevelFilter;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file could not be opened.
    #[error("{}: {source}", .path.display())]
    Open {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The path breaks the file-trust rule (a symbolic link, a directory
    /// writable by others, another owner): nothing was written.
    #[error("refusing log file {0}")]
    Untrusted(TrustError),
    /// A logger was already installed in this process.
    #[error("a logger is already installed: {0}")]
    AlreadyInstalled(#[from] log::SetLoggerError),
}

/// A log file opened by path in append mode that can be reopened
/// (logrotate's default `create` mode renames it, then signals us).
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

impl LogFile {
    /// Opens `path` (made absolute) for appending, creating it 0640.
    pub fn open(path: &Path) -> Result<LogFile, LogError> {
        let path = std::path::absolute(path).map_err(|source| LogError::Open {
            path: path.to_owned(),
            source,
        })?;
        let file = open_append(&path)?;
        Ok(LogFile {
            path,
            file: Mutex::new(file),
        })
    }

    /// Opens the path again; later lines go to the new file. On failure
    /// the old file stays in use.
    pub fn reopen(&self) -> Result<(), LogError> {
        let new = open_append(&self.path)?;
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        *file = new;
        Ok(())
    }

    /// The file's absolute path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open_append(path: &Path) -> Result<File, LogError> {
    basicagent_fstrust::create_file(path, 0o640, CreateHow::Append)
        .map(|(file, _)| file)
        .map_err(|e| match e.violation {
            Violation::Io(source) => LogError::Open { path: e.at, source },
            _ => LogError::Untrusted(e),
        })
}

/// What env_logger writes to: one `write_all` per record, in append mode.
struct LogWriter(Arc<LogFile>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut file = self.0.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut file = self.0.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Handle on the installed log target; cheap to clone.
#[derive(Debug, Clone)]
pub struct LogHandle {
    file: Option<Arc<LogFile>>,
}

impl LogHandle {
    /// Reopens the log file by path (SIGHUP / SIGUSR1); a no-op on stderr.
    pub fn reopen(&self) -> Result<(), LogError> {
        match &self.file {
            Some(f) => f.reopen(),
            None => Ok(()),
        }
    }

    /// The log file, `None` when logging to stderr.
    pub fn path(&self) -> Option<&Path> {
        self.file.as_deref().map(LogFile::path)
    }
}

/// Builds the logger without installing it: lines with a UTC millisecond
/// timestamp, level and target, to `path` (append, created 0640) or to
/// stderr. `level` is the default; `BASICAGENT_LOG` (env_logger syntax,
/// e.g. `debug` or `basicagent_host::resolve=trace`) overrides it.
pub fn build_logger(
    path: Option<&Path>,
    level: LevelFilter,
) -> Result<(env_logger::Logger, LogHandle), LogError> {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(level)
        .parse_env(env_logger::Env::new().filter("BASICAGENT_LOG"))
        .format_timestamp_millis()
        .write_style(env_logger::WriteStyle::Never);
    let handle = match path {
        Some(p) => {
            let file = Arc::new(LogFile::open(p)?);
            builder.target(env_logger::Target::Pipe(Box::new(LogWriter(Arc::clone(
                &file,
            )))));
            LogHandle { file: Some(file) }
        }
        None => {
            builder.target(env_logger::Target::Stderr);
            LogHandle { file: None }
        }
    };
    Ok((builder.build(), handle))
}

/// Installs the process-wide logger (see [`build_logger`]). Call after
/// [`crate::io::process::daemonize`], which closes stderr.
pub fn init_logging(path: Option<&Path>, level: LevelFilter) -> Result<LogHandle, LogError> {
    let (logger, handle) = build_logger(path, level)?;
    let max = logger.filter();
    log::set_boxed_logger(Box::new(logger))?;
    log::set_max_level(max);
    Ok(handle)
}

/// Gives back the pages of the daemon's own executable that start-up used
/// (configuration, certificates, DNS set-up) once the first session is up:
/// `MADV_PAGEOUT` on its file-backed mappings. The kernel reclaims the
/// pages no one else maps; code the request path needs faults back in from
#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    fn emit(logger: &env_logger::Logger, msg: &str) {
        logger.log(
            &log::Record::builder()
                .args(format_args!("{msg}"))
                .level(log::Level::Info)
                .target("basicagent_host::test")
                .build(),
        );
    }

    #[test]
    fn reopen_after_rename_writes_a_fresh_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.log");
        let (logger, handle) = build_logger(Some(&path), LevelFilter::Info).unwrap();
        assert_eq!(handle.path(), Some(path.as_path()));
        emit(&logger, "first line");
        let rotated = dir.path().join("agent.log.1");
        fs::rename(&path, &rotated).unwrap();
        emit(&logger, "second line");
        handle.reopen().unwrap();
        emit(&logger, "third line");

        let old = fs::read_to_string(&rotated).unwrap();
        let new = fs::read_to_string(&path).unwrap();
        assert!(
            old.contains("first line") && old.contains("second line"),
            "{old}"
        );
        assert!(!old.contains("third line"));
        assert!(
            new.contains("third line") && !new.contains("first"),
            "{new}"
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        // "[2024-05-01T12:00:00.123Z INFO  basicagent_host::test] third line"
        let line = new.lines().next().unwrap();
        assert!(
            line.starts_with('[') && line.contains("T") && line.contains("Z INFO"),
            "{line}"
        );
    }

    #[test]
    fn reopen_appends_to_an_existing_file_and_keeps_old_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        fs::write(&path, "kept\n").unwrap();
        let (logger, handle) = build_logger(Some(&path), LevelFilter::Warn).unwrap();
        emit(&logger, "below the level");
        logger.log(
            &log::Record::builder()
                .args(format_args!("warned"))
                .level(log::Level::Warn)
                .build(),
        );
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("kept\n") && text.contains("warned") && !text.contains("below"));
        // The directory disappears: reopen fails, logging goes on to the old file.
        let moved = tempfile::tempdir().unwrap();
        let newdir = moved.path().join("d");
        fs::rename(dir.path(), &newdir).unwrap();
        assert!(matches!(handle.reopen(), Err(LogError::Open { .. })));
        logger.log(
            &log::Record::builder()
                .args(format_args!("still here"))
                .level(log::Level::Error)
                .build(),
        );
        assert!(fs::read_to_string(newdir.join("a.log"))
            .unwrap()
            .contains("still here"));
    }

    #[test]
    fn stderr_handle_reopen_is_a_no_op() {
        let (_logger, handle) = build_logger(None, LevelFilter::Info).unwrap();
        assert!(handle.path().is_none());
        handle.reopen().unwrap();
    }
}
