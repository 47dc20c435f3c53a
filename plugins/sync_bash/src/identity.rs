//! Who a command runs as: user, group and supplementary groups resolved
//! in the parent (NSS is not async-signal-safe), and the login-like
//! environment that goes with them.

use std::ffi::{CStr, CString};

use basicagent_abi::retcode;

/// A resolved identity, ready to apply in the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub group: String,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// Supplementary groups (`getgrouplist(user, gid)`: includes `gid`).
    pub groups: Vec<libc::gid_t>,
    pub home: String,
    pub shell: String,
}

/// Why a command cannot run as asked.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no such user {0:?}")]
    UnknownUser(String),
    #[error("no such group {0:?}")]
    UnknownGroup(String),
    #[error("the agent runs as uid {euid}, not root: cannot run commands as {user}:{group}")]
    NotRoot {
        euid: libc::uid_t,
        user: String,
        group: String,
    },
    #[error("user database lookup failed: {0}")]
    Lookup(std::io::Error),
}

impl IdentityError {
    /// The protocol retcode.
    pub fn retcode(&self) -> u32 {
        match self {
            IdentityError::UnknownUser(_) | IdentityError::UnknownGroup(_) => retcode::UNKNOWN_USER,
            IdentityError::NotRoot { .. } => retcode::PERMISSION_DENIED,
            IdentityError::Lookup(_) => retcode::PLUGIN_FAILURE,
        }
    }
}

struct Passwd {
    uid: libc::uid_t,
    gid: libc::gid_t,
    home: String,
    shell: String,
}

fn text(p: *const libc::c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: a NUL-terminated string inside the buffer getpwnam_r /
    // getgrnam_r filled; the buffer outlives this call.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// Runs a reentrant NSS lookup, growing the buffer on ERANGE.
fn with_buffer<T>(
    mut f: impl FnMut(&mut [libc::c_char]) -> Result<Option<T>, i32>,
) -> Result<Option<T>, IdentityError> {
    let mut size = 1024usize;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        match f(&mut buf) {
            Ok(v) => return Ok(v),
            Err(libc::ERANGE) if size < (1 << 20) => size *= 4,
            // "not found" may come back as an errno with a null result.
            Err(libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM) => return Ok(None),
            Err(e) => return Err(IdentityError::Lookup(std::io::Error::from_raw_os_error(e))),
        }
    }
}

fn passwd(name: &CStr) -> Result<Option<Passwd>, IdentityError> {
    with_buffer(|buf| {
        // SAFETY: all-zero is a valid `passwd` (pointers null).
        let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: valid name, struct, buffer (with its true length) and
        // result pointer, as getpwnam_r requires.
        let rc = unsafe {
            libc::getpwnam_r(
                name.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            )
        };
        if rc != 0 {
            return Err(rc);
        }
        if out.is_null() {
            return Ok(None);
        }
        Ok(Some(Passwd {
            uid: pw.pw_uid,
            gid: pw.pw_gid,
            home: text(pw.pw_dir),
            shell: text(pw.pw_shell),
        }))
    })
}

fn group_by_name(name: &CStr) -> Result<Option<libc::gid_t>, IdentityError> {
    with_buffer(|buf| {
        // SAFETY: all-zero is a valid `group`.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as for getpwnam_r above.
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut gr,
                buf.as_mut_ptr(),
                buf.len(),
                &mut out,
            )
        };
        if rc != 0 {
            return Err(rc);
        }
        Ok((!out.is_null()).then_some(gr.gr_gid))
    })
}

fn group_name(gid: libc::gid_t) -> Result<Option<String>, IdentityError> {
    with_buffer(|buf| {
        // SAFETY: all-zero is a valid `group`.
        let mut gr: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as for getpwnam_r above.
        let rc = unsafe { libc::getgrgid_r(gid, &mut gr, buf.as_mut_ptr(), buf.len(), &mut out) };
        if rc != 0 {
            return Err(rc);
        }
        Ok((!out.is_null()).then(|| text(gr.gr_name)))
    })
}

