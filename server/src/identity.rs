//! Host identity under mutual TLS: the host id a client certificate is issued for, and its fingerprint.
//!
//! The id is the first SAN URI of the form `urn:uuid:ID` (ID taken
//! verbatim after the prefix, compared case-sensitively with `init`'s
//! `hostname`); a certificate without one falls back to its subject CN.
//! The fingerprint (SHA-256 of the DER) tells two certificates for the
//! same id apart, so a second session with another certificate never
//! replaces the first.

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

const URN_UUID: &str = "urn:uuid:";

/// What the server learned from a client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The host id the certificate is bound to (`None`: it names none).
    pub host: Option<String>,
    pub fingerprint: [u8; 32],
}

/// Reads the leaf certificate of a verified client chain.
pub fn peer_identity(leaf: &CertificateDer<'_>) -> PeerIdentity {
    let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
    let mut fingerprint = [0u8; 32];
    fingerprint.copy_from_slice(digest.as_ref());
    PeerIdentity {
        host: host_id(leaf.as_ref()),
        fingerprint,
    }
}

/// The host id in a DER certificate: SAN URI `urn:uuid:ID`, else CN.
pub fn host_id(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Some(id) = uri.strip_prefix(URN_UUID) {
                    if !id.is_empty() {
                        return Some(id.to_owned());
                    }
                }
            }
        }
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .map(str::to_owned);
    cn
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_no_identity() {
        assert_eq!(host_id(b"not a certificate"), None);
    }
}
