//! Every statement `PgStore` runs after opening, in one place. Batches are
//! one statement each: the rows go as arrays (`unnest`), so 19 000 call
//! results are one round trip, not 19 000.
//!
//! Inserts of several rows assign the arrival order (`seq`) in the batch's
//! order, then insert in key order: two nodes inserting overlapping batches
//! at once take their row locks in the same order and cannot deadlock.

pub(super) const AGENTS_UPSERT: &str = "\
INSERT INTO agents (host, name, addr, version, plugins, node, first_seen, last_seen, connected_at)
SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bytea[], $4::bytea[], $5::text[],
                     $6::bytea[], $7::int8[], $8::int8[], $9::int8[])
ON CONFLICT (host) DO UPDATE SET
    name = excluded.name, addr = excluded.addr, version = excluded.version,
    plugins = excluded.plugins, node = excluded.node,
    last_seen = greatest(agents.last_seen, excluded.last_seen),
    connected_at = excluded.connected_at";

pub(super) const AGENTS_GONE: &str = "\
UPDATE agents SET last_seen = greatest(last_seen, $2),
    connected_at = CASE WHEN connected_at <= $2 THEN NULL ELSE connected_at END
WHERE host = ANY($1::bytea[])";

/// Through the partial index on the node of connected agents.
pub(super) const NODE_GONE: &str = "\
UPDATE agents SET last_seen = greatest(last_seen, $2), connected_at = NULL
WHERE node = $1 AND connected_at <= $2";

pub(super) const FACT_UPSERT: &str = "\
INSERT INTO facts (host, method, data, at) VALUES ($1, $2, $3, $4)
ON CONFLICT (host, method) DO UPDATE SET data = excluded.data, at = excluded.at
WHERE excluded.at >= facts.at";

pub(super) const AGENT: &str = "\
SELECT host, name, addr, version, plugins, node, first_seen, last_seen, connected_at
FROM agents WHERE host = $1";

pub(super) const AGENTS: &str = "\
SELECT host, name, addr, version, plugins, node, first_seen, last_seen, connected_at
FROM agents ORDER BY host";

pub(super) const FACTS_OF: &str =
    "SELECT method, data, at FROM facts WHERE host = $1 ORDER BY method";

pub(super) const CALL_INSERT: &str =
    "INSERT INTO calls (who, at, target, request) VALUES ($1, $2, $3, $4) RETURNING id";

/// Locks the call against a concurrent prune while its results go in.
pub(super) const CALL_LOCK: &str = "SELECT 1 FROM calls WHERE id = $1 FOR NO KEY UPDATE";

pub(super) const RESULTS_INSERT: &str = "\
INSERT INTO call_results (seq, call, host, at, retcode, response)
SELECT seq, $1, host, at, retcode, response FROM (
    SELECT nextval('call_results_seq_seq') AS seq, r.host, r.at, r.retcode, r.response
    FROM unnest($2::bytea[], $3::int8[], $4::int8[], $5::text[])
         WITH ORDINALITY AS r (host, at, retcode, response, ord)
    ORDER BY r.ord
) s ORDER BY host, seq
ON CONFLICT (call, host) DO NOTHING";

pub(super) const CALL_COUNT_RESULTS: &str = "UPDATE calls SET results = results + $2 WHERE id = $1";

pub(super) const CALL_END: &str = "UPDATE calls SET finished_at = $2, summary = $3 WHERE id = $1";

/// Columns 0..7 as `call_row` reads them.
pub(super) const CALLS_BEFORE: &str = "\
SELECT id, who, at, target, request, finished_at, summary
FROM calls WHERE id < $1 ORDER BY id DESC LIMIT $2";

pub(super) const CALL: &str = "\
SELECT id, who, at, target, request, finished_at, summary FROM calls WHERE id = $1";

pub(super) const RESULTS_OF: &str =
    "SELECT host, at, retcode, response FROM call_results WHERE call = $1 ORDER BY seq";

pub(super) const HOST_CALLS: &str = "\
SELECT c.id, c.who, c.at, c.target, c.request, c.finished_at, c.summary,
       r.host, r.at, r.retcode, r.response
FROM call_results r JOIN calls c ON c.id = r.call
WHERE r.host = $1 ORDER BY r.call DESC LIMIT $2";

pub(super) const TASKS_INSERT: &str = "\
INSERT INTO tasks (seq, host, task, received_at, retcode, message, frame, schedule)
SELECT seq, host, task, received_at, retcode, message, frame, schedule FROM (
    SELECT nextval('tasks_seq_seq') AS seq, t.host, t.task, t.received_at, t.retcode,
           t.message, t.frame, t.schedule
    FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::int8[], $5::bytea[], $6::text[],
                $7::bytea[])
         WITH ORDINALITY AS t (host, task, received_at, retcode, message, frame, schedule, ord)
    ORDER BY t.ord
) s ORDER BY host, task, seq
ON CONFLICT (host, task) DO NOTHING";

/// Columns as `task_row` reads them.
pub(super) const TASKS_OF_HOST: &str = "\
SELECT host, task, received_at, retcode, message, frame, schedule
FROM tasks WHERE host = $1 ORDER BY received_at DESC, seq DESC LIMIT $2";

pub(super) const TASKS: &str = "\
SELECT host, task, received_at, retcode, message, frame, schedule
FROM tasks ORDER BY received_at DESC, seq DESC LIMIT $1";

pub(super) const TASK: &str = "\
SELECT host, task, received_at, retcode, message, frame, schedule
FROM tasks WHERE task = $1 ORDER BY seq";

/// One node prunes at a time (a session lock, held over the chunks).
pub(super) const PRUNE_TRY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtext($1))";

pub(super) const PRUNE_UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext($1))";

pub(super) const PRUNE_CALL_SIZES: &str = "SELECT id, at, results FROM calls ORDER BY id";

pub(super) const PRUNE_LOCK_CALLS: &str =
    "SELECT id FROM calls WHERE id = ANY($1::int8[]) ORDER BY id FOR UPDATE";

pub(super) const PRUNE_COUNT_RESULTS: &str =
    "SELECT count(*) FROM call_results WHERE call = ANY($1::int8[])";

pub(super) const PRUNE_CALLS: &str = "DELETE FROM calls WHERE id = ANY($1::int8[])";

pub(super) const PRUNE_OLD_TASKS: &str = "\
DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks WHERE received_at < $1 LIMIT $2)";

pub(super) const COUNT_TASKS: &str = "SELECT count(*) FROM tasks";

pub(super) const PRUNE_OLDEST_TASKS: &str = "\
DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks ORDER BY received_at, seq LIMIT $1)";
