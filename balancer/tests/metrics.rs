//! `/metrics` on the admin listener, scraped during real traffic: real pods
//! (test-server), a real balancer on port 0 and real WebSocket clients.
//! Every assertion reads one sample, found by its name and exact label set
//! in the parsed exposition, and waits for it with a deadline.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::PodState;
use futures_util::{SinkExt, StreamExt};
use support::{DEADLINE, config, connect, init_logs, landed_on, plain_get, pods, ws_url};
use test_server::Pod;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use wsbalancer::Balancer;

/// One scrape of `/metrics`, parsed.
struct Exposition {
    /// The body as served, for failure messages.
    text: String,
    /// Every sample: name, labels, value.
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Exposition {
    /// Parses the Prometheus text format (comments skipped).
    fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|line| parse_sample(line).unwrap_or_else(|| panic!("bad sample line {line:?}")))
            .collect();
        Exposition {
            text: text.to_owned(),
            samples,
        }
    }

    /// The value of the sample named `name` with exactly `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == wanted)
            .map(|(_, _, v)| *v)
    }

    /// Like [`Exposition::get`], 0 when the sample is absent (a counter not
    /// yet created).
    fn count(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

/// `name{k="v",...} value` or `name value`.
fn parse_sample(line: &str) -> Option<(String, BTreeMap<String, String>, f64)> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().ok()?,
    };
    let Some((name, rest)) = series.split_once('{') else {
        return Some((series.to_owned(), BTreeMap::new(), value));
    };
    let mut labels = BTreeMap::new();
    let mut chars = rest.chars();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            break;
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut label = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => label.push('\n'),
                    c => label.push(c),
                },
                '"' => break,
                c => label.push(c),
            }
        }
        labels.insert(key, label);
        match chars.next()? {
            ',' => continue,
            '}' => break,
            _ => return None,
        }
    }
    Some((name.to_owned(), labels, value))
}

/// Status line, headers and body of `GET path` on the admin listener.
async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String, String) {
    let response = plain_get(admin, path).await;
    let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// Scrapes `/metrics` once.
async fn scrape(admin: SocketAddr) -> Exposition {
    let (status, head, body) = admin_get(admin, "/metrics").await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    Exposition::parse(&body)
}

/// Scrapes until `condition` holds; panics with the last scrape after
/// [`DEADLINE`].
async fn wait_for(
    admin: SocketAddr,
    what: &str,
    condition: impl Fn(&Exposition) -> bool,
) -> Exposition {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let metrics = scrape(admin).await;
        if condition(&metrics) {
            return metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last scrape:\n{}",
            metrics.text
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Closes from the client with `code` and reads until the connection ends.
async fn close_with(ws: &mut support::Ws, code: u16) {
    ws.close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: "test".into(),
    }))
    .await
    .expect("close sent");
    while let Some(Ok(_)) = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("closed in time")
    {}
}

const ACTIVE: &str = "wsbalancer_pod_connections_active";
const OPENED: &str = "wsbalancer_pod_connections_opened_total";
const FAILED: &str = "wsbalancer_pod_connections_failed_total";
const CLOSED: &str = "wsbalancer_pod_connections_closed_total";
const FAILOVERS: &str = "wsbalancer_pod_failovers_total";
const BYTES: &str = "wsbalancer_relayed_bytes_total";
const MESSAGES: &str = "wsbalancer_relayed_messages_total";
const HANDSHAKES: &str = "wsbalancer_handshake_duration_seconds_count";
const DURATIONS: &str = "wsbalancer_connection_duration_seconds_count";

