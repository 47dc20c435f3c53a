//! Per-call deadlines and the quarantine of plugins that keep failing.
//!
//! Every plugin call the dispatcher starts gets a deadline ([`Limits::deadline_for`]):
//! the request's own `timeout` plus a grace where it has one, else the
//! per-method or per-namespace default of `[plugins]` in the config. The
//! [`Watchdog`] holds the deadlines in virtual time (`now` is always a
//! parameter; only the reactor reads the clock) and hands back the calls
//! whose deadline passed.
//!
//! A plugin (keyed by its file) whose calls expire or panic
//! `quarantine_after` times within `quarantine_window` is quarantined
//! ([`Quarantine`]): its requests are answered `3025 Plugin failure:
//! quarantined until …` without calling it. It is released when the window
//! has passed since the last strike, when its file changes on disk (a new
//! version), or by `agent.release` (`BasicAgentCtl plugin release NAME`).
//! A crash marker left by a plugin that killed the daemon quarantines it
//! until its file changes ([`Quarantine::until_changed`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use basicagent_proto::quarantine::QuarantinedPlugin;
use serde::Deserialize;

use crate::deadline::after;

/// The longest timeout `[plugins]` accepts (and the longest a request's
/// own `timeout` may stretch a deadline): one day.
pub const TIMEOUT_MAX: Duration = Duration::from_secs(24 * 3600);

/// The `[plugins]` table of the config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    /// Seconds a call may run when neither the request nor `timeouts`
    /// says otherwise.
    pub default_timeout: u64,
    /// Seconds per method (`"getinfo.packages"`) or namespace
    /// (`"getinfo"`); the method wins.
    pub timeouts: BTreeMap<String, u64>,
    /// Seconds added to a request's own `timeout` (the plugin's time to
    /// kill and report).
    pub grace: u64,
    /// Expiries or panics within `quarantine_window` that quarantine a
    /// plugin (0: never).
    pub quarantine_after: u32,
    /// Seconds of the window; also how long a quarantine lasts after the
    /// last strike.
    pub quarantine_window: u64,
    /// Methods whose plugin runs in a helper process (`crate::isolate`).
    pub isolate: Vec<String>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            default_timeout: 30,
            timeouts: BTreeMap::new(),
            grace: 5,
            quarantine_after: 3,
            quarantine_window: 600,
            isolate: Vec::new(),
        }
    }
}

impl PluginsConfig {
    /// Range checks; `Err((key, reason))`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let max = TIMEOUT_MAX.as_secs();
        if self.default_timeout == 0 || self.default_timeout > max {
            return Err((
                "plugins.default_timeout",
                format!("{} is outside 1..={max} seconds", self.default_timeout),
            ));
        }
        for (key, secs) in &self.timeouts {
            if *secs == 0 || *secs > max {
                return Err((
                    "plugins.timeouts",
                    format!("{key:?} = {secs} is outside 1..={max} seconds"),
                ));
            }
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err((
                    "plugins.timeouts",
                    format!("{key:?} is not a method or namespace"),
                ));
            }
        }
        for m in &self.isolate {
            if basicagent_abi::loader::split_method(m).is_err() {
                return Err((
                    "plugins.isolate",
                    format!("{m:?} is not a method (ns.name)"),
                ));
            }
        }
        if self.grace > max {
            return Err((
                "plugins.grace",
                format!("{} is more than {max} seconds", self.grace),
            ));
        }
        if self.quarantine_window == 0 || self.quarantine_window > max {
            return Err((
                "plugins.quarantine_window",
                format!("{} is outside 1..={max} seconds", self.quarantine_window),
            ));
        }
        Ok(())
    }

    /// The limits these settings give.
    pub fn limits(&self) -> Limits {
        Limits {
            default_timeout: Duration::from_secs(self.default_timeout),
            timeouts: self
                .timeouts
                .iter()
                .map(|(k, v)| (k.clone(), Duration::from_secs(*v)))
                .collect(),
            grace: Duration::from_secs(self.grace),
            strikes: self.quarantine_after,
            window: Duration::from_secs(self.quarantine_window),
        }
    }
}

/// Deadlines and quarantine thresholds, as durations.
#[derive(Debug, Clone)]
pub struct Limits {
    pub default_timeout: Duration,
    pub timeouts: HashMap<String, Duration>,
    pub grace: Duration,
    pub strikes: u32,
    pub window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        PluginsConfig::default().limits()
    }
}

