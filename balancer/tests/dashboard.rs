//! The admin dashboard (`/` and `/dashboard`) as a browser sees it: the page
//! is served self-contained, and headless Chromium rendering it against a
//! real balancer in front of real pods shows every pod with its live count,
//! keeps a hostile pod name as text, and says so when the balancer is gone.
//!
//! Chromium is a real child process with a deadline. When no Chromium or
//! Chrome is on PATH, `scripts/install-chromium` installs Debian's package
//! first (set `WSB_TEST_CHROMIUM` to use a browser elsewhere).

mod support;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::selection::Health;
use support::browser::{browser, run_with_deadline};
use support::{DEADLINE, connect, landed_on, plain_get, wait_until, ws_url};
use test_server::{Pod, PodOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;
use wsbalancer::Balancer;

/// A pod name written to break out of the page if it were ever parsed as
/// HTML: an image whose error handler runs, and a script changing the title.
const HOSTILE_NAME: &str = "<img src=x onerror=alert(1)><script>document.title='pwned'</script>";

/// The page's own `<title>`, which only injected script could change.
const TITLE: &str = "<title>wsbalancer dashboard</title>";

/// Longest one Chromium run may take before it is killed.
const BROWSER_DEADLINE: Duration = Duration::from_secs(60);

/// Browser time the page gets before its DOM is dumped: about five polls.
const VIRTUAL_TIME_MS: u32 = 5000;

#[tokio::test]
async fn dashboard_is_served_self_contained_at_root_and_dashboard() {
    let pods = vec![Pod::start(PodOptions::new("pod-0")).await.unwrap()];
    let balancer = support::balancer_for(&pods).await;

    let root = http_get(&balancer, "/").await;
    let dashboard = http_get(&balancer, "/dashboard").await;
    for (path, page) in [("/", &root), ("/dashboard", &dashboard)] {
        assert_eq!(page.status, "HTTP/1.1 200 OK", "{path}");
        assert_eq!(
            page.header("content-type").as_deref(),
            Some("text/html; charset=utf-8"),
            "{path}"
        );
        assert_eq!(
            page.header("cache-control").as_deref(),
            Some("no-store"),
            "{path}"
        );
    }
    assert_eq!(root.body, dashboard.body, "one page at both paths");

    let body = root.body.to_ascii_lowercase();
    assert!(
        body.starts_with("<!doctype html>"),
        "an HTML page: {body:.80}"
    );
    assert!(
        body.contains("balancer-metrics"),
        "the page polls the status"
    );
    for external in [
        "http://",
        "https://",
        "<script src",
        "src=",
        "<link",
        "@import",
        "@font-face",
        "url(",
    ] {
        assert!(
            !body.contains(external),
            "the page must need nothing from elsewhere, found `{external}`"
        );
    }

    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn chromium_shows_live_pods_and_keeps_a_hostile_name_as_text() {
    let browser = browser().await;
    let pods = vec![
        Pod::start(PodOptions::new("pod-a")).await.unwrap(),
        Pod::start(PodOptions::new(HOSTILE_NAME)).await.unwrap(),
        Pod::start(PodOptions::new("pod-c")).await.unwrap(),
    ];
    let balancer = support::balancer_for(&pods).await;
    wait_until("every pod reported and is in rotation", || {
        balancer
            .registry()
            .snapshots()
            .iter()
            .all(|s| s.reported == Some(0) && s.health == Health::Healthy)
    })
    .await;

    // Two real connections through the balancer, so that some pods show a
    // count and at least one shows 0; `x-pod-name` says which is which.
    let url = ws_url(&balancer, "/ws");
    let mut held = Vec::new();
    let mut landed = Vec::new();
    for _ in 0..2 {
        let (ws, response) = connect(&url).await;
        landed.push(landed_on(&response));
        held.push(ws);
    }
    let expected: Vec<u64> = pods
        .iter()
        .map(|p| landed.iter().filter(|n| *n == p.name()).count() as u64)
        .collect();
    assert_eq!(expected.iter().sum::<u64>(), 2);
    wait_until("the balancer's status has the pods' counts", || {
        let snapshots = balancer.registry().snapshots();
        snapshots.len() == pods.len()
            && snapshots
                .iter()
                .zip(&expected)
                .all(|(s, &n)| s.reported == Some(n) && s.effective == n)
    })
    .await;

    let dom = dump_dom(
        &browser,
        &format!("http://{}/dashboard", balancer.admin_addr()),
    )
    .await;

    assert!(
        status_text(&dom).starts_with("updated"),
        "status after a good poll: {}",
        status_text(&dom)
    );
    assert_eq!(text_of(&dom, r#"id="total-connections""#), "2");
    for (pod, &count) in pods.iter().zip(&expected) {
        let row = pod_row(&dom, &pod.url());
        assert_eq!(text_of(row, r#"class="pod-name""#), escape_text(pod.name()));
        assert_eq!(text_of(row, r#"class="pod-url""#), pod.url());
        assert_eq!(
            text_of(row, r#"class="pod-connections""#),
            count.to_string(),
            "{} shows its count",
            pod.name()
        );
        assert!(
            row.contains(r#"data-healthy="true""#),
            "{} is in rotation",
            pod.name()
        );
    }
    assert!(expected.contains(&0) && expected.iter().any(|&n| n > 0));

    // The hostile name is text in the DOM, and nothing it held came alive.
    assert!(dom.contains(&escape_text(HOSTILE_NAME)));
    assert!(!dom.contains(HOSTILE_NAME));
    assert!(!dom.contains("<img"), "no image element was created");
    assert!(dom.contains(TITLE), "the title is the page's own");

    drop(held);
    support::wait_all_closed(&pods, &balancer).await;
    balancer.shutdown(DEADLINE).await;
}

#[tokio::test]
async fn chromium_says_when_the_balancer_is_gone_and_keeps_retrying() {
    let browser = browser().await;
    // A stand-in for an admin listener that answers one poll and then dies:
    // every later poll gets its connection closed without an answer, as a
    // stopped balancer behind a proxy would.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let polls = Arc::new(AtomicUsize::new(0));
    let counter = polls.clone();
    let server = tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let head = read_head(&mut tcp).await;
                let body = if head.starts_with("GET / ") {
                    // The page the admin listener serves, byte for byte.
                    include_str!("../src/observe/dashboard.html").to_owned()
                } else if head.starts_with("GET /balancer-metrics ") {
                    if counter.fetch_add(1, Ordering::SeqCst) > 0 {
                        return;
                    }
                    r#"{"timestamp":"2025-01-01T00:00:00.000Z","services":[{"url":"http://10.0.0.1:8080","connections":7,"podName":"last-known","state":"ready","stale":false,"reportAge":0.2,"healthy":true,"relayed":3}],"totalConnections":7,"agentsConnections":7}"#.to_owned()
                } else {
                    return;
                };
                let kind = if body.starts_with('{') {
                    "application/json"
                } else {
                    "text/html; charset=utf-8"
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(answer.as_bytes()).await;
            });
        }
    });

    let dom = dump_dom(&browser, &format!("http://{addr}/")).await;
    server.abort();

    let status = status_text(&dom);
    assert!(
        status.starts_with("cannot reach the balancer"),
        "status once the balancer is gone: {status}"
    );
    assert!(dom.contains(r#"data-state="error""#), "{status}");
    assert!(
        status.contains("last successful update"),
        "the figures are marked as old: {status}"
    );
    // The last good figures stay on screen.
    let row = pod_row(&dom, "http://10.0.0.1:8080");
    assert_eq!(text_of(row, r#"class="pod-name""#), "last-known");
    assert_eq!(text_of(row, r#"class="pod-connections""#), "7");
    assert_eq!(text_of(&dom, r#"id="total-connections""#), "7");
    let polls = polls.load(Ordering::SeqCst);
    assert!(polls >= 3, "the page kept polling: {polls} polls");
}

/// A response read off the admin listener.
struct HttpResponse {
    status: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

async fn http_get(balancer: &Balancer, path: &str) -> HttpResponse {
    let text = plain_get(balancer.admin_addr(), path).await;
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Reads a request head (the stand-in's requests have no body).
async fn read_head(tcp: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Runs headless Chromium on `url` and returns the DOM it serialises once
/// the page has had [`VIRTUAL_TIME_MS`] of (virtual) time.
async fn dump_dom(browser: &Path, url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut command = Command::new(browser);
    command
        .arg("--headless")
        .args(support::browser::HEADLESS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
        .arg("--dump-dom")
        .arg(url);
    // A page blocked in a JavaScript dialog (an injected `alert()`) never
    // finishes: the deadline turns that into a failure.
    let output = run_with_deadline(
        command,
        BROWSER_DEADLINE,
        "chromium (a page stuck in an alert() dialog never finishes)",
    )
    .await;
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && dom.contains("</html>"),
        "chromium failed ({}); stdout: {dom}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    dom
}

/// Text content of the first element whose start tag holds `marker`,
/// up to the next tag (as serialised: `<`, `>` and `&` escaped).
fn text_of<'a>(html: &'a str, marker: &str) -> &'a str {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("no element with {marker} in:\n{html}"));
    let rest = &html[at..];
    let start = rest.find('>').expect("end of the start tag") + 1;
    let end = rest[start..].find('<').expect("a tag after the text");
    &rest[start..start + end]
}

fn status_text(dom: &str) -> &str {
    text_of(dom, r#"id="status""#)
}

/// The markup of the pod row for `url`, up to the next row.
fn pod_row<'a>(dom: &'a str, url: &str) -> &'a str {
    dom.split(r#"<div class="pod" "#)
        .skip(1)
        .find(|row| row.contains(&format!(r#"data-url="{url}""#)))
        .unwrap_or_else(|| panic!("no pod row for {url} in:\n{dom}"))
}

/// How an HTML serialiser writes `text` as a text node.
fn escape_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
