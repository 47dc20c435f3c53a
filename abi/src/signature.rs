//! Detached Ed25519 signatures of plugin files (`libX.so.sig`), the keys
//! that make them, and the policy the loader applies.
//!
//! Formats (one line each, ASCII, base64 with padding, a trailing newline
//! optional):
//!
//! * signature `libX.so.sig`: `ed25519 PUBLIC_KEY SIGNATURE` — the public
//!   key (32 bytes) is the key id, so `trusted_keys` may hold several and
//!   a file signed by an unknown key is still checked for integrity;
//! * public key `KEY.pub`: `ed25519 PUBLIC_KEY [comment]`;
//! * private key `KEY`: `basicagent-ed25519-private SEED` (mode 0600).
//!
//! The signed message is [`CONTEXT`] followed by every byte of the file,
//! so a plugin key's signature means nothing to any other protocol.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use basicagent_fstrust::{Follow, TrustError};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

/// Prefixed to the file's bytes before signing (domain separation).
pub const CONTEXT: &[u8] = b"BasicAgent plugin signature v1\0";
/// The signature file is the plugin's path with this appended.
pub const SIG_SUFFIX: &str = ".sig";
/// Largest plugin file that is read whole to be verified.
pub const MAX_SIGNED_FILE: u64 = 512 << 20;
/// Largest signature or key file read.
const MAX_SMALL_FILE: u64 = 4096;
const SIG_TAG: &str = "ed25519";
const SECRET_TAG: &str = "basicagent-ed25519-private";

/// The signature file of `plugin`: `PATH.sig`.
pub fn sig_path(plugin: &Path) -> PathBuf {
    let mut p = plugin.as_os_str().to_owned();
    p.push(SIG_SUFFIX);
    PathBuf::from(p)
}

/// Why a key or signature file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {reason}")]
    Format { path: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Untrusted(TrustError),
    #[error("{path}: private key readable by group or others (mode {mode:04o}); chmod 0600 it")]
    LooseSecret { path: PathBuf, mode: u32 },
    #[error("no randomness for a new key: {0}")]
    Random(std::io::Error),
}

/// Why the loader refuses a plugin file by its signature. Every one is a
/// `3025` and names the file.
#[derive(Debug, thiserror::Error)]
pub enum SigError {
    #[error("not signed (no {}) and require_signature is on", .0.display())]
    Unsigned(PathBuf),
    #[error("bad signature file {}: {reason}", .path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("signature {} does not match the file (signed by key {key})", .path.display())]
    Mismatch { path: PathBuf, key: PublicKey },
    #[error("signed by key {key}, which is not in trusted_keys")]
    UntrustedKey { key: PublicKey },
    #[error("signature file {0}")]
    SigFileUntrusted(TrustError),
    #[error("signature file {}: cannot read: {source}", .path.display())]
    SigFileIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An Ed25519 public key; displayed as base64, which is also its key id.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&B64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

fn decode_fixed<const N: usize>(text: &str, what: &str) -> Result<[u8; N], String> {
    let bytes = B64
        .decode(text)
        .map_err(|e| format!("{what} is not base64: {e}"))?;
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| format!("{what} has {} bytes, expected {N}", bytes.len()))
}

impl PublicKey {
    /// Parses `ed25519 BASE64 [comment]` (a `.pub` file's line) or a bare
    /// `BASE64`.
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let mut words = text.split_whitespace();
        let first = words.next().ok_or("empty public key")?;
        let b64 = if first == SIG_TAG {
            words.next().ok_or("no key after \"ed25519\"")?
        } else {
            first
        };
        let bytes = decode_fixed::<32>(b64, "public key")?;
        VerifyingKey::from_bytes(&bytes).map_err(|_| "not an Ed25519 public key".to_owned())?;
        Ok(PublicKey(bytes))
    }

    /// The `.pub` file's line.
    pub fn to_line(&self) -> String {
        format!("{SIG_TAG} {self}\n")
    }

    fn verifying(&self) -> Option<VerifyingKey> {
        VerifyingKey::from_bytes(&self.0).ok()
    }
}

