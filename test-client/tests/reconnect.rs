//! `--reconnect` against real echo pods: clients closed with 1012 come
//! back and say so, a reconnect that lands on another pod is a move, and
//! failed attempts at a stopped pod are counted without failing the run
//! unless clients end it unconnected. Every wait is on a condition with a
//! deadline; runs are ended by the test (`run_until`) once the condition
//! holds.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use test_client::backoff::BackoffPolicy;
use test_client::options::Reconnect;
use test_client::report::{Live, Reconnects};
use test_client::{LoadOptions, Report};
use test_server::{POD_NAME_HEADER, Pod, PodOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_util::sync::CancellationToken;

/// Bound on every wait and every run.
const DEADLINE: Duration = Duration::from_secs(10);

/// Messages per connection.
const MESSAGES: u64 = 3;

/// Waits until `condition` holds, failing the test after [`DEADLINE`].
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `clients` reconnecting clients over `urls`, quick to come back, with a
/// `--duration` the test never waits for (it ends the run itself).
fn reconnecting(urls: Vec<String>, clients: usize) -> LoadOptions {
    LoadOptions {
        urls,
        connections: clients,
        concurrency: clients,
        messages: MESSAGES as usize,
        size: 32,
        duration: Some(Duration::from_secs(60)),
        timeout: DEADLINE,
        reconnect: Some(Reconnect {
            backoff: BackoffPolicy {
                first: "10ms..50ms".parse().unwrap(),
                max: Duration::from_millis(200),
            },
            attempts: None,
            max_age: None,
        }),
        ..LoadOptions::default()
    }
}

/// A run in the background, ended by [`Running::stop`].
struct Running {
    live: Arc<Live>,
    stop: CancellationToken,
    run: JoinHandle<Report>,
}

impl Running {
    fn start(options: LoadOptions) -> Self {
        options.validate().expect("valid options");
        let live = Arc::new(Live::default());
        let stop = CancellationToken::new();
        let run = tokio::spawn(test_client::run_until(options, live.clone(), stop.clone()));
        Running { live, stop, run }
    }

    fn received(&self) -> u64 {
        self.live.received.load(Ordering::Relaxed)
    }

    /// Ends the run (clients close with 1000) and returns its report.
    async fn stop(self) -> Report {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.run)
            .await
            .expect("the run ends once stopped")
            .expect("the run does not panic")
    }
}

fn reconnects(report: &Report) -> &Reconnects {
    report
        .reconnect
        .as_ref()
        .expect("a --reconnect run reports reconnects")
}

/// A WebSocket relay in front of one pod, standing in for the balancer's
/// rebalancing: [`Relay::close_all`] has every connection relayed so far
/// ask its pod (with the pod's `close:CODE` command) to close with a code,
/// and the pod's Close reaches the client through the relay. The 101
/// carries the pod's `x-pod-name`.
struct Relay {
    url: String,
    close: broadcast::Sender<u16>,
    accept: JoinHandle<()>,
}

impl Relay {
    async fn start(pod: &Pod) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let upstream = format!("ws://{}/ws", pod.addr());
        let (close, _) = broadcast::channel(16);
        let closes = close.clone();
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(relay(tcp, upstream.clone(), closes.subscribe()));
            }
        });
        Relay { url, close, accept }
    }

    /// Every connection relayed so far is closed by its pod with `code`.
    fn close_all(&self, code: u16) {
        self.close.send(code).expect("connections to close");
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(tcp: TcpStream, upstream: String, mut closes: broadcast::Receiver<u16>) {
    let Ok((mut pod, answer)) = tokio_tungstenite::connect_async(upstream).await else {
        return;
    };
    let name = answer.headers().get(POD_NAME_HEADER).cloned();
    // The error type is tungstenite's `Callback`'s, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let with_name = |_: &Request, mut response: Response| {
        if let Some(name) = name {
            response.headers_mut().insert(POD_NAME_HEADER, name);
        }
        Ok(response)
    };
    let Ok(mut client) = tokio_tungstenite::accept_hdr_async(tcp, with_name).await else {
        return;
    };
    loop {
        let sent = tokio::select! {
            m = client.next() => match m {
                Some(Ok(m)) => pod.send(m).await,
                _ => break,
            },
            m = pod.next() => match m {
                Some(Ok(m)) => client.send(m).await,
                _ => break,
            },
            Ok(code) = closes.recv() => pod.send(Message::text(format!("close:{code}"))).await,
        };
        if sent.is_err() {
            break;
        }
    }
    // Sends the answer to a Close either side is still owed.
    let _ = tokio::join!(client.close(None), pod.close(None));
}

