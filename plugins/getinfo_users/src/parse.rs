//! Pure, never-panicking parsers for /etc/passwd, /etc/group, /etc/shadow,
//! /etc/login.defs and /etc/shells. Every value borrows from the file
//! contents; a line that does not fit (comment, blank, short, NIS `+`/`-`
//! entry, non-numeric id, not UTF-8) is skipped.
//!
//! The shadow parser turns the password field into a [`PasswordState`] on
//! the spot: no hash is ever stored, so none can be serialised.

use serde::Serialize;

use crate::hash::{line_count, map_with_capacity, FastMap, FastSet};

/// Lines of `text` that can hold a record: UTF-8, not blank, not a
/// comment, not a NIS compat entry; a trailing `\r` is dropped.
fn records(text: &[u8]) -> impl Iterator<Item = &str> {
    text.split(|&b| b == b'\n').filter_map(|line| {
        let line = std::str::from_utf8(line).ok()?;
        let line = line.strip_suffix('\r').unwrap_or(line);
        let first = line.trim_start().chars().next()?;
        (!matches!(first, '#' | '+' | '-')).then_some(line)
    })
}

/// Splits a record into exactly `N` `:`-separated fields.
///
/// A plain byte scan: `str::split(':')` compares every match through
/// `memcmp`, which showed at the top of the 10 000-user profile.
fn fields<const N: usize>(line: &str) -> Option<[&str; N]> {
    let mut out = [""; N];
    let mut rest = line;
    let (last, init) = out.split_last_mut()?;
    for slot in init {
        let colon = rest.bytes().position(|b| b == b':')?;
        // `:` is ASCII, so both cuts fall on character boundaries.
        *slot = rest.get(..colon)?;
        rest = rest.get(colon + 1..)?;
    }
    if rest.bytes().any(|b| b == b':') {
        return None;
    }
    *last = rest;
    Some(out)
}

/// One line of /etc/passwd (the password field is never kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswdEntry<'a> {
    pub name: &'a str,
    pub uid: u32,
    pub gid: u32,
    pub gecos: &'a str,
    pub home: &'a str,
    pub shell: &'a str,
}

/// The accounts of an /etc/passwd file, in file order.
pub fn passwd(text: &[u8]) -> impl Iterator<Item = PasswdEntry<'_>> {
    records(text).filter_map(|line| {
        let [name, _password, uid, gid, gecos, home, shell] = fields::<7>(line)?;
        if name.is_empty() {
            return None;
        }
        Some(PasswdEntry {
            name,
            uid: uid.parse().ok()?,
            gid: gid.parse().ok()?,
            gecos,
            home,
            shell,
        })
    })
}

/// What one pass over /etc/group yields: gid → group name, and user →
/// the groups whose member list names them (in file order, each once).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GroupIndex<'a> {
    names: FastMap<u32, &'a str>,
    member_of: FastMap<&'a str, Vec<&'a str>>,
}

impl<'a> GroupIndex<'a> {
    /// One pass over an /etc/group file. With `only` set, memberships are
    /// recorded for that user alone (the `-U NAME` case).
    pub fn build(text: &'a [u8], only: Option<&str>) -> Self {
        let lines = line_count(text);
        let mut index = GroupIndex {
            names: map_with_capacity(lines),
            member_of: map_with_capacity(if only.is_some() { 1 } else { lines }),
        };
        for line in records(text) {
            let Some([name, _password, gid, members]) = fields::<4>(line) else {
                continue;
            };
            let Ok(gid) = gid.parse::<u32>() else {
                continue;
            };
            if name.is_empty() {
                continue;
            }
            // The first line for a gid names it, as getgrgid(3) would.
            index.names.entry(gid).or_insert(name);
            for member in members.split(',').map(str::trim).filter(|m| !m.is_empty()) {
                if only.is_some_and(|o| o != member) {
                    continue;
                }
                index.add_member(member, name);
            }
        }
        index
    }

