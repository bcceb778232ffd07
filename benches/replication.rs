//! Replication speed: catch-up throughput, live lag, and many concurrent tail streams.
//!
//! Run: `cargo bench --bench replication` (`-- --quick` for a shorter run).
//!
//! - catch-up: a replica starting 1,000,000 entries (100-byte values) behind, entries/s, as a
//!   ratio of in-process SQLite inserting the same rows in 2,000-row transactions;
//! - live lag: commit on the primary -> commit on the replica, p50/p99, at a steady 5,000
//!   writes/s;
//! - fan-out: 100 concurrent tail streams from one primary process at 1,000 writes/s, p99 lag
//!   from commit to receipt, and the primary's RSS.
//!
//! Everything uses synchronous=FULL.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry::config::Config;
use ferry::node::{Listeners, Mode, Node};
use ferry::replication::pb::replication_client::ReplicationClient;
use ferry::replication::pb::{PositionRequest, TailRequest};
use ferry::store::Mutation;

async fn start(mode: Mode, text: &str) -> Node {
    let config = Config::parse(text, Path::new("bench.toml")).unwrap();
    let listeners = Listeners::bind(&config).await.unwrap();
    Node::start(config, mode, listeners).await.unwrap()
}

fn primary_text(dir: &Path) -> String {
    format!(
        "http_port = 0\nlisten_ip = \"127.0.0.1\"\n[grpc_config]\nport = 0\n[storage_config]\nbase_dir = {:?}\nnamespaces = [\"ns\"]\n[log_config]\nlog_level = \"warn\"\n",
        dir.display().to_string()
    )
}

fn replica_text(dir: &Path, upstream: &str) -> String {
    format!(
        "http_port = 0\nlisten_ip = \"127.0.0.1\"\n[storage_config]\nbase_dir = {:?}\nnamespaces = [\"ns\"]\n[relayer_config.up]\nnamespaces = [\"ns\"]\nupstream_address = {upstream:?}\n[log_config]\nlog_level = \"warn\"\n",
        dir.display().to_string()
    )
}

