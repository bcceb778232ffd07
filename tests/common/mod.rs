//! Shared test helpers: in-process nodes on port 0 in temp dirs, an HTTP client, and an
//! independent checker of namespace files.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ferry::config::Config;
use ferry::node::{Listeners, Mode, Node, NodeError};
use ferry::store::StoreError;
use rusqlite::Connection;

pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    STANDARD.decode(s).unwrap()
}

/// A primary's config text with the given namespaces, rooted in `dir`, HTTP on port 0.
pub fn primary_config(dir: &Path, namespaces: &[&str]) -> String {
    let list: Vec<String> = namespaces.iter().map(|n| format!("{n:?}")).collect();
    format!(
        "http_port = 0\nlisten_ip = \"127.0.0.1\"\n[storage_config]\nbase_dir = {:?}\nnamespaces = [{}]\n",
        dir.display().to_string(),
        list.join(", ")
    )
}

pub fn replica_config(dir: &Path, namespaces: &[&str], upstream: &str, extra: &str) -> String {
    let mut text = primary_config(dir, namespaces);
    let list: Vec<String> = namespaces.iter().map(|n| format!("{n:?}")).collect();
    text.push_str(&format!(
        "[relayer_config.up]\nnamespaces = [{}]\nupstream_address = {upstream:?}\n",
        list.join(", ")
    ));
    for n in namespaces {
        text.push_str(&format!(
            "[notifier_config.{n}]\nbind_port = 0\nhigh_water_mark = 100000\n"
        ));
    }
    text.push_str(extra);
    text
}

/// Starts a node in this process from `config_text`, as `ferry server` (or `replica`) would.
///
/// A start refused because base_dir is locked is tried again for up to 10 s. A node this
/// process just stopped has released its lock, but a child process that another test is
/// spawning at that moment holds a copy of every open descriptor until it execs, the lock
/// file's among them, and a `flock` lock belongs to the open file, so it is held that long.
/// A lock that is never released still fails the test.
pub async fn start_node(mode: Mode, config_text: &str) -> Result<Node, NodeError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let config = Config::parse(config_text, Path::new("test.toml")).unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        match Node::start(config, mode, listeners).await {
            Err(NodeError::Store(StoreError::Locked { .. })) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            other => return other,
        }
    }
}

/// A node running in this process.
pub struct TestNode {
    pub node: Node,
    pub base: String,
    pub dir: PathBuf,
}

impl TestNode {
    pub async fn start(config_text: &str, dir: &Path) -> TestNode {
        TestNode::start_as(Mode::Primary, config_text, dir).await
    }

    pub async fn start_as(mode: Mode, config_text: &str, dir: &Path) -> TestNode {
        let node = start_node(mode, config_text).await.unwrap();
        TestNode {
            base: format!("http://{}", node.http_addr()),
            node,
            dir: dir.to_owned(),
        }
    }

    pub async fn primary(dir: &Path, namespaces: &[&str]) -> TestNode {
        TestNode::start(&primary_config(dir, namespaces), dir).await
    }

    /// A primary that also serves the replication stream (gRPC on `grpc_port`, 0 = any).
    pub async fn primary_with_grpc(dir: &Path, namespaces: &[&str], grpc_port: u16) -> TestNode {
        let text = format!(
            "{}[grpc_config]\nport = {grpc_port}\n",
            primary_config(dir, namespaces)
        );
        TestNode::start(&text, dir).await
    }

    /// A replica of `namespaces` from `upstream` (its gRPC address), each with a ZeroMQ
    /// notifier on a free port; `extra` is appended to the config (e.g. a `[grpc_config]`).
    pub async fn replica(dir: &Path, namespaces: &[&str], upstream: &str, extra: &str) -> TestNode {
        TestNode::start_as(
            Mode::Replica,
            &replica_config(dir, namespaces, upstream, extra),
            dir,
        )
        .await
    }

    pub fn grpc(&self) -> String {
        self.node.grpc_addr().expect("node serves gRPC").to_string()
    }

    pub fn ns(&self, name: &str) -> std::sync::Arc<ferry::store::Namespace> {
        self.node.store().get(name).unwrap().clone()
    }

    /// The log id of namespace `name` in its wire form (what Tail and Snapshot carry).
    pub fn log_id(&self, name: &str) -> String {
        ferry::log::LogId::wire(self.ns(name).log_id().as_ref())
    }

    pub fn head(&self, name: &str) -> i64 {
        self.ns(name).head().seq
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn db(&self, ns: &str) -> PathBuf {
        self.dir.join(format!("{ns}.db"))
    }

    pub async fn stop(self) {
        self.node.shutdown().await;
    }
}

/// Sends a request and returns (status, JSON body).
pub async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_owned());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("response to {url} is not JSON ({e}): {text:?}"));
    (status, json)
}

