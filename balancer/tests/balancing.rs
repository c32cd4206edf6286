//! Pod choice against real pods: least reported connections first, the
//! balancer's own opens counted between reports, and unreachable pods
//! skipped without the client noticing.

mod support;

use std::collections::HashMap;

use common::selection::Health;
use support::{DEADLINE, config, connect, landed_on, pods, wait_until, ws_url};
use wsbalancer::Balancer;

#[tokio::test]
async fn new_connections_go_to_the_least_loaded_pod_until_even() {
    let pods = pods(3).await;
    // Real connections held directly on the pods: 5, 0 and 2.
    let mut direct = Vec::new();
    for (pod, n) in [(&pods[0], 5), (&pods[2], 2)] {
        for _ in 0..n {
            direct.push(connect(&format!("ws://{}/ws", pod.addr())).await.0);
        }
    }
    wait_until("pods count their direct connections", || {
        pods[0].connections() == 5 && pods[2].connections() == 2
    })
    .await;

    // One report at start, the next one a minute away: every choice below
    // rests on that report plus the balancer's own counting, with no poll
    // racing a handshake.
    let mut cfg = config(pods.iter().map(|p| p.url()).collect());
    cfg.cache_ttl = std::time::Duration::from_secs(120);
    let balancer = Balancer::start(cfg).await.unwrap();
    wait_until("balancer has fresh reports of 5, 0, 2", || {
        let s = balancer.registry().snapshots();
        s.iter().map(|p| p.reported).collect::<Vec<_>>() == [Some(5), Some(0), Some(2)]
            && s.iter().all(|p| p.health == Health::Healthy)
    })
    .await;

    let mut load: HashMap<String, u64> = pods
        .iter()
        .map(|p| (p.name().to_owned(), p.connections()))
        .collect();
    let mut through = Vec::new();
    for i in 0..8 {
        let (ws, response) = connect(&ws_url(&balancer, "/ws")).await;
        let pod = landed_on(&response);
        let least = *load.values().min().unwrap();
        assert_eq!(
            load[&pod], least,
            "connection {i} went to {pod} with loads {load:?}"
        );
        *load.get_mut(&pod).unwrap() += 1;
        through.push(ws);
    }
    wait_until("pods even at 5/5/5", || {
        pods.iter().all(|p| p.connections() == 5)
    })
    .await;
    drop(through);
    drop(direct);
    support::wait_all_closed(&pods, &balancer).await;
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn a_burst_inside_one_ttl_is_spread_by_local_counts() {
    let pods = pods(3).await;
    let mut cfg = config(pods.iter().map(|p| p.url()).collect());
    // Reports are far apart: only the balancer's own counting can spread.
    cfg.cache_ttl = std::time::Duration::from_secs(60);
    let balancer = Balancer::start(cfg).await.unwrap();
    wait_until("first reports", || {
        balancer
            .registry()
            .snapshots()
            .iter()
            .all(|s| s.reported == Some(0))
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..30 {
        held.push(connect(&ws_url(&balancer, "/ws")).await.0);
    }
    wait_until("pods hold all 30", || {
        pods.iter().map(|p| p.connections()).sum::<u64>() == 30
    })
    .await;
    // Without local counts all 30 would land on one pod.
    let counts: Vec<u64> = pods.iter().map(|p| p.connections()).collect();
    let spread = counts.iter().max().unwrap() - counts.iter().min().unwrap();
    assert!(spread <= 1, "{counts:?}");
    drop(held);
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn a_pod_that_is_not_listening_is_skipped() {
    let pods = pods(2).await;
    let (_reserved, dead_addr) = support::dead_addr();
    let dead = format!("http://{dead_addr}");
    let mut urls = vec![dead.clone()];
    urls.extend(pods.iter().map(|p| p.url()));
    let balancer = Balancer::start(config(urls)).await.unwrap();

    // Connect at once, before any poll has found the dead pod out.
    let mut held = Vec::new();
    for _ in 0..20 {
        let (ws, response) = connect(&ws_url(&balancer, "/ws")).await;
        assert!(["pod-0", "pod-1"].contains(&landed_on(&response).as_str()));
        held.push(ws);
    }
    wait_until("pods hold all 20", || {
        pods.iter().map(|p| p.connections()).sum::<u64>() == 20
    })
    .await;
    wait_until("dead pod ejected", || {
        balancer.registry().snapshots()[0].health == Health::Ejected
    })
    .await;
    assert_eq!(balancer.registry().snapshots()[0].relayed, 0);
    drop(held);
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn no_reachable_pod_gives_502_then_503_once_ejected() {
    support::init_logs();
    let (_reserved, dead_addr) = support::dead_addr();
    let balancer = Balancer::start(config(vec![format!("http://{dead_addr}")]))
        .await
        .unwrap();
    let status = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            response.headers().contains_key("retry-after"),
        ),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("a dead pod cannot accept"),
    };
    // Not yet known dead: tried, unreachable, 502.
    let first = support::within(
        "handshake",
        tokio_tungstenite::connect_async(ws_url(&balancer, "/ws")),
    )
    .await;
    assert_eq!(status(first), (502, false));
    wait_until("pod ejected", || {
        balancer.registry().snapshots()[0].health == Health::Ejected
    })
    .await;
    // Known unhealthy: still tried as a last resort, then 503 + Retry-After.
    let later = support::within(
        "handshake",
        tokio_tungstenite::connect_async(ws_url(&balancer, "/ws")),
    )
    .await;
    assert_eq!(status(later), (503, true));
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn a_pod_that_never_answers_is_skipped_after_dial_timeout() {
    support::init_logs();
    let pods = pods(1).await;
    // Accepts TCP, never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let mut cfg = config(vec![silent_url, pods[0].url()]);
    cfg.dial_timeout = std::time::Duration::from_millis(300);
    let balancer = Balancer::start(cfg).await.unwrap();
    let mut landed = HashMap::<String, u32>::new();
    let mut open = Vec::new();
    for _ in 0..4 {
        let (ws, response) = connect(&ws_url(&balancer, "/ws")).await;
        *landed.entry(landed_on(&response)).or_default() += 1;
        open.push(ws);
    }
    assert_eq!(landed.get("pod-0"), Some(&4), "{landed:?}");
    held.abort();
    balancer.shutdown(DEADLINE).await;
}