fn sqlite_ceiling(dir: &Path, rows: usize) -> f64 {
    let mut conn = rusqlite::Connection::open(dir.join("ceiling.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(include_str!("../migrations/0001_init.sql"))
        .unwrap();
    let value = vec![b'x'; 100];
    let start = Instant::now();
    let mut seq = 0i64;
    while (seq as usize) < rows {
        let tx = conn.transaction().unwrap();
        for _ in 0..2000 {
            seq += 1;
            let key = format!("key{seq:08}");
            tx.prepare_cached("INSERT INTO wal_log VALUES (?1, ?1, 'put', ?2, ?3, 0, 0)")
                .unwrap()
                .execute(rusqlite::params![seq, key, value])
                .unwrap();
            tx.prepare_cached("INSERT INTO kv VALUES (?1, ?2, ?3, 0) ON CONFLICT (key) DO UPDATE SET value = excluded.value, seq = excluded.seq").unwrap()
                .execute(rusqlite::params![key, value, seq]).unwrap();
        }
        tx.commit().unwrap();
    }
    seq as f64 / start.elapsed().as_secs_f64()
}

async fn catch_up(dir: &Path, entries: usize) -> f64 {
    let primary = start(Mode::Primary, &primary_text(&dir.join("p"))).await;
    let ns = primary.store().get("ns").unwrap().clone();
    let value = vec![b'x'; 100];
    for b in 0..entries / 1000 {
        let batch = (0..1000)
            .map(|i| Mutation::Put {
                key: format!("key{:08}", b * 1000 + i),
                value: value.clone(),
            })
            .collect();
        ns.write(batch).await.unwrap();
    }
    let t = Instant::now();
    let replica = start(
        Mode::Replica,
        &replica_text(&dir.join("r"), &primary.grpc_addr().unwrap().to_string()),
    )
    .await;
    let rns = replica.store().get("ns").unwrap().clone();
    let mut head = rns.subscribe();
    while head.borrow_and_update().seq < entries as i64 {
        head.changed().await.unwrap();
    }
    let rate = entries as f64 / t.elapsed().as_secs_f64();
    replica.shutdown().await;
    primary.shutdown().await;
    rate
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Replication lag and the primary's write latency at `rate` writes/s.
struct Lag {
    p50: Duration,
    p99: Duration,
    /// Write latency on the primary (request to acknowledgement), 99.9th percentile and max:
    /// where a checkpoint inside a commit would show.
    write_p999: Duration,
    write_max: Duration,
}

/// Commit on the primary -> commit on the replica, at a steady rate.
async fn live_lag(dir: &Path, rate: u64, seconds: u64) -> Lag {
    let primary = start(Mode::Primary, &primary_text(&dir.join("lp"))).await;
    let replica = start(
        Mode::Replica,
        &replica_text(&dir.join("lr"), &primary.grpc_addr().unwrap().to_string()),
    )
    .await;
    let pns = primary.store().get("ns").unwrap().clone();
    let rns = replica.store().get("ns").unwrap().clone();
    let total = (rate * seconds) as usize;
    let committed = Arc::new(std::sync::Mutex::new(vec![None::<Instant>; total + 1]));
    // Watch the replica apply, recording when each seq became visible there.
    let watcher = {
        let committed = committed.clone();
        tokio::spawn(async move {
            let mut head = rns.subscribe();
            let mut seen = 0i64;
            let mut lags = Vec::with_capacity(total);
            while (seen as usize) < total {
                head.changed().await.unwrap();
                let now = Instant::now();
                let h = head.borrow_and_update().seq;
                let c = committed.lock().unwrap();
                for s in seen + 1..=h {
                    if let Some(t) = c[s as usize] {
                        lags.push(now.saturating_duration_since(t));
                    }
                }
                seen = h;
            }
            lags
        })
    };
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let value = vec![b'x'; 100];
    let mut writes = Vec::new();
    for i in 0..total {
        tick.tick().await;
        let (pns, committed, value) = (pns.clone(), committed.clone(), value.clone());
        writes.push(tokio::spawn(async move {
            let asked = Instant::now();
            let c = pns
                .write(vec![Mutation::Put {
                    key: format!("k{i}"),
                    value,
                }])
                .await
                .unwrap();
            let now = Instant::now();
            committed.lock().unwrap()[c.last_seq as usize] = Some(now);
            now - asked
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for w in writes {
        latencies.push(w.await.unwrap());
    }
    latencies.sort();
    let mut lags = watcher.await.unwrap();
    lags.sort();
    replica.shutdown().await;
    primary.shutdown().await;
    Lag {
        p50: percentile(&lags, 0.5),
        p99: percentile(&lags, 0.99),
        write_p999: percentile(&latencies, 0.999),
        write_max: *latencies.last().unwrap(),
    }
}

/// 100 tail streams from a primary running as its own process.
async fn fan_out(dir: &Path, streams: usize, rate: u64, seconds: u64) -> (Duration, u64) {
    let cfg = dir.join("fan.toml");
    std::fs::create_dir_all(dir.join("fan")).unwrap();
    std::fs::write(&cfg, primary_text(&dir.join("fan"))).unwrap();
    let bin = env!("CARGO_BIN_EXE_ferry");
    let mut child = std::process::Command::new(bin)
        .args(["server", "--config", cfg.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut lines = std::io::BufRead::lines(stderr);
    let (mut http, mut grpc) = (None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(a) = line.split("HTTP listening on ").nth(1) {
            http = Some(a.trim().to_owned());
        }
        if let Some(a) = line.split("gRPC listening on ").nth(1) {
            grpc = Some(a.trim().to_owned());
            break;
        }
    }
    let (http, grpc) = (http.unwrap(), grpc.unwrap());
    // Keep reading the node's log: with the pipe closed, its next line would fail.
    std::thread::spawn(move || lines.for_each(drop));
    let mut client = ReplicationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let log_id = client
        .position(PositionRequest {
            probe_seq: 0,
            namespace: "ns".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .log_id;
    let total = (rate * seconds) as i64;
    let committed = Arc::new(std::sync::Mutex::new(vec![
        None::<Instant>;
        total as usize + 1
    ]));
    let mut readers = Vec::new();
    for _ in 0..streams {
        let mut client = ReplicationClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        let req = TailRequest {
            follower_id: String::new(),
            namespace: "ns".into(),
            log_id: log_id.clone(),
            from_seq: 1,
            prev_crc: 0,
        };
        let mut stream = client.tail(req).await.unwrap().into_inner();
        let committed = committed.clone();
        readers.push(tokio::spawn(async move {
            let mut lags = Vec::new();
            let mut last = 0;
            while last < total {
                let m = stream.message().await.unwrap().unwrap();
                let now = Instant::now();
                for e in m.entries {
                    last = e.seq;
                    if let Some(t) = committed.lock().unwrap()[e.seq as usize] {
                        lags.push(now.saturating_duration_since(t));
                    }
                }
            }
            lags
        }));
    }
    let http_client = reqwest::Client::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let body = format!("{{\"value\":\"{}\"}}", "eHh4".repeat(33));
    let mut writes = Vec::new();
    for i in 0..total {
        tick.tick().await;
        let (c, committed, url, body) = (
            http_client.clone(),
            committed.clone(),
            format!("http://{http}/api/v1/ns/kv/k{i}"),
            body.clone(),
        );
        writes.push(tokio::spawn(async move {
            let r: serde_json::Value = c
                .put(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            committed.lock().unwrap()[r["seq"].as_i64().unwrap() as usize] = Some(Instant::now());
        }));
    }
    for w in writes {
        w.await.unwrap();
    }
    let mut lags = Vec::new();
    for r in readers {
        lags.extend(r.await.unwrap());
    }
    let rss_kb = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmHWM:")
                .map(|v| v.trim().trim_end_matches(" kB").parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    lags.sort();
    (percentile(&lags, 0.99), rss_kb / 1024)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let entries = if quick { 100_000 } else { 1_000_000 };
    let ceiling = sqlite_ceiling(dir.path(), entries);
    let caught = rt.block_on(catch_up(dir.path(), entries));
    let runs = if quick { 1 } else { 5 };
    // The catch-up leaves hundreds of MB of dirty pages that the kernel writes back over the
    // next seconds: flushed here, or the first lag run's syncs queue behind that writeback
    // (its write p99.9 was 47-54 ms in two sittings, against 6-13 ms for the runs after it).
    let _ = std::process::Command::new("sync").status();
    let lags: Vec<Lag> = (0..runs)
        .map(|r| {
            let d = dir.path().join(format!("lag{r}"));
            rt.block_on(live_lag(&d, 5000, if quick { 2 } else { 10 }))
        })
        .collect();
    let (fan_p99, rss) = rt.block_on(fan_out(dir.path(), 100, 1000, if quick { 2 } else { 10 }));
    println!("catch-up of {entries} entries (100-byte values, synchronous=FULL)");
    println!("  sqlite in-process, 2000 rows/txn   {ceiling:>10.0} rows/s   1.00x");
    println!(
        "  ferry replica catch-up            {caught:>10.0} entries/s {:.2}x",
        caught / ceiling
    );
    println!("live lag at 5000 writes/s, commit on primary -> commit on replica, {runs} run(s):");
    for (r, l) in lags.iter().enumerate() {
        println!(
            "  run {}: lag p50 {:.2?}, p99 {:.2?}; primary write latency p99.9 {:.2?}, max {:.2?}",
            r + 1,
            l.p50,
            l.p99,
            l.write_p999,
            l.write_max
        );
    }
    println!(
        "  worst lag p99 of the runs: {:.2?}",
        lags.iter().map(|l| l.p99).max().unwrap()
    );
    println!(
        "100 tail streams at 1000 writes/s (HTTP writes): p99 commit -> receipt {fan_p99:?}, primary peak RSS {rss} MB"
    );
}
