//! The agent's TLS client configuration: trust anchors from the configured
//! CA bundle, an optional client certificate (mutual TLS), the ring
//! provider, TLS 1.2 and 1.3. Certificate errors are typed and name the file.
//!
//! The CA bundle decides whom the agent obeys, so it is opened by the
//! file-trust rule ([`basicagent_fstrust`], symbolic links followed and
//! their directories checked): a `server.ca` that others could write, or
//! that another user owns, is a start-up error naming the file and the
//! rule. The client key is read the same way, but a key readable (or
//! writable) by others is only a warning: it is still used.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use basicagent_fstrust::{Follow, TrustError, Violation};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Why the TLS configuration cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read PEM: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{path}: no certificate in the file")]
    NoCertificate { path: PathBuf },
    #[error("{path}: certificate not usable as a trust anchor: {reason}")]
    BadAnchor { path: PathBuf, reason: String },
    #[error("{cert} / {key}: client certificate and key not usable: {reason}")]
    ClientAuth {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("TLS setup failed: {0}")]
    Rustls(String),
    /// `server.ca` breaks the file-trust rule: a local user could add a
    /// trust anchor.
    #[error("refusing server.ca {0}")]
    UntrustedCa(TrustError),
}

/// A TLS client configuration and what was found loose on the way (one
/// line each, for the log; the configuration is usable).
#[derive(Debug, Clone)]
pub struct TlsSetup {
    pub config: Arc<ClientConfig>,
    pub warnings: Vec<String>,
}

/// Most PEM bytes read from one file (a CA bundle of every public root is
/// about 220 KiB).
const MAX_PEM: u64 = 16 * 1024 * 1024;

fn read_pem(path: &Path, mut file: std::fs::File) -> Result<Vec<u8>, TlsError> {
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_PEM)
        .read_to_end(&mut bytes)
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(bytes)
}

fn parse_certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file = std::fs::File::open(path).map_err(|e| TlsError::Pem {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    parse_certs(path, &read_pem(path, file)?)
}

/// The CA bundle, opened by the trust rule.
fn ca_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let opened =
        basicagent_fstrust::open_file(path, Follow::Yes).map_err(|e| match e.violation {
            Violation::Io(source) => TlsError::Pem {
                path: e.at,
                reason: source.to_string(),
            },
            _ => TlsError::UntrustedCa(e),
        })?;
    parse_certs(path, &read_pem(path, opened.file)?)
}

