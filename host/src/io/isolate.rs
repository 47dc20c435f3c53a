//! Isolation on request: a plugin listed in `[plugins] isolate` runs in a
//! helper process (this same binary, `BasicAgent --plugin-host METHOD -c
//! CONFIG`) over a socketpair, so that its crash costs only its own calls
//! in flight (answered `3025`) and the helper is restarted with backoff
//! while the daemon lives on.
//!
//! Frames on the socketpair (native byte order, both ends the same binary):
//! daemon → helper `[kind u8][id u64][len u32][bytes]` (kind 1: a request,
//! the request's bytes as received; kind 2: cancel `id`, no bytes);
//! helper → daemon `[id u64][retcode u32][mlen u32][dlen u32][message][data]`
//! (`dlen` = `u32::MAX`: no data). Every length is checked against the
//! frame bound before anything is allocated.
//!
//! Limits of this first version (documented): isolated calls have no host
//! deadline and do not count against `max_concurrent`; the helper loads
//! the plugin under the config's signature policy itself.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use basicagent_abi::host::Completer;
use basicagent_abi::Completion;

/// Ids of isolated calls: a space of their own, never an ABI call id.
const ID_BASE: u64 = 1 << 62;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

type Pending = Arc<Mutex<HashMap<u64, Completer>>>;

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, HashMap<u64, Completer>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

impl crate::core::dispatch::Isolated for Helper {
    fn call(&mut self, request: &[u8], done: Completer, now: Instant) -> u64 {
        Helper::call(self, request, done, now)
    }
}

/// One isolated plugin, seen from the daemon.
pub struct Helper {
    method: String,
    config: Option<PathBuf>,
    max_frame: usize,
    conn: Option<(UnixStream, Child, Arc<AtomicBool>)>,
    pending: Pending,
    next: Arc<AtomicU64>,
    backoff: Duration,
    restart_at: Option<Instant>,
}

impl Helper {
    pub fn new(method: &str, config: Option<PathBuf>, max_frame: usize) -> Helper {
        Helper {
            method: method.to_owned(),
            config,
            max_frame,
            conn: None,
            pending: Arc::default(),
            next: Arc::new(AtomicU64::new(ID_BASE)),
            backoff: BACKOFF_MIN,
            restart_at: None,
        }
    }

    /// Calls in flight in the helper.
    pub fn in_flight(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Sends a request to the helper (started or restarted as needed);
    /// `done` runs once, on the helper's reader thread (or here, for a
    /// refusal). Returns the call's id.
    pub fn call(&mut self, request: &[u8], done: Completer, now: Instant) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Err(message) = self.ensure(now) {
            done(Completion {
                call: id,
                retcode: basicagent_abi::retcode::PLUGIN_FAILURE,
                message,
                data: None,
            });
            return id;
        }
        lock(&self.pending).insert(id, done);
        let mut frame = Vec::with_capacity(request.len() + 13);
        frame.push(1u8);
        frame.extend_from_slice(&id.to_ne_bytes());
        frame.extend_from_slice(&(request.len() as u32).to_ne_bytes());
        frame.extend_from_slice(request);
        let sent = self
            .conn
            .as_mut()
            .map(|(s, _, _)| s.write_all(&frame))
            .unwrap_or(Err(io::ErrorKind::NotConnected.into()));
        if let Err(e) = sent {
            // The reader thread answers every pending call when it sees
            // the helper gone; a write that failed before that is ours.
            if let Some(done) = lock(&self.pending).remove(&id) {
                done(Completion {
                    call: id,
                    retcode: basicagent_abi::retcode::PLUGIN_FAILURE,
                    message: format!("Plugin failure: the helper of {} is gone: {e}", self.method),
                    data: None,
                });
            }
        }
        id
    }

