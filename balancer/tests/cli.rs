//! The `wsbalancer` binary as a user runs it: bad configs stop the start with
//! exit code 2 and one line naming the key; a good one serves, answers on
//! the admin port and stops cleanly on SIGTERM.

mod support;

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::{DEADLINE, connect, landed_on, pods};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_wsbalancer");

/// Runs the binary to completion; returns (exit code, stdout, stderr).
async fn output(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    // Only what the test sets: a developer's WSB_* must not change results.
    cmd.args(args).env_clear().stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = support::output_within(&mut cmd, DEADLINE, &format!("wsbalancer {args:?}")).await;
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the binary to completion; returns (exit code, stderr).
async fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let args: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    let (code, _, stderr) = output(&args, env).await;
    (code, stderr)
}

#[tokio::test]
async fn invalid_config_exits_2_naming_the_key() {
    let ok = ["--pods", "http://127.0.0.1:1"];
    /// Flags, environment, and the key the error must name.
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--pods", "ftp://x:1"], vec![], "pods"),
        (vec![], vec![], "pods"),
        (vec!["--cache-ttl", "0s"], vec![], "cacheTTL"),
        (vec!["--dial-timeout", "soon"], vec![], "dialTimeout"),
        (vec!["--listen", "nowhere"], vec![], "listen"),
        (vec![], vec![("WSB_READ_TIMEOUT", "forever")], "readTimeout"),
        (vec!["--eject-after", "x"], vec![], "ejectAfter"),
        (vec!["--tls-verify", "maybe"], vec![], "tlsVerify"),
        (vec!["--selection", "fastest"], vec![], "selection"),
        (vec!["--pods", "http://a:1,http://a:1"], vec![], "pods"),
    ];
    for (mut args, env, key) in cases {
        if !args.contains(&"--pods") && key != "pods" {
            args.extend(ok);
        }
        let (code, stderr) = run(&args, &env).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(&format!("`{key}`")),
            "{args:?} should name {key}: {stderr}"
        );
    }
}

#[tokio::test]
async fn config_file_with_unknown_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsb.yaml");
    std::fs::write(
        &file,
        "wsbalancer:\n  pods: [\"http://a:1\"]\n  cachTTL: \"3s\"\n",
    )
    .unwrap();
    let (code, stderr) = run(&["--config", file.to_str().unwrap()], &[]).await;
    assert_eq!(code, 2);
    assert!(
        stderr.contains("`cachTTL`") && stderr.contains("unknown key"),
        "{stderr}"
    );
}

/// One raw HTTP GET on the admin port.
async fn admin_get(addr: &str, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_string(&mut out))
        .await
        .expect("admin answers")
        .unwrap();
    out
}

