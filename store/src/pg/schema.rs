//! The PostgreSQL schema as numbered migrations. Append only: a migration
//! that has shipped is never edited; a change is a new migration.
//!
//! The tables are those of the SQLite schema. Free-text columns a peer
//! controls (host ids, names, task ids, messages) are `bytea`: PostgreSQL
//! `text` cannot hold a NUL character, and the store keeps every string
//! exactly as given, like SQLite does; `bytea` also sorts bytewise, which is
//! the order of the other backends. JSON columns are `text` (kept exactly as
//! sent; JSON text cannot contain a raw NUL), not `jsonb`, which would
//! rewrite them.

/// Numbered migrations; migration `i + 1` is `MIGRATIONS[i]`. Each runs in
/// its own transaction, under an advisory lock, with its row in
/// `schema_migrations`.
pub(super) const MIGRATIONS: &[(&str, &str)] = &[(
    "agents, facts, calls, call results, task results",
    r#"
CREATE TABLE schema_migrations (
    version     bigint PRIMARY KEY,
    applied_at  bigint NOT NULL,
    description text NOT NULL
);

CREATE TABLE agents (
    host         bytea PRIMARY KEY,
    name         bytea NOT NULL,
    addr         bytea NOT NULL,
    version      bytea NOT NULL,
    plugins      text NOT NULL,          -- JSON array of method names
    node         bytea,                  -- the server node holding the session
    first_seen   bigint NOT NULL,
    last_seen    bigint NOT NULL,
    connected_at bigint
);
CREATE INDEX agents_by_node ON agents (node) WHERE connected_at IS NOT NULL;

CREATE TABLE facts (
    host   bytea NOT NULL,
    method bytea NOT NULL,
    data   text NOT NULL,                -- JSON
    at     bigint NOT NULL,
    PRIMARY KEY (host, method)
);

-- A sequence: a call id is never reused, even after prune removed the newest.
CREATE TABLE calls (
    id          bigserial PRIMARY KEY,
    who         bytea NOT NULL,
    at          bigint NOT NULL,
    target      text NOT NULL,           -- JSON
    request     text NOT NULL,           -- JSON
    finished_at bigint,
    summary     text,                    -- JSON
    results     bigint NOT NULL DEFAULT 0  -- rows in call_results, for prune
);

-- seq: arrival order. UNIQUE (call, host) also serves call() and the cascade.
CREATE TABLE call_results (
    seq      bigserial PRIMARY KEY,
    call     bigint NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    host     bytea NOT NULL,
    at       bigint NOT NULL,
    retcode  bigint NOT NULL,
    response text NOT NULL,              -- JSON
    UNIQUE (call, host)
);
CREATE INDEX call_results_by_host ON call_results (host, call);

CREATE TABLE tasks (
    seq         bigserial PRIMARY KEY,
    host        bytea NOT NULL,
    task        bytea NOT NULL,
    received_at bigint NOT NULL,
    retcode     bigint NOT NULL,
    message     bytea NOT NULL,
    frame       text NOT NULL,           -- JSON: the task.done frame
    schedule    bytea,
    UNIQUE (host, task)
);
CREATE INDEX tasks_by_host ON tasks (host, received_at);
CREATE INDEX tasks_by_time ON tasks (received_at);
CREATE INDEX tasks_by_id ON tasks (task);
"#,
)];
