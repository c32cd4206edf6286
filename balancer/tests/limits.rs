//! Pod states and hard limits with real pods: draining pods get no new
//! connections (existing ones stay), full pods and a full balancer answer
//! 503 with `Retry-After` before any upgrade, and slow start holds a pod
//! that came back to a small share.

mod support;

use std::time::Duration;

use common::PodState;
use common::selection::Health;
use support::{DEADLINE, config, connect, init_logs, landed_on, pods, wait_until, ws_url};
use test_server::{Pod, PodOptions};
use tokio_tungstenite::tungstenite::Error as WsError;
use wsbalancer::Balancer;

/// Status and `Retry-After` of a refused upgrade.
async fn refused(url: &str) -> (u16, Option<String>) {
    match support::within("handshake", tokio_tungstenite::connect_async(url)).await {
        Err(WsError::Http(r)) => (
            r.status().as_u16(),
            r.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        ),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok((_, r)) => panic!(
            "expected a refusal, landed on {:?}",
            r.headers().get("x-pod-name")
        ),
    }
}

#[tokio::test]
async fn draining_pod_gets_no_new_connections_and_keeps_its_old_ones() {
    init_logs();
    let pods = pods(2).await;
    let balancer = support::balancer_for(&pods).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect(&ws_url(&balancer, "/ws")).await.0);
    }
    wait_until("4 held", || {
        pods.iter().map(|p| p.connections()).sum::<u64>() == 4
    })
    .await;
    let on_draining = pods[0].connections();

    pods[0].set_state(PodState::Drain);
    wait_until("drain seen", || {
        !balancer.registry().snapshots()[0].accepting
    })
    .await;
    for _ in 0..6 {
        let (ws, response) = connect(&ws_url(&balancer, "/ws")).await;
        assert_eq!(landed_on(&response), "pod-1");
        held.push(ws);
    }
    assert_eq!(
        pods[0].connections(),
        on_draining,
        "existing connections stay"
    );

    pods[1].set_state(PodState::Maint);
    wait_until("maint seen", || {
        !balancer.registry().snapshots()[1].accepting
    })
    .await;
    let (status, retry) = refused(&ws_url(&balancer, "/ws")).await;
    assert_eq!((status, retry.is_some()), (503, true));
    assert_eq!(pods[0].connections() + pods[1].connections(), 10);
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn reported_capacity_and_max_connections_per_pod_are_hard_limits() {
    init_logs();
    let small = Pod::start(PodOptions {
        capacity: Some(2),
        ..PodOptions::new("small")
    })
    .await
    .unwrap();
    let other = Pod::start(PodOptions::new("other")).await.unwrap();
    let mut cfg = config(vec![small.url(), other.url()]);
    cfg.max_connections_per_pod = 3;
    let balancer = Balancer::start(cfg).await.unwrap();
    wait_until("capacity known", || {
        balancer.registry().snapshots()[0].capacity == Some(2)
    })
    .await;

    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect(&ws_url(&balancer, "/ws")).await.0);
    }
    wait_until("2 + 3", || {
        small.connections() == 2 && other.connections() == 3
    })
    .await;
    let (status, retry) = refused(&ws_url(&balancer, "/ws")).await;
    assert_eq!(status, 503);
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(
        small.accepted() + other.accepted(),
        5,
        "no upgrade reached a pod"
    );

    // Room again once a connection ends.
    drop(held.pop());
    wait_until("a slot frees", || {
        small.connections() + other.connections() == 4
    })
    .await;
    held.push(connect(&ws_url(&balancer, "/ws")).await.0);
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn max_connections_caps_the_whole_balancer() {
    init_logs();
    let pods = pods(2).await;
    let mut cfg = config(pods.iter().map(Pod::url).collect());
    cfg.max_connections = 3;
    let balancer = Balancer::start(cfg).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&ws_url(&balancer, "/ws")).await.0);
    }
    let (status, retry) = refused(&ws_url(&balancer, "/ws")).await;
    assert_eq!((status, retry.is_some()), (503, true));
    assert_eq!(pods[0].accepted() + pods[1].accepted(), 3);
    drop(held);
    support::wait_all_closed(&pods, &balancer).await;
    let _back = connect(&ws_url(&balancer, "/ws")).await;
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn a_pod_back_from_ejection_warms_up_slowly() {
    init_logs();
    let warm = Pod::start(PodOptions::new("warm")).await.unwrap();
    // Reserve an address for a pod that is down at first.
    let later_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut cfg = config(vec![warm.url(), format!("http://{later_addr}")]);
    cfg.slow_start = Duration::from_secs(60);
    let balancer = Balancer::start(cfg).await.unwrap();
    wait_until("down pod ejected", || {
        balancer.registry().snapshots()[1].health == Health::Ejected
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(connect(&ws_url(&balancer, "/ws")).await.0);
    }
    let back = Pod::start(PodOptions {
        listen: later_addr,
        ..PodOptions::new("back")
    })
    .await
    .unwrap();
    wait_until("pod back in rotation", || {
        balancer.registry().snapshots()[1].health == Health::Healthy
    })
    .await;
    // Without slow start the empty pod would take all of the next 20. At a
    // few percent of its share it takes only its first one or two.
    let mut landed_back = 0;
    for _ in 0..20 {
        let (ws, response) = connect(&ws_url(&balancer, "/ws")).await;
        landed_back += u32::from(landed_on(&response) == "back");
        held.push(ws);
    }
    assert!(
        (1..=3).contains(&landed_back),
        "back pod took {landed_back} of 20"
    );
    assert!(back.accepted() <= 3);
    balancer.shutdown(DEADLINE).await;
}

/// The status line of an upgrade sent by hand from `source`.
async fn upgrade_from(source: std::net::IpAddr, balancer: &Balancer) -> String {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::new(source, 0)).unwrap();
    let addr = balancer.listen_addr();
    let mut tcp = socket.connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    support::read_response_head(&mut tcp).await
}

