//! A pod host that drops off the network (packets vanish, no reset: a node
//! failure, a partition), made real inside network namespaces the test
//! creates and removes itself: the clients with data pending on that pod
//! are told 1014 within a bound, and new connections meanwhile never wait
//! `dialTimeout` (hedged dials), while the silent pod gets ejected.
//!
//! Needs root and `ip` (CI has both); elsewhere it says so and passes.

mod support;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use test_server::PodOptions;
use test_server::netns::Lab;
use tokio_tungstenite::tungstenite::Message;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use support::{
    DEADLINE, Ws, connect, landed_on, masked_text, plain_get, raw_frame, raw_upgrade, within,
};

/// `writeTimeout` here: unacknowledged bytes toward the silent pod abort
/// its socket this long after they were sent (`TCP_USER_TIMEOUT`).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// `dialTimeout` here: long, so that a new connection that waited for it
/// could not pass for one that was hedged.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Clients holding a connection when the host goes silent.
const HOLDING: usize = 8;

/// New connections opened while it is silent.
const NEW: usize = 24;

#[test]
fn a_silent_pod_host_costs_its_clients_a_close_and_new_connections_a_moment() {
    if !Lab::available() {
        eprintln!("skipped: network namespaces need root and `ip`");
        return;
    }
    let lab = Lab::create(2).expect("namespaces");
    let silent = lab
        .start_pod(0, PodOptions::new("silent"))
        .expect("pod on host 0");
    let healthy = lab
        .start_pod(1, PodOptions::new("healthy"))
        .expect("pod on host 1");
    let pods = vec![silent.pod.url(), healthy.pod.url()];
    let edge = lab.edge.clone();
    let lab = std::sync::Arc::new(lab);
    let in_edge = lab.clone();
    let outcome = test_server::netns::run_in(&edge, move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(scenario(&in_edge, pods))
    })
    .join();
    drop((silent, healthy));
    match outcome {
        Ok(entered) => entered.expect("the edge namespace can be entered"),
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

async fn scenario(lab: &Lab, pods: Vec<String>) {
    support::init_logs();
    let balancer = wsbalancer::Balancer::start(common::Config {
        write_timeout: WRITE_TIMEOUT,
        dial_timeout: DIAL_TIMEOUT,
        // Polls alone would take a while to eject the silent pod: the
        // hedged dials are what keeps new connections quick here.
        cache_ttl: Duration::from_secs(30),
        ..support::config(pods)
    })
    .await
    .expect("balancer starts");
    let url = support::ws_url(&balancer, "/ws");
    let admin = balancer.admin_addr();

    // Clients spread over both pods, each proving its echo works. Raw
    // ones: tungstenite would turn the 1014 they get into a 1002.
    let mut holding: Vec<(TcpStream, String)> = Vec::new();
    for _ in 0..HOLDING {
        let (mut tcp, head) = raw_upgrade(balancer.listen_addr(), "/ws").await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw_echo(&mut tcp, "before").await;
        let pod = if head.contains("x-pod-name: silent") {
            "silent"
        } else {
            "healthy"
        };
        holding.push((tcp, pod.to_owned()));
    }
    let on_silent = holding.iter().filter(|(_, pod)| pod == "silent").count();
    assert!(
        on_silent > 0 && on_silent < HOLDING,
        "least-connections spreads the clients: {on_silent} of {HOLDING} on the silent pod"
    );

    lab.silence(0).expect("host 0 silenced");
    let silenced = Instant::now();

    // Every client sends: those on the silent pod now have data pending.
    let told: Vec<_> = holding
        .into_iter()
        .map(|(mut tcp, pod)| {
            tokio::spawn(async move {
                tcp.write_all(&masked_text("after")).await.expect("send");
                let frame = raw_frame(&mut tcp).await;
                // The stream is kept open (returned) until the end.
                (pod, frame, silenced.elapsed(), tcp)
            })
        })
        .collect();

    // Meanwhile, new connections.
    let mut slowest = Duration::ZERO;
    // Every client still open, held until the end.
    let mut open = Vec::new();
    for n in 0..NEW {
        let started = Instant::now();
        let (mut ws, response) = connect(&url).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(landed_on(&response), "healthy", "new connection {n}");
        echo(&mut ws, "new").await;
        open.push(ws);
    }

    let mut raw_open = Vec::new();
    for client in told {
        let (pod, (opcode, payload), after, tcp) = client.await.expect("client task");
        raw_open.push(tcp);
        match pod.as_str() {
            "silent" => {
                assert_eq!(opcode, 0x8, "a client of the silent pod is closed");
                assert_eq!(
                    payload.get(..2),
                    Some(&1014u16.to_be_bytes()[..]),
                    "with 1014"
                );
                assert!(
                    after <= WRITE_TIMEOUT + Duration::from_secs(5),
                    "told after {after:?}"
                );
            }
            _ => assert_eq!(
                (opcode, payload),
                (0x1, b"after".to_vec()),
                "healthy pod echoes"
            ),
        }
    }
    assert!(
        slowest < DIAL_TIMEOUT / 2,
        "a new connection waited {slowest:?}: dialTimeout is {DIAL_TIMEOUT:?}"
    );

    // The dials that stalled on the silent pod were held against it.
    let scrape = plain_get(admin, "/metrics").await;
    let stalled = sample(
        &scrape,
        "wsbalancer_pod_connections_failed_total",
        &["pod=\"http://10.99.0.2", "reason=\"slow_connect\""],
    );
    assert!(stalled >= 1.0, "no slow_connect failure counted:\n{scrape}");
    wait_until_ejected(admin).await;

    // The abandoned dials left no count behind: the silent pod holds
    // nothing once its clients were told, the healthy one holds its own.
    let on_healthy = (HOLDING - on_silent + NEW) as u64;
    support::wait_until("counts without the abandoned dials", || {
        let snapshots = balancer.registry().snapshots();
        snapshots.iter().all(|s| match s.pod_name.as_deref() {
            Some("silent") => s.relayed == 0 && s.effective == 0,
            _ => s.relayed == on_healthy,
        })
    })
    .await;
    drop(balancer);
}

/// Sends `text` on a raw client and waits for its echo.
async fn raw_echo(tcp: &mut TcpStream, text: &str) {
    tcp.write_all(&masked_text(text)).await.expect("send");
    assert_eq!(raw_frame(tcp).await, (0x1, text.as_bytes().to_vec()));
}

/// Sends `text` and waits for its echo.
async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    let answer = within("echo", ws.next()).await;
    assert_eq!(answer.and_then(Result::ok), Some(Message::text(text)));
}

