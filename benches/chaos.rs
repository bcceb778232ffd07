//! Failover chaos: three real `ferry` processes (a primary and two replicas), writers using
//! `?acks=1`, and rounds of: kill -9 the primary, promote the most advanced replica, re-point
//! the other replica to it, restart the old primary as its replica. At the end, every write
//! that was acknowledged with acks=1 must be on the final primary.
//!
//! Run: `cargo bench --bench chaos` (5 rounds; `-- --rounds N`). Bounded, loopback only,
//! temp dirs; needs the release binary (cargo builds it for the bench).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NS: &str = "ns";

/// A running ferry process and where it listens.
struct Proc {
    child: Child,
    http: String,
    grpc: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ferry <mode> --config <dir>/<mode>.toml` and waits for its listeners.
fn spawn(dir: &Path, mode: &str, text: &str) -> Proc {
    let config = dir.join(format!("{mode}.toml"));
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([mode, "--config", config.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut http, mut grpc) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.is_none() || grpc.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the node starts");
        let addr = || line.rsplit(' ').next().unwrap().to_owned();
        if line.contains("HTTP listening on ") {
            http = Some(format!("http://{}", addr()));
        } else if line.contains("gRPC listening on ") {
            grpc = Some(addr());
        }
    }
    // Keep draining its log so the pipe never fills.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Proc {
        child,
        http: http.unwrap(),
        grpc: grpc.unwrap(),
    }
}

fn base(dir: &Path) -> String {
    format!(
        "http_port = 0\nlisten_ip = \"127.0.0.1\"\n[grpc_config]\nport = 0\n[storage_config]\nbase_dir = {:?}\nnamespaces = [\"{NS}\"]\n",
        dir.display().to_string()
    )
}

fn replica_text(dir: &Path, upstream: &str) -> String {
    format!(
        "{}[relayer_config.up]\nnamespaces = [\"{NS}\"]\nupstream_address = {upstream:?}\n",
        base(dir)
    )
}

async fn applied(c: &reqwest::Client, http: &str) -> i64 {
    let st: serde_json::Value = match c.get(format!("{http}/api/v1/{NS}/stats")).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => return -1,
    };
    st["head_seq"].as_i64().unwrap_or(-1)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let paths: Vec<PathBuf> = dirs.iter().map(|d| d.path().to_owned()).collect();
    let c = reqwest::Client::new();

    // Node 0 starts as the primary; 1 and 2 follow it.
    let mut procs: Vec<Option<Proc>> = vec![Some(spawn(&paths[0], "server", &base(&paths[0])))];
    let p_grpc = procs[0].as_ref().unwrap().grpc.clone();
    for p in &paths[1..] {
        procs.push(Some(spawn(p, "replica", &replica_text(p, &p_grpc))));
    }
    let mut primary = 0usize;
    let target = Arc::new(Mutex::new(procs[0].as_ref().unwrap().http.clone()));
    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let (timeouts, errors) = (Arc::new(Mutex::new(0u64)), Arc::new(Mutex::new(0u64)));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (target, acked, timeouts, errors, stop, c) = (
            target.clone(),
            acked.clone(),
            timeouts.clone(),
            errors.clone(),
            stop.clone(),
            c.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let key = format!("w{w}-{n}");
                let value = format!("v{n}");
                let url = format!(
                    "{}/api/v1/{NS}/kv/{key}?acks=1&timeout_ms=2000",
                    target.lock().unwrap().clone()
                );
                let body = serde_json::json!({"value": base64_encode(value.as_bytes())});
                match c
                    .put(&url)
                    .json(&body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        acked.lock().unwrap().insert(key, value);
                    }
                    Ok(r) if r.status() == 504 => *timeouts.lock().unwrap() += 1,
                    _ => {
                        *errors.lock().unwrap() += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }

    let started = Instant::now();
    let mut rollbacks_seen = 0;
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(1500 + 500 * (round as u64 % 3))).await;
        // kill -9 the primary.
        let old = primary;
        drop(procs[old].take());
        // Promote the most advanced replica.
        let mut best = (None, -1);
        for (i, p) in procs.iter().enumerate() {
            if let Some(p) = p {
                let seq = applied(&c, &p.http).await;
                if seq > best.1 {
                    best = (Some(i), seq);
                }
            }
        }
        let new = best.0.expect("a replica is up");
        let http = procs[new].as_ref().unwrap().http.clone();
        let r = c
            .post(format!("{http}/api/v1/{NS}/promote"))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "promote: {}",
            r.text().await.unwrap()
        );
        *target.lock().unwrap() = http;
        primary = new;
        let new_grpc = procs[new].as_ref().unwrap().grpc.clone();
        // Re-point the other replica, and bring the old primary back as a replica.
        for i in 0..3 {
            if i == new {
                continue;
            }
            drop(procs[i].take());
            procs[i] = Some(spawn(
                &paths[i],
                "replica",
                &replica_text(&paths[i], &new_grpc),
            ));
        }
        rollbacks_seen = paths
            .iter()
            .filter_map(|p| std::fs::read_dir(p.join("rollback")).ok())
            .map(|d| d.count())
            .sum();
        eprintln!(
            "round {}: node {old} killed, node {new} promoted at seq {}",
            round + 1,
            best.1
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // Everyone catches up with the final primary.
    let head = applied(&c, &procs[primary].as_ref().unwrap().http).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    for p in procs.iter().flatten() {
        while applied(&c, &p.http).await < head && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let acked = acked.lock().unwrap().clone();
    let final_http = procs[primary].as_ref().unwrap().http.clone();
    let mut missing = 0;
    for (key, value) in &acked {
        let v: serde_json::Value = c
            .get(format!("{final_http}/api/v1/{NS}/kv/{key}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let got = v["value"].as_str().map(base64_decode);
        if got.as_deref() != Some(value.as_bytes()) {
            missing += 1;
        }
    }
    let rollback_lines: usize = paths
        .iter()
        .filter_map(|p| std::fs::read_dir(p.join("rollback")).ok())
        .flat_map(|d| d.map(|e| e.unwrap().path()))
        .map(|f| std::fs::read_to_string(f).unwrap().lines().count())
        .sum();
    let _ = rollbacks_seen;
    println!(
        "chaos: {rounds} rounds in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!("| what | value |");
    println!("|---|---|");
    println!("| writes acknowledged with acks=1 | {} |", acked.len());
    println!(
        "| writes answered 504 (committed, not acked in 2 s) | {} |",
        timeouts.lock().unwrap()
    );
    println!(
        "| writes failed (primary down, refused) | {} |",
        errors.lock().unwrap()
    );
    println!("| primaries killed with SIGKILL / promotions | {rounds} / {rounds} |");
    println!("| entries kept in rollback files | {rollback_lines} |");
    println!("| acknowledged writes missing on the final primary | {missing} |");
    println!(
        "{}",
        if missing == 0 {
            "chaos: OK"
        } else {
            "chaos: FAILED"
        }
    );
    if missing != 0 {
        std::process::exit(1);
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default()
}
