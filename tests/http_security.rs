//! The HTTP API on a network nobody trusts (#10): bearer tokens per route class, HTTPS, and
//! the limits that keep a node up whatever an unauthenticated client sends, against a real
//! node in this process.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::{TestNode, primary_config, wait_for};
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NS: &str = "ns";
/// Generous: the limits under test are a fraction of a second, the machine may be loaded.
const DEADLINE: Duration = Duration::from_secs(20);

const READ_OLD: &str = "r-0ld-7c1f0e2a9b";
const READ_NEW: &str = "r-n3w-5d88aa01e4";
const WRITE: &str = "w-5ecret-93be1f7d";

/// Everything every node in this test binary logs, at TRACE.
static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();

struct LogSink;

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.get().unwrap().lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        LOGS.set(Mutex::new(Vec::new())).unwrap();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| LogSink)
            .init();
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.get().unwrap().lock().unwrap()).into_owned()
}

/// A primary with `[auth]` read and write token files (two read tokens: a rotation), plus
/// `extra` config.
async fn guarded_node(dir: &Path, extra: &str) -> TestNode {
    std::fs::write(
        dir.join("read.tokens"),
        format!("# rotating: old, new\n{READ_OLD}\n{READ_NEW}\n"),
    )
    .unwrap();
    std::fs::write(dir.join("write.tokens"), format!("{WRITE}\n")).unwrap();
    let text = format!(
        "{}{extra}[auth]\nread_token_file = {:?}\nwrite_token_file = {:?}\n",
        primary_config(dir, &[NS]),
        dir.join("read.tokens"),
        dir.join("write.tokens"),
    );
    TestNode::start(&text, dir).await
}

async fn send(
    c: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Option<String>, serde_json::Value) {
    let mut req = c.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("response to {url} is not JSON ({e}): {text:?}"));
    (status, challenge, json)
}

#[tokio::test]
async fn each_route_class_needs_its_own_token() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let node = guarded_node(dir.path(), "").await;
    let c = reqwest::Client::new();
    let put_body = r#"{"value":"YQ=="}"#;
    let batch_body = r#"{"operation":"put","items":[{"key":"b","value":"Yg=="}]}"#;

    // Writes (and the admin routes, last: fence stops writes).
    let writes: [(Method, &str, Option<&str>, u16); 5] = [
        (Method::PUT, "/api/v1/ns/kv/k", Some(put_body), 200),
        (Method::POST, "/api/v1/ns/kv/batch", Some(batch_body), 200),
        (Method::DELETE, "/api/v1/ns/kv/b", None, 200),
        // A primary's namespace cannot be promoted: the handler ran, the token was accepted.
        (Method::POST, "/api/v1/ns/promote", None, 409),
        (Method::POST, "/api/v1/ns/fence", None, 200),
    ];
    // Reads: every GET but /health and /ready.
    let reads = [
        "/api/v1/ns/kv/k",
        "/api/v1/ns/offset",
        "/api/v1/ns/stats",
        "/api/v1/ns/changes?since=0",
        "/metrics",
    ];
    // Probes stay open (before the fence below makes /ready 503).
    for path in ["/health", "/ready"] {
        let (s, _, j) = send(&c, Method::GET, &node.url(path), None, None).await;
        assert_eq!(s, 200, "{path}: {j}");
    }
    for (method, path, body, ok) in writes {
        let url = node.url(path);
        let what = format!("{method} {path}");
        let (s, challenge, j) = send(&c, method.clone(), &url, None, body).await;
        assert_eq!(
            (s, challenge.as_deref()),
            (401, Some("Bearer")),
            "{what}: {j}"
        );
        assert!(
            j["error"].as_str().unwrap().contains("write_token_file"),
            "{what}: {j}"
        );
        let (s, _, j) = send(&c, method.clone(), &url, Some("not-a-token"), body).await;
        assert_eq!(s, 401, "{what} with an unknown token: {j}");
        let (s, _, j) = send(&c, method.clone(), &url, Some(READ_NEW), body).await;
        assert_eq!(s, 403, "{what} with a read token: {j}");
        assert!(
            j["error"].as_str().unwrap().contains("may not write"),
            "{j}"
        );
        let (s, _, j) = send(&c, method, &url, Some(WRITE), body).await;
        assert_eq!(s, ok, "{what} with the write token: {j}");
    }
    for path in reads {
        let url = node.url(path);
        let (s, challenge, j) = send(&c, Method::GET, &url, None, None).await;
        assert_eq!(
            (s, challenge.as_deref()),
            (401, Some("Bearer")),
            "{path}: {j}"
        );
        let (s, _, j) = send(&c, Method::GET, &url, Some(WRITE), None).await;
        assert_eq!(s, 403, "{path} with the write token: {j}");
        assert!(
            j["error"].as_str().unwrap().contains("read_token_file"),
            "{j}"
        );
        // Both tokens of the file work side by side (rotation).
        for token in [READ_OLD, READ_NEW] {
            let resp = c.get(&url).bearer_auth(token).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{path} with a read token");
        }
    }
    // The value written above, read with a read token.
    let (s, _, j) = send(
        &c,
        Method::GET,
        &node.url("/api/v1/ns/kv/k"),
        Some(READ_OLD),
        None,
    )
    .await;
    assert_eq!((s, j["value"].as_str()), (200, Some("YQ==")), "{j}");
    node.stop().await;
}

