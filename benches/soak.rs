//! Lifecycle soak: random writes with retention on, replica restarts (some long enough for
//! retention to prune past the replica, which must then bootstrap), upstream restarts, then a
//! full comparison of the two files.
//!
//! Run: `cargo bench --bench soak` (120 s; `-- --secs N` to change). Bounded: it stops by
//! itself, everything on loopback and in temp dirs. Prints the figures docs/testing.md reports.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry::config::Config;
use ferry::node::{Listeners, Mode, Node};
use ferry::store::Mutation;

const NS: &str = "ns";
/// Retention on both nodes: at most this many entries, checked every 200 ms.
const KEEP: u64 = 5_000;

fn primary_text(dir: &Path, grpc_port: u16) -> String {
    format!(
        "http_port = 0\nlisten_ip = \"127.0.0.1\"\n[grpc_config]\nport = {grpc_port}\n[storage_config]\nbase_dir = {:?}\nnamespaces = [\"{NS}\"]\n[storage_config.wal_cleanup_config]\nenabled = true\ninterval = \"200ms\"\nmax_entries = {KEEP}\n[log_config]\nlog_level = \"error\"\n",
        dir.display().to_string()
    )
}

fn replica_text(dir: &Path, upstream: &str) -> String {
    format!(
        "http_port = 0\nlisten_ip = \"127.0.0.1\"\n[storage_config]\nbase_dir = {:?}\nnamespaces = [\"{NS}\"]\n[storage_config.wal_cleanup_config]\nenabled = true\ninterval = \"200ms\"\nmax_entries = {KEEP}\n[relayer_config.up]\nnamespaces = [\"{NS}\"]\nupstream_address = {upstream:?}\n[log_config]\nlog_level = \"error\"\n",
        dir.display().to_string()
    )
}

async fn start(mode: Mode, text: &str) -> Node {
    let config = Config::parse(text, Path::new("soak.toml")).unwrap();
    let listeners = Listeners::bind(&config).await.unwrap();
    Node::start(config, mode, listeners).await.unwrap()
}

