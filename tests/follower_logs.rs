//! What a replica's follower tells its operator, read from the real binary's stderr, and how
//! often it knocks on its upstream's door: backoff for every kind of failure (an upstream that
//! is down, a local disk that is full), one log line per change of state rather than one per
//! attempt, "reconnected" once it is over, and a catch-up's progress and end.
//!
//! Connection attempts are counted at real TCP listeners in front of the upstream. Timing is
//! only ever checked from below: a backoff sleep never ends early, however loaded the machine,
//! so "attempt k came at least 50 ms * 2^(k-1) after attempt k-1" cannot fail by luck.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// When each connection to a listener arrived.
type Arrivals = Arc<Mutex<Vec<Instant>>>;

/// The smallest delay the follower waits before attempt `k` (k >= 1) of a run of failures:
/// half its backoff, which starts at 100 ms and doubles up to 5 s.
fn least_gap(k: usize) -> Duration {
    let backoff = Duration::from_millis(100) * 2u32.pow(k.min(6) as u32 - 1);
    backoff.min(Duration::from_secs(5)) / 2
}

/// Checks that `arrivals` (connections, first to last) took at least as long as the backoff
/// between the attempts they are, when each attempt opens at most `per_attempt` connections.
fn assert_backed_off(arrivals: &[Instant], per_attempt: usize) {
    let attempts = arrivals.len().div_ceil(per_attempt);
    let least: Duration = (1..attempts).map(least_gap).sum();
    let took = arrivals[arrivals.len() - 1] - arrivals[0];
    assert!(
        took >= least,
        "{} connections ({attempts} attempts at least) in {took:?}, under the backoff's {least:?}; gaps: {:?}",
        arrivals.len(),
        arrivals.windows(2).map(|p| p[1] - p[0]).collect::<Vec<_>>()
    );
}

/// A listener on a free port that accepts each connection and closes it at once, like a port
/// whose server is starting or broken. Returns its address, the arrivals, and the task to
/// abort to free the port.
async fn accept_and_close() -> (String, Arrivals, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let arrivals = Arrivals::default();
    let seen = arrivals.clone();
    let task = tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            seen.lock().unwrap().push(Instant::now());
            drop(conn);
        }
    });
    (addr, arrivals, task)
}

/// A TCP proxy to `upstream` that counts connections and passes the upstream's bytes towards
/// the client at most `rate` bytes per second (everything else unchanged).
async fn proxy(upstream: String, rate: usize) -> (String, Arrivals) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let arrivals = Arrivals::default();
    let seen = arrivals.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            seen.lock().unwrap().push(Instant::now());
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let up = tokio::io::copy(&mut from_client, &mut to_server);
                let down = async {
                    // Paced in 10 ms slices of rate / 100 bytes.
                    let mut buf = vec![0; (rate / 100).clamp(1, 1 << 20)];
                    let mut tick = tokio::time::interval(Duration::from_millis(10));
                    loop {
                        tick.tick().await;
                        match from_server.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if to_client.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                };
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    (addr, arrivals)
}

/// Waits until at least `n` connections arrived; returns their times.
async fn wait_arrivals(arrivals: &Arrivals, n: usize) -> Vec<Instant> {
    wait_for(
        Duration::from_secs(60),
        &format!("{n} connection attempts"),
        async || {
            let a = arrivals.lock().unwrap().clone();
            (a.len() >= n).then_some(a)
        },
    )
    .await
}

fn spawn_replica(dir: &std::path::Path, upstream: &str) -> Running {
    let config = dir.join("replica.toml");
    std::fs::write(&config, replica_config(dir, &["ns"], upstream, "")).unwrap();
    Running::spawn(&["replica", "--config", config.to_str().unwrap()])
}

/// Puts `n` entries of `value_bytes` each into `ns` on `node`.
async fn fill(c: &reqwest::Client, node: &TestNode, n: usize, value_bytes: usize) {
    let value = b64(&vec![b'v'; value_bytes]);
    // Each request well under the default 1 MiB body limit.
    let per_request = (600_000 / (value.len() + 40)).clamp(1, 1000);
    for start in (0..n).step_by(per_request) {
        let items: Vec<_> = (start..n.min(start + per_request))
            .map(|i| serde_json::json!({"key": format!("k{i}"), "value": value}))
            .collect();
        let body = serde_json::json!({"operation": "put", "items": items}).to_string();
        let (s, j) = call(
            c,
            reqwest::Method::POST,
            &node.url("/api/v1/ns/kv/batch"),
            Some(&body),
        )
        .await;
        assert_eq!(s, 200, "{j}");
    }
}

