//! The thin glue: checks the request, reads the files below the root
//! ([`OsPaths`]), runs the parsers and completes synchronously.

use std::io::Read;
use std::path::{Path, PathBuf};

use basicagent_abi::Call;
use basicagent_collector_kit::{self as kit, CollectorError};

use crate::parse::{
    container_from_environ, cpuinfo_has_hypervisor_flag, hypervisor_from_dmi, parse_btime,
    parse_os_release, parse_uptime, zone_from_file, zone_from_link, Evidence, OsInfo,
    Virtualization,
};
use crate::USAGE;

/// Where the files are: every absolute path the collector reads is taken
/// below `root` (`/` in production, a fixture tree in tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OsPaths {
    pub root: PathBuf,
}

impl Default for OsPaths {
    fn default() -> Self {
        OsPaths { root: "/".into() }
    }
}

impl OsPaths {
    fn at(&self, abs: &str) -> PathBuf {
        self.root.join(abs.trim_start_matches('/'))
    }

    /// At most `limit` bytes of a file, as text (lossy); `None` if unreadable.
    fn read(&self, abs: &str, limit: u64) -> Option<String> {
        let path = self.at(abs);
        let mut bytes = Vec::new();
        match std::fs::File::open(&path).and_then(|f| f.take(limit).read_to_end(&mut bytes)) {
            Ok(_) => Some(match String::from_utf8(bytes) {
                Ok(s) => s,
                Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
            }),
            Err(e) => {
                log::debug!("cannot read {}: {e}", path.display());
                None
            }
        }
    }

    fn read_bytes(&self, abs: &str) -> Option<Vec<u8>> {
        std::fs::read(self.at(abs)).ok()
    }

    fn exists(&self, abs: &str) -> bool {
        std::fs::symlink_metadata(self.at(abs)).is_ok()
    }
}

/// Small files are far below this; it bounds a misbehaving one.
const SMALL: u64 = 64 * 1024;

/// Checks that the request carries no arguments.
pub fn check_request(request: &[u8]) -> Result<(), CollectorError> {
    Ok(kit::no_args(request, USAGE)?)
}

fn os_release(paths: &OsPaths) -> (Option<String>, Option<&'static str>) {
    for source in ["/etc/os-release", "/usr/lib/os-release"] {
        if let Some(text) = paths.read(source, SMALL) {
            return (Some(text), Some(source));
        }
    }
    (None, None)
}

fn timezone(paths: &OsPaths) -> (Option<String>, Option<&'static str>) {
    if let Some(zone) = paths
        .read("/etc/timezone", SMALL)
        .and_then(|t| zone_from_file(&t))
    {
        return (Some(zone), Some("/etc/timezone"));
    }
    let link = std::fs::read_link(paths.at("/etc/localtime")).ok();
    match link
        .as_deref()
        .and_then(Path::to_str)
        .and_then(zone_from_link)
    {
        Some(zone) => (Some(zone), Some("/etc/localtime")),
        None => (None, None),
    }
}

fn one_line(text: Option<String>) -> Option<String> {
    text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
}

fn virtualization(paths: &OsPaths) -> Virtualization {
    let mut v = Virtualization::default();
    let container = |v: &mut Virtualization, source: &'static str, value: String| {
        if v.container.is_none() {
            v.container = Some(value.clone());
        }
        v.evidence.push(Evidence { source, value });
    };
    if let Some(c) = paths
        .read_bytes("/proc/1/environ")
        .and_then(|e| container_from_environ(&e))
    {
        container(&mut v, "/proc/1/environ", c);
    }
    if let Some(c) = one_line(paths.read("/run/systemd/container", SMALL)) {
        container(&mut v, "/run/systemd/container", c);
    }
    if paths.exists("/.dockerenv") {
        container(&mut v, "/.dockerenv", "docker".into());
    }
    if paths.exists("/run/.containerenv") {
        container(&mut v, "/run/.containerenv", "podman".into());
    }
    if let Some(t) = one_line(paths.read("/sys/hypervisor/type", SMALL)) {
        v.hypervisor = Some(t.clone());
        v.evidence.push(Evidence {
            source: "/sys/hypervisor/type",
            value: t,
        });
    }
    let vendor = one_line(paths.read("/sys/class/dmi/id/sys_vendor", SMALL));
    let product = one_line(paths.read("/sys/class/dmi/id/product_name", SMALL));
    if let Some(name) = hypervisor_from_dmi(
        vendor.as_deref().unwrap_or(""),
        product.as_deref().unwrap_or(""),
    ) {
        if v.hypervisor.is_none() {
            v.hypervisor = Some(name.to_owned());
        }
        for (source, value) in [
            ("/sys/class/dmi/id/sys_vendor", vendor),
            ("/sys/class/dmi/id/product_name", product),
        ] {
            if let Some(value) = value {
                v.evidence.push(Evidence { source, value });
            }
        }
    }
    // The first cpu's block is within the first few kB.
    if paths
        .read("/proc/cpuinfo", 16 * 1024)
        .is_some_and(|c| cpuinfo_has_hypervisor_flag(&c))
    {
        if v.hypervisor.is_none() {
            v.hypervisor = Some("unknown".into());
        }
        v.evidence.push(Evidence {
            source: "/proc/cpuinfo",
            value: "hypervisor flag".into(),
        });
    }
    v
}

