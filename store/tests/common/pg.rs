//! A real PostgreSQL for the tests: one throwaway cluster per test binary,
//! started by `scripts/pg.sh` in a temporary directory on a free loopback
//! port, stopped (and its directory removed) by the script's watcher when
//! the test binary exits. Each test gets a schema of its own.
//!
//! If PostgreSQL cannot be started (not installed and not root, or initdb
//! fails) every test that asks for it panics with the script's message: the
//! PostgreSQL tests fail loudly, they never pass without a database. To
//! build and test without them: `cargo test -p basicagent-store
//! --no-default-features`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use basicagent_store::{PgOptions, PgStore};

pub struct Pg {
    pub dir: PathBuf,
    pub url: String,
}

pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg.sh")
}

/// The cluster of this test binary, started on first use.
pub fn pg() -> &'static Pg {
    static PG: OnceLock<Result<Pg, String>> = OnceLock::new();
    let started = PG.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("cp-pg-test.")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?
            .keep();
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(&dir)
            .arg("--watch")
            .arg(std::process::id().to_string())
            .output()
            .map_err(|e| format!("running {}: {e}", script().display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} start failed ({}): {}",
                script().display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(Pg { dir, url })
    });
    match started {
        Ok(pg) => pg,
        Err(e) => panic!(
            "PostgreSQL for the tests could not be started: {e}\n\
             (install postgresql-15 or run as root; or test with --no-default-features)"
        ),
    }
}

/// A schema name no other test of any binary uses.
pub fn fresh_schema() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Options for a fresh schema, small pool.
pub fn options() -> PgOptions {
    PgOptions {
        schema: fresh_schema(),
        pool_size: 4,
        ..PgOptions::default()
    }
}

pub fn open(options: &PgOptions) -> PgStore {
    PgStore::open_with(&pg().url, options).unwrap_or_else(|e| panic!("PgStore::open: {e}"))
}

/// Run `scripts/pg.sh CMD` on this binary's cluster (pause/resume).
pub fn ctl(cmd: &str) {
    let status = Command::new("bash")
        .arg(script())
        .arg(cmd)
        .arg(&pg().dir)
        .status()
        .unwrap_or_else(|e| panic!("pg.sh {cmd}: {e}"));
    assert!(status.success(), "pg.sh {cmd}: {status}");
}
