//! Scheduled requests (`schedule.*`): triggers, next-fire computation and the durable schedule table.
//!
//! A schedule repeats one request the agent serves (`getinfo.*`, any plugin
//! method, or `async.bash`) on a trigger: `cron` (six fields, seconds
//! first, in a named zone, default the host's), `every` (seconds), `at`
//! (one RFC 3339 time) or `on_boot` (once per boot id). Each run's result
//! is a `task.done` in the durable outbox ([`crate::tasks`]) with the extra
//! fields `schedule`, `scheduled_at` and `run`.
//!
//! Key design decisions:
//! * The core ([`Spec::next_after`], [`plan`], [`jitter_offset`]) is pure:
//!   it takes the wall-clock time as a parameter and is tested in virtual
//!   time. Cron expressions are parsed and evaluated by the `croner` crate
//!   (Vixie-cron DST rules), zones come from `chrono-tz`.
//! * **At most once per slot**: the last fired slot and the run counter are
//!   written durably (temp file, fsync, rename, fsync of the directory, on
//!   the writer thread, never on the loop) *before* the run starts; a run
//!   whose state could not be written does not start. A `kill -9` between
//!   the write and the run loses that run; it never runs a slot twice.
//! * Wall-clock jumps (NTP step, manual set, suspend): slots are wall-clock
//!   times. Up to [`BURST_SLOTS`] due slots fire in order (ordinary lag);
//!   more means time was missed (the agent was down, the host suspended or
//!   the clock stepped forward) and `catch_up` decides: `none` skips them,
//!   `one` fires only the latest, each logged with the count skipped. A
//!   backward step never re-fires a slot already run: `cron` and `at` wait
//!   until the clock passes the last fired slot again (logged); `every`
//!   re-anchors at the new time so that it keeps its interval.
//! * Jitter delays a run by `H(host id, schedule id, run) mod (jitter+1)`
//!   seconds: random across hosts and runs, stable for one host (a restart
//!   fires the same run at the same time).

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use basicagent_proto::schedule::{
    Member, RequestShape, ScheduleAdded, ScheduleAnswer, ScheduleFile, ScheduleInfo, ScheduleList,
    ScheduleParams, ScheduleRemoved, ScheduleState, ScheduledRequest, TriggerInfo, ADD_MEMBERS,
};
use chrono::{DateTime, TimeZone};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;

use crate::tasks::{self, DirError};

/// Due slots fired in order before the rest counts as missed time.
pub const BURST_SLOTS: usize = 2;
/// Longest `jitter`, seconds.
pub const MAX_JITTER: u64 = 86_400;
/// Largest request (its JSON text) a schedule may repeat.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Fire times returned by `schedule.add` and `schedule.get`.
const NEXT_SHOWN: usize = 5;
/// Longest sleep of the loop while schedules exist: a wall-clock step is
/// noticed within this time.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// Bounds of the schedule table (config keys `max_schedules`,
/// `schedule_min_interval`, `schedule_keep_results`).
#[derive(Debug, Clone, Copy)]
pub struct ScheduleLimits {
    pub max_schedules: usize,
    /// Shortest interval between two fire times (`every`, and the first
    /// gaps of a cron expression).
    pub min_interval: u64,
    /// Unacknowledged results kept per schedule; the oldest is dropped
    /// (logged) past it.
    pub keep_results: usize,
}

impl Default for ScheduleLimits {
    fn default() -> Self {
        ScheduleLimits {
            max_schedules: 64,
            min_interval: 1,
            keep_results: 100,
        }
    }
}

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum Trigger {
    Cron {
        expr: String,
        tz: Tz,
        cron: Box<Cron>,
    },
    Every(u64),
    At(i64),
    OnBoot,
}

/// What to do when a run is due while the previous one still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// The new slot is not run (logged).
    Skip,
    /// The new slot runs when the previous run ends (at most one waits;
    /// further slots are skipped).
    Queue,
    /// The previous run is cancelled and the new one starts.
    Replace,
}

/// What to do with slots missed while the agent was down (or the host
/// suspended, or the clock stepped forward).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    None,
    One,
}

/// A validated `schedule.add` request.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The request repeated (a JSON object with `method`).
    pub request: ScheduledRequest,
    pub method: String,
    pub trigger: Trigger,
    pub jitter: u64,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    /// No slot after this time (Unix seconds).
    pub until: Option<i64>,
    /// At most this many runs.
    pub count: Option<u64>,
}

/// A bad `schedule.*` parameter: answered `3021`, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Invalid params: \"{field}\": {reason}")]
pub struct ParamError {
    pub field: &'static str,
    pub reason: String,
}

/// Why a `schedule.*` request is refused (answered `3021`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("Invalid params: not a JSON object")]
    NotAnObject,
    #[error(transparent)]
    Param(#[from] ParamError),
}

fn bad(field: &'static str, reason: impl Into<String>) -> ParamError {
    ParamError {
        field,
        reason: reason.into(),
    }
}

/// The host's zone: `TZ`, else `/etc/localtime` (through `iana-time-zone`),
/// else UTC.
pub fn host_zone() -> Tz {
    if let Ok(name) = std::env::var("TZ") {
        if let Ok(tz) = Tz::from_str(name.trim_start_matches(':')) {
            return tz;
        }
    }
    iana_time_zone::get_timezone()
        .ok()
        .and_then(|n| Tz::from_str(&n).ok())
        .unwrap_or(Tz::UTC)
}

fn parse_rfc3339(field: &'static str, v: Member<'_>) -> Result<i64, ParamError> {
    let Member::Str(s) = v else {
        return Err(bad(field, "must be an RFC 3339 time string"));
    };
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp())
        .map_err(|e| bad(field, format!("not an RFC 3339 time ({e}): {s:?}")))
}

fn opt_u64(p: &ScheduleParams, field: &'static str) -> Result<Option<u64>, ParamError> {
    match p.member(field) {
        Member::Absent | Member::Null => Ok(None),
        Member::UInt(n) => Ok(Some(n)),
        _ => Err(bad(field, "must be a non-negative integer")),
    }
}

/// `t` for a log line, as the answers write it (quoted, or `null`).
fn shown(t: i64) -> String {
    rfc3339(t).map_or_else(|| "null".to_owned(), |s| format!("{s:?}"))
}