/// Reads everything below `paths.root`; the `data` JSON. Nothing here is
/// fatal: an unreadable file gives `null` fields.
pub fn collect(paths: &OsPaths) -> Result<String, CollectorError> {
    let (text, os_release_source) = os_release(paths);
    let mut os_release = text.as_deref().map(parse_os_release).unwrap_or_default();
    let get = |k: &str| os_release.get(k).filter(|v| !v.is_empty()).cloned();
    let (timezone, timezone_source) = timezone(paths);
    let info = OsInfo {
        id: get("ID").unwrap_or_else(|| "linux".into()),
        id_like: get("ID_LIKE")
            .map(|s| s.split_ascii_whitespace().map(str::to_owned).collect())
            .unwrap_or_default(),
        name: get("NAME").unwrap_or_else(|| "Linux".into()),
        pretty_name: get("PRETTY_NAME").unwrap_or_else(|| "Linux".into()),
        version: get("VERSION"),
        version_id: get("VERSION_ID"),
        version_codename: get("VERSION_CODENAME"),
        os_release: std::mem::take(&mut os_release),
        os_release_source,
        hostname: one_line(paths.read("/proc/sys/kernel/hostname", SMALL)),
        boot_time: paths
            .read("/proc/stat", 1024 * 1024)
            .and_then(|s| parse_btime(&s)),
        uptime_seconds: paths
            .read("/proc/uptime", SMALL)
            .and_then(|s| parse_uptime(&s)),
        timezone,
        timezone_source,
        virtualization: virtualization(paths),
    };
    kit::to_data(&info)
}

/// The plugin's `call`: validate, collect, complete at once.
pub fn call(call: Call, request: &[u8]) {
    kit::complete(
        call,
        check_request(request).and_then(|()| collect(&OsPaths::default())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use basicagent_abi::retcode;
    use serde_json::Value;
    use std::fs;

    fn tree(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = dir.path().join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
        dir
    }

    fn run(dir: &tempfile::TempDir) -> Value {
        let paths = OsPaths {
            root: dir.path().into(),
        };
        serde_json::from_str(&collect(&paths).unwrap()).unwrap()
    }

    #[test]
    fn a_container_tree() {
        let dir = tree(&[
            (
                "usr/lib/os-release",
                b"ID=alpine\nID_LIKE=\"rhel fedora\"\nNAME='Alpine'\n",
            ),
            ("proc/1/environ", b"HOME=/\0container=podman\0"),
            (".dockerenv", b""),
            ("proc/sys/kernel/hostname", b"web-01\n"),
            ("proc/stat", b"cpu 1\nbtime 1700000000\n"),
            ("proc/uptime", b"100.5 3\n"),
            ("proc/cpuinfo", b"processor : 0\nflags : fpu hypervisor\n"),
            ("sys/class/dmi/id/sys_vendor", b"QEMU\n"),
            ("sys/class/dmi/id/product_name", b"Standard PC\n"),
        ]);
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(
            "/usr/share/zoneinfo/America/New_York",
            dir.path().join("etc/localtime"),
        )
        .unwrap();
        let v = run(&dir);
        assert_eq!(v["os_release_source"], "/usr/lib/os-release");
        assert_eq!(v["id"], "alpine");
        assert_eq!(v["id_like"], serde_json::json!(["rhel", "fedora"]));
        assert_eq!(v["name"], "Alpine");
        assert_eq!(v["pretty_name"], "Linux");
        assert!(v["version_id"].is_null());
        assert_eq!(v["hostname"], "web-01");
        assert_eq!(v["boot_time"], 1_700_000_000u64);
        assert_eq!(v["uptime_seconds"], 100.5);
        assert_eq!(v["timezone"], "America/New_York");
        assert_eq!(v["timezone_source"], "/etc/localtime");
        let virt = &v["virtualization"];
        assert_eq!(virt["container"], "podman");
        assert_eq!(virt["hypervisor"], "qemu");
        let sources: Vec<&str> = virt["evidence"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["source"].as_str().unwrap())
            .collect();
        assert_eq!(
            sources,
            [
                "/proc/1/environ",
                "/.dockerenv",
                "/sys/class/dmi/id/sys_vendor",
                "/sys/class/dmi/id/product_name",
                "/proc/cpuinfo"
            ]
        );
    }

    #[test]
    fn an_empty_tree_gives_defaults_and_nulls() {
        let dir = tree(&[("proc/uptime", b"garbage"), ("etc/timezone", b"\n")]);
        let v = run(&dir);
        assert_eq!(v["id"], "linux");
        assert_eq!(v["name"], "Linux");
        assert!(v["os_release_source"].is_null());
        assert_eq!(v["os_release"], serde_json::json!({}));
        assert!(v["hostname"].is_null() && v["boot_time"].is_null());
        assert!(v["uptime_seconds"].is_null() && v["timezone"].is_null());
        assert_eq!(
            v["virtualization"],
            serde_json::json!({"container": null, "hypervisor": null, "evidence": []})
        );
    }

    #[test]
    fn args_refused() {
        let e = check_request(br#"{"args":"-a"}"#).unwrap_err();
        assert_eq!(e.retcode(), retcode::INVALID_PARAMS);
        assert!(e.to_string().contains("takes no arguments"));
        assert_eq!(
            check_request(b"1").unwrap_err().retcode(),
            retcode::INVALID_REQUEST
        );
        assert!(check_request(br#"{"args":null}"#).is_ok());
    }
}