    /// Records that `user` is a member of `group` (once per group name).
    pub fn add_member(&mut self, user: &'a str, group: &'a str) {
        let groups = self.member_of.entry(user).or_default();
        if !groups.contains(&group) {
            groups.push(group);
        }
    }

    /// Names `gid` as `name` unless a name is known already.
    pub fn add_group(&mut self, gid: u32, name: &'a str) {
        self.names.entry(gid).or_insert(name);
    }

    /// The name of group `gid`.
    pub fn name(&self, gid: u32) -> Option<&'a str> {
        self.names.get(&gid).copied()
    }

    /// The groups whose member list names `user`, in file order.
    pub fn groups_of(&self, user: &str) -> &[&'a str] {
        self.member_of.get(user).map_or(&[], Vec::as_slice)
    }
}

/// What the password field of /etc/shadow says, never the hash itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PasswordState {
    /// A hash: password login works.
    Set,
    /// Empty field: login without a password.
    Empty,
    /// Starts with `!` (`passwd -l`, `usermod -L`, or never set on
    /// RHEL-like systems): password login is refused.
    Locked,
    /// `*` or anything else that no crypt(3) output starts with: there is
    /// no password, other methods (keys) may still work.
    None,
}

impl PasswordState {
    /// Classifies a password field. The field is not kept.
    pub fn of(field: &str) -> Self {
        match field.as_bytes().first() {
            None => PasswordState::Empty,
            Some(b'!') => PasswordState::Locked,
            Some(b'*') => PasswordState::None,
            Some(_) => PasswordState::Set,
        }
    }
}

/// One line of /etc/shadow, without its hash. Numbers are days since
/// 1970-01-01 or counts of days; `None` for an empty field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ShadowEntry {
    pub password: PasswordState,
    pub last_change: Option<i64>,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub warn: Option<i64>,
    pub inactive: Option<i64>,
    pub expire: Option<i64>,
}

/// name → shadow entry for an /etc/shadow file (first line for a name
/// wins). With `only` set, only that user's line is kept.
pub fn shadow<'a>(text: &'a [u8], only: Option<&str>) -> FastMap<&'a str, ShadowEntry> {
    let mut map = map_with_capacity(if only.is_some() { 1 } else { line_count(text) });
    for line in records(text) {
        // shadow(5) has 9 fields; tolerate a missing reserved one.
        let f = match fields::<9>(line) {
            Some(f) => f,
            None => match fields::<8>(line) {
                Some([a, b, c, d, e, f, g, h]) => [a, b, c, d, e, f, g, h, ""],
                None => continue,
            },
        };
        let [name, password, last_change, min, max, warn, inactive, expire, _reserved] = f;
        if name.is_empty() || only.is_some_and(|o| o != name) {
            continue;
        }
        let num = |s: &str| s.trim().parse::<i64>().ok();
        map.entry(name).or_insert(ShadowEntry {
            password: PasswordState::of(password),
            last_change: num(last_change),
            min: num(min),
            max: num(max),
            warn: num(warn),
            inactive: num(inactive),
            expire: num(expire),
        });
    }
    map
}

/// The uid range of normal users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub min: u32,
    pub max: u32,
}

impl Default for UidRange {
    /// shadow-utils' defaults when login.defs does not say.
    fn default() -> Self {
        UidRange {
            min: 1000,
            max: 60000,
        }
    }
}

impl UidRange {
    /// Whether `uid` is a normal user's.
    pub fn is_normal(&self, uid: u32) -> bool {
        (self.min..=self.max).contains(&uid)
    }
}

/// A login.defs number: decimal, `0x` hex or leading-`0` octal (as
/// shadow-utils' `getulong` reads them with base 0).
fn login_defs_number(s: &str) -> Option<u32> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

