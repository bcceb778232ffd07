//! Shared test helpers: in-process nodes on port 0 in temp dirs, an HTTP client, and an
//! independent checker of namespace files.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ferry::config::Config;
use ferry::node::{Listeners, Mode, Node};
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

/// A node running in this process.
pub struct TestNode {
    pub node: Node,
    pub base: String,
    pub dir: PathBuf,
}

impl TestNode {
    pub async fn start(config_text: &str, dir: &Path) -> TestNode {
        let config = Config::parse(config_text, Path::new("test.toml")).unwrap();
        let listeners = Listeners::bind(&config).await.unwrap();
        let node = Node::start(config, Mode::Primary, listeners).await.unwrap();
        TestNode {
            base: format!("http://{}", node.http_addr()),
            node,
            dir: dir.to_owned(),
        }
    }

    pub async fn primary(dir: &Path, namespaces: &[&str]) -> TestNode {
        TestNode::start(&primary_config(dir, namespaces), dir).await
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

/// Checks a namespace file from the outside: seqs dense from 1, every crc equal to the chain
/// recomputed here (independently of ferry's own code), txn groups well formed, and kv equal to
/// replaying wal_log. Returns the number of entries.
pub fn verify_file(path: &Path) -> usize {
    let rows = wal_rows(path);
    let mut prev_crc = 0u32;
    let mut replay = std::collections::BTreeMap::new();
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.seq, i as i64 + 1, "seq is not dense at row {i}");
        assert!(r.txn <= r.seq && r.txn >= 1, "bad txn {r:?}");
        if r.txn != r.seq {
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
                replay.insert(r.key.clone(), (value, r.seq));
            }
            "delete" => {
                replay.remove(&r.key);
            }
            other => panic!("unknown op {other}"),
        }
    }
    let kv: Vec<_> = kv_rows(path);
    let expected: Vec<_> = replay.into_iter().map(|(k, (v, s))| (k, v, s)).collect();
    assert_eq!(kv, expected, "kv differs from the replay of wal_log");
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