    /// Starts the helper unless it runs; while a restart waits for its
    /// backoff, the refusal's message.
    fn ensure(&mut self, now: Instant) -> Result<(), String> {
        if let Some((_, child, alive)) = self.conn.as_mut() {
            if alive.load(Ordering::Acquire) {
                return Ok(());
            }
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            log::error!(
                "isolated plugin {}: helper ended ({status}); restarting after {:?}",
                self.method,
                self.backoff
            );
            self.conn = None;
            self.restart_at = Some(crate::deadline::after(now, self.backoff));
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
        if let Some(t) = self.restart_at {
            if now < t {
                let left = t.saturating_duration_since(now);
                return Err(format!(
                    "Plugin failure: the isolated plugin's helper crashed; restarting in {} ms",
                    left.as_millis()
                ));
            }
        }
        self.spawn().map_err(|e| {
            format!(
                "Plugin failure: cannot start the helper of {}: {e}",
                self.method
            )
        })
    }

    fn spawn(&mut self) -> io::Result<()> {
        let (ours, theirs) = UnixStream::pair()?;
        let fd: OwnedFd = theirs.into();
        let raw = fd.as_raw_fd();
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg("--plugin-host").arg(&self.method);
        if let Some(c) = &self.config {
            cmd.arg("-c").arg(c);
        }
        // SAFETY: only async-signal-safe calls between fork and exec:
        // dup2 of the socket to fd 3 (clearing close-on-exec), the
        // parent-death signal so the helper never outlives the daemon, and
        // an empty signal mask (the daemon blocks its signals for the
        // signalfd; the helper and its children must not inherit that).
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(raw, 3) < 0 {
                    return Err(io::Error::last_os_error());
                }
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(fd);
        let alive = Arc::new(AtomicBool::new(true));
        let reader = ours.try_clone()?;
        let (pending, flag, method, max) = (
            Arc::clone(&self.pending),
            Arc::clone(&alive),
            self.method.clone(),
            self.max_frame,
        );
        std::thread::Builder::new()
            .name(format!("isolate {method}"))
            .spawn(move || read_completions(reader, &pending, &flag, &method, max))?;
        log::info!("isolated plugin {}: helper pid {}", self.method, child.id());
        self.conn = Some((ours, child, alive));
        self.restart_at = None;
        Ok(())
    }

    /// Asks the helper to cancel `id` (ignored if it is not ours).
    pub fn cancel(&mut self, id: u64) {
        if let Some((s, _, _)) = self.conn.as_mut() {
            let mut frame = vec![2u8];
            frame.extend_from_slice(&id.to_ne_bytes());
            frame.extend_from_slice(&0u32.to_ne_bytes());
            let _ = s.write_all(&frame);
        }
    }
}

fn read_completions(
    mut s: UnixStream,
    pending: &Pending,
    alive: &AtomicBool,
    method: &str,
    max: usize,
) {
    loop {
        match read_completion(&mut s, max) {
            Ok(c) => {
                let done = lock(pending).remove(&c.call);
                match done {
                    Some(done) => done(c),
                    None => log::warn!(
                        "isolated plugin {method}: completion of unknown call {}",
                        c.call
                    ),
                }
            }
            Err(e) => {
                alive.store(false, Ordering::Release);
                let lost: Vec<(u64, Completer)> = lock(pending).drain().collect();
                log::error!("isolated plugin {method}: helper gone ({e}); {} call(s) in flight answered 3025", lost.len());
                for (call, done) in lost {
                    done(Completion {
                        call,
                        retcode: basicagent_abi::retcode::PLUGIN_FAILURE,
                        message: format!("Plugin failure: the isolated plugin {method} crashed during the call (its helper process ended); it is restarted"),
                        data: None,
                    });
                }
                return;
            }
        }
    }
}

fn read_u32(s: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_ne_bytes(b))
}

fn read_u64(s: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_ne_bytes(b))
}

fn read_bytes(s: &mut impl Read, len: usize, max: usize) -> io::Result<Vec<u8>> {
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is over the bound of {max}"),
        ));
    }
    let mut v = vec![0u8; len];
    s.read_exact(&mut v)?;
    Ok(v)
}

