//! Pure parsers for `/proc/cpuinfo`, `/proc/loadavg` and the kernel's cpu
//! list format, and the output shape [`CpuInfo`]. No I/O here.

use std::collections::BTreeSet;

use serde::Serialize;

/// The `data` object of a `getinfo.cpu` response; strings borrow from the
/// `/proc/cpuinfo` buffer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuInfo<'a> {
    pub model: Option<&'a str>,
    pub vendor: Option<&'a str>,
    pub logical: usize,
    pub cores: Option<usize>,
    pub sockets: Option<usize>,
    pub topology_source: Option<&'static str>,
    pub online: Option<&'a str>,
    pub online_count: Option<usize>,
    pub mhz: Vec<Option<f64>>,
    pub mhz_average: Option<f64>,
    pub load: Option<LoadAvg>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<&'a str>>,
}

/// `/proc/loadavg`: `0.20 0.18 0.12 1/80 11206`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LoadAvg {
    pub avg1: f64,
    pub avg5: f64,
    pub avg15: f64,
    pub running: u64,
    pub total: u64,
    pub last_pid: u64,
}

/// What `/proc/cpuinfo` says, before the sysfs fallback and the other files.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CpuinfoFacts<'a> {
    pub model: Option<&'a str>,
    pub vendor: Option<&'a str>,
    pub logical: usize,
    /// `(cores, sockets)` when every cpu had both `physical id` and `core id`.
    pub topology: Option<(usize, usize)>,
    pub mhz: Vec<Option<f64>>,
    pub flags: Vec<&'a str>,
}

/// arm64's `CPU implementer` codes (arch/arm64/include/asm/cputype.h).
fn arm_implementer(code: &str) -> Option<&'static str> {
    let n = u32::from_str_radix(code.trim_start_matches("0x"), 16).ok()?;
    Some(match n {
        0x41 => "ARM",
        0x42 => "Broadcom",
        0x43 => "Cavium",
        0x46 => "Fujitsu",
        0x48 => "HiSilicon",
        0x4e => "NVIDIA",
        0x50 => "APM",
        0x51 => "Qualcomm",
        0x61 => "Apple",
        0x6d => "Microsoft",
        0xc0 => "Ampere",
        _ => return None,
    })
}

/// Parses `/proc/cpuinfo`: one block per logical cpu, separated by blank
/// lines, of `key<TAB>: value` lines. Lines without a colon and values
/// that are not numbers are ignored; non-UTF-8 lines are skipped.
pub fn parse_cpuinfo(text: &str) -> CpuinfoFacts<'_> {
    let mut facts = CpuinfoFacts::default();
    let mut topo = Topology::default();
    let mut block: Option<Block<'_>> = None;
    let mut first_flags: Option<&str> = None;
    let mut implementer: Option<&str> = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            if line.trim().is_empty() {
                topo.finish(block.take(), &mut facts);
            }
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" if value.parse::<u32>().is_ok() => {
                // A new block even without a blank line before it.
                topo.finish(block.take(), &mut facts);
                block = Some(Block::default());
            }
            "model name" | "cpu model" | "Processor" | "cpu" if facts.model.is_none() => {
                facts.model = Some(value).filter(|v| !v.is_empty());
            }
            "vendor_id" | "vendor" if facts.vendor.is_none() => {
                facts.vendor = Some(value).filter(|v| !v.is_empty());
            }
            "CPU implementer" if implementer.is_none() => implementer = Some(value),
            "physical id" => {
                if let Some(b) = block.as_mut() {
                    b.phys = Some(value);
                }
            }
            "core id" => {
                if let Some(b) = block.as_mut() {
                    b.core = Some(value);
                }
            }
            "cpu MHz" | "clock" => {
                if let Some(b) = block.as_mut() {
                    b.mhz = value
                        .trim_end_matches("MHz")
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|v| v.is_finite() && *v >= 0.0);
                }
            }
            "flags" | "Features" if first_flags.is_none() => first_flags = Some(value),
            _ => {}
        }
    }
    topo.finish(block.take(), &mut facts);
    if facts.vendor.is_none() {
        facts.vendor = implementer.map(|code| arm_implementer(code).unwrap_or(code));
    }
    if topo.complete && facts.logical > 0 {
        facts.topology = Some((topo.pairs.len(), topo.sockets.len()));
    }
    facts.flags = first_flags
        .map(|f| f.split_ascii_whitespace().collect())
        .unwrap_or_default();
    facts
}

/// One `processor` block's per-cpu values.
#[derive(Default)]
struct Block<'a> {
    phys: Option<&'a str>,
    core: Option<&'a str>,
    mhz: Option<f64>,
}

/// The topology seen so far.
struct Topology<'a> {
    pairs: BTreeSet<(&'a str, &'a str)>,
    sockets: BTreeSet<&'a str>,
    /// Every cpu so far had both ids.
    complete: bool,
}

impl Default for Topology<'_> {
    fn default() -> Self {
        Topology {
            pairs: BTreeSet::new(),
            sockets: BTreeSet::new(),
            complete: true,
        }
    }
}

impl<'a> Topology<'a> {
    /// Accounts for a finished block (none: nothing to do).
    fn finish(&mut self, block: Option<Block<'a>>, facts: &mut CpuinfoFacts<'a>) {
        let Some(b) = block else { return };
        facts.logical += 1;
        facts.mhz.push(b.mhz);
        match (b.phys, b.core) {
            (Some(p), Some(c)) => {
                self.pairs.insert((p, c));
                self.sockets.insert(p);
            }
            _ => self.complete = false,
        }
    }
}

