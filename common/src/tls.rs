//! TLS toward servers (the balancer's pods, test-client's targets): one
//! rustls client config, verifying against the system roots plus a CA file,
//! or not verifying at all. Behind the `tls` feature: unlike the rest of
//! this crate it reads files (the system roots, the CA file).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Why the TLS client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The CA file could not be read or holds no certificate.
    #[error("caFile {path}: {problem}")]
    CaFile {
        /// The configured path.
        path: String,
        /// What went wrong.
        problem: String,
    },
    /// rustls refused the protocol settings (should not happen).
    #[error("tls setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider used everywhere in this process.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config for HTTP/1.1 over TLS (WebSocket upgrades): verifying
/// against the system roots plus the certificates in `ca_file`, or, when
/// `verify` is false, accepting any certificate.
pub fn client_config(
    verify: bool,
    ca_file: Option<&Path>,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let mut client = if verify {
        let roots = root_store(ca_file)?;
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    };
    // WebSocket upgrades are HTTP/1.1; say so, so an h2-capable pod agrees.
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(client))
}

fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, TlsSetupError> {
    let mut roots = RootCertStore::empty();
    // Unreadable or unparsable system roots are skipped: `ca_file` may be
    // all that is needed.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let ca_error = |problem: String| TlsSetupError::CaFile {
            path: path.display().to_string(),
            problem,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_error(e.to_string()))?
            .collect::<Result<_, _>>()
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate found".to_owned()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| ca_error(format!("unusable certificate: {e}")))?;
        }
    }
    Ok(roots)
}

/// Accepts any server certificate (`tlsVerify: false`), still checking that
/// handshake signatures are well formed.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_by_name() {
        let path = std::env::temp_dir().join(format!("wsb-no-cert-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = client_config(true, Some(&path)).unwrap_err();
        let _ = std::fs::remove_file(&path);
        assert!(matches!(error, TlsSetupError::CaFile { .. }), "{error}");
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
        let missing = client_config(true, Some(Path::new("/nonexistent/ca.pem")));
        assert!(matches!(missing, Err(TlsSetupError::CaFile { .. })));
        // Not verifying needs no roots at all.
        assert!(client_config(false, Some(Path::new("/nonexistent/ca.pem"))).is_ok());
    }
}
