//! The pure core: /etc/passwd and /etc/group bytes in, the `data` JSON
//! out. Never panics; a line that does not fit (comment, blank, NIS
//! `+`/`-` entry, wrong field count, non-numeric id, not UTF-8) is skipped.

use std::collections::HashMap;

use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;

use crate::args::Selection;
use crate::CollectorError;

/// Lines of `text` that can hold a record, without a trailing `\r`.
fn records(text: &[u8]) -> impl Iterator<Item = &str> {
    text.split(|&b| b == b'\n').filter_map(|line| {
        let line = std::str::from_utf8(line).ok()?;
        let line = line.strip_suffix('\r').unwrap_or(line);
        let first = line.trim_start().chars().next()?;
        (!matches!(first, '#' | '+' | '-')).then_some(line)
    })
}

/// Splits a record into exactly `N` `:`-separated fields.
fn fields<const N: usize>(line: &str) -> Option<[&str; N]> {
    let mut out = [""; N];
    let mut parts = line.split(':');
    for slot in &mut out {
        *slot = parts.next()?;
    }
    parts.next().is_none().then_some(out)
}

/// One line of /etc/group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupEntry<'a> {
    pub name: &'a str,
    pub gid: u32,
    /// The raw member list (`a,b,c`).
    pub members: &'a str,
}

/// The groups of an /etc/group file, in file order.
pub fn groups(text: &[u8]) -> impl Iterator<Item = GroupEntry<'_>> {
    records(text).filter_map(|line| {
        let [name, _password, gid, members] = fields::<4>(line)?;
        if name.is_empty() {
            return None;
        }
        Some(GroupEntry {
            name,
            gid: gid.parse().ok()?,
            members,
        })
    })
}

/// gid → names of the /etc/passwd accounts with that primary gid, in
/// file order. One pass.
pub fn primary_users(passwd: &[u8]) -> HashMap<u32, Vec<&str>> {
    let mut map: HashMap<u32, Vec<&str>> = HashMap::new();
    for line in records(passwd) {
        let Some([name, _pw, _uid, gid, _gecos, _home, _shell]) = fields::<7>(line) else {
            continue;
        };
        if let (false, Ok(gid)) = (name.is_empty(), gid.parse::<u32>()) {
            map.entry(gid).or_default().push(name);
        }
    }
    map
}

/// A comma-separated member list, serialised as an array without
/// collecting it first (empty items dropped).
struct Members<'a>(&'a str);

impl Serialize for Members<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        for m in self.0.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            seq.serialize_element(m)?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
struct GroupOut<'a, 'p> {
    name: &'a str,
    gid: u32,
    members: Members<'a>,
    primary_users: &'p [&'a str],
}

#[derive(Serialize)]
struct Data<'a, 'p> {
    groups: Vec<GroupOut<'a, 'p>>,
    count: usize,
}

fn group_out<'a, 'p>(
    g: GroupEntry<'a>,
    primary: &'p HashMap<u32, Vec<&'a str>>,
) -> GroupOut<'a, 'p> {
    GroupOut {
        name: g.name,
        gid: g.gid,
        members: Members(g.members),
        primary_users: primary.get(&g.gid).map_or(&[], Vec::as_slice),
    }
}

/// Renders the `data` object for `sel`. `-G NAME` matches the first group
/// with that name; failing that, an all-digit NAME matches the first
/// group with that gid; failing both: [`CollectorError::UnknownGroup`].
pub fn collect(group: &[u8], passwd: &[u8], sel: &Selection) -> Result<String, CollectorError> {
    let primary = primary_users(passwd);
    let out = |g| group_out(g, &primary);
    let picked: Vec<GroupOut<'_, '_>> = match sel {
        Selection::All => groups(group).map(out).collect(),
        Selection::One(name) => {
            let by_gid = || {
                let gid: u32 = name
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| name.parse().ok())
                    .flatten()?;
                groups(group).find(|g| g.gid == gid)
            };
            let found = groups(group).find(|g| g.name == name).or_else(by_gid);
            match found {
                Some(g) => vec![out(g)],
                None => return Err(CollectorError::UnknownGroup(name.clone())),
            }
        }
    };
    let data = Data {
        count: picked.len(),
        groups: picked,
    };
    basicagent_collector_kit::to_data(&data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const GROUP: &[u8] = b"root:x:0:\n\
daemon:x:1:\n\
# comment\n\
sudo:x:27:alice,bob\n\
users:x:100:alice, bob,,\r\n\
+nis\n\
broken\n\
bad:x:notanumber:\n\
alice:x:1000:\n\
42:x:4242:\n\
nogroup:x:65534:\n";

    const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/bash\n\
daemon:x:1:1::/usr/sbin:/usr/sbin/nologin\n\
alice:x:1000:1000::/home/alice:/bin/bash\n\
bob:x:1001:100::/home/bob:/bin/bash\n\
carol:x:1002:100::/home/carol:/bin/bash\n\
nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n\
ghost:x:1003:5555::/:/bin/false\n";

    fn run(sel: Selection) -> Value {
        serde_json::from_str(&collect(GROUP, PASSWD, &sel).unwrap()).unwrap()
    }

    #[test]
    fn all_groups_in_file_order() {
        let v = run(Selection::All);
        let names: Vec<&str> = v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["root", "daemon", "sudo", "users", "alice", "42", "nogroup"]
        );
        assert_eq!(v["count"], 7);
        assert_eq!(
            v["groups"][3],
            json!({"name":"users","gid":100,"members":["alice","bob"],
                   "primary_users":["bob","carol"]})
        );
        assert_eq!(v["groups"][2]["members"], json!(["alice", "bob"]));
        assert_eq!(v["groups"][2]["primary_users"], json!([]));
        assert_eq!(v["groups"][0]["primary_users"], json!(["root"]));
        assert_eq!(v["groups"][6]["primary_users"], json!(["nobody"]));
    }

    #[test]
    fn one_group_by_name_then_gid() {
        let v = run(Selection::One("sudo".into()));
        assert_eq!(v["count"], 1);
        assert_eq!(v["groups"][0]["gid"], 27);
        let v = run(Selection::One("100".into()));
        assert_eq!(v["groups"][0]["name"], "users");
        // A group named "42" wins over gid 42 (there is none here anyway).
        let v = run(Selection::One("42".into()));
        assert_eq!(v["groups"][0]["gid"], 4242);
    }

    #[test]
    fn unknown_group() {
        for name in ["nosuch", "5555", "99999999999"] {
            let e = collect(GROUP, PASSWD, &Selection::One(name.into())).unwrap_err();
            assert!(matches!(&e, CollectorError::UnknownGroup(n) if n == name));
            assert_eq!(e.retcode(), basicagent_abi::retcode::UNKNOWN_USER);
        }
    }

    #[test]
    fn garbage_files() {
        let v: Value =
            serde_json::from_str(&collect(b"\xff\xfe\n:::\n\0", b"\xff", &Selection::All).unwrap())
                .unwrap();
        assert_eq!(v, json!({"groups":[],"count":0}));
        let v: Value = serde_json::from_str(&collect(b"", b"", &Selection::All).unwrap()).unwrap();
        assert_eq!(v["count"], 0);
    }
}
