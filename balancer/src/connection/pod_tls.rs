//! TLS toward `https`/`wss` pods: one rustls client config shared by the
//! dialler, the poller and plain HTTP proxying, verifying against the
//! system roots plus `caFile`, or not verifying at all when
//! `tlsVerify: false` (built by [`common::tls`], which test-client uses
//! too).

use std::sync::Arc;

use rustls::ClientConfig;

use common::Config;

pub use common::tls::{TlsSetupError, provider};

/// Builds the client config for pods from the balancer config.
pub fn client_config(config: &Config) -> Result<Arc<ClientConfig>, TlsSetupError> {
    common::tls::client_config(config.tls_verify, config.ca_file.as_deref())
}
