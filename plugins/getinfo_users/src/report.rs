//! The collector core: file contents in, `data` JSON out. Pure (no I/O, no
//! clock, no euid check), so tests and the benchmark drive it with
//! in-memory fixtures.
//!
//! Cost is linear: one pass over each file, hash lookups per user.

use std::cell::{Cell, RefCell};

use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};

use crate::args::Selection;
use crate::hash::{FastMap, FastSet};
use crate::parse::{self, GroupIndex, PasswdEntry, ShadowEntry, UidRange};
use crate::CollectorError;

/// What the shadow file gave, decided by the caller (root or not,
/// readable or not).
#[derive(Debug, Clone)]
pub enum ShadowSource<'a> {
    /// The contents of /etc/shadow: every user gets a `shadow` object
    /// (`null` for a user without a shadow line).
    Readable(&'a [u8]),
    /// No `shadow` keys; the note says why, as top-level `shadow_note`.
    Unavailable(&'a str),
}

/// The files the report is made of, as bytes.
#[derive(Debug, Clone)]
pub struct Sources<'a> {
    pub passwd: &'a [u8],
    pub group: &'a [u8],
    /// /etc/login.defs; `None` (unreadable) means UID_MIN 1000, UID_MAX 60000.
    pub login_defs: Option<&'a [u8]>,
    /// /etc/shells; `None` (unreadable) means glibc's default list.
    pub shells: Option<&'a [u8]>,
    pub shadow: ShadowSource<'a>,
}

/// Everything about the host that is not a user or a group.
pub struct Context<'a> {
    range: UidRange,
    shells: FastSet<&'a str>,
    /// `Ok`: per-user entries; `Err`: the note.
    shadow: Result<FastMap<&'a str, ShadowEntry>, &'a str>,
}

impl<'a> Context<'a> {
    /// Parses login.defs, shells and shadow (only `only`'s line if set).
    pub fn new(src: &Sources<'a>, only: Option<&str>) -> Self {
        let range = src.login_defs.map(parse::login_defs).unwrap_or_default();
        let shells = match src.shells {
            Some(text) => parse::shells(text),
            None => parse::DEFAULT_SHELLS.into_iter().collect(),
        };
        let shadow = match &src.shadow {
            ShadowSource::Readable(text) => Ok(parse::shadow(text, only)),
            ShadowSource::Unavailable(note) => Err(*note),
        };
        Context {
            range,
            shells,
            shadow,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    Normal,
    System,
}

#[derive(Serialize)]
struct UserOut<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    group: Option<&'a str>,
    groups: &'a [&'a str],
    gecos: &'a str,
    home: &'a str,
    shell: &'a str,
    login_shell: bool,
    kind: Kind,
    /// Absent without shadow access; `null` for a user without a line.
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow: Option<Option<&'a ShadowEntry>>,
}

/// The `users` array, serialised straight from the passwd iterator (no
/// intermediate vector of records); counts what it writes into `count`.
struct UsersOut<'r, 'a, I> {
    entries: RefCell<Option<I>>,
    groups: &'r GroupIndex<'a>,
    ctx: &'r Context<'a>,
    sel: &'r Selection,
    count: &'r Cell<usize>,
}

impl<'r, 'a, I> Serialize for UsersOut<'r, 'a, I>
where
    I: Iterator<Item = PasswdEntry<'a>>,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (ctx, groups) = (self.ctx, self.groups);
        let mut seq = serializer.serialize_seq(None)?;
        for e in self.entries.borrow_mut().take().into_iter().flatten() {
            let normal = ctx.range.is_normal(e.uid);
            let wanted = match self.sel {
                Selection::All | Selection::One(_) => true,
                Selection::Normal => normal,
                Selection::System => !normal,
            };
            if !wanted {
                continue;
            }
            seq.serialize_element(&UserOut {
                name: e.name,
                uid: e.uid,
                gid: e.gid,
                group: groups.name(e.gid),
                groups: groups.groups_of(e.name),
                gecos: e.gecos,
                home: e.home,
                shell: e.shell,
                login_shell: parse::is_login_shell(e.shell, &ctx.shells),
                kind: if normal { Kind::Normal } else { Kind::System },
                shadow: ctx.shadow.as_ref().ok().map(|m| m.get(e.name)),
            })?;
            self.count.set(self.count.get() + 1);
        }
        seq.end()
    }
}

