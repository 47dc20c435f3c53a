//! The file-trust rule of BasicAgent: which files an agent that runs as
//! root may load (plugins), trust (the CA bundle) or write (pid and log
//! files).
//!
//! A path is resolved here one component at a time from `/`, each with
//! `openat(O_PATH | O_NOFOLLOW)` relative to the directory before it, and
//! every object met is checked with `fstat` on that descriptor:
//!
//! * every **directory** on the way (the resolved path, `/` included) is
//!   owned by root or by the effective uid and not writable by others. A
//!   directory above the last one may be writable by others if it has the
//!   sticky bit (`/tmp`): there, no one else can rename or remove the
//!   root-owned entry we go through. The **last directory** (the one that
//!   holds the file, or the directory asked for) never may: in `/tmp`
//!   anyone could add a file;
//! * a **symbolic link** met in a directory is followed (its target is
//!   resolved by the same rule, relative to the link's directory) only if
//!   it is owned by root or the effective uid; the last component of a
//!   file opened with [`Follow::No`] is never followed;
//! * the **file** is a regular file owned by root or the effective uid,
//!   not writable by others.
//!
//! Files opened for writing ([`Policy::create_file`]: pid and log files)
//! get the rule for the file and its own directory only; the directories
//! above it are resolved but not checked.
//!
//! "Writable by others" is group- or world-writable (`mode & 022`) when the
//! process runs as root. Run as another user it is world-writable only
//! (`mode & 002`): with per-user groups `umask 002` is common, and such an
//! agent only risks its own account.
//!
//! Because the checks are made on descriptors, not names, the file finally
//! opened is the file that was checked: a rename racing the check finds an
//! already opened descriptor. Callers that need the very bytes checked use
//! the returned [`File`] (the plugin loader hands `/proc/self/fd/N` of it
//! to `dlopen`).
#![deny(clippy::undocumented_unsafe_blocks)]

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

/// The kind of object a rule failed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    File,
    Directory,
    Symlink,
}

impl std::fmt::Display for Object {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Object::File => "file",
            Object::Directory => "directory",
            Object::Symlink => "symbolic link",
        })
    }
}

/// The rule that failed.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    /// Running as root: `mode & 022` (the sticky exception aside).
    #[error("group- or world-writable (mode {mode:04o})")]
    GroupOrWorldWritable { mode: u32 },
    /// Running as another user: `mode & 002`.
    #[error("world-writable (mode {mode:04o})")]
    WorldWritable { mode: u32 },
    /// Owned by someone other than root and the effective uid.
    #[error("{}", owner_text(*uid, *euid))]
    Owner { uid: u32, euid: u32 },
    /// The last component is a symbolic link and is not followed.
    #[error("a symbolic link (not followed)")]
    Symlink,
    /// A device, FIFO, socket or directory where a file was expected.
    #[error("not a regular file")]
    NotRegular,
    /// A file where a directory was expected.
    #[error("not a directory")]
    NotDirectory,
    /// More than 40 symbolic links, or a path that never ends.
    #[error("too many symbolic links")]
    TooManyLinks,
    /// The object could not be opened or examined.
    #[error("cannot open: {0}")]
    Io(#[source] io::Error),
}

fn owner_text(uid: u32, euid: u32) -> String {
    if euid == 0 {
        format!("owned by uid {uid}, not by root")
    } else {
        format!("owned by uid {uid}, not by root or uid {euid}")
    }
}

impl Violation {
    /// A short, stable name of the rule, for tests and metrics.
    pub fn rule(&self) -> &'static str {
        match self {
            Violation::GroupOrWorldWritable { .. } | Violation::WorldWritable { .. } => "writable",
            Violation::Owner { .. } => "owner",
            Violation::Symlink => "symlink",
            Violation::NotRegular => "not-regular",
            Violation::NotDirectory => "not-directory",
            Violation::TooManyLinks => "too-many-links",
            Violation::Io(_) => "io",
        }
    }
}

