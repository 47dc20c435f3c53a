//! Loads the real `libgetinfo_disks.so` through the host's loader and
//! compares its answer with statvfs("/") taken here (python3 os.statvfs,
//! else libc) and with /proc/self/mountinfo read here.

use std::time::Duration;

use basicagent_abi::retcode;
use basicagent_testsupport::plugin::{
    assert_collector, call_args, call_args_timed, data, load_built, COMMON_BAD_ARGS,
};

const NAME: &str = "getinfo_disks";
const METHOD: &str = "getinfo.disks";

#[test]
fn descriptor_usage_and_refusals() {
    assert_collector(NAME, METHOD, &COMMON_BAD_ARGS);
}

/// (frsize, blocks, files) of "/" from python3's os.statvfs, else libc.
fn statvfs_root() -> (u64, u64, u64) {
    let py = std::process::Command::new("python3")
        .args([
            "-c",
            "import os; s=os.statvfs('/'); print(s.f_frsize, s.f_blocks, s.f_files)",
        ])
        .output();
    if let Ok(out) = py {
        let nums: Vec<u64> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        if let [frsize, blocks, files] = nums[..] {
            return (frsize, blocks, files);
        }
    }
    // SAFETY: statvfs is plain old data; all-zero bytes are a valid value.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a writable struct for the call.
    assert_eq!(unsafe { libc::statvfs(c"/".as_ptr(), &mut s) }, 0);
    #[allow(clippy::unnecessary_cast)]
    (s.f_frsize as u64, s.f_blocks as u64, s.f_files as u64)
}

/// Mount points of /proc/self/mountinfo, decoded here independently.
fn mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .map(|l| {
            let field = l.split(' ').nth(4).expect("mount point field");
            field
                .replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\")
        })
        .collect()
}

#[test]
fn root_matches_statvfs() {
    let p = load_built(NAME);
    let (c, took) = call_args_timed(&p, "-m /");
    let d = data(&c);
    assert!(took < Duration::from_millis(500), "took {took:?}");
    assert_eq!(d["count"], 1);
    let fs = &d["filesystems"][0];
    assert_eq!(fs["mount_point"], "/");
    assert_eq!(fs["stat"], "ok", "{fs}");
    let (frsize, blocks, files) = statvfs_root();
    assert_eq!(fs["total_bytes"].as_u64(), Some(frsize * blocks));
    if files > 0 {
        assert_eq!(fs["inodes_total"].as_u64(), Some(files));
    }
    let used = fs["used_bytes"].as_u64().expect("used");
    let free = fs["free_bytes"].as_u64().expect("free");
    assert_eq!(used + free, frsize * blocks);
    assert!(fs["available_bytes"].as_u64().expect("avail") <= free);
}

#[test]
fn listing_matches_mountinfo() {
    let p = load_built(NAME);
    let (c, took) = call_args_timed(&p, "-a");
    let all = data(&c);
    assert!(took < Duration::from_millis(1000), "took {took:?}");
    let got: Vec<&str> = all["filesystems"]
        .as_array()
        .expect("filesystems")
        .iter()
        .map(|f| f["mount_point"].as_str().expect("mount_point"))
        .collect();
    // Mounts can come and go while other engineers work: compare loosely
    // in count, exactly for the root.
    let want = mount_points();
    assert!(got.len().abs_diff(want.len()) <= 2, "{got:?} vs {want:?}");
    assert!(got.contains(&"/"));
    for f in all["filesystems"].as_array().expect("filesystems") {
        assert!(f["stat"].is_string(), "{f}");
    }
    // The default leaves out exactly the pseudo ones.
    let c = call_args(&p, "");
    let default = data(&c);
    let fs = default["filesystems"].as_array().expect("filesystems");
    assert!(fs.iter().all(|f| f["pseudo"] == false));
    assert!(!fs
        .iter()
        .any(|f| f["fstype"] == "proc" || f["fstype"] == "sysfs"));
    assert!(fs.len() < got.len());
}

#[test]
fn unknown_mount_point_is_3021() {
    let p = load_built(NAME);
    let c = call_args(&p, "-m /no/such/mount/point");
    assert_eq!(c.retcode, retcode::INVALID_PARAMS);
    assert!(
        c.message.contains("no filesystem is mounted"),
        "{}",
        c.message
    );
}

#[test]
fn dash_n_completes_from_a_thread() {
    let p = load_built(NAME);
    let (c, took) = call_args_timed(&p, "-n -m /");
    let d = data(&c);
    assert_eq!(d["filesystems"][0]["stat"], "ok");
    assert!(took < Duration::from_secs(3), "took {took:?}");
}
