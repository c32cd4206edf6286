//! A certificate made on the spot, for serving `wss://` from a test pod
//! without a CA: the tests of every crate that need TLS take theirs here.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A self-signed certificate for `127.0.0.1` and `localhost`. It is not a
/// CA certificate, so a rustls client that trusts it (as its CA file)
/// accepts it as a server's own.
pub struct SelfSigned {
    /// The certificate, PEM: what a client's CA file holds.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
    /// The certificate, DER.
    pub cert_der: CertificateDer<'static>,
    /// Its public key as an X.509 SubjectPublicKeyInfo, DER: what a
    /// browser pins (`--ignore-certificate-errors-spki-list` takes its
    /// SHA-256).
    pub spki_der: Vec<u8>,
    /// The private key, DER (PKCS#8).
    key_der: Vec<u8>,
}

impl SelfSigned {
    /// Generates a new key pair and certificate.
    pub fn generate() -> Result<Self, rcgen::Error> {
        let generated = rcgen::generate_simple_self_signed(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ])?;
        use rcgen::PublicKeyData;
        Ok(SelfSigned {
            spki_der: generated.signing_key.subject_public_key_info(),
            cert_pem: generated.cert.pem(),
            key_pem: generated.signing_key.serialize_pem(),
            cert_der: CertificateDer::from(generated.cert.der().to_vec()),
            key_der: generated.signing_key.serialize_der(),
        })
    }

    /// A server config presenting it, for [`crate::PodOptions::tls`].
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert_der.clone()], key)?;
        Ok(Arc::new(config))
    }
}