pub async fn put(
    client: &reqwest::Client,
    node: &TestNode,
    ns: &str,
    key: &str,
    value: &[u8],
) -> i64 {
    let body = serde_json::json!({ "value": b64(value) }).to_string();
    let (status, json) = call(
        client,
        reqwest::Method::PUT,
        &node.url(&format!("/api/v1/{ns}/kv/{key}")),
        Some(&body),
    )
    .await;
    assert_eq!(status, 200, "{json}");
    json["seq"].as_i64().unwrap()
}

/// One row of wal_log, read straight from the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub seq: i64,
    pub txn: i64,
    pub op: String,
    pub key: String,
    pub value: Option<Vec<u8>>,
    pub ts_ms: i64,
    pub crc: i64,
}

pub fn wal_rows(path: &Path) -> Vec<Row> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT seq, txn, op, key, value, ts_ms, crc FROM wal_log ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| {
        Ok(Row {
            seq: r.get(0)?,
            txn: r.get(1)?,
            op: r.get(2)?,
            key: r.get(3)?,
            value: r.get(4)?,
            ts_ms: r.get(5)?,
            crc: r.get(6)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

pub fn kv_rows(path: &Path) -> Vec<(String, Vec<u8>, i64)> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT key, value, seq FROM kv ORDER BY key")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// `meta.base_seq` and `meta.base_crc` of a file: (0, 0) when its log was never pruned.
pub fn base(path: &Path) -> (i64, u32) {
    let conn = Connection::open(path).unwrap();
    let get = |name: &str| -> i64 {
        conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
            r.get::<_, String>(0)
        })
        .map(|v| v.parse().unwrap())
        .unwrap_or(0)
    };
    (get("base_seq"), get("base_crc") as u32)
}

/// Checks a namespace file from the outside: seqs dense from the base + 1 (1 when never
/// pruned), every crc equal to the chain recomputed here from the base's crc (independently of
/// ferry's own code), txn groups well formed, and kv equal to replaying wal_log — exactly when
/// the log is whole, and for every key the log touches when it was pruned (the other keys then
/// must be older than the base). Returns the number of entries.
pub fn verify_file(path: &Path) -> usize {
    let rows = wal_rows(path);
    let (base_seq, base_crc) = base(path);
    let mut prev_crc = base_crc;
    let mut replay = std::collections::BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(
            r.seq,
            base_seq + i as i64 + 1,
            "seq is not dense at row {i}"
        );
        assert!(r.txn <= r.seq && r.txn >= 1, "bad txn {r:?}");
        if r.txn != r.seq && i > 0 {
            assert_eq!(rows[i - 1].txn, r.txn, "txn group not contiguous at {r:?}");
        }
        let value = r.value.clone().unwrap_or_default();
        let mut h = crc32fast::Hasher::new();
        h.update(&prev_crc.to_le_bytes());
        h.update(&r.seq.to_le_bytes());
        h.update(&r.txn.to_le_bytes());
        h.update(&[if r.op == "put" { 0 } else { 1 }]);
        h.update(&(r.key.len() as u32).to_le_bytes());
        h.update(r.key.as_bytes());
        h.update(&(value.len() as u32).to_le_bytes());
        h.update(&value);
        h.update(&r.ts_ms.to_le_bytes());
        let crc = h.finalize();
        assert_eq!(r.crc, crc as i64, "crc chain broken at seq {}", r.seq);
        prev_crc = crc;
        match r.op.as_str() {
            "put" => {
                replay.insert(r.key.clone(), Some((value, r.seq)));
            }
            "delete" => {
                replay.insert(r.key.clone(), None);
            }
            other => panic!("unknown op {other}"),
        }
    }
    let kv: Vec<_> = kv_rows(path);
    if base_seq == 0 {
        let expected: Vec<_> = replay
            .into_iter()
            .filter_map(|(k, v)| v.map(|(v, s)| (k, v, s)))
            .collect();
        assert_eq!(kv, expected, "kv differs from the replay of wal_log");
    } else {
        for (k, v, s) in &kv {
            match replay.get(k) {
                Some(Some((rv, rs))) => {
                    assert_eq!((rv, rs), (v, s), "kv of {k:?} differs from the replay")
                }
                Some(None) => panic!("{k:?} is in kv but the log deleted it"),
                None => assert!(
                    *s <= base_seq,
                    "{k:?} has seq {s} after the base {base_seq} but the log does not write it"
                ),
            }
        }
        for (k, v) in &replay {
            if v.is_some() {
                assert!(kv.iter().any(|(kk, _, _)| kk == k), "{k:?} missing from kv");
            }
        }
    }
    rows.len()
}

