//! `MemoryStore`: the [`Store`] semantics in memory, for tests and
//! `--state-dir none`. One mutex around maps, with the same indexes as the
//! SQLite schema (tasks by time, by host and by id; calls by host), so that
//! it serves a fleet's worth of history without scanning it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use crate::{
    call_victims, check_json, cutoff, AgentRecord, AgentRow, CallId, CallRecord, CallRow, CallSize,
    Fact, HostResult, Millis, Pruned, Retention, Store, StoreError, TaskResult,
};

/// The [`Store`] in memory; nothing survives the process.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    agents: BTreeMap<String, AgentRow>,
    /// (host, method) -> fact
    facts: BTreeMap<(String, String), Fact>,
    calls: BTreeMap<CallId, StoredCall>,
    last_call: CallId,
    /// host -> the calls it has a result in
    calls_by_host: HashMap<String, BTreeSet<CallId>>,
    /// arrival sequence -> task
    tasks: BTreeMap<u64, TaskResult>,
    /// (host, task) -> arrival sequence
    task_keys: HashMap<(String, String), u64>,
    /// (received_at, arrival): newest first is this order reversed
    tasks_by_time: BTreeSet<(Millis, u64)>,
    tasks_by_host: HashMap<String, BTreeSet<(Millis, u64)>>,
    tasks_by_id: HashMap<String, BTreeSet<u64>>,
    last_task: u64,
}

struct StoredCall {
    row: CallRow,
    /// In arrival order.
    results: Vec<HostResult>,
    /// host -> index in `results`
    hosts: HashMap<String, usize>,
}