/// A path refused by the rule: the path asked for, the object on the way
/// where a rule failed, and the rule.
///
/// Shown as `PATH: RULE` when the path itself failed, else as
/// `PATH: directory DIR: RULE` (or `symbolic link LINK`).
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct TrustError {
    /// The path asked for (made absolute).
    pub path: PathBuf,
    /// Where the rule failed (the resolved path of that object).
    pub at: PathBuf,
    /// What `at` is.
    pub object: Object,
    /// The rule that failed.
    pub violation: Violation,
}

impl TrustError {
    fn describe(&self) -> String {
        if self.at == self.path {
            format!("{}: {}", self.path.display(), self.violation)
        } else {
            format!(
                "{}: {} {}: {}",
                self.path.display(),
                self.object,
                self.at.display(),
                self.violation
            )
        }
    }

    /// Whether the object simply does not exist (`ENOENT` on the way).
    pub fn is_not_found(&self) -> bool {
        matches!(&self.violation, Violation::Io(e) if e.kind() == io::ErrorKind::NotFound)
    }
}

/// Whether the last component of a file path may be a symbolic link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Refuse a symbolic link (plugins).
    No,
    /// Follow it if it is owned by root or the effective uid; its target
    /// is checked like any path (the CA bundle, installed as a link into
    /// `/etc/ssl` on some systems).
    Yes,
}

/// A file that passed the rule, opened read-only.
#[derive(Debug)]
pub struct TrustedFile {
    /// The open file; `fstat` of it is what was checked.
    pub file: File,
    /// Its metadata (from `fstat` on `file`).
    pub meta: std::fs::Metadata,
    /// Its resolved path (symbolic links replaced by their targets).
    pub path: PathBuf,
}

/// The rule for one effective uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    euid: u32,
}

impl Policy {
    /// The rule for this process's effective uid.
    pub fn current() -> Policy {
        Policy {
            // SAFETY: geteuid has no preconditions and cannot fail.
            euid: unsafe { libc::geteuid() },
        }
    }

    /// The rule for a process running with effective uid `euid`.
    pub fn for_euid(euid: u32) -> Policy {
        Policy { euid }
    }

    /// The effective uid this rule is for.
    pub fn euid(&self) -> u32 {
        self.euid
    }

    /// The mode bits that make an object writable by others.
    pub fn forbidden_write_bits(&self) -> u32 {
        if self.euid == 0 {
            0o022
        } else {
            0o002
        }
    }

    fn owner_ok(&self, uid: u32) -> bool {
        uid == 0 || uid == self.euid
    }

    fn writable(&self, mode: u32) -> Violation {
        let mode = mode & 0o7777;
        if self.euid == 0 {
            Violation::GroupOrWorldWritable { mode }
        } else {
            Violation::WorldWritable { mode }
        }
    }

    /// Checks one object's `fstat`: owner, and no write for others
    /// unless `sticky_ok` and the sticky bit is set.
    fn check(&self, st: &Stat, sticky_ok: bool) -> Result<(), Violation> {
        if !self.owner_ok(st.uid) {
            return Err(Violation::Owner {
                uid: st.uid,
                euid: self.euid,
            });
        }
        let sticky = st.mode & libc::S_ISVTX != 0;
        if st.mode & self.forbidden_write_bits() != 0 && !(sticky_ok && sticky) {
            return Err(self.writable(st.mode));
        }
        Ok(())
    }

    /// Opens the directory `path` by the rule.
    pub fn open_dir(&self, path: &Path) -> Result<TrustedDir, TrustError> {
        self.open_dir_scoped(path, Ancestors::Checked)
    }

    fn open_dir_scoped(&self, path: &Path, scope: Ancestors) -> Result<TrustedDir, TrustError> {
        match self.resolve(path, Last::Dir, scope)? {
            Resolved::Dir(node) => Ok(TrustedDir {
                fd: node.fd,
                path: node.path,
            }),
            Resolved::File { .. } => Err(TrustError {
                path: path.to_owned(),
                at: path.to_owned(),
                object: Object::File,
                violation: Violation::NotDirectory,
            }),
        }
    }

