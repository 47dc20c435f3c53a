//! Pure parsers (os-release, /proc/stat btime, /proc/uptime, time zone
//! link targets, DMI vendor names) and the output shape [`OsInfo`].

use std::collections::BTreeMap;

use serde::Serialize;

/// The `data` object of a `getinfo.os` response.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OsInfo {
    pub id: String,
    pub id_like: Vec<String>,
    pub name: String,
    pub pretty_name: String,
    pub version: Option<String>,
    pub version_id: Option<String>,
    pub version_codename: Option<String>,
    pub os_release: BTreeMap<String, String>,
    pub os_release_source: Option<&'static str>,
    pub hostname: Option<String>,
    pub boot_time: Option<u64>,
    pub uptime_seconds: Option<f64>,
    pub timezone: Option<String>,
    pub timezone_source: Option<&'static str>,
    pub virtualization: Virtualization,
}

/// What the hints say, and which file said it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Virtualization {
    pub container: Option<String>,
    pub hypervisor: Option<String>,
    pub evidence: Vec<Evidence>,
}

/// One hint: the file and what it said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    pub source: &'static str,
    pub value: String,
}

/// Parses os-release(5): `KEY=VALUE` lines; `#` comments and blank lines
/// ignored; a value may be in double quotes (where `\"`, `\\`, `` \` ``
/// and `\$` are escapes), in single quotes (literal), or bare (where `\`
/// makes the next character literal); pieces join as in a shell word. No
/// variable expansion. Lines without `=` or with a key not made of
/// `[A-Za-z0-9_]` are skipped; a later line wins over an earlier one.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            continue;
        }
        map.insert(key.to_owned(), unquote(raw));
    }
    map
}

/// One shell-like word (lenient: an unterminated quote runs to the end).
fn unquote(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => match chars.next() {
                            Some(e @ ('"' | '\\' | '`' | '$')) => out.push(e),
                            Some(other) => {
                                out.push('\\');
                                out.push(other);
                            }
                            None => out.push('\\'),
                        },
                        c => out.push(c),
                    }
                }
            }
            '\'' => {
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    out.push(c);
                }
            }
            '\\' => out.push(chars.next().unwrap_or('\\')),
            c => out.push(c),
        }
    }
    out
}

/// `btime` of `/proc/stat`: unix seconds at boot.
pub fn parse_btime(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The first field of `/proc/uptime`.
pub fn parse_uptime(uptime: &str) -> Option<f64> {
    uptime
        .split_ascii_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

/// The zone name in a `/etc/localtime` link target:
/// `/usr/share/zoneinfo/Europe/Paris` (or `../usr/share/zoneinfo/posix/Europe/Paris`)
/// → `Europe/Paris`. `None` when the target is not under a `zoneinfo/`.
pub fn zone_from_link(target: &str) -> Option<String> {
    let (_, zone) = target.rsplit_once("zoneinfo/")?;
    let zone = zone
        .strip_prefix("posix/")
        .or_else(|| zone.strip_prefix("right/"))
        .unwrap_or(zone);
    (!zone.is_empty()).then(|| zone.to_owned())
}

/// The first non-comment line of `/etc/timezone`.
pub fn zone_from_file(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
}

/// The `container=` value in `/proc/1/environ` (NUL-separated).
pub fn container_from_environ(environ: &[u8]) -> Option<String> {
    environ.split(|&b| b == 0).find_map(|kv| {
        let v = kv.strip_prefix(b"container=")?;
        (!v.is_empty()).then(|| String::from_utf8_lossy(v).into_owned())
    })
}

/// Whether the first cpu's `flags` line carries `hypervisor` (x86 sets it
/// in every guest).
pub fn cpuinfo_has_hypervisor_flag(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "flags").then_some(v)
        })
        .is_some_and(|flags| flags.split_ascii_whitespace().any(|f| f == "hypervisor"))
}