/// A number known only once the fields before it were serialised.
struct CountOut<'r>(&'r Cell<usize>);

impl Serialize for CountOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0.get() as u64)
    }
}

/// The `data` object. Field order matters: `users` is written (and
/// counted) before `count`.
#[derive(Serialize)]
#[serde(bound = "I: Iterator<Item = PasswdEntry<'a>>")]
struct ReportOut<'r, 'a, I>
where
    I: Iterator<Item = PasswdEntry<'a>>,
{
    users: UsersOut<'r, 'a, I>,
    count: CountOut<'r>,
    uid_min: u32,
    uid_max: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow_note: Option<&'a str>,
}

/// Renders `entries` (already chosen by name, if any) filtered by `sel`.
/// `size_hint` (bytes) pre-sizes the output buffer.
pub fn render<'a>(
    entries: impl Iterator<Item = PasswdEntry<'a>>,
    groups: &GroupIndex<'a>,
    ctx: &Context<'a>,
    sel: &Selection,
    size_hint: usize,
) -> Result<String, CollectorError> {
    let count = Cell::new(0);
    let out = ReportOut {
        users: UsersOut {
            entries: RefCell::new(Some(entries)),
            groups,
            ctx,
            sel,
            count: &count,
        },
        count: CountOut(&count),
        uid_min: ctx.range.min,
        uid_max: ctx.range.max,
        shadow_note: ctx.shadow.as_ref().err().copied(),
    };
    let mut buf = Vec::with_capacity(size_hint);
    serde_json::to_writer(&mut buf, &out).map_err(CollectorError::Serialise)?;
    // serde_json writes UTF-8 only; checked anyway, it is cheap.
    String::from_utf8(buf).map_err(|e| CollectorError::Serialise(serde::ser::Error::custom(e)))
}

