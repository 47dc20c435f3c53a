//! Signed plugins in the loader, against a real C plugin whose ELF
//! constructor writes a marker file: with `require_signature`, an
//! unsigned file, a file changed after signing, and a file signed by an
//! untrusted key are refused with a one-line reason and never run; a good
//! signature loads, from a sealed memfd. Without the requirement a bad
//! `.sig` is still refused.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use basicagent_abi::signature::{SecretKey, SigError, SignaturePolicy, Verdict};
use basicagent_abi::{retcode, HostSettings, LoadError, PluginRegistry};
use basicagent_testsupport::chmod;
use basicagent_testsupport::cplugin::compile_marking;

const CTOR_PLUGIN: &str = r#"
#include <stdio.h>
#include "basicagent_plugin.h"
__attribute__((constructor)) static void write_marker(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("constructor ran\n", f); fclose(f); }
}
static const char tag[] = "TAG-to-flip-after-signing";
static const ba_host_api *host;
static ba_status fx_init(const ba_host_api *api) { host = api; return BA_STATUS_OK; }
static void fx_call(ba_call_id call, const char *req, size_t len) {
    (void)req; (void)len;
    char data[64];
    int n = snprintf(data, sizeof data, "{\"tag\":\"%s\"}", tag);
    host->complete(call, BA_RETCODE_SUCCESS, NULL, 0, data, (size_t)n);
}
static const char *const fx_methods[] = {"getinfo.signed", NULL};
static const ba_plugin_descriptor fx = {
    BA_ABI_VERSION, sizeof(ba_plugin_descriptor), "getinfo_signed", "1.0.0",
    "signature fixture", fx_methods, "no arguments", fx_init, fx_call, NULL, NULL,
};
const ba_plugin_descriptor *basicagent_plugin_v1(void) { return &fx; }
"#;

/// A root-or-me 0755 plugin directory with the fixture compiled into a
/// staging copy, and the marker path.
struct Scratch {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    built: Vec<u8>,
    marker: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        chmod(tmp.path(), 0o755);
        let dir = tmp.path().join("plugins");
        std::fs::create_dir(&dir).unwrap();
        chmod(&dir, 0o755);
        let marker = tmp.path().join("constructor-ran");
        let out = tmp.path().join("built.so");
        compile_marking(CTOR_PLUGIN, &out, &marker);
        let built = std::fs::read(&out).unwrap();
        Scratch {
            _tmp: tmp,
            dir,
            built,
            marker,
        }
    }

    fn so(&self) -> PathBuf {
        self.dir.join("libgetinfo_signed.so")
    }

    /// Installs `bytes` as the plugin, by rename (a new inode), 0644.
    fn install(&self, bytes: &[u8]) {
        let tmp = self.dir.join(".new");
        std::fs::write(&tmp, bytes).unwrap();
        chmod(&tmp, 0o644);
        std::fs::rename(&tmp, self.so()).unwrap();
    }

    /// Writes the plugin's `.sig` by `key` over `bytes`, by rename.
    fn sign(&self, key: &SecretKey, bytes: &[u8]) {
        let tmp = self.dir.join(".sig.new");
        std::fs::write(&tmp, key.sign_file(bytes)).unwrap();
        chmod(&tmp, 0o644);
        std::fs::rename(&tmp, basicagent_abi::signature::sig_path(&self.so())).unwrap();
    }

    fn ran(&self) -> bool {
        self.marker.exists()
    }
}

fn flipped(bytes: &[u8]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let at = b
        .windows(3)
        .position(|w| w == b"TAG")
        .expect("the tag is in .rodata");
    b[at] = b'X';
    b
}

fn call_tag(reg: &PluginRegistry) -> String {
    let plugin = reg.get("getinfo.signed").expect("loads");
    let (tx, rx) = mpsc::channel();
    plugin.call(
        b"{}",
        Box::new(move |c| {
            tx.send(c).unwrap();
        }),
    );
    let c = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(c.retcode, retcode::SUCCESS);
    c.data.unwrap()
}

fn refusal(reg: &PluginRegistry) -> LoadError {
    match reg.get("getinfo.signed") {
        Ok(_) => panic!("loaded"),
        Err(e) => e,
    }
}