/// `t` as RFC 3339 (`None`: out of range, written `null`).
fn rfc3339(t: i64) -> Option<String> {
    DateTime::from_timestamp(t, 0).map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

impl Spec {
    /// Validates `schedule.add` parameters (the request's top-level fields:
    /// `request`, one of `cron`/`every`/`at`/`on_boot`, `tz`, `jitter`,
    /// `overlap`, `catch_up`, `until`, `count`). `methods`: what the plugin
    /// directory serves.
    pub fn parse(
        p: &ScheduleParams,
        limits: &ScheduleLimits,
        methods: &[String],
        now: i64,
    ) -> Result<Spec, ParamError> {
        if let Some(k) = p.unknown_member(&ADD_MEMBERS) {
            return Err(ParamError {
                field: "params",
                reason: format!("unknown field {k:?}"),
            });
        }
        let request = p.request().map_err(|e| match e {
            RequestShape::NotAnObject => bad("request", "must be a request object with \"method\""),
            RequestShape::Missing => bad("request", "missing (the request to repeat)"),
            RequestShape::NoMethod => bad("request", "\"method\" must be a string"),
        })?;
        let method = request.method().to_owned();
        if request.json_len() > MAX_REQUEST_BYTES {
            return Err(bad(
                "request",
                format!("larger than {MAX_REQUEST_BYTES} bytes"),
            ));
        }
        let builtin = ["agent.", "task.", "schedule.", "async."]
            .iter()
            .any(|p| method.starts_with(p));
        if method == "async.bash" {
            if request.cmd().is_none() {
                return Err(bad("request", "async.bash needs \"cmd\" (a string)"));
            }
        } else if builtin || method == "ping" {
            return Err(bad(
                "request",
                format!(
                    "{method} cannot be scheduled (getinfo.*, plugin methods and async.bash can)"
                ),
            ));
        } else if !methods.contains(&method) {
            return Err(bad("request", format!("no plugin serves {method}")));
        }
        let triggers: Vec<&str> = ["cron", "every", "at", "on_boot"]
            .into_iter()
            .filter(|k| !p.member(k).is_unset())
            .collect();
        if triggers.len() != 1 {
            return Err(bad(
                "trigger",
                format!(
                    "exactly one of cron, every, at, on_boot is needed (got {})",
                    if triggers.is_empty() {
                        "none".to_owned()
                    } else {
                        triggers.join(", ")
                    }
                ),
            ));
        }
        if p.has("tz") && triggers[0] != "cron" {
            return Err(bad("tz", "only for a cron trigger"));
        }
        let trigger = match triggers[0] {
            "cron" => {
                let Member::Str(expr) = p.member("cron") else {
                    return Err(bad("cron", "must be a string of six fields"));
                };
                if expr.split_whitespace().count() != 6 || expr.trim_start().starts_with('@') {
                    return Err(bad(
                        "cron",
                        format!("needs six fields (second minute hour day-of-month month day-of-week), got {expr:?}"),
                    ));
                }
                let cron = CronParser::builder()
                    .seconds(Seconds::Required)
                    .build()
                    .parse(expr)
                    .map_err(|e| bad("cron", format!("{e} in {expr:?}")))?;
                let tz = match p.member("tz") {
                    Member::Absent | Member::Null => host_zone(),
                    Member::Str(name) => Tz::from_str(name)
                        .map_err(|_| bad("tz", format!("unknown time zone {name:?}")))?,
                    _ => return Err(bad("tz", "must be a zone name")),
                };
                Trigger::Cron {
                    expr: expr.to_owned(),
                    tz,
                    cron: Box::new(cron),
                }
            }
            "every" => {
                let Member::UInt(n) = p.member("every") else {
                    return Err(bad("every", "must be a whole number of seconds"));
                };
                if n < limits.min_interval.max(1) {
                    return Err(bad(
                        "every",
                        format!(
                            "{n} s is below the minimum interval of {} s (schedule_min_interval)",
                            limits.min_interval.max(1)
                        ),
                    ));
                }
                if n > 10 * 366 * 86_400 {
                    return Err(bad("every", "longer than ten years"));
                }
                Trigger::Every(n)
            }
            "at" => Trigger::At(parse_rfc3339("at", p.member("at"))?),
            _ => {
                if p.member("on_boot") != Member::Bool(true) {
                    return Err(bad("on_boot", "must be true"));
                }
                Trigger::OnBoot
            }
        };
        let jitter = opt_u64(p, "jitter")?.unwrap_or(0);
        if jitter > MAX_JITTER {
            return Err(bad("jitter", format!("at most {MAX_JITTER} seconds")));
        }
        if let Trigger::Every(n) = trigger {
            if jitter >= n {
                return Err(bad(
                    "jitter",
                    format!("must be shorter than the interval ({n} s)"),
                ));
            }
        }
        let overlap = match p.member("overlap") {
            Member::Absent | Member::Str("skip") => Overlap::Skip,
            Member::Str("queue") => Overlap::Queue,
            Member::Str("replace") => Overlap::Replace,
            _ => return Err(bad("overlap", "must be \"skip\", \"queue\" or \"replace\"")),
        };
        let catch_up = match p.member("catch_up") {
            Member::Absent | Member::Str("none") => CatchUp::None,
            Member::Str("one") => CatchUp::One,
            _ => return Err(bad("catch_up", "must be \"none\" or \"one\"")),
        };
        let until = match p.member("until") {
            Member::Absent | Member::Null => None,
            v => Some(parse_rfc3339("until", v)?),
        };
        let count = opt_u64(p, "count")?;
        if count == Some(0) {
            return Err(bad("count", "must be at least 1"));
        }
        let spec = Spec {
            request,
            method,
            trigger,
            jitter,
            overlap,
            catch_up,
            until,
            count,
        };
        if let Trigger::Cron { expr, .. } = &spec.trigger {
            // The cron must fire at all, and not more often than allowed.
            let mut t = now;
            let mut prev: Option<i64> = None;
            for _ in 0..NEXT_SHOWN {
                let Some(n) = spec.next_after(t, now) else {
                    if prev.is_none() {
                        return Err(bad("cron", format!("{expr:?} never fires")));
                    }
                    break;
                };
                if let Some(p) = prev {
                    if ((n - p) as u64) < limits.min_interval {
                        return Err(bad(
                            "cron",
                            format!("fires {} s apart, below the minimum interval of {} s (schedule_min_interval)", n - p, limits.min_interval),
                        ));
                    }
                }
                prev = Some(n);
                t = n;
            }
        }
        if let (Trigger::At(t), None) = (&spec.trigger, spec.until) {
            if *t < now.saturating_sub(365 * 86_400) {
                return Err(bad("at", "more than a year in the past"));
            }
        }
        Ok(spec)
    }

    /// The first slot strictly after `after` (Unix seconds); `anchor` is
    /// the start of an `every` schedule (slots at `anchor + k·every`,
    /// `k ≥ 1`). `None`: no more slots (`at` passed, `until` reached,
    /// `on_boot`).
    pub fn next_after(&self, after: i64, anchor: i64) -> Option<i64> {
        let next = match &self.trigger {
            Trigger::Every(n) => {
                let n = i64::try_from(*n).ok()?.max(1);
                if after < anchor {
                    anchor.checked_add(n)?
                } else {
                    let k = (after - anchor) / n + 1;
                    anchor.checked_add(k.checked_mul(n)?)?
                }
            }
            Trigger::At(t) => (*t > after).then_some(*t)?,
            Trigger::Cron { tz, cron, .. } => {
                let start = tz.timestamp_opt(after, 0).single()?;
                cron.find_next_occurrence(&start, false).ok()?.timestamp()
            }
            Trigger::OnBoot => return None,
        };
        match self.until {
            Some(u) if next > u => None,
            _ => Some(next),
        }
    }

    /// The latest slot in `(after, upto]` and how many slots lie there
    /// (counted up to `cap`).
    fn latest_in(&self, after: i64, upto: i64, anchor: i64, cap: u64) -> (Option<i64>, u64) {
        let upto = self.until.map_or(upto, |u| upto.min(u));
        match &self.trigger {
            Trigger::Every(n) => {
                let n = (*n).max(1) as i64;
                let Some(first) = self.next_after(after, anchor) else {
                    return (None, 0);
                };
                if first > upto {
                    return (None, 0);
                }
                let count = (upto - first) / n + 1;
                (Some(first + (count - 1) * n), count as u64)
            }
            Trigger::Cron { tz, cron, .. } => {
                let mut count = 0;
                let mut t = after;
                while count < cap {
                    match self.next_after(t, anchor) {
                        Some(s) if s <= upto => {
                            count += 1;
                            t = s;
                        }
                        _ => break,
                    }
                }
                if count < cap {
                    return ((count > 0).then_some(t), count);
                }
                // Many slots: the latest from a backward search.
                let latest = tz
                    .timestamp_opt(upto, 0)
                    .single()
                    .and_then(|end| cron.find_previous_occurrence(&end, true).ok())
                    .map(|d| d.timestamp())
                    .filter(|s| *s > after);
                (latest.or(Some(t)), count)
            }
            _ => match self.next_after(after, anchor) {
                Some(s) if s <= upto => (Some(s), 1),
                _ => (None, 0),
            },
        }
    }

    /// The trigger as `schedule.get` shows it.
    fn trigger_info(&self) -> TriggerInfo {
        match &self.trigger {
            Trigger::Cron { expr, tz, .. } => TriggerInfo::Cron {
                cron: expr.clone(),
                tz: tz.name().to_owned(),
            },
            Trigger::Every(n) => TriggerInfo::Every { every: *n },
            Trigger::At(t) => TriggerInfo::At { at: rfc3339(*t) },
            Trigger::OnBoot => TriggerInfo::OnBoot { on_boot: true },
        }
    }
}

/// The delay of run `run` of schedule `id` on host `host`, in
/// `0..=jitter` seconds: uniform across hosts, stable for one host.
pub fn jitter_offset(host: &str, id: &str, run: u64, jitter: u64) -> u64 {
    if jitter == 0 {
        return 0;
    }
    let text = format!("{host}\n{id}\n{run}");
    let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_le_bytes(b) % (jitter.saturating_add(1))
}

/// What a schedule remembers across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct State {
    pub created: i64,
    /// Start of an `every` schedule's slots (moved by a backward step).
    pub anchor: i64,
    /// The last slot fired or skipped: slots up to it never fire again.
    pub last: Option<i64>,
    /// Runs started.
    pub runs: u64,
    pub paused: bool,
    /// `on_boot`: the boot id it last fired for.
    pub boot: Option<String>,
}