#[tokio::test]
async fn a_client_past_rate_limit_gets_429_before_any_dial_and_others_do_not() {
    init_logs();
    let pods = pods(1).await;
    let mut cfg = config(pods.iter().map(Pod::url).collect());
    // One a second: the refused attempt must come within that second,
    // which a slow machine still manages.
    cfg.rate_limit = 1;
    let balancer = Balancer::start(cfg).await.unwrap();
    let first: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let head = upgrade_from(first, &balancer).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let head = upgrade_from(first, &balancer).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 1\r\n"), "{head}");
    // The refusal cost the pod nothing.
    wait_until("1 accepted", || pods[0].accepted() == 1).await;
    // Another address has its own allowance.
    let head = upgrade_from("127.0.0.2".parse().unwrap(), &balancer).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(pods[0].accepted(), 2);
}

/// The status line of an upgrade from 127.0.0.1 (a proxy, when trusted)
/// that carries `X-Forwarded-For: forwarded_for`.
async fn upgrade_forwarded_for(forwarded_for: &str, balancer: &Balancer) -> String {
    use tokio::io::AsyncWriteExt;
    let addr = balancer.listen_addr();
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         X-Forwarded-For: {forwarded_for}\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let head = support::read_response_head(&mut tcp).await;
    head.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_rate_limit_follows_the_last_forwarded_address() {
    init_logs();
    let pods = pods(1).await;
    let mut cfg = config(pods.iter().map(Pod::url).collect());
    cfg.rate_limit = 1;
    cfg.trust_forwarded_headers = true;
    let balancer = Balancer::start(cfg).await.unwrap();
    // Every request comes from the proxy at 127.0.0.1; the proxy appended
    // the client's address last, after whatever the client sent.
    let ok = "HTTP/1.1 101 Switching Protocols";
    let limited = "HTTP/1.1 429 Too Many Requests";
    assert_eq!(
        upgrade_forwarded_for("6.6.6.6, 203.0.113.1", &balancer).await,
        ok
    );
    assert_eq!(
        upgrade_forwarded_for("7.7.7.7, 203.0.113.1", &balancer).await,
        limited,
        "a forged first entry does not make a new client"
    );
    assert_eq!(
        upgrade_forwarded_for("6.6.6.6, 203.0.113.2", &balancer).await,
        ok
    );
    assert_eq!(
        upgrade_forwarded_for("::ffff:203.0.113.2", &balancer).await,
        limited,
        "IPv4-mapped IPv6 is the same client"
    );
    // IPv6 clients by their /64.
    assert_eq!(
        upgrade_forwarded_for("2001:db8:0:7::1", &balancer).await,
        ok
    );
    assert_eq!(
        upgrade_forwarded_for("2001:db8:0:7:ffff::2", &balancer).await,
        limited,
        "the same /64"
    );
    assert_eq!(
        upgrade_forwarded_for("2001:db8:0:8::1", &balancer).await,
        ok
    );
    wait_until("4 upgrades reached the pod", || pods[0].accepted() == 4).await;
    balancer.shutdown(DEADLINE).await;
}

/// One kept-alive HTTP/1.1 connection to the admin listener: it keeps
/// working while the balancer has no descriptor to accept a new one.
struct Admin {
    tcp: tokio::net::TcpStream,
}

impl Admin {
    async fn connect(addr: &str) -> Admin {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("admin");
        Admin { tcp }
    }

    /// `GET path`: the status and the body.
    async fn get(&mut self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n");
        self.tcp.write_all(request.as_bytes()).await.expect("send");
        let head = support::read_response_head(&mut self.tcp).await;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a status in {head}"));
        let length: usize = head
            .to_ascii_lowercase()
            .lines()
            .find_map(|l| l.strip_prefix("content-length: ")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("a length in {head}"));
        let mut body = vec![0u8; length];
        support::within("admin body", self.tcp.read_exact(&mut body))
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The value of the unlabelled series `name` in `/metrics`.
    async fn metric(&mut self, name: &str) -> u64 {
        let (status, text) = self.get("/metrics").await;
        assert_eq!(status, 200);
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
    }
}

#[tokio::test]
async fn out_of_descriptors_clients_get_503_and_readiness_says_why() {
    use std::io::Read;
    init_logs();
    let pods = pods(1).await;
    let mut command = support::Process::command([
        "--pods",
        &pods[0].url(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--cache-ttl",
        "1s",
        // The clients that use up its descriptors only connect.
        "--handshake-timeout",
        "60s",
    ]);
    // The hard limit, which the balancer cannot raise its soft one past.
    const NOFILE: libc::rlim_t = 64;
    // SAFETY: between fork and exec only setrlimit runs, which is
    // async-signal-safe, on a value owned by the closure.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: NOFILE,
                rlim_max: NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut process = support::Process::spawn(command).await;
    let listen: std::net::SocketAddr = process.field("listen").parse().unwrap();
    let mut admin = Admin::connect(&process.field("admin")).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while admin.get("/readyz").await != (200, "ready\n".to_owned()) {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // More idle clients than it has descriptors. Each takes one until its
    // head arrives (never); those past the limit are answered at once.
    let clients: Vec<std::net::TcpStream> = (0..NOFILE + 40)
        .map(|_| std::net::TcpStream::connect(listen).expect("the kernel queues it"))
        .collect();
    let total = clients.len() as u64;
    let (mut accepted, mut refused) = (0, 0);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while accepted + refused < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{accepted} accepted and {refused} refused of {total}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        accepted = admin
            .metric("wsbalancer_client_connections_accepted_total")
            .await;
        refused = admin
            .metric("wsbalancer_out_of_descriptors_refusals_total")
            .await;
    }
    assert!(
        accepted < NOFILE,
        "{accepted} accepted under a limit of {NOFILE}"
    );
    assert!(refused >= 30, "only {refused} refused");
    // The refused ones have their whole answer and their close already.
    let mut answered = 0;
    for mut client in &clients {
        client.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        match client.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && got.is_empty() => continue,
            Err(e) => panic!("{e} after {:?}", String::from_utf8_lossy(&got)),
        }
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{got}"
        );
        answered += 1;
    }
    assert_eq!(answered, refused);

    // The next client, with a real upgrade, gets the same 503.
    let (_tcp, head) = support::raw_upgrade(listen, "/ws").await;
    assert!(
        head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 1\r\n"), "{head}");
    assert!(lower.contains("connection: close\r\n"), "{head}");
    assert_eq!(pods[0].accepted(), 0, "no dial for it");
    let (status, why) = admin.get("/readyz").await;
    assert_eq!(
        (status, why.as_str()),
        (
            503,
            "not ready: out of file descriptors (new clients get 503)\n"
        )
    );
    assert_eq!(
        admin
            .metric("wsbalancer_out_of_descriptors_refusals_total")
            .await,
        refused + 1
    );

    // Once the clients are gone, readiness and upgrades are back, on new
    // admin connections too.
    drop(clients);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let answer = support::plain_get(process.field("admin").parse().unwrap(), "/readyz").await;
        if answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\nready\n") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "still: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut ws, response) = connect(&format!("ws://{listen}/ws")).await;
    assert_eq!(landed_on(&response), pods[0].name());
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text("back")).await.unwrap();
    let echo = support::within("echo", ws.next()).await;
    assert_eq!(echo.unwrap().unwrap(), Message::text("back"));
    assert!(process.child.try_wait().unwrap().is_none(), "still running");
}
