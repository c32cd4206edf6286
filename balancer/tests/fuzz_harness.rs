//! The fuzz targets' bodies (`fuzz/src/lib.rs`) on stable, in every test
//! run: each on inputs made by mutating well-formed seeds at random (a
//! fixed PRNG seed, so a failure reproduces), and the fuzz crate itself
//! checked to build, since it is outside the workspace. `cargo +nightly
//! fuzz run TARGET` runs the same bodies under libFuzzer; any crash it
//! finds becomes a case in `regressions` below.

#[path = "../../fuzz/src/lib.rs"]
mod bodies;
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::frame::{OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_TEXT, encode_frame};

/// xorshift64*: small, fast, and the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that mean something to one parser or another.
const INTERESTING: &[u8] = b"\r\n :,;\t\0\x7f\x80\xff/?#=\"'{}[]-+.0123456789aZ\\";

/// `seed` with a few random edits: bytes changed, inserted, deleted,
/// duplicated, or the end cut off.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if at < out.len() => out[at] = rng.next() as u8,
            1 => out.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            2 if at < out.len() => {
                let end = (at + 1 + rng.below(8)).min(out.len());
                out.drain(at..end);
            }
            3 if at < out.len() => {
                let end = (at + 1 + rng.below(32)).min(out.len());
                let copy = out[at..end].to_vec();
                let to = rng.below(out.len() + 1);
                out.splice(to..to, copy);
            }
            4 => out.truncate(at),
            5 => {
                let bytes: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
                out.splice(at..at, bytes);
            }
            _ if at < out.len() => out[at] ^= 1 << rng.below(8),
            _ => {}
        }
    }
    out
}

/// Runs `body` on every seed, then on `rounds` mutations of them.
fn run(name: &str, body: fn(&[u8]), seeds: &[Vec<u8>], rounds: usize) {
    let started = Instant::now();
    let mut rng = Rng(0x5EED_0000 ^ name.len() as u64 ^ (seeds.len() as u64) << 32);
    for seed in seeds {
        body(seed);
    }
    for _ in 0..rounds {
        let seed = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, seed);
        body(&input);
    }
    eprintln!("{name}: {rounds} inputs in {:?}", started.elapsed());
}

/// A split seed byte, then frames of every kind.
fn frame_seeds() -> Vec<Vec<u8>> {
    let mask = Some([0x12, 0x34, 0x56, 0x78]);
    let mut close = 1001u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"bye");
    let mut streams = vec![
        [
            encode_frame(true, OP_TEXT, b"hello", mask),
            encode_frame(true, OP_PING, b"", None),
            encode_frame(true, OP_CLOSE, &close, mask),
        ]
        .concat(),
        [
            encode_frame(false, OP_BINARY, &[7; 200], None),
            encode_frame(true, OP_PING, b"p", mask),
            encode_frame(true, OP_CONTINUATION, &[8; 130], None),
            encode_frame(true, OP_CLOSE, &close, None),
            encode_frame(true, OP_CLOSE, &4000u16.to_be_bytes(), None),
        ]
        .concat(),
        [
            encode_frame(true, OP_CLOSE, b"", mask),
            encode_frame(true, OP_TEXT, &[1; 300], mask),
        ]
        .concat(),
        encode_frame(true, OP_CLOSE, b"\x03", None),
    ];
    for (i, stream) in streams.iter_mut().enumerate() {
        stream.insert(0, i as u8 * 37);
    }
    streams
}

