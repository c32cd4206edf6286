//! The "TCP relay" column of `cargo xtask bench`: about the least a proxy
//! can do on this machine. It copies bytes both ways between the client
//! and the pod with tokio's `copy_bidirectional` and 64 KiB buffers: no
//! HTTP parsing, no frame tracking, no pod choice, no timeouts, no metrics.
//! Measured in the same run as the others, it shows how much of an echo's
//! gap to a direct connection is the extra hop itself (two more sockets
//! and a second core on the path) and how much is the proxy's own work.
//! For new connections it is no floor: it allocates two 64 KiB buffers per
//! connection and reads until `EAGAIN`, so it spends more CPU on each than
//! a proxy built for it.

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};

/// Its column (and process) name in the benchmark.
pub const NAME: &str = "TCP relay";

/// Buffer size each way: a whole 64 KiB message with its header, as the
/// balancer's relay buffers (`wsbalancer::ends::CHUNK`).
const BUFFER: usize = 64 * 1024 + 64;

/// Binds `listen`, prints `ready listen=ADDR`, and relays every connection
/// to `pod` (host:port) until the process is killed.
pub async fn run(listen: &str, pod: &str) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("ready listen={}", listener.local_addr()?);
    serve(listener, pod).await
}

/// Relays every connection `listener` accepts to `pod` (host:port).
async fn serve(listener: TcpListener, pod: &str) -> anyhow::Result<()> {
    loop {
        let (mut client, _) = listener.accept().await?;
        let pod = pod.to_owned();
        tokio::spawn(async move {
            let Ok(mut upstream) = TcpStream::connect(&pod).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional_with_sizes(
                &mut client,
                &mut upstream,
                BUFFER,
                BUFFER,
            )
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_pass_both_ways_unchanged() -> anyhow::Result<()> {
        // An echo server stands for the pod.
        let pod = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let pod_addr = pod.local_addr()?.to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = pod.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let listen = relay.local_addr()?;
        tokio::spawn(async move { super::serve(relay, &pod_addr).await });
        let mut client = tokio::net::TcpStream::connect(listen).await?;
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut back = vec![0u8; sent.len()];
        let (mut read, mut write) = client.split();
        // Written and read at once: more than socket buffers hold.
        let (written, read) = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            tokio::join!(write.write_all(&sent), read.read_exact(&mut back))
        })
        .await?;
        written?;
        read?;
        assert_eq!(back, sent);
        Ok(())
    }
}
