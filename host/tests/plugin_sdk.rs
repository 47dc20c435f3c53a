//! Plugin platform 1.1 through the real daemon and ctl tool (issue 17
//! items 3 and 4): a C plugin built only against the *installed* header
//! (`scripts/install.sh` into a temporary DESTDIR, flags from
//! `pkg-config --cflags basicagent-plugin`) reads its request through the
//! ABI 1.1 readers and answers through `BasicAgentCtl` and the daemon; and
//! with `require_signature` the daemon serves signed plugins, answers
//! `3025` with the reason for unsigned, changed and untrusted ones, logs
//! each once, and keeps serving.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use basicagent_testsupport::*;
use serde_json::Value;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn ctl() -> PathBuf {
    bin_dir().join("BasicAgentCtl")
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An agent with its own config: `plugins` as the plugin directory, DNS
/// off, `agent_extra` in `[agent]`.
fn agent_with(pki: &Pki, port: u16, ip: &str, plugins: &Path, agent_extra: &str) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hosts"), format!("{ip} config.cargo.com\n")).unwrap();
    let config = format!(
        "[server]\nport = {port}\nca = \"{ca}\"\nhosts_file = \"{hosts}\"\ndns = false\nconnect_timeout = 2\nhandshake_timeout = 3\n\
         [agent]\nstate_dir = \"{state}\"\nplugin_dir = \"{plugins}\"\n{agent_extra}\n",
        ca = pki.path("ca.pem").display(),
        hosts = dir.path().join("hosts").display(),
        state = dir.path().join("state").display(),
        plugins = plugins.display(),
    );
    std::fs::write(dir.path().join("agent.toml"), config).unwrap();
    let mut agent = Agent { child: None, dir };
    agent.spawn(&["-f"]);
    agent
}

/// A root-or-me 0755 plugin directory.
fn plugin_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o755);
    let dir = tmp.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    (tmp, dir)
}

fn install(bytes: &[u8], to: &Path) {
    std::fs::write(to, bytes).unwrap();
    chmod(to, 0o644);
}