fn report_seeds() -> Vec<Vec<u8>> {
    [
        &br#"{"agentsConnections": 12}"#[..],
        br#"{"agentsConnections":3,"podName":"chat-1","podIP":"10.1.2.3","nodeName":"n","capacity":1000,"state":"drain","x":[1,{"y":null}]}"#,
        br#"{"agentsConnections":18446744073709551615,"state":"maint","capacity":0}"#,
        br#"{"agentsConnections":0,"podName":"\u00e9\ud83d\ude00","state":"warming"}"#,
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}

/// A kind byte (YAML, TOML, JSON by its value modulo 3), then the file.
fn config_seeds() -> Vec<Vec<u8>> {
    let yaml = "wsbalancer:\n  metricPath: \"/metric\"\n  pods: [\"http://backend1:8080\", \"ws://b:1/app\"]\n  \
                tlsVerify: true\n  cacheTTL: \"30s\"\n  dialTimeout: \"10s\"\n  writeTimeout: \"10s\"\n  \
                readTimeout: \"30s\"\n  allowedOrigins: \"https://a.example, https://b.example\"\n  \
                forwardHeaders: {x-env: prod}\n  selection: power-of-two\n  drainCloseCode: 1012\n";
    let toml = "pods = [\"https://10.0.0.5:8443\"]\nmaxConnections = 5000\nhandshakeTimeout = \"250ms\"\n\
                listen = \"127.0.0.1:0\"\nhttpMode = \"reject\"\nslowStart = \"1m 30s\"\n";
    let json = r#"{"wsbalancer": {"pods": "http://a:1,http://b:2", "replicas": 3, "ejectAfter": 1, "maxHandshakeHeaderBytes": 8192, "drainWindow": "1s", "drainTimeout": "5s"}}"#;
    [(0u8, yaml), (1, toml), (2, json)]
        .iter()
        .map(|(kind, text)| [&[*kind][..], text.as_bytes()].concat())
        .collect()
}

fn request_seeds() -> Vec<Vec<u8>> {
    [
        &b"GET /ws?room=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
           Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
           Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\
           Origin: https://app.example.com\r\nCookie: a=b\r\n\r\n\x81\x85frame"[..],
        b"GET / HTTP/1.0\nHost: a\nX-Forwarded-For: 6.6.6.6\nForwarded: for=x\nX-Forwarded-Proto: https\n\
           Connection: Upgrade, X-Hop, Host\nX-Hop: 1\nContent-Length: 0\nTransfer-Encoding: chunked\n\n",
        b"POST /api HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 5\r\n\r\nhello",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}

/// A split seed byte, then a pod's answer.
fn response_seeds() -> Vec<Vec<u8>> {
    [
        &b"\x05HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade, X-Hop\r\n\
           Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\
           x-pod-name: pod-1\r\nX-Hop: 1\r\n\r\n\x81\x02hi"[..],
        b"\x07HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nX-Reason: no\r\n\r\nno way",
        b"\x09HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n\
           5\r\nhello\r\n6;x=1\r\n world\r\n0\r\n\r\n",
        b"\x0bHTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<html>until the end</html>",
        b"\x0dHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
           Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: evil\r\n\r\n",
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}

#[test]
fn fuzz_bodies_hold_on_mutated_inputs() {
    run(
        "frame_tracker",
        bodies::frame_tracker,
        &frame_seeds(),
        300_000,
    );
    run("report", bodies::report, &report_seeds(), 200_000);
    run(
        "request_head",
        bodies::request_head,
        &request_seeds(),
        100_000,
    );
    run(
        "response_head",
        bodies::response_head,
        &response_seeds(),
        100_000,
    );
    run(
        "status_body",
        bodies::status_body,
        &status_body_seeds(),
        100_000,
    );
    run("config", bodies::config, &config_seeds(), 3_000);
}

/// Groups of (size pick, data length, shape, filler) for `status_body`:
/// a pick below 8 is one of the edge sizes, 8 to 15 that many bytes.
fn status_body_seeds() -> Vec<Vec<u8>> {
    [
        &[11, 11, 0, b'a', 12, 5, 1, b'b'][..],
        // A small chunk, then one declaring 2^64 - 1 bytes: the overflow.
        &[11, 11, 0, b'a', 0, 3, 0, b'x'],
        &[4, 0, 2, b'z', 5, 0, 6, b'z'],
        &[2, 0, 9, 0, 3, 7, 11, 1, 6, 0, 0, 0],
    ]
    .iter()
    .map(|s| s.to_vec())
    .collect()
}

/// Inputs that once broke a body (found by `cargo fuzz` or by the test
/// above), kept so they never break it again.
#[test]
fn regressions() {
    // A report past the size limit is refused without being parsed.
    let big = vec![b' '; common::report::MAX_REPORT_BYTES + 1];
    bodies::report(&big);
    assert!(matches!(
        common::Report::parse(&big),
        Err(common::report::ReportError::TooLarge)
    ));
    // A pod's status body whose second chunk declares 2^64 - 1 bytes:
    // `size + 2` overflowed in the chunked decoder and panicked the
    // handshake task.
    let chunked = b"3\r\nabc\r\nffffffffffffffff\r\nxyz\r\n0\r\n\r\n";
    assert_eq!(wsbalancer::wire::decode_chunked(chunked), None);
    bodies::status_body(&[11, 11, 0, b'a', 0, 3, 0, b'x']);
    // A 64-bit frame length with its top bit set.
    bodies::frame_tracker(b"\x00\x82\x7f\x80\x00\x00\x00\x00\x00\x00\x00");
    // A head of as many fields as the parser takes, all forwarded.
    let mut head = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..wsbalancer::wire::MAX_FIELDS {
        head.extend_from_slice(format!("x-{i}: {i}\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    bodies::request_head(&head);
    assert!(matches!(
        wsbalancer::wire::RequestHead::parse(&head),
        wsbalancer::wire::ParsedRequest::Complete(..)
    ));
}

/// Found by `cargo fuzz run config`: a key holding a line break (a YAML
/// complex key, `? `, of folded scalars; a JSON `"a\nb"`) is an unknown
/// key, and the error used to quote it as it was, so the "one line"
/// refusal spanned two. `common::load` now escapes what it quotes.
#[test]
fn a_refused_key_with_a_line_break_stays_on_one_line() {
    bodies::config(b"\xd8?   > \r ?\xae\r ?\xae -Kd > \r ?00b\xae\r  -x\xdc");
    bodies::config(b"\x02{\"a\\nb\": 1}");
}

/// Bound on `cargo check` of the fuzz crate: a first build of its
/// dependencies on a busy two-core machine takes minutes, a later one
/// seconds.
const FUZZ_CHECK_WITHIN: Duration = Duration::from_secs(15 * 60);

/// The fuzz crate lives outside the workspace (libFuzzer wants nightly):
/// this checks on stable that it still builds against the code it fuzzes.
/// Its own target directory, so the check never waits on this test run's
/// lock.
#[test]
fn the_fuzz_crate_builds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = support::run_within(
        Command::new(cargo)
            .args(["check", "--quiet", "--bins", "--lib", "--manifest-path"])
            .arg(root.join("fuzz/Cargo.toml"))
            .env("CARGO_TARGET_DIR", root.join("target/fuzz-check")),
        FUZZ_CHECK_WITHIN,
        "cargo check of fuzz/",
    );
    assert!(
        output.status.success(),
        "cargo check of fuzz/ failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