impl Limits {
    /// How long a call of `method` with this request may run: the
    /// request's own positive `timeout` (seconds, capped at
    /// [`TIMEOUT_MAX`]) plus the grace, else the method's or namespace's
    /// configured timeout, else the default.
    pub fn deadline_for(&self, method: &str, request: &[u8]) -> Duration {
        if let Some(own) = request_timeout(request) {
            return own.saturating_add(self.grace);
        }
        if let Some(d) = self.timeouts.get(method) {
            return *d;
        }
        let ns = method.split('.').next().unwrap_or(method);
        self.timeouts
            .get(ns)
            .copied()
            .unwrap_or(self.default_timeout)
    }
}

/// The request's top-level `"timeout"`, when it is a positive finite
/// number of seconds (parsed only when the bytes mention it).
fn request_timeout(request: &[u8]) -> Option<Duration> {
    let secs = basicagent_proto::quarantine::request_timeout(request)?;
    (secs.is_finite() && secs > 0.0)
        .then(|| Duration::from_secs_f64(secs.min(TIMEOUT_MAX.as_secs_f64())))
}

/// The deadlines of the calls in flight, earliest first.
#[derive(Debug, Default)]
pub struct Watchdog {
    by_time: BTreeSet<(Instant, u64)>,
    /// The deadline and the time the call was given.
    by_call: HashMap<u64, (Instant, Duration)>,
}

impl Watchdog {
    /// Watches `call`, started at `now`, for `limit`.
    pub fn watch(&mut self, call: u64, now: Instant, limit: Duration) {
        self.forget(call);
        let deadline = after(now, limit);
        self.by_time.insert((deadline, call));
        self.by_call.insert(call, (deadline, limit));
    }

    /// The call finished: no deadline any more.
    pub fn forget(&mut self, call: u64) {
        if let Some((t, _)) = self.by_call.remove(&call) {
            self.by_time.remove(&(t, call));
        }
    }

    /// The earliest deadline, for the loop's poll timeout.
    pub fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|(t, _)| *t)
    }

    /// Removes and returns the calls (with the time they were given)
    /// whose deadline is at or before `now`.
    pub fn expired(&mut self, now: Instant) -> Vec<(u64, Duration)> {
        let mut out = Vec::new();
        while let Some(&(t, call)) = self.by_time.first() {
            if t > now {
                break;
            }
            self.by_time.pop_first();
            if let Some((_, limit)) = self.by_call.remove(&call) {
                out.push((call, limit));
            }
        }
        out
    }

    /// Calls watched.
    pub fn len(&self) -> usize {
        self.by_call.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_call.is_empty()
    }
}

/// A file's identity: a change of any part is a new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileStamp {
    /// The stamp of `path` (not following a final symlink); `None` if it
    /// cannot be read.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let m = std::fs::symlink_metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }
}

/// One quarantined plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The plugin's name (`getinfo_testkit`).
    pub name: String,
    pub version: String,
    pub path: PathBuf,
    pub reason: String,
    /// `None`: until the file changes (a crash).
    pub until: Option<Instant>,
    /// The file as it was when quarantined.
    pub stamp: Option<FileStamp>,
}

#[derive(Debug, Default)]
struct Record {
    strikes: VecDeque<Instant>,
    entry: Option<Entry>,
}

/// Strikes and quarantines, keyed by plugin file path.
#[derive(Debug, Default)]
pub struct Quarantine {
    plugins: HashMap<PathBuf, Record>,
}

/// What a request to a quarantined plugin is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub message: String,
}