#[tokio::test]
async fn serves_then_stops_on_sigterm() {
    let pods = pods(2).await;
    let urls: Vec<String> = pods.iter().map(|p| p.url()).collect();
    let mut process = support::Process::start([
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--cache-ttl",
        "500ms",
        "--drain-window",
        "200ms",
        "--pods",
        &urls.join(","),
    ])
    .await;
    let field = |name: &str| process.field(name);
    let (listen, admin) = (field("listen"), field("admin"));

    let (mut ws, response) = connect(&format!("ws://{listen}/ws")).await;
    assert!(landed_on(&response).starts_with("pod-"));
    ws.send(Message::text("through a process")).await.unwrap();
    let echo = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::text("through a process"));

    assert!(
        admin_get(&admin, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let status = admin_get(&admin, "/balancer-metrics").await;
    assert!(status.contains("\"totalConnections\""), "{status}");
    assert!(status.contains(&urls[0]), "{status}");

    process.signal(libc::SIGTERM);
    // The drain closed the relayed connection with 1001 (going away).
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(frame) = message {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await;
    assert_eq!(closed, Ok(Some(1001)), "client got a Close 1001");
    drop(ws);
    let status = tokio::time::timeout(DEADLINE, process.child.wait())
        .await
        .unwrap_or_else(|_| panic!("wsbalancer still running {DEADLINE:?} after SIGTERM"))
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// Runs `wsbalancer --check-config FILE` plus `args`; returns (exit code,
/// stdout, stderr).
async fn check_config(
    file: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut all = vec![std::ffi::OsStr::new("--check-config"), file.as_os_str()];
    all.extend(args.iter().map(std::ffi::OsStr::new));
    output(&all, env).await
}

#[tokio::test]
async fn check_config_prints_the_effective_config_which_loads_back_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsb.yaml");
    std::fs::write(
        &file,
        "wsbalancer:\n  pods: [\"http://backend1:8080\", \"https://backend2:8443/chat\"]\n  \
         cacheTTL: \"90s\"\n  dialTimeout: \"250ms\"\n  forwardHeaders:\n    \
         Authorization: \"Bearer s3cret-token\"\n    X-Team: chat\n",
    )
    .unwrap();
    // Environment and flags are layered on top, as for a start.
    let (code, printed, stderr) =
        check_config(&file, &["--replicas", "3"], &[("WSB_READ_TIMEOUT", "45s")]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    let effective: serde_yaml::Value = serde_yaml::from_str(&printed).unwrap();
    let config = &effective["wsbalancer"];
    for (key, expected) in [
        // From the file, in humantime form.
        ("cacheTTL", "1m 30s"),
        ("dialTimeout", "250ms"),
        // Defaults filled in.
        ("writeTimeout", "10s"),
        ("metricPath", "/metric"),
        ("adminListen", "127.0.0.1:9090"),
        ("drainTimeout", "30s"),
        // Environment and flag.
        ("readTimeout", "45s"),
    ] {
        assert_eq!(config[key].as_str(), Some(expected), "{key} in:\n{printed}");
    }
    assert_eq!(config["replicas"].as_u64(), Some(3), "{printed}");
    assert_eq!(config["tlsVerify"].as_bool(), Some(true), "{printed}");
    assert_eq!(
        config["pods"][1].as_str(),
        Some("https://backend2:8443/chat")
    );
    // A credential in forwardHeaders is not printed; a plain value is.
    assert!(!printed.contains("s3cret"), "{printed}");
    assert_eq!(config["forwardHeaders"]["X-Team"].as_str(), Some("chat"));
    assert!(printed.contains("Authorization"), "{printed}");

    // Fed back (without the environment and flag, which it now holds), it
    // prints the same.
    let again = dir.path().join("effective.yaml");
    std::fs::write(&again, &printed).unwrap();
    let (code, reprinted, stderr) = check_config(&again, &[], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(reprinted, printed);
}

#[tokio::test]
async fn check_config_of_an_invalid_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    // File body (under `wsbalancer:`), and the key the error must name.
    let cases = [
        ("  pods: [\"http://a:1\"]\n  cacheTTL: \"0s\"\n", "cacheTTL"),
        ("  pods: [\"http://a:1\"]\n  cachTTL: \"3s\"\n", "cachTTL"),
        ("  pods: [\"ftp://a:1\"]\n", "pods"),
        ("  metricPath: \"/metric\"\n", "pods"),
        (
            "  pods: [\"http://a:1\"]\n  drainWindow: \"30s\"\n  drainTimeout: \"30s\"\n",
            "drainTimeout",
        ),
    ];
    for (body, key) in cases {
        let file = dir.path().join("wsb.yaml");
        std::fs::write(&file, format!("wsbalancer:\n{body}")).unwrap();
        let (code, stdout, stderr) = check_config(&file, &[], &[]).await;
        assert_eq!(code, 2, "{body}: {stderr}");
        assert!(stdout.is_empty(), "nothing printed for {body}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains(&format!("`{key}`")),
            "{body} should name {key}: {stderr}"
        );
    }
    // A flag is checked the same way.
    let file = dir.path().join("ok.yaml");
    std::fs::write(&file, "wsbalancer:\n  pods: [\"http://a:1\"]\n").unwrap();
    let (code, _, stderr) = check_config(&file, &["--selection", "fastest"], &[]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`selection`"), "{stderr}");
}

#[tokio::test]
async fn help_lists_every_key_flag_from_the_table() {
    use common::config::keys::{Kind, TABLE};
    let (code, help, stderr) = output(&[std::ffi::OsStr::new("--help")], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    for key in TABLE {
        let Some(flag) = key.flag else { continue };
        let usage = match key.kind {
            Kind::Bool => format!("--{} [<{}>]", flag.long, flag.value_name),
            _ => format!("--{} <{}>", flag.long, flag.value_name),
        };
        assert!(help.contains(&usage), "{usage} in:\n{help}");
        let line = key.help().unwrap_or_default();
        assert!(help.contains(&line), "{line:?} in:\n{help}");
    }
    for fixed in [
        "-c, --config <FILE>",
        "--check-config <FILE>",
        "--log-level <LEVEL>",
        "--log-format <LOG_FORMAT>",
    ] {
        assert!(help.contains(fixed), "{fixed} in:\n{help}");
    }
    // File (or environment) only, as before.
    for none in ["--forward-headers", "--discovery", "--watch-config"] {
        assert!(!help.contains(none), "{none} in:\n{help}");
    }
}

#[tokio::test]
async fn a_bare_boolean_flag_means_true() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsb.yaml");
    std::fs::write(&file, "wsbalancer:\n  pods: [\"http://a:1\"]\n").unwrap();
    let args = ["--tls-verify", "false", "--trust-forwarded-headers"];
    let (code, printed, stderr) = check_config(&file, &args, &[]).await;
    assert_eq!(code, 0, "{stderr}");
    let effective: serde_yaml::Value = serde_yaml::from_str(&printed).unwrap();
    let config = &effective["wsbalancer"];
    assert_eq!(config["tlsVerify"].as_bool(), Some(false), "{printed}");
    assert_eq!(
        config["trustForwardedHeaders"].as_bool(),
        Some(true),
        "{printed}"
    );
    // And a number given as a flag is a number.
    let (code, printed, stderr) = check_config(&file, &["--eject-after", "7"], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(printed.contains("ejectAfter: 7"), "{printed}");
}
