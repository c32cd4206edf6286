//! What the listener does when the process has run out of file
//! descriptors, and what readiness learns of it.
//!
//! When `accept` fails with EMFILE (or ENFILE, the system's table), the
//! connection stays in the kernel's backlog and the listener is readable
//! again at once: an accept loop that only retries spins, and one that
//! sleeps between tries leaves every waiting client without an answer
//! until its own timeout. So one descriptor is kept in reserve, an open
//! `/dev/null` ([`Spare`]): on EMFILE it is closed, the waiting connection
//! is accepted in its place, answered `503` with `Retry-After` and
//! `Connection: close` before anything is read, and closed, and the spare
//! is opened again. [`Exhaustion`] remembers that descriptors ran out, so
//! that `/readyz` says so while it lasts.

use std::fs::File;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// What a client accepted with the spare descriptor gets, whole: it must
/// fit one write to a new socket, and says nothing a client could act on
/// but to come back later.
const RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 33\r\n\
retry-after: 1\r\n\
connection: close\r\n\
\r\n\
balancer out of file descriptors\n";

/// Most bytes of the refused client's request read (and dropped) before
/// its socket is closed, so that the close is a FIN after the answer
/// rather than a reset that could destroy it.
const DRAIN_BYTES: usize = 16 * 1024;

/// How long after the last failed accept readiness stays off even when a
/// descriptor is free: one that has just been freed is taken again by the
/// next client in a flood.
const SETTLE: Duration = Duration::from_secs(2);

