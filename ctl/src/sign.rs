//! `BasicAgentCtl plugin keygen|sign|verify`: the operator's side of
//! plugin signatures (formats and rule in `basicagent_abi::signature`).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use basicagent_abi::signature::{self, FileBytes, SecretKey, SignaturePolicy, Verdict};

pub const USAGE: &str = "Usage: BasicAgentCtl plugin keygen OUT
       BasicAgentCtl plugin sign KEY FILE...
       BasicAgentCtl plugin verify [--key PUB]... FILE...

keygen  writes a new Ed25519 private key to OUT (mode 0600, refused if OUT
        exists) and its public key to OUT.pub (for agent.trusted_keys).
sign    writes FILE.sig beside each FILE (mode 0644), signed with KEY.
verify  checks each FILE against FILE.sig: by the --key public keys (a
        .pub file or \"ed25519 BASE64\"), else by the daemon's trusted_keys
        (-C FILE, default /etc/basicagent/agent.toml); with neither, only
        that the signature is intact. Exit 0 if every FILE passes.";

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("BasicAgentCtl plugin: {msg}\n\n{USAGE}");
    ExitCode::from(2)
}

/// Runs `plugin ARGS...`; `config_keys` gives the daemon's trusted keys
/// for `verify` without `--key`.
pub fn main(
    args: &[String],
    config_keys: impl FnOnce() -> Result<SignaturePolicy, String>,
) -> ExitCode {
    match args.first().map(String::as_str) {
        Some("keygen") => match &args[1..] {
            [out] => keygen(Path::new(out)),
            _ => usage_error("keygen takes one OUT path"),
        },
        Some("sign") => match &args[1..] {
            [key, files @ ..] if !files.is_empty() => sign(Path::new(key), files),
            _ => usage_error("sign takes KEY and at least one FILE"),
        },
        Some("verify") => {
            let mut keys = Vec::new();
            let mut files = Vec::new();
            let mut it = args[1..].iter();
            while let Some(a) = it.next() {
                if a == "--key" || a == "-k" {
                    match it.next() {
                        Some(k) => keys.push(k.clone()),
                        None => return usage_error("--key needs a value"),
                    }
                } else if let Some(k) = a.strip_prefix("--key=") {
                    keys.push(k.to_owned());
                } else {
                    files.push(PathBuf::from(a));
                }
            }
            if files.is_empty() {
                return usage_error("verify takes at least one FILE");
            }
            let policy = if keys.is_empty() {
                match config_keys() {
                    Ok(p) => SignaturePolicy {
                        require: !p.trusted.is_empty(),
                        trusted: p.trusted,
                    },
                    Err(e) => {
                        eprintln!("BasicAgentCtl plugin verify: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                let entries: Vec<String> = keys
                    .iter()
                    .map(|k| {
                        // A relative path to a .pub file is fine here.
                        let p = Path::new(k);
                        if !k.starts_with('/') && p.is_file() {
                            std::fs::canonicalize(p)
                                .map(|p| p.display().to_string())
                                .unwrap_or_else(|_| k.clone())
                        } else {
                            k.clone()
                        }
                    })
                    .collect();
                match SignaturePolicy::from_entries(&entries, true) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("BasicAgentCtl plugin verify: {e}");
                        return ExitCode::from(2);
                    }
                }
            };
            verify(&policy, &files)
        }
        Some("-h" | "--help") | None => {
            out!("{USAGE}");
            if args.is_empty() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Some(other) => usage_error(&format!("unknown subcommand {other:?}")),
    }
}

fn keygen(out: &Path) -> ExitCode {
    let key = match SecretKey::generate() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("BasicAgentCtl plugin keygen: {e}");
            return ExitCode::from(1);
        }
    };
    let mut pub_path = out.as_os_str().to_owned();
    pub_path.push(".pub");
    let pub_path = PathBuf::from(pub_path);
    let write = |path: &Path, mode: u32, text: &str| -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    if let Err(e) = write(out, 0o600, &key.to_file_text()) {
        eprintln!("BasicAgentCtl plugin keygen: {}: {e}", out.display());
        return ExitCode::from(1);
    }
    if let Err(e) = write(&pub_path, 0o644, &key.public().to_line()) {
        eprintln!("BasicAgentCtl plugin keygen: {}: {e}", pub_path.display());
        return ExitCode::from(1);
    }
    out!(
        "private key {} (0600), public key {}: {}",
        out.display(),
        pub_path.display(),
        key.public()
    );
    ExitCode::SUCCESS
}