/// The sum of the samples of `metric` whose labels contain every one of
/// `labels`.
fn sample(scrape: &str, metric: &str, labels: &[&str]) -> f64 {
    scrape
        .lines()
        .filter(|line| line.starts_with(metric) && labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until the silent pod's state is `ejected` in `/metrics`.
async fn wait_until_ejected(admin: std::net::SocketAddr) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let scrape = plain_get(admin, "/metrics").await;
        let ejected = sample(
            &scrape,
            "wsbalancer_pod_state",
            &["pod=\"http://10.99.0.2", "state=\"ejected\""],
        );
        if ejected == 1.0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the silent pod was never ejected:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Only the connect is hedged: a pod that connected but takes longer than
/// `hedgeDelay` to answer its upgrade (the application thinking) is waited
/// for, and no other pod gets a duplicate of the upgrade.
#[tokio::test]
async fn a_pod_slow_to_answer_is_waited_for_and_never_duplicated() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    support::init_logs();
    let thinking = common::config::DEFAULT_HEDGE_DELAY * 3;
    let busy = test_server::Pod::start(PodOptions::new("busy"))
        .await
        .expect("pod starts");
    let upgrades = Arc::new(AtomicUsize::new(0));
    let counted = upgrades.clone();
    let slow = support::hand_pod(move |mut tcp, accept, _| {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(thinking).await;
            let head = support::switching_protocols_head(&accept);
            if tcp.write_all(&head).await.is_ok() {
                // Held open until the test ends.
                std::future::pending::<()>().await;
            }
        }
    })
    .await;
    let slow_url = format!("http://{slow}");
    let balancer = wsbalancer::Balancer::start(support::config(vec![busy.url(), slow_url]))
        .await
        .expect("balancer starts");
    // One connection straight to the busy pod: it reports it, so the slow
    // pod (which reports none) ranks first.
    let (_direct, _) = connect(&format!("ws://{}/ws", busy.addr())).await;
    support::wait_until("the busy pod's report counts it", || {
        balancer
            .registry()
            .snapshots()
            .iter()
            .any(|s| s.pod_name.as_deref() == Some("busy") && s.reported == Some(1))
    })
    .await;

    let started = Instant::now();
    let (_ws, _) = connect(&support::ws_url(&balancer, "/ws")).await;
    let took = started.elapsed();
    assert!(took >= thinking, "answered by the slow pod, after {took:?}");
    assert_eq!(upgrades.load(Ordering::SeqCst), 1, "one upgrade reached it");
    assert_eq!(busy.accepted(), 1, "the busy pod got no duplicate upgrade");
    let scrape = plain_get(balancer.admin_addr(), "/metrics").await;
    let failovers = sample(
        &scrape,
        "wsbalancer_pod_failovers_total",
        &[&format!("pod=\"http://{slow}\"")],
    );
    assert_eq!(failovers, 0.0, "no hedge:\n{scrape}");
}

