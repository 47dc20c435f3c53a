//! The `-U NAME` fallback for accounts that are not in /etc/passwd (LDAP,
//! sssd, systemd-homed...): one getpwnam_r + getgrouplist through the
//! `uzers` crate. It may block on the network, so the glue runs it on a
//! thread of its own, never on the host's.

use uzers::os::unix::UserExt;

use crate::args::Selection;
use crate::parse::{GroupIndex, PasswdEntry};
use crate::report::{render, Context, Sources};
use crate::CollectorError;

/// An account as NSS returned it, with owned text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NssUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub gecos: String,
    pub home: String,
    pub shell: String,
    /// Every group getgrouplist(3) lists, the primary one included.
    pub groups: Vec<(u32, String)>,
}

/// Looks `name` up through NSS.
pub fn lookup(name: &str) -> Option<NssUser> {
    // uzers panics on an interior NUL; no account name holds one.
    if name.is_empty() || name.contains('\0') {
        return None;
    }
    let user = uzers::get_user_by_name(name)?;
    let gid = user.primary_group_id();
    let groups = uzers::get_user_groups(name, gid)
        .unwrap_or_default()
        .into_iter()
        .map(|g| (g.gid(), g.name().to_string_lossy().into_owned()))
        .collect();
    Some(NssUser {
        name: user.name().to_string_lossy().into_owned(),
        uid: user.uid(),
        gid,
        gecos: user.gecos().to_string_lossy().into_owned(),
        home: user.home_dir().to_string_lossy().into_owned(),
        shell: user.shell().to_string_lossy().into_owned(),
        groups,
    })
}

/// The `data` JSON for one NSS account, with the same rules as the files
/// path: `group` is the primary group's name, `groups` the other groups
/// getgrouplist(3) lists (in gid order), shadow from /etc/shadow if there.
pub fn render_user(user: &NssUser, src: &Sources<'_>) -> Result<String, CollectorError> {
    let entry = PasswdEntry {
        name: &user.name,
        uid: user.uid,
        gid: user.gid,
        gecos: &user.gecos,
        home: &user.home,
        shell: &user.shell,
    };
    let mut groups = GroupIndex::default();
    for (gid, name) in &user.groups {
        groups.add_group(*gid, name);
        if *gid != user.gid {
            groups.add_member(&user.name, name);
        }
    }
    let ctx = Context::new(src, Some(&user.name));
    render(
        std::iter::once(entry),
        &groups,
        &ctx,
        &Selection::One(user.name.clone()),
        1024,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::ShadowSource;

    #[test]
    fn renders_like_a_files_user() {
        let user = NssUser {
            name: "ldapuser".into(),
            uid: 200_001,
            gid: 5000,
            gecos: "LDAP User".into(),
            home: "/home/ldapuser".into(),
            shell: "/bin/bash".into(),
            groups: vec![
                (5000, "staff".into()),
                (5001, "devs".into()),
                (5002, "ops".into()),
            ],
        };
        let src = Sources {
            passwd: b"",
            group: b"",
            login_defs: Some(b"UID_MIN 1000\nUID_MAX 60000\n"),
            shells: Some(b"/bin/bash\n"),
            shadow: ShadowSource::Readable(b"ldapuser:$6$s$h:1:2:3:4:5:6:\n"),
        };
        let v: serde_json::Value =
            serde_json::from_str(&render_user(&user, &src).unwrap()).unwrap();
        let u = &v["users"][0];
        assert_eq!(v["count"], 1);
        assert_eq!(u["group"], "staff");
        assert_eq!(u["groups"], serde_json::json!(["devs", "ops"]));
        assert_eq!(u["kind"], "system", "uid above UID_MAX");
        assert_eq!(u["login_shell"], true);
        assert_eq!(u["shadow"]["password"], "set");
        assert!(!v.to_string().contains('$'));
    }

    #[test]
    fn nul_and_empty_names_are_not_looked_up() {
        assert_eq!(lookup(""), None);
        assert_eq!(lookup("ro\0ot"), None);
    }

    #[test]
    fn root_is_found() {
        let root = lookup("root").unwrap();
        assert_eq!(root.uid, 0);
        assert_eq!(root.gid, 0);
    }
}