fn read_completion(s: &mut UnixStream, max: usize) -> io::Result<Completion> {
    let call = read_u64(s)?;
    let retcode = read_u32(s)?;
    let mlen = read_u32(s)? as usize;
    let dlen = read_u32(s)?;
    let message = String::from_utf8_lossy(&read_bytes(s, mlen, max)?).into_owned();
    let data = if dlen == u32::MAX {
        None
    } else {
        Some(String::from_utf8_lossy(&read_bytes(s, dlen as usize, max)?).into_owned())
    };
    Ok(Completion {
        call,
        retcode,
        message,
        data,
    })
}

/// The helper's side: loads the plugin for `method` as the daemon would
/// (config, plugin directory, signature policy), then serves frames on fd
/// 3 until the daemon closes it. Returns the exit status.
pub fn helper_main(method: &str, config: Option<&Path>) -> i32 {
    let config = match crate::config::Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("BasicAgent --plugin-host: {e}");
            return 1;
        }
    };
    let policy = match config.signature_policy() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("BasicAgent --plugin-host: {e}");
            return 1;
        }
    };
    let settings = basicagent_abi::HostSettings {
        config_json: config.plugin_settings_json(),
        max_log_level: log::max_level() as u32,
    };
    let dir = basicagent_abi::plugin_dir(config.agent.plugin_dir.as_deref());
    let registry = basicagent_abi::PluginRegistry::with_signatures(dir, settings, policy);
    let plugin = match registry.get(method) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("BasicAgent --plugin-host: {e}");
            return 1;
        }
    };
    // SAFETY: fd 3 is the socketpair end the daemon dup'ed there for us;
    // nothing else in this process owns it.
    let sock = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(3) };
    let writer = match sock.try_clone() {
        Ok(w) => Arc::new(Mutex::new(w)),
        Err(e) => {
            eprintln!("BasicAgent --plugin-host: {e}");
            return 1;
        }
    };
    let max = config.server.max_frame;
    let mut reader = io::BufReader::new(sock);
    // Helper call id (ours) → the daemon's id, for cancel; and the ids
    // completed before `call` returned (never entered in the map).
    type Ids = (HashMap<u64, u64>, std::collections::HashSet<u64>);
    let ids: Arc<Mutex<Ids>> = Arc::default();
    loop {
        let mut kind = [0u8; 1];
        if reader.read_exact(&mut kind).is_err() {
            return 0;
        }
        let (Ok(id), Ok(len)) = (read_u64(&mut reader), read_u32(&mut reader)) else {
            return 0;
        };
        let Ok(bytes) = read_bytes(&mut reader, len as usize, max) else {
            return 1;
        };
        if kind[0] == 2 {
            let local = ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .iter()
                .find(|(_, d)| **d == id)
                .map(|(l, _)| *l);
            if let Some(l) = local {
                plugin.cancel(l);
            }
            continue;
        }
        let (w, ids2) = (Arc::clone(&writer), Arc::clone(&ids));
        let local = plugin.call(
            &bytes,
            Box::new(move |c: Completion| {
                {
                    let mut g = ids2.lock().unwrap_or_else(|e| e.into_inner());
                    if g.0.remove(&c.call).is_none() {
                        g.1.insert(c.call);
                    }
                }
                let mut f = Vec::with_capacity(
                    20 + c.message.len() + c.data.as_ref().map_or(0, String::len),
                );
                f.extend_from_slice(&id.to_ne_bytes());
                f.extend_from_slice(&c.retcode.to_ne_bytes());
                f.extend_from_slice(&(c.message.len() as u32).to_ne_bytes());
                let dlen = c.data.as_ref().map_or(u32::MAX, |d| d.len() as u32);
                f.extend_from_slice(&dlen.to_ne_bytes());
                f.extend_from_slice(c.message.as_bytes());
                if let Some(d) = &c.data {
                    f.extend_from_slice(d.as_bytes());
                }
                let _ = w.lock().unwrap_or_else(|e| e.into_inner()).write_all(&f);
            }),
        );
        let mut g = ids.lock().unwrap_or_else(|e| e.into_inner());
        if !g.1.remove(&local) {
            g.0.insert(local, id);
        }
    }
}
