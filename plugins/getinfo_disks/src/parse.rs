//! The pure `/proc/self/mountinfo` parser, the filesystem classes, and the
//! arithmetic from statvfs numbers to the reported figures.

use std::borrow::Cow;

use serde::Serialize;

/// One mountinfo line (proc(5)):
/// `36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount<'a> {
    pub mount_id: u64,
    pub parent_id: u64,
    pub major: u64,
    pub minor: u64,
    pub root: Cow<'a, str>,
    pub mount_point: Cow<'a, str>,
    pub options: &'a str,
    pub fstype: &'a str,
    pub source: Cow<'a, str>,
    pub super_options: &'a str,
}

/// Decodes the kernel's `\ooo` escapes (space, tab, newline, backslash
/// are written so); anything else is kept. Non-UTF-8 bytes become U+FFFD.
pub fn decode_octal(field: &str) -> Cow<'_, str> {
    if !field.contains('\\') {
        return Cow::Borrowed(field);
    }
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = |c: u8| (b'0'..=b'7').contains(&c);
        if b[i] == b'\\' && i + 3 < b.len() {
            let (d1, d2, d3) = (b[i + 1], b[i + 2], b[i + 3]);
            if oct(d1) && oct(d2) && oct(d3) {
                let v = u32::from(d1 - b'0') * 64 + u32::from(d2 - b'0') * 8 + u32::from(d3 - b'0');
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// Parses one line; `None` if it does not have the expected shape.
pub fn parse_line(line: &str) -> Option<Mount<'_>> {
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let mount_id = l.next()?.parse().ok()?;
    let parent_id = l.next()?.parse().ok()?;
    let (major, minor) = l.next()?.split_once(':')?;
    let root = decode_octal(l.next()?);
    let mount_point = decode_octal(l.next()?);
    let options = l.next()?;
    // The rest of `left` are optional fields (shared:N, master:N ...).
    let mut r = right.splitn(3, ' ');
    let fstype = r.next().filter(|t| !t.is_empty())?;
    let source = decode_octal(r.next()?);
    let super_options = r.next().unwrap_or("");
    Some(Mount {
        mount_id,
        parent_id,
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        root,
        mount_point,
        options,
        fstype,
        source,
        super_options,
    })
}

/// Parses `/proc/self/mountinfo`, skipping (and counting) bad lines.
pub fn parse_mountinfo(text: &str) -> (Vec<Mount<'_>>, usize) {
    let mut skipped = 0;
    let mounts = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let m = parse_line(l);
            if m.is_none() {
                skipped += 1;
            }
            m
        })
        .collect();
    (mounts, skipped)
}

const PSEUDO: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "cgroup",
    "cgroup2",
    "securityfs",
    "debugfs",
    "tracefs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "mqueue",
    "hugetlbfs",
    "binfmt_misc",
    "autofs",
    "rpc_pipefs",
    "nsfs",
    "efivarfs",
    "selinuxfs",
    "ramfs",
    "rootfs",
    "fuse.lxcfs",
    "fuse.gvfsd-fuse",
    "fuse.portal",
];

const NETWORK: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ncpfs",
    "afs",
    "ceph",
    "glusterfs",
    "lustre",
    "9p",
    "davfs",
];

/// Kernel-made views (left out without `-a`).
pub fn is_pseudo(fstype: &str) -> bool {
    PSEUDO.contains(&fstype)
}

/// Network filesystems, and FUSE (a userspace daemon may hang as well):
/// statvfs'ed only with `-n`.
pub fn is_network(fstype: &str) -> bool {
    NETWORK.contains(&fstype) || fstype == "fuse" || fstype.starts_with("fuse.")
}

/// The statvfs(3) numbers the report needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawStat {
    pub frsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
}

/// The figures reported for one filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Space {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    pub available_bytes: u64,
    pub used_percent: Option<f64>,
    pub inodes_total: Option<u64>,
    pub inodes_used: Option<u64>,
    pub inodes_free: Option<u64>,
}