#[tokio::test]
async fn tokens_never_reach_the_logs() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let node = guarded_node(dir.path(), "").await;
    let c = reqwest::Client::new();
    let wrong = "w-wr0ng-guess-11aa";
    for token in [WRITE, READ_OLD, wrong] {
        for (method, path) in [
            (Method::PUT, "/api/v1/ns/kv/k"),
            (Method::GET, "/api/v1/ns/kv/k"),
        ] {
            let _ = send(
                &c,
                method,
                &node.url(path),
                Some(token),
                Some(r#"{"value":"YQ=="}"#),
            )
            .await;
        }
        // A header hyper itself refuses (the token in a malformed request).
        let mut raw = TcpStream::connect(node.node.http_addr()).await.unwrap();
        let req = format!(
            "GET /api/v1/ns/kv/k HTTP/1.1\r\nauthorization: Bearer {token}\r\ncontent-length: x\r\n\r\n"
        );
        raw.write_all(req.as_bytes()).await.unwrap();
        let (status, _) = read_response(&mut raw).await;
        assert_eq!(status, 400);
    }
    node.stop().await;
    let logs = logs();
    assert!(logs.contains("HTTP listening"), "the capture works");
    for token in [WRITE, READ_OLD, READ_NEW, wrong] {
        assert!(!logs.contains(token), "a token is in the logs");
    }
}

/// Rotation without a restart: the node re-reads a token file that changed; a file that
/// becomes invalid keeps the tokens read before. (Catches: token files read only at startup;
/// an empty or half-written file accepted, locking every client out.)
#[tokio::test]
async fn a_changed_token_file_is_read_again_without_a_restart() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let node = guarded_node(dir.path(), "").await;
    let c = reqwest::Client::new();
    let url = node.url("/api/v1/ns/kv/k");
    let put = async |token: &str| {
        send(
            &c,
            Method::PUT,
            &url,
            Some(token),
            Some(r#"{"value":"YQ=="}"#),
        )
        .await
        .0
    };
    assert_eq!(put(WRITE).await, 200);
    const NEXT: &str = "next-write-token-0123456789";
    // The new token next to the old one: both work once the file is read again.
    std::fs::write(
        dir.path().join("write.tokens"),
        format!("{WRITE}\n{NEXT}\n"),
    )
    .unwrap();
    wait_for(
        Duration::from_secs(20),
        "the new token accepted",
        async || (put(NEXT).await == 200).then_some(()),
    )
    .await;
    assert_eq!(put(WRITE).await, 200, "the old token still works meanwhile");
    // The old line removed: only the new token works.
    std::fs::write(dir.path().join("write.tokens"), format!("{NEXT}\n")).unwrap();
    wait_for(
        Duration::from_secs(20),
        "the old token refused",
        async || (put(WRITE).await == 401).then_some(()),
    )
    .await;
    // A file emptied (half-written, or by mistake): the tokens read before stay in force, and
    // the log says so (naming the file, never a token).
    std::fs::write(dir.path().join("write.tokens"), "# nothing yet\n").unwrap();
    let path = dir.path().join("write.tokens").display().to_string();
    let said = wait_for(
        Duration::from_secs(20),
        "the emptied file noticed",
        async || {
            logs()
                .lines()
                .find(|l| l.contains(&path) && l.contains("stay in force"))
                .map(str::to_owned)
        },
    )
    .await;
    assert!(said.contains("WARN") && !said.contains(NEXT), "{said}");
    assert_eq!(
        put(NEXT).await,
        200,
        "an emptied file keeps the tokens it had"
    );
    node.stop().await;
}