    /// Opens the file `path` read-only by the rule.
    pub fn open_file(&self, path: &Path, follow: Follow) -> Result<TrustedFile, TrustError> {
        let asked = absolute(path);
        let Resolved::File {
            parent,
            name,
            fd,
            st,
            path: resolved,
        } = self.resolve(path, Last::File { follow }, Ancestors::Checked)?
        else {
            return Err(TrustError {
                path: asked.clone(),
                at: asked,
                object: Object::Directory,
                violation: Violation::NotRegular,
            });
        };
        drop(fd);
        let fail = |violation| TrustError {
            path: asked.clone(),
            at: resolved.clone(),
            object: Object::File,
            violation,
        };
        // The real open, relative to the checked directory, again without
        // following: O_NONBLOCK so a FIFO put there cannot hang us, and the
        // same inode as the one checked or nothing.
        let file = openat(
            parent.fd.as_fd(),
            &name,
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK,
            0,
        )
        .map(File::from)
        .map_err(|e| fail(open_violation(e)))?;
        let meta = file.metadata().map_err(|e| fail(Violation::Io(e)))?;
        if meta.dev() != st.dev || meta.ino() != st.ino {
            return Err(fail(Violation::Io(io::Error::other(
                "replaced while being opened",
            ))));
        }
        let now = Stat::of(&meta);
        if !now.is_reg() {
            return Err(fail(Violation::NotRegular));
        }
        self.check(&now, false).map_err(fail)?;
        Ok(TrustedFile {
            file,
            meta,
            path: resolved,
        })
    }

    /// Opens or creates the file `path` for writing by the rule: its own
    /// directory must be owned by root or the effective uid and not
    /// writable by others (sticky or not), the file is opened with
    /// `O_NOFOLLOW` (a symbolic link is refused, its target untouched),
    /// never truncated here, and must be a regular file owned by root or
    /// the effective uid. Write permission for others on an existing file
    /// is removed (`fchmod`), not refused: the directory is ours.
    ///
    /// Unlike [`Policy::open_file`], the directories *above* the file's
    /// directory are not checked (symbolic links there are followed): what
    /// is at stake is where bytes are written, not which code runs, and
    /// stock systems have group-writable ancestors such as Ubuntu's
    /// `/var/log` (`root:syslog 0775`).
    pub fn create_file(
        &self,
        path: &Path,
        mode: u32,
        how: CreateHow,
    ) -> Result<(File, PathBuf), TrustError> {
        let asked = absolute(path);
        let fail = |violation| TrustError {
            path: asked.clone(),
            at: asked.clone(),
            object: Object::File,
            violation,
        };
        let (Some(parent), Some(name)) = (asked.parent(), asked.file_name()) else {
            return Err(fail(Violation::NotRegular));
        };
        let dir = self
            .open_dir_scoped(parent, Ancestors::Unchecked)
            .map_err(|mut e| {
                e.path = asked.clone();
                e
            })?;
        let resolved = dir.path.join(name);
        let fail = |violation| TrustError {
            path: asked.clone(),
            at: resolved.clone(),
            object: Object::File,
            violation,
        };
        let access = match how {
            CreateHow::ReadWrite => libc::O_RDWR,
            CreateHow::Append => libc::O_WRONLY | libc::O_APPEND,
        };
        let fd = openat(
            dir.fd.as_fd(),
            name,
            access | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK,
            mode,
        )
        .map_err(|e| fail(open_violation(e)))?;
        let file = File::from(fd);
        let meta = file.metadata().map_err(|e| fail(Violation::Io(e)))?;
        let st = Stat::of(&meta);
        if !st.is_reg() {
            return Err(fail(Violation::NotRegular));
        }
        if !self.owner_ok(st.uid) {
            return Err(fail(Violation::Owner {
                uid: st.uid,
                euid: self.euid,
            }));
        }
        if st.mode & self.forbidden_write_bits() != 0 {
            let fixed = st.mode & 0o7777 & !self.forbidden_write_bits();
            // SAFETY: fchmod on a descriptor we own.
            if unsafe { libc::fchmod(file.as_raw_fd(), fixed) } != 0 {
                return Err(fail(Violation::Io(io::Error::last_os_error())));
            }
        }
        // Back to blocking I/O for a regular file (O_NONBLOCK only guarded
        // the open against a FIFO).
        // SAFETY: fcntl on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
        }
        Ok((file, resolved))
    }
}