impl Quarantine {
    /// Counts a failure (`what`: "timed out", "panicked") of the plugin at
    /// `path`; quarantines it when the strikes within the window reach the
    /// limit. Returns the new entry if this strike quarantined it.
    #[allow(clippy::too_many_arguments)]
    pub fn strike(
        &mut self,
        limits: &Limits,
        path: &Path,
        name: &str,
        version: &str,
        what: &str,
        now: Instant,
    ) -> Option<Entry> {
        let rec = self.plugins.entry(path.to_owned()).or_default();
        rec.strikes.push_back(now);
        while rec
            .strikes
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= limits.window)
        {
            rec.strikes.pop_front();
        }
        if limits.strikes == 0 || rec.strikes.len() < limits.strikes as usize {
            if let Some(e) = rec.entry.as_mut().filter(|e| e.until.is_some()) {
                e.until = Some(after(now, limits.window));
            }
            return None;
        }
        let n = rec.strikes.len();
        let window = limits.window.as_secs();
        let reason = format!("{n} calls {what} or failed within {window} s; last: {what}");
        let entry = Entry {
            name: name.to_owned(),
            version: version.to_owned(),
            path: path.to_owned(),
            reason,
            until: Some(after(now, limits.window)),
            stamp: FileStamp::of(path),
        };
        let fresh = rec.entry.is_none();
        rec.entry = Some(entry.clone());
        fresh.then_some(entry)
    }

    /// Quarantines the plugin at `path` until its file changes (a crash).
    pub fn until_changed(&mut self, path: &Path, name: &str, version: &str, reason: String) {
        let rec = self.plugins.entry(path.to_owned()).or_default();
        rec.entry = Some(Entry {
            name: name.to_owned(),
            version: version.to_owned(),
            path: path.to_owned(),
            reason,
            until: None,
            stamp: FileStamp::of(path),
        });
    }

    /// `Some(refusal)` if the plugin at `path` is quarantined at `now`.
    /// A quarantine whose time passed, or whose file changed, is lifted
    /// here (logged); `Released` tells the caller to load the new file.
    pub fn check(&mut self, path: &Path, now: Instant) -> Check {
        let Some(rec) = self.plugins.get_mut(path) else {
            return Check::Clear;
        };
        let Some(e) = rec.entry.as_ref() else {
            return Check::Clear;
        };
        if e.until.is_some_and(|t| now >= t) {
            log::info!(
                "plugin {} released from quarantine: its time passed",
                e.name
            );
            rec.entry = None;
            rec.strikes.clear();
            return Check::Clear;
        }
        if FileStamp::of(path) != e.stamp {
            log::info!(
                "plugin {} released from quarantine: {} changed",
                e.name,
                path.display()
            );
            let old = rec.entry.take();
            rec.strikes.clear();
            return Check::Changed(old.map(Box::new));
        }
        Check::Refused(Refusal {
            message: format!(
                "Plugin failure: quarantined until {} ({}); release with `BasicAgentCtl plugin release {}`",
                until_text(e.until, now),
                e.reason,
                e.name
            ),
        })
    }

    /// Puts back a quarantine lifted by a file change whose new version
    /// did not load (the old code would be called again), stamped with
    /// the file as it is now.
    pub fn restore(&mut self, mut entry: Entry) {
        entry.stamp = FileStamp::of(&entry.path);
        entry.reason = format!("{}; its new file did not load", entry.reason);
        let rec = self.plugins.entry(entry.path.clone()).or_default();
        rec.entry = Some(entry);
    }

    /// Lifts the quarantine of the plugin named `name` (its plugin name,
    /// `getinfo_testkit`, or a method it serves is matched by the caller).
    /// Returns whether one was lifted.
    pub fn release(&mut self, name: &str) -> bool {
        let mut found = false;
        for rec in self.plugins.values_mut() {
            if rec.entry.as_ref().is_some_and(|e| e.name == name) {
                log::info!("plugin {name} released from quarantine by request");
                rec.entry = None;
                rec.strikes.clear();
                found = true;
            }
        }
        found
    }

    /// The quarantined plugins (for `agent.info` and `BasicAgentCtl -l`).
    pub fn list(&self, now: Instant) -> Vec<QuarantinedPlugin> {
        let mut out: Vec<_> = self
            .plugins
            .values()
            .filter_map(|r| r.entry.as_ref())
            .filter(|e| e.until.is_none_or(|t| now < t))
            .map(|e| QuarantinedPlugin {
                plugin: e.name.clone(),
                version: e.version.clone(),
                file: e.path.to_string_lossy().into_owned(),
                reason: e.reason.clone(),
                until: until_text(e.until, now),
                seconds_left: e.until.map(|t| t.saturating_duration_since(now).as_secs()),
            })
            .collect();
        out.sort_by(|a, b| a.plugin.cmp(&b.plugin));
        out
    }
}

/// The outcome of [`Quarantine::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Clear,
    /// Was quarantined (the lifted entry); its file changed since: load
    /// the new version, or [`Quarantine::restore`] the entry if it does
    /// not load.
    Changed(Option<Box<Entry>>),
    Refused(Refusal),
}

