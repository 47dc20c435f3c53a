//! Every statement `SqliteStore` runs after opening, in one place, so that a
//! test can check each one's query plan against the schema's indexes.

pub(super) const AGENT_UPSERT: &str = "\
INSERT INTO agents (host, name, addr, version, plugins, node, first_seen, last_seen, connected_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7, ?7)
ON CONFLICT (host) DO UPDATE SET
    name = excluded.name, addr = excluded.addr, version = excluded.version,
    plugins = excluded.plugins, node = excluded.node,
    last_seen = max(last_seen, excluded.last_seen),
    connected_at = excluded.connected_at";

pub(super) const AGENT_GONE: &str = "\
UPDATE agents SET last_seen = max(last_seen, ?2),
    connected_at = CASE WHEN connected_at <= ?2 THEN NULL ELSE connected_at END
WHERE host = ?1";

/// A node's sessions ended: rare, so a scan of agents (no index on node).
pub(super) const NODE_GONE: &str = "\
UPDATE agents SET last_seen = max(last_seen, ?2), connected_at = NULL
WHERE node = ?1 AND connected_at <= ?2";

pub(super) const FACT_UPSERT: &str = "\
INSERT INTO facts (host, method, data, at) VALUES (?1, ?2, ?3, ?4)
ON CONFLICT (host, method) DO UPDATE SET data = excluded.data, at = excluded.at
WHERE excluded.at >= facts.at";

pub(super) const AGENT: &str = "\
SELECT host, name, addr, version, plugins, node, first_seen, last_seen, connected_at
FROM agents WHERE host = ?1";

pub(super) const AGENTS: &str = "\
SELECT host, name, addr, version, plugins, node, first_seen, last_seen, connected_at
FROM agents ORDER BY host";

pub(super) const FACTS_OF: &str =
    "SELECT method, data, at FROM facts WHERE host = ?1 ORDER BY method";

pub(super) const CALL_INSERT: &str =
    "INSERT INTO calls (who, at, target, request) VALUES (?1, ?2, ?3, ?4)";

pub(super) const CALL_EXISTS: &str = "SELECT 1 FROM calls WHERE id = ?1";

pub(super) const RESULT_INSERT: &str = "\
INSERT INTO call_results (call, host, at, retcode, response)
VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (call, host) DO NOTHING";

pub(super) const CALL_COUNT_RESULTS: &str = "UPDATE calls SET results = results + ?2 WHERE id = ?1";

pub(super) const CALL_END: &str = "UPDATE calls SET finished_at = ?2, summary = ?3 WHERE id = ?1";

/// Columns 0..7 as `call_row` reads them.
pub(super) const CALLS_BEFORE: &str = "\
SELECT id, who, at, target, request, finished_at, summary
FROM calls WHERE id < ?1 ORDER BY id DESC LIMIT ?2";

pub(super) const CALL: &str = "\
SELECT id, who, at, target, request, finished_at, summary FROM calls WHERE id = ?1";

pub(super) const RESULTS_OF: &str =
    "SELECT host, at, retcode, response FROM call_results WHERE call = ?1 ORDER BY seq";

pub(super) const HOST_CALLS: &str = "\
SELECT c.id, c.who, c.at, c.target, c.request, c.finished_at, c.summary,
       r.host, r.at, r.retcode, r.response
FROM call_results r JOIN calls c ON c.id = r.call
WHERE r.host = ?1 ORDER BY r.call DESC LIMIT ?2";

pub(super) const TASK_INSERT: &str = "\
INSERT INTO tasks (host, task, received_at, retcode, message, frame, schedule)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (host, task) DO NOTHING";

/// Columns as `task_row` reads them.
pub(super) const TASKS_OF_HOST: &str = "\
SELECT host, task, received_at, retcode, message, frame, schedule
FROM tasks WHERE host = ?1 ORDER BY received_at DESC, seq DESC LIMIT ?2";

pub(super) const TASKS: &str = "\
SELECT host, task, received_at, retcode, message, frame, schedule
FROM tasks ORDER BY received_at DESC, seq DESC LIMIT ?1";

pub(super) const TASK: &str = "\
SELECT host, task, received_at, retcode, message, frame, schedule
FROM tasks WHERE task = ?1 ORDER BY seq";

pub(super) const PRUNE_CALL_SIZES: &str = "SELECT id, at, results FROM calls ORDER BY id";

pub(super) const PRUNE_COUNT_RESULTS: &str = "SELECT count(*) FROM call_results WHERE call = ?1";

pub(super) const PRUNE_CALL: &str = "DELETE FROM calls WHERE id = ?1";

pub(super) const PRUNE_OLD_TASKS: &str = "\
DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks WHERE received_at < ?1 LIMIT ?2)";

pub(super) const COUNT_TASKS: &str = "SELECT count(*) FROM tasks";

pub(super) const PRUNE_OLDEST_TASKS: &str = "\
DELETE FROM tasks WHERE seq IN (SELECT seq FROM tasks ORDER BY received_at, seq LIMIT ?1)";

/// Every statement, and the full scans and sorts its plan is allowed.
#[cfg(test)]
pub(super) const ALL: &[(&str, &str, &[&str])] = &[
    ("AGENT_UPSERT", AGENT_UPSERT, &[]),
    ("AGENT_GONE", AGENT_GONE, &[]),
    // Once per dead node; the one-node server never calls it.
    ("NODE_GONE", NODE_GONE, &["SCAN agents"]),
    ("FACT_UPSERT", FACT_UPSERT, &[]),
    ("AGENT", AGENT, &[]),
    // All agents, in primary-key order: the scan is the point.
    ("AGENTS", AGENTS, &["SCAN agents"]),
    ("FACTS_OF", FACTS_OF, &[]),
    ("CALL_INSERT", CALL_INSERT, &[]),
    ("CALL_EXISTS", CALL_EXISTS, &[]),
    ("RESULT_INSERT", RESULT_INSERT, &[]),
    ("CALL_COUNT_RESULTS", CALL_COUNT_RESULTS, &[]),
    ("CALL_END", CALL_END, &[]),
    ("CALLS_BEFORE", CALLS_BEFORE, &[]),
    ("CALL", CALL, &[]),
    // One call's results (found by index) sorted into arrival order.
    ("RESULTS_OF", RESULTS_OF, &["TEMP B-TREE"]),
    ("HOST_CALLS", HOST_CALLS, &[]),
    ("TASK_INSERT", TASK_INSERT, &[]),
    ("TASKS_OF_HOST", TASKS_OF_HOST, &[]),
    ("TASKS", TASKS, &[]),
    ("TASK", TASK, &[]),
    // prune reads every call's size once per run (100 000 rows at most).
    ("PRUNE_CALL_SIZES", PRUNE_CALL_SIZES, &["SCAN calls"]),
    ("PRUNE_COUNT_RESULTS", PRUNE_COUNT_RESULTS, &[]),
    ("PRUNE_CALL", PRUNE_CALL, &[]),
    ("PRUNE_OLD_TASKS", PRUNE_OLD_TASKS, &[]),
    ("COUNT_TASKS", COUNT_TASKS, &["SCAN tasks"]),
    ("PRUNE_OLDEST_TASKS", PRUNE_OLDEST_TASKS, &[]),
];
