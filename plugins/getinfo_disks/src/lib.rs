//! `getinfo.disks`: mounted filesystems (/proc/self/mountinfo) with their
//! space and inode figures (statvfs(3)).
//!
//! Key design decisions: the mountinfo parser ([`parse`]) is a pure
//! function that decodes the kernel's octal escapes (`\040`) and skips a
//! malformed line rather than failing. statvfs(3) on a dead NFS server
//! hangs in the kernel, uninterruptibly, so network and FUSE filesystems
//! are not asked unless `-n` is given; then the call moves to a thread of
//! its own and each such statvfs runs on a helper thread that is waited
//! for at most [`plugin::REMOTE_TIMEOUT`] (a hung one is reported
//! `"timeout"` and abandoned, and at most [`plugin::MAX_STUCK`] may be
//! abandoned at once). autofs mount points are never statvfs'ed (it would
//! trigger the automount).
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod parse;
pub mod plugin;

pub use basicagent_collector_kit::CollectorError;
pub use parse::{decode_octal, parse_mountinfo, Mount};
pub use plugin::{collect, Options};

/// Shown by `BasicAgentCtl -l` and in every `3021` message.
pub const USAGE: &str = "args (getopt-style string):
  (none)         local and real filesystems (pseudo filesystems left out, see below)
  -a             all mounts, pseudo filesystems included
  -n             also statvfs network and FUSE filesystems (each bounded to 2 s; the call then runs on a thread)
  -m MOUNTPOINT  only the filesystem mounted at MOUNTPOINT (the top one if several are stacked), pseudo or not;
                 3021 if nothing is mounted there
  Words split on whitespace; '...' and \"...\" quote.
Pseudo filesystems (left out without -a): proc sysfs devtmpfs devpts cgroup cgroup2 securityfs debugfs tracefs
  pstore bpf configfs fusectl mqueue hugetlbfs binfmt_misc autofs rpc_pipefs nsfs efivarfs selinuxfs ramfs rootfs
  fuse.lxcfs fuse.gvfsd-fuse fuse.portal. Kept: tmpfs, overlay, squashfs (they hold data and can fill up).
Network filesystems: nfs nfs4 cifs smb3 smbfs ncpfs afs ceph glusterfs lustre 9p davfs and fuse.* (FUSE may hang too).
Output data: {\"filesystems\": [FS...], \"count\": N}
FS: {\"mount_point\"  string, octal escapes (\\040 space, \\011 tab, \\012 newline, \\134 backslash) decoded
     \"device\"       mount source (e.g. /dev/sda1, server:/export, tmpfs)
     \"fstype\"       e.g. ext4, xfs, nfs4, fuse.sshfs
     \"options\"      per-mount options (rw,nosuid,relatime...)   \"super_options\"  per-superblock options
     \"root\"         the directory of the filesystem mounted here (\"/\" unless a bind mount of a subtree)
     \"major\", \"minor\", \"mount_id\"  integers    \"read_only\"  bool (ro in options)
     \"network\", \"pseudo\"  bools, the classes above
     \"stat\"         \"ok\" | \"skipped\" (network/FUSE without -n; autofs) | \"timeout\" | \"error: REASON\"
     \"total_bytes\", \"used_bytes\" (total - free), \"free_bytes\" (free to root), \"available_bytes\" (free to users),
     \"used_percent\" (used / (used + available) x 100, as df), \"inodes_total\", \"inodes_used\", \"inodes_free\":
                    numbers from statvfs(3), null unless stat is \"ok\" (inodes null where the filesystem has none)}";

basicagent_abi::export_plugin!(basicagent_abi::PluginSpec {
    name: "getinfo_disks",
    version: env!("CARGO_PKG_VERSION"),
    description: "mounted filesystems with space and inodes (mountinfo, statvfs)",
    methods: &["getinfo.disks"],
    usage: USAGE,
    init: None,
    call: plugin::call,
    cancel: None,
    fini: None,
});
