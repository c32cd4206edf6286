//! Dead peers found by the kernel on both sockets of a relayed connection.
//! A host that drops off the network (a node failure, a partition) sends
//! no reset: without these, a connection to it hangs until the kernel
//! gives up, about 15 minutes for data in flight and two hours when idle.
//!
//! - TCP keepalive (`tcpKeepalive`, `tcpKeepaliveInterval`,
//!   `tcpKeepaliveProbes`) finds an idle connection's dead peer within
//!   30s + 3 x 5s by default.
//! - `TCP_USER_TIMEOUT` at `writeTimeout` aborts a socket whose sent
//!   bytes stay unacknowledged that long, even while the other side keeps
//!   the connection busy (which is why `readTimeout` never fires then).
//!
//! Either way the socket fails with `ETIMEDOUT`, and the relay ends the
//! connection as for any vanished side: 1014 toward the client when the
//! pod went, 1001 toward the pod when the client did.

use std::time::Duration;

use common::Config;
use socket2::{SockRef, TcpKeepalive};

/// How the sockets of new connections find a dead peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Keepalive idle time, interval and probes; `None` when off.
    keepalive: Option<(Duration, Duration, u32)>,
    /// Longest time sent bytes may stay unacknowledged.
    user_timeout: Duration,
}

impl Liveness {
    /// The settings of `config`.
    pub fn from_config(config: &Config) -> Self {
        Liveness {
            keepalive: (!config.tcp_keepalive.is_zero()).then_some((
                config.tcp_keepalive,
                config.tcp_keepalive_interval,
                config.tcp_keepalive_probes,
            )),
            user_timeout: config.write_timeout,
        }
    }

    /// Sets them on the sockets `http` opens (the pooled plain-HTTP client
    /// toward pods).
    pub fn configure(&self, http: &mut hyper_util::client::legacy::connect::HttpConnector) {
        if let Some((time, interval, retries)) = self.keepalive {
            http.set_keepalive(Some(time));
            http.set_keepalive_interval(Some(interval));
            http.set_keepalive_retries(Some(retries));
        }
        http.set_tcp_user_timeout(Some(self.user_timeout));
    }

    /// Sets them on `socket`. A failure is logged and otherwise ignored:
    /// the connection still works, as it would without them.
    pub fn apply<S>(&self, socket: &S)
    where
        for<'a> SockRef<'a>: From<&'a S>,
    {
        let socket = SockRef::from(socket);
        match self.keepalive {
            Some((time, interval, retries)) => {
                let keepalive = TcpKeepalive::new()
                    .with_time(time)
                    .with_interval(interval)
                    .with_retries(retries);
                if let Err(error) = socket.set_tcp_keepalive(&keepalive) {
                    tracing::debug!(%error, "TCP keepalive not set");
                }
            }
            // Off is set too: a listening socket keeps what an earlier
            // reload gave it, and accepted sockets inherit that.
            None => {
                if let Err(error) = socket.set_keepalive(false) {
                    tracing::debug!(%error, "TCP keepalive not cleared");
                }
            }
        }
        if let Err(error) = socket.set_tcp_user_timeout(Some(self.user_timeout)) {
            tracing::debug!(%error, "TCP_USER_TIMEOUT not set");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_settings_reach_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let config = Config {
            tcp_keepalive: Duration::from_secs(7),
            tcp_keepalive_interval: Duration::from_secs(2),
            tcp_keepalive_probes: 4,
            write_timeout: Duration::from_millis(2500),
            ..Config::default()
        };
        Liveness::from_config(&config).apply(&tcp);
        let socket = SockRef::from(&tcp);
        assert!(socket.keepalive().unwrap());
        assert_eq!(socket.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(2)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(
            socket.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(2500))
        );

        let off = Config {
            tcp_keepalive: Duration::ZERO,
            ..Config::default()
        };
        let other = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        Liveness::from_config(&off).apply(&other);
        assert!(!SockRef::from(&other).keepalive().unwrap());
    }
}
