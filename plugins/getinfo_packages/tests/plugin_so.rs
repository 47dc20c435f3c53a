//! Loads the real `libgetinfo_packages.so` through the host's loader and
//! checks its answers against `dpkg-query` on this host.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use basicagent_abi::{retcode, Completion, HostSettings, Plugin};
use serde_json::Value;

/// The built cdylib, next to this test binary (target/debug/deps/) or one
/// directory up (target/debug/).
fn plugin_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let name = "libgetinfo_packages.so";
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} not found near {}", exe.display()))
}

fn load() -> Plugin {
    let path = plugin_path();
    Plugin::load(&path, &HostSettings::default(), false)
        .unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
}

fn call_raw(plugin: &Plugin, request: &str) -> Completion {
    let (tx, rx) = mpsc::channel();
    plugin.call(
        request.as_bytes(),
        Box::new(move |c| {
            let _ = tx.send(c);
        }),
    );
    rx.recv_timeout(Duration::from_secs(10))
        .expect("no completion within 10 s")
}

fn call(plugin: &Plugin, args: &str) -> Completion {
    let request =
        serde_json::json!({"id": "1", "method": "getinfo.packages", "args": args}).to_string();
    call_raw(plugin, &request)
}

fn data(c: &Completion) -> Value {
    assert_eq!(c.retcode, retcode::SUCCESS, "{}", c.message);
    serde_json::from_str(c.data.as_deref().expect("data")).expect("json")
}

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
    let p = load();
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
    let p = load();
    let v = data(&call(&p, "-n bash"));
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
    let p = load();
    let v = data(&call(&p, ""));
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
    assert_eq!(data(&call(&p, "-c"))["count"], count);
}

#[test]
fn not_installed_is_empty_success() {
    let p = load();
    let v = data(&call(&p, "-n no-such-package-xyz"));
    assert_eq!(v["count"], 0);
    assert_eq!(v["packages"], serde_json::json!([]));
}

#[test]
fn fast_enough() {
    let p = load();
    let started = Instant::now();
    let c = call(&p, "");
    let took = started.elapsed();
    assert_eq!(c.retcode, retcode::SUCCESS, "{}", c.message);
    // Milliseconds in release; generous for a debug build on a busy host.
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn errors() {
    let p = load();
    for bad in ["-x", "-n", "bash", "-n 'a", "-n a -n b"] {
        let c = call(&p, bad);
        assert_eq!(c.retcode, retcode::INVALID_PARAMS, "{bad}: {}", c.message);
        assert!(
            c.message.contains("installed_size"),
            "usage missing: {}",
            c.message
        );
        assert!(c.data.is_none());
    }
    for bad in ["[1]", "\"x\"", "{", "42"] {
        assert_eq!(call_raw(&p, bad).retcode, retcode::INVALID_REQUEST, "{bad}");
    }
}