/// A private signing key.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A new key from the kernel's random generator.
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        let mut filled = 0;
        while filled < seed.len() {
            let rest = &mut seed[filled..];
            // SAFETY: getrandom writes at most `rest.len()` bytes into it.
            let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(KeyError::Random(e));
            }
            filled += n as usize;
        }
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// The private key file's text.
    pub fn to_file_text(&self) -> String {
        format!("{SECRET_TAG} {}\n", B64.encode(self.0.to_bytes()))
    }

    /// Parses the private key file's text.
    pub fn parse(text: &str) -> Result<SecretKey, String> {
        let mut words = text.split_whitespace();
        if words.next() != Some(SECRET_TAG) {
            return Err(format!(
                "not a BasicAgent private key (expected \"{SECRET_TAG} BASE64\")"
            ));
        }
        let seed = decode_fixed::<32>(words.next().ok_or("no key")?, "private key")?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// Reads a private key file, refusing one readable by group or others.
    pub fn load(path: &Path) -> Result<SecretKey, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let mode = file.metadata().map_err(io)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::LooseSecret {
                path: path.to_owned(),
                mode: mode & 0o7777,
            });
        }
        let text = read_small(file).map_err(io)?;
        SecretKey::parse(&text).map_err(|reason| KeyError::Format {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Its public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// The `.sig` file's line for a file with these bytes.
    pub fn sign_file(&self, file: &[u8]) -> String {
        let mut message = Vec::with_capacity(CONTEXT.len() + file.len());
        message.extend_from_slice(CONTEXT);
        message.extend_from_slice(file);
        let sig = self.0.sign(&message);
        format!(
            "{SIG_TAG} {} {}\n",
            self.public(),
            B64.encode(sig.to_bytes())
        )
    }
}

/// A parsed `.sig` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub key: PublicKey,
    sig: [u8; 64],
}

impl Signature {
    /// Parses `ed25519 PUBLIC_KEY SIGNATURE`.
    pub fn parse(text: &[u8]) -> Result<Signature, String> {
        let text = std::str::from_utf8(text).map_err(|_| "not UTF-8 text".to_owned())?;
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.as_slice() {
            [tag, key, sig] if *tag == SIG_TAG => Ok(Signature {
                key: PublicKey::parse(key)?,
                sig: decode_fixed::<64>(sig, "signature")?,
            }),
            [tag, ..] if *tag != SIG_TAG => {
                Err(format!("unknown algorithm {tag:?} (expected ed25519)"))
            }
            _ => Err("expected one line \"ed25519 PUBLIC_KEY SIGNATURE\"".to_owned()),
        }
    }

    /// Whether this signature is the key's over `message`
    /// ([`FileBytes::message`]); strict verification (no weak keys, no
    /// malleable signatures).
    pub fn verifies(&self, message: &[u8]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(&self.sig);
        self.key
            .verifying()
            .is_some_and(|k| k.verify_strict(message, &sig).is_ok())
    }
}

/// A plugin file read whole, behind [`CONTEXT`]: the bytes verified are
/// the bytes then loaded.
pub struct FileBytes {
    buf: Vec<u8>,
}

impl FileBytes {
    /// Reads everything from `reader` (at most [`MAX_SIGNED_FILE`] bytes;
    /// `size_hint` is the file's `fstat` size).
    pub fn read(reader: &mut impl Read, size_hint: u64) -> std::io::Result<FileBytes> {
        let too_large = |size: u64| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{size} bytes: too large to verify (at most {MAX_SIGNED_FILE})"),
            )
        };
        if size_hint > MAX_SIGNED_FILE {
            return Err(too_large(size_hint));
        }
        let mut buf = Vec::with_capacity(CONTEXT.len() + size_hint as usize);
        buf.extend_from_slice(CONTEXT);
        reader.take(MAX_SIGNED_FILE + 1).read_to_end(&mut buf)?;
        let size = (buf.len() - CONTEXT.len()) as u64;
        if size > MAX_SIGNED_FILE {
            return Err(too_large(size));
        }
        Ok(FileBytes { buf })
    }

    /// The file's bytes.
    pub fn file(&self) -> &[u8] {
        &self.buf[CONTEXT.len()..]
    }

    /// What is signed: [`CONTEXT`] and the file's bytes.
    pub fn message(&self) -> &[u8] {
        &self.buf
    }
}

