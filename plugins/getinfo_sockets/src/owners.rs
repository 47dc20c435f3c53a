//! Which process holds which socket: one walk over `/proc/*/fd` per call,
//! reading each link once, stopping as soon as every wanted inode has an
//! owner. Processes and fds vanish during the walk; every failed read is
//! skipped. Without the rights to read a process's fd directory (not
//! root), its sockets stay without an owner.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::parse::socket_inode;

/// The process owning a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    /// `/proc/PID/comm` without its newline; `None` if it vanished.
    pub name: Option<String>,
}

/// Maps each inode of `wanted` to the first process (lowest pid) that has
/// an fd on it.
pub fn find_owners(proc_root: &Path, wanted: &HashSet<u64>) -> HashMap<u64, Owner> {
    let mut owners = HashMap::with_capacity(wanted.len());
    if wanted.is_empty() {
        return owners;
    }
    let Ok(list) = std::fs::read_dir(proc_root) else {
        return owners;
    };
    let mut pids: Vec<u32> = list
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            let name = name.to_str()?;
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            name.parse().ok()
        })
        .collect();
    pids.sort_unstable();
    let mut path = PathBuf::from(proc_root);
    for pid in pids {
        path.push(pid.to_string());
        let mut mine = false;
        path.push("fd");
        if let Ok(fds) = std::fs::read_dir(&path) {
            for fd in fds.flatten() {
                let Ok(target) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                let Some(inode) = socket_inode(target.as_os_str().as_bytes()) else {
                    continue;
                };
                if wanted.contains(&inode) && !owners.contains_key(&inode) {
                    owners.insert(inode, Owner { pid, name: None });
                    mine = true;
                }
            }
        }
        path.pop();
        if mine {
            path.push("comm");
            let name = std::fs::read(&path)
                .ok()
                .map(|c| String::from_utf8_lossy(c.trim_ascii_end()).into_owned());
            path.pop();
            for owner in owners.values_mut().filter(|o| o.pid == pid) {
                owner.name.clone_from(&name);
            }
        }
        path.pop();
        if owners.len() == wanted.len() {
            break;
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn owners_from_fd_links() {
        let d = tempfile::tempdir().unwrap();
        let proc = |pid: &str, comm: Option<&str>, fds: &[(&str, &str)]| {
            let dir = d.path().join(pid);
            fs::create_dir_all(dir.join("fd")).unwrap();
            if let Some(c) = comm {
                fs::write(dir.join("comm"), format!("{c}\n")).unwrap();
            }
            for (fd, target) in fds {
                symlink(target, dir.join("fd").join(fd)).unwrap();
            }
        };
        proc(
            "7",
            Some("sshd"),
            &[("0", "/dev/null"), ("3", "socket:[100]")],
        );
        // A fork that shares the socket: the lower pid is reported.
        proc(
            "9",
            Some("sshd-child"),
            &[("3", "socket:[100]"), ("4", "socket:[200]")],
        );
        proc("12", None, &[("5", "socket:[300]"), ("6", "pipe:[300]")]);
        proc("13", Some("late"), &[("1", "socket:[400]")]);
        // Vanished: no fd directory, a dir where a link should be.
        fs::create_dir(d.path().join("20")).unwrap();
        fs::create_dir_all(d.path().join("21/fd/0")).unwrap();
        fs::create_dir(d.path().join("net")).unwrap();
        let wanted: HashSet<u64> = [100, 200, 300, 999].into_iter().collect();
        let owners = find_owners(d.path(), &wanted);
        assert_eq!(
            owners.get(&100),
            Some(&Owner {
                pid: 7,
                name: Some("sshd".into())
            })
        );
        assert_eq!(
            owners.get(&200),
            Some(&Owner {
                pid: 9,
                name: Some("sshd-child".into())
            })
        );
        assert_eq!(
            owners.get(&300),
            Some(&Owner {
                pid: 12,
                name: None
            })
        );
        assert_eq!(owners.get(&999), None);
        assert_eq!(owners.len(), 3);
        // Stops early once all are found: 13 would be read last.
        let wanted: HashSet<u64> = [100].into_iter().collect();
        assert_eq!(find_owners(d.path(), &wanted).len(), 1);
        assert!(find_owners(d.path(), &HashSet::new()).is_empty());
        assert!(find_owners(Path::new("/nonexistent"), &wanted).is_empty());
    }
}