impl Space {
    /// Saturating arithmetic: odd numbers (bfree > blocks) never panic.
    pub fn from_raw(s: RawStat) -> Space {
        let bytes = |n: u64| n.saturating_mul(s.frsize);
        let used_blocks = s.blocks.saturating_sub(s.bfree);
        let denom = used_blocks.saturating_add(s.bavail);
        let used_percent =
            (denom > 0).then(|| (used_blocks as f64 * 1000.0 / denom as f64).round() / 10.0);
        let has_inodes = s.files > 0;
        Space {
            total_bytes: bytes(s.blocks),
            used_bytes: bytes(used_blocks),
            free_bytes: bytes(s.bfree),
            available_bytes: bytes(s.bavail),
            used_percent,
            inodes_total: has_inodes.then_some(s.files),
            inodes_used: has_inodes.then(|| s.files.saturating_sub(s.ffree)),
            inodes_free: has_inodes.then_some(s.ffree),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_line() {
        let m = parse_line(
            "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
        )
        .unwrap();
        assert_eq!((m.mount_id, m.parent_id, m.major, m.minor), (36, 35, 98, 0));
        assert_eq!(m.root, "/mnt1");
        assert_eq!(m.mount_point, "/mnt2");
        assert_eq!(m.options, "rw,noatime");
        assert_eq!(m.fstype, "ext3");
        assert_eq!(m.source, "/dev/root");
        assert_eq!(m.super_options, "rw,errors=continue");
    }

    #[test]
    fn escapes_and_no_optional_fields() {
        let m = parse_line(r"27 1 254:0 / /media/my\040disk\011x\134y rw - vfat /dev/sd\040b1 rw")
            .unwrap();
        assert_eq!(m.mount_point, "/media/my disk\tx\\y");
        assert_eq!(m.source, "/dev/sd b1");
        assert_eq!(decode_octal(r"a\012b"), "a\nb");
        assert_eq!(decode_octal(r"a\9"), r"a\9");
        assert_eq!(decode_octal(r"a\04"), r"a\04");
        assert_eq!(decode_octal(r"\777"), r"\777", "not a byte");
        assert_eq!(decode_octal("\\"), "\\");
        assert_eq!(decode_octal(r"\303\251"), "é");
    }

    #[test]
    fn odd_lines_are_skipped_not_fatal() {
        let text = "garbage\n\
                    1 2 3:4 / /x rw\n\
                    x 2 3:4 / /x rw - ext4 /dev/a rw\n\
                    1 2 3 / /x rw - ext4 /dev/a rw\n\
                    1 2 3:4 / /x rw - \n\
                    \n\
                    5 1 0:5 / /ok rw - tmpfs tmpfs\n\
                    6 1 0:6 / /ok2 rw shared:1 master:2 - proc proc rw\n";
        let (mounts, skipped) = parse_mountinfo(text);
        assert_eq!(skipped, 5);
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].super_options, "");
        assert_eq!(mounts[1].fstype, "proc");
    }

    #[test]
    fn classes() {
        assert!(is_pseudo("proc") && is_pseudo("cgroup2") && !is_pseudo("tmpfs"));
        assert!(!is_pseudo("overlay") && !is_pseudo("ext4"));
        assert!(is_network("nfs4") && is_network("fuse.sshfs") && is_network("fuse"));
        assert!(!is_network("fuseblk") && !is_network("ext4"));
    }

    #[test]
    fn space_arithmetic() {
        let s = Space::from_raw(RawStat {
            frsize: 4096,
            blocks: 100,
            bfree: 40,
            bavail: 30,
            files: 10,
            ffree: 4,
        });
        assert_eq!(s.total_bytes, 409_600);
        assert_eq!(s.used_bytes, 60 * 4096);
        assert_eq!(s.free_bytes, 40 * 4096);
        assert_eq!(s.available_bytes, 30 * 4096);
        assert_eq!(s.used_percent, Some(66.7));
        assert_eq!(
            (s.inodes_total, s.inodes_used, s.inodes_free),
            (Some(10), Some(6), Some(4))
        );
        let odd = Space::from_raw(RawStat {
            frsize: u64::MAX,
            blocks: 1,
            bfree: 5,
            ..RawStat::default()
        });
        assert_eq!(odd.used_bytes, 0);
        assert_eq!(odd.used_percent, None);
        assert_eq!(odd.inodes_total, None);
    }
}