fn read_bytes(file: &Path) -> Result<FileBytes, String> {
    let mut f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    FileBytes::read(&mut f, size).map_err(|e| format!("{}: {e}", file.display()))
}

fn sign(key: &Path, files: &[String]) -> ExitCode {
    let key = match SecretKey::load(key) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("BasicAgentCtl plugin sign: {e}");
            return ExitCode::from(1);
        }
    };
    let mut failed = false;
    for file in files.iter().map(Path::new) {
        let result = read_bytes(file).and_then(|bytes| {
            let line = key.sign_file(bytes.file());
            let sig = signature::sig_path(file);
            let mut tmp = sig.as_os_str().to_owned();
            tmp.push(".new");
            let tmp = PathBuf::from(tmp);
            let _ = std::fs::remove_file(&tmp);
            let written = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&tmp)
                .and_then(|mut f| {
                    f.write_all(line.as_bytes())?;
                    f.sync_all()
                })
                // Renamed into place: a daemon never reads half a .sig.
                .and_then(|()| std::fs::rename(&tmp, &sig));
            written
                .map(|()| sig)
                .map_err(|e| format!("{}: {e}", tmp.display()))
        });
        match result {
            Ok(sig) => out!(
                "signed {} -> {} (key {})",
                file.display(),
                sig.display(),
                key.public()
            ),
            Err(e) => {
                failed = true;
                eprintln!("BasicAgentCtl plugin sign: {e}");
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn verify(policy: &SignaturePolicy, files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        let outcome = read_bytes(file).and_then(|bytes| {
            let sig_path = signature::sig_path(file);
            let sig = match std::fs::read(&sig_path) {
                Ok(s) => s,
                Err(e) => return Err(format!("not signed: {}: {e}", sig_path.display())),
            };
            policy
                .check(file, &bytes, Some(&sig))
                .map_err(|e| e.to_string())
        });
        match outcome {
            Ok(Verdict::Trusted(k)) => out!("{}: OK, signed by trusted key {k}", file.display()),
            Ok(Verdict::UnknownKey(k)) => out!(
                "{}: signature intact, by key {k} (not checked against any trusted key: give --key)",
                file.display()
            ),
            Ok(Verdict::Unsigned) => {
                failed = true;
                out!("{}: REFUSED: not signed", file.display());
            }
            Err(e) => {
                failed = true;
                out!("{}: REFUSED: {e}", file.display());
            }
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The daemon's signature settings from its config file (`[agent]
/// trusted_keys` and `require_signature`), the other keys ignored: so the
/// ctl tool refuses what the daemon refuses. `None` and a missing default
/// file: no requirement.
pub fn policy_from_config(explicit: Option<&Path>) -> Result<SignaturePolicy, String> {
    const DEFAULT: &str = "/etc/basicagent/agent.toml";
    let (path, must_exist) = match explicit {
        Some(p) => (p.to_owned(), true),
        None => (PathBuf::from(DEFAULT), false),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(SignaturePolicy::default())
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let value: toml::Value =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let agent = value.get("agent");
    let require = match agent.and_then(|a| a.get("require_signature")) {
        None => false,
        Some(v) => v.as_bool().ok_or_else(|| {
            format!(
                "{}: agent.require_signature must be true or false",
                path.display()
            )
        })?,
    };
    let keys: Vec<String> = match agent.and_then(|a| a.get("trusted_keys")) {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|k| k.as_str().map(str::to_owned)).collect())
            .ok_or_else(|| {
                format!(
                    "{}: agent.trusted_keys must be a list of strings",
                    path.display()
                )
            })?,
    };
    SignaturePolicy::from_entries(&keys, require).map_err(|e| format!("{}: {e}", path.display()))
}
