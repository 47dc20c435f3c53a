//! The repository's tidy rules, checked by every `cargo test --workspace`
//! (so by `scripts/test.sh`): a walk of the source tree, no build needed.
//!
//! * `doc-line`: every `.rs` file (outside `target/` and the fuzz corpus)
//!   starts with a `//!` line saying what it is.
//! * `unsafe-doc`: every crate root — `src/lib.rs`, `src/main.rs`,
//!   `src/bin/*.rs`, `build.rs` and the `[lib]`/`[[bin]]` paths of each
//!   package, the fuzz targets included — carries
//!   `#![deny(clippy::undocumented_unsafe_blocks)]`, so clippy demands a
//!   `// SAFETY:` comment on every `unsafe` block. (Integration tests,
//!   benches and examples are crates too; they are not checked here.)
//! * `host-json`: no `serde_json` or `json!` in the code of `host/src`
//!   (tests and comments aside): the agent's JSON is written and read by
//!   `basicagent-proto` (and the audit line by `basicagent-auditchain`).
//!   Files still on [`HOST_JSON_ALLOWED`] say why; an entry that is no
//!   longer needed is an error too, so the list only shrinks.
//! * `host-unwrap`: no `.unwrap()` in the code of `host/src` (tests aside).
//!
//! It lives in `testsupport/tests` beside the harness every crate's tests
//! share; it checks the whole tree, not the crate.
#![deny(clippy::undocumented_unsafe_blocks)]

use std::fmt;
use std::path::{Path, PathBuf};

/// Files of `host/src` that may still use `serde_json`, each with why.
const HOST_JSON_ALLOWED: &[(&str, &str)] = &[];

/// The line a crate root must carry.
const DENY_LINE: &str = "#![deny(clippy::undocumented_unsafe_blocks)]";

/// One broken rule: where, which, what.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Violation {
    file: String,
    line: usize,
    rule: &'static str,
    what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: [{}] {}",
            self.file, self.line, self.rule, self.what
        )
    }
}

fn violation(file: &str, line: usize, rule: &'static str, what: impl Into<String>) -> Violation {
    Violation {
        file: file.to_owned(),
        line,
        rule,
        what: what.into(),
    }
}

/// `doc-line`: the file's first line is a `//!` line.
fn check_doc_line(file: &str, text: &str) -> Option<Violation> {
    let first = text.lines().next().unwrap_or("");
    (!first.starts_with("//!")).then(|| {
        violation(
            file,
            1,
            "doc-line",
            format!("the file must start with a `//!` line saying what it is, not {first:?}"),
        )
    })
}

/// `unsafe-doc`: a crate root carries [`DENY_LINE`] among its inner
/// attributes.
fn check_crate_root(file: &str, text: &str) -> Option<Violation> {
    (!text.lines().any(|l| l.trim() == DENY_LINE)).then(|| {
        violation(
            file,
            1,
            "unsafe-doc",
            format!("a crate root must carry `{DENY_LINE}` after its `//!` lines"),
        )
    })
}

/// The lines of code outside top-level `#[cfg(test)] mod … { … }` blocks
/// (rustfmt puts their closing `}` alone at column 0) and outside `//`
/// comments, numbered from 1; none for a file that is `#![cfg(test)]`.
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    // A file that says it is test code (`#![cfg(test)]` among its inner
    // attributes, right after the `//!` lines) has no code to check.
    let inner = lines
        .iter()
        .skip_while(|l| l.starts_with("//!"))
        .take_while(|l| l.starts_with("#!["));
    if inner.clone().any(|l| l.trim_end() == "#![cfg(test)]") {
        return out;
    }
    let mut in_test = false;
    for (i, l) in lines.iter().enumerate() {
        if in_test {
            if *l == "}" {
                in_test = false;
            }
            continue;
        }
        if l.trim_end() == "#[cfg(test)]"
            && lines
                .get(i + 1)
                .is_some_and(|n| n.starts_with("mod ") || n.starts_with("pub mod "))
        {
            in_test = true;
            continue;
        }
        if l.trim_start().starts_with("//") {
            continue;
        }
        out.push((i + 1, *l));
    }
    out
}