/// What the loader requires of signatures (`[agent] require_signature`,
/// `trusted_keys`). The default requires none and trusts no key; a `.sig`
/// that exists is checked under every policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignaturePolicy {
    /// Refuse a plugin without a `.sig`, or signed by a key not trusted.
    pub require: bool,
    /// The keys whose signatures are trusted.
    pub trusted: Vec<PublicKey>,
}

/// How a loaded file stands with respect to signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No `.sig` (allowed: `require_signature` is off).
    Unsigned,
    /// Signed by a trusted key.
    Trusted(PublicKey),
    /// A good signature by a key not in `trusted_keys` (allowed only with
    /// `require_signature` off: the file is intact, its origin unproven).
    UnknownKey(PublicKey),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Unsigned => f.write_str("unsigned"),
            Verdict::Trusted(k) => write!(f, "signed by trusted key {k}"),
            Verdict::UnknownKey(k) => write!(
                f,
                "signed by key {k}, not in trusted_keys (origin not checked)"
            ),
        }
    }
}

impl SignaturePolicy {
    /// Builds the policy from config entries: each an absolute path to a
    /// `.pub` file (opened by the file-trust rule: a key anyone could
    /// rewrite would trust anyone), or a key inline (`ed25519 BASE64` or
    /// `BASE64`).
    pub fn from_entries(entries: &[String], require: bool) -> Result<SignaturePolicy, KeyError> {
        let mut trusted = Vec::new();
        for entry in entries {
            let entry = entry.trim();
            let (text, origin) = if entry.starts_with('/') {
                let opened = basicagent_fstrust::open_file(Path::new(entry), Follow::No)
                    .map_err(KeyError::Untrusted)?;
                let text = read_small(opened.file).map_err(|source| KeyError::Io {
                    path: PathBuf::from(entry),
                    source,
                })?;
                (text, entry.to_owned())
            } else {
                (entry.to_owned(), "trusted_keys entry".to_owned())
            };
            let line = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .unwrap_or("");
            let key = PublicKey::parse(line).map_err(|reason| KeyError::Format {
                path: origin,
                reason,
            })?;
            if !trusted.contains(&key) {
                trusted.push(key);
            }
        }
        Ok(SignaturePolicy { require, trusted })
    }

    /// Checks a file's bytes against its `.sig` text (None: no `.sig`).
    /// Any `.sig` must verify; with `require`, one must exist and be by a
    /// trusted key.
    pub fn check(
        &self,
        plugin: &Path,
        bytes: &FileBytes,
        sig_text: Option<&[u8]>,
    ) -> Result<Verdict, SigError> {
        let Some(text) = sig_text else {
            return if self.require {
                Err(SigError::Unsigned(sig_path(plugin)))
            } else {
                Ok(Verdict::Unsigned)
            };
        };
        let sig = Signature::parse(text).map_err(|reason| SigError::Malformed {
            path: sig_path(plugin),
            reason,
        })?;
        if !sig.verifies(bytes.message()) {
            return Err(SigError::Mismatch {
                path: sig_path(plugin),
                key: sig.key,
            });
        }
        if self.trusted.contains(&sig.key) {
            Ok(Verdict::Trusted(sig.key))
        } else if self.require {
            Err(SigError::UntrustedKey { key: sig.key })
        } else {
            Ok(Verdict::UnknownKey(sig.key))
        }
    }
}