impl Inner {
    fn remove_call(&mut self, id: CallId) -> Option<StoredCall> {
        let call = self.calls.remove(&id)?;
        for host in call.hosts.keys() {
            if let Some(ids) = self.calls_by_host.get_mut(host) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.calls_by_host.remove(host);
                }
            }
        }
        Some(call)
    }

    fn insert_task(&mut self, t: &TaskResult) -> bool {
        let key = (t.host.clone(), t.task.clone());
        if self.task_keys.contains_key(&key) {
            return false;
        }
        self.last_task = self.last_task.saturating_add(1);
        let seq = self.last_task;
        self.task_keys.insert(key, seq);
        self.tasks_by_time.insert((t.received_at, seq));
        self.tasks_by_host
            .entry(t.host.clone())
            .or_default()
            .insert((t.received_at, seq));
        self.tasks_by_id
            .entry(t.task.clone())
            .or_default()
            .insert(seq);
        self.tasks.insert(seq, t.clone());
        true
    }

    fn remove_task(&mut self, seq: u64) -> bool {
        let Some(t) = self.tasks.remove(&seq) else {
            return false;
        };
        self.tasks_by_time.remove(&(t.received_at, seq));
        if let Some(set) = self.tasks_by_host.get_mut(&t.host) {
            set.remove(&(t.received_at, seq));
            if set.is_empty() {
                self.tasks_by_host.remove(&t.host);
            }
        }
        if let Some(set) = self.tasks_by_id.get_mut(&t.task) {
            set.remove(&seq);
            if set.is_empty() {
                self.tasks_by_id.remove(&t.task);
            }
        }
        self.task_keys.remove(&(t.host, t.task));
        true
    }

    /// Tasks by (received_at, seq) keys, as stored.
    fn tasks_at<'a>(&'a self, keys: impl Iterator<Item = &'a (Millis, u64)>) -> Vec<TaskResult> {
        keys.filter_map(|(_, seq)| self.tasks.get(seq).cloned())
            .collect()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the maps consistent (every
        // method validates before it mutates), so a poisoned lock is usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
    fn agents_seen(&self, batch: &[AgentRecord]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for a in batch {
            match inner.agents.get_mut(&a.host) {
                Some(row) => {
                    row.name.clone_from(&a.name);
                    row.addr.clone_from(&a.addr);
                    row.version.clone_from(&a.version);
                    row.plugins.clone_from(&a.plugins);
                    row.node.clone_from(&a.node);
                    row.last_seen = row.last_seen.max(a.connected_at);
                    row.connected_at = Some(a.connected_at);
                }
                None => {
                    inner.agents.insert(
                        a.host.clone(),
                        AgentRow {
                            host: a.host.clone(),
                            name: a.name.clone(),
                            addr: a.addr.clone(),
                            version: a.version.clone(),
                            plugins: a.plugins.clone(),
                            node: a.node.clone(),
                            first_seen: a.connected_at,
                            last_seen: a.connected_at,
                            connected_at: Some(a.connected_at),
                            facts: Vec::new(),
                        },
                    );
                }
            }
        }
        Ok(())
    }

    fn agents_gone(&self, hosts: &[String], at: Millis) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for h in hosts {
            if let Some(row) = inner.agents.get_mut(h) {
                row.last_seen = row.last_seen.max(at);
                if row.connected_at.is_some_and(|c| c <= at) {
                    row.connected_at = None;
                }
            }
        }
        Ok(())
    }

    fn node_gone(&self, node: &str, at: Millis) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let mut n = 0;
        for row in inner.agents.values_mut() {
            if row.node.as_deref() == Some(node) && row.connected_at.is_some_and(|c| c <= at) {
                row.last_seen = row.last_seen.max(at);
                row.connected_at = None;
                n += 1;
            }
        }
        Ok(n)
    }

    fn agent_fact(
        &self,
        host: &str,
        method: &str,
        data: &str,
        at: Millis,
    ) -> Result<(), StoreError> {
        check_json("fact data", data)?;
        let mut inner = self.lock();
        let key = (host.to_owned(), method.to_owned());
        if inner.facts.get(&key).is_some_and(|f| f.at > at) {
            return Ok(());
        }
        inner.facts.insert(
            key,
            Fact {
                method: method.to_owned(),
                data: data.to_owned(),
                at,
            },
        );
        Ok(())
    }

    fn agent(&self, host: &str) -> Result<Option<AgentRow>, StoreError> {
        let inner = self.lock();
        let Some(row) = inner.agents.get(host) else {
            return Ok(None);
        };
        let mut row = row.clone();
        row.facts = inner
            .facts
            .range((host.to_owned(), String::new())..)
            .take_while(|((h, _), _)| h == host)
            .map(|(_, f)| f.clone())
            .collect();
        Ok(Some(row))
    }

    fn agents(&self) -> Result<Vec<AgentRow>, StoreError> {
        Ok(self.lock().agents.values().cloned().collect())
    }

    fn call_begin(&self, call: &CallRecord) -> Result<CallId, StoreError> {
        check_json("call target", &call.target)?;
        check_json("call request", &call.request)?;
        let mut inner = self.lock();
        let id = inner.last_call.saturating_add(1);
        inner.last_call = id;
        inner.calls.insert(
            id,
            StoredCall {
                row: CallRow {
                    id,
                    who: call.who.clone(),
                    at: call.at,
                    target: call.target.clone(),
                    request: call.request.clone(),
                    finished_at: None,
                    summary: None,
                },
                results: Vec::new(),
                hosts: HashMap::new(),
            },
        );
        Ok(id)
    }

    fn call_results(&self, call: CallId, results: &[HostResult]) -> Result<(), StoreError> {
        for r in results {
            check_json("host result response", &r.response)?;
        }
        let mut inner = self.lock();
        let stored = inner
            .calls
            .get_mut(&call)
            .ok_or(StoreError::UnknownCall(call))?;
        let mut new_hosts = Vec::new();
        for r in results {
            if !stored.hosts.contains_key(&r.host) {
                stored.hosts.insert(r.host.clone(), stored.results.len());
                stored.results.push(r.clone());
                new_hosts.push(r.host.clone());
            }
        }
        for host in new_hosts {
            inner.calls_by_host.entry(host).or_default().insert(call);
        }
        Ok(())
    }

    fn call_end(&self, call: CallId, summary: &str, at: Millis) -> Result<(), StoreError> {
        check_json("call summary", summary)?;
        let mut inner = self.lock();
        let stored = inner
            .calls
            .get_mut(&call)
            .ok_or(StoreError::UnknownCall(call))?;
        stored.row.finished_at = Some(at);
        stored.row.summary = Some(summary.to_owned());
        Ok(())
    }

    fn calls(&self, limit: usize, before: Option<CallId>) -> Result<Vec<CallRow>, StoreError> {
        let inner = self.lock();
        let below = before.unwrap_or(CallId::MAX);
        Ok(inner
            .calls
            .range(..below)
            .rev()
            .take(limit)
            .map(|(_, c)| c.row.clone())
            .collect())
    }

    fn call(&self, id: CallId) -> Result<Option<(CallRow, Vec<HostResult>)>, StoreError> {
        Ok(self
            .lock()
            .calls
            .get(&id)
            .map(|c| (c.row.clone(), c.results.clone())))
    }

    fn host_calls(
        &self,
        host: &str,
        limit: usize,
    ) -> Result<Vec<(CallRow, HostResult)>, StoreError> {
        let inner = self.lock();
        let Some(ids) = inner.calls_by_host.get(host) else {
            return Ok(Vec::new());
        };
        Ok(ids
            .iter()
            .rev()
            .filter_map(|id| {
                let c = inner.calls.get(id)?;
                let r = c.results.get(*c.hosts.get(host)?)?;
                Some((c.row.clone(), r.clone()))
            })
            .take(limit)
            .collect())
    }

    fn put_tasks(&self, results: &[TaskResult]) -> Result<usize, StoreError> {
        for t in results {
            check_json("task frame", &t.frame)?;
        }
        let mut inner = self.lock();
        Ok(results.iter().filter(|t| inner.insert_task(t)).count())
    }

    fn tasks(&self, host: Option<&str>, limit: usize) -> Result<Vec<TaskResult>, StoreError> {
        let inner = self.lock();
        Ok(match host {
            None => inner.tasks_at(inner.tasks_by_time.iter().rev().take(limit)),
            Some(h) => match inner.tasks_by_host.get(h) {
                Some(keys) => inner.tasks_at(keys.iter().rev().take(limit)),
                None => Vec::new(),
            },
        })
    }

    fn task(&self, task: &str) -> Result<Vec<TaskResult>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .tasks_by_id
            .get(task)
            .map(|seqs| {
                seqs.iter()
                    .filter_map(|seq| inner.tasks.get(seq).cloned())
                    .collect()
            })
            .unwrap_or_default())
    }

    fn prune(&self, now: Millis, retention: &Retention) -> Result<Pruned, StoreError> {
        let mut inner = self.lock();
        let mut pruned = Pruned::default();
        let sizes: Vec<CallSize> = inner
            .calls
            .values()
            .map(|c| CallSize {
                id: c.row.id,
                at: c.row.at,
                results: c.results.len() as u64,
            })
            .collect();
        for victim in call_victims(&sizes, now, retention) {
            if let Some(c) = inner.remove_call(victim.id) {
                pruned.calls += 1;
                pruned.results += c.results.len() as u64;
            }
        }

        let old = cutoff(now, retention.tasks);
        let expired: Vec<u64> = inner
            .tasks_by_time
            .range(..(old, 0))
            .map(|&(_, seq)| seq)
            .collect();
        for seq in expired {
            if inner.remove_task(seq) {
                pruned.tasks += 1;
            }
        }
        let excess = (inner.tasks.len() as u64).saturating_sub(retention.max_tasks);
        // Oldest by received_at, then by arrival.
        let oldest: Vec<u64> = inner
            .tasks_by_time
            .iter()
            .take(usize::try_from(excess).unwrap_or(usize::MAX))
            .map(|&(_, seq)| seq)
            .collect();
        for seq in oldest {
            if inner.remove_task(seq) {
                pruned.tasks += 1;
            }
        }
        Ok(pruned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn check_indexes(inner: &Inner) {
        let n = inner.tasks.len();
        assert_eq!(inner.task_keys.len(), n);
        assert_eq!(inner.tasks_by_time.len(), n);
        assert_eq!(
            inner
                .tasks_by_host
                .values()
                .map(BTreeSet::len)
                .sum::<usize>(),
            n
        );
        assert_eq!(
            inner.tasks_by_id.values().map(BTreeSet::len).sum::<usize>(),
            n
        );
        assert!(inner.tasks_by_host.values().all(|s| !s.is_empty()));
        assert!(inner.tasks_by_id.values().all(|s| !s.is_empty()));
        let pairs: usize = inner.calls.values().map(|c| c.hosts.len()).sum();
        assert_eq!(
            inner
                .calls_by_host
                .values()
                .map(BTreeSet::len)
                .sum::<usize>(),
            pairs
        );
        for c in inner.calls.values() {
            assert_eq!(c.hosts.len(), c.results.len());
            for (h, &i) in &c.hosts {
                assert_eq!(&c.results[i].host, h);
                assert!(inner.calls_by_host[h].contains(&c.row.id));
            }
        }
    }

    /// The indexes always describe exactly what is stored: nothing stale is
    /// left behind by prune (a leak in a long-running `--state-dir none`).
    #[test]
    fn indexes_stay_exact_through_inserts_duplicates_and_prunes() {
        let s = MemoryStore::new();
        for round in 0..30i64 {
            let tasks: Vec<TaskResult> = (0..20)
                .map(|i| TaskResult {
                    host: format!("h{}", i % 4),
                    task: format!("t{}", (round * 7 + i) % 50),
                    received_at: round * 10 + i % 3,
                    retcode: 0,
                    message: String::new(),
                    frame: "{}".into(),
                    schedule: None,
                })
                .collect();
            s.put_tasks(&tasks).unwrap();
            let id = s
                .call_begin(&CallRecord {
                    who: "w".into(),
                    at: round * 10,
                    target: "{}".into(),
                    request: "{}".into(),
                })
                .unwrap();
            let results: Vec<HostResult> = (0..5)
                .map(|i| HostResult {
                    host: format!("h{}", (round + i) % 6),
                    at: round,
                    retcode: 0,
                    response: "{}".into(),
                })
                .collect();
            s.call_results(id, &results).unwrap();
            check_indexes(&s.lock());
            let retention = Retention {
                calls: Duration::from_millis(100),
                tasks: Duration::from_millis(120),
                max_calls: 8,
                max_results: 30,
                max_tasks: 60,
            };
            s.prune(round * 10, &retention).unwrap();
            check_indexes(&s.lock());
        }
        assert!(!s.lock().tasks.is_empty());
    }
}
