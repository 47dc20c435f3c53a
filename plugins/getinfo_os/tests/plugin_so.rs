//! Loads the real `libgetinfo_os.so` through the host's loader and
//! compares its answer with os-release parsed by python3 (or a shell),
//! gethostname(2), /proc/stat and the /etc/localtime link.

use std::time::Duration;

use basicagent_abi::retcode;
use basicagent_testsupport::plugin::{
    assert_collector, call_args, call_args_timed, data, load_built, COMMON_BAD_ARGS,
};

const NAME: &str = "getinfo_os";
const METHOD: &str = "getinfo.os";

#[test]
fn descriptor_usage_and_refusals() {
    assert_collector(NAME, METHOD, &COMMON_BAD_ARGS);
}

/// os-release parsed by an independent implementation: python3's shlex
/// (which follows shell quoting), keys and values one per line.
fn os_release_by_python() -> Option<Vec<(String, String)>> {
    let script = r##"
import shlex
for path in ("/etc/os-release", "/usr/lib/os-release"):
    try:
        text = open(path).read()
    except OSError:
        continue
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        k, v = line.split("=", 1)
        print(k + "\t" + "".join(shlex.split(v)))
    break
"##;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    })
}

#[test]
fn matches_independent_sources() {
    let p = load_built(NAME);
    let (c, took) = call_args_timed(&p, "");
    let d = data(&c);
    assert!(took < Duration::from_millis(500), "took {took:?}");
    match os_release_by_python() {
        Some(pairs) => {
            assert!(!pairs.is_empty());
            for (k, v) in &pairs {
                assert_eq!(d["os_release"][k].as_str(), Some(v.as_str()), "{k}");
            }
            assert_eq!(
                d["os_release"].as_object().map(|o| o.len()),
                Some(pairs.len())
            );
            if let Some((_, id)) = pairs.iter().find(|(k, _)| k == "ID") {
                assert_eq!(d["id"].as_str(), Some(id.as_str()));
            }
        }
        None => eprintln!("note: python3 not available; os-release not cross-checked"),
    }
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid and writable for its whole length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    assert_eq!(rc, 0);
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    assert_eq!(
        d["hostname"].as_str(),
        Some(&*String::from_utf8_lossy(&buf[..end]))
    );
    let btime: u64 = std::fs::read_to_string("/proc/stat")
        .expect("stat")
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .expect("btime");
    assert_eq!(d["boot_time"].as_u64(), Some(btime));
    assert!(d["uptime_seconds"].as_f64().is_some_and(|u| u > 0.0));
    if let Ok(tz) = std::fs::read_to_string("/etc/timezone") {
        assert_eq!(d["timezone"].as_str(), Some(tz.trim()));
    } else if let Ok(link) = std::fs::read_link("/etc/localtime") {
        let link = link.to_string_lossy().into_owned();
        let zone = d["timezone"].as_str().expect("timezone");
        assert!(link.ends_with(zone), "{link} vs {zone}");
    }
    let virt = &d["virtualization"];
    if std::path::Path::new("/.dockerenv").exists() {
        assert!(virt["evidence"]
            .as_array()
            .expect("evidence")
            .iter()
            .any(|e| e["source"] == "/.dockerenv"));
        assert!(virt["container"].is_string());
    }
}

#[test]
fn any_argument_is_refused() {
    let p = load_built(NAME);
    let c = call_args(&p, "-v");
    assert_eq!(c.retcode, retcode::INVALID_PARAMS);
    assert!(c.message.contains("takes no arguments"), "{}", c.message);
}
