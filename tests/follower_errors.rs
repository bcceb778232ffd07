//! What a replica does when applying fails locally: a transient SQLite error (here, the file
//! locked by another connection past busy_timeout) is retried until it passes; a corrupt
//! local file stops the follower, saying the fault is local.

mod common;

use std::time::Duration;

use common::*;
use rusqlite::Connection;

const NS: &str = "ns";

/// Waits until the follower leaves `following`, returning the stats at that moment.
async fn wait_not_following(c: &reqwest::Client, node: &TestNode) -> serde_json::Value {
    wait_for(
        Duration::from_secs(30),
        "the follower to leave `following`",
        async || {
            let st = stats(c, node, NS).await;
            let state = st["replication"]["state"].as_str().unwrap().to_owned();
            (state == "retrying" || state == "stopped").then_some(st)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_retries_a_busy_file_and_converges() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = TestNode::primary_with_grpc(pdir.path(), &[NS], 0).await;
    let replica = TestNode::replica(rdir.path(), &[NS], &primary.grpc(), "").await;
    let c = reqwest::Client::new();
    put(&c, &primary, NS, "a", b"1").await;
    wait_synced(&primary, &replica, NS).await;

    // Another connection holds the replica's write lock: the next apply waits out
    // busy_timeout (5 s) and fails with SQLITE_BUSY.
    let blocker = Connection::open(replica.db(NS)).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    put(&c, &primary, NS, "b", b"2").await;
    let st = wait_not_following(&c, &replica).await;
    assert_eq!(st["replication"]["state"], "retrying", "{st}");
    let err = st["replication"]["last_error"].as_str().unwrap();
    assert!(err.contains("locked"), "{err}");

    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    put(&c, &primary, NS, "c", b"3").await;
    wait_synced(&primary, &replica, NS).await;
    wait_replication_state(&c, &replica, NS, "following").await;
    replica.stop().await;
    primary.stop().await;
    assert_same_files(&primary_db(&pdir), &rdir.path().join("ns.db"));
}

fn primary_db(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join(format!("{NS}.db"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_corrupt_file_stops_naming_it() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = TestNode::primary_with_grpc(pdir.path(), &[NS], 0).await;
    let c = reqwest::Client::new();
    for i in 0..10 {
        put(&c, &primary, NS, &format!("k{i}"), b"v").await;
    }
    let replica = TestNode::replica(rdir.path(), &[NS], &primary.grpc(), "").await;
    wait_synced(&primary, &replica, NS).await;
    replica.stop().await;

    // The replica's disk alters a logged value.
    let path = rdir.path().join("ns.db");
    Connection::open(&path)
        .unwrap()
        .execute("UPDATE wal_log SET value = X'77' WHERE seq = 9", [])
        .unwrap();
    let replica = TestNode::replica(rdir.path(), &[NS], &primary.grpc(), "").await;
    put(&c, &primary, NS, "next", b"v").await;
    let st = wait_not_following(&c, &replica).await;
    assert_eq!(st["replication"]["state"], "stopped", "{st}");
    let err = st["replication"]["last_error"].as_str().unwrap();
    assert!(
        err.contains(&path.display().to_string())
            && err.contains("corrupt")
            && err.contains("local fault"),
        "{err}"
    );
    assert_eq!(st["corrupt"], true);
    assert_eq!(
        replica.head(NS),
        10,
        "nothing was applied on top of the damage"
    );
    replica.stop().await;
    primary.stop().await;
}
