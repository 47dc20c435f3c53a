//! The executor: one thread and one `mio::Poll` over every running
//! command's pipes and pidfd, a `Waker` through which `call` and `cancel`
//! reach it, and the commands' deadlines as the poll timeout.
//!
//! A command is answered when its pidfd turns readable (bash exited), not
//! when its pipes reach EOF: a daemon started in the background may keep
//! a copy of stdout open for ever.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use basicagent_abi::ffi::CallId;
use basicagent_abi::{retcode, Call};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::capture::{Capture, Transcript, Truncate};
use crate::cgroup::{self, Cgroup};
use crate::identity::Identity;
use crate::job::{GroupSignal, Lifecycle, StopReason};
use crate::params::{Config, Request};
use crate::reaper::{self, Watched};
use crate::report::{self, Finished, FrameBound};
use crate::spawn::{self, Child, Exit, Stage};
use crate::starter::{self, Order, Phase, StartError, Started};

const WAKER: Token = Token(usize::MAX);
const KIND_PID: usize = 0;
const KIND_STDOUT: usize = 1;
const KIND_STDERR: usize = 2;
const KIND_STDIN: usize = 3;
/// Bytes per read; one buffer reused for every stream.
const CHUNK: usize = 64 * 1024;
/// Reads per stream per turn, so that one chatty command cannot starve
/// the others (the rest is read on the next turn).
const READS_PER_TURN: usize = 16;
/// Reads per stream after bash exited: what is already in the pipe, but
/// bounded, since a background process may still be writing.
const READS_AT_EXIT: usize = 64;
/// How long `fini` waits for killed commands to be reaped.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// A slot in the concurrency limit, released when dropped (whatever path
/// the command ends on, a panic included).
pub struct Permit(&'static AtomicUsize);

impl Permit {
    /// Takes a slot if fewer than `max` are taken.
    pub fn acquire(counter: &'static AtomicUsize, max: usize) -> Option<Permit> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(counter))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A validated request on its way to the executor.
pub struct Job {
    pub call: Call,
    pub request: Request,
    pub permit: Permit,
}

/// A peek (`{"peek":CALL_ID}`) on its way to every executor. The one
/// running the target call answers it; when the last executor lets go
/// of it unanswered (none runs that call, or the call has been answered),
/// dropping it answers `3021`. No executor (none started, or all gone):
/// `call`'s own drop answers at once.
pub struct Peek {
    target: CallId,
    /// Length of the peek request's `id` (for the frame bound).
    id_len: usize,
    call: Mutex<Option<Call>>,
}

impl Peek {
    pub fn new(call: Call, target: CallId, id_len: usize) -> Self {
        Peek {
            target,
            id_len,
            call: Mutex::new(Some(call)),
        }
    }

    fn take(&self) -> Option<Call> {
        self.call.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

impl Drop for Peek {
    fn drop(&mut self) {
        let call = self.call.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(call) = call.take() {
            let code = retcode::INVALID_PARAMS;
            call.fail(
                code,
                &format!(
                    "{}: no running command with call id {}",
                    retcode::message(code),
                    self.target
                ),
            );
        }
    }
}

/// What other threads tell the executor.
pub enum Msg {
    Start(Box<Job>),
    Cancel(CallId),
    Peek(Arc<Peek>),
    /// Kill everything, answer every call, stop; then signal the sender.
    Shutdown(Sender<()>),
}

/// The other threads' side of the executor.
pub struct Handle {
    tx: Sender<Msg>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Handle {
    /// Starts the executor thread.
    pub fn start(config: Config) -> io::Result<Handle> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let executor = Executor::new(poll, rx, config, Arc::clone(&waker));
        let thread = std::thread::Builder::new()
            .name("sync-bash".to_owned())
            .spawn(move || {
                let outcome =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| executor.run()));
                if outcome.is_err() {
                    log::error!("sync.bash executor panicked; its calls were answered 3025");
                }
            })?;
        Ok(Handle {
            tx,
            waker,
            thread: Some(thread),
        })
    }

    /// Hands a message to the executor; gives it back if the executor is
    /// gone.
    pub fn send(&self, msg: Msg) -> Result<(), Msg> {
        self.tx.send(msg).map_err(|e| e.0)?;
        if let Err(e) = self.waker.wake() {
            log::error!("sync.bash: cannot wake the executor: {e}");
        }
        Ok(())
    }
}

/// Kills every command of every executor, answers every call, and stops
/// the threads (waits at most `wait` in all).
pub fn shutdown_all(handles: Vec<Handle>, wait: Duration) {
    let deadline = Instant::now() + wait;
    let mut stopping = Vec::new();
    for handle in handles {
        let (done_tx, done_rx) = mpsc::channel();
        if handle.send(Msg::Shutdown(done_tx)).is_ok() {
            stopping.push((handle, done_rx));
        }
    }
    for (mut handle, done_rx) in stopping {
        let left = deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_ok() {
            if let Some(thread) = handle.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

struct Stream {
    fd: Option<OwnedFd>,
    capture: Capture,
    ready: bool,
}

struct StdinFeed {
    fd: Option<OwnedFd>,
    data: Vec<u8>,
    written: usize,
    ready: bool,
}

struct Running {
    call: Call,
    /// Released before the call is answered, so a caller that gets the
    /// answer can start a new command at once.
    permit: Option<Permit>,
    pid: libc::pid_t,
    pidfd: OwnedFd,
    failure: OwnedFd,
    _stdin_keepalive: Option<OwnedFd>,
    stdout: Stream,
    stderr: Stream,
    stdin: StdinFeed,
    exited: bool,
    lifecycle: Lifecycle,
    identity: Identity,
    cwd: Option<String>,
    timeout_s: u64,
    started: Instant,
    id_len: usize,
    /// Descendants found when the agent stopped the command, killed
    /// after bash if they left its process group.
    watched: Vec<Watched>,
    /// The command's cgroup (`None`: process group and subreaper only).
    cgroup: Option<Cgroup>,
    /// Pids the agent found in the cgroup when it stopped the command.
    signalled: HashSet<libc::pid_t>,
    /// The interleaved view, when asked for.
    transcript: Option<Transcript>,
}

/// A command handed to a starter thread, not started yet.
struct Pending {
    call: Call,
    permit: Permit,
    request: Request,
    /// The stdin bytes, kept here (the starter does not need them).
    stdin: Vec<u8>,
    /// When the call is answered if the starter has not reported.
    deadline: Instant,
    /// The request's arrival: its timeout and elapsed_ms count from here.
    arrived: Instant,
    phase: Phase,
    /// The child's pid once it exists (see [`Order::child_pid`]).
    child_pid: Arc<AtomicI32>,
    /// Peeks that came before the command started: answered once it has.
    peeks: Vec<Arc<Peek>>,
}

struct Executor {
    poll: Poll,
    rx: Receiver<Msg>,
    config: Config,
    slots: Vec<Option<Running>>,
    free: Vec<usize>,
    by_call: HashMap<CallId, usize>,
    scratch: Vec<u8>,
    euid: libc::uid_t,
    egid: libc::gid_t,
    waker: Arc<Waker>,
    started_tx: Sender<Started>,
    started_rx: Receiver<Started>,
    pending: HashMap<u64, Pending>,
    pending_by_call: HashMap<CallId, u64>,
    next_ticket: u64,
}

fn token(slot: usize, kind: usize) -> Token {
    Token(slot << 2 | kind)
}

fn deregister(poll: &Poll, fd: &OwnedFd) {
    // Deregister before close: a forked child may still hold a copy of the
    // descriptor, which would keep the epoll registration alive.
    let _ = poll.registry().deregister(&mut SourceFd(&fd.as_raw_fd()));
}

impl Stream {
    fn new(fd: OwnedFd, cap: usize, mode: Truncate) -> Self {
        Stream {
            fd: Some(fd),
            capture: Capture::with_mode(cap, mode),
            ready: true,
        }
    }

    /// Reads at most `reads` chunks; returns whether more may be waiting.
    fn pump(
        &mut self,
        poll: &Poll,
        scratch: &mut [u8],
        reads: usize,
        mut transcript: Option<(&mut Transcript, bool)>,
    ) -> bool {
        let Some(fd) = &self.fd else { return false };
        if !self.ready {
            return false;
        }
        for _ in 0..reads {
            match spawn::read_fd(fd, scratch) {
                Ok(0) => {
                    self.close(poll);
                    return false;
                }
                Ok(n) => {
                    self.capture.push(&scratch[..n]);
                    if let Some((t, stderr)) = transcript.as_mut() {
                        t.push(*stderr, &scratch[..n]);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.ready = false;
                    return false;
                }
                Err(e) => {
                    log::warn!("sync.bash: reading command output: {e}");
                    self.close(poll);
                    return false;
                }
            }
        }
        true
    }

    fn close(&mut self, poll: &Poll) {
        if let Some(fd) = self.fd.take() {
            deregister(poll, &fd);
        }
        self.ready = false;
    }
}

impl StdinFeed {
    /// Writes what the pipe takes; closes it when all is written, so the
    /// command sees EOF.
    fn pump(&mut self, poll: &Poll) {
        let Some(fd) = &self.fd else { return };
        if !self.ready {
            return;
        }
        while self.written < self.data.len() {
            match spawn::write_fd(fd, &self.data[self.written..]) {
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.ready = false;
                    return;
                }
                Err(e) => {
                    log::warn!("sync.bash: writing command stdin: {e}");
                    break;
                }
            }
        }
        self.close(poll);
    }

    fn close(&mut self, poll: &Poll) {
        if let Some(fd) = self.fd.take() {
            deregister(poll, &fd);
        }
        self.data = Vec::new();
        self.ready = false;
    }
}

impl Executor {
    fn new(poll: Poll, rx: Receiver<Msg>, config: Config, waker: Arc<Waker>) -> Self {
        let (euid, egid) = spawn::effective_ids();
        let (started_tx, started_rx) = mpsc::channel();
        Executor {
            waker,
            started_tx,
            started_rx,
            pending: HashMap::new(),
            pending_by_call: HashMap::new(),
            next_ticket: 0,
            poll,
            rx,
            config,
            slots: Vec::new(),
            free: Vec::new(),
            by_call: HashMap::new(),
            scratch: vec![0; CHUNK],
            euid,
            egid,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut busy = false;
        loop {
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                self.next_deadline(Instant::now())
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("sync.bash: poll failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            for event in events.iter() {
                self.mark(event.token());
            }
            // Started children first: a cancel or peek just sent for one
            // then finds it running.
            while let Ok(started) = self.started_rx.try_recv() {
                self.started(started);
            }
            loop {
                match self.rx.try_recv() {
                    Ok(Msg::Start(job)) => self.start(*job, Instant::now()),
                    Ok(Msg::Cancel(id)) => self.stop(id, StopReason::Cancelled, Instant::now()),
                    Ok(Msg::Peek(peek)) => self.peek(&peek),
                    Ok(Msg::Shutdown(done)) => {
                        self.shutdown();
                        let _ = done.send(());
                        return;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.shutdown();
                        return;
                    }
                }
            }
            while let Ok(started) = self.started_rx.try_recv() {
                self.started(started);
            }
            busy = self.service();
            self.timers(Instant::now());
        }
    }

    /// Records a readiness hint.
    fn mark(&mut self, token: Token) {
        if token == WAKER {
            return;
        }
        let Some(Some(job)) = self.slots.get_mut(token.0 >> 2) else {
            return;
        };
        match token.0 & 3 {
            KIND_PID => job.exited = true,
            KIND_STDOUT => job.stdout.ready = true,
            KIND_STDERR => job.stderr.ready = true,
            _ => job.stdin.ready = true,
        }
    }

    fn next_deadline(&self, now: Instant) -> Option<Duration> {
        self.slots
            .iter()
            .flatten()
            .filter_map(|job| job.lifecycle.next_deadline())
            .chain(self.pending.values().map(|p| p.deadline))
            .min()
            .map(|d| d.saturating_duration_since(now))
    }

    /// Moves bytes and answers exited commands; returns whether some
    /// stream still has bytes waiting (then the next poll does not sleep).
    fn service(&mut self) -> bool {
        let mut more = false;
        for slot in 0..self.slots.len() {
            let Some(job) = &mut self.slots[slot] else {
                continue;
            };
            more |= job.stdout.pump(
                &self.poll,
                &mut self.scratch,
                READS_PER_TURN,
                job.transcript.as_mut().map(|t| (t, false)),
            );
            more |= job.stderr.pump(
                &self.poll,
                &mut self.scratch,
                READS_PER_TURN,
                job.transcript.as_mut().map(|t| (t, true)),
            );
            job.stdin.pump(&self.poll);
            if job.exited {
                self.finish(slot);
            }
        }
        more
    }

    fn timers(&mut self, now: Instant) {
        for job in self.slots.iter_mut().flatten() {
            if let Some(signal) = job.lifecycle.handle_timer(now) {
                stop_group(job, signal);
            }
        }
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(&t, _)| t)
            .collect();
        for ticket in late {
            self.give_up(ticket, now);
        }
    }

    /// A start did not finish by its deadline: answer without running
    /// anything (a child that appears later is killed in `started`).
    fn give_up(&mut self, ticket: u64, now: Instant) {
        let Some(p) = self.pending.get(&ticket) else {
            return;
        };
        let mut phase = p.phase.load(Ordering::SeqCst);
        loop {
            if phase == starter::DONE {
                return; // its result is on the way: handled next turn
            }
            match p.phase.compare_exchange(
                phase,
                starter::ABANDONED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(now_phase) => phase = now_phase,
            }
        }
        let Some(p) = self.pending.remove(&ticket) else {
            return;
        };
        self.pending_by_call.remove(&p.call.id());
        let waited = now.saturating_duration_since(p.arrived).as_millis();
        let r = &p.request;
        let message = match phase {
            starter::QUEUED => format!(
                "Plugin failure: no starter thread was free within {waited} ms (user lookups or \
                 chdir hanging on other commands); nothing was run"
            ),
            starter::LOOKUP => format!(
                "Plugin failure: looking up user {:?}{} did not finish within {waited} ms (is the \
                 user database (NSS: files, LDAP, sssd) answering?); nothing was run",
                r.user,
                r.group
                    .as_deref()
                    .map(|g| format!(" and group {g:?}"))
                    .unwrap_or_default()
            ),
            _ => {
                // The child is stuck before execve (its starter waits in
                // clone): kill it. Its pid cannot have been reused: it is
                // not reaped before the starter reports it.
                let pid = p.child_pid.load(Ordering::SeqCst);
                if pid > 1 {
                    // SAFETY: kill(2) on our own unreaped child.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                format!(
                    "Plugin failure: the command did not reach execve within {waited} ms (chdir into \
                     {} hanging?); it was killed, nothing was run",
                    r.cwd.as_deref().unwrap_or("the user's home")
                )
            }
        };
        log::warn!("sync.bash: {message}");
        drop(p.permit);
        p.call.fail(retcode::PLUGIN_FAILURE, &message);
    }

    fn stop(&mut self, id: CallId, reason: StopReason, now: Instant) {
        if let Some(ticket) = self.pending_by_call.remove(&id) {
            // Not started yet: the starter gives up, or its child is
            // killed when it reports.
            if let Some(p) = self.pending.remove(&ticket) {
                p.phase.store(starter::ABANDONED, Ordering::SeqCst);
                drop(p.permit);
                let message = match reason {
                    StopReason::Shutdown => "Cancelled: the agent is shutting down",
                    _ => "Cancelled: before the command started",
                };
                p.call.fail(retcode::CANCELLED, message);
            }
            return;
        }
        let Some(&slot) = self.by_call.get(&id) else {
            return;
        };
        if let Some(Some(job)) = self.slots.get_mut(slot) {
            if let Some(signal) = job.lifecycle.handle_stop(reason, now) {
                stop_group(job, signal);
            }
        }
    }

    /// Answers a peek if this executor runs its target; otherwise leaves
    /// it (the last holder's drop answers `3021`). Never changes the
    /// captures; reads what is already in the pipes first (bounded), so
    /// the answer is as fresh as a turn of the loop.
    fn peek(&mut self, peek: &Arc<Peek>) {
        if let Some(ticket) = self.pending_by_call.get(&peek.target) {
            if let Some(p) = self.pending.get_mut(ticket) {
                p.peeks.push(Arc::clone(peek));
            }
            return;
        }
        let Some(&slot) = self.by_call.get(&peek.target) else {
            return;
        };
        let Some(Some(job)) = self.slots.get_mut(slot) else {
            return;
        };
        if job.exited {
            // bash is gone: answer the command first; the peek then finds
            // no running command.
            return self.finish(slot);
        }
        job.stdout.pump(
            &self.poll,
            &mut self.scratch,
            READS_PER_TURN,
            job.transcript.as_mut().map(|t| (t, false)),
        );
        job.stderr.pump(
            &self.poll,
            &mut self.scratch,
            READS_PER_TURN,
            job.transcript.as_mut().map(|t| (t, true)),
        );
        let Some(call) = peek.take() else {
            return;
        };
        let data = report::peek_data(
            job.pid,
            job.started.elapsed().as_millis() as u64,
            &job.stdout.capture.peek(),
            &job.stderr.capture.peek(),
            FrameBound {
                max_frame: self.config.max_frame,
                id_len: peek.id_len,
            },
        );
        call.success(&data);
    }

    /// Hands the command to a starter thread (identity lookups and the
    /// spawn must not block this loop); `started` takes it from there.
    fn start(&mut self, job: Job, now: Instant) {
        let Job {
            call,
            mut request,
            permit,
        } = job;
        let stdin = std::mem::take(&mut request.stdin);
        let ticket = self.next_ticket;
        self.next_ticket = self.next_ticket.wrapping_add(1);
        let phase: Phase = Arc::new(AtomicU8::new(starter::QUEUED));
        let child_pid = Arc::new(AtomicI32::new(0));
        let wait = request.timeout.min(self.config.start_timeout);
        let deadline = now.checked_add(wait).unwrap_or(now);
        let order = Order {
            ticket,
            request: request.clone(),
            with_stdin: !stdin.is_empty(),
            euid: self.euid,
            egid: self.egid,
            phase: Arc::clone(&phase),
            child_pid: Arc::clone(&child_pid),
            reply: self.started_tx.clone(),
            waker: Arc::clone(&self.waker),
        };
        if starter::submit(order).is_err() {
            drop(permit);
            return call.fail(
                retcode::PLUGIN_FAILURE,
                "Plugin failure: no thread to start the command",
            );
        }
        self.pending_by_call.insert(call.id(), ticket);
        self.pending.insert(
            ticket,
            Pending {
                call,
                permit,
                request,
                stdin,
                deadline,
                arrived: now,
                phase,
                child_pid,
                peeks: Vec::new(),
            },
        );
    }

    /// A starter reported: watch the new child (and answer the peeks
    /// that waited for it), or answer the refusal.
    fn started(&mut self, started: Started) {
        let peeks = self
            .pending
            .get_mut(&started.ticket)
            .map(|p| std::mem::take(&mut p.peeks))
            .unwrap_or_default();
        self.watch(started);
        for peek in peeks {
            self.peek(&peek);
        }
    }

    fn watch(&mut self, started: Started) {
        let Started { ticket, result } = started;
        let Some(p) = self.pending.remove(&ticket) else {
            // Answered already (deadline or cancel): kill what came late.
            if let Ok((_, child)) = result {
                log::warn!(
                    "sync.bash: killing command {} that started after its call was answered",
                    child.pid
                );
                spawn::signal_group(child.pid, libc::SIGKILL);
                if let Some(cg) = child.cgroup {
                    cg.kill();
                    cgroup::linger(cg);
                }
                // The reaper takes it from here.
                reaper::untrack(child.pid);
            }
            return;
        };
        self.pending_by_call.remove(&p.call.id());
        let Pending {
            call,
            permit,
            mut request,
            stdin,
            arrived,
            ..
        } = p;
        request.stdin = stdin;
        let (identity, child) = match result {
            Ok(found) => found,
            Err(StartError::Identity(e)) => {
                let code = e.retcode();
                drop(permit);
                return call.fail(code, &format!("{}: {e}", retcode::message(code)));
            }
            Err(e) => {
                drop(permit);
                return call.fail(retcode::PLUGIN_FAILURE, &format!("Plugin failure: {e}"));
            }
        };
        // The timeout counts from the request's arrival.
        let now = arrived;
        let Child {
            pid,
            pidfd,
            stdout,
            stderr,
            stdin,
            stdin_keepalive,
            failure,
            cgroup,
        } = child;
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let registry = self.poll.registry();
        let mut registered = registry.register(
            &mut SourceFd(&pidfd.as_raw_fd()),
            token(slot, KIND_PID),
            Interest::READABLE,
        );
        for (fd, kind) in [(&stdout, KIND_STDOUT), (&stderr, KIND_STDERR)] {
            registered = registered.and_then(|()| {
                registry.register(
                    &mut SourceFd(&fd.as_raw_fd()),
                    token(slot, kind),
                    Interest::READABLE,
                )
            });
        }
        if let Some(fd) = &stdin {
            registered = registered.and_then(|()| {
                registry.register(
                    &mut SourceFd(&fd.as_raw_fd()),
                    token(slot, KIND_STDIN),
                    Interest::WRITABLE,
                )
            });
        }
        let id = call.id();
        // A stream keeps at most what can be in the answer's frame.
        let cap = request.max_output.min(self.config.max_frame);
        let running = Running {
            call,
            permit: Some(permit),
            pid,
            pidfd,
            failure,
            _stdin_keepalive: stdin_keepalive,
            stdout: Stream::new(stdout, cap, request.truncate.0),
            stderr: Stream::new(stderr, cap, request.truncate.1),
            stdin: StdinFeed {
                ready: stdin.is_some(),
                fd: stdin,
                data: request.stdin,
                written: 0,
            },
            exited: false,
            lifecycle: Lifecycle::new(now, request.timeout, self.config.kill_grace),
            identity,
            cwd: request.cwd,
            timeout_s: request.timeout.as_secs(),
            started: now,
            id_len: request.id_len,
            watched: Vec::new(),
            cgroup,
            signalled: HashSet::new(),
            transcript: request.transcript.then(|| Transcript::new(cap)),
        };
        self.slots[slot] = Some(running);
        self.by_call.insert(id, slot);
        if let Err(e) = registered {
            log::error!("sync.bash: cannot watch command {pid}: {e}");
            // Without its sources the command cannot be followed: stop it
            // now; finish() reaps it and answers with what it has.
            self.stop(id, StopReason::Shutdown, now);
            if let Some(Some(job)) = self.slots.get_mut(slot) {
                job.exited = true;
            }
        }
    }

    /// bash has exited (or must be given up on): reap it and answer.
    fn finish(&mut self, slot: usize) {
        let Some(mut job) = self.slots.get_mut(slot).and_then(Option::take) else {
            return;
        };
        self.free.push(slot);
        self.by_call.remove(&job.call.id());
        let mut survivors = None;
        let mut processes_killed = None;
        if job.lifecycle.kill_group_before_reap() {
            // The unreaped bash still holds the pgid: no reuse possible.
            spawn::signal_group(job.pid, libc::SIGKILL);
        }
        if job.lifecycle.kill_group_before_reap() && job.cgroup.is_some() {
            // Everything in the cgroup, whatever session or parent.
            if let Some(cg) = &job.cgroup {
                job.signalled.extend(cg.pids());
                cg.kill();
            }
            let n = u32::try_from(job.signalled.len()).unwrap_or(u32::MAX);
            if n > 0 {
                log::info!(
                    "sync.bash: command {} was stopped; killed the {n} processes of its cgroup",
                    job.pid
                );
            }
            processes_killed = Some(n);
        } else if job.lifecycle.kill_group_before_reap() {
            // And what left the group (setsid, set -m, double fork).
            let killed = reaper::kill_survivors(job.pid, &job.watched);
            if killed > 0 {
                log::info!(
                    "sync.bash: command {} was stopped; killed {killed} processes that had left its process group",
                    job.pid
                );
            }
            survivors = Some(killed);
        }
        job.stdout.ready = true;
        job.stderr.ready = true;
        job.stdout.pump(
            &self.poll,
            &mut self.scratch,
            READS_AT_EXIT,
            job.transcript.as_mut().map(|t| (t, false)),
        );
        job.stderr.pump(
            &self.poll,
            &mut self.scratch,
            READS_AT_EXIT,
            job.transcript.as_mut().map(|t| (t, true)),
        );
        job.stdout.close(&self.poll);
        job.stderr.close(&self.poll);
        job.stdin.close(&self.poll);
        deregister(&self.poll, &job.pidfd);
        let (exit, rusage) = spawn::reap_usage(job.pid, true);
        let exit = exit.unwrap_or(Exit::Unknown);
        reaper::untrack(job.pid);
        let elapsed = job.started.elapsed().as_millis() as u64;
        let (usage, oom_kills, containment) = match job.cgroup.take() {
            Some(cg) => {
                let u = cg.usage();
                // What the cgroup did not measure (v1 without cpuacct,
                // no memory hierarchy joined): wait4's figures.
                let r = rusage_usage(rusage.as_ref(), elapsed);
                if !cg.remove(Duration::ZERO) {
                    // Still in use: a daemon it left, or the killed
                    // processes not gone yet; removed once empty.
                    cgroup::linger(cg);
                }
                (
                    report::Usage {
                        cpu_user_ms: u.cpu_user_ms.or(r.cpu_user_ms),
                        cpu_system_ms: u.cpu_system_ms.or(r.cpu_system_ms),
                        memory_peak_bytes: u.memory_peak_bytes.or(r.memory_peak_bytes),
                        pids_peak: u.pids_peak,
                        elapsed_ms: elapsed,
                        source: "cgroup",
                    },
                    u.oom_kills,
                    cgroup::layout().kind.name(),
                )
            }
            None => (
                rusage_usage(rusage.as_ref(), elapsed),
                0,
                cgroup::Kind::None.name(),
            ),
        };
        cgroup::sweep();
        drop(job.permit.take());
        let elapsed_ms = job.started.elapsed().as_millis() as u64;
        if let Some(failure) = spawn::read_failure(&job.failure) {
            let (code, message) = match (failure.stage, &job.cwd) {
                (Stage::Chdir, Some(cwd)) => (
                    retcode::INVALID_PARAMS,
                    format!(
                        "Invalid params: cwd {cwd}: {}",
                        io::Error::from_raw_os_error(failure.errno)
                    ),
                ),
                _ => (
                    retcode::PLUGIN_FAILURE,
                    format!("Plugin failure: starting the command: {failure}"),
                ),
            };
            return job.call.fail(code, &message);
        }
        let answer = Finished {
            exit,
            stopped: job.lifecycle.stop_reason(),
            timeout_s: job.timeout_s,
            stdout: std::mem::replace(&mut job.stdout.capture, Capture::new(0)).finish(),
            stderr: std::mem::replace(&mut job.stderr.capture, Capture::new(0)).finish(),
            elapsed_ms,
            pid: job.pid,
            identity: &job.identity,
            survivors_killed: survivors,
            containment,
            processes_killed,
            oom_kills,
            usage,
            transcript: job.transcript.take().map(|t| {
                let truncated = t.truncated;
                (t.finish(), truncated)
            }),
        }
        .answer(FrameBound {
            max_frame: self.config.max_frame,
            id_len: job.id_len,
        });
        job.call
            .complete(answer.retcode, &answer.message, Some(&answer.data));
    }

    /// Kills every command's group, answers them all, waits (bounded) for
    /// them to be reaped.
    fn shutdown(&mut self) {
        let now = Instant::now();
        let deadline = now + SHUTDOWN_WAIT;
        // Starts still queued or looking up give up now; those past the
        // lookup report their child soon, which is then killed with the
        // rest.
        let tickets: Vec<u64> = self.pending.keys().copied().collect();
        for ticket in tickets {
            let gave_up = self.pending.get(&ticket).is_some_and(|p| {
                [starter::QUEUED, starter::LOOKUP].into_iter().any(|from| {
                    p.phase
                        .compare_exchange(
                            from,
                            starter::ABANDONED,
                            Ordering::SeqCst,
                            Ordering::SeqCst,
                        )
                        .is_ok()
                })
            });
            if gave_up {
                if let Some(id) = self.pending.get(&ticket).map(|p| p.call.id()) {
                    self.stop(id, StopReason::Shutdown, now);
                }
            }
        }
        while !self.pending.is_empty() && Instant::now() < deadline {
            if let Ok(started) = self.started_rx.recv_timeout(Duration::from_millis(50)) {
                self.started(started);
            }
        }
        let ids: Vec<CallId> = self.by_call.keys().copied().collect();
        for id in ids {
            self.stop(id, StopReason::Shutdown, now);
        }
        let mut events = Events::with_capacity(64);
        while self.slots.iter().any(Option::is_some) && Instant::now() < deadline {
            let _ = self.poll.poll(&mut events, Some(Duration::from_millis(50)));
            for event in events.iter() {
                self.mark(event.token());
            }
            self.service();
        }
        for ticket in self.pending.keys().copied().collect::<Vec<_>>() {
            if let Some(p) = self.pending.remove(&ticket) {
                p.phase.store(starter::ABANDONED, Ordering::SeqCst);
                drop(p.permit);
                p.call
                    .fail(retcode::CANCELLED, "Cancelled: the agent is shutting down");
            }
        }
        self.pending_by_call.clear();
        for mut job in self.slots.iter_mut().filter_map(Option::take) {
            drop(job.permit.take());
            job.call.fail(
                retcode::CANCELLED,
                "Cancelled: the agent is shutting down (command not reaped)",
            );
        }
        self.by_call.clear();
        while let Ok(msg) = self.rx.try_recv() {
            if let Msg::Start(job) = msg {
                let Job { call, permit, .. } = *job;
                drop(permit);
                call.fail(retcode::CANCELLED, "Cancelled: the agent is shutting down");
            }
        }
    }
}

/// Signals a command's process group; on the first signal, also notes
/// its descendants (before any dies and its children are re-parented),
/// so that those that left the group can be killed after bash.
fn stop_group(job: &mut Running, signal: GroupSignal) {
    let sig = match signal {
        GroupSignal::Term => libc::SIGTERM,
        GroupSignal::Kill => libc::SIGKILL,
    };
    if let Some(cg) = &job.cgroup {
        // The whole cgroup: SIGTERM to each process listed (they may
        // have left the group), SIGKILL through the cgroup's own kill.
        let pids = cg.pids();
        match signal {
            GroupSignal::Term => {
                for &pid in &pids {
                    // SAFETY: kill(2) on pids listed in this command's
                    // cgroup; a reused pid is in it only if it is ours.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
            GroupSignal::Kill => {
                cg.kill();
            }
        }
        job.signalled.extend(pids);
        spawn::signal_group(job.pid, sig);
        return;
    }
    if job.watched.is_empty() {
        job.watched = reaper::descendants(job.pid);
    }
    spawn::signal_group(job.pid, sig);
}

/// Usage from `wait4` (no cgroup): bash and the children it waited for.
fn rusage_usage(r: Option<&libc::rusage>, elapsed_ms: u64) -> report::Usage {
    let ms = |t: &libc::timeval| {
        u64::try_from(t.tv_sec)
            .unwrap_or(0)
            .saturating_mul(1000)
            .saturating_add(u64::try_from(t.tv_usec).unwrap_or(0) / 1000)
    };
    report::Usage {
        cpu_user_ms: r.map(|r| ms(&r.ru_utime)),
        cpu_system_ms: r.map(|r| ms(&r.ru_stime)),
        memory_peak_bytes: r.map(|r| u64::try_from(r.ru_maxrss).unwrap_or(0).saturating_mul(1024)),
        pids_peak: None,
        elapsed_ms,
        source: "rusage",
    }
}