/// Counts cores and sockets from `(physical_package_id, core_id)` pairs
/// (the sysfs fallback); `None` for no pairs.
pub fn topology_from_pairs(pairs: &[(i64, i64)]) -> Option<(usize, usize)> {
    if pairs.is_empty() {
        return None;
    }
    let cores: BTreeSet<(i64, i64)> = pairs.iter().copied().collect();
    let sockets: BTreeSet<i64> = pairs.iter().map(|p| p.0).collect();
    Some((cores.len(), sockets.len()))
}

/// Parses `/proc/loadavg`; `None` when any field is missing or malformed.
pub fn parse_loadavg(text: &str) -> Option<LoadAvg> {
    let mut f = text.split_ascii_whitespace();
    let avg = |s: Option<&str>| {
        s?.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
    };
    let (avg1, avg5, avg15) = (avg(f.next())?, avg(f.next())?, avg(f.next())?);
    let (running, total) = f.next()?.split_once('/')?;
    Some(LoadAvg {
        avg1,
        avg5,
        avg15,
        running: running.parse().ok()?,
        total: total.parse().ok()?,
        last_pid: f.next()?.parse().ok()?,
    })
}

/// The number of cpus in a kernel cpu list (`0-3,6,8-9`); `None` if
/// malformed or if a range runs backwards. An empty list is 0 cpus.
pub fn parse_cpu_list(text: &str) -> Option<usize> {
    let text = text.trim();
    if text.is_empty() {
        return Some(0);
    }
    let mut count = 0usize;
    for part in text.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.parse::<usize>().ok()?, hi.parse::<usize>().ok()?),
            None => {
                let n = part.parse::<usize>().ok()?;
                (n, n)
            }
        };
        count = count.checked_add(hi.checked_sub(lo)?.checked_add(1)?)?;
    }
    Some(count)
}

/// The mean of the known values, if any.
pub fn average(values: &[Option<f64>]) -> Option<f64> {
    let known: Vec<f64> = values.iter().flatten().copied().collect();
    (!known.is_empty()).then(|| {
        let mean = known.iter().sum::<f64>() / known.len() as f64;
        (mean * 1000.0).round() / 1000.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: &str = "processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
cpu MHz\t\t: 2300.000
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu vme hypervisor

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
cpu MHz\t\t: 2400.500
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu vme hypervisor

processor\t: 2
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
cpu MHz\t\t: 2300.000
physical id\t: 1
core id\t\t: 0
flags\t\t: fpu vme hypervisor

";

    const ARM64: &str = "processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm
CPU implementer\t: 0x41
CPU part\t: 0xd0c

processor\t: 1
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm
CPU implementer\t: 0x41
CPU part\t: 0xd0c
";

    #[test]
    fn x86_fixture() {
        let f = parse_cpuinfo(X86);
        assert_eq!(f.logical, 3);
        assert_eq!(f.model, Some("Intel(R) Xeon(R) Processor"));
        assert_eq!(f.vendor, Some("GenuineIntel"));
        assert_eq!(f.topology, Some((2, 2)));
        assert_eq!(f.mhz, vec![Some(2300.0), Some(2400.5), Some(2300.0)]);
        assert_eq!(f.flags, vec!["fpu", "vme", "hypervisor"]);
        assert_eq!(average(&f.mhz), Some(2333.5));
    }

    #[test]
    fn arm64_fixture_has_no_topology() {
        let f = parse_cpuinfo(ARM64);
        assert_eq!(f.logical, 2);
        assert_eq!(f.model, None);
        assert_eq!(f.vendor, Some("ARM"));
        assert_eq!(f.topology, None);
        assert_eq!(f.mhz, vec![None, None]);
        assert_eq!(average(&f.mhz), None);
        assert_eq!(f.flags, vec!["fp", "asimd", "evtstrm"]);
        let f = parse_cpuinfo("processor : 0\nCPU implementer : 0x99\n");
        assert_eq!(f.vendor, Some("0x99"));
    }

    #[test]
    fn odd_cpuinfo_never_panics() {
        for text in [
            "",
            "\n\n\n",
            "garbage without colon\n",
            ":\n::\nprocessor:\nprocessor : x\n",
            "processor : 0\ncpu MHz : nan\ncpu MHz : -5\n",
            "processor : 0\nprocessor : 1\nphysical id : 0\ncore id : 0\n",
        ] {
            let f = parse_cpuinfo(text);
            assert!(f.logical <= 2, "{text:?}");
        }
        let f = parse_cpuinfo("processor : 0\nprocessor : 1\nphysical id : 0\ncore id : 0\n");
        assert_eq!(f.logical, 2);
        assert_eq!(f.topology, None, "cpu 0 had no ids");
    }

    #[test]
    fn loadavg() {
        assert_eq!(
            parse_loadavg("0.20 0.18 0.12 1/80 11206\n"),
            Some(LoadAvg {
                avg1: 0.2,
                avg5: 0.18,
                avg15: 0.12,
                running: 1,
                total: 80,
                last_pid: 11206
            })
        );
        for bad in [
            "",
            "1 2 3",
            "1 2 3 4 5",
            "a 2 3 1/2 3",
            "1 2 3 1/x 3",
            "1 2 3 1/2",
        ] {
            assert_eq!(parse_loadavg(bad), None, "{bad}");
        }
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(parse_cpu_list("\n"), Some(0));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("a"), None);
        assert_eq!(parse_cpu_list("0-"), None);
        assert_eq!(parse_cpu_list("0,,1"), None);
        assert_eq!(parse_cpu_list(&format!("0-{}", usize::MAX)), None);
    }

    #[test]
    fn sysfs_pairs() {
        assert_eq!(topology_from_pairs(&[]), None);
        assert_eq!(
            topology_from_pairs(&[(0, 0), (0, 0), (0, 1), (1, 0)]),
            Some((3, 2))
        );
    }
}