/// The server side of a client connection accepted by this process's
/// balancer: found among the process's own descriptors by its peer, the
/// client's local address.
fn find_accepted(peer: std::net::SocketAddr) -> Option<std::os::fd::BorrowedFd<'static>> {
    use std::os::fd::BorrowedFd;
    for entry in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
        let Some(fd) = entry
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: a descriptor of this process, borrowed only while the
        // test's connection (which keeps it open) lives.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let socket = socket2::SockRef::from(&borrowed);
        let matches = socket
            .peer_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .is_some_and(|a| a == peer);
        if matches {
            return Some(borrowed);
        }
    }
    None
}

/// [`find_accepted`], waiting (with the deadline) for the balancer to
/// accept the connection.
async fn accepted_for(peer: std::net::SocketAddr) -> std::os::fd::BorrowedFd<'static> {
    let mut found = None;
    support::wait_until("the balancer accepts the connection", || {
        found = find_accepted(peer);
        found.is_some()
    })
    .await;
    found.expect("found once the wait is over")
}

/// A client connected to `addr` and the balancer's end of it.
async fn connect_accepted(
    addr: std::net::SocketAddr,
) -> (TcpStream, std::os::fd::BorrowedFd<'static>) {
    let client = TcpStream::connect(addr).await.expect("connect");
    let accepted = accepted_for(client.local_addr().expect("addr")).await;
    (client, accepted)
}

/// Accepted client sockets carry keepalive and `TCP_USER_TIMEOUT`
/// without a system call each: they inherit them from the listener, which
/// a reload updates for the connections accepted after it.
#[tokio::test]
async fn accepted_sockets_inherit_liveness_and_a_reload_changes_it() {
    support::init_logs();
    let pods = support::pods(1).await;
    let config = support::config(pods.iter().map(test_server::Pod::url).collect());
    let first = common::Config {
        write_timeout: Duration::from_millis(2500),
        tcp_keepalive: Duration::from_secs(7),
        ..config.clone()
    };
    let balancer = wsbalancer::Balancer::start(first.clone())
        .await
        .expect("balancer starts");
    let (client, accepted) = connect_accepted(balancer.listen_addr()).await;
    let socket = socket2::SockRef::from(&accepted);
    assert_eq!(
        socket.tcp_user_timeout().ok().flatten(),
        Some(Duration::from_millis(2500))
    );
    assert!(socket.keepalive().expect("SO_KEEPALIVE"));
    assert_eq!(
        socket.tcp_keepalive_time().ok(),
        Some(Duration::from_secs(7))
    );

    balancer
        .reload(common::Config {
            write_timeout: Duration::from_secs(4),
            tcp_keepalive: Duration::from_secs(11),
            ..first.clone()
        })
        .expect("reload");
    let (later, accepted) = connect_accepted(balancer.listen_addr()).await;
    let socket = socket2::SockRef::from(&accepted);
    assert_eq!(
        socket.tcp_user_timeout().ok().flatten(),
        Some(Duration::from_secs(4))
    );
    assert_eq!(
        socket.tcp_keepalive_time().ok(),
        Some(Duration::from_secs(11))
    );

    // Keepalive turned off by a reload is off for the next connections.
    balancer
        .reload(common::Config {
            tcp_keepalive: Duration::ZERO,
            ..first
        })
        .expect("reload");
    let (off, accepted) = connect_accepted(balancer.listen_addr()).await;
    assert!(
        !socket2::SockRef::from(&accepted)
            .keepalive()
            .expect("SO_KEEPALIVE")
    );
    drop((client, later, off));
}

/// The second handle on the listening socket (for the liveness a reload
/// sets there) goes with the listener: once a drain starts, a new client
/// is refused at once rather than left in a backlog nobody accepts.
#[tokio::test]
async fn a_drain_refuses_new_clients_at_once() {
    support::init_logs();
    let pods = support::pods(1).await;
    let config = common::Config {
        drain_window: Duration::from_secs(2),
        ..support::config(pods.iter().map(test_server::Pod::url).collect())
    };
    let balancer = wsbalancer::Balancer::start(config)
        .await
        .expect("balancer starts");
    let addr = balancer.listen_addr();
    // A relayed connection keeps the drain going for its window.
    let (mut held, head) = raw_upgrade(addr, "/ws").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let drain = tokio::spawn(balancer.drain());
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "still accepting during the drain: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    assert!(!drain.is_finished(), "refused while the drain still runs");
    let (opcode, _) = raw_frame(&mut held).await;
    assert_eq!(opcode, 0x8, "the held connection is closed by the drain");
    within("the drain ends", drain).await.expect("drain task");
}