/// The hypervisor a DMI vendor / product pair names, if any.
pub fn hypervisor_from_dmi(vendor: &str, product: &str) -> Option<&'static str> {
    let known = [
        ("QEMU", "qemu"),
        ("VMware", "vmware"),
        ("innotek", "virtualbox"),
        ("Xen", "xen"),
        ("Amazon EC2", "amazon"),
        ("Parallels", "parallels"),
        ("Bochs", "bochs"),
        ("OpenStack", "openstack"),
        ("Alibaba Cloud", "alibaba"),
    ];
    if let Some((_, name)) = known.iter().find(|(k, _)| vendor.starts_with(k)) {
        return Some(name);
    }
    match (vendor, product) {
        (_, "KVM") => Some("kvm"),
        (_, p) if p.starts_with("VirtualBox") => Some("virtualbox"),
        ("Microsoft Corporation", "Virtual Machine") => Some("hyperv"),
        ("Google", "Google Compute Engine") => Some("google"),
        (_, p) if p.starts_with("OpenStack") => Some("openstack"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_quoting() {
        let m = parse_os_release(
            "# comment\n\
             PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n\
             ID=debian\n\
             \n\
             VERSION_ID='12'\n\
             NAME=\"say \\\"hi\\\" \\$HOME \\\\ \\q\"\n\
             ESC=a\\ b\n\
             JOINED=\"a\"'b'c\n\
             EMPTY=\n\
             bad key=x\n\
             noequals\n\
             =novalue\n\
             OPEN=\"unterminated\n\
             ID=override\n   SPACED=1  \n",
        );
        assert_eq!(m["PRETTY_NAME"], "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(m["ID"], "override");
        assert_eq!(m["VERSION_ID"], "12");
        assert_eq!(m["NAME"], "say \"hi\" $HOME \\ \\q");
        assert_eq!(m["ESC"], "a b");
        assert_eq!(m["JOINED"], "abc");
        assert_eq!(m["EMPTY"], "");
        assert_eq!(m["OPEN"], "unterminated");
        assert_eq!(m["SPACED"], "1");
        assert_eq!(m.len(), 9);
    }

    #[test]
    fn proc_values() {
        assert_eq!(
            parse_btime("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_btime("btime x\n"), None);
        assert_eq!(parse_uptime("12.5 3.0\n"), Some(12.5));
        assert_eq!(parse_uptime(""), None);
        assert_eq!(parse_uptime("inf 1"), None);
    }

    #[test]
    fn zones() {
        assert_eq!(
            zone_from_link("/usr/share/zoneinfo/Etc/UTC").as_deref(),
            Some("Etc/UTC")
        );
        assert_eq!(
            zone_from_link("../usr/share/zoneinfo/posix/Europe/Paris").as_deref(),
            Some("Europe/Paris")
        );
        assert_eq!(zone_from_link("/etc/alt/localtime"), None);
        assert_eq!(zone_from_link("/usr/share/zoneinfo/"), None);
        assert_eq!(
            zone_from_file("# x\n\n Europe/Berlin \n").as_deref(),
            Some("Europe/Berlin")
        );
        assert_eq!(zone_from_file("\n"), None);
    }

    #[test]
    fn hints() {
        assert_eq!(
            container_from_environ(b"PATH=/bin\0container=lxc\0TERM=x\0").as_deref(),
            Some("lxc")
        );
        assert_eq!(container_from_environ(b"container=\0"), None);
        assert_eq!(container_from_environ(b""), None);
        assert!(cpuinfo_has_hypervisor_flag(
            "processor\t: 0\nflags\t\t: fpu hypervisor lm\n"
        ));
        assert!(!cpuinfo_has_hypervisor_flag("flags\t: fpu hypervisorx\n"));
        assert!(!cpuinfo_has_hypervisor_flag(""));
        assert_eq!(
            hypervisor_from_dmi("QEMU", "Standard PC (Q35 + ICH9, 2009)"),
            Some("qemu")
        );
        assert_eq!(
            hypervisor_from_dmi("Microsoft Corporation", "Virtual Machine"),
            Some("hyperv")
        );
        assert_eq!(hypervisor_from_dmi("Red Hat", "KVM"), Some("kvm"));
        assert_eq!(hypervisor_from_dmi("Dell Inc.", "PowerEdge R640"), None);
    }
}
