//! Starting a command off the executor threads: the user and group
//! lookups (NSS: files, but also LDAP or sssd, which can hang) and the
//! spawn up to `execve` (the child's `chdir` into a home on a dead NFS
//! mount can hang, and the vfork-style parent waits for it) run on a pool
//! of starter threads. The executor only hands over an order and gets the
//! result back through a channel and its waker, so its timers never wait
//! on either; an order that is not done by its deadline is answered by
//! the executor, and the starter, when it wakes up, gives up or hands
//! back a child that the executor kills.

use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use mio::Waker;

use crate::cgroup::{self, Cgroup, CgroupError, Kind, Limits};
use crate::identity::{self, Identity, IdentityError};
use crate::params::Request;
use crate::reaper;
use crate::spawn::{self, Child, Ids, Plan, SpawnError};

/// Waiting for a starter thread.
pub const QUEUED: u8 = 0;
/// Resolving user and group.
pub const LOOKUP: u8 = 1;
/// Between clone and execve.
pub const SPAWN: u8 = 2;
/// The starter is done (result sent).
pub const DONE: u8 = 3;
/// The executor gave up: do not start anything.
pub const ABANDONED: u8 = 4;

/// Starter threads at most; past it, orders wait for a free one (and
/// may reach their deadline waiting).
const MAX_STARTERS: usize = 64;
/// A starter thread idle this long exits (one is always kept), so that a
/// burst of commands does not leave dozens of threads behind.
const IDLE_EXIT: Duration = Duration::from_secs(30);
/// Stack of a starter thread.
const STACK_SIZE: usize = 512 * 1024;

/// Where an order stands; shared by the executor and the starter.
pub type Phase = Arc<AtomicU8>;

/// One command to start.
pub struct Order {
    pub ticket: u64,
    /// The request without its stdin (which stays with the executor).
    pub request: Request,
    pub with_stdin: bool,
    pub euid: libc::uid_t,
    pub egid: libc::gid_t,
    pub phase: Phase,
    /// The child's pid once it exists (0 before): written by the child
    /// itself, so the executor can kill one stuck before `execve`.
    pub child_pid: Arc<AtomicI32>,
    pub reply: Sender<Started>,
    pub waker: Arc<Waker>,
}

/// Why a command could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("abandoned")]
    Abandoned,
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
}

/// The outcome of an order.
pub struct Started {
    pub ticket: u64,
    pub result: Result<(Identity, Child), StartError>,
}

struct Pool {
    tx: Option<Sender<Order>>,
    rx: Arc<Mutex<Receiver<Order>>>,
    threads: usize,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);
/// Starter threads waiting for an order.
static IDLE: AtomicUsize = AtomicUsize::new(0);
/// Orders sent and not taken by a thread yet.
static WAITING: AtomicUsize = AtomicUsize::new(0);

fn pool() -> MutexGuard<'static, Option<Pool>> {
    // The pool is replaced whole, never left half-updated.
    POOL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hands `order` to a starter thread, starting one when none is idle
/// (a hung lookup keeps its thread; the next order gets another).
/// Gives the order back if no starter thread can run it.
pub fn submit(order: Order) -> Result<(), Box<Order>> {
    let mut guard = pool();
    let pool = guard.get_or_insert_with(|| {
        let (tx, rx) = mpsc::channel();
        Pool {
            tx: Some(tx),
            rx: Arc::new(Mutex::new(rx)),
            threads: 0,
        }
    });
    // Enough idle threads for every order waiting, this one included?
    let short = IDLE.load(Ordering::SeqCst) <= WAITING.load(Ordering::SeqCst);
    if short && pool.threads < MAX_STARTERS {
        let rx = Arc::clone(&pool.rx);
        match std::thread::Builder::new()
            .name("sync-bash-start".to_owned())
            // NSS modules and the vfork-style spawn (own child stack)
            // need little; a burst of commands may start many threads.
            .stack_size(STACK_SIZE)
            .spawn(move || serve(&rx))
        {
            Ok(_) => pool.threads += 1,
            Err(e) => log::error!("sync.bash: cannot start a starter thread: {e}"),
        }
    }
    if pool.threads == 0 {
        return Err(Box::new(order));
    }
    let Some(tx) = &pool.tx else {
        return Err(Box::new(order));
    };
    WAITING.fetch_add(1, Ordering::SeqCst);
    tx.send(order).map_err(|e| {
        WAITING.fetch_sub(1, Ordering::SeqCst);
        Box::new(e.0)
    })
}

fn serve(rx: &Mutex<Receiver<Order>>) {
    loop {
        IDLE.fetch_add(1, Ordering::SeqCst);
        let order = rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recv_timeout(IDLE_EXIT);
        IDLE.fetch_sub(1, Ordering::SeqCst);
        let order = match order {
            Ok(order) => order,
            Err(RecvTimeoutError::Timeout) => {
                if retire() {
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        WAITING.fetch_sub(1, Ordering::SeqCst);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&order)));
        let result = outcome.unwrap_or(Err(StartError::Abandoned));
        order.phase.store(DONE, Ordering::SeqCst);
        match order.reply.send(Started {
            ticket: order.ticket,
            result,
        }) {
            Ok(()) => {
                if let Err(e) = order.waker.wake() {
                    log::error!("sync.bash: cannot wake the executor: {e}");
                }
            }
            Err(back) => {
                // The executor is gone: nobody watches this child.
                if let Ok((_, child)) = back.0.result {
                    spawn::signal_group(child.pid, libc::SIGKILL);
                    reaper::untrack(child.pid);
                }
            }
        }
    }
}

