//! Per-agent client certificates, for a server that binds each host id to its certificate: `DIR/agent-ID.pem` and `DIR/agent-ID.key`, the files `scripts/make-certs.sh --agent DIR ID...` writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};

/// Why an agent's certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{cert} / {key}: not a usable certificate and key: {reason}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// Always offers the one certificate.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesClientCert for Fixed {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The paths of agent `host_id`'s certificate and key in `dir`.
pub fn paths(dir: &Path, host_id: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("agent-{host_id}.pem")),
        dir.join(format!("agent-{host_id}.key")),
    )
}

/// `base` (trust anchors, versions, no resumption) with agent `host_id`'s
/// own client certificate from `dir`.
pub fn agent_config(
    base: &ClientConfig,
    dir: &Path,
    host_id: &str,
) -> Result<Arc<ClientConfig>, CertError> {
    let (cert, key) = paths(dir, host_id);
    let file = |path: &Path, reason: String| CertError::File {
        path: path.to_owned(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .map_err(|e| file(&cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file(&cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file(&cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(&key).map_err(|e| file(&key, e.to_string()))?;
    let provider = base.crypto_provider().clone();
    let certified =
        CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| CertError::Pair {
            cert: cert.clone(),
            key: key.clone(),
            reason: e.to_string(),
        })?;
    let mut config = base.clone();
    config.client_auth_cert_resolver = Arc::new(Fixed(Arc::new(certified)));
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    }

    #[test]
    fn loads_a_pair_and_names_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let id = "0b7f5d1c-445e-49c0-8612-111b741b920f";
        let e = agent_config(&base(), dir.path(), id).unwrap_err();
        assert!(e.to_string().contains(&format!("agent-{id}.pem")), "{e}");

        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = paths(dir.path(), id);
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, "not a key").unwrap();
        let e = agent_config(&base(), dir.path(), id).unwrap_err();
        assert!(e.to_string().contains(&format!("agent-{id}.key")), "{e}");
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&k, other.serialize_pem()).unwrap();
        assert!(matches!(
            agent_config(&base(), dir.path(), id).unwrap_err(),
            CertError::Pair { .. }
        ));
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let config = agent_config(&base(), dir.path(), id).unwrap();
        assert!(config.client_auth_cert_resolver.has_certs());
    }
}
