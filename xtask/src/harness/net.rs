//! Loopback networking the tasks need besides their WebSocket load: a free
//! port to hand a child before it starts, and a bounded HTTP GET for the
//! balancer's admin endpoints and the pods' `/metric`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one GET may take, connect included: a listener whose queue is
/// full would otherwise hold a caller's deadline loop for minutes of SYN
/// retries.
const GET_TIMEOUT: Duration = Duration::from_secs(5);

/// A minimal HTTP/1.1 GET returning the body, whatever the status (a
/// `/readyz` that says "not ready" is an answer too).
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut response = String::new();
        tcp.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(GET_TIMEOUT, exchange)
        .await
        .with_context(|| format!("GET http://{addr}{path}: no answer within {GET_TIMEOUT:?}"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}

/// A loopback port free now, for a child that must be told its port
/// before it starts (a pod restarted on its old port, a peer proxy's
/// config). Released at once: the child binds it right after.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?.port())
}