/// `2026-12-01T21:30:00Z`, or "its file changes" for a crash quarantine.
/// The wall clock is read here only to print the instant for people; the
/// decision is made in virtual time.
fn until_text(until: Option<Instant>, now: Instant) -> String {
    match until {
        None => "its file changes".to_owned(),
        Some(t) => {
            let left = t.saturating_duration_since(now);
            let at = SystemTime::now()
                .checked_add(left)
                .and_then(|s| s.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            utc(at)
        }
    }
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (proleptic
/// Gregorian, Howard Hinnant's days-to-civil).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_come_from_the_request_then_the_method_then_the_namespace() {
        let mut c = PluginsConfig::default();
        c.timeouts.insert("getinfo".into(), 10);
        c.timeouts.insert("getinfo.packages".into(), 120);
        let l = c.limits();
        let s = Duration::from_secs;
        assert_eq!(l.deadline_for("getinfo.kernel", b"{}"), s(10));
        assert_eq!(l.deadline_for("getinfo.packages", b"{}"), s(120));
        assert_eq!(l.deadline_for("sync.bash", b"{}"), s(30));
        assert_eq!(l.deadline_for("sync.bash", br#"{"timeout":7}"#), s(12));
        assert_eq!(l.deadline_for("sync.bash", br#"{"timeout":-1}"#), s(30));
        assert_eq!(l.deadline_for("sync.bash", br#"{"timeout":"x"}"#), s(30));
        assert_eq!(
            l.deadline_for("sync.bash", br#"{"timeout":1e300}"#),
            TIMEOUT_MAX + s(5)
        );
    }

    #[test]
    fn the_watchdog_returns_expired_calls_in_order_and_forgets_finished_ones() {
        let t0 = Instant::now();
        let mut w = Watchdog::default();
        let s = Duration::from_secs;
        w.watch(1, t0, s(3));
        w.watch(2, t0, s(1));
        w.watch(3, t0, s(2));
        w.forget(3);
        assert_eq!(w.next(), Some(t0 + s(1)));
        assert!(w.expired(t0).is_empty());
        assert_eq!(w.expired(t0 + s(5)), vec![(2, s(1)), (1, s(3))]);
        assert!(w.is_empty());
        assert_eq!(w.next(), None);
    }

    #[test]
    fn strikes_within_the_window_quarantine_and_the_window_releases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libgetinfo_x.so");
        std::fs::write(&path, b"x").unwrap();
        let limits = Limits {
            strikes: 2,
            window: Duration::from_secs(60),
            ..Limits::default()
        };
        let t0 = Instant::now();
        let mut q = Quarantine::default();
        assert!(q
            .strike(&limits, &path, "getinfo_x", "1", "timed out", t0)
            .is_none());
        // A strike after the window: the first no longer counts.
        let t1 = t0 + Duration::from_secs(61);
        assert!(q
            .strike(&limits, &path, "getinfo_x", "1", "timed out", t1)
            .is_none());
        assert_eq!(q.check(&path, t1), Check::Clear);
        let e = q
            .strike(
                &limits,
                &path,
                "getinfo_x",
                "1",
                "panicked",
                t1 + Duration::from_secs(1),
            )
            .unwrap();
        assert!(e.reason.contains("2 calls"), "{}", e.reason);
        let Check::Refused(r) = q.check(&path, t1 + Duration::from_secs(2)) else {
            panic!("not refused");
        };
        assert!(
            r.message
                .starts_with("Plugin failure: quarantined until 20"),
            "{}",
            r.message
        );
        assert_eq!(q.list(t1).len(), 1);
        assert_eq!(q.check(&path, t1 + Duration::from_secs(62)), Check::Clear);
        assert!(q.list(t1 + Duration::from_secs(62)).is_empty());
    }

    #[test]
    fn a_changed_file_or_a_release_lifts_the_quarantine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libgetinfo_x.so");
        std::fs::write(&path, b"x").unwrap();
        let t0 = Instant::now();
        let mut q = Quarantine::default();
        q.until_changed(&path, "getinfo_x", "1", "crashed the daemon".into());
        let far = t0 + Duration::from_secs(10 * 365 * 86_400);
        assert!(
            matches!(q.check(&path, far), Check::Refused(r) if r.message.contains("its file changes"))
        );
        std::fs::write(&path, b"xy").unwrap();
        assert!(matches!(q.check(&path, t0), Check::Changed(Some(_))));
        assert_eq!(q.check(&path, t0), Check::Clear);
        q.until_changed(&path, "getinfo_x", "1", "crashed".into());
        assert!(!q.release("getinfo_y"));
        assert!(q.release("getinfo_x"));
        assert_eq!(q.check(&path, t0), Check::Clear);
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_796_158_800), "2026-12-01T21:00:00Z");
    }

    #[test]
    fn bad_settings_are_named() {
        let mut c = PluginsConfig {
            default_timeout: 0,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "plugins.default_timeout");
        c.default_timeout = 5;
        c.timeouts.insert("getinfo".into(), 0);
        assert_eq!(c.validate().unwrap_err().0, "plugins.timeouts");
        c.timeouts.clear();
        c.isolate = vec!["fixture misbehave".into()];
        assert_eq!(c.validate().unwrap_err().0, "plugins.isolate");
        c.isolate = vec!["fixture.misbehave".into()];
        c.quarantine_window = 0;
        assert_eq!(c.validate().unwrap_err().0, "plugins.quarantine_window");
        c.quarantine_window = 1;
        assert!(c.validate().is_ok());
        // Through the config file: an unknown [plugins] key is named.
        let e = crate::config::Config::from_toml_str(
            "[plugins]
default_timeot = 3
",
        )
        .unwrap_err();
        assert!(e.to_string().contains("default_timeot"), "{e}");
    }
}