#[tokio::test]
async fn a_missing_token_file_or_half_a_certificate_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[auth]\nwrite_token_file = {:?}\n",
        primary_config(dir.path(), &[NS]),
        dir.path().join("missing.tokens")
    );
    let config = ferry::config::Config::parse(&text, Path::new("t.toml")).unwrap();
    let listeners = ferry::node::Listeners::bind(&config).await.unwrap();
    let err = ferry::node::Node::start(config, ferry::node::Mode::Primary, listeners)
        .await
        .err()
        .expect("a missing token file stops startup")
        .to_string();
    assert!(err.contains("missing.tokens"), "{err}");

    let text = format!(
        "{}[http_config]\ncert_path = \"/x/cert.pem\"\n",
        primary_config(dir.path(), &[NS])
    );
    let err = ferry::config::Config::parse(&text, Path::new("t.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cert_path and key_path"), "{err}");
}

/// A CA, and a certificate for localhost signed by it: (CA PEM, cert PEM, key PEM).
fn test_certificate() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test]
async fn https_serves_the_api_with_a_certificate() {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;

    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificate();
    std::fs::write(dir.path().join("cert.pem"), &cert).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key).unwrap();
    let extra = format!(
        "[http_config]\ncert_path = {:?}\nkey_path = {:?}\n",
        dir.path().join("cert.pem"),
        dir.path().join("key.pem")
    );
    let node = guarded_node(dir.path(), &extra).await;
    let port = node.node.http_addr().port();

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let https = async |request: String| {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut s = connector.connect(name, tcp).await.expect("TLS handshake");
        s.write_all(request.as_bytes()).await.unwrap();
        read_response(&mut s).await
    };
    let put = format!(
        "PUT /api/v1/ns/kv/k HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {WRITE}\r\ncontent-type: application/json\r\ncontent-length: 16\r\n\r\n{{\"value\":\"YQ==\"}}"
    );
    let (s, body) = https(put).await;
    assert_eq!(s, 200, "{body}");
    let get = |token: &str| {
        format!(
            "GET /api/v1/ns/kv/k HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\r\n"
        )
    };
    let (s, body) = https(get(READ_NEW)).await;
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((s, j["value"].as_str()), (200, Some("YQ==")), "{j}");
    assert_eq!(https(get("nope")).await.0, 401);

    // No plaintext on the TLS port: a plain request gets no HTTP answer.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/health"))
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plaintext answered on an HTTPS port: {plain:?}"
    );
    node.stop().await;
}

