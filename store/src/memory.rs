//! `MemoryStore`: the [`Store`] semantics in memory, for tests and
//! `--state-dir none`. One mutex around plain maps; queries scan, which is
//! fine at the sizes it is meant for.

use std::collections::{BTreeMap, HashSet};
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
    /// arrival sequence -> task
    tasks: BTreeMap<u64, TaskResult>,
    task_keys: HashSet<(String, String)>,
    last_task: u64,
}

struct StoredCall {
    row: CallRow,
    results: Vec<HostResult>,
    hosts: HashSet<String>,
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

/// Newest first: by `received_at`, then by arrival.
fn newest_tasks<'a>(tasks: impl Iterator<Item = (&'a u64, &'a TaskResult)>) -> Vec<TaskResult> {
    let mut v: Vec<(&u64, &TaskResult)> = tasks.collect();
    v.sort_by(|a, b| {
        b.1.received_at
            .cmp(&a.1.received_at)
            .then_with(|| b.0.cmp(a.0))
    });
    v.into_iter().map(|(_, t)| t.clone()).collect()
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
                hosts: HashSet::new(),
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
        for r in results {
            if stored.hosts.insert(r.host.clone()) {
                stored.results.push(r.clone());
            }
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
        Ok(inner
            .calls
            .values()
            .rev()
            .filter(|c| c.hosts.contains(host))
            .filter_map(|c| {
                c.results
                    .iter()
                    .find(|r| r.host == host)
                    .map(|r| (c.row.clone(), r.clone()))
            })
            .take(limit)
            .collect())
    }

    fn put_tasks(&self, results: &[TaskResult]) -> Result<usize, StoreError> {
        for t in results {
            check_json("task frame", &t.frame)?;
        }
        let mut inner = self.lock();
        let mut new = 0;
        for t in results {
            if inner.task_keys.insert((t.host.clone(), t.task.clone())) {
                inner.last_task = inner.last_task.saturating_add(1);
                let seq = inner.last_task;
                inner.tasks.insert(seq, t.clone());
                new += 1;
            }
        }
        Ok(new)
    }

    fn tasks(&self, host: Option<&str>, limit: usize) -> Result<Vec<TaskResult>, StoreError> {
        let inner = self.lock();
        let mut v = newest_tasks(
            inner
                .tasks
                .iter()
                .filter(|(_, t)| host.is_none_or(|h| t.host == h)),
        );
        v.truncate(limit);
        Ok(v)
    }

    fn task(&self, task: &str) -> Result<Vec<TaskResult>, StoreError> {
        Ok(self
            .lock()
            .tasks
            .values()
            .filter(|t| t.task == task)
            .cloned()
            .collect())
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
            if let Some(c) = inner.calls.remove(&victim.id) {
                pruned.calls += 1;
                pruned.results += c.results.len() as u64;
            }
        }

        let old = cutoff(now, retention.tasks);
        let expired: Vec<u64> = inner
            .tasks
            .iter()
            .filter(|(_, t)| t.received_at < old)
            .map(|(&seq, _)| seq)
            .collect();
        let mut drop_task = |inner: &mut Inner, seq: u64| {
            if let Some(t) = inner.tasks.remove(&seq) {
                inner.task_keys.remove(&(t.host, t.task));
                pruned.tasks += 1;
            }
        };
        for seq in expired {
            drop_task(&mut inner, seq);
        }
        let excess = (inner.tasks.len() as u64).saturating_sub(retention.max_tasks);
        if excess > 0 {
            // Oldest by received_at, then by arrival.
            let mut order: Vec<(Millis, u64)> = inner
                .tasks
                .iter()
                .map(|(&seq, t)| (t.received_at, seq))
                .collect();
            order.sort_unstable();
            for (_, seq) in order
                .into_iter()
                .take(usize::try_from(excess).unwrap_or(usize::MAX))
            {
                drop_task(&mut inner, seq);
            }
        }
        Ok(pruned)
    }
}