/// Whether an idle starter thread may exit: not the last one.
fn retire() -> bool {
    let mut guard = pool();
    match guard.as_mut() {
        Some(pool) if pool.threads > 1 => {
            pool.threads -= 1;
            true
        }
        _ => false,
    }
}

/// Starter threads alive (for tests).
#[cfg(test)]
fn threads() -> usize {
    pool().as_ref().map_or(0, |p| p.threads)
}

/// Moves the order from `from` to `to` unless the executor gave up.
fn advance(phase: &AtomicU8, from: u8, to: u8) -> bool {
    phase
        .compare_exchange(from, to, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
}

/// The command's cgroup, where the host has them. Without a usable one a
/// command with no limits runs uncontained (said in its answer); one
/// with limits is refused.
fn contain(limits: &Limits) -> Result<Option<Cgroup>, CgroupError> {
    let layout = cgroup::layout();
    let limited = *limits != Limits::default();
    if layout.kind == Kind::None {
        return match (limits.memory_max, limits.pids_max, limits.cpu_max) {
            (Some(_), _, _) => Err(CgroupError::Unsupported("memory_max")),
            (_, Some(_), _) => Err(CgroupError::Unsupported("pids_max")),
            (_, _, Some(_)) => Err(CgroupError::Unsupported("cpu_max")),
            _ => Ok(None),
        };
    }
    match layout.create(limits) {
        Ok(cg) => Ok(Some(cg)),
        Err(e) if !limited => {
            log::warn!("sync.bash: running a command without its cgroup: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn run(order: &Order) -> Result<(Identity, Child), StartError> {
    if !advance(&order.phase, QUEUED, LOOKUP) {
        return Err(StartError::Abandoned);
    }
    let r = &order.request;
    let identity = identity::resolve(&r.user, r.group.as_deref())?;
    let switch = identity::needs_switch(&identity, order.euid, order.egid)?;
    let ids = switch.then(|| Ids {
        uid: identity.uid,
        gid: identity.gid,
        groups: identity.groups.clone(),
    });
    let env = identity::login_env(&identity, &r.env);
    let mut plan = Plan::new(
        &r.cmd,
        &env,
        r.cwd.as_deref(),
        &identity.home,
        ids,
        order.with_stdin,
    )?;
    plan.nice = r.nice;
    let cgroup = contain(&r.limits)?;
    plan.cgroup_procs = cgroup.as_ref().map(Cgroup::procs_fds).unwrap_or_default();
    if !advance(&order.phase, LOOKUP, SPAWN) {
        if let Some(cg) = cgroup {
            cg.remove(Duration::ZERO);
        }
        return Err(StartError::Abandoned);
    }
    let spawning = reaper::Spawning::enter(&order.child_pid);
    let mut child = match spawn::spawn(&plan, &order.child_pid) {
        Ok(child) => child,
        Err(e) => {
            if let Some(cg) = cgroup {
                cg.remove(Duration::ZERO);
            }
            return Err(e.into());
        }
    };
    child.cgroup = cgroup.map(|mut cg| {
        cg.close_fds();
        cg
    });
    reaper::track(child.pid);
    drop(spawning);
    Ok((identity, child))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Poll, Token};

    fn order(user: &str, phase: u8, reply: &Sender<Started>, waker: &Arc<Waker>) -> Order {
        Order {
            ticket: 7,
            request: Request {
                cmd: "true".into(),
                timeout: Duration::from_secs(5),
                user: user.into(),
                group: None,
                cwd: None,
                env: Vec::new(),
                stdin: Vec::new(),
                max_output: 16,
                id_len: 0,
                limits: Limits::default(),
                nice: None,
                truncate: Default::default(),
                transcript: false,
            },
            with_stdin: false,
            euid: 0,
            egid: 0,
            phase: Arc::new(AtomicU8::new(phase)),
            child_pid: Arc::new(AtomicI32::new(0)),
            reply: reply.clone(),
            waker: Arc::clone(waker),
        }
    }

    #[test]
    fn refusals_and_abandoned_orders_start_nothing() {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        let (tx, rx) = mpsc::channel();
        let o = order("no-such-user-hard-exec", QUEUED, &tx, &waker);
        let phase = Arc::clone(&o.phase);
        assert!(submit(o).is_ok());
        let s = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(s.ticket, 7);
        assert!(matches!(s.result, Err(StartError::Identity(_))));
        assert_eq!(phase.load(Ordering::SeqCst), DONE);
        // Given up on before a thread took it: no lookup, no child.
        assert!(submit(order("root", ABANDONED, &tx, &waker)).is_ok());
        let s = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        assert!(matches!(s.result, Err(StartError::Abandoned)));
        assert!(threads() >= 1);
    }
}
