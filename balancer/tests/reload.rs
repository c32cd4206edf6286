//! Config reload while connections are relayed: a new pod list applies to
//! new connections, the removed pod keeps its relayed connections, and an
//! invalid config is rejected with the key named while the old one serves.
//! Through the library call, and through SIGHUP to a real process.

mod support;

use futures_util::{SinkExt, StreamExt};
use support::{DEADLINE, Ws, config, connect, init_logs, landed_on, pods, wait_until, ws_url};
use tokio_tungstenite::tungstenite::Message;
use wsbalancer::Balancer;

/// Sends `text` and expects it echoed.
async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
    let answer = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("echo in time")
        .expect("open")
        .expect("a message");
    assert_eq!(answer, Message::text(text));
}

#[tokio::test]
async fn a_reload_moves_new_connections_and_keeps_the_old_ones() {
    init_logs();
    let pods = pods(2).await;
    let (a, b) = (&pods[0], &pods[1]);
    let balancer = Balancer::start(config(vec![a.url()])).await.unwrap();
    let url = ws_url(&balancer, "/ws");

    let mut on_a = Vec::new();
    for _ in 0..100 {
        let (ws, response) = connect(&url).await;
        assert_eq!(landed_on(&response), a.name());
        on_a.push(ws);
    }
    wait_until("a holds 100", || a.connections() == 100).await;

    let report = balancer.reload(config(vec![b.url()])).expect("valid");
    assert_eq!(report.added, [b.url()]);
    assert_eq!(report.removed, [a.url()]);
    assert!(report.restart_needed.is_empty(), "{report:?}");

    for (i, ws) in on_a.iter_mut().enumerate() {
        echo(ws, &format!("still here {i}")).await;
    }
    assert_eq!(a.connections(), 100, "none dropped");
    for _ in 0..10 {
        let (mut ws, response) = connect(&url).await;
        assert_eq!(landed_on(&response), b.name());
        echo(&mut ws, "new").await;
    }
    wait_until("b is polled", || {
        balancer.registry().snapshots()[0].reported.is_some()
    })
    .await;

    // An invalid config is refused, naming the key; the old one serves.
    let mut bad = config(vec![b.url()]);
    bad.cache_ttl = std::time::Duration::ZERO;
    let error = balancer.reload(bad).expect_err("invalid");
    assert_eq!(error.key(), Some("cacheTTL"), "{error}");
    assert!(error.to_string().contains("cacheTTL"), "{error}");
    let (mut ws, response) = connect(&url).await;
    assert_eq!(landed_on(&response), b.name());
    echo(&mut ws, "after the rejected reload").await;

    // The removed pod's connections end as usual, and with them the pod.
    for ws in &mut on_a {
        echo(ws, "last").await;
    }
    drop(on_a);
    wait_until("a is left with nothing", || a.connections() == 0).await;
    assert_eq!(balancer.registry().pods().len(), 1);
    assert!(
        balancer
            .registry()
            .pods()
            .iter()
            .all(|p| p.address.url == b.url())
    );
}

/// How the running process learns of the new file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// `kill -HUP`.
    Hangup,
    /// `watchConfig: true` and nothing else.
    Watch,
}

/// Runs the real binary on a config file naming pod A, rewrites the file
/// to name pod B, triggers the reload, and expects new connections on B
/// while the one on A lives on.
async fn reload_a_real_process(trigger: Trigger) {
    let pods = pods(2).await;
    let (a, b) = (&pods[0], &pods[1]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsbalancer.yaml");
    let watch = trigger == Trigger::Watch;
    let write = |pod: &str| {
        let yaml = format!(
            "wsbalancer:\n  pods: [\"{pod}\"]\n  listen: \"127.0.0.1:0\"\n  adminListen: \"127.0.0.1:0\"\n  cacheTTL: \"500ms\"\n  watchConfig: {watch}\n"
        );
        std::fs::write(&file, yaml).unwrap();
    };
    write(&a.url());
    let mut process =
        support::Process::start([std::ffi::OsStr::new("--config"), file.as_os_str()]).await;
    let listen = process.field("listen");
    let url = format!("ws://{listen}/ws");
    let (mut on_a, response) = connect(&url).await;
    assert_eq!(landed_on(&response), a.name());

    write(&b.url());
    if trigger == Trigger::Hangup {
        process.signal(libc::SIGHUP);
    }

    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (mut ws, response) = connect(&url).await;
        echo(&mut ws, "where").await;
        if landed_on(&response) == b.name() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new connections never moved to the new pod"
        );
    }
    echo(&mut on_a, "survived the reload").await;
    assert!(process.child.try_wait().unwrap().is_none(), "still running");
}

#[tokio::test]
async fn sighup_reloads_the_config_file() {
    reload_a_real_process(Trigger::Hangup).await;
}

#[tokio::test]
async fn a_watched_config_file_is_reloaded_when_it_changes() {
    reload_a_real_process(Trigger::Watch).await;
}