/// The whole core over file contents: the `data` JSON for `sel`.
///
/// `-U NAME` for a name not in `passwd` is [`CollectorError::UnknownUser`];
/// the plugin glue may then ask NSS.
pub fn collect(src: &Sources<'_>, sel: &Selection) -> Result<String, CollectorError> {
    let only = match sel {
        Selection::One(name) => Some(name.as_str()),
        _ => None,
    };
    let one = match only {
        Some(name) => match parse::passwd(src.passwd).find(|e| e.name == name) {
            Some(entry) => Some(entry),
            None => return Err(CollectorError::UnknownUser(name.to_owned())),
        },
        None => None,
    };
    let groups = GroupIndex::build(src.group, only);
    let ctx = Context::new(src, only);
    match one {
        Some(entry) => render(std::iter::once(entry), &groups, &ctx, sel, 1024),
        // Each record grows by its keys, groups and shadow object: size
        // the buffer once, generously (pages never written cost nothing).
        None => {
            let hint = 512 + 2 * src.passwd.len() + 320 * crate::hash::line_count(src.passwd);
            render(parse::passwd(src.passwd), &groups, &ctx, sel, hint)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/bash\n\
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
# comment\n\
broken line\n\
bin:x:2:2:bin:/bin:/usr/sbin/nologin\n\
sync:x:4:65534:sync:/bin:/bin/sync\n\
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
alice:x:1000:1000:Alice Smith,,,:/home/alice:/bin/bash\n\
bob:x:1001:1001::/home/bob:/bin/zsh\n\
edge:x:60000:60000::/home/edge:\n\
above:x:60001:100::/home/above:/bin/false\n\
lost:x:1002:4242::/home/lost:/bin/bash\n";

    const GROUP: &[u8] = b"root:x:0:\n\
daemon:x:1:\n\
bin:x:2:\n\
sudo:x:27:alice\n\
users:x:100:alice,bob\n\
nogroup:x:65534:\n\
alice:x:1000:\n\
bob:x:1001:\n\
adm:x:4:bob\n";

    const SHADOW: &[u8] = b"root:$6$rootsalt$ROOTHASHrootHASH1234567890:19500:0:99999:7:::\n\
daemon:*:19500:0:99999:7:::\n\
bin:*:19500:0:99999:7:::\n\
nobody:*:19500:0:99999:7:::\n\
alice:$y$j9T$alicesalt$ALICEHASHxyz:19600:1:90:14:30:20000:\n\
bob:!$6$bobsalt$BOBHASH:19601::::::\n\
edge::19602::::::\n\
above:!:::::::\n";

    const SHELLS: &[u8] = b"# /etc/shells: valid login shells\n/bin/sh\n/bin/bash\n/usr/bin/bash\n";

    fn src(shadow: ShadowSource<'static>) -> Sources<'static> {
        Sources {
            passwd: PASSWD,
            group: GROUP,
            login_defs: None,
            shells: Some(SHELLS),
            shadow,
        }
    }

    fn run(src: &Sources<'_>, sel: Selection) -> Value {
        serde_json::from_str(&collect(src, &sel).unwrap()).unwrap()
    }

    fn names(v: &Value) -> Vec<String> {
        v["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["name"].as_str().unwrap().to_owned())
            .collect()
    }

    fn user<'v>(v: &'v Value, name: &str) -> &'v Value {
        v["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["name"] == name)
            .unwrap()
    }

    #[test]
    fn all_users_in_file_order() {
        let v = run(&src(ShadowSource::Unavailable("n")), Selection::All);
        assert_eq!(
            names(&v),
            ["root", "daemon", "bin", "sync", "nobody", "alice", "bob", "edge", "above", "lost"]
        );
        assert_eq!(v["count"], 10);
        assert_eq!(v["uid_min"], 1000);
        assert_eq!(v["uid_max"], 60000);
    }

    #[test]
    fn record_fields() {
        let v = run(&src(ShadowSource::Unavailable("n")), Selection::All);
        let alice = user(&v, "alice");
        assert_eq!(alice["uid"], 1000);
        assert_eq!(alice["gid"], 1000);
        assert_eq!(alice["group"], "alice");
        assert_eq!(alice["groups"], serde_json::json!(["sudo", "users"]));
        assert_eq!(alice["gecos"], "Alice Smith,,,");
        assert_eq!(alice["home"], "/home/alice");
        assert_eq!(alice["shell"], "/bin/bash");
        assert_eq!(alice["login_shell"], true);
        assert_eq!(alice["kind"], "normal");
        assert!(alice.get("shadow").is_none());
        assert_eq!(
            user(&v, "bob")["groups"],
            serde_json::json!(["users", "adm"])
        );
        assert_eq!(
            user(&v, "bob")["login_shell"],
            false,
            "zsh is not in /etc/shells"
        );
        assert_eq!(user(&v, "lost")["group"], Value::Null);
        assert_eq!(user(&v, "root")["groups"], serde_json::json!([]));
        assert_eq!(user(&v, "root")["kind"], "system");
        assert_eq!(user(&v, "nobody")["kind"], "system");
        assert_eq!(user(&v, "nobody")["login_shell"], false);
        assert_eq!(user(&v, "sync")["login_shell"], false);
        assert_eq!(user(&v, "edge")["login_shell"], false, "empty shell");
        assert_eq!(user(&v, "edge")["kind"], "normal");
        assert_eq!(user(&v, "above")["kind"], "system");
        assert_eq!(alice.as_object().unwrap().len(), 10);
    }

    #[test]
    fn normal_and_system_partition_all() {
        let s = src(ShadowSource::Unavailable("n"));
        let all = names(&run(&s, Selection::All));
        let normal = names(&run(&s, Selection::Normal));
        let system = names(&run(&s, Selection::System));
        assert_eq!(normal, ["alice", "bob", "edge", "lost"]);
        assert_eq!(system, ["root", "daemon", "bin", "sync", "nobody", "above"]);
        let mut union: Vec<String> = normal.iter().chain(&system).cloned().collect();
        union.sort();
        let mut all_sorted = all.clone();
        all_sorted.sort();
        assert_eq!(union, all_sorted);
        assert_eq!(run(&s, Selection::Normal)["count"], 4);
    }

    #[test]
    fn login_defs_moves_the_range() {
        let mut s = src(ShadowSource::Unavailable("n"));
        s.login_defs = Some(b"UID_MIN 1001\nUID_MAX 1001\n");
        let v = run(&s, Selection::Normal);
        assert_eq!(names(&v), ["bob"]);
        assert_eq!(v["uid_min"], 1001);
        assert_eq!(v["uid_max"], 1001);
    }

    #[test]
    fn shadow_states_when_readable() {
        let v = run(&src(ShadowSource::Readable(SHADOW)), Selection::All);
        assert!(v.get("shadow_note").is_none());
        assert_eq!(user(&v, "root")["shadow"]["password"], "set");
        assert_eq!(user(&v, "root")["shadow"]["last_change"], 19500);
        assert_eq!(user(&v, "root")["shadow"]["inactive"], Value::Null);
        assert_eq!(user(&v, "daemon")["shadow"]["password"], "none");
        assert_eq!(user(&v, "bob")["shadow"]["password"], "locked");
        assert_eq!(user(&v, "above")["shadow"]["password"], "locked");
        assert_eq!(user(&v, "above")["shadow"]["last_change"], Value::Null);
        assert_eq!(user(&v, "edge")["shadow"]["password"], "empty");
        let alice = &user(&v, "alice")["shadow"];
        assert_eq!(
            *alice,
            serde_json::json!({"password":"set","last_change":19600,"min":1,"max":90,
                               "warn":14,"inactive":30,"expire":20000})
        );
        // In passwd but not in shadow: the key is there, null.
        assert_eq!(user(&v, "lost")["shadow"], Value::Null);
        assert!(user(&v, "lost").as_object().unwrap().contains_key("shadow"));
    }

    #[test]
    fn shadow_note_when_unavailable() {
        let v = run(&src(ShadowSource::Unavailable("not root")), Selection::All);
        assert_eq!(v["shadow_note"], "not root");
        assert!(v["users"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u.get("shadow").is_none()));
    }

    #[test]
    fn hash_never_in_output() {
        for sel in [
            Selection::All,
            Selection::Normal,
            Selection::System,
            Selection::One("alice".into()),
        ] {
            let out = collect(&src(ShadowSource::Readable(SHADOW)), &sel).unwrap();
            assert!(!out.contains('$'), "a '$' hash fragment leaked: {out}");
            for fragment in [
                "rootsalt",
                "ROOTHASH",
                "alicesalt",
                "ALICEHASH",
                "bobsalt",
                "BOBHASH",
                "j9T",
            ] {
                assert!(!out.contains(fragment), "{fragment} leaked");
            }
        }
    }

    #[test]
    fn one_user() {
        let v = run(
            &src(ShadowSource::Readable(SHADOW)),
            Selection::One("bob".into()),
        );
        assert_eq!(names(&v), ["bob"]);
        assert_eq!(v["count"], 1);
        assert_eq!(
            user(&v, "bob")["groups"],
            serde_json::json!(["users", "adm"])
        );
        assert_eq!(user(&v, "bob")["shadow"]["password"], "locked");
        // -U reports system accounts too.
        let v = run(
            &src(ShadowSource::Readable(SHADOW)),
            Selection::One("root".into()),
        );
        assert_eq!(user(&v, "root")["kind"], "system");
    }

    #[test]
    fn unknown_user() {
        let e = collect(
            &src(ShadowSource::Readable(SHADOW)),
            &Selection::One("nosuch".into()),
        )
        .unwrap_err();
        assert!(matches!(&e, CollectorError::UnknownUser(n) if n == "nosuch"));
        assert_eq!(e.retcode(), basicagent_abi::retcode::UNKNOWN_USER);
    }

    #[test]
    fn empty_and_garbage_files() {
        let s = Sources {
            passwd: b"\xff\xfe\n::::\n#\n",
            group: b"\x00\x01:::::\n",
            login_defs: Some(b"\xff"),
            shells: Some(b""),
            shadow: ShadowSource::Readable(b"::::::::\n\xff"),
        };
        let v = run(&s, Selection::All);
        assert_eq!(v["count"], 0);
        assert_eq!(v["users"], serde_json::json!([]));
    }

    #[test]
    fn default_shells_when_unreadable() {
        let mut s = src(ShadowSource::Unavailable("n"));
        s.shells = None;
        let v = run(&s, Selection::All);
        assert_eq!(
            user(&v, "root")["login_shell"],
            false,
            "/bin/bash is not in glibc's default list"
        );
    }
}