/// The client key's bytes; loose permissions give warnings, not errors.
fn key_pem(path: &Path, warnings: &mut Vec<String>) -> Result<Vec<u8>, TlsError> {
    let file = match basicagent_fstrust::open_file(path, Follow::Yes) {
        Ok(opened) => {
            let mode = opened.meta.mode() & 0o7777;
            if mode & 0o044 != 0 {
                warnings.push(format!(
                    "server.key {}: readable by group or others (mode {mode:04o}); \
                     used anyway, make it 0600",
                    path.display()
                ));
            }
            opened.file
        }
        Err(e) => match e.violation {
            Violation::Io(source) => {
                return Err(TlsError::Pem {
                    path: e.at,
                    reason: source.to_string(),
                })
            }
            _ => {
                warnings.push(format!("server.key {e}; used anyway"));
                std::fs::File::open(path).map_err(|e| TlsError::Pem {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?
            }
        },
    };
    read_pem(path, file)
}

/// Builds the client configuration and logs its warnings (see
/// [`client_setup`]).
pub fn client_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let setup = client_setup(ca, client)?;
    for w in &setup.warnings {
        log::warn!("{w}");
    }
    Ok(setup.config)
}

/// Builds the client configuration. The server name is checked per
/// connection (`rustls::ClientConnection::new(config, name)`), whatever
/// address the connection went to. The warnings are for the caller to
/// log (at start-up, before the logger exists).
pub fn client_setup(ca: &Path, client: Option<(&Path, &Path)>) -> Result<TlsSetup, TlsError> {
    let mut warnings = Vec::new();
    let mut roots = RootCertStore::empty();
    for cert in ca_certs(ca)? {
        roots.add(cert).map_err(|e| TlsError::BadAnchor {
            path: ca.to_owned(),
            reason: e.to_string(),
        })?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = certs(cert)?;
            let pem = key_pem(key, &mut warnings)?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
                path: key.to_owned(),
                reason: e.to_string(),
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| TlsError::ClientAuth {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                    reason: e.to_string(),
                })?
        }
    };
    Ok(TlsSetup {
        config: Arc::new(config),
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_good_ca_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem()).unwrap();
        client_config(&ca, None).unwrap();
    }

    fn chmod(p: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn a_writable_ca_is_refused_naming_the_file_and_the_rule() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem()).unwrap();
        chmod(&ca, 0o666);
        let e = client_config(&ca, None).unwrap_err();
        assert!(matches!(e, TlsError::UntrustedCa(_)), "{e}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("refusing server.ca {}: ", ca.display())),
            "{text}"
        );
        assert!(text.contains("world-writable (mode 0666)"), "{text}");
        // Its directory open to others: refused too, naming the directory.
        chmod(&ca, 0o644);
        let sub = dir.path().join("etc");
        std::fs::create_dir(&sub).unwrap();
        let inner = sub.join("ca.pem");
        std::fs::write(&inner, ca_pem()).unwrap();
        chmod(&inner, 0o644);
        chmod(&sub, 0o777);
        let e = client_config(&inner, None).unwrap_err().to_string();
        assert!(
            e.contains(&format!("directory {}: ", sub.display())) && e.contains("(mode 0777)"),
            "{e}"
        );
        // Fixed: accepted; a symbolic link to it (as /etc/ssl setups do) too.
        chmod(&sub, 0o755);
        client_config(&inner, None).unwrap();
        let link = dir.path().join("link.pem");
        std::os::unix::fs::symlink(&inner, &link).unwrap();
        client_config(&link, None).unwrap();
    }

    #[test]
    fn a_ca_owned_by_another_user_is_refused() {
        if !is_root() {
            eprintln!("skipped: needs root to chown");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem()).unwrap();
        std::os::unix::fs::chown(&ca, Some(65534), Some(65534)).unwrap();
        let e = client_config(&ca, None).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "refusing server.ca {}: owned by uid 65534, not by root",
                ca.display()
            )
        );
    }

    #[test]
    fn a_readable_client_key_is_a_warning_and_still_used() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem()).unwrap();
        chmod(&ca, 0o644);
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["agent".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_path = dir.path().join("agent.pem");
        let key_path = dir.path().join("agent.key");
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        chmod(&key_path, 0o600);
        let setup = client_setup(&ca, Some((&cert_path, &key_path))).unwrap();
        assert!(setup.warnings.is_empty(), "{:?}", setup.warnings);
        chmod(&key_path, 0o644);
        let setup = client_setup(&ca, Some((&cert_path, &key_path))).unwrap();
        assert_eq!(
            setup.warnings,
            vec![format!(
                "server.key {}: readable by group or others (mode 0644); used anyway, make it 0600",
                key_path.display()
            )]
        );
        // Writable by others too: still a warning (naming the rule), still used.
        chmod(&key_path, 0o666);
        let setup = client_setup(&ca, Some((&cert_path, &key_path))).unwrap();
        assert_eq!(setup.warnings.len(), 1, "{:?}", setup.warnings);
        assert!(
            setup.warnings[0].contains("world-writable (mode 0666); used anyway"),
            "{:?}",
            setup.warnings
        );
    }

    #[test]
    fn bad_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = client_config(&missing, None).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        assert!(matches!(
            client_config(&empty, None).unwrap_err(),
            TlsError::NoCertificate { .. }
        ));
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(client_config(&garbage, None).is_err());
        // A client certificate without a matching key.
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, ca_pem()).unwrap();
        let other_key = dir.path().join("other.key");
        std::fs::write(
            &other_key,
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
        .unwrap();
        let e = client_config(&ca, Some((&ca, &other_key))).unwrap_err();
        assert!(matches!(e, TlsError::ClientAuth { .. }), "{e}");
        let e = client_config(&ca, Some((&ca, &missing))).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }
}