/// Polls `f` until it returns Some, failing after `timeout`.
pub async fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `replica` has applied everything `primary` has in `ns`.
pub async fn wait_synced(primary: &TestNode, replica: &TestNode, ns: &str) {
    let want = primary.head(ns);
    wait_for(
        Duration::from_secs(60),
        &format!("replica to reach seq {want} of {ns}"),
        async || (replica.head(ns) >= want).then_some(()),
    )
    .await;
}

/// The two files hold the same log, state and identity.
pub fn assert_same_files(a: &Path, b: &Path) {
    assert_eq!(wal_rows(a), wal_rows(b), "wal_log differs");
    assert_eq!(kv_rows(a), kv_rows(b), "kv differs");
    assert_eq!(log_id(a), log_id(b), "log_id differs");
    verify_file(b);
}

pub fn log_id(path: &Path) -> String {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT value FROM meta WHERE name = 'log_id'", [], |r| {
            r.get(0)
        })
        .unwrap()
}

/// A ZeroMQ subscriber to one endpoint, whose subscription the publisher has acknowledged
/// (`/stats` shows it), so no message published afterwards can be missed as a slow joiner.
pub struct Subscriber {
    pub socket: zmq::Socket,
    _ctx: zmq::Context,
}

impl Subscriber {
    pub async fn connect(node: &TestNode, ns: &str) -> Subscriber {
        let endpoint = node
            .node
            .notifier_endpoint(ns)
            .unwrap()
            .replace("0.0.0.0", "127.0.0.1");
        let ctx = zmq::Context::new();
        let socket = ctx.socket(zmq::SUB).unwrap();
        socket.set_rcvhwm(1_000_000).unwrap();
        socket.connect(&endpoint).unwrap();
        socket.set_subscribe(b"").unwrap();
        wait_subscribed(&reqwest::Client::new(), node, ns).await;
        Subscriber { socket, _ctx: ctx }
    }

    /// Receives (topic, JSON) messages until one has seq_num `last`, failing on a deadline.
    pub fn collect_until(&self, last: i64) -> Vec<(String, serde_json::Value)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut out = Vec::new();
        loop {
            assert!(
                Instant::now() < deadline,
                "no notification with seq_num {last}; got {out:?}"
            );
            if self.socket.poll(zmq::POLLIN, 100).unwrap() == 0 {
                continue;
            }
            let frames = self.socket.recv_multipart(0).unwrap();
            assert_eq!(frames.len(), 2, "a notification has two frames");
            let topic = String::from_utf8(frames[0].clone()).unwrap();
            let json: serde_json::Value = serde_json::from_slice(&frames[1]).unwrap();
            let seq = json["seq_num"].as_i64().unwrap();
            out.push((topic, json));
            if seq >= last {
                return out;
            }
        }
    }
}