/// Reads a small text file whole (at most 4 KiB).
fn read_small(file: std::fs::File) -> std::io::Result<String> {
    let mut text = String::new();
    file.take(MAX_SMALL_FILE).read_to_string(&mut text)?;
    Ok(text)
}

/// Reads the `.sig` beside `plugin` by the file-trust rule: `None` if
/// there is none.
pub fn read_sig(plugin: &Path) -> Result<Option<Vec<u8>>, SigError> {
    let path = sig_path(plugin);
    let opened = match basicagent_fstrust::open_file(&path, Follow::No) {
        Ok(o) => o,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(SigError::SigFileUntrusted(e)),
    };
    let mut bytes = Vec::new();
    opened
        .file
        .take(MAX_SMALL_FILE)
        .read_to_end(&mut bytes)
        .map_err(|source| SigError::SigFileIo { path, source })?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(file: &[u8]) -> FileBytes {
        FileBytes::read(&mut &file[..], file.len() as u64).unwrap()
    }

    #[test]
    fn sign_and_verify_round_trip_and_tamper() {
        let key = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let file = b"\x7fELF pretend plugin";
        let sig = key.sign_file(file);
        assert!(sig.starts_with("ed25519 "), "{sig}");
        let p = Path::new("/x/libgetinfo_x.so");
        let trusting = SignaturePolicy {
            require: true,
            trusted: vec![key.public()],
        };
        assert_eq!(
            trusting
                .check(p, &bytes(file), Some(sig.as_bytes()))
                .unwrap(),
            Verdict::Trusted(key.public())
        );
        let mut flipped = file.to_vec();
        flipped[5] ^= 1;
        let e = trusting
            .check(p, &bytes(&flipped), Some(sig.as_bytes()))
            .unwrap_err();
        assert!(matches!(e, SigError::Mismatch { .. }), "{e}");
        let e = trusting.check(p, &bytes(file), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not signed (no /x/libgetinfo_x.so.sig) and require_signature is on"
        );
        let by_other = other.sign_file(file);
        let e = trusting
            .check(p, &bytes(file), Some(by_other.as_bytes()))
            .unwrap_err();
        assert!(matches!(e, SigError::UntrustedKey { .. }), "{e}");
        // Not required: unknown keys load (intact), bad ones never do.
        let lax = SignaturePolicy::default();
        assert_eq!(lax.check(p, &bytes(file), None).unwrap(), Verdict::Unsigned);
        assert_eq!(
            lax.check(p, &bytes(file), Some(by_other.as_bytes()))
                .unwrap(),
            Verdict::UnknownKey(other.public())
        );
        assert!(lax
            .check(p, &bytes(&flipped), Some(sig.as_bytes()))
            .is_err());
        assert!(lax.check(p, &bytes(file), Some(b"ed25519 junk")).is_err());
        // The context is part of the message: a bare signature of the file fails.
        let bare = key.0.sign(file);
        let bare_line = format!("ed25519 {} {}", key.public(), B64.encode(bare.to_bytes()));
        assert!(lax
            .check(p, &bytes(file), Some(bare_line.as_bytes()))
            .is_err());
    }

    #[test]
    fn key_texts_round_trip() {
        let key = SecretKey::generate().unwrap();
        let again = SecretKey::parse(&key.to_file_text()).unwrap();
        assert_eq!(again.public(), key.public());
        let line = key.public().to_line();
        assert_eq!(PublicKey::parse(&line).unwrap(), key.public());
        assert_eq!(
            PublicKey::parse(&key.public().to_string()).unwrap(),
            key.public()
        );
        let policy = SignaturePolicy::from_entries(&[line.clone(), line], true).unwrap();
        assert_eq!(policy.trusted, vec![key.public()]);
        assert!(PublicKey::parse("ed25519 AAAA").is_err());
        assert!(SecretKey::parse(&line_of_public(&key)).is_err());
        assert!(SignaturePolicy::from_entries(&["nonsense".into()], false).is_err());
    }

    fn line_of_public(key: &SecretKey) -> String {
        key.public().to_line()
    }
}