#[test]
fn a_c_plugin_built_from_the_installed_header_via_pkg_config_answers_through_ctl_and_daemon() {
    if Command::new("pkg-config")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!(
            "\n\n*** SKIPPED a_c_plugin_built_from_the_installed_header_via_pkg_config: \
             pkg-config is not installed (Debian package `pkg-config`) ***\n\n"
        );
        return;
    }
    // Install into a private DESTDIR, as a packager or an operator would.
    let stage = tempfile::tempdir().unwrap();
    let destdir = stage.path().join("root");
    ok(
        Command::new(workspace().join("scripts/install.sh"))
            .arg("--destdir")
            .arg(&destdir)
            .arg("--build-dir")
            .arg(bin_dir())
            .output()
            .unwrap(),
        "install.sh",
    );
    let header = destdir.join("usr/include/basicagent/basicagent_plugin.h");
    assert!(header.is_file(), "{} not installed", header.display());
    let pc_dir = destdir.join("usr/share/pkgconfig");
    let cflags = ok(
        Command::new("pkg-config")
            .args(["--cflags", "basicagent-plugin"])
            .env("PKG_CONFIG_PATH", &pc_dir)
            .env("PKG_CONFIG_LIBDIR", &pc_dir)
            .env("PKG_CONFIG_SYSROOT_DIR", &destdir)
            .output()
            .unwrap(),
        "pkg-config",
    );
    let cflags: Vec<String> = cflags.split_whitespace().map(str::to_owned).collect();
    assert_eq!(
        cflags,
        [format!("-I{}/usr/include/basicagent", destdir.display())],
        "the flags point into the installed tree only"
    );
    // The example's source, as installed beside the docs, compiled away
    // from the source tree with nothing but those flags.
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("getinfo_loadavg.c");
    std::fs::copy(
        destdir.join("usr/share/doc/basicagent/examples/getinfo_loadavg.c"),
        &src,
    )
    .unwrap();
    let (_tmp, plugins) = plugin_dir();
    let so = plugins.join("libgetinfo_loadavg.so");
    ok(
        Command::new("cc")
            .args([
                "-Wall",
                "-Wextra",
                "-Werror",
                "-pedantic",
                "-std=c11",
                "-O2",
                "-fPIC",
                "-shared",
            ])
            .args(&cflags)
            .arg("-o")
            .arg(&so)
            .arg(&src)
            .current_dir(src_dir.path())
            .output()
            .unwrap(),
        "cc with the pkg-config flags",
    );
    chmod(&so, 0o644);

    // Through the ctl tool.
    let out = Command::new(ctl())
        .arg("-p")
        .arg(&plugins)
        .args(["-c", "getinfo.loadavg", "-a", "-p -d 1", "-j"])
        .arg(r#"{"label":"web \"01\"","per_cpu":false}"#)
        .output()
        .unwrap();
    let v: Value = serde_json::from_str(ok(out, "ctl getinfo.loadavg").trim()).unwrap();
    assert_eq!(v["retcode"], 2, "{v}");
    assert_eq!(v["data"]["load"].as_array().map(Vec::len), Some(3), "{v}");
    assert_eq!(v["data"]["label"], "web \"01\"", "{v}");
    assert!(v["data"]["total"].as_u64().unwrap_or(0) > 0, "{v}");
    let out = Command::new(ctl())
        .arg("-p")
        .arg(&plugins)
        .args(["-c", "getinfo.loadavg", "-a", "-d 9"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["retcode"], 3021, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid params: -d takes 0..6"),
        "{v}"
    );

    // Through the daemon.
    let pki = Pki::new();
    let port = free_port();
    let server = Server::serve(&pki, &format!("127.0.77.1:{port}"), "server", &[]);
    let agent = agent_with(&pki, port, "127.0.77.1", &plugins, "");
    let host = server.wait_agent(Duration::from_secs(15));
    let v = server.call(
        &host,
        r#"{"method":"getinfo.loadavg","args":"-d 0 -p","label":"ünï\ncode","per_cpu":true}"#,
    );
    assert_eq!(v["retcode"], 2, "{v}");
    assert_eq!(v["data"]["label"], "ünï\ncode", "{v}");
    let first = v["data"]["load"][0].as_f64().unwrap();
    assert_eq!(first, first.round(), "-d 0 gives whole numbers: {v}");
    let v = server.call(&host, r#"{"method":"getinfo.loadavg","args":"-q"}"#);
    assert_eq!(v["retcode"], 3021, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid params: unknown option -q"),
        "{v}"
    );
    let v = server.call(&host, r#"{"method":"getinfo.loadavg","label":7}"#);
    assert_eq!(v["retcode"], 3021, "{v}");
    // The host's own messages start with their standard text too.
    let v = server.call(&host, r#"{"method":"getinfo.absent"}"#);
    assert_eq!(v["retcode"], 3022, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with("Unknown method: no plugin serves getinfo.absent"),
        "{v}"
    );
    assert_eq!(server.call(&host, r#"{"method":"ping"}"#)["retcode"], 2);
    drop(agent);
}

#[test]
fn with_require_signature_the_daemon_serves_signed_plugins_and_answers_3025_for_the_rest() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("release");
    let stranger = keys.path().join("stranger");
    for k in [&key, &stranger] {
        ok(
            Command::new(ctl())
                .args(["plugin", "keygen"])
                .arg(k)
                .output()
                .unwrap(),
            "keygen",
        );
        let mode = std::fs::metadata(k).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the private key is 0600");
    }
    let (_tmp, plugins) = plugin_dir();
    let so = |name: &str| plugins.join(format!("lib{name}.so"));
    let built = |name: &str| std::fs::read(bin_dir().join(format!("lib{name}.so"))).unwrap();
    // Signed by the trusted key: served.
    install(&built("getinfo_loadavg"), &so("getinfo_loadavg"));
    install(&built("getinfo_kernel"), &so("getinfo_kernel"));
    // Unsigned.
    install(&built("getinfo_os"), &so("getinfo_os"));
    // Signed by a key not trusted.
    install(&built("getinfo_hello"), &so("getinfo_hello"));
    // Signed, then a byte changed.
    install(&built("getinfo_memory"), &so("getinfo_memory"));
    // A constructor that leaves a mark, signed by a key not trusted.
    let marker = keys.path().join("constructor-ran");
    let ctor_src = keys.path().join("ctor.c");
    std::fs::write(
        &ctor_src,
        format!(
            "#include <stdio.h>\n#include \"basicagent_plugin.h\"\n\
             __attribute__((constructor)) static void mark(void) {{ FILE *f = fopen(\"{}\", \"w\"); if (f) fclose(f); }}\n\
             static void c(ba_call_id id, const char *r, size_t n) {{ (void)id; (void)r; (void)n; }}\n\
             static const char *const m[] = {{\"getinfo.ctor\", NULL}};\n\
             static const ba_plugin_descriptor d = {{ BA_ABI_VERSION, sizeof(ba_plugin_descriptor), \"getinfo_ctor\", \"1\", \"ctor\", m, \"\", NULL, c, NULL, NULL }};\n\
             const ba_plugin_descriptor *basicagent_plugin_v1(void) {{ return &d; }}\n",
            marker.display()
        ),
    )
    .unwrap();
    ok(
        Command::new("cc")
            .args([
                "-Wall", "-Wextra", "-Werror", "-std=c11", "-fPIC", "-shared", "-I",
            ])
            .arg(workspace().join("abi/include"))
            .arg("-o")
            .arg(so("getinfo_ctor"))
            .arg(&ctor_src)
            .output()
            .unwrap(),
        "cc ctor",
    );
    chmod(&so("getinfo_ctor"), 0o644);
    let sign = |k: &Path, files: &[PathBuf]| {
        ok(
            Command::new(ctl())
                .args(["plugin", "sign"])
                .arg(k)
                .args(files)
                .output()
                .unwrap(),
            "sign",
        )
    };
    sign(
        &key,
        &[
            so("getinfo_loadavg"),
            so("getinfo_kernel"),
            so("getinfo_memory"),
        ],
    );
    sign(&stranger, &[so("getinfo_hello"), so("getinfo_ctor")]);
    let mut bytes = built("getinfo_memory");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x01;
    install(&bytes, &so("getinfo_memory"));

    // The ctl tool's verify says the same as the daemon will.
    let out = Command::new(ctl())
        .args(["plugin", "verify", "--key"])
        .arg(format!("{}.pub", key.display()))
        .args([
            so("getinfo_loadavg"),
            so("getinfo_memory"),
            so("getinfo_os"),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("libgetinfo_loadavg.so: OK, signed by trusted key"),
        "{text}"
    );
    assert!(
        text.contains("libgetinfo_memory.so: REFUSED: signature"),
        "{text}"
    );
    assert!(
        text.contains("libgetinfo_os.so: REFUSED: not signed"),
        "{text}"
    );

    let pki = Pki::new();
    let port = free_port();
    let server = Server::serve(&pki, &format!("127.0.77.2:{port}"), "server", &[]);
    let extra = format!(
        "require_signature = true\ntrusted_keys = [\"{}.pub\"]",
        key.display()
    );
    let agent = agent_with(&pki, port, "127.0.77.2", &plugins, &extra);
    let host = server.wait_agent(Duration::from_secs(15));
    let v = server.call(&host, r#"{"method":"getinfo.loadavg","args":"-p"}"#);
    assert_eq!(v["retcode"], 2, "{v}");
    assert_eq!(
        server.call(&host, r#"{"method":"getinfo.kernel"}"#)["retcode"],
        2
    );
    let refused = [
        ("getinfo.os", "not signed (no ".to_owned()),
        ("getinfo.memory", "does not match the file".to_owned()),
        ("getinfo.hello", "which is not in trusted_keys".to_owned()),
        ("getinfo.ctor", "which is not in trusted_keys".to_owned()),
    ];
    for _ in 0..2 {
        for (method, why) in &refused {
            let v = server.call(&host, &format!(r#"{{"method":"{method}"}}"#));
            assert_eq!(v["retcode"], 3025, "{v}");
            let m = v["message"].as_str().unwrap();
            assert!(m.starts_with("Plugin failure: "), "{v}");
            assert!(m.contains(why.as_str()), "{method}: {v}");
            assert!(!m.contains('\n'), "one line: {v}");
        }
        // And it keeps serving, signed plugins included.
        assert_eq!(server.call(&host, r#"{"method":"ping"}"#)["retcode"], 2);
        assert_eq!(
            server.call(&host, r#"{"method":"getinfo.loadavg"}"#)["retcode"],
            2
        );
    }
    assert!(
        !marker.exists(),
        "a refused file's constructor never ran in the daemon"
    );
    let log = agent.log();
    for (method, why) in &refused {
        let file = format!("lib{}.so", method.replace('.', "_"));
        let lines = log
            .lines()
            .filter(|l| {
                l.contains("plugin refused") && l.contains(&file) && l.contains(why.as_str())
            })
            .count();
        assert_eq!(lines, 1, "{method} logged once per file version:\n{log}");
    }
    assert!(
        log.contains("signed by trusted key"),
        "the load line names the key:\n{log}"
    );
    // Signing the unsigned one is enough: served without a restart.
    sign(&key, &[so("getinfo_os")]);
    assert_eq!(
        server.call(&host, r#"{"method":"getinfo.os"}"#)["retcode"],
        2
    );
}
