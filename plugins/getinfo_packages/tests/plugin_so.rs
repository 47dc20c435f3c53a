//! Loads the real `libgetinfo_packages.so` through the host's loader and
//! checks its answers against `dpkg-query` on this host.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use basicagent_abi::retcode;
use basicagent_testsupport::plugin::{call, call_args, data, load_built};

fn dpkg_query(format: &str, packages: &[&str]) -> String {
    let out = Command::new("dpkg-query")
        .arg("-W")
        .arg(format!("-f={format}"))
        .args(packages)
        .output()
        .expect("run dpkg-query");
    assert!(out.status.success(), "dpkg-query failed");
    String::from_utf8(out.stdout).expect("utf-8")
}

fn have_dpkg() -> bool {
    std::path::Path::new("/var/lib/dpkg/status").exists()
}

#[test]
fn descriptor_and_usage() {
    let p = load_built("getinfo_packages");
    assert_eq!(p.info().name, "getinfo_packages");
    assert_eq!(p.info().methods, vec!["getinfo.packages".to_owned()]);
    for word in ["-n NAME", "-c", "installed_size", "architecture", "rpm"] {
        assert!(p.info().usage.contains(word), "usage lacks {word}");
    }
}

#[test]
fn bash_matches_dpkg_query() {
    if !have_dpkg() {
        eprintln!("no dpkg database on this host; skipped");
        return;
    }
    let expected = dpkg_query(
        "${Package} ${Version} ${Architecture} ${source:Package}\n",
        &["bash"],
    );
    let p = load_built("getinfo_packages");
    let v = data(&call_args(&p, "-n bash"));
    assert_eq!(v["count"], 1);
    let b = &v["packages"][0];
    let got = format!(
        "{} {} {} {}\n",
        b["name"].as_str().expect("name"),
        b["version"].as_str().expect("version"),
        b["architecture"].as_str().expect("architecture"),
        b["source"].as_str().expect("source"),
    );
    assert_eq!(got, expected);
    let size = dpkg_query("${Installed-Size}", &["bash"]);
    assert_eq!(
        b["installed_size"].as_u64().map(|s| s.to_string()),
        Some(size)
    );
}

#[test]
fn installed_set_matches_dpkg_query() {
    if !have_dpkg() {
        eprintln!("no dpkg database on this host; skipped");
        return;
    }
    let listing = dpkg_query(
        "${db:Status-Abbrev}|${Package}:${Architecture} ${Version}\n",
        &[],
    );
    // Status-Abbrev is want, status, error flag: status 'i' is installed.
    let expected: BTreeSet<String> = listing
        .lines()
        .filter(|l| l.as_bytes().get(1) == Some(&b'i'))
        .filter_map(|l| l.split_once('|').map(|(_, rest)| rest.to_owned()))
        .collect();
    let ii = listing.lines().filter(|l| l.starts_with("ii")).count();
    let p = load_built("getinfo_packages");
    let v = data(&call_args(&p, ""));
    let got: BTreeSet<String> = v["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            format!(
                "{}:{} {}",
                p["name"].as_str().expect("name"),
                p["architecture"].as_str().expect("architecture"),
                p["version"].as_str().expect("version")
            )
        })
        .collect();
    assert_eq!(got, expected);
    let count = v["count"].as_u64().expect("count") as usize;
    assert_eq!(count, expected.len());
    assert!(count >= ii && ii > 0, "{count} installed, {ii} 'ii'");
    // `dpkg-query ... | grep -c '^ii'` plus the installed packages whose
    // selection is not "install" (held ones, "hi").
    let other = listing
        .lines()
        .filter(|l| l.as_bytes().get(1) == Some(&b'i') && !l.starts_with("ii"))
        .count();
    assert_eq!(count, ii + other);
    assert_eq!(data(&call_args(&p, "-c"))["count"], count);
}

#[test]
fn not_installed_is_empty_success() {
    let p = load_built("getinfo_packages");
    let v = data(&call_args(&p, "-n no-such-package-xyz"));
    assert_eq!(v["count"], 0);
    assert_eq!(v["packages"], serde_json::json!([]));
}

#[test]
fn fast_enough() {
    let p = load_built("getinfo_packages");
    let started = Instant::now();
    let c = call_args(&p, "");
    let took = started.elapsed();
    assert_eq!(c.retcode, retcode::SUCCESS, "{}", c.message);
    // Milliseconds in release; generous for a debug build on a busy host.
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn errors() {
    let p = load_built("getinfo_packages");
    for bad in ["-x", "-n", "bash", "-n 'a", "-n a -n b"] {
        let c = call_args(&p, bad);
        assert_eq!(c.retcode, retcode::INVALID_PARAMS, "{bad}: {}", c.message);
        assert!(
            c.message.contains("installed_size"),
            "usage missing: {}",
            c.message
        );
        assert!(c.data.is_none());
    }
    for bad in ["[1]", "\"x\"", "{", "42"] {
        assert_eq!(call(&p, bad).retcode, retcode::INVALID_REQUEST, "{bad}");
    }
}