#[tokio::test]
async fn clients_closed_with_1012_reconnect_and_say_so() {
    let pod = Pod::start(PodOptions::new("solo")).await.unwrap();
    let relay = Relay::start(&pod).await;
    let run = Running::start(reconnecting(vec![relay.url.clone()], 3));
    eventually("3 clients connected and done with their messages", || {
        pod.connections() == 3 && run.received() == 3 * MESSAGES
    })
    .await;

    relay.close_all(1012);
    eventually("the 3 are back, with their messages", || {
        pod.accepted() == 6 && pod.connections() == 3 && run.received() == 6 * MESSAGES
    })
    .await;
    let report = run.stop().await;

    assert!(report.all_ok(), "{}", report.render());
    assert_eq!((report.attempted, report.ok, report.failed), (3, 3, 0));
    assert_eq!(report.per_pod.get("solo"), Some(&6));
    assert_eq!(report.messages_received, 6 * MESSAGES);
    // The final closes, answered.
    assert_eq!(report.close_codes.get(&1000), Some(&3));
    let r = reconnects(&report);
    assert_eq!((r.reconnects, r.moves, r.drops), (3, 0, 0));
    assert_eq!(r.close_codes.get(&1012), Some(&3), "{r:?}");
    assert_eq!((r.failed_attempts, r.gave_up, r.not_connected), (0, 0, 0));
    assert_eq!(r.final_per_pod.get("solo"), Some(&3));
    assert_eq!(r.final_spread, 0);
    assert!(report.render().contains("1012 x3"), "{}", report.render());
}

#[tokio::test]
async fn a_reconnect_to_the_next_url_lands_on_another_pod_and_is_a_move() {
    let pods = [
        Pod::start(PodOptions::new("a")).await.unwrap(),
        Pod::start(PodOptions::new("b")).await.unwrap(),
    ];
    let relays = [Relay::start(&pods[0]).await, Relay::start(&pods[1]).await];
    // Clients 0 and 2 start on a, 1 and 3 on b; a client's next attempt
    // goes to the next URL. Messages open loop this time.
    let run = Running::start(LoadOptions {
        msg_rate: Some(200.0),
        ..reconnecting(relays.iter().map(|r| r.url.clone()).collect(), 4)
    });
    eventually("2 clients on each pod, done with their messages", || {
        pods[0].connections() == 2 && pods[1].connections() == 2 && run.received() == 4 * MESSAGES
    })
    .await;

    relays[0].close_all(1012);
    eventually("a's clients are on b", || {
        pods[0].connections() == 0 && pods[1].connections() == 4 && run.received() == 6 * MESSAGES
    })
    .await;
    let report = run.stop().await;

    assert!(report.all_ok(), "{}", report.render());
    assert_eq!(report.per_pod.get("a"), Some(&2));
    assert_eq!(report.per_pod.get("b"), Some(&4));
    let r = reconnects(&report);
    assert_eq!((r.reconnects, r.moves), (2, 2), "{r:?}");
    assert_eq!(r.close_codes.get(&1012), Some(&2));
    // a is listed at the end with none left: the spread is 4.
    assert_eq!(r.final_per_pod.get("a"), Some(&0));
    assert_eq!(r.final_per_pod.get("b"), Some(&4));
    assert_eq!(r.final_spread, 4);
}

#[tokio::test]
async fn failed_attempts_at_a_stopped_pod_are_counted_not_failed() {
    let a = Pod::start(PodOptions::new("a")).await.unwrap();
    let b = Pod::start(PodOptions::new("b")).await.unwrap();
    let relay = Relay::start(&a).await;
    // Client 0 starts on a (through the relay), client 1 on b.
    let run = Running::start(reconnecting(
        vec![relay.url.clone(), format!("ws://{}/ws", b.addr())],
        2,
    ));
    eventually("a client on each pod", || {
        a.connections() == 1 && b.connections() == 1 && run.received() == 2 * MESSAGES
    })
    .await;

    // b goes away: client 1's connection drops and it comes back on a.
    b.stop().await;
    eventually("client 1 on a", || {
        a.connections() == 2 && run.received() == 3 * MESSAGES
    })
    .await;
    // Both are closed: each tries the next URL, b's, which refuses, then
    // a's again.
    relay.close_all(1012);
    eventually("both back on a after a failed attempt each", || {
        a.accepted() == 4
            && a.connections() == 2
            && run.live.failed_attempts.load(Ordering::Relaxed) == 2
            && run.received() == 5 * MESSAGES
    })
    .await;
    let report = run.stop().await;

    assert!(report.all_ok(), "{}", report.render());
    assert_eq!((report.ok, report.failed), (2, 0));
    let r = reconnects(&report);
    assert_eq!(r.drops, 1, "{r:?}");
    assert_eq!(r.close_codes.get(&1012), Some(&2));
    assert_eq!(r.failed_attempts, 2);
    assert!(
        r.failed_attempt_reasons
            .keys()
            .all(|reason| reason.starts_with("connect: ")),
        "{r:?}"
    );
    // Client 1 moved from b to a; the rest came back to a.
    assert_eq!((r.reconnects, r.moves), (3, 1));
    assert_eq!(r.final_per_pod.get("a"), Some(&2));
    assert_eq!(r.final_per_pod.get("b"), Some(&0));
    assert_eq!((r.not_connected, r.final_spread), (0, 2));
}