#[tokio::test]
async fn traffic_through_pod_2_moves_pod_2s_series_and_the_totals() {
    let pods = pods(2).await;
    let balancer = support::balancer_for(&pods).await;
    let admin = balancer.admin_addr();
    let (url_1, url_2) = (pods[0].url(), pods[1].url());
    let pod_1 = [("pod", url_1.as_str()), ("pod_name", "pod-0")];
    let pod_2 = [("pod", url_2.as_str()), ("pod_name", "pod-1")];
    // Pod 1 drains: new connections go to pod 2, and its state shows it.
    pods[0].set_state(PodState::Drain);
    let drain_state = [pod_1[0], pod_1[1], ("state", "drain")];
    wait_for(admin, "pod 1 reported draining", |m| {
        m.get("wsbalancer_pod_state", &drain_state) == Some(1.0)
    })
    .await;

    let (mut ws, response) = connect(&ws_url(&balancer, "/ws")).await;
    assert_eq!(landed_on(&response), "pod-1");
    let metrics = wait_for(admin, "pod 2's active gauge at 1", |m| {
        m.get(ACTIVE, &pod_2) == Some(1.0)
    })
    .await;
    assert_eq!(metrics.get(ACTIVE, &pod_1), Some(0.0), "{}", metrics.text);
    assert_eq!(metrics.get(OPENED, &[("pod", &url_2)]), Some(1.0));
    assert_eq!(metrics.get(OPENED, &[("pod", &url_1)]), Some(0.0));
    assert_eq!(metrics.get("wsbalancer_connections_active", &[]), Some(1.0));
    assert_eq!(metrics.get(HANDSHAKES, &[]), Some(1.0), "{}", metrics.text);
    assert_eq!(metrics.get("wsbalancer_pod_healthy", &pod_2), Some(1.0));
    assert_eq!(metrics.get("wsbalancer_pod_healthy", &pod_1), Some(0.0));
    assert!(
        metrics
            .get("wsbalancer_pod_connections_reported", &pod_2)
            .is_some()
    );
    assert!(
        metrics
            .get("wsbalancer_pod_report_age_seconds", &pod_2)
            .is_some_and(|age| age >= 0.0)
    );

    // Bytes and messages move while the connection is open, by at least
    // what was sent: 3 text messages of 100 bytes, echoed.
    let before = scrape(admin).await;
    let payload = "x".repeat(100);
    for _ in 0..3 {
        ws.send(Message::text(payload.clone())).await.unwrap();
        let echo = tokio::time::timeout(DEADLINE, ws.next()).await.unwrap();
        assert_eq!(echo.unwrap().unwrap(), Message::text(payload.clone()));
    }
    let up = [("direction", "client_to_pod")];
    let down = [("direction", "pod_to_client")];
    // A masked client frame of 100 bytes has a 6-byte header; a pod's, 2.
    wait_for(admin, "bytes and messages counted live", |m| {
        m.count(MESSAGES, &up) >= before.count(MESSAGES, &up) + 3.0
            && m.count(MESSAGES, &down) >= before.count(MESSAGES, &down) + 3.0
            && m.count(BYTES, &up) >= before.count(BYTES, &up) + 3.0 * 106.0
            && m.count(BYTES, &down) >= before.count(BYTES, &down) + 3.0 * 102.0
    })
    .await;

    close_with(&mut ws, 1000).await;
    let closed_normally = [
        ("pod", url_2.as_str()),
        ("code", "1000"),
        ("side", "client"),
    ];
    let metrics = wait_for(admin, "the close counted", |m| {
        m.get(CLOSED, &closed_normally) == Some(1.0)
    })
    .await;
    assert_eq!(metrics.get(DURATIONS, &[]), Some(1.0), "{}", metrics.text);
    wait_for(admin, "pod 2's gauge back to 0", |m| {
        m.get(ACTIVE, &pod_2) == Some(0.0)
            && m.get("wsbalancer_connections_active", &[]) == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn a_pod_removed_by_a_reload_is_counted_until_its_last_connection_ends() {
    let pods = pods(2).await;
    let (a, b) = (&pods[0], &pods[1]);
    let balancer = Balancer::start(config(vec![a.url()])).await.unwrap();
    let admin = balancer.admin_addr();
    let url_a = a.url();
    let on_a = [("pod", url_a.as_str()), ("pod_name", "pod-0")];
    let (mut ws, response) = connect(&ws_url(&balancer, "/ws")).await;
    assert_eq!(landed_on(&response), "pod-0");
    wait_for(admin, "a's gauge at 1", |m| {
        m.get(ACTIVE, &on_a) == Some(1.0)
    })
    .await;

    let report = balancer.reload(config(vec![b.url()])).expect("valid");
    assert_eq!(report.removed, [a.url()]);
    // The connection still runs on a: the per-pod gauges still add up to
    // the total.
    let metrics = scrape(admin).await;
    assert_eq!(metrics.get(ACTIVE, &on_a), Some(1.0), "{}", metrics.text);
    assert_eq!(metrics.get("wsbalancer_connections_active", &[]), Some(1.0));

    close_with(&mut ws, 1000).await;
    wait_for(admin, "a's series gone with its last connection", |m| {
        m.get(ACTIVE, &on_a).is_none() && m.get("wsbalancer_connections_active", &[]) == Some(0.0)
    })
    .await;
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn a_refused_dial_counts_as_failed_refused_and_a_failover() {
    init_logs();
    let pods = pods(1).await;
    let (_reserved, dead) = support::dead_addr();
    let dead = format!("http://{dead}");
    let mut cfg = config(vec![dead.clone(), pods[0].url()]);
    // Never ejected by its failed polls: the dead pod stays a candidate.
    cfg.eject_after = 1000;
    let balancer = Balancer::start(cfg).await.unwrap();
    let admin = balancer.admin_addr();
    let url = ws_url(&balancer, "/ws");
    // Once the live pod counts one connection, the dead one (no report,
    // none of ours) has the lower load and is dialled first.
    let (_first, _) = connect(&url).await;
    let live_url = pods[0].url();
    let live = [("pod", live_url.as_str()), ("pod_name", "pod-0")];
    wait_for(admin, "the live pod's count at 1", |m| {
        m.get("wsbalancer_pod_connections_effective", &live) == Some(1.0)
    })
    .await;
    let (_second, response) = connect(&url).await;
    assert_eq!(landed_on(&response), "pod-0");

    let refused = [("pod", dead.as_str()), ("reason", "refused")];
    let metrics = wait_for(admin, "a refused dial counted", |m| {
        m.count(FAILED, &refused) >= 1.0
    })
    .await;
    assert_eq!(
        metrics.count(FAILOVERS, &[("pod", &dead)]),
        metrics.count(FAILED, &refused),
        "every failed dial moved on to the live pod\n{}",
        metrics.text
    );
    assert_eq!(metrics.get(OPENED, &[("pod", &dead)]), Some(0.0));
    assert_eq!(metrics.get(OPENED, &[("pod", &live_url)]), Some(2.0));
    assert_eq!(metrics.get(HANDSHAKES, &[]), Some(2.0));
    assert!(
        metrics.count("wsbalancer_pod_poll_errors_total", &[("pod", &dead)]) >= 1.0,
        "{}",
        metrics.text
    );
}

#[tokio::test]
async fn close_codes_are_counted_by_class_and_side() {
    let pods = pods(1).await;
    let balancer = support::balancer_for(&pods).await;
    let admin = balancer.admin_addr();
    let url = ws_url(&balancer, "/ws");
    let pod = pods[0].url();

    let (mut ws, _) = connect(&url).await;
    close_with(&mut ws, 4001).await;
    let (mut ws, _) = connect(&url).await;
    close_with(&mut ws, 1000).await;
    // The pod closes this one itself, on command.
    let (mut ws, _) = connect(&url).await;
    ws.send(Message::text("close:4002")).await.unwrap();
    while let Some(Ok(_)) = tokio::time::timeout(DEADLINE, ws.next()).await.unwrap() {}

    let metrics = wait_for(admin, "three closes counted", |m| {
        m.count(DURATIONS, &[]) == 3.0
    })
    .await;
    for (code, side) in [("4xxx", "client"), ("1000", "client"), ("4xxx", "pod")] {
        let labels = [("pod", pod.as_str()), ("code", code), ("side", side)];
        assert_eq!(
            metrics.get(CLOSED, &labels),
            Some(1.0),
            "{labels:?}\n{}",
            metrics.text
        );
    }
    assert_eq!(metrics.get(HANDSHAKES, &[]), Some(3.0));
    assert_eq!(
        metrics.get("wsbalancer_client_connections_accepted_total", &[]),
        Some(3.0)
    );
}

#[tokio::test]
async fn an_idle_connection_closed_by_the_balancer_counts_as_its_close() {
    init_logs();
    let pods = pods(1).await;
    let mut cfg = config(pods.iter().map(Pod::url).collect());
    cfg.read_timeout = Duration::from_millis(200);
    let balancer = Balancer::start(cfg).await.unwrap();
    let (mut ws, _) = connect(&ws_url(&balancer, "/ws")).await;
    // Nothing sent: the balancer closes it with 1001 once idle.
    let frame = loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("no Close: {other:?}"),
        }
    };
    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1001));
    let pod = pods[0].url();
    let labels = [
        ("pod", pod.as_str()),
        ("code", "1001"),
        ("side", "balancer"),
    ];
    wait_for(balancer.admin_addr(), "the idle close counted", |m| {
        m.get(CLOSED, &labels) == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn a_refused_handshake_is_counted_by_status_and_reason() {
    let pods = pods(1).await;
    let balancer = support::balancer_for(&pods).await;
    // An upgrade without a key.
    let answer = support::raw_exchange(
        balancer.listen_addr(),
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let labels = [("status", "400"), ("reason", "invalid")];
    let metrics = wait_for(balancer.admin_addr(), "the refusal counted", |m| {
        m.get("wsbalancer_handshakes_refused_total", &labels) == Some(1.0)
    })
    .await;
    assert_eq!(
        metrics.get(HANDSHAKES, &[]),
        Some(0.0),
        "no upgrade went through"
    );
}

#[tokio::test]
async fn draining_sets_the_gauge_and_readiness_turns_503() {
    init_logs();
    let pods = pods(1).await;
    let mut cfg = config(pods.iter().map(Pod::url).collect());
    // The test closes its connection itself, after looking.
    cfg.drain_window = Duration::from_secs(60);
    cfg.drain_timeout = Duration::from_secs(70);
    let balancer = Balancer::start(cfg).await.unwrap();
    let admin = balancer.admin_addr();
    wait_for(admin, "ready", |m| {
        m.get("wsbalancer_draining", &[]) == Some(0.0)
            && m.count(
                "wsbalancer_pod_healthy",
                &[("pod", &pods[0].url()), ("pod_name", "pod-0")],
            ) == 1.0
    })
    .await;
    let (status, _, body) = admin_get(admin, "/readyz").await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(
        scrape(admin).await.get("wsbalancer_build_info", &version),
        Some(1.0)
    );

    // One open connection keeps the drain (and the admin listener) going.
    let (mut ws, _) = connect(&ws_url(&balancer, "/ws")).await;
    let drain = tokio::spawn(balancer.drain());
    wait_for(admin, "the draining gauge at 1", |m| {
        m.get("wsbalancer_draining", &[]) == Some(1.0)
    })
    .await;
    let (status, _, body) = admin_get(admin, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");

    close_with(&mut ws, 1000).await;
    let report = tokio::time::timeout(DEADLINE, drain)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.left_open, 0);
}

#[tokio::test]
async fn readiness_is_503_and_pods_ejected_when_every_pod_is_down() {
    let mut pods = pods(2).await;
    let balancer = support::balancer_for(&pods).await;
    let admin = balancer.admin_addr();
    let urls: Vec<String> = pods.iter().map(Pod::url).collect();
    wait_for(admin, "both pods healthy", |m| {
        (0..2).all(|i| {
            let name = format!("pod-{i}");
            m.get(
                "wsbalancer_pod_healthy",
                &[("pod", &urls[i]), ("pod_name", &name)],
            ) == Some(1.0)
        })
    })
    .await;
    let (status, _, _) = admin_get(admin, "/readyz").await;
    assert_eq!(status, 200);

    for pod in pods.drain(..) {
        pod.stop().await;
    }
    let metrics = wait_for(admin, "both pods ejected", |m| {
        (0..2).all(|i| {
            let name = format!("pod-{i}");
            m.get(
                "wsbalancer_pod_state",
                &[("pod", &urls[i]), ("pod_name", &name), ("state", "ejected")],
            ) == Some(1.0)
        })
    })
    .await;
    for (i, url) in urls.iter().enumerate() {
        let name = format!("pod-{i}");
        let pod = [("pod", url.as_str()), ("pod_name", name.as_str())];
        assert_eq!(metrics.get("wsbalancer_pod_healthy", &pod), Some(0.0));
        assert!(metrics.count("wsbalancer_pod_poll_errors_total", &[("pod", url)]) >= 1.0);
    }
    let (status, _, body) = admin_get(admin, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("no usable pod"), "{body}");
}

#[tokio::test]
async fn the_status_json_keeps_the_originals_fields_and_order() {
    let pods = pods(3).await;
    let balancer = support::balancer_for(&pods).await;
    let admin = balancer.admin_addr();
    let (_ws, response) = connect(&ws_url(&balancer, "/ws")).await;
    let landed = landed_on(&response);
    let (status, head, body) = admin_get(admin, "/balancer-metrics").await;
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    // The original's fields, nothing else at the top level, in the order
    // the original wrote them (its Go struct's order: `timestamp`,
    // `services`, `totalConnections`, `agentsConnections`; each service
    // `url` then `connections`). serde_json's `Value` sorts keys, so the
    // order is read from the body itself.
    let written = Written::parse(&body);
    assert_eq!(
        written.keys(),
        [
            "timestamp",
            "services",
            "totalConnections",
            "agentsConnections"
        ],
        "{body}"
    );
    let Written::Array(written_services) = written.get("services") else {
        panic!("services is not an array: {body}");
    };
    assert_eq!(written_services.len(), pods.len(), "{body}");
    for service in written_services {
        assert_eq!(
            service.keys()[..2],
            ["url", "connections"],
            "the original's fields first: {body}"
        );
    }
    assert!(
        humantime::parse_rfc3339(json["timestamp"].as_str().expect("a string")).is_ok(),
        "{body}"
    );
    let services = json["services"].as_array().expect("an array");
    // In configuration order, every time.
    let urls: Vec<&str> = services.iter().filter_map(|s| s["url"].as_str()).collect();
    let configured: Vec<String> = pods.iter().map(|p| p.url()).collect();
    assert_eq!(urls, configured);
    let total: u64 = services
        .iter()
        .map(|s| s["connections"].as_u64().expect("a count"))
        .sum();
    assert_eq!(json["totalConnections"].as_u64(), Some(total));
    assert_eq!(json["agentsConnections"], json["totalConnections"]);
    // The extension: who each pod is, its state, and this balancer's share.
    let relayed: u64 = services.iter().filter_map(|s| s["relayed"].as_u64()).sum();
    assert_eq!(relayed, 1, "{body}");
    for service in services {
        for field in ["podName", "state", "healthy", "reportAge", "stale"] {
            assert!(service.get(field).is_some(), "{field} missing: {body}");
        }
        if service["podName"] == landed.as_str() {
            assert_eq!(service["relayed"], 1, "{body}");
        }
    }
}

/// A JSON document as written: objects keep their keys in the order they
/// came (serde_json's `Value` sorts them), values other than objects and
/// arrays are not kept.
enum Written {
    Object(Vec<(String, Written)>),
    Array(Vec<Written>),
    Scalar,
}

impl Written {
    fn parse(body: &str) -> Self {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    }

    /// An object's keys, in order.
    fn keys(&self) -> Vec<&str> {
        match self {
            Written::Object(entries) => entries.iter().map(|(k, _)| k.as_str()).collect(),
            _ => panic!("not an object"),
        }
    }

    /// An object's value for `key`.
    fn get(&self, key: &str) -> &Written {
        match self {
            Written::Object(entries) => entries
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no {key}")),
            _ => panic!("not an object"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Written {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{MapAccess, SeqAccess, Visitor};
        struct Kept;
        impl<'de> Visitor<'de> for Kept {
            type Value = Written;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Written, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Written>()? {
                    entries.push(entry);
                }
                Ok(Written::Object(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Written, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Written::Array(items))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Written, E> {
                Ok(Written::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Written, E> {
                Ok(Written::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Written, E> {
                Ok(Written::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Written, E> {
                Ok(Written::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Written, E> {
                Ok(Written::Scalar)
            }
            fn visit_unit<E>(self) -> Result<Written, E> {
                Ok(Written::Scalar)
            }
        }
        deserializer.deserialize_any(Kept)
    }
}