/// xorshift64*: enough randomness for a workload, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn file_bytes(dir: &Path) -> u64 {
    ["ns.db", "ns.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

fn kv(path: &PathBuf) -> Vec<(String, Vec<u8>, i64)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT key, value, seq FROM kv ORDER BY key")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Snapshots the replica installed since it started (from its `/stats`).
async fn bootstraps(node: &Node) -> u64 {
    let url = format!("http://{}/api/v1/{NS}/stats", node.http_addr());
    let body: Option<serde_json::Value> = match reqwest::get(&url).await {
        Ok(r) => r.json().await.ok(),
        Err(_) => None,
    };
    body.and_then(|b| b["replication"]["bootstraps"].as_u64())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(120u64);
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut primary = start(Mode::Primary, &primary_text(pdir.path(), 0)).await;
    let grpc = primary.grpc_addr().unwrap();
    let mut replica =
        Some(start(Mode::Replica, &replica_text(rdir.path(), &grpc.to_string())).await);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let written = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // The writer follows the primary across restarts through this slot.
    let target: Arc<std::sync::Mutex<Option<Arc<ferry::store::Namespace>>>> =
        Arc::new(std::sync::Mutex::new(primary.store().get(NS).cloned()));
    let writer = {
        let (written, stop, target) = (written.clone(), stop.clone(), target.clone());
        tokio::spawn(async move {
            let mut rng = Rng(seed);
            while !stop.load(Ordering::Relaxed) {
                let ns = target.lock().unwrap().clone();
                let Some(ns) = ns else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                let n = 1 + rng.below(20) as usize;
                let batch: Vec<Mutation> = (0..n)
                    .map(|_| {
                        let key = format!("key{:05}", rng.below(20_000));
                        if rng.below(10) == 0 {
                            Mutation::Delete { key }
                        } else {
                            let len = 50 + rng.below(450) as usize;
                            Mutation::Put {
                                key,
                                value: vec![b'a' + rng.below(26) as u8; len],
                            }
                        }
                    })
                    .collect();
                if ns.write(batch).await.is_ok() {
                    written.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        })
    };

    let started = Instant::now();
    let mut rng = Rng(seed ^ 0x9e37_79b9_7f4a_7c15);
    let (mut replica_restarts, mut long_outages, mut upstream_restarts) = (0, 0, 0);
    let mut boots = 0;
    let mut sizes = Vec::new();
    let mut next_size = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(2_000 + rng.below(4_000))).await;
        if started.elapsed() >= next_size {
            sizes.push((
                started.elapsed().as_secs(),
                file_bytes(pdir.path()),
                file_bytes(rdir.path()),
            ));
            next_size += Duration::from_secs(secs / 6).max(Duration::from_secs(1));
        }
        match rng.below(3) {
            0 => {
                // Replica restart; one in two stays down long enough to be pruned past.
                let r = replica.take().unwrap();
                boots += bootstraps(&r).await;
                r.shutdown().await;
                replica_restarts += 1;
                if rng.below(2) == 0 {
                    long_outages += 1;
                    let head = primary.store().get(NS).unwrap().head().seq;
                    let deadline = Instant::now() + Duration::from_secs(20);
                    // Down until the primary wrote 2 x KEEP more: its log no longer has what
                    // the replica needs.
                    while primary.store().get(NS).unwrap().head().seq < head + 2 * KEEP as i64
                        && Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                replica =
                    Some(start(Mode::Replica, &replica_text(rdir.path(), &grpc.to_string())).await);
            }
            1 => {
                // Upstream restart on the same port, under the replica's feet.
                *target.lock().unwrap() = None;
                primary.shutdown().await;
                primary = start(Mode::Primary, &primary_text(pdir.path(), grpc.port())).await;
                *target.lock().unwrap() = primary.store().get(NS).cloned();
                upstream_restarts += 1;
            }
            _ => {}
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let ns = primary.store().get(NS).unwrap().clone();
    let want = ns.head().seq;
    let r = replica.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while r.store().get(NS).unwrap().head().seq < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    boots += bootstraps(&r).await;
    let replica_head = r.store().get(NS).unwrap().head().seq;
    r.shutdown().await;
    primary.shutdown().await;
    sizes.push((
        started.elapsed().as_secs(),
        file_bytes(pdir.path()),
        file_bytes(rdir.path()),
    ));

    let (p, rp) = (pdir.path().join("ns.db"), rdir.path().join("ns.db"));
    let (pk, rk) = (kv(&p), kv(&rp));
    let mismatches =
        pk.len().abs_diff(rk.len()) + pk.iter().zip(&rk).filter(|(a, b)| a != b).count();
    let pv = ferry::store::verify::verify_file(&p).unwrap();
    let rv = ferry::store::verify::verify_file(&rp).unwrap();

    println!("soak: {secs} s");
    println!("| what | value |");
    println!("|---|---|");
    println!(
        "| entries written (acknowledged) | {} |",
        written.load(Ordering::Relaxed)
    );
    println!("| primary head / replica head | {want} / {replica_head} |");
    println!("| replica restarts (of which long outages) | {replica_restarts} ({long_outages}) |");
    println!("| upstream restarts | {upstream_restarts} |");
    println!("| snapshot bootstraps | {boots} |");
    println!("| keys | {} |", pk.len());
    println!("| kv mismatches primary vs replica | {mismatches} |");
    println!(
        "| ferry verify primary / replica | {} / {} |",
        pv.summary(),
        rv.summary()
    );
    println!(
        "| file + WAL bytes over time (s: primary, replica) | {} |",
        sizes
            .iter()
            .map(|(t, a, b)| format!("{t}: {:.1} MB, {:.1} MB", *a as f64 / 1e6, *b as f64 / 1e6))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let ok = mismatches == 0 && want == replica_head && pv.is_ok() && rv.is_ok();
    println!("{}", if ok { "soak: OK" } else { "soak: FAILED" });
    if !ok {
        std::process::exit(1);
    }
}