/// How [`Policy::create_file`] opens the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateHow {
    /// Read and write (a pid file: locked, then rewritten).
    ReadWrite,
    /// Write, appending (a log file).
    Append,
}

/// A directory that passed the rule (an `O_PATH` descriptor).
#[derive(Debug)]
pub struct TrustedDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl TrustedDir {
    /// Its resolved path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsFd for TrustedDir {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// [`Policy::open_dir`] for this process.
pub fn open_dir(path: &Path) -> Result<TrustedDir, TrustError> {
    Policy::current().open_dir(path)
}

/// [`Policy::open_file`] for this process.
pub fn open_file(path: &Path, follow: Follow) -> Result<TrustedFile, TrustError> {
    Policy::current().open_file(path, follow)
}

/// [`Policy::create_file`] for this process.
pub fn create_file(path: &Path, mode: u32, how: CreateHow) -> Result<(File, PathBuf), TrustError> {
    Policy::current().create_file(path, mode, how)
}

// ---------------------------------------------------------------------------
// Resolution

const MAX_LINKS: usize = 40;
const MAX_STEPS: usize = 4096;

/// Whether directories above the last one are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ancestors {
    Checked,
    Unchecked,
}

#[derive(Debug, Clone, Copy)]
enum Last {
    Dir,
    File { follow: Follow },
}

struct Node {
    fd: OwnedFd,
    path: PathBuf,
}

enum Resolved {
    Dir(Node),
    File {
        parent: Node,
        name: OsString,
        fd: OwnedFd,
        st: Stat,
        path: PathBuf,
    },
}

#[derive(Debug, Clone, Copy)]
struct Stat {
    dev: u64,
    ino: u64,
    mode: u32,
    uid: u32,
}

impl Stat {
    fn of(meta: &std::fs::Metadata) -> Stat {
        Stat {
            dev: meta.dev(),
            ino: meta.ino(),
            mode: meta.mode(),
            uid: meta.uid(),
        }
    }

    fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
        // SAFETY: stat is plain data; fstat fills it for a valid descriptor.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is a live descriptor and `st` a valid out pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Stat {
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            uid: st.st_uid,
        })
    }

    fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    fn is_reg(&self) -> bool {
        self.kind() == libc::S_IFREG
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn open_violation(e: io::Error) -> Violation {
    if e.raw_os_error() == Some(libc::ELOOP) {
        Violation::Symlink
    } else {
        Violation::Io(e)
    }
}

fn openat(dir: BorrowedFd<'_>, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = CString::new(name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in a path"))?;
    // SAFETY: `dir` is a live descriptor, `c` a NUL-terminated string that
    // outlives the call; the mode is only read with O_CREAT.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: openat returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_root() -> io::Result<OwnedFd> {
    // SAFETY: a static NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::open(
            c"/".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The target of the symbolic link `fd` (an `O_PATH | O_NOFOLLOW` fd).
fn readlink(fd: BorrowedFd<'_>) -> io::Result<OsString> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: `fd` is live; an empty path names `fd` itself (Linux
        // 2.6.39+); `buf` is valid for `buf.len()` bytes.
        let n = unsafe {
            libc::readlinkat(
                fd.as_raw_fd(),
                c"".as_ptr(),
                buf.as_mut_ptr().cast::<libc::c_char>(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if n < buf.len() {
            buf.truncate(n);
            return Ok(OsString::from_vec(buf));
        }
        if buf.len() >= 65536 {
            return Err(io::Error::other("symbolic link target too long"));
        }
        buf.resize(buf.len() * 2, 0);
    }
}

impl Policy {
    fn resolve(&self, path: &Path, last: Last, scope: Ancestors) -> Result<Resolved, TrustError> {
        let checked = scope == Ancestors::Checked;
        let asked = absolute(path);
        let err = |at: &Path, object: Object, violation: Violation| TrustError {
            path: asked.clone(),
            at: at.to_owned(),
            object,
            violation,
        };
        let root_path = PathBuf::from("/");
        let root = open_root().map_err(|e| err(&root_path, Object::Directory, Violation::Io(e)))?;
        let root_st = Stat::fstat(root.as_fd())
            .map_err(|e| err(&root_path, Object::Directory, Violation::Io(e)))?;
        if checked {
            self.check(&root_st, true)
                .map_err(|v| err(&root_path, Object::Directory, v))?;
        }
        let mut stack = vec![Node {
            fd: root,
            path: root_path,
        }];
        let mut pending: VecDeque<OsString> = components(&asked).into();
        let mut links = 0usize;
        let mut steps = 0usize;
        while let Some(name) = pending.pop_front() {
            steps += 1;
            if steps > MAX_STEPS {
                return Err(err(&asked, Object::File, Violation::TooManyLinks));
            }
            if name == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let is_last = pending.is_empty();
            let Some(parent) = stack.last() else {
                return Err(err(&asked, Object::Directory, Violation::NotDirectory));
            };
            let here = parent.path.join(&name);
            let fd = openat(parent.fd.as_fd(), &name, libc::O_PATH | libc::O_NOFOLLOW, 0)
                .map_err(|e| err(&here, Object::File, Violation::Io(e)))?;
            let st =
                Stat::fstat(fd.as_fd()).map_err(|e| err(&here, Object::File, Violation::Io(e)))?;
            match st.kind() {
                libc::S_IFLNK => {
                    if is_last && matches!(last, Last::File { follow: Follow::No }) {
                        return Err(err(&here, Object::File, Violation::Symlink));
                    }
                    if checked && !self.owner_ok(st.uid) {
                        return Err(err(
                            &here,
                            Object::Symlink,
                            Violation::Owner {
                                uid: st.uid,
                                euid: self.euid,
                            },
                        ));
                    }
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(err(&here, Object::Symlink, Violation::TooManyLinks));
                    }
                    let target = readlink(fd.as_fd())
                        .map_err(|e| err(&here, Object::Symlink, Violation::Io(e)))?;
                    let target = PathBuf::from(target);
                    if target.as_os_str().is_empty() {
                        return Err(err(
                            &here,
                            Object::Symlink,
                            Violation::Io(io::Error::from(io::ErrorKind::NotFound)),
                        ));
                    }
                    if target.is_absolute() {
                        stack.truncate(1);
                    }
                    for c in components(&target).into_iter().rev() {
                        pending.push_front(c);
                    }
                }
                libc::S_IFDIR => {
                    if is_last && matches!(last, Last::File { .. }) {
                        return Err(err(&here, Object::File, Violation::NotRegular));
                    }
                    if checked {
                        self.check(&st, true)
                            .map_err(|v| err(&here, Object::Directory, v))?;
                    }
                    stack.push(Node { fd, path: here });
                }
                _ => {
                    if !is_last || matches!(last, Last::Dir) {
                        return Err(err(&here, Object::File, Violation::NotDirectory));
                    }
                    // The file's own directory: no sticky exception.
                    let Some(parent) = stack.pop() else {
                        return Err(err(&here, Object::Directory, Violation::NotDirectory));
                    };
                    let pst = Stat::fstat(parent.fd.as_fd())
                        .map_err(|e| err(&parent.path, Object::Directory, Violation::Io(e)))?;
                    self.check(&pst, false)
                        .map_err(|v| err(&parent.path, Object::Directory, v))?;
                    if !st.is_reg() {
                        return Err(err(&here, Object::File, Violation::NotRegular));
                    }
                    self.check(&st, false)
                        .map_err(|v| err(&here, Object::File, v))?;
                    return Ok(Resolved::File {
                        parent,
                        name,
                        fd,
                        st,
                        path: here,
                    });
                }
            }
        }
        let Some(top) = stack.pop() else {
            return Err(err(&asked, Object::Directory, Violation::NotDirectory));
        };
        if matches!(last, Last::File { .. }) {
            return Err(err(&top.path, Object::File, Violation::NotRegular));
        }
        // The directory asked for: no sticky exception.
        let st = Stat::fstat(top.fd.as_fd())
            .map_err(|e| err(&top.path, Object::Directory, Violation::Io(e)))?;
        self.check(&st, false)
            .map_err(|v| err(&top.path, Object::Directory, v))?;
        Ok(Resolved::Dir(top))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn root() -> Policy {
        Policy::for_euid(0)
    }

    /// A private directory (0700, in the sticky /tmp) with `d/f` (0644).
    fn tree() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        std::fs::create_dir(&d).unwrap();
        chmod(&d, 0o755);
        let f = d.join("f");
        std::fs::write(&f, "x").unwrap();
        chmod(&f, 0o644);
        (t, d, f)
    }

    fn is_root() -> bool {
        Policy::current().euid() == 0
    }

    #[test]
    fn a_good_file_and_directory_pass() {
        let (_t, d, f) = tree();
        let p = Policy::current();
        let tf = p.open_file(&f, Follow::No).unwrap();
        assert!(tf.meta.is_file());
        assert_eq!(tf.path, f);
        assert_eq!(p.open_dir(&d).unwrap().path(), d);
    }

    #[test]
    fn a_writable_file_is_refused_with_its_mode() {
        let (_t, _d, f) = tree();
        chmod(&f, 0o666);
        let e = Policy::current().open_file(&f, Follow::No).unwrap_err();
        assert_eq!(e.violation.rule(), "writable");
        let text = e.to_string();
        assert!(text.starts_with(&format!("{}: ", f.display())), "{text}");
        assert!(text.contains("world-writable (mode 0666)"), "{text}");
        if is_root() {
            assert_eq!(
                text,
                format!("{}: group- or world-writable (mode 0666)", f.display())
            );
        }
    }

    #[test]
    fn group_write_is_refused_for_root_and_allowed_for_a_user() {
        let (_t, _d, f) = tree();
        chmod(&f, 0o664);
        if is_root() {
            let e = root().open_file(&f, Follow::No).unwrap_err();
            assert_eq!(e.violation.rule(), "writable");
        } else {
            Policy::current().open_file(&f, Follow::No).unwrap();
            chmod(&f, 0o646);
            let e = Policy::current().open_file(&f, Follow::No).unwrap_err();
            assert!(e.to_string().contains("world-writable (mode 0646)"), "{e}");
        }
    }

    #[test]
    fn a_writable_directory_is_refused_even_when_sticky() {
        let (_t, d, f) = tree();
        let p = Policy::current();
        let modes: &[u32] = if is_root() {
            &[0o777, 0o1777, 0o775]
        } else {
            &[0o777, 0o1777]
        };
        for &mode in modes {
            chmod(&d, mode);
            let e = p.open_file(&f, Follow::No).unwrap_err();
            assert_eq!(e.at, d);
            assert_eq!(e.object, Object::Directory);
            assert_eq!(
                e.to_string(),
                format!(
                    "{}: directory {}: {}",
                    f.display(),
                    d.display(),
                    p.writable(mode)
                )
            );
            assert!(p.open_dir(&d).is_err());
        }
    }

    #[test]
    fn a_writable_parent_is_refused_unless_sticky() {
        let (t, d, f) = tree();
        let p = Policy::current();
        chmod(t.path(), 0o777);
        let e = p.open_file(&f, Follow::No).unwrap_err();
        assert_eq!(e.at, t.path());
        assert!(p.open_dir(&d).is_err());
        chmod(t.path(), 0o1777);
        p.open_file(&f, Follow::No).unwrap();
        p.open_dir(&d).unwrap();
        chmod(t.path(), 0o700);
    }

    #[test]
    fn a_symlink_is_refused_as_the_file_and_followed_in_the_directory_part() {
        let (t, d, f) = tree();
        let link = d.join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let e = Policy::current().open_file(&link, Follow::No).unwrap_err();
        assert_eq!(e.violation.rule(), "symlink");
        assert_eq!(
            e.to_string(),
            format!("{}: a symbolic link (not followed)", link.display())
        );
        // Followed when asked: the target's path comes back.
        let tf = Policy::current().open_file(&link, Follow::Yes).unwrap();
        assert_eq!(tf.path, f);
        // A directory link (relative, with ..) is followed and checked.
        let dl = t.path().join("dl");
        std::os::unix::fs::symlink("./x/../d", &dl).unwrap();
        std::fs::create_dir(t.path().join("x")).unwrap();
        let tf = Policy::current()
            .open_file(&dl.join("f"), Follow::No)
            .unwrap();
        assert_eq!(tf.path, f);
        // ... and the target's rules apply.
        chmod(&d, 0o777);
        let e = Policy::current()
            .open_file(&dl.join("f"), Follow::No)
            .unwrap_err();
        assert_eq!(e.at, d);
    }

    #[test]
    fn a_symlink_loop_and_missing_files_are_errors() {
        let (t, _d, _f) = tree();
        let a = t.path().join("a");
        let b = t.path().join("b");
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        let e = Policy::current()
            .open_file(&a.join("f"), Follow::No)
            .unwrap_err();
        assert_eq!(e.violation.rule(), "too-many-links");
        let e = Policy::current()
            .open_file(&t.path().join("nope"), Follow::No)
            .unwrap_err();
        assert!(e.is_not_found(), "{e}");
    }

    #[test]
    fn a_fifo_a_device_and_a_directory_are_not_regular_files() {
        let (_t, d, _f) = tree();
        let fifo = d.join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let e = Policy::current().open_file(&fifo, Follow::No).unwrap_err();
        assert_eq!(e.violation.rule(), "not-regular");
        let e = Policy::current()
            .open_file(Path::new("/dev/null"), Follow::No)
            .unwrap_err();
        assert_eq!(e.violation.rule(), "not-regular");
        let e = Policy::current().open_file(&d, Follow::No).unwrap_err();
        assert_eq!(e.violation.rule(), "not-regular");
    }

    #[test]
    fn another_owner_is_refused() {
        if !is_root() {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let (_t, d, f) = tree();
        std::os::unix::fs::chown(&f, Some(65534), Some(65534)).unwrap();
        let e = root().open_file(&f, Follow::No).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: owned by uid 65534, not by root", f.display())
        );
        std::os::unix::fs::chown(&f, Some(0), Some(0)).unwrap();
        std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
        let e = root().open_file(&f, Follow::No).unwrap_err();
        assert_eq!(e.at, d);
        assert_eq!(e.violation.rule(), "owner");
        // The same directory is fine for a process running as 65534.
        Policy::for_euid(65534).open_dir(&d).unwrap();
    }

    #[test]
    fn create_refuses_a_symlink_and_never_touches_its_target() {
        let (_t, d, f) = tree();
        let link = d.join("agent.pid");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let e = Policy::current()
            .create_file(&link, 0o644, CreateHow::ReadWrite)
            .unwrap_err();
        assert_eq!(e.violation.rule(), "symlink");
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "x");
        // A plain new file is created with the mode asked (umask aside).
        let new = d.join("new.log");
        let (mut file, path) = Policy::current()
            .create_file(&new, 0o640, CreateHow::Append)
            .unwrap();
        assert_eq!(path, new);
        std::io::Write::write_all(&mut file, b"line\n").unwrap();
        assert_eq!(std::fs::read_to_string(&new).unwrap(), "line\n");
        // An existing file loses write for others.
        chmod(&new, 0o666);
        Policy::current()
            .create_file(&new, 0o640, CreateHow::Append)
            .unwrap();
        let mode = std::fs::metadata(&new).unwrap().mode() & 0o777;
        assert_eq!(mode & Policy::current().forbidden_write_bits(), 0);
    }

    #[test]
    fn create_checks_only_the_files_own_directory() {
        // Ubuntu's /var/log is root:syslog 0775: a log below it is fine.
        let (t, d, _f) = tree();
        chmod(t.path(), 0o777);
        let (_, path) = Policy::current()
            .create_file(&d.join("agent.log"), 0o640, CreateHow::Append)
            .unwrap();
        assert_eq!(path, d.join("agent.log"));
        // While code is never loaded from there.
        assert!(Policy::current()
            .open_file(&d.join("agent.log"), Follow::No)
            .is_err());
        chmod(t.path(), 0o700);
    }

    #[test]
    fn create_refuses_a_writable_or_sticky_directory() {
        let (_t, d, _f) = tree();
        for mode in [0o777, 0o1777] {
            chmod(&d, mode);
            let e = Policy::current()
                .create_file(&d.join("agent.pid"), 0o644, CreateHow::ReadWrite)
                .unwrap_err();
            assert_eq!(e.at, d);
            assert_eq!(e.violation.rule(), "writable");
            assert!(!d.join("agent.pid").exists());
        }
    }
}