/// A `ferry` child process whose stdout and stderr are read line by line on threads.
pub struct Running {
    pub child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Drop for Running {
    /// A failing test must not leave a server running (it would hold ports and pipes).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Running {
    pub fn spawn(args: &[&str]) -> Running {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.args(args);
        Running::spawn_command(cmd)
    }

    /// Runs `cmd` (e.g. a shell that sets limits, then execs ferry) like [`Running::spawn`].
    pub fn spawn_command(mut cmd: std::process::Command) -> Running {
        use std::io::BufRead;
        let mut child = cmd
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx2.send(line);
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (bounded) for an output line containing `needle` and returns it.
    pub fn wait_line(&mut self, needle: &str) -> String {
        self.wait_line_where(needle, |l| l.contains(needle))
    }

    /// Waits (bounded) for an output line matching `pred`.
    pub fn wait_line_where(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no output line with {what:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The rest of the first line seen so far that contains `marker`, after it.
    pub fn find(&self, marker: &str) -> Option<String> {
        self.seen
            .iter()
            .find_map(|l| l.split(marker).nth(1))
            .map(|s| s.trim().to_owned())
    }

    /// Stops the process with SIGTERM, checks it exits cleanly, and returns every line it
    /// printed: its output read to the end, so nothing printed just before exit is missed.
    pub fn finish(&mut self) -> Vec<String> {
        let status = self.terminate();
        assert!(status.success(), "{status:?}");
        self.read_to_end()
    }

    /// Kills the process (SIGKILL, for commands that have no clean stop, such as
    /// `ferry watch`) and returns every line it printed, read to the end.
    pub fn kill(&mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.read_to_end()
    }

    /// Every line the process printed, once its output has ended.
    fn read_to_end(&mut self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return self.seen.clone(),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    panic!("the output did not end; saw:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap()
    }
}

/// `GET /kv/{key}`: (status, decoded value; empty when not found).
pub async fn get_value(
    c: &reqwest::Client,
    node: &TestNode,
    ns: &str,
    key: &str,
) -> (u16, Vec<u8>) {
    let (s, j) = call(
        c,
        reqwest::Method::GET,
        &node.url(&format!("/api/v1/{ns}/kv/{key}")),
        None,
    )
    .await;
    (s, unb64(j["value"].as_str().unwrap_or("")))
}

pub async fn stats(c: &reqwest::Client, node: &TestNode, ns: &str) -> serde_json::Value {
    call(
        c,
        reqwest::Method::GET,
        &node.url(&format!("/api/v1/{ns}/stats")),
        None,
    )
    .await
    .1
}

/// Waits until a replica's follower of `ns` reports `state`; returns the stats.
pub async fn wait_replication_state(
    c: &reqwest::Client,
    node: &TestNode,
    ns: &str,
    state: &str,
) -> serde_json::Value {
    wait_for(
        Duration::from_secs(20),
        &format!("the follower to be {state}"),
        async || {
            let st = stats(c, node, ns).await;
            (st["replication"]["state"] == state).then_some(st)
        },
    )
    .await
}

/// Waits until `node`'s notifier for `ns` reports a subscription in place (so nothing published
/// afterwards can be lost to the ZeroMQ slow-joiner window).
pub async fn wait_subscribed(c: &reqwest::Client, node: &TestNode, ns: &str) {
    wait_subscribed_at(c, &node.url(""), ns).await;
}

/// [`wait_subscribed`] for any node serving HTTP at `base` (e.g. a child process).
pub async fn wait_subscribed_at(c: &reqwest::Client, base: &str, ns: &str) {
    let url = format!("{base}/api/v1/{ns}/stats");
    wait_for(
        Duration::from_secs(20),
        "the subscription to reach the notifier",
        async || {
            let (_, st) = call(c, reqwest::Method::GET, &url, None).await;
            (st["notifier"]["subscribed_topics"].as_i64() >= Some(1)).then_some(())
        },
    )
    .await;
}

/// A node's `/metrics` text (checked to be served as Prometheus text).
pub async fn metrics(c: &reqwest::Client, node: &TestNode) -> String {
    let resp = c.get(node.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain"), "{ct}");
    resp.text().await.unwrap()
}

/// The value of one series for namespace `ns` in `/metrics` text (panics when it is missing).
pub fn metric(text: &str, name: &str, ns: &str) -> f64 {
    let series = format!("{name}{{namespace=\"{ns}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
        .parse()
        .unwrap()
}

/// What a [`proxy`] does once the first connection has passed its byte limit towards the
/// client.
#[derive(Clone)]
pub enum PastLimit {
    /// Drops that connection (both directions reset); later connections pass everything.
    Cut,
    /// While the flag is set: holds that connection open passing nothing more, and closes
    /// every later connection at once. Once it is cleared, everything passes.
    Stall(std::sync::Arc<std::sync::atomic::AtomicBool>),
}

/// A TCP proxy to `upstream` on a free loopback port (returned): the first connection passes
/// `limit` bytes towards the client, then `past` decides.
pub async fn proxy(upstream: String, limit: usize, past: PastLimit) -> String {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stalled = move |past: &PastLimit| match past {
        PastLimit::Cut => false,
        PastLimit::Stall(flag) => flag.load(Ordering::SeqCst),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((client, _)) = listener.accept().await {
            if stalled(&past) && !first {
                drop(client);
                continue;
            }
            let limit = if first { limit } else { usize::MAX };
            first = false;
            let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            let past = past.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut passed = 0;
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if passed + n > limit {
                        match &past {
                            PastLimit::Cut => break,
                            // Hold the connection open, passing nothing, while it lives.
                            p if stalled(p) => std::future::pending::<()>().await,
                            PastLimit::Stall(_) => {}
                        }
                    }
                    passed += n;
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                // Dropping both halves resets the connection.
                up.abort();
            });
        }
    });
    addr
}

/// A process's resident memory in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// `n` distinct TCP ports free on 127.0.0.1 now, below the system's ephemeral range, for a
/// node that binds a fixed port (and may be restarted on it). A port from the ephemeral range
/// (what binding port 0 gives) can be taken, between its release and the node's bind, as the
/// local port of any outgoing connection on the machine (other tests connect all the time):
/// the node then fails with "Address already in use".
#[allow(dead_code)] // not every test binary binds fixed ports
pub fn fixed_ports(n: usize) -> Vec<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral.saturating_sub(FIRST);
    assert!(
        span >= 1_000,
        "the ephemeral port range starts at {ephemeral}"
    );
    // Each test binary from its own stretch (they run one after another, but a binary's
    // ports may linger), then the next ports in turn.
    let base = std::process::id() % span;
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(i < span, "no free port left below {ephemeral}");
        let port = (FIRST + (base + i) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    ports
}
