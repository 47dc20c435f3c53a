//! The thin glue: request → options, read the files (paths injectable),
//! run the parsers, fall back to sysfs topology, complete synchronously.

use std::io::Read;
use std::path::PathBuf;

use basicagent_abi::Call;

use crate::parse::{
    average, parse_cpu_list, parse_cpuinfo, parse_loadavg, topology_from_pairs, CpuInfo,
};
use basicagent_collector_kit::{self as kit, CollectorError};

use crate::USAGE;

/// Where the kernel's files are (the defaults are the real ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuPaths {
    pub cpuinfo: PathBuf,
    pub loadavg: PathBuf,
    /// `/sys/devices/system/cpu`: `online` and `cpuN/topology/*`.
    pub sys_cpu: PathBuf,
}

impl Default for CpuPaths {
    fn default() -> Self {
        CpuPaths {
            cpuinfo: "/proc/cpuinfo".into(),
            loadavg: "/proc/loadavg".into(),
            sys_cpu: "/sys/devices/system/cpu".into(),
        }
    }
}

/// Parses the request: `Ok(true)` when `-f` (flags) was given.
pub fn parse_request(request: &[u8]) -> Result<bool, CollectorError> {
    let mut opts = getopts::Options::new();
    opts.optflagmulti("f", "", "report the feature flags");
    Ok(kit::parse_request(request, USAGE, |words| {
        kit::parse_opts(&opts, words).map(|m| m.opt_present("f"))
    })?)
}

fn read_text(path: &std::path::Path, buf: &mut String) -> std::io::Result<()> {
    buf.clear();
    let mut bytes = Vec::with_capacity(buf.capacity());
    std::fs::File::open(path)?.read_to_end(&mut bytes)?;
    // procfs and sysfs text is ASCII; replace anything else rather than fail.
    *buf = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    Ok(())
}

fn read_optional(path: &std::path::Path) -> Option<String> {
    let mut s = String::new();
    match read_text(path, &mut s) {
        Ok(()) => Some(s),
        Err(e) => {
            log::debug!("cannot read {}: {e}", path.display());
            None
        }
    }
}

/// The sysfs fallback: `(physical_package_id, core_id)` of every
/// `cpuN` directory that has both; unreadable ones are skipped.
fn sysfs_topology(sys_cpu: &std::path::Path) -> Option<(usize, usize)> {
    let entries = std::fs::read_dir(sys_cpu).ok()?;
    let mut pairs = Vec::new();
    let mut buf = String::with_capacity(16);
    let mut read_id = |path: PathBuf| -> Option<i64> {
        read_text(&path, &mut buf).ok()?;
        buf.trim().parse().ok()
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(n) = name.to_str().and_then(|n| n.strip_prefix("cpu")) else {
            continue;
        };
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let topo = entry.path().join("topology");
        if let (Some(pkg), Some(core)) = (
            read_id(topo.join("physical_package_id")),
            read_id(topo.join("core_id")),
        ) {
            pairs.push((pkg, core));
        }
    }
    topology_from_pairs(&pairs)
}

/// Reads and parses everything; the `data` JSON.
pub fn collect(paths: &CpuPaths, with_flags: bool) -> Result<String, CollectorError> {
    let mut cpuinfo = String::with_capacity(16 * 1024);
    read_text(&paths.cpuinfo, &mut cpuinfo).map_err(|source| CollectorError::Read {
        path: paths.cpuinfo.to_path_buf(),
        source,
    })?;
    let facts = parse_cpuinfo(&cpuinfo);
    let online = read_optional(&paths.sys_cpu.join("online"));
    let online = online.as_deref().map(str::trim);
    let online_count = online.and_then(parse_cpu_list);
    let (topology, topology_source) = match facts.topology {
        Some(t) => (Some(t), Some("/proc/cpuinfo")),
        None => match sysfs_topology(&paths.sys_cpu) {
            Some(t) => (Some(t), Some("/sys/devices/system/cpu")),
            None => (None, None),
        },
    };
    let load = read_optional(&paths.loadavg).and_then(|t| parse_loadavg(&t));
    let mhz_average = average(&facts.mhz);
    let info = CpuInfo {
        model: facts.model,
        vendor: facts.vendor,
        logical: if facts.logical > 0 {
            facts.logical
        } else {
            online_count.unwrap_or(0)
        },
        cores: topology.map(|t| t.0),
        sockets: topology.map(|t| t.1),
        topology_source,
        online,
        online_count,
        mhz: facts.mhz,
        mhz_average,
        load,
        flags: with_flags.then_some(facts.flags),
    };
    kit::to_data(&info)
}