#[test]
fn with_require_signature_only_a_good_signature_by_a_trusted_key_loads_and_refused_files_never_run()
{
    let s = Scratch::new();
    let trusted = SecretKey::generate().unwrap();
    let stranger = SecretKey::generate().unwrap();
    let policy = SignaturePolicy {
        require: true,
        trusted: vec![trusted.public()],
    };
    let reg = PluginRegistry::with_signatures(&s.dir, HostSettings::default(), policy);

    // Unsigned.
    s.install(&s.built);
    let e = refusal(&reg);
    assert!(
        matches!(
            &e,
            LoadError::Signature {
                source: SigError::Unsigned(_),
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.retcode(), retcode::PLUGIN_FAILURE);
    assert_eq!(
        e.message(),
        format!(
            "Plugin failure: {}: not signed (no {}.sig) and require_signature is on",
            s.so().display(),
            s.so().display()
        )
    );
    // Remembered for this version: not read again, same answer.
    let again = refusal(&reg);
    assert!(
        matches!(again, LoadError::Refused { retcode: 3025, .. }),
        "{again}"
    );
    assert!(!s.ran(), "an unsigned file never runs");

    // Signed, then one byte changed (a valid ELF file all the same).
    s.sign(&trusted, &s.built);
    s.install(&flipped(&s.built));
    let e = refusal(&reg);
    assert!(
        matches!(
            &e,
            LoadError::Signature {
                source: SigError::Mismatch { .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("does not match the file"), "{e}");
    assert!(!s.ran(), "a file changed after signing never runs");

    // Intact, signed by a key not trusted.
    s.install(&s.built);
    s.sign(&stranger, &s.built);
    let e = refusal(&reg);
    assert!(
        matches!(
            &e,
            LoadError::Signature {
                source: SigError::UntrustedKey { .. },
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "{}: signed by key {}, which is not in trusted_keys",
            s.so().display(),
            stranger.public()
        )
    );
    assert!(!s.ran(), "a file signed by an untrusted key never runs");

    // Signing it with the trusted key is enough: the .sig is part of the
    // version, so the next call tries again and loads it.
    s.sign(&trusted, &s.built);
    assert_eq!(call_tag(&reg), r#"{"tag":"TAG-to-flip-after-signing"}"#);
    assert!(s.ran());
    let plugin = reg.get("getinfo.signed").unwrap();
    assert_eq!(plugin.signature(), Verdict::Trusted(trusted.public()));
    // What runs is the sealed copy of the verified bytes, not the file.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(maps.contains("/memfd:basicagent-plugin"), "{maps}");
}

#[test]
fn without_the_requirement_a_bad_sig_is_refused_and_an_unknown_key_only_proves_integrity() {
    let s = Scratch::new();
    let key = SecretKey::generate().unwrap();
    let reg = PluginRegistry::new(&s.dir, HostSettings::default());
    s.install(&flipped(&s.built));
    s.sign(&key, &s.built);
    let e = refusal(&reg);
    assert!(
        matches!(
            &e,
            LoadError::Signature {
                source: SigError::Mismatch { .. },
                ..
            }
        ),
        "{e}"
    );
    std::fs::write(
        basicagent_abi::signature::sig_path(&s.so()),
        "ed25519 garbage\n",
    )
    .unwrap();
    let e = refusal(&reg);
    assert!(
        matches!(
            &e,
            LoadError::Signature {
                source: SigError::Malformed { .. },
                ..
            }
        ),
        "{e}"
    );
    assert!(!s.ran());
    s.sign(&key, &flipped(&s.built));
    call_tag(&reg);
    assert_eq!(
        reg.get("getinfo.signed").unwrap().signature(),
        Verdict::UnknownKey(key.public())
    );
}

#[test]
fn a_sig_file_others_can_write_is_refused_and_so_is_a_loose_key_file() {
    let s = Scratch::new();
    let key = SecretKey::generate().unwrap();
    s.install(&s.built);
    s.sign(&key, &s.built);
    let sig = basicagent_abi::signature::sig_path(&s.so());
    chmod(&sig, 0o666);
    let reg = PluginRegistry::new(&s.dir, HostSettings::default());
    let e = refusal(&reg);
    assert!(
        matches!(
            &e,
            LoadError::Signature {
                source: SigError::SigFileUntrusted(_),
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("writable"), "{e}");
    assert!(!s.ran());

    let pubfile = s.dir.join("k.pub");
    std::fs::write(&pubfile, key.public().to_line()).unwrap();
    chmod(&pubfile, 0o666);
    let entry = pubfile.display().to_string();
    let e = SignaturePolicy::from_entries(std::slice::from_ref(&entry), true).unwrap_err();
    assert!(e.to_string().contains("writable"), "{e}");
    chmod(&pubfile, 0o644);
    let p = SignaturePolicy::from_entries(&[entry], true).unwrap();
    assert_eq!(p.trusted, vec![key.public()]);
}
