//! `BasicAgentCtl plugin keygen|sign|verify` and `-C CONFIG`: the real
//! binary makes keys (0600, never over an existing file), signs plugins,
//! verifies them (a flipped byte and an untrusted key fail with exit 1),
//! refuses a private key others can read, and `-c`/`-l` refuse what the
//! daemon's `require_signature` refuses.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use basicagent_testsupport::chmod;
use serde_json::Value;

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_BasicAgentCtl"))
}

fn run(args: &[&str]) -> Output {
    Command::new(exe())
        .args(args)
        .env_remove("BASICAGENT_PLUGIN_DIR")
        .output()
        .expect("BasicAgentCtl runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn keygen_sign_verify_and_the_config_policy() {
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o755);
    let dir = tmp.path().join("plugins");
    std::fs::create_dir(&dir).unwrap();
    chmod(&dir, 0o755);
    let built = exe().parent().unwrap().join("libgetinfo_kernel.so");
    let so = dir.join("libgetinfo_kernel.so");
    std::fs::copy(&built, &so).unwrap();
    chmod(&so, 0o644);

    let key = tmp.path().join("k");
    let out = run(&["plugin", "keygen", s(&key)]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let pubkey = tmp.path().join("k.pub");
    let pub_text = std::fs::read_to_string(&pubkey).unwrap();
    assert!(pub_text.starts_with("ed25519 "), "{pub_text}");
    // Never over an existing key.
    let out = run(&["plugin", "keygen", s(&key)]);
    assert_eq!(out.status.code(), Some(1));
    let other = tmp.path().join("other");
    assert!(run(&["plugin", "keygen", s(&other)]).status.success());

    // Unsigned: verify fails.
    let out = run(&["plugin", "verify", "--key", s(&pubkey), s(&so)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("REFUSED: not signed"),
        "{}",
        stdout(&out)
    );

    let out = run(&["plugin", "sign", s(&key), s(&so)]);
    assert!(out.status.success(), "{out:?}");
    let sig = dir.join("libgetinfo_kernel.so.sig");
    assert_eq!(
        std::fs::metadata(&sig).unwrap().permissions().mode() & 0o777,
        0o644
    );
    let out = run(&["plugin", "verify", "--key", s(&pubkey), s(&so)]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("OK, signed by trusted key"),
        "{}",
        stdout(&out)
    );
    // Another key is not this one.
    let out = run(&[
        "plugin",
        "verify",
        "--key",
        &format!("{}.pub", s(&other)),
        s(&so),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("not in trusted_keys"),
        "{}",
        stdout(&out)
    );
    // No key at all: integrity only, said so.
    let empty_cfg = tmp.path().join("empty.toml");
    std::fs::write(&empty_cfg, "").unwrap();
    let out = run(&["plugin", "verify", "-C", s(&empty_cfg), s(&so)]);
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).contains("not checked against any trusted key"));

    // A private key others can read is refused.
    chmod(&key, 0o644);
    let out = run(&["plugin", "sign", s(&key), s(&so)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 0600"),
        "{out:?}"
    );
    chmod(&key, 0o600);

    // The daemon's policy, through -C: the signed file is served ...
    let cfg = tmp.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nname = \"x\"\n[agent]\nrequire_signature = true\ntrusted_keys = [\"{}\"]\n",
            s(&pubkey)
        ),
    )
    .unwrap();
    let out = run(&["-C", s(&cfg), "-p", s(&dir), "-c", "getinfo.kernel"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["retcode"], 2, "{v}");
    // ... and a byte flipped after signing is refused, by -c and -l.
    let mut bytes = std::fs::read(&so).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x80;
    let tmp_so = dir.join(".new");
    std::fs::write(&tmp_so, &bytes).unwrap();
    chmod(&tmp_so, 0o644);
    std::fs::rename(&tmp_so, &so).unwrap();
    let out = run(&["-C", s(&cfg), "-p", s(&dir), "-c", "getinfo.kernel"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["retcode"], 3025, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Plugin failure: {}: signature", s(&so))),
        "{v}"
    );
    let out = run(&["-C", s(&cfg), "-l", "-p", s(&dir)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("REFUSED: "), "{}", stdout(&out));
    let out = run(&["plugin", "verify", "--key", s(&pubkey), s(&so)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("does not match the file"),
        "{}",
        stdout(&out)
    );
    // A config asking for signatures with no key is a usage error.
    std::fs::write(&cfg, "[agent]\nrequire_signature = \"yes\"\n").unwrap();
    let out = run(&["-C", s(&cfg), "-p", s(&dir), "-c", "getinfo.kernel"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
