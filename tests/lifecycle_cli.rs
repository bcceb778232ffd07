//! Lifecycle through the real binary: kill -9 in the middle of a snapshot bootstrap, and
//! `ferry backup` / restore.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use serde_json::json;

const NS: &str = "ns";

async fn stats_at(c: &reqwest::Client, addr: &str) -> serde_json::Value {
    call(
        c,
        reqwest::Method::GET,
        &format!("http://{addr}/api/v1/{NS}/stats"),
        None,
    )
    .await
    .1
}

/// A primary with 700 keys of 8 KiB (several 1-MiB snapshot chunks) and a log pruned to its
/// last 100 entries, so a new replica must bootstrap.
async fn pruned_primary(dir: &Path) -> (TestNode, reqwest::Client) {
    let text = format!(
        "{}[grpc_config]\nport = 0\n[storage_config.wal_cleanup_config]\nenabled = true\ninterval = \"20ms\"\nmax_entries = 100\n",
        primary_config(dir, &[NS])
    );
    let primary = TestNode::start(&text, dir).await;
    let c = reqwest::Client::new();
    for b in 0..14 {
        let items: Vec<_> = (0..50)
            .map(|i| json!({"key": format!("key{:04}", b * 50 + i), "value": b64(&[b'a' + b as u8; 8192])}))
            .collect();
        let body = json!({"operation": "put", "items": items}).to_string();
        let (s, j) = call(
            &c,
            reqwest::Method::POST,
            &primary.url(&format!("/api/v1/{NS}/kv/batch")),
            Some(&body),
        )
        .await;
        assert_eq!(s, 200, "{j}");
    }
    wait_for(Duration::from_secs(30), "retention to prune", async || {
        (primary.ns(NS).base_seq() >= 600).then_some(())
    })
    .await;
    (primary, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_snapshot_resumes_it_after_restart() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (primary, c) = pruned_primary(pdir.path()).await;
    let keys = kv_rows(&primary.db(NS)).len() as i64;
    let stall = Arc::new(AtomicBool::new(true));
    let proxy = proxy(primary.grpc(), 2_500_000, PastLimit::Stall(stall.clone())).await;
    let config = rdir.path().join("replica.toml");
    std::fs::write(&config, replica_config(rdir.path(), &[NS], &proxy, "")).unwrap();
    let args = ["replica", "--config", config.to_str().unwrap()];

    let mut replica = Running::spawn(&args);
    let line = replica.wait_line("HTTP listening on ");
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    // The download stalls part-way (the proxy holds it): kill -9 while rows are staged.
    wait_for(Duration::from_secs(60), "rows to be staged", async || {
        let st = stats_at(&c, &addr).await;
        st["replication"]["snapshot"]["rows"]
            .as_i64()
            .filter(|&r| r > 0)
    })
    .await;
    replica.child.kill().unwrap(); // SIGKILL
    replica.child.wait().unwrap();
    // The namespace file is untouched by a download: still the empty replica it was.
    assert!(wal_rows(&rdir.path().join("ns.db")).is_empty());
    assert!(kv_rows(&rdir.path().join("ns.db")).is_empty());
    // What the killed process had staged (it may have staged more after it was observed).
    let staged: i64 = rusqlite::Connection::open(rdir.path().join("ns.db.staging"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM kv", [], |r| r.get(0))
        .unwrap();
    assert!(staged > 0 && staged < keys, "{staged} of {keys}");

    stall.store(false, Ordering::SeqCst);
    let mut replica = Running::spawn(&args);
    replica.wait_line("resuming a snapshot download");
    let addr = replica.find("HTTP listening on ").unwrap();
    let st = wait_for(
        Duration::from_secs(60),
        "the replica to bootstrap",
        async || {
            let st = stats_at(&c, &addr).await;
            (st["replication"]["state"] == "following"
                && st["head_seq"].as_i64() == Some(primary.head(NS)))
            .then_some(st)
        },
    )
    .await;
    assert_eq!(st["replication"]["bootstraps"], 1, "{st}");
    assert_eq!(
        st["replication"]["snapshot_rows_received"]
            .as_i64()
            .unwrap(),
        keys - staged,
        "the restarted replica fetched only the rows it did not have: {st}"
    );
    assert!(replica.terminate().success());
    assert_eq!(
        kv_rows(&primary.db(NS)),
        kv_rows(&rdir.path().join("ns.db"))
    );
    verify_file(&rdir.path().join("ns.db"));
    assert!(!rdir.path().join("ns.db.staging").exists());
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_backup_writes_a_file_a_primary_restores_from() {
    let (pdir, bdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (primary, c) = pruned_primary(pdir.path()).await;
    let head = primary.head(NS);
    let out = bdir.path().join("ns.db");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["backup", "--upstream", &primary.grpc(), "--namespace", NS])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(status.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("700 keys at seq {head}")),
        "{stderr}"
    );
    assert_eq!(kv_rows(&out), kv_rows(&primary.db(NS)));
    assert_eq!(log_id(&out), log_id(&primary.db(NS)));
    assert_eq!(base(&out).0, head);
    // Again to the same file: refused, the file is kept.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["backup", "--upstream", &primary.grpc(), "--namespace", NS])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    // An unknown namespace names it.
    let unknown = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "backup",
            "--upstream",
            &primary.grpc(),
            "--namespace",
            "nope",
        ])
        .arg("--out")
        .arg(bdir.path().join("nope.db"))
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown namespace \"nope\""));
    primary.stop().await;

    // Restore: a new primary on a directory holding the backup serves it and writes on.
    let rdir = tempfile::tempdir().unwrap();
    std::fs::copy(&out, rdir.path().join("ns.db")).unwrap();
    let restored = TestNode::primary(rdir.path(), &[NS]).await;
    assert_eq!(restored.head(NS), head);
    assert_eq!(
        get_value(&c, &restored, NS, "key0001").await,
        (200, vec![b'a'; 8192])
    );
    assert_eq!(put(&c, &restored, NS, "new", b"write").await, head + 1);
    restored.stop().await;
    verify_file(&rdir.path().join("ns.db"));
}