fn group_list(user: &CStr, gid: libc::gid_t) -> Vec<libc::gid_t> {
    let mut n: libc::c_int = 32;
    loop {
        let mut groups = vec![0 as libc::gid_t; n as usize];
        let mut count = n;
        // SAFETY: `groups` has room for `count` entries; getgrouplist
        // writes at most that many and stores the needed count.
        let rc = unsafe { libc::getgrouplist(user.as_ptr(), gid, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        if count <= n || n >= 65_536 {
            // The list did not fit and no size was suggested: the group
            // itself at least.
            return vec![gid];
        }
        n = count;
    }
}

/// Resolves `user` and `group` (default: the user's primary group).
pub fn resolve(user: &str, group: Option<&str>) -> Result<Identity, IdentityError> {
    let c_user = CString::new(user).map_err(|_| IdentityError::UnknownUser(user.to_owned()))?;
    let pw = passwd(&c_user)?.ok_or_else(|| IdentityError::UnknownUser(user.to_owned()))?;
    let (gid, group) = match group {
        Some(name) => {
            let c = CString::new(name).map_err(|_| IdentityError::UnknownGroup(name.to_owned()))?;
            let gid =
                group_by_name(&c)?.ok_or_else(|| IdentityError::UnknownGroup(name.to_owned()))?;
            (gid, name.to_owned())
        }
        None => (
            pw.gid,
            group_name(pw.gid)?.unwrap_or_else(|| pw.gid.to_string()),
        ),
    };
    let groups = group_list(&c_user, gid);
    Ok(Identity {
        user: user.to_owned(),
        group,
        uid: pw.uid,
        gid,
        groups,
        home: pw.home,
        shell: pw.shell,
    })
}

/// Whether the child must switch identity; refuses when the agent is not
/// root and the target differs from what it runs as.
pub fn needs_switch(
    target: &Identity,
    euid: libc::uid_t,
    egid: libc::gid_t,
) -> Result<bool, IdentityError> {
    if euid == 0 {
        return Ok(true);
    }
    if target.uid == euid && target.gid == egid {
        // Same identity: run with the agent's own groups, nothing to change.
        return Ok(false);
    }
    Err(IdentityError::NotRoot {
        euid,
        user: target.user.clone(),
        group: target.group.clone(),
    })
}

/// The PATH a login shell would get (Debian's login.defs).
pub fn login_path(uid: libc::uid_t) -> &'static str {
    if uid == 0 {
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    } else {
        "/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games"
    }
}

/// The command's environment: HOME, USER, LOGNAME, SHELL, PATH as a login
/// would set them, then the request's variables (which may override).
pub fn login_env(id: &Identity, extra: &[(String, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("HOME".into(), id.home.clone()),
        ("USER".into(), id.user.clone()),
        ("LOGNAME".into(), id.user.clone()),
        (
            "SHELL".into(),
            if id.shell.is_empty() {
                "/bin/sh".into()
            } else {
                id.shell.clone()
            },
        ),
        ("PATH".into(), login_path(id.uid).into()),
    ];
    for (k, v) in extra {
        match env.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.clone(),
            None => env.push((k.clone(), v.clone())),
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nobody() -> Identity {
        Identity {
            user: "nobody".into(),
            group: "nogroup".into(),
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
            home: "/nonexistent".into(),
            shell: "/usr/sbin/nologin".into(),
        }
    }

    #[test]
    fn resolves_root_and_nobody() {
        let root = resolve("root", None).unwrap();
        assert_eq!((root.uid, root.gid, root.group.as_str()), (0, 0, "root"));
        let nobody = resolve("nobody", Some("daemon")).unwrap();
        assert_eq!(
            (nobody.uid, nobody.gid, nobody.group.as_str()),
            (65534, 1, "daemon")
        );
        assert!(nobody.groups.contains(&1));
    }

    #[test]
    fn unknown_names() {
        let e = resolve("no-such-user-ba", None).unwrap_err();
        assert_eq!(
            (e.retcode(), e.to_string()),
            (3024, "no such user \"no-such-user-ba\"".to_owned())
        );
        let e = resolve("root", Some("no-such-group-ba")).unwrap_err();
        assert_eq!(e.retcode(), 3024);
    }

    #[test]
    fn switching_rules() {
        assert!(needs_switch(&nobody(), 0, 0).unwrap());
        assert!(!needs_switch(&nobody(), 65534, 65534).unwrap());
        let e = needs_switch(&nobody(), 1000, 1000).unwrap_err();
        assert_eq!(e.retcode(), 3027);
    }

    #[test]
    fn environment() {
        let env = login_env(
            &nobody(),
            &[("PATH".into(), "/x".into()), ("FOO".into(), "bar".into())],
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("HOME"), Some("/nonexistent"));
        assert_eq!(get("USER"), Some("nobody"));
        assert_eq!(get("LOGNAME"), Some("nobody"));
        assert_eq!(get("SHELL"), Some("/usr/sbin/nologin"));
        assert_eq!(get("PATH"), Some("/x"));
        assert_eq!(get("FOO"), Some("bar"));
        assert_eq!(env.len(), 6);
    }
}