/// `host-json` and `host-unwrap` for one file of `host/src`;
/// `json_allowed`: the file is on [`HOST_JSON_ALLOWED`].
fn check_host_source(file: &str, text: &str, json_allowed: bool) -> Vec<Violation> {
    let mut out = Vec::new();
    for (n, l) in code_lines(text) {
        if !json_allowed && (l.contains("serde_json") || l.contains("json!")) {
            out.push(violation(
                file,
                n,
                "host-json",
                format!(
                    "no serde_json/json! in host/src: use (or add) a type in basicagent-proto: {}",
                    l.trim()
                ),
            ));
        }
        if l.contains(".unwrap()") {
            out.push(violation(
                file,
                n,
                "host-unwrap",
                format!("no unwrap() outside tests in host/src: {}", l.trim()),
            ));
        }
    }
    out
}

/// Whether a file of `host/src` still needs its allow-list entry.
fn uses_json(text: &str) -> bool {
    code_lines(text)
        .iter()
        .any(|(_, l)| l.contains("serde_json") || l.contains("json!"))
}

/// The crate roots of a package from its manifest's text: the default
/// roots that exist and the `path`s of `[lib]` and `[[bin]]` sections.
fn crate_roots(dir: &Path, manifest: &str) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if !manifest.lines().any(|l| l.trim() == "[package]") {
        return roots;
    }
    for default in ["src/lib.rs", "src/main.rs", "build.rs"] {
        roots.push(dir.join(default));
    }
    if let Ok(bins) = std::fs::read_dir(dir.join("src/bin")) {
        roots.extend(
            bins.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "rs")),
        );
    }
    let mut section = "";
    for l in manifest.lines() {
        let t = l.trim();
        if t.starts_with('[') {
            section = t;
            continue;
        }
        if section != "[lib]" && section != "[[bin]]" {
            continue;
        }
        if let Some(v) = t.strip_prefix("path") {
            let v = v.trim_start().trim_start_matches('=').trim();
            roots.push(dir.join(v.trim_matches('"')));
        }
    }
    roots.retain(|p| p.is_file());
    roots.sort();
    roots.dedup();
    roots
}

/// Files under `dir`, skipping build output, VCS data, hidden folders and
/// the fuzzers' corpora and artifacts.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            let fuzz_data = matches!(name.as_str(), "corpus" | "artifacts" | "coverage")
                && dir.file_name().is_some_and(|d| d == "fuzz");
            if name == "target" || name.starts_with('.') || name == "node_modules" || fuzz_data {
                continue;
            }
            walk(&path, out);
        } else if kind.is_file() {
            out.push(path);
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testsupport sits in the repository root")
        .to_owned()
}

fn files() -> (PathBuf, Vec<PathBuf>) {
    let root = root();
    let mut out = Vec::new();
    walk(&root, &mut out);
    out.sort();
    (root, out)
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

fn report(what: &str, v: &[Violation]) {
    assert!(
        v.is_empty(),
        "{what}: {} violation(s):\n{}",
        v.len(),
        v.iter().map(|v| format!("  {v}\n")).collect::<String>()
    );
}

#[test]
fn every_rust_file_starts_with_a_doc_line() {
    let (root, files) = files();
    let rs: Vec<_> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    assert!(rs.len() > 100, "the walk found only {} .rs files", rs.len());
    let v: Vec<_> = rs
        .iter()
        .filter_map(|p| check_doc_line(&rel(&root, p), &read(p)))
        .collect();
    report("doc-line", &v);
}

#[test]
fn every_crate_root_denies_undocumented_unsafe_blocks() {
    let (root, files) = files();
    let mut roots = Vec::new();
    for m in files
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "Cargo.toml"))
    {
        let dir = m.parent().unwrap_or(&root);
        roots.extend(crate_roots(dir, &read(m)));
    }
    for must in [
        "host/src/lib.rs",
        "host/src/main.rs",
        "fuzz/fuzz_targets/frame_splitter.rs",
    ] {
        assert!(
            roots.contains(&root.join(must)),
            "{must} not found as a crate root"
        );
    }
    let v: Vec<_> = roots
        .iter()
        .filter_map(|p| check_crate_root(&rel(&root, p), &read(p)))
        .collect();
    report("unsafe-doc", &v);
}

