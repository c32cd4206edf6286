//! Helpers shared by the hostile-input tests (`hostile_clients.rs`,
//! `hostile_pods.rs`): a watch on panics, the admin endpoints read as a
//! user would read them, and the check that the balancer still serves a
//! normal connection.

#![allow(dead_code)]

use std::sync::{Mutex, Once, PoisonError};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use wsbalancer::Balancer;

use crate::support::{self, DEADLINE};

/// Every panic of this test binary: (thread name, message).
static PANICS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Records every panic from now on (the default report still prints).
/// Each `#[tokio::test]` runs the balancer's tasks on its own
/// current-thread runtime, on the test's own thread, so a panic in any of
/// them is recorded under the test's thread name, even though tokio
/// catches it and only ends that task.
pub fn watch_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current().name().unwrap_or("?").to_owned();
            PANICS
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((thread, info.to_string()));
            default(info);
        }));
    });
}

/// Fails when anything panicked on this test's thread: a balancer task
/// that died quietly would otherwise go unnoticed.
pub fn assert_no_panics() {
    let me = std::thread::current().name().unwrap_or("?").to_owned();
    let mine: Vec<String> = PANICS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|(thread, _)| *thread == me)
        .map(|(_, message)| message.clone())
        .collect();
    assert!(mine.is_empty(), "panics during the test: {mine:#?}");
}

/// Connects through the balancer, echoes one message and closes; returns
/// the pod it landed on (`x-pod-name`).
pub async fn echo_once(balancer: &Balancer, what: &str) -> String {
    let (mut ws, response) = support::connect(&support::ws_url(balancer, "/ws")).await;
    let text = format!("still serving after {what}");
    ws.send(Message::text(text.clone())).await.expect("send");
    let echoed = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap_or_else(|_| panic!("echo in time after {what}"))
        .expect("stream open")
        .expect("no error");
    assert_eq!(echoed, Message::text(text), "echo after {what}");
    let _ = ws.close(None).await;
    support::landed_on(&response)
}

/// The body of `GET path` on the admin listener.
pub async fn admin_get(balancer: &Balancer, path: &str) -> String {
    let response = support::plain_get(balancer.admin_addr(), path).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{path}: {response}");
    let (_, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    body.to_owned()
}

/// `/balancer-metrics`' entry for the pod at `url`.
pub async fn pod_status(balancer: &Balancer, url: &str) -> serde_json::Value {
    let body = admin_get(balancer, "/balancer-metrics").await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON status");
    status["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["url"] == url)
        .unwrap_or_else(|| panic!("{url} not in {body}"))
        .clone()
}

/// The sum of the Prometheus series called `name` whose labels contain
/// every one of `labels` (`pod="http://..."`), from `/metrics`.
pub async fn counter(balancer: &Balancer, name: &str, labels: &[&str]) -> f64 {
    let text = admin_get(balancer, "/metrics").await;
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
