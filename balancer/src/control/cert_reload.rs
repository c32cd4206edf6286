//! Reloads of the listener's TLS certificate (`tlsCert`, `tlsKey`): the
//! files are checked every [`RELOAD_CHECK`] and loaded again when either
//! changed, so a renewed certificate is served without a restart. A file
//! that fails to load (often a renewal caught half-written) is reported
//! once, tried again at its next change, and the previous certificate
//! stays in use meanwhile.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::connection::listener_tls::ServerTls;

/// How often the certificate files are checked for changes.
pub const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Reloads `tls` whenever one of its files changes, until `stop` is
/// cancelled.
pub async fn watch(tls: Arc<ServerTls>, stop: CancellationToken) {
    let mut seen = tls.files_modified();
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(RELOAD_CHECK) => {}
            () = stop.cancelled() => return,
        }
        let now = tls.files_modified();
        if now == seen {
            continue;
        }
        match tls.reload() {
            Ok(()) => {
                seen = now;
                last_error = None;
                tracing::info!(cert = %tls.cert_path().display(), "TLS certificate reloaded");
            }
            Err(error) => {
                let error = error.to_string();
                if last_error.as_deref() != Some(&error) {
                    tracing::warn!(%error, "TLS certificate reload failed, keeping the previous one");
                }
                last_error = Some(error);
            }
        }
    }
}