/// Whether `error` is an accept failing for lack of descriptors, the
/// process's (EMFILE) or the system's (ENFILE).
pub fn is_out_of_descriptors(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// The descriptor kept in reserve, so that a client can still be accepted
/// (and refused) when the process has none left.
#[derive(Debug)]
pub struct Spare {
    /// An open `/dev/null`; `None` while its slot is taken (a descriptor
    /// freed meanwhile went to somebody else).
    file: Option<File>,
}

/// What [`Spare::refuse`] did.
#[derive(Debug)]
pub enum Refused {
    /// The client at this address got its 503.
    Answered(SocketAddr),
    /// Nobody was waiting any more (the client gave up).
    NoneWaiting,
    /// No spare descriptor to accept with: the caller backs off.
    NoSpare,
}

impl Spare {
    /// Opens the spare (a warning when even that fails: the balancer then
    /// backs off on EMFILE instead of answering).
    pub fn open() -> Self {
        let mut spare = Spare { file: None };
        if let Err(error) = spare.restore() {
            tracing::warn!(%error, "no spare file descriptor: clients will wait instead of getting 503 when descriptors run out");
        }
        spare
    }

    /// Opens the spare again if it is closed.
    fn restore(&mut self) -> io::Result<()> {
        if self.file.is_none() {
            self.file = Some(File::open("/dev/null")?);
        }
        Ok(())
    }

    /// After an accept failed for lack of descriptors: closes the spare,
    /// accepts the next waiting connection of `listener` in its place,
    /// answers it 503 and closes it, and opens the spare again.
    pub async fn refuse(&mut self, listener: &TcpListener) -> Refused {
        if self.restore().is_err() {
            return Refused::NoSpare;
        }
        self.file = None;
        // Once, without waiting: the connection that failed to be accepted
        // is the one to answer, and no other may be waited for without a
        // spare in hand.
        let accepted = std::future::poll_fn(|cx| Poll::Ready(listener.poll_accept(cx))).await;
        let outcome = match accepted {
            Poll::Ready(Ok((tcp, client))) => {
                answer(tcp);
                Refused::Answered(client)
            }
            Poll::Ready(Err(error)) => {
                tracing::debug!(%error, "accept with the spare descriptor failed");
                Refused::NoSpare
            }
            Poll::Pending => Refused::NoneWaiting,
        };
        match (self.restore(), outcome) {
            (Ok(()), outcome) => outcome,
            // Its slot was taken meanwhile: the next EMFILE backs off.
            (Err(_), Refused::Answered(client)) => Refused::Answered(client),
            (Err(_), _) => Refused::NoSpare,
        }
    }
}

/// Answers `tcp` [`RESPONSE`] without waiting on it, and closes it.
fn answer(tcp: TcpStream) {
    // A new socket's send buffer takes the whole answer at once; if it
    // does not, the client gets the close alone.
    let _ = tcp.try_write(RESPONSE);
    let socket = socket2::SockRef::from(&tcp);
    let _ = socket.shutdown(Shutdown::Write);
    // What already arrived of the request is read, so that closing sends
    // a FIN, not a reset (which may discard the answer at the client).
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < DRAIN_BYTES {
        match tcp.try_read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Whether, and since when, the listener has been failing to accept for
/// lack of descriptors: what `/readyz` reports.
#[derive(Debug)]
pub struct Exhaustion {
    /// Set by an accept that failed so, cleared by the next that succeeds
    /// (or by [`Exhaustion::is_out`] once descriptors are free again).
    out: AtomicBool,
    /// Milliseconds after `epoch` of the last failed accept.
    last: AtomicU64,
    /// Clients answered 503 since descriptors ran out, for the log line
    /// that says they are back.
    refused: AtomicU64,
    /// Origin of `last`.
    epoch: Instant,
}

impl Default for Exhaustion {
    fn default() -> Self {
        Exhaustion {
            out: AtomicBool::new(false),
            last: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Exhaustion {
    /// An accept failed for lack of descriptors (`error`); logged once per
    /// streak.
    pub fn ran_out(&self, error: &io::Error) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
        if !self.out.swap(true, Ordering::SeqCst) {
            tracing::warn!(%error, "out of file descriptors: new clients get 503 until some are free");
        }
    }

    /// A client got its 503 through the spare descriptor.
    pub fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// An accept succeeded: descriptors are there again.
    pub fn accepted(&self) {
        // One relaxed load per accept while all is well.
        if self.out.load(Ordering::Relaxed) {
            self.recovered();
        }
    }

    /// Ends a streak (once, whoever sees it first), logged.
    fn recovered(&self) {
        if self.out.swap(false, Ordering::SeqCst) {
            let refused = self.refused.swap(0, Ordering::Relaxed);
            tracing::info!(refused, "file descriptors available again");
        }
    }

    /// Whether the balancer is out of descriptors: an accept failed for
    /// lack of them, none has succeeded since, and either that was within
    /// the last [`SETTLE`] or no descriptor can be opened now. A free one
    /// found after that ends the streak, so readiness comes back without
    /// waiting for a client (none comes to a balancer that is not ready).
    pub fn is_out(&self) -> bool {
        if !self.out.load(Ordering::SeqCst) {
            return false;
        }
        let since = self
            .epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)));
        if since < SETTLE || File::open("/dev/null").is_err() {
            return true;
        }
        self.recovered();
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_spare_answers_a_waiting_client_503_and_comes_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut spare = Spare::open();
        assert!(spare.file.is_some());
        // The connection may take a moment to reach the accept queue.
        let deadline = Instant::now() + Duration::from_secs(10);
        let answered = loop {
            match spare.refuse(&listener).await {
                Refused::Answered(answered) => break answered,
                other => assert!(Instant::now() < deadline, "{other:?}"),
            }
            tokio::task::yield_now().await;
        };
        assert_eq!(answered, client.local_addr().unwrap());
        assert!(spare.file.is_some(), "opened again");
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got));
        read.await.unwrap().unwrap();
        assert_eq!(got, RESPONSE);
        let text = String::from_utf8(got).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(head.contains(&format!("content-length: {}\r\n", body.len())));

        // Nobody waiting: nothing answered, the spare is back.
        assert!(matches!(
            spare.refuse(&listener).await,
            Refused::NoneWaiting
        ));
        assert!(spare.file.is_some());
    }

    #[test]
    fn exhaustion_lasts_until_an_accept_succeeds() {
        let exhaustion = Exhaustion::default();
        assert!(!exhaustion.is_out());
        let error = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(is_out_of_descriptors(&error));
        assert!(is_out_of_descriptors(&io::Error::from_raw_os_error(
            libc::ENFILE
        )));
        assert!(!is_out_of_descriptors(&io::Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
        exhaustion.ran_out(&error);
        exhaustion.refused();
        // Within the settling time, a free descriptor does not end it.
        assert!(exhaustion.is_out());
        exhaustion.accepted();
        assert!(!exhaustion.is_out());
        assert_eq!(exhaustion.refused.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn exhaustion_ends_once_a_descriptor_is_free_after_settling() {
        let exhaustion = Exhaustion {
            // As if the last failure were long ago.
            epoch: Instant::now() - SETTLE * 2,
            ..Exhaustion::default()
        };
        exhaustion.out.store(true, Ordering::SeqCst);
        assert!(!exhaustion.is_out(), "this test process has descriptors");
        assert!(!exhaustion.out.load(Ordering::SeqCst), "the streak ended");
    }
}