/// The decision for one schedule at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing due; wake at this wall-clock time (Unix seconds), if ever.
    Wait(Option<i64>),
    /// Run slot `slot` now (as run `state.runs + 1`). `skipped` slots
    /// before it were passed over (missed time, per `catch_up`).
    Fire { slot: i64, skipped: u64 },
    /// Slots up to `upto` are passed over without a run (`catch_up: none`).
    Skip { upto: i64, skipped: u64 },
    /// The wall clock went back before the last fired slot; `every`
    /// re-anchors at `now`.
    Reanchor { now: i64 },
    /// No slot will ever come (`count`, `until`, `at` done).
    Finished,
}

/// The pure scheduling decision (see the module documentation for the
/// rules): `now` is the wall clock (Unix seconds), `startup` is true for
/// the first decision after the agent started (missed slots then follow
/// `catch_up` whatever their number). `on_boot` is decided elsewhere.
pub fn plan(spec: &Spec, st: &State, now: i64, startup: bool, host: &str, id: &str) -> Plan {
    if spec.count.is_some_and(|c| st.runs >= c) {
        return Plan::Finished;
    }
    if matches!(spec.trigger, Trigger::OnBoot) || st.paused {
        // Paused: nothing is decided (resume starts from its own time, so
        // slots passing meanwhile are never run later).
        return Plan::Wait(None);
    }
    let cursor = st.last.unwrap_or(st.created);
    if let (Trigger::Every(n), Some(last)) = (&spec.trigger, st.last) {
        if now < last.saturating_sub(i64::try_from(*n).unwrap_or(i64::MAX)) {
            return Plan::Reanchor { now };
        }
    }
    let Some(first) = spec.next_after(cursor, st.anchor) else {
        return Plan::Finished;
    };
    let offset = |run: u64| jitter_offset(host, id, run, spec.jitter) as i64;
    if first > now {
        return Plan::Wait(Some(first.saturating_add(offset(st.runs + 1))));
    }
    let (latest, count) = spec.latest_in(cursor, now, st.anchor, 1000);
    let latest = latest.unwrap_or(first);
    let missed = startup || count as usize > BURST_SLOTS;
    if !missed {
        if now >= first.saturating_add(offset(st.runs + 1)) {
            return Plan::Fire {
                slot: first,
                skipped: 0,
            };
        }
        return Plan::Wait(Some(first.saturating_add(offset(st.runs + 1))));
    }
    match spec.catch_up {
        CatchUp::None => Plan::Skip {
            upto: latest,
            skipped: count,
        },
        CatchUp::One => Plan::Fire {
            slot: latest,
            skipped: count.saturating_sub(1),
        },
    }
}

/// The current boot id (`/proc/sys/kernel/random/boot_id`), if readable.
pub fn boot_id() -> Option<String> {
    let text = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = text.trim();
    (!id.is_empty() && id.len() <= 64).then(|| id.to_owned())
}

/// One run to start, its state already durable.
#[derive(Debug, Clone)]
pub struct Fire {
    pub schedule: String,
    pub slot: i64,
    pub run: u64,
    pub request: ScheduledRequest,
    pub method: String,
    /// `overlap: replace`: the running task to cancel first.
    pub replace: Option<String>,
}

enum Job {
    Write {
        path: PathBuf,
        bytes: Vec<u8>,
        fire: Option<Fire>,
    },
    Remove(PathBuf),
}

struct Ready {
    fire: Fire,
    ok: bool,
}

struct Entry {
    spec: Spec,
    /// The parameters as given (what the file keeps).
    params: ScheduleParams,
    state: State,
    /// Tasks of this schedule running now (oldest first).
    running: Vec<String>,
    /// A run waiting for the previous one (`overlap: queue`).
    queued: Option<Fire>,
    /// A fire whose state is being written.
    starting: u32,
    /// Unacknowledged results, oldest first.
    results: VecDeque<String>,
    dropped: u64,
    finished: bool,
    warned_back: bool,
}

/// Every schedule of this agent, with its file in `state_dir/schedules`.
pub struct ScheduleTable {
    dir: PathBuf,
    limits: ScheduleLimits,
    host: String,
    entries: HashMap<String, Entry>,
    /// Decisions since start-up: the first one per schedule is `startup`.
    decided: std::collections::HashSet<String>,
    boot: Option<String>,
    jobs: mpsc::Sender<Job>,
    ready: mpsc::Receiver<Ready>,
}