#[test]
fn host_src_writes_no_json_and_unwraps_nothing() {
    let (root, files) = files();
    let host: Vec<_> = files
        .iter()
        .filter(|p| p.starts_with(root.join("host/src")))
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    assert!(!host.is_empty());
    let mut v = Vec::new();
    for p in &host {
        let file = rel(&root, p);
        let allowed = HOST_JSON_ALLOWED.iter().any(|(f, _)| *f == file);
        v.extend(check_host_source(&file, &read(p), allowed));
    }
    for (file, why) in HOST_JSON_ALLOWED {
        let p = root.join(file);
        if !p.is_file() || !uses_json(&read(&p)) {
            v.push(violation(
                file,
                0,
                "host-json",
                format!("no longer needs its allow-list entry ({why}): remove it from HOST_JSON_ALLOWED in testsupport/tests/tidy.rs"),
            ));
        }
    }
    report("host-json/host-unwrap", &v);
}

#[test]
fn a_file_that_is_test_code_by_its_own_attribute_is_not_checked() {
    let test_only = "//! Pairs.\n#![cfg(test)]\n\nfn f() { x.unwrap(); json!(1); }\n";
    assert!(check_host_source("host/src/core/pair.rs", test_only, false).is_empty());
    let not = "//! Pairs.\n\n#[cfg(test)]\nfn f() {}\nfn g() { x.unwrap(); }\n";
    assert_eq!(check_host_source("host/src/core/x.rs", not, false).len(), 1);
}

#[test]
fn the_checker_names_the_file_and_the_rule() {
    let v = check_doc_line("x/src/a.rs", "use std::fs;\n").unwrap();
    assert_eq!(
        (v.file.as_str(), v.line, v.rule),
        ("x/src/a.rs", 1, "doc-line")
    );
    assert!(
        v.to_string().starts_with("x/src/a.rs:1: [doc-line] "),
        "{v}"
    );
    assert!(check_doc_line("a.rs", "").is_some());
    assert!(check_doc_line("a.rs", "// a plain comment\n").is_some());
    assert!(check_doc_line("a.rs", "//! What it is.\nuse std::fs;\n").is_none());

    let v = check_crate_root("x/src/lib.rs", "//! A crate.\n#![deny(missing_docs)]\n").unwrap();
    assert_eq!(v.rule, "unsafe-doc");
    assert!(
        v.to_string().contains("x/src/lib.rs:1: [unsafe-doc]"),
        "{v}"
    );
    assert!(check_crate_root("l.rs", &format!("//! A crate.\n{DENY_LINE}\n")).is_none());

    let code = "//! M.\nuse serde_json::Value;\n// serde_json in a comment is fine\nfn f() { let v = json!({}); x.unwrap(); }\n\n#[cfg(test)]\nmod tests {\n    use serde_json::json;\n    fn t() { json!(1).as_u64().unwrap(); }\n}\n\nfn g() { y.unwrap(); }\n";
    let v = check_host_source("host/src/m.rs", code, false);
    let got: Vec<(usize, &str)> = v.iter().map(|v| (v.line, v.rule)).collect();
    assert_eq!(
        got,
        [
            (2, "host-json"),
            (4, "host-json"),
            (4, "host-unwrap"),
            (12, "host-unwrap")
        ]
    );
    assert!(
        v[0].to_string()
            .starts_with("host/src/m.rs:2: [host-json] "),
        "{}",
        v[0]
    );
    // On the allow-list only the JSON is allowed.
    let v = check_host_source("host/src/m.rs", code, true);
    assert!(v.iter().all(|v| v.rule == "host-unwrap"), "{v:?}");
    assert!(uses_json(code));
    assert!(!uses_json(
        "//! M.\n// serde_json\n#[cfg(test)]\nmod tests {\n    use serde_json::json;\n}\n"
    ));
}

#[test]
fn crate_roots_come_from_the_manifest_and_the_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    for f in [
        "src/lib.rs",
        "src/bin/tool.rs",
        "targets/one.rs",
        "build.rs",
    ] {
        let p = d.join(f);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, "//! x\n").expect("write");
    }
    let manifest = "[package]\nname = \"x\"\n\n[[bin]]\nname = \"one\"\npath = \"targets/one.rs\"\n\n[dependencies]\npath = \"not/a/root.rs\"\n";
    let roots = crate_roots(d, manifest);
    let names: Vec<String> = roots.iter().map(|p| rel(d, p)).collect();
    assert_eq!(
        names,
        [
            "build.rs",
            "src/bin/tool.rs",
            "src/lib.rs",
            "targets/one.rs"
        ]
    );
    assert!(crate_roots(d, "[workspace]\nmembers = []\n").is_empty());
}