/// An upstream that is down: the replica's attempts are spaced by a growing backoff, it says
/// so once (what failed, with which upstream, what it does next) instead of once per attempt,
/// and once the upstream is back it says "reconnected" once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_upstream_is_down_backs_off_and_says_so_once() {
    let rdir = tempfile::tempdir().unwrap();
    let (addr, arrivals, door) = accept_and_close().await;
    let mut replica = spawn_replica(rdir.path(), &addr);
    replica.wait_line("HTTP listening on ");
    // An attempt opens one connection, or two when the first is closed under it (the gRPC
    // channel dials again once before the call fails).
    let tried = wait_arrivals(&arrivals, 10).await;
    assert_backed_off(&tried, 2);

    // The upstream comes up on that port, with something to replicate: written before it
    // listens there, so the first session finds 3 entries to catch up on (written after, the
    // replica can connect in between, catch up at seq 0 and apply them live, as CI saw once).
    let pdir = tempfile::tempdir().unwrap();
    let early = TestNode::primary_with_grpc(pdir.path(), &["ns"], 0).await;
    let c = reqwest::Client::new();
    fill(&c, &early, 3, 10).await;
    early.stop().await;
    door.abort();
    let _ = door.await;
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let primary = TestNode::primary_with_grpc(pdir.path(), &["ns"], port).await;
    let back = replica.wait_line("reconnected");
    assert!(
        back.contains(&format!("reconnected to upstream {addr} after")),
        "{back}"
    );
    // Said in the same line, or in the next one when entries were applied first.
    if !back.contains("caught up at seq 3") {
        replica.wait_line_where("caught up at seq 3", |l| {
            l.contains("caught up") && l.contains("at seq 3")
        });
    }
    let lines = replica.finish();
    primary.stop().await;

    // Every line about the upstream, in order: one failure, one recovery, however many
    // attempts there were in between (five at least).
    let about: Vec<&String> = lines.iter().filter(|l| l.contains(&addr)).collect();
    let failures: Vec<_> = about.iter().filter(|l| l.contains("WARN")).collect();
    // Between the door closing and the primary binding its port, an attempt can be refused:
    // a new kind of failure, which is news and said once too (seen on a loaded machine).
    assert!(
        failures.len() == 1 || (failures.len() == 2 && failures[1].contains("refuses connections")),
        "{about:#?}"
    );
    let first = failures[0];
    assert!(
        first.contains(&format!("reconnecting to {addr} in 0.")) && first.contains("upstream"),
        "{first}"
    );
    // Our words, not gRPC's or hyper's.
    for l in &about {
        for boilerplate in [
            "The system is not in a state",
            "h2 protocol error",
            "transport error",
            "status:",
        ] {
            assert!(!l.contains(boilerplate), "{l}");
        }
    }
    assert_eq!(
        about.iter().filter(|l| l.contains("reconnected")).count(),
        1,
        "{about:#?}"
    );
}

/// A replica whose disk is full connects fine but cannot store anything: it backs off like for
/// any other failure (it used to reconnect 10 times a second, logging "following upstream"
/// each time) and says so once, naming the fault as local. The disk is made full for the
/// replica alone by a file size limit (`ulimit -f`, with SIGXFSZ ignored so writes fail with
/// EFBIG instead of killing the process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_full_disk_backs_off_and_says_so_once() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = TestNode::primary_with_grpc(pdir.path(), &["ns"], 0).await;
    let c = reqwest::Client::new();
    // ~2 MB of log: more than the replica may write.
    fill(&c, &primary, 2000, 1000).await;
    let (addr, arrivals) = proxy(primary.grpc(), usize::MAX / 2).await;

    let config = rdir.path().join("replica.toml");
    std::fs::write(&config, replica_config(rdir.path(), &["ns"], &addr, "")).unwrap();
    let mut sh = std::process::Command::new("/bin/sh");
    sh.args([
        "-c",
        // 512 KiB per file (ulimit -f counts 1 KiB blocks).
        "trap '' XFSZ; ulimit -f 512; exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_ferry"),
        "replica",
        "--config",
        config.to_str().unwrap(),
    ]);
    let mut replica = Running::spawn_command(sh);
    replica.wait_line("HTTP listening on ");
    // Each attempt connects once (the connection itself is fine).
    let tried = wait_arrivals(&arrivals, 7).await;
    assert_backed_off(&tried, 1);
    let lines = replica.finish();
    primary.stop().await;

    let following = lines
        .iter()
        .filter(|l| l.contains("following upstream"))
        .count();
    assert_eq!(following, 1, "{lines:#?}");
    let failures: Vec<_> = lines
        .iter()
        .filter(|l| l.contains("WARN") && l.contains(&addr))
        .collect();
    assert_eq!(failures.len(), 1, "{lines:#?}");
    assert!(
        failures[0].contains("a local fault, not the upstream's")
            && failures[0].contains(&format!("reconnecting to {addr} in 0.")),
        "{}",
        failures[0]
    );
}

/// A long catch-up reports its progress every few seconds and ends with "caught up at seq N".
/// The upstream's bytes reach the replica through a proxy at 1.5 MB/s, so catching up ~9 MB
/// takes at least 6 s, whatever the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_catch_up_reports_progress_and_its_end() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = TestNode::primary_with_grpc(pdir.path(), &["ns"], 0).await;
    let c = reqwest::Client::new();
    fill(&c, &primary, 30_000, 250).await;
    let total = primary.head("ns");
    let (addr, _) = proxy(primary.grpc(), 1_500_000).await;
    let mut replica = spawn_replica(rdir.path(), &addr);

    let start = replica.wait_line("following upstream");
    assert!(
        start.contains(&format!("from seq 1: {total} entries behind")),
        "{start}"
    );
    let progress = replica.wait_line("catching up with upstream");
    assert!(
        progress.contains(&format!("of {total},")) && progress.contains(" to go ("),
        "{progress}"
    );
    let done = replica.wait_line("caught up");
    assert!(
        done.contains(&format!("caught up with upstream {addr} at seq {total}")),
        "{done}"
    );
    let lines = replica.finish();
    assert!(
        !lines.iter().any(|l| l.contains("WARN")),
        "a catch-up is not trouble: {lines:#?}"
    );
    primary.stop().await;
}