/// UID_MIN and UID_MAX from a login.defs file: `KEY VALUE` lines, `#`
/// comments. A missing or unreadable value keeps its default; a range
/// with min > max falls back to the defaults as a whole.
pub fn login_defs(text: &[u8]) -> UidRange {
    let mut range = UidRange::default();
    for line in records(text) {
        let mut words = line.split_whitespace();
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let Some(value) = login_defs_number(value) else {
            continue;
        };
        match key {
            "UID_MIN" => range.min = value,
            "UID_MAX" => range.max = value,
            _ => {}
        }
    }
    if range.min > range.max {
        log::warn!(
            "login.defs: UID_MIN {} > UID_MAX {}: using 1000..=60000",
            range.min,
            range.max
        );
        return UidRange::default();
    }
    range
}

/// The shells of an /etc/shells file (one absolute path per line).
pub fn shells(text: &[u8]) -> FastSet<&str> {
    records(text)
        .map(str::trim)
        .filter(|s| s.starts_with('/'))
        .collect()
}

/// glibc's getusershell(3) list when /etc/shells cannot be read.
pub const DEFAULT_SHELLS: [&str; 2] = ["/bin/sh", "/bin/csh"];

/// Whether `shell` lets the user log in: not empty, not a `nologin` or
/// `false` program, and listed in /etc/shells (what chsh(1), ftpd and
/// sshd's `AllowUsers` checks rely on).
pub fn is_login_shell(shell: &str, shells: &FastSet<&str>) -> bool {
    let base = shell.rsplit('/').next().unwrap_or(shell);
    !shell.is_empty() && base != "nologin" && base != "false" && shells.contains(shell)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/bash\n\
# a comment\n\
\n\
   \n\
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
short:x:5\n\
badid:x:abc:1::/:/bin/sh\n\
toomany:x:1:1:a:b:c:d\n\
+nisuser::::::\n\
-nisminus::::::\n\
:x:9:9::/:/bin/sh\n\
bad\xffutf8:x:7:7::/:/bin/sh\n\
neg:x:-1:1::/:/bin/sh\n\
big:x:4294967296:1::/:/bin/sh\n\
crlf:x:1001:1001:C R,,,:/home/crlf:/bin/bash\r\n\
alice:x:1000:1000:Alice,,,:/home/alice:/bin/bash";

    #[test]
    fn passwd_skips_odd_lines() {
        let names: Vec<&str> = passwd(PASSWD).map(|e| e.name).collect();
        assert_eq!(names, ["root", "daemon", "crlf", "alice"]);
        let alice = passwd(PASSWD).last().unwrap();
        assert_eq!(
            alice,
            PasswdEntry {
                name: "alice",
                uid: 1000,
                gid: 1000,
                gecos: "Alice,,,",
                home: "/home/alice",
                shell: "/bin/bash"
            }
        );
        assert_eq!(passwd(b"").count(), 0);
        assert_eq!(passwd(b"\n\n\n:::::::\n").count(), 0);
    }

    #[test]
    fn group_index_one_pass() {
        let text = b"root:x:0:\n\
sudo:x:27:alice, bob\n\
#x:x:1:alice\n\
broken:x:zz:alice\n\
users:x:100:bob,alice,alice\n\
dup0:x:0:carol\n\
short:x\n\
alice:x:1000:\n";
        let g = GroupIndex::build(text, None);
        assert_eq!(g.name(0), Some("root"));
        assert_eq!(g.name(1000), Some("alice"));
        assert_eq!(g.name(5), None);
        assert_eq!(g.groups_of("alice"), ["sudo", "users"]);
        assert_eq!(g.groups_of("bob"), ["sudo", "users"]);
        assert_eq!(g.groups_of("carol"), ["dup0"]);
        assert!(g.groups_of("nobody").is_empty());
        let only = GroupIndex::build(text, Some("bob"));
        assert_eq!(only.groups_of("bob"), ["sudo", "users"]);
        assert!(only.groups_of("alice").is_empty());
        assert_eq!(only.name(27), Some("sudo"));
    }

    #[test]
    fn password_states() {
        assert_eq!(PasswordState::of("$6$salt$hash"), PasswordState::Set);
        assert_eq!(PasswordState::of("$y$j9T$salt$hash"), PasswordState::Set);
        assert_eq!(PasswordState::of(""), PasswordState::Empty);
        assert_eq!(PasswordState::of("!"), PasswordState::Locked);
        assert_eq!(PasswordState::of("!!"), PasswordState::Locked);
        assert_eq!(PasswordState::of("!$6$salt$hash"), PasswordState::Locked);
        assert_eq!(PasswordState::of("*"), PasswordState::None);
        assert_eq!(PasswordState::of("*LK*"), PasswordState::None);
    }

    #[test]
    fn shadow_fields() {
        let text = b"root:$6$abc$def:19000:0:99999:7:::\n\
nopw::19001::::::\n\
eight:!:1:2:3:4:5:6\n\
short:x:1\n\
weird:*:x:-1: 5 :7:8:9:\n";
        let s = shadow(text, None);
        assert_eq!(s.len(), 4);
        assert_eq!(
            s["root"],
            ShadowEntry {
                password: PasswordState::Set,
                last_change: Some(19000),
                min: Some(0),
                max: Some(99999),
                warn: Some(7),
                inactive: None,
                expire: None
            }
        );
        assert_eq!(s["nopw"].password, PasswordState::Empty);
        assert_eq!(s["nopw"].max, None);
        assert_eq!(s["eight"].password, PasswordState::Locked);
        assert_eq!(s["eight"].expire, Some(6));
        assert_eq!(s["weird"].last_change, None);
        assert_eq!(s["weird"].min, Some(-1));
        assert_eq!(s["weird"].max, Some(5));
        assert_eq!(shadow(text, Some("nopw")).len(), 1);
    }

    #[test]
    fn login_defs_parsing() {
        assert_eq!(
            login_defs(b""),
            UidRange {
                min: 1000,
                max: 60000
            }
        );
        let text = b"# UID_MIN 1\nMAIL_DIR /var/mail\n  UID_MIN\t\t 500 # trailing\nUID_MAX 0x7530\nSYS_UID_MIN 100\n";
        assert_eq!(
            login_defs(text),
            UidRange {
                min: 500,
                max: 30000
            }
        );
        assert_eq!(
            login_defs(b"UID_MIN 010\nUID_MAX 99\n"),
            UidRange { min: 8, max: 99 }
        );
        assert_eq!(login_defs(b"UID_MIN abc\nUID_MAX\n"), UidRange::default());
        assert_eq!(
            login_defs(b"UID_MIN 5000\nUID_MAX 10\n"),
            UidRange::default()
        );
        assert_eq!(login_defs(b"UID_MIN 0\n"), UidRange { min: 0, max: 60000 });
        assert!(UidRange::default().is_normal(1000));
        assert!(UidRange::default().is_normal(60000));
        assert!(!UidRange::default().is_normal(65534));
        assert!(!UidRange::default().is_normal(0));
    }

    #[test]
    fn login_shells() {
        let set = shells(
            b"# /etc/shells\n/bin/sh\n/bin/bash\n/usr/bin/bash\n\nnot-a-path\n/usr/sbin/nologin\n",
        );
        assert_eq!(set.len(), 4);
        assert!(is_login_shell("/bin/bash", &set));
        assert!(!is_login_shell("/usr/bin/zsh", &set));
        assert!(!is_login_shell("", &set));
        assert!(!is_login_shell("/usr/sbin/nologin", &set));
        let only_false: FastSet<&str> = ["/bin/false"].into_iter().collect();
        assert!(!is_login_shell("/bin/false", &only_false));
        let defaults: FastSet<&str> = DEFAULT_SHELLS.into_iter().collect();
        assert!(is_login_shell("/bin/sh", &defaults));
    }
}
