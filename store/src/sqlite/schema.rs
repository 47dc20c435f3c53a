//! The schema as numbered migrations. Append only: a migration that has
//! shipped is never edited; a change is a new migration.

/// Numbered migrations; migration `i + 1` is `MIGRATIONS[i]`. Each runs in
/// its own transaction together with its row in `schema_migrations`.
/// Append only: never edit a migration that has shipped.
pub(super) const MIGRATIONS: &[(&str, &str)] = &[(
    "agents, facts, calls, call results, task results",
    r#"
CREATE TABLE schema_migrations (
    version     INTEGER PRIMARY KEY,
    applied_at  INTEGER NOT NULL,
    description TEXT NOT NULL
) STRICT;

CREATE TABLE agents (
    host         TEXT PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    addr         TEXT NOT NULL,
    version      TEXT NOT NULL,
    plugins      TEXT NOT NULL,          -- JSON array of method names
    node         TEXT,
    first_seen   INTEGER NOT NULL,
    last_seen    INTEGER NOT NULL,
    connected_at INTEGER
) STRICT, WITHOUT ROWID;

CREATE TABLE facts (
    host   TEXT NOT NULL,
    method TEXT NOT NULL,
    data   TEXT NOT NULL,                -- JSON
    at     INTEGER NOT NULL,
    PRIMARY KEY (host, method)
) STRICT, WITHOUT ROWID;

-- AUTOINCREMENT: a call id is never reused, even after prune removed the newest.
CREATE TABLE calls (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    who         TEXT NOT NULL,
    at          INTEGER NOT NULL,
    target      TEXT NOT NULL,           -- JSON
    request     TEXT NOT NULL,           -- JSON
    finished_at INTEGER,
    summary     TEXT,                    -- JSON
    results     INTEGER NOT NULL DEFAULT 0  -- rows in call_results, for prune
) STRICT;

-- seq: arrival order. UNIQUE (call, host) also serves call() and the cascade.
CREATE TABLE call_results (
    seq      INTEGER PRIMARY KEY,
    call     INTEGER NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    host     TEXT NOT NULL,
    at       INTEGER NOT NULL,
    retcode  INTEGER NOT NULL,
    response TEXT NOT NULL,              -- JSON
    UNIQUE (call, host)
) STRICT;
CREATE INDEX call_results_by_host ON call_results (host, call);

CREATE TABLE tasks (
    seq         INTEGER PRIMARY KEY,
    host        TEXT NOT NULL,
    task        TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    retcode     INTEGER NOT NULL,
    message     TEXT NOT NULL,
    frame       TEXT NOT NULL,           -- JSON: the task.done frame
    schedule    TEXT,
    UNIQUE (host, task)
) STRICT;
CREATE INDEX tasks_by_host ON tasks (host, received_at);
CREATE INDEX tasks_by_time ON tasks (received_at);
CREATE INDEX tasks_by_id ON tasks (task);
"#,
)];