/// Reads one response up to the end of its head plus `content-length` bytes (or EOF):
/// (status, body). Fails after [`DEADLINE`].
async fn read_response(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> (u16, String) {
    let mut buf = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        loop {
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len {
                    let status = head[9..12].parse().unwrap();
                    return (status, body.to_owned());
                }
            }
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before a whole response: {text:?}");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("no response before the deadline")
}

/// Waits until the server closes `s` (EOF or reset), failing after [`DEADLINE`].
async fn wait_closed(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(DEADLINE, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: still open after {DEADLINE:?}"));
    got
}

fn limits(lines: &str) -> String {
    format!("[http_config]\n{lines}\n")
}

async fn node_with(dir: &Path, http_config: &str) -> TestNode {
    TestNode::start(
        &format!("{}{}", primary_config(dir, &[NS]), limits(http_config)),
        dir,
    )
    .await
}

#[tokio::test]
async fn idle_and_slowloris_connections_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(
        dir.path(),
        "header_read_timeout = \"300ms\"\nidle_timeout = \"500ms\"",
    )
    .await;
    let addr = node.node.http_addr();

    // Idle: one request answered, then nothing; the node closes the keep-alive connection.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut idle).await.0, 200);
    let rest = wait_closed(&mut idle, "an idle keep-alive connection").await;
    assert!(rest.is_empty());

    // Slowloris: a header line every 50 ms, never the blank line that ends the head.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    let trickle = async {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        for i in 0u64.. {
            tick.tick().await;
            if slow
                .write_all(format!("x-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let closed = tokio::time::timeout(DEADLINE, trickle).await;
    assert!(
        closed.is_ok(),
        "a slowloris connection is still open after {DEADLINE:?}"
    );

    // A connection that sends nothing at all.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    wait_closed(&mut silent, "a connection that sends nothing").await;

    // The node still serves.
    let (s, _) = common::call(
        &reqwest::Client::new(),
        Method::GET,
        &node.url("/health"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    node.stop().await;
}

#[tokio::test]
async fn a_body_that_never_finishes_is_answered_408() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), "body_read_timeout = \"300ms\"").await;
    let mut s = TcpStream::connect(node.node.http_addr()).await.unwrap();
    s.write_all(b"PUT /api/v1/ns/kv/k HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"value\":").await.unwrap();
    let (status, body) = read_response(&mut s).await;
    assert_eq!(status, 408, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        json["error"]
            .as_str()
            .unwrap()
            .contains("body_read_timeout"),
        "{json}"
    );
    assert_eq!(node.head(NS), 0, "nothing was written");
    node.stop().await;
}

#[tokio::test]
async fn over_the_connection_cap_new_clients_are_refused_fast_then_served() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(
        dir.path(),
        "max_connections = 4\nheader_read_timeout = \"10m\"\nidle_timeout = \"10m\"",
    )
    .await;
    let addr = node.node.http_addr();

    // Four clients hold every slot (each was answered once, so each is surely accepted).
    let mut flood = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut s).await.0, 200);
        flood.push(s);
    }
    // The fifth is answered 503 and closed, long before any timeout of this config.
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let got = wait_closed(&mut s, "a connection over the cap").await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        let body: serde_json::Value =
            serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("max_connections"),
            "{body}"
        );
    }
    // The flood ends: a normal client is served again.
    drop(flood);
    let c = reqwest::Client::new();
    wait_for(DEADLINE, "a client served after the flood", async || {
        let resp = c.get(node.url("/health")).send().await.ok()?;
        (resp.status() == 200).then_some(())
    })
    .await;
    node.stop().await;
}

