//! Certificates for one test, made with rcgen and written as PEM files
//! into a temporary folder: a CA, server certificates good and bad, a
//! generic client certificate and one bound to a host id.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The server name every test server's certificate is issued for.
pub const NAME: &str = "config.cargo.com";

/// The host id `host-client.pem` is issued for (SAN `urn:uuid:...`).
pub const CLIENT_HOST_ID: &str = "5e1f0c6a-9d2b-4c3e-8f10-0123456789ab";

/// The files of a [`Pki`], each `STEM.pem` with its `STEM.key`:
/// - `ca.pem`: the CA every good certificate chains to;
/// - `other-ca.pem`: an unrelated CA (no key written);
/// - `server`: [`NAME`], server auth;
/// - `wrongname`: `other.example.com` from the CA;
/// - `otherca`: [`NAME`] from the other CA;
/// - `client`: a generic client certificate (CN `agent`, no host id);
/// - `host-client`: a client certificate bound to [`CLIENT_HOST_ID`].
pub struct Pki {
    pub dir: tempfile::TempDir,
    ca: Certificate,
    ca_key: KeyPair,
    pub ca_der: CertificateDer<'static>,
    pub client_chain: Vec<CertificateDer<'static>>,
    pub client_key_der: Vec<u8>,
}

/// A self-signed CA named `cn`.
pub fn make_ca(cn: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("a CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = p.self_signed(&key).expect("a self-signed CA");
    (cert, key)
}

/// A leaf certificate: `dns` as subject alternative names, `cn` as the
/// common name, `uri` as a SAN URI when given, for server or client auth.
fn leaf(
    issuer: &Certificate,
    issuer_key: &KeyPair,
    dns: &[&str],
    cn: &str,
    uri: Option<String>,
    usage: ExtendedKeyUsagePurpose,
) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("a leaf key");
    let names: Vec<String> = dns.iter().map(|s| (*s).to_owned()).collect();
    let mut p = CertificateParams::new(names).expect("leaf params");
    p.distinguished_name.push(DnType::CommonName, cn);
    if let Some(uri) = uri {
        p.subject_alt_names
            .push(SanType::URI(uri.try_into().expect("a SAN URI")));
    }
    p.extended_key_usages = vec![usage];
    let cert = p
        .signed_by(&key, issuer, issuer_key)
        .expect("a signed leaf");
    (cert, key)
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let (ca, ca_key) = make_ca("BasicAgent test CA");
        let (other_ca, other_key) = make_ca("Some other CA");
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        };
        write("ca.pem", ca.pem());
        write("other-ca.pem", other_ca.pem());
        let server = ExtendedKeyUsagePurpose::ServerAuth;
        let client = ExtendedKeyUsagePurpose::ClientAuth;
        let uri = Some(format!("urn:uuid:{CLIENT_HOST_ID}"));
        let leaves = [
            (
                "server",
                leaf(&ca, &ca_key, &[NAME], NAME, None, server.clone()),
            ),
            (
                "wrongname",
                leaf(
                    &ca,
                    &ca_key,
                    &["other.example.com"],
                    "other.example.com",
                    None,
                    server.clone(),
                ),
            ),
            (
                "otherca",
                leaf(&other_ca, &other_key, &[NAME], NAME, None, server),
            ),
            (
                "host-client",
                leaf(&ca, &ca_key, &[], "agent-client", uri, client.clone()),
            ),
            ("client", leaf(&ca, &ca_key, &[], "agent", None, client)),
        ];
        for (stem, (cert, key)) in &leaves {
            write(&format!("{stem}.pem"), cert.pem());
            write(&format!("{stem}.key"), key.serialize_pem());
        }
        let [.., (_, (client_cert, client_key))] = leaves;
        Pki {
            ca_der: ca.der().clone(),
            client_chain: vec![client_cert.der().clone()],
            client_key_der: client_key.serialize_der(),
            ca,
            ca_key,
            dir,
        }
    }

    /// `FILE` in the PKI's folder (`ca.pem`, `server.key`, ...).
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Writes `dir/agent-ID.pem` and `.key` for each id: a client
    /// certificate with SAN URI `urn:uuid:ID` (as make-certs.sh --agent).
    pub fn agent_certs(&self, dir: &Path, ids: &[String]) {
        for id in ids {
            let uri = Some(format!("urn:uuid:{id}"));
            let usage = ExtendedKeyUsagePurpose::ClientAuth;
            let (cert, key) = leaf(&self.ca, &self.ca_key, &[], id, uri, usage);
            let write = |name: String, text: String| {
                let path = dir.join(name);
                std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            };
            write(format!("agent-{id}.pem"), cert.pem());
            write(format!("agent-{id}.key"), key.serialize_pem());
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("the CA as a root");
        roots
    }

    /// A client configuration trusting this CA, with or without the
    /// generic client certificate.
    pub fn client_config(&self, with_cert: bool) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(self.roots());
        let config = if with_cert {
            let key = PrivateKeyDer::try_from(self.client_key_der.clone()).expect("the key");
            builder
                .with_client_auth_cert(self.client_chain.clone(), key)
                .expect("the client certificate")
        } else {
            builder.with_no_client_auth()
        };
        Arc::new(config)
    }

    /// A client configuration with a fresh certificate for `host` (SAN
    /// URI `urn:uuid:HOST`, CN "someone").
    pub fn client_config_for(&self, host: &str) -> Arc<ClientConfig> {
        let uri = Some(format!("urn:uuid:{host}"));
        let usage = ExtendedKeyUsagePurpose::ClientAuth;
        let (cert, key) = leaf(&self.ca, &self.ca_key, &[], "someone", uri, usage);
        let key = PrivateKeyDer::try_from(key.serialize_der()).expect("the key");
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(self.roots())
            .with_client_auth_cert(vec![cert.der().clone()], key)
            .expect("the client certificate");
        Arc::new(config)
    }

    /// A server configuration with `STEM.pem` and `STEM.key` (no client
    /// authentication).
    pub fn server_config(&self, stem: &str) -> Arc<ServerConfig> {
        let pem = self.path(&format!("{stem}.pem"));
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pem)
            .and_then(|it| it.collect::<Result<_, _>>())
            .unwrap_or_else(|e| panic!("{}: {e}", pem.display()));
        let key_path = self.path(&format!("{stem}.key"));
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .unwrap_or_else(|e| panic!("{}: {e}", key_path.display()));
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("the server certificate");
        Arc::new(config)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