/// Writes `bytes` to `path` durably (temp file `0600`, fsync, rename,
/// fsync of the directory), never through a symlink.
pub fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl ScheduleTable {
    /// Opens (creating `0700`) the schedule directory and loads every
    /// schedule; files that do not parse are set aside (`.corrupt`,
    /// logged). Starts the writer thread, which wakes the loop through
    /// `waker` when a run's state is durable.
    pub fn open<W: crate::core::dispatch::Wake + 'static>(
        dir: PathBuf,
        limits: ScheduleLimits,
        host: &str,
        methods: &[String],
        waker: Arc<W>,
    ) -> Result<ScheduleTable, DirError> {
        tasks::prepare_dir(&dir)?;
        let entries = fs::read_dir(&dir).map_err(|source| DirError::Io {
            path: dir.clone(),
            source,
        })?;
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel::<Ready>();
        let spawned = std::thread::Builder::new()
            .name("schedule-writer".into())
            .spawn(move || {
                for job in job_rx {
                    match job {
                        Job::Write { path, bytes, fire } => {
                            let ok = match write_durably(&path, &bytes) {
                                Ok(()) => true,
                                Err(e) => {
                                    log::error!("schedules: cannot write {}: {e}", path.display());
                                    false
                                }
                            };
                            if let Some(fire) = fire {
                                let _ = ready_tx.send(Ready { fire, ok });
                                if let Err(e) = waker.wake() {
                                    log::error!("cannot wake the loop: {e}");
                                }
                            }
                        }
                        Job::Remove(path) => {
                            if let Err(e) = fs::remove_file(&path) {
                                if e.kind() != io::ErrorKind::NotFound {
                                    log::error!("schedules: cannot remove {}: {e}", path.display());
                                }
                            }
                            if let Some(dir) = path.parent() {
                                if let Ok(d) = fs::File::open(dir) {
                                    let _ = d.sync_all();
                                }
                            }
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            return Err(DirError::Io {
                path: dir,
                source: e,
            });
        }
        let mut table = ScheduleTable {
            dir,
            limits,
            host: host.to_owned(),
            entries: HashMap::new(),
            decided: Default::default(),
            boot: boot_id(),
            jobs,
            ready,
        };
        let now = unix_now();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let loaded = (tasks::valid_task_id(id))
                .then(|| {
                    let meta = fs::symlink_metadata(&path).ok()?;
                    if !meta.is_file() || meta.len() > 4 * MAX_REQUEST_BYTES as u64 {
                        return None;
                    }
                    let file = ScheduleFile::parse(&fs::read(&path).ok()?, id)?;
                    Self::entry_from_file(file, &limits, methods, now)
                })
                .flatten();
            match loaded {
                Some(e) => {
                    table.entries.insert(id.to_owned(), e);
                }
                None => {
                    log::error!(
                        "schedules: {} is corrupt or no longer valid; set aside as .corrupt",
                        path.display()
                    );
                    let _ = fs::rename(&path, path.with_extension("corrupt"));
                }
            }
        }
        if !table.entries.is_empty() {
            log::info!("schedules: {} loaded", table.entries.len());
        }
        Ok(table)
    }

    fn entry_from_file(
        file: ScheduleFile,
        limits: &ScheduleLimits,
        methods: &[String],
        now: i64,
    ) -> Option<Entry> {
        let params = file.params;
        // A schedule kept must load even if the method's plugin is gone
        // for now (its runs then fail with 3020, reported).
        let method = params.request().ok()?.method().to_owned();
        let mut known = methods.to_vec();
        known.push(method);
        let spec = Spec::parse(&params, limits, &known, now).ok()?;
        let s = file.state;
        let state = State {
            created: s.created,
            anchor: s.anchor,
            last: s.last,
            runs: s.runs,
            paused: s.paused,
            boot: s.boot,
        };
        Some(Entry {
            spec,
            params,
            state,
            running: Vec::new(),
            queued: None,
            starting: 0,
            results: VecDeque::new(),
            dropped: 0,
            finished: false,
            warned_back: false,
        })
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn file_bytes(id: &str, e: &Entry) -> Vec<u8> {
        let s = &e.state;
        ScheduleFile {
            id: id.to_owned(),
            params: e.params.clone(),
            state: ScheduleState {
                created: s.created,
                anchor: s.anchor,
                last: s.last,
                runs: s.runs,
                paused: s.paused,
                boot: s.boot.clone(),
            },
        }
        .to_bytes()
    }

    fn persist(&self, id: &str, fire: Option<Fire>) {
        let Some(e) = self.entries.get(id) else {
            return;
        };
        let job = Job::Write {
            path: self.path(id),
            bytes: Self::file_bytes(id, e),
            fire,
        };
        if self.jobs.send(job).is_err() {
            log::error!("schedules: the writer thread is gone; state of {id} not written");
        }
    }

    /// Schedules kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A `schedule.*` request (`frame`: the whole request; its parameters
    /// sit at its top level); `methods`: what the plugin directory serves
    /// (needed by `schedule.add` only).
    pub fn request(
        &mut self,
        method: &str,
        frame: &[u8],
        methods: &[String],
        now: i64,
    ) -> Result<ScheduleAnswer, RequestError> {
        let params = ScheduleParams::from_frame(frame).ok_or(RequestError::NotAnObject)?;
        let sid = || match params.member("schedule") {
            Member::Str(s) if tasks::valid_task_id(s) => Ok(s),
            _ => Err(bad("schedule", "must be a schedule id string")),
        };
        let answer = match method {
            "schedule.add" => ScheduleAnswer::Added(self.add(&params, methods, now)?),
            "schedule.list" => ScheduleAnswer::List(self.list(now)),
            "schedule.get" => ScheduleAnswer::Schedule(Some(Box::new(self.get(sid()?, now)?))),
            "schedule.remove" => ScheduleAnswer::Removed(self.remove(sid()?)?),
            "schedule.pause" => {
                ScheduleAnswer::Schedule(self.set_paused(sid()?, true, now)?.map(Box::new))
            }
            _ => ScheduleAnswer::Schedule(self.set_paused(sid()?, false, now)?.map(Box::new)),
        };
        Ok(answer)
    }

    /// `schedule.add`: validates, stores (durably, on the writer thread)
    /// and answers `{"schedule": ID, "next": [RFC 3339 …]}`.
    pub fn add(
        &mut self,
        params: &ScheduleParams,
        methods: &[String],
        now: i64,
    ) -> Result<ScheduleAdded, ParamError> {
        let spec = Spec::parse(params, &self.limits, methods, now)?;
        if self.entries.len() >= self.limits.max_schedules {
            return Err(bad(
                "schedule",
                format!(
                    "{} schedules kept already (max_schedules); remove one first",
                    self.entries.len()
                ),
            ));
        }
        let id = tasks::new_task_id();
        let kept = params.without_envelope();
        let entry = Entry {
            spec,
            params: kept,
            state: State {
                created: now,
                anchor: now,
                last: None,
                runs: 0,
                paused: false,
                boot: None,
            },
            running: Vec::new(),
            queued: None,
            starting: 0,
            results: VecDeque::new(),
            dropped: 0,
            finished: false,
            warned_back: false,
        };
        self.entries.insert(id.clone(), entry);
        // Not a start-up: slots after `now` fire normally.
        self.decided.insert(id.clone());
        self.persist(&id, None);
        log::info!("schedule {id} added ({})", self.describe_trigger(&id));
        let next = self.next_times(&id, now);
        Ok(ScheduleAdded { next, schedule: id })
    }

    fn describe_trigger(&self, id: &str) -> String {
        self.entries.get(id).map_or_else(String::new, |e| {
            format!("{} on {}", e.spec.method, e.spec.trigger_info())
        })
    }

    fn next_times(&self, id: &str, now: i64) -> Vec<Option<String>> {
        let Some(e) = self.entries.get(id) else {
            return Vec::new();
        };
        if matches!(e.spec.trigger, Trigger::OnBoot) {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut t = e
            .state
            .last
            .unwrap_or(e.state.created)
            .max(now.saturating_sub(1));
        let mut run = e.state.runs;
        while out.len() < NEXT_SHOWN {
            if e.spec.count.is_some_and(|c| run >= c) {
                break;
            }
            let Some(s) = e.spec.next_after(t, e.state.anchor) else {
                break;
            };
            run += 1;
            let off = jitter_offset(&self.host, id, run, e.spec.jitter) as i64;
            out.push(rfc3339(s.saturating_add(off)));
            t = s;
        }
        out
    }

    fn describe(&self, id: &str, now: i64) -> Option<ScheduleInfo> {
        let e = self.entries.get(id)?;
        let state = if e.finished {
            "finished"
        } else if e.state.paused {
            "paused"
        } else if !e.running.is_empty() {
            "running"
        } else {
            "waiting"
        };
        let overlap = match e.spec.overlap {
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
            Overlap::Replace => "replace",
        };
        let catch_up = match e.spec.catch_up {
            CatchUp::None => "none",
            CatchUp::One => "one",
        };
        Some(ScheduleInfo {
            schedule: id.to_owned(),
            state,
            request: e.spec.request.clone(),
            trigger: e.spec.trigger_info(),
            jitter: e.spec.jitter,
            overlap,
            catch_up,
            until: e.spec.until.and_then(rfc3339),
            count: e.spec.count,
            runs: e.state.runs,
            last_slot: e.state.last.and_then(rfc3339),
            created: rfc3339(e.state.created),
            running: e.running.clone(),
            results_kept: e.results.len(),
            results_dropped: e.dropped,
            next: (!e.state.paused && !e.finished).then(|| self.next_times(id, now)),
        })
    }

    /// `schedule.list` data.
    pub fn list(&self, now: i64) -> ScheduleList {
        let mut ids: Vec<&String> = self.entries.keys().collect();
        ids.sort();
        let all: Vec<ScheduleInfo> = ids
            .into_iter()
            .filter_map(|id| self.describe(id, now))
            .collect();
        ScheduleList {
            count: all.len(),
            max_schedules: self.limits.max_schedules,
            schedules: all,
        }
    }

    /// `schedule.get` data.
    pub fn get(&self, id: &str, now: i64) -> Result<ScheduleInfo, ParamError> {
        self.describe(id, now)
            .ok_or_else(|| bad("schedule", format!("unknown schedule {id:?}")))
    }

    /// `schedule.remove`: no run starts after this (a run under way ends
    /// normally and its result is delivered).
    pub fn remove(&mut self, id: &str) -> Result<ScheduleRemoved, ParamError> {
        if self.entries.remove(id).is_none() {
            return Err(bad("schedule", format!("unknown schedule {id:?}")));
        }
        let _ = self.jobs.send(Job::Remove(self.path(id)));
        log::info!("schedule {id} removed");
        Ok(ScheduleRemoved::new(id))
    }

    /// `schedule.pause` / `schedule.resume`. Slots passing while paused
    /// are never run later.
    /// The answer is the schedule as [`Self::get`] shows it.
    pub fn set_paused(
        &mut self,
        id: &str,
        paused: bool,
        now: i64,
    ) -> Result<Option<ScheduleInfo>, ParamError> {
        let e = self
            .entries
            .get_mut(id)
            .ok_or_else(|| bad("schedule", format!("unknown schedule {id:?}")))?;
        if e.state.paused != paused {
            e.state.paused = paused;
            if !paused {
                // Resume from now: nothing paused over fires.
                e.state.last = Some(now.max(e.state.last.unwrap_or(i64::MIN)));
            }
            e.queued = None;
            self.persist(id, None);
            log::info!(
                "schedule {id} {}",
                if paused { "paused" } else { "resumed" }
            );
        }
        Ok(self.describe(id, now))
    }

    /// Decides every schedule at wall time `now`: due runs get their state
    /// written (runs start when [`Self::take_ready`] returns them). Returns
    /// the wall-clock time of the next decision (Unix seconds), if any.
    pub fn tick(&mut self, now: i64) -> Option<i64> {
        let ids: Vec<String> = self.entries.keys().cloned().collect();
        let mut wake: Option<i64> = None;
        for id in ids {
            let startup = self.decided.insert(id.clone());
            if let Some(at) = self.decide(&id, now, startup) {
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        }
        wake
    }

    fn decide(&mut self, id: &str, now: i64, startup: bool) -> Option<i64> {
        let boot = self.boot.clone();
        let host = self.host.clone();
        let e = self.entries.get_mut(id)?;
        if e.finished {
            return None;
        }
        if matches!(e.spec.trigger, Trigger::OnBoot) {
            if e.state.paused || boot.is_none() || e.state.boot == boot {
                return None;
            }
            if e.spec.count.is_some_and(|c| e.state.runs >= c) {
                e.finished = true;
                return None;
            }
            e.state.boot = boot;
            let fire = Self::fire_of(id, e, now);
            self.persist(id, fire);
            return None;
        }
        // A few slots per turn at most: the rest on the next turn.
        for _ in 0..4 {
            let e = self.entries.get_mut(id)?;
            match plan(
                &e.spec,
                &e.state,
                now,
                startup && e.state.last.is_some(),
                &host,
                id,
            ) {
                Plan::Wait(at) => {
                    if at.is_some() {
                        e.warned_back = false;
                    }
                    if let (Some(last), Some(_)) = (e.state.last, at) {
                        if now < last && !e.warned_back {
                            e.warned_back = true;
                            log::warn!("schedule {id}: the wall clock went back before the last run's slot; no slot runs twice, the next is after {}", shown(last));
                        }
                    }
                    return at;
                }
                Plan::Finished => {
                    e.finished = true;
                    log::info!("schedule {id}: no more runs (count, until or at reached)");
                    return None;
                }
                Plan::Reanchor { now } => {
                    log::warn!(
                        "schedule {id}: the wall clock went back; the interval restarts from now"
                    );
                    e.state.anchor = now;
                    e.state.last = Some(now);
                    self.persist(id, None);
                }
                Plan::Skip { upto, skipped } => {
                    log::warn!(
                        "schedule {id}: {skipped} missed slot(s) up to {} not run (catch_up: none)",
                        shown(upto)
                    );
                    e.state.last = Some(upto);
                    self.persist(id, None);
                }
                Plan::Fire { slot, skipped } => {
                    if skipped > 0 {
                        log::warn!("schedule {id}: {skipped} missed slot(s) not run; running the latest, {} (catch_up: one)", shown(slot));
                    }
                    let fire = Self::fire_of(id, e, slot);
                    self.persist(id, fire);
                }
            }
        }
        Some(now)
    }

    /// Records slot `slot` as fired (or skipped, by `overlap`) and returns
    /// the run to start once the state is durable.
    fn fire_of(id: &str, e: &mut Entry, slot: i64) -> Option<Fire> {
        e.state.last = Some(slot.max(e.state.last.unwrap_or(i64::MIN)));
        let busy = !e.running.is_empty() || e.starting > 0;
        if busy && e.spec.overlap == Overlap::Skip {
            log::warn!(
                "schedule {id}: slot {} skipped, the previous run is still going (overlap: skip)",
                shown(slot)
            );
            return None;
        }
        if busy && e.spec.overlap == Overlap::Queue && e.queued.is_some() {
            log::warn!(
                "schedule {id}: slot {} skipped, one run waits already (overlap: queue)",
                shown(slot)
            );
            return None;
        }
        e.state.runs += 1;
        e.starting += 1;
        Some(Fire {
            schedule: id.to_owned(),
            slot,
            run: e.state.runs,
            request: e.spec.request.clone(),
            method: e.spec.method.clone(),
            replace: None,
        })
    }

    /// Runs whose state is durable, to start now (in order per schedule).
    /// Runs of removed or paused schedules are dropped: they stop at once.
    pub fn take_ready(&mut self) -> Vec<Fire> {
        let mut out = Vec::new();
        while let Ok(Ready { mut fire, ok }) = self.ready.try_recv() {
            let Some(e) = self.entries.get_mut(&fire.schedule) else {
                continue;
            };
            e.starting = e.starting.saturating_sub(1);
            if !ok {
                log::error!("schedule {}: run {} not started: its state could not be written (at most once per slot)", fire.schedule, fire.run);
                continue;
            }
            if e.state.paused {
                continue;
            }
            if let Some(running) = e.running.last() {
                match e.spec.overlap {
                    Overlap::Queue => {
                        if e.queued.is_some() {
                            log::warn!("schedule {}: run {} skipped, one run waits already (overlap: queue)", fire.schedule, fire.run);
                        } else {
                            e.queued = Some(fire);
                        }
                        continue;
                    }
                    Overlap::Replace => fire.replace = Some(running.clone()),
                    Overlap::Skip => {}
                }
            }
            out.push(fire);
        }
        out
    }

    /// A run started as task `task`.
    pub fn started(&mut self, schedule: &str, task: &str) {
        if let Some(e) = self.entries.get_mut(schedule) {
            e.running.push(task.to_owned());
        }
    }

    /// Task `task` of `schedule` ended with a result in the outbox.
    /// Returns results to drop (past `keep_results`, oldest first) and a
    /// queued run to start now.
    pub fn finished(&mut self, schedule: &str, task: &str) -> (Vec<String>, Option<Fire>) {
        let keep = self.limits.keep_results.max(1);
        let Some(e) = self.entries.get_mut(schedule) else {
            return (Vec::new(), None);
        };
        e.running.retain(|t| t != task);
        e.results.push_back(task.to_owned());
        let mut drop = Vec::new();
        while e.results.len() > keep {
            if let Some(old) = e.results.pop_front() {
                drop.push(old);
            }
        }
        if !drop.is_empty() {
            e.dropped = e.dropped.saturating_add(drop.len() as u64);
            log::warn!(
                "schedule {schedule}: {} unacknowledged result(s) dropped, oldest first ({} dropped so far; schedule_keep_results = {keep})",
                drop.len(),
                e.dropped
            );
        }
        let next = if e.running.is_empty() && !e.state.paused {
            e.queued.take()
        } else {
            None
        };
        (drop, next)
    }

    /// Results left in the outbox by an earlier run of the agent (oldest
    /// first), so that the per-schedule bound holds across restarts.
    pub fn restore_results(&mut self, results: Vec<(String, String)>) {
        for (schedule, task) in results {
            if let Some(e) = self.entries.get_mut(&schedule) {
                e.results.push_back(task);
            }
        }
    }

    /// The server acknowledged a result.
    pub fn acked(&mut self, task: &str) {
        for e in self.entries.values_mut() {
            e.results.retain(|t| t != task);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn params(v: &Value) -> ScheduleParams {
        ScheduleParams::from_frame(v.to_string().as_bytes()).unwrap()
    }

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp()
    }

    fn spec(v: Value) -> Result<Spec, ParamError> {
        let methods = vec!["getinfo.kernel".to_owned()];
        let mut p = v.as_object().unwrap().clone();
        p.entry("request")
            .or_insert(json!({"method": "getinfo.kernel"}));
        Spec::parse(
            &params(&Value::Object(p)),
            &ScheduleLimits::default(),
            &methods,
            at("2026-01-01T00:00:00Z"),
        )
    }

    fn nexts(s: &Spec, from: &str, n: usize) -> Vec<String> {
        let mut t = at(from);
        let anchor = t;
        let mut out = Vec::new();
        for _ in 0..n {
            let Some(x) = s.next_after(t, anchor) else {
                break;
            };
            out.push(rfc3339(x).unwrap());
            t = x;
        }
        out
    }

    #[test]
    fn the_seconds_field_ranges_steps_and_lists() {
        let s = spec(json!({"cron": "*/15 * * * * *", "tz": "UTC"})).unwrap();
        assert_eq!(
            nexts(&s, "2026-03-01T10:00:07Z", 3),
            [
                "2026-03-01T10:00:15Z",
                "2026-03-01T10:00:30Z",
                "2026-03-01T10:00:45Z"
            ]
        );
        let s = spec(json!({"cron": "5,10 0-1 9 * * *", "tz": "UTC"})).unwrap();
        assert_eq!(
            nexts(&s, "2026-03-01T08:00:00Z", 5),
            [
                "2026-03-01T09:00:05Z",
                "2026-03-01T09:00:10Z",
                "2026-03-01T09:01:05Z",
                "2026-03-01T09:01:10Z",
                "2026-03-02T09:00:05Z"
            ]
        );
        let s = spec(json!({"cron": "0 0 12 * * MON-FRI", "tz": "UTC"})).unwrap();
        // 2026-03-06 is a Friday.
        assert_eq!(
            nexts(&s, "2026-03-06T13:00:00Z", 2),
            ["2026-03-09T12:00:00Z", "2026-03-10T12:00:00Z"]
        );
        let s = spec(json!({"cron": "30 10-50/20 * * * *", "tz": "UTC"})).unwrap();
        assert_eq!(
            nexts(&s, "2026-03-01T00:00:00Z", 4),
            [
                "2026-03-01T00:10:30Z",
                "2026-03-01T00:30:30Z",
                "2026-03-01T00:50:30Z",
                "2026-03-01T01:10:30Z"
            ]
        );
    }

    #[test]
    fn named_time_zones() {
        let s = spec(json!({"cron": "0 0 9 * * *", "tz": "Asia/Tokyo"})).unwrap();
        assert_eq!(
            nexts(&s, "2026-06-01T00:00:00Z", 1),
            ["2026-06-02T00:00:00Z"]
        );
        let s = spec(json!({"cron": "0 0 9 * * *", "tz": "America/New_York"})).unwrap();
        // EDT (UTC-4) in June, EST (UTC-5) in January.
        assert_eq!(
            nexts(&s, "2026-06-01T00:00:00Z", 1),
            ["2026-06-01T13:00:00Z"]
        );
        assert_eq!(
            nexts(&s, "2026-01-10T00:00:00Z", 1),
            ["2026-01-10T14:00:00Z"]
        );
    }

    #[test]
    fn dst_gap_and_overlap_follow_vixie_cron() {
        // Berlin springs forward on 2026-03-29 at 02:00 → 03:00 (01:00 UTC).
        let s = spec(json!({"cron": "0 30 2 * * *", "tz": "Europe/Berlin"})).unwrap();
        // A fixed time in the gap runs right after it, once, that day.
        assert_eq!(
            nexts(&s, "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
        );
        // Falls back on 2026-10-25 at 03:00 → 02:00: 02:30 exists twice, runs once.
        assert_eq!(
            nexts(&s, "2026-10-24T12:00:00Z", 2),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
        // An interval job runs in both passes of the repeated hour.
        let s = spec(json!({"cron": "0 0,30 * * * *", "tz": "Europe/Berlin"})).unwrap();
        let got = nexts(&s, "2026-10-24T23:50:00Z", 5);
        assert_eq!(
            got,
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-25T02:00:00Z"
            ]
        );
        // ... and skips the missing hour in spring.
        let got = nexts(&s, "2026-03-29T00:40:00Z", 2);
        assert_eq!(got, ["2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z"]);
        // New York: 2026-03-08 02:00 → 03:00 EDT; 2026-11-01 02:00 → 01:00 EST.
        let s = spec(json!({"cron": "0 15 2 * * *", "tz": "America/New_York"})).unwrap();
        assert_eq!(
            nexts(&s, "2026-03-07T12:00:00Z", 2),
            ["2026-03-08T07:00:00Z", "2026-03-09T06:15:00Z"]
        );
        let s = spec(json!({"cron": "0 15 1 * * *", "tz": "America/New_York"})).unwrap();
        assert_eq!(
            nexts(&s, "2026-10-31T12:00:00Z", 2),
            ["2026-11-01T05:15:00Z", "2026-11-02T06:15:00Z"]
        );
    }

    #[test]
    fn every_at_until_and_count() {
        let s = spec(json!({"every": 10})).unwrap();
        assert_eq!(s.next_after(100, 100), Some(110));
        assert_eq!(s.next_after(109, 100), Some(110));
        assert_eq!(s.next_after(110, 100), Some(120));
        assert_eq!(s.next_after(50, 100), Some(110));
        let s = spec(json!({"at": "2026-05-01T10:00:00+02:00"})).unwrap();
        assert_eq!(
            s.next_after(at("2026-05-01T07:59:59Z"), 0),
            Some(at("2026-05-01T08:00:00Z"))
        );
        assert_eq!(s.next_after(at("2026-05-01T08:00:00Z"), 0), None);
        let s = spec(json!({"every": 10, "until": "1970-01-01T00:02:00Z"})).unwrap();
        assert_eq!(s.next_after(100, 100), Some(110));
        assert_eq!(s.next_after(120, 100), None);
        let s = spec(json!({"every": 10, "count": 2})).unwrap();
        let mut st = State {
            created: 100,
            anchor: 100,
            ..State::default()
        };
        assert_eq!(
            plan(&s, &st, 110, false, "h", "i"),
            Plan::Fire {
                slot: 110,
                skipped: 0
            }
        );
        st.runs = 2;
        assert_eq!(plan(&s, &st, 130, false, "h", "i"), Plan::Finished);
    }

    #[test]
    fn jitter_is_bounded_stable_and_spread() {
        let mut seen = std::collections::HashSet::new();
        for run in 0..2000 {
            let o = jitter_offset("host-a", "sched", run, 30);
            assert!(o <= 30);
            assert_eq!(o, jitter_offset("host-a", "sched", run, 30));
            seen.insert(o);
        }
        assert_eq!(seen.len(), 31, "every offset in 0..=30 occurs");
        assert_ne!(
            (0..20)
                .map(|r| jitter_offset("host-a", "s", r, 1000))
                .collect::<Vec<_>>(),
            (0..20)
                .map(|r| jitter_offset("host-b", "s", r, 1000))
                .collect::<Vec<_>>()
        );
        assert_eq!(jitter_offset("h", "s", 1, 0), 0);
        // A jittered run waits for its offset.
        let s = spec(json!({"every": 60, "jitter": 59})).unwrap();
        let st = State {
            created: 0,
            anchor: 0,
            ..State::default()
        };
        let off = jitter_offset("h", "i", 1, 59) as i64;
        if off > 0 {
            assert_eq!(
                plan(&s, &st, 60 + off - 1, false, "h", "i"),
                Plan::Wait(Some(60 + off))
            );
        }
        assert_eq!(
            plan(&s, &st, 60 + off, false, "h", "i"),
            Plan::Fire {
                slot: 60,
                skipped: 0
            }
        );
    }

    #[test]
    fn wall_clock_steps_and_catch_up() {
        let none = spec(json!({"every": 10})).unwrap();
        let one = spec(json!({"every": 10, "catch_up": "one"})).unwrap();
        let st = State {
            created: 0,
            anchor: 0,
            last: Some(100),
            runs: 10,
            ..State::default()
        };
        // Ordinary lag: two due slots fire in order.
        assert_eq!(
            plan(&none, &st, 121, false, "h", "i"),
            Plan::Fire {
                slot: 110,
                skipped: 0
            }
        );
        // A forward step of more than two intervals: per catch_up, at most once.
        assert_eq!(
            plan(&none, &st, 1000, false, "h", "i"),
            Plan::Skip {
                upto: 1000,
                skipped: 90
            }
        );
        assert_eq!(
            plan(&one, &st, 1005, false, "h", "i"),
            Plan::Fire {
                slot: 1000,
                skipped: 89
            }
        );
        // After a restart even one missed slot follows catch_up.
        assert_eq!(
            plan(&none, &st, 111, true, "h", "i"),
            Plan::Skip {
                upto: 110,
                skipped: 1
            }
        );
        assert_eq!(
            plan(&one, &st, 135, true, "h", "i"),
            Plan::Fire {
                slot: 130,
                skipped: 2
            }
        );
        // A backward step: `every` restarts its interval from now ...
        assert_eq!(
            plan(&none, &st, 50, false, "h", "i"),
            Plan::Reanchor { now: 50 }
        );
        // ... a small one just waits; no slot up to the last fires again.
        assert_eq!(plan(&none, &st, 95, false, "h", "i"), Plan::Wait(Some(110)));
        let cron = spec(json!({"cron": "0 * * * * *", "tz": "UTC"})).unwrap();
        let st = State {
            created: 0,
            anchor: 0,
            last: Some(6000),
            runs: 3,
            ..State::default()
        };
        assert_eq!(
            plan(&cron, &st, 10, false, "h", "i"),
            Plan::Wait(Some(6060))
        );
        // Paused: nothing is decided (resume starts from its own time).
        let st = State { paused: true, ..st };
        assert_eq!(plan(&cron, &st, 6130, false, "h", "i"), Plan::Wait(None));
    }

    #[test]
    fn bad_parameters_name_the_field_and_the_reason() {
        let cases = [
            (json!({"cron": "* * * * *"}), "cron", "six fields"),
            (json!({"cron": "61 * * * * *"}), "cron", "61"),
            (
                json!({"cron": "0 0 0 31 2 *", "tz": "UTC"}),
                "cron",
                "never",
            ),
            (
                json!({"cron": "0 * * * * *", "tz": "Mars/Olympus"}),
                "tz",
                "unknown time zone",
            ),
            (json!({"every": 0}), "every", "minimum interval"),
            (json!({"every": "5"}), "every", "whole number"),
            (
                json!({"every": 5, "at": "2026-01-01T00:00:00Z"}),
                "trigger",
                "exactly one",
            ),
            (json!({}), "trigger", "none"),
            (json!({"at": "tomorrow"}), "at", "RFC 3339"),
            (
                json!({"every": 5, "jitter": 5}),
                "jitter",
                "shorter than the interval",
            ),
            (json!({"every": 5, "overlap": "wait"}), "overlap", "skip"),
            (json!({"every": 5, "catch_up": "all"}), "catch_up", "none"),
            (json!({"every": 5, "count": 0}), "count", "at least 1"),
            (json!({"every": 5, "until": 7}), "until", "RFC 3339"),
            (
                json!({"every": 5, "request": {"method": "getinfo.nope"}}),
                "request",
                "no plugin",
            ),
            (
                json!({"every": 5, "request": {"method": "schedule.add"}}),
                "request",
                "cannot be scheduled",
            ),
            (
                json!({"every": 5, "request": {"method": "async.bash"}}),
                "request",
                "cmd",
            ),
            (
                json!({"every": 5, "request": "getinfo.kernel"}),
                "request",
                "object",
            ),
            (json!({"every": 5, "bogus": 1}), "params", "bogus"),
            (json!({"on_boot": false}), "on_boot", "true"),
        ];
        for (v, field, reason) in cases {
            let e = spec(v.clone()).expect_err(&v.to_string());
            assert_eq!(e.field, field, "{v}: {e}");
            assert!(e.reason.contains(reason), "{v}: {e}");
            assert!(e.to_string().starts_with("Invalid params: \""), "{e}");
        }
        let e = Spec::parse(
            &params(
                &json!({"cron": "* * * * * *", "tz": "UTC", "request": {"method": "getinfo.kernel"}}),
            ),
            &ScheduleLimits {
                min_interval: 5,
                ..ScheduleLimits::default()
            },
            &["getinfo.kernel".to_owned()],
            0,
        )
        .unwrap_err();
        assert_eq!(e.field, "cron");
        assert!(e.reason.contains("minimum interval"), "{e}");
    }

    fn ready(t: &mut ScheduleTable) -> Vec<Fire> {
        for _ in 0..1000 {
            let f = t.take_ready();
            if !f.is_empty() {
                return f;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Vec::new()
    }

    #[test]
    fn the_slot_is_durable_before_the_run_and_never_runs_twice_after_a_restart() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let methods = vec!["getinfo.kernel".to_owned()];
        let open = || {
            ScheduleTable::open(
                dir.path().join("schedules"),
                ScheduleLimits::default(),
                "host",
                &methods,
                Arc::clone(&waker),
            )
            .unwrap()
        };
        let mut t = open();
        let p = json!({"request": {"method": "getinfo.kernel"}, "every": 10});
        let now = 1_000_000;
        let added = t.add(&params(&p), &methods, now).unwrap();
        let id = added.schedule.clone();
        assert_eq!(added.next[0], rfc3339(now + 10));
        assert!(t.tick(now + 5).is_some());
        assert_eq!(t.tick(now + 10), Some(now + 20));
        let fires = ready(&mut t);
        assert_eq!(fires.len(), 1);
        assert_eq!((fires[0].slot, fires[0].run), (now + 10, 1));
        // Written before the run is handed out: the file says so already.
        let path = dir.path().join(format!("schedules/{id}.json"));
        let v: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["state"]["last"], now + 10);
        assert_eq!(v["state"]["runs"], 1);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A garbage file beside it is set aside, never a crash.
        fs::write(dir.path().join("schedules/0000-bad.json"), b"{nope").unwrap();
        drop(t);
        let mut t = open();
        assert_eq!(t.len(), 1);
        assert!(dir.path().join("schedules/0000-bad.corrupt").exists());
        // The same instant after a restart: the slot already ran.
        t.tick(now + 10);
        std::thread::sleep(Duration::from_millis(50));
        assert!(t.take_ready().is_empty());
        t.tick(now + 20);
        let fires = ready(&mut t);
        assert_eq!((fires[0].slot, fires[0].run), (now + 20, 2));
        // Removed: its file goes, and a run on its way is dropped.
        t.tick(now + 30);
        t.remove(&id).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(t.take_ready().is_empty());
        assert!(!path.exists());
    }

    /// A schedule file byte for byte as the agent wrote it before the wire
    /// types moved to `basicagent_proto::schedule` (`json!` of a sorted map).
    const OLD_FILE: &str = r#"{"id":"0abc-42","params":{"count":5,"every":10,"jitter":3,"overlap":"queue","request":{"method":"getinfo.kernel"}},"state":{"anchor":1000000,"boot":null,"created":1000000,"last":1000020,"paused":false,"runs":2}}"#;

    #[test]
    fn a_schedule_file_of_the_previous_agent_loads_and_is_written_back_alike() {
        let dir = tempfile::tempdir().unwrap();
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let methods = vec!["getinfo.kernel".to_owned()];
        let open = || {
            ScheduleTable::open(
                dir.path().join("schedules"),
                ScheduleLimits::default(),
                "host",
                &methods,
                Arc::clone(&waker),
            )
            .unwrap()
        };
        drop(open());
        let path = dir.path().join("schedules/0abc-42.json");
        fs::write(&path, OLD_FILE).unwrap();
        let mut t = open();
        assert_eq!(t.len(), 1);
        assert!(!dir.path().join("schedules/0abc-42.corrupt").exists());
        let now = 1_000_025;
        let got = serde_json::to_value(t.get("0abc-42", now).unwrap()).unwrap();
        assert_eq!(got["runs"], 2);
        assert_eq!(got["count"], 5);
        assert_eq!(got["overlap"], "queue");
        assert_eq!(got["last_slot"], "1970-01-12T13:47:00Z");
        assert_eq!(got["trigger"], json!({"every": 10}));
        // Pausing rewrites the file: the same members, only `paused` changed.
        t.set_paused("0abc-42", true, now).unwrap();
        let want = OLD_FILE.replace("\"paused\":false", "\"paused\":true");
        for _ in 0..1000 {
            if fs::read_to_string(&path).unwrap() == want {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(fs::read_to_string(&path).unwrap(), want);
        // Resumed after a restart, it continues with run 3, never slot 1000020 again.
        drop(t);
        let mut t = open();
        t.set_paused("0abc-42", false, 1_000_020).unwrap();
        assert_eq!(t.tick(1_000_021).map(|w| w >= 1_000_030), Some(true));
        t.tick(1_000_034);
        let fires = ready(&mut t);
        assert_eq!(fires.len(), 1);
        assert_eq!((fires[0].slot, fires[0].run), (1_000_030, 3));
    }

    #[test]
    fn schedule_requests_answer_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let methods = vec!["getinfo.kernel".to_owned()];
        let mut t = ScheduleTable::open(
            dir.path().join("schedules"),
            ScheduleLimits::default(),
            "host",
            &methods,
            waker,
        )
        .unwrap();
        let now = 2_000_000;
        let text = |a: ScheduleAnswer| serde_json::to_string(&a).unwrap();
        assert_eq!(
            t.request("schedule.list", b"[]", &methods, now),
            Err(RequestError::NotAnObject)
        );
        assert_eq!(
            RequestError::NotAnObject.to_string(),
            "Invalid params: not a JSON object"
        );
        let e = t
            .request("schedule.get", br#"{"schedule":"../x"}"#, &methods, now)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Invalid params: \"schedule\": must be a schedule id string"
        );
        let added = t
            .request(
                "schedule.add",
                br#"{"id":1,"method":"schedule.add","request":{"method":"getinfo.kernel"},"at":"1970-01-24T03:33:30Z"}"#,
                &methods,
                now,
            )
            .unwrap();
        let ScheduleAnswer::Added(a) = &added else {
            panic!("{added:?}");
        };
        let id = a.schedule.clone();
        assert_eq!(
            text(added),
            format!(r#"{{"next":["1970-01-24T03:33:30Z"],"schedule":"{id}"}}"#)
        );
        let get = format!(r#"{{"schedule":"{id}"}}"#);
        let want = format!(
            r#"{{"catch_up":"none","count":null,"created":"1970-01-24T03:33:20Z","jitter":0,"last_slot":null,"next":["1970-01-24T03:33:30Z"],"overlap":"skip","request":{{"method":"getinfo.kernel"}},"results_dropped":0,"results_kept":0,"running":[],"runs":0,"schedule":"{id}","state":"waiting","trigger":{{"at":"1970-01-24T03:33:30Z"}},"until":null}}"#
        );
        assert_eq!(
            text(
                t.request("schedule.get", get.as_bytes(), &methods, now)
                    .unwrap()
            ),
            want
        );
        assert_eq!(
            text(t.request("schedule.list", b"{}", &methods, now).unwrap()),
            format!(r#"{{"count":1,"max_schedules":64,"schedules":[{want}]}}"#)
        );
        let paused = text(
            t.request("schedule.pause", get.as_bytes(), &methods, now)
                .unwrap(),
        );
        assert!(
            paused.contains(r#""state":"paused""#) && !paused.contains("\"next\""),
            "{paused}"
        );
        assert_eq!(
            text(
                t.request("schedule.remove", get.as_bytes(), &methods, now)
                    .unwrap()
            ),
            format!(r#"{{"schedule":"{id}","state":"removed"}}"#)
        );
        let e = t
            .request("schedule.resume", get.as_bytes(), &methods, now)
            .unwrap_err();
        assert!(e.to_string().contains("unknown schedule"), "{e}");
    }

    #[test]
    fn the_host_zone_is_a_zone() {
        let _ = host_zone().name();
    }
}