/// The plugin's `call`: validate, collect, complete at once.
pub fn call(call: Call, request: &[u8]) {
    kit::complete(
        call,
        parse_request(request).and_then(|flags| collect(&CpuPaths::default(), flags)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use basicagent_abi::retcode;
    use std::fs;

    #[test]
    fn requests() {
        assert!(!parse_request(b"").unwrap());
        assert!(parse_request(br#"{"args":"-f"}"#).unwrap());
        assert!(parse_request(br#"{"args":"-f -f"}"#).unwrap());
        for bad in [
            &br#"{"args":"-x"}"#[..],
            br#"{"args":"x"}"#,
            br#"{"args":"--flags"}"#,
        ] {
            let e = parse_request(bad).unwrap_err();
            assert_eq!(e.retcode(), retcode::INVALID_PARAMS);
            assert!(e.to_string().contains("-f "), "{e}");
        }
        assert_eq!(
            parse_request(b"[]").unwrap_err().retcode(),
            retcode::INVALID_REQUEST
        );
    }

    /// An arm64-like tree: no ids in cpuinfo, topology in sysfs, one cpu
    /// directory with garbage, a loadavg that is cut short.
    #[test]
    fn sysfs_fallback_and_odd_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        fs::write(
            p("cpuinfo"),
            "processor : 0\nFeatures : fp\n\nprocessor : 1\nFeatures : fp\n",
        )
        .unwrap();
        fs::write(p("loadavg"), "0.1 0.2\n").unwrap();
        for (cpu, pkg, core) in [("cpu0", "0", "0"), ("cpu1", "0", "1"), ("cpu2", "x", "1")] {
            let t = p("sys").join(cpu).join("topology");
            fs::create_dir_all(&t).unwrap();
            fs::write(t.join("physical_package_id"), pkg).unwrap();
            fs::write(t.join("core_id"), core).unwrap();
        }
        fs::create_dir_all(p("sys").join("cpufreq")).unwrap();
        fs::write(p("sys").join("online"), "0-1\n").unwrap();
        let paths = CpuPaths {
            cpuinfo: p("cpuinfo"),
            loadavg: p("loadavg"),
            sys_cpu: p("sys"),
        };
        let v: serde_json::Value = serde_json::from_str(&collect(&paths, true).unwrap()).unwrap();
        assert_eq!(v["logical"], 2);
        assert_eq!(v["cores"], 2);
        assert_eq!(v["sockets"], 1);
        assert_eq!(v["topology_source"], "/sys/devices/system/cpu");
        assert_eq!(v["online"], "0-1");
        assert_eq!(v["online_count"], 2);
        assert!(v["load"].is_null());
        assert!(v["mhz_average"].is_null());
        assert_eq!(v["flags"], serde_json::json!(["fp"]));
        // Without -f there is no flags key; without sysfs no topology.
        let paths = CpuPaths {
            sys_cpu: p("nothing"),
            ..paths
        };
        let v: serde_json::Value = serde_json::from_str(&collect(&paths, false).unwrap()).unwrap();
        assert!(v.get("flags").is_none());
        assert!(v["cores"].is_null() && v["topology_source"].is_null() && v["online"].is_null());
        let missing = CpuPaths {
            cpuinfo: p("none"),
            ..paths
        };
        assert_eq!(
            collect(&missing, false).unwrap_err().retcode(),
            retcode::PLUGIN_FAILURE
        );
    }
}
