//! TLS termination on the client-facing listener (`tlsCert`, `tlsKey`).
//!
//! The certificate and key are read at start, and again by
//! `control::cert_reload` whenever either file changes, so a renewed
//! certificate is served without a restart.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    /// A file could not be read or parsed.
    #[error("invalid config: key `{key}`: {path}: {problem}")]
    File {
        /// `tlsCert` or `tlsKey`.
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The key does not match the certificate, or rustls refused them.
    #[error("invalid config: key `tlsKey`: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The listener's current TLS configuration, swapped on reload.
#[derive(Debug)]
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    /// Whether `h2` is offered (`http2`, fixed until a restart).
    http2: bool,
    current: RwLock<Arc<ServerConfig>>,
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// ALPN names the listener offers: `h2` first when HTTP/2 is on (a
/// client that speaks both takes it), then HTTP/1.1, which WebSocket
/// upgrades and older clients use.
fn alpn(http2: bool) -> Vec<Vec<u8>> {
    if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    }
}

fn load(cert: &Path, key: &Path, http2: bool) -> Result<Arc<ServerConfig>, ServerTlsError> {
    let file_error = |key: &'static str, path: &Path, problem: String| ServerTlsError::File {
        key,
        path: path.display().to_string(),
        problem,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error("tlsCert", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error("tlsCert", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error(
            "tlsCert",
            cert,
            "no PEM certificate found".into(),
        ));
    }
    let private =
        PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("tlsKey", key, e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(crate::connection::pod_tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, private)?;
    config.alpn_protocols = alpn(http2);
    Ok(Arc::new(config))
}

impl ServerTls {
    /// Loads the certificate and key; `http2` offers `h2` by ALPN.
    pub fn load(cert: &Path, key: &Path, http2: bool) -> Result<Self, ServerTlsError> {
        Ok(ServerTls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            http2,
            current: RwLock::new(load(cert, key, http2)?),
        })
    }

    /// The configuration new TLS handshakes use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The modification times of the certificate and key files, to tell
    /// when they change.
    pub fn files_modified(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        (modified(&self.cert), modified(&self.key))
    }

    /// Loads both files again; new handshakes use them once they load. On
    /// an error the previous configuration stays in use.
    pub fn reload(&self) -> Result<(), ServerTlsError> {
        let config = load(&self.cert, &self.key, self.http2)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    /// The certificate file, for logs.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }
}
