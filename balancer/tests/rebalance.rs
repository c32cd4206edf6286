//! Live rebalancing with real pods, two real balancer replicas and clients
//! that reconnect when closed: a scale-up evens out, even pods shed
//! nothing, a draining pod is emptied over several paced rounds, and every
//! shed connection ends with the rebalancing Close toward both sides.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Config, PodState};
use futures_util::StreamExt;
use support::{DEADLINE, config, connect, init_logs, pods, wait_until};
use test_server::Pod;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use wsbalancer::Balancer;

/// Close codes the clients got, shared by all of them.
type Codes = Arc<Mutex<Vec<u16>>>;

/// A config with rebalancing on, paced at `rate` per second per replica,
/// no minimum age.
fn rebalancing(pods: &[&Pod], rate: u32) -> Config {
    Config {
        rebalance: true,
        rebalance_rate: rate,
        rebalance_min_age: Duration::ZERO,
        ..config(pods.iter().map(|p| p.url()).collect())
    }
}

/// A client that, like a real one, reconnects whenever its connection is
/// closed, recording the close code it got.
fn reconnecting(url: String, codes: Codes) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let (mut ws, _) = connect(&url).await;
            while let Some(message) = ws.next().await {
                match message {
                    Ok(Message::Close(frame)) => {
                        let code = frame.map_or(1005, |f| u16::from(f.code));
                        codes.lock().unwrap().push(code);
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
    })
}

/// Each pod's live count.
fn counts(pods: &[Pod]) -> Vec<u64> {
    pods.iter().map(Pod::connections).collect()
}

/// Two replicas with the same config.
async fn two_replicas(config: Config) -> [Balancer; 2] {
    init_logs();
    let a = Balancer::start(config.clone()).await.expect("starts");
    let b = Balancer::start(config).await.expect("starts");
    [a, b]
}

/// `n` reconnecting clients, spread over both replicas.
fn clients(replicas: &[Balancer; 2], n: usize, codes: &Codes) -> Vec<JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let url = format!("ws://{}/ws", replicas[i % 2].listen_addr());
            reconnecting(url, codes.clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scale_up_evens_out_and_1012_reaches_both_sides() {
    let pods = pods(3).await;
    let replicas = two_replicas(rebalancing(&[&pods[0], &pods[1]], 50)).await;
    let codes = Codes::default();
    let clients = clients(&replicas, 30, &codes);
    wait_until("30 connections on the first two pods", || {
        pods[0].connections() + pods[1].connections() == 30
    })
    .await;

    // The third pod joins both replicas; no client arrives.
    for replica in &replicas {
        replica
            .reload(rebalancing(&[&pods[0], &pods[1], &pods[2]], 50))
            .expect("valid");
    }
    wait_until("the three pods even (10 each, give or take 1)", || {
        let counts = counts(&pods);
        counts.iter().sum::<u64>() == 30 && counts.iter().all(|c| (9..=11).contains(c))
    })
    .await;
    let moved = codes.lock().unwrap().clone();
    assert!(
        moved.iter().all(|&code| code == 1012),
        "every shed connection got 1012: {moved:?}"
    );
    // The minimum is 10 moves; a few more from rounding and reports in
    // flight, never a churn of everything.
    assert!(
        (9..=18).contains(&moved.len()),
        "moved {} connections for 10 needed",
        moved.len()
    );
    let pod_side: Vec<u16> = pods[..2].iter().flat_map(Pod::close_codes).collect();
    assert!(
        pod_side.iter().filter(|&&c| c == 1012).count() >= moved.len().min(9),
        "the pods got 1012 too: {pod_side:?}"
    );
    for client in clients {
        client.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn even_pods_shed_nothing() {
    let pods = pods(3).await;
    let replicas = two_replicas(rebalancing(&[&pods[0], &pods[1], &pods[2]], 50)).await;
    let codes = Codes::default();
    let clients = clients(&replicas, 30, &codes);
    // Two replicas placing at once may land a pod or two off; within the
    // tolerance (10% of 10) the pods count as even.
    let even = |pods: &[Pod]| {
        let counts = counts(pods);
        counts.iter().sum::<u64>() == 30 && counts.iter().all(|c| (9..=11).contains(c))
    };
    wait_until("30 connections, 10 per pod give or take 1", || even(&pods)).await;
    let before = codes.lock().unwrap().len();
    // Several rounds (one a second) with nothing to do. Nothing is awaited
    // here but time: the assertion is that nothing happens in it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(even(&pods), "still even: {:?}", counts(&pods));
    assert_eq!(
        codes.lock().unwrap().len(),
        before,
        "nothing shed once even"
    );
    for client in clients {
        client.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_pod_is_emptied_over_paced_rounds() {
    let pods = pods(2).await;
    // Two a second per replica: each replica's 6 on the draining pod take
    // three rounds.
    let replicas = two_replicas(rebalancing(&[&pods[0], &pods[1]], 2)).await;
    let codes = Codes::default();
    let clients = clients(&replicas, 24, &codes);
    wait_until("24 connections, about 12 per pod", || {
        let counts = counts(&pods);
        counts.iter().sum::<u64>() == 24 && counts.iter().all(|c| (11..=13).contains(c))
    })
    .await;

    pods[0].set_state(PodState::Drain);
    // Each replica sheds 2 a round (3 at most, from rounding and jitter);
    // watch the count step down.
    let mut seen = vec![pods[0].connections()];
    let deadline = tokio::time::Instant::now() + DEADLINE * 2;
    while pods[0].connections() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the draining pod still holds {:?}",
            counts(&pods)
        );
        let now = pods[0].connections();
        if seen.last() != Some(&now) {
            seen.push(now);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen.len() >= 4,
        "emptied in paced steps, not at once: {seen:?}"
    );
    wait_until("all 24 on the other pod", || counts(&pods) == [0, 24]).await;
    assert!(codes.lock().unwrap().iter().all(|&code| code == 1012));
    for client in clients {
        client.abort();
    }
}