#[tokio::test]
async fn clients_still_failing_to_open_when_the_run_ends_fail_it() {
    let gone = Pod::start(PodOptions::new("gone")).await.unwrap();
    let url = format!("ws://{}/ws", gone.addr());
    gone.stop().await;
    let run = Running::start(reconnecting(vec![url], 2));
    eventually("a few failed attempts each", || {
        run.live.failed_attempts.load(Ordering::Relaxed) >= 4
    })
    .await;
    let report = run.stop().await;

    assert!(!report.all_ok());
    assert_eq!((report.attempted, report.failed), (2, 2));
    assert!(
        report
            .failures
            .keys()
            .all(|reason| reason.starts_with("not connected at the end: connect: ")),
        "{:?}",
        report.failures
    );
    let r = reconnects(&report);
    assert!(r.failed_attempts >= 4, "{r:?}");
    assert_eq!((r.not_connected, r.gave_up, r.reconnects), (2, 0, 0));
    assert!(r.final_per_pod.is_empty());
}

/// The binary: `--duration` is required, the JSON carries the `reconnect`
/// object (only with `--reconnect`), and a client that gives up fails the
/// run.
#[tokio::test]
async fn binary_reports_reconnects_in_json_and_sets_the_exit_code() {
    let pod = Pod::start(PodOptions::new("solo")).await.unwrap();
    let url = format!("ws://{}/ws", pod.addr());
    let gone = Pod::start(PodOptions::new("gone")).await.unwrap();
    let gone_url = format!("ws://{}/ws", gone.addr());
    gone.stop().await;
    let client = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_test-client"));
        command
            .args(args)
            .args(["--quiet", "--connections", "3", "--messages", "2"])
            .kill_on_drop(true);
        async move {
            tokio::time::timeout(DEADLINE, command.output())
                .await
                .expect("test-client ends in time")
                .unwrap()
        }
    };
    let json = |stdout: &[u8]| -> serde_json::Value {
        serde_json::from_slice(stdout).expect("stdout is one JSON object")
    };

    let unbounded = client(&["--url", &url, "--reconnect"]).await;
    assert_eq!(unbounded.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unbounded.stderr).contains("--duration"));

    let held = client(&[
        "--url",
        &url,
        "--reconnect",
        "--duration",
        "1s",
        "--json",
        "-",
        "--fail-on",
        "not_connected>0",
        "--fail-on",
        "failed>0",
    ])
    .await;
    assert_eq!(held.status.code(), Some(0), "{held:?}");
    let report = json(&held.stdout);
    assert_eq!(report["ok"], 3);
    assert_eq!(report["close_codes"]["1000"], 3);
    let r = &report["reconnect"];
    for key in [
        "reconnects",
        "moves",
        "close_codes",
        "drops",
        "failed_attempts",
        "failed_attempt_reasons",
        "gave_up",
        "not_connected",
        "final_per_pod",
        "final_spread",
        "messages_cut_off",
    ] {
        assert!(!r[key].is_null(), "no {key:?} in {r}");
    }
    assert_eq!(r["final_per_pod"]["solo"], 3);
    assert_eq!(r["reconnects"], 0);

    let giving_up = client(&[
        "--url",
        &gone_url,
        "--reconnect",
        "--duration",
        "60s",
        "--reconnect-attempts",
        "2",
        "--reconnect-backoff",
        "5ms..10ms",
        "--json",
        "-",
    ])
    .await;
    assert_eq!(giving_up.status.code(), Some(1), "{giving_up:?}");
    let report = json(&giving_up.stdout);
    assert_eq!(report["failed"], 3);
    let failures = report["failures"].as_object().unwrap();
    assert!(
        failures
            .keys()
            .all(|k| k.starts_with("gave up after 2 failed attempts: connect: ")),
        "{failures:?}"
    );
    assert_eq!(report["reconnect"]["gave_up"], 3);
    assert_eq!(report["reconnect"]["failed_attempts"], 6);

    let once = client(&["--url", &url, "--hold", "0s", "--json", "-"]).await;
    assert_eq!(once.status.code(), Some(0));
    assert!(json(&once.stdout).get("reconnect").is_none());
}

#[tokio::test]
async fn clients_past_their_maximum_age_close_and_reconnect() {
    let pod = Pod::start(PodOptions::new("solo")).await.unwrap();
    let mut options = reconnecting(vec![format!("ws://{}/ws", pod.addr())], 2);
    if let Some(policy) = options.reconnect.as_mut() {
        policy.max_age = Some(Duration::from_millis(100));
    }
    let run = Running::start(options);
    eventually("each client was recycled at least twice", || {
        pod.accepted() >= 6
    })
    .await;
    let report = run.stop().await;

    assert!(report.all_ok(), "{}", report.render());
    let r = reconnects(&report);
    assert!(r.aged_out >= 4, "{r:?}");
    // A client stopped between its age-out and its reconnect (in its
    // backoff) is not connected at the end.
    assert!(
        r.reconnects + r.not_connected >= r.aged_out,
        "each age-out is followed by a reconnect: {r:?}"
    );
    // The clients closed these themselves: no close from the far side.
    assert!(r.close_codes.is_empty(), "{r:?}");
    assert_eq!((r.drops, r.failed_attempts), (0, 0), "{r:?}");
}