#[tokio::test]
async fn errors_before_the_handlers_answer_json() {
    let dir = tempfile::tempdir().unwrap();
    let node = node_with(dir.path(), "max_header_bytes = 200000").await;
    let addr = node.node.http_addr();
    let long_uri = format!("GET /{} HTTP/1.1\r\nhost: x\r\n\r\n", "a".repeat(70_000));
    let big_header = format!(
        "GET /health HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(210_000)
    );
    let cases: [(&str, &[u8], u16, &str); 4] = [
        (
            "bad Content-Length",
            b"PUT /api/v1/ns/kv/k HTTP/1.1\r\nhost: x\r\ncontent-length: 12abc\r\n\r\n",
            400,
            "Content-Length",
        ),
        (
            "garbage request line",
            b"HELLO\r\n\r\n",
            400,
            "malformed HTTP request",
        ),
        ("URI over 64 KiB", long_uri.as_bytes(), 414, "URI too long"),
        (
            "headers over max_header_bytes",
            big_header.as_bytes(),
            431,
            "max_header_bytes",
        ),
    ];
    for (what, request, status, needle) in cases {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The node may answer and close before it has read everything: ignore a failed write.
        let _ = s.write_all(request).await;
        let (got, body) = read_response(&mut s).await;
        assert_eq!(got, status, "{what}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body:?}"));
        assert!(
            json["error"].as_str().unwrap().contains(needle),
            "{what}: {json}"
        );
    }

    // HEAD gets the headers of the JSON error (HTTP forbids a body in the answer to HEAD).
    let resp = reqwest::Client::new()
        .head(node.url("/api/v1/ns/kv/k"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["content-type"], "application/json");

    // An unknown namespace is named, boundedly, and the node's own are not listed.
    let c = reqwest::Client::new();
    let (s, j) = common::call(&c, Method::GET, &node.url("/api/v1/nope/stats"), None).await;
    assert_eq!(s, 404);
    let msg = j["error"].as_str().unwrap();
    assert!(
        msg.contains("\"nope\"") && !msg.contains(&format!("\"{NS}\"")) && !msg.contains(" ns"),
        "{msg}"
    );
    let huge = "n".repeat(20_000);
    let (s, j) = common::call(
        &c,
        Method::GET,
        &node.url(&format!("/api/v1/{huge}/stats")),
        None,
    )
    .await;
    assert_eq!(s, 404);
    assert!(j["error"].as_str().unwrap().len() < 400, "{j}");
    // Whatever a handler's message quotes (here serde's, naming an unknown operation), it is
    // cut short.
    let batch = format!(r#"{{"operation":"{}","items":[]}}"#, "o".repeat(20_000));
    let url = node.url(&format!("/api/v1/{NS}/kv/batch"));
    let (s, j) = common::call(&c, Method::POST, &url, Some(&batch)).await;
    assert_eq!(s, 400, "{j}");
    let msg = j["error"].as_str().unwrap();
    assert!(
        msg.len() < 1200 && msg.contains("message cut"),
        "{}",
        msg.len()
    );
    node.stop().await;
}

#[tokio::test]
async fn a_public_address_without_tokens_or_tls_is_warned_about_once() {
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[grpc_config]\nport = 0\n[notifier_config.{NS}]\nbind_port = 0\n",
        primary_config(dir.path(), &[NS]).replace("127.0.0.1", "0.0.0.0")
    );
    let node = TestNode::start(&text, dir.path()).await;
    let lines_with = |needle: &str| -> Vec<String> {
        logs()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    };
    let port = node.node.http_addr().port();
    let warnings = lines_with(&format!("HTTP API listens on 0.0.0.0:{port}"));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert!(w.contains("WARN") && w.contains("SECURITY"), "{w}");
    for exposed in ["write_token_file", "read_token_file", "clear text"] {
        assert!(w.contains(exposed), "the warning says what is exposed: {w}");
    }
    // The replication stream and the notifiers are said once each too.
    let grpc = node.node.grpc_addr().unwrap().port();
    let warnings = lines_with(&format!("gRPC replication listens on 0.0.0.0:{grpc}"));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = &warnings[0];
    assert!(w.contains("WARN") && w.contains("SECURITY"), "{w}");
    for exposed in ["replication_token_file", "clear text"] {
        assert!(w.contains(exposed), "the warning says what is exposed: {w}");
    }
    let zmq = node.node.notifier_endpoint(NS).unwrap().to_owned();
    let warnings = lines_with(&format!("{NS}={zmq}"));
    let warnings: Vec<_> = warnings.iter().filter(|l| l.contains("SECURITY")).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("ZeroMQ"), "{}", warnings[0]);
    node.stop().await;
}
