//! Failover without Raft: readiness, promotion with lineage, and the old primary rejoining.
//! The primary is the real binary, killed with SIGKILL.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use reqwest::Method;

const NS: &str = "ns";

fn with_grpc(text: String) -> String {
    format!("{text}[grpc_config]\nport = 0\n")
}

/// A replica of `upstream` that serves the stream too (so it can be promoted and followed).
async fn replica(dir: &Path, upstream: &str, relayer_extra: &str) -> TestNode {
    let line = format!("upstream_address = {upstream:?}\n");
    let text = replica_config(dir, &[NS], upstream, "[grpc_config]\nport = 0\n")
        .replace(&line, &format!("{line}{relayer_extra}\n"));
    TestNode::start_as(ferry::node::Mode::Replica, &text, dir).await
}

async fn ready(c: &reqwest::Client, node: &TestNode) -> (u16, serde_json::Value) {
    call(c, Method::GET, &node.url("/ready"), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_says_which_namespace_is_not_serving_and_why() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = reqwest::Client::new();
    let primary = TestNode::primary_with_grpc(pdir.path(), &[NS], 0).await;
    assert_eq!(ready(&c, &primary).await.0, 200, "a primary is ready");
    let port = primary.node.grpc_addr().unwrap().port();
    let upstream = primary.grpc();
    for i in 0..20 {
        put(&c, &primary, NS, &format!("k{i}"), b"v").await;
    }
    primary.stop().await;

    // Upstream down: not ready, and says so.
    let replica = replica(rdir.path(), &upstream, "max_lag = 5").await;
    let (status, body) = ready(&c, &replica).await;
    assert_eq!(status, 503, "{body}");
    let why = body["namespaces"][NS].as_str().unwrap();
    assert!(
        why.starts_with("connecting") || why.starts_with("retrying"),
        "{body}"
    );
    assert!(body["error"].as_str().unwrap().contains(NS), "{body}");
    // /stats and /metrics say the same.
    let said = stats(&c, &replica, NS).await["ready"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        said.starts_with("connecting") || said.starts_with("retrying"),
        "{said}"
    );
    assert_eq!(metric(&metrics(&c, &replica).await, "ferry_ready", NS), 0.0);
    assert_eq!(
        call(&c, Method::GET, &replica.url("/health"), None).await.0,
        200
    );

    // Upstream back: ready once caught up (20 entries behind is over max_lag 5).
    let primary = TestNode::primary_with_grpc(pdir.path(), &[NS], port).await;
    wait_synced(&primary, &replica, NS).await;
    let (status, body) = wait_for(Duration::from_secs(20), "ready", async || {
        let r = ready(&c, &replica).await;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert_eq!(body["namespaces"][NS], "ready", "{status} {body}");
    assert_eq!(stats(&c, &replica, NS).await["ready"], "ready");
    assert_eq!(metric(&metrics(&c, &replica).await, "ferry_ready", NS), 1.0);
    replica.stop().await;
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_refuses_a_primary_namespace_and_an_unknown_one() {
    let pdir = tempfile::tempdir().unwrap();
    let c = reqwest::Client::new();
    let primary = TestNode::primary_with_grpc(pdir.path(), &[NS], 0).await;
    let (status, body) = call(&c, Method::POST, &primary.url("/api/v1/ns/promote"), None).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("already a primary")
    );
    let (status, _) = call(&c, Method::POST, &primary.url("/api/v1/nope/promote"), None).await;
    assert_eq!(status, 404);
    primary.stop().await;
}

/// Writes `n` keys `{prefix}{i}` through HTTP to a node at `base`.
async fn write_n(c: &reqwest::Client, base: &str, prefix: &str, n: usize) {
    for i in 0..n {
        let body = serde_json::json!({"value": b64(format!("{prefix}{i}").as_bytes())}).to_string();
        let (s, j) = call(
            c,
            Method::PUT,
            &format!("{base}/api/v1/{NS}/kv/{prefix}{i}"),
            Some(&body),
        )
        .await;
        assert_eq!(s, 200, "{j}");
    }
}

async fn stats_at(c: &reqwest::Client, base: &str) -> serde_json::Value {
    call(c, Method::GET, &format!("{base}/api/v1/{NS}/stats"), None)
        .await
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_the_primary_promote_a_replica_and_the_old_primary_rejoins() {
    let (pdir, r1dir, r2dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let c = reqwest::Client::new();
    // P: the real binary.
    let pconf = pdir.path().join("p.toml");
    std::fs::write(&pconf, with_grpc(primary_config(pdir.path(), &[NS]))).unwrap();
    let mut p = Running::spawn(&["server", "--config", pconf.to_str().unwrap()]);
    let p_http = format!(
        "http://{}",
        p.wait_line("HTTP listening on ")
            .rsplit(' ')
            .next()
            .unwrap()
    );
    let p_grpc = p
        .wait_line("gRPC listening on ")
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();

    let r1 = replica(r1dir.path(), &p_grpc, "").await;
    let r2 = replica(r2dir.path(), &p_grpc, "").await;
    write_n(&c, &p_http, "a", 10).await;
    for r in [&r1, &r2] {
        wait_for(Duration::from_secs(30), "replicas at seq 10", async || {
            (r.head(NS) == 10).then_some(())
        })
        .await;
    }
    // R2 goes away for a while: it will be behind R1 at the failover.
    r2.stop().await;
    write_n(&c, &p_http, "b", 5).await;
    wait_for(Duration::from_secs(30), "R1 at seq 15", async || {
        (r1.head(NS) == 15).then_some(())
    })
    .await;
    // R1 goes away too: the next writes reach P only, and are lost to the failover.
    r1.stop().await;
    write_n(&c, &p_http, "lost", 3).await;
    p.child.kill().unwrap(); // SIGKILL
    p.child.wait().unwrap();

    // R1 back (its upstream is gone), then promoted.
    let r1 = replica(r1dir.path(), &p_grpc, "").await;
    let (status, body) = call(&c, Method::POST, &r1.url("/api/v1/ns/promote"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["fork_seq"], 15, "{body}");
    assert_eq!(
        body["prev_log_id"],
        log_id(&pdir.path().join("ns.db")),
        "{body}"
    );
    let st = stats(&c, &r1, NS).await;
    assert_eq!(st["role"], "primary", "{st}");
    assert!(st.get("replication").is_none(), "{st}");
    // It takes writes at once.
    assert_eq!(put(&c, &r1, NS, "c0", b"new").await, 16);

    // R2, re-pointed to R1, continues from its own position without a snapshot.
    let r2 = replica(r2dir.path(), &r1.grpc(), "").await;
    wait_synced(&r1, &r2, NS).await;
    let st = stats(&c, &r2, NS).await;
    assert_eq!(st["replication"]["bootstraps"], 0, "{st}");
    assert_eq!(st["log_id"], body["log_id"], "{st}");
    assert_same_files(&r1.db(NS), &r2.db(NS));

    // The old primary, restarted as a replica of R1: its 3 unreplicated writes go to a
    // rollback file, it re-bootstraps, and ends equal to R1.
    let rconf = pdir.path().join("r.toml");
    std::fs::write(&rconf, replica_config(pdir.path(), &[NS], &r1.grpc(), "")).unwrap();
    let mut old = Running::spawn(&["replica", "--config", rconf.to_str().unwrap()]);
    let old_http = format!(
        "http://{}",
        old.wait_line("HTTP listening on ")
            .rsplit(' ')
            .next()
            .unwrap()
    );
    put(&c, &r1, NS, "c1", b"new").await;
    let want = r1.head(NS);
    wait_for(
        Duration::from_secs(60),
        "the old primary to rejoin",
        async || {
            let st = stats_at(&c, &old_http).await;
            (st["head_seq"] == want && st["replication"]["state"] == "following").then_some(())
        },
    )
    .await;
    let st = stats_at(&c, &old_http).await;
    assert_eq!(st["replication"]["rollbacks"], 1, "{st}");
    assert_eq!(st["replication"]["bootstraps"], 1, "{st}");
    assert!(old.terminate().success());
    let files: Vec<_> = std::fs::read_dir(pdir.path().join("rollback"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    let rolled: Vec<String> = std::fs::read_to_string(&files[0])
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["key"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(rolled, ["lost0", "lost1", "lost2"]);
    assert_eq!(kv_rows(&r1.db(NS)), kv_rows(&pdir.path().join("ns.db")));

    // The promotion survives a restart; a config that still follows the namespace is refused.
    r1.stop().await;
    let text = replica_config(r1dir.path(), &[NS], &p_grpc, "");
    let err = start_node(ferry::node::Mode::Replica, &text)
        .await
        .err()
        .expect("a promoted namespace is not followed again");
    let err = err.to_string();
    assert!(
        err.contains("was promoted") && err.contains("relayer_config.up"),
        "{err}"
    );
    // It says when: the promotion's time as recorded in the file, a moment ago.
    let at: i64 = rusqlite::Connection::open(r1dir.path().join("ns.db"))
        .unwrap()
        .query_row(
            "SELECT value FROM meta WHERE name = 'promoted_at_ms'",
            [],
            |r| r.get::<_, String>(0),
        )
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        now - 600_000 < at && at <= now,
        "promoted at {at}, now {now}"
    );
    assert!(err.contains(&format!("at unix ms {at};")), "{err}");
    // Re-pointed at another upstream, it starts: an operator making it a replica again.
    let text = replica_config(r1dir.path(), &[NS], &r2.grpc(), "");
    let rejoined = start_node(ferry::node::Mode::Replica, &text)
        .await
        .expect("a promoted namespace may follow a new upstream");
    rejoined.shutdown().await;
    r2.stop().await;
    let r1 = TestNode::primary(r1dir.path(), &[NS]).await;
    assert_eq!(stats(&c, &r1, NS).await["role"], "primary");
    r1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_with_acks_returns_once_a_replica_applied_it() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = reqwest::Client::new();
    let primary = TestNode::primary_with_grpc(pdir.path(), &[NS], 0).await;
    let replica = replica(rdir.path(), &primary.grpc(), "").await;
    wait_for(
        Duration::from_secs(20),
        "the follower to be listed",
        async || {
            let st = stats(&c, &primary, NS).await;
            (st["followers"].as_array().map(Vec::len) == Some(1)).then_some(st)
        },
    )
    .await;
    let body = serde_json::json!({"value": b64(b"v")}).to_string();
    for i in 0..20 {
        let url = primary.url(&format!("/api/v1/{NS}/kv/k{i}?acks=1&timeout_ms=10000"));
        let (status, j) = call(&c, Method::PUT, &url, Some(&body)).await;
        assert_eq!(status, 200, "{j}");
        assert_eq!(j["acks"], 1, "{j}");
        let seq = j["seq"].as_i64().unwrap();
        // Applied on the replica before the answer came back, every time.
        assert!(
            replica.head(NS) >= seq,
            "seq {seq} answered before the replica had it"
        );
    }
    let (status, j) = call(
        &c,
        Method::POST,
        &primary.url(&format!("/api/v1/{NS}/kv/batch?acks=1")),
        Some(&serde_json::json!({"operation":"delete","keys":["k1","k2"]}).to_string()),
    )
    .await;
    assert_eq!((status, j["acks"].as_i64()), (200, Some(1)), "{j}");
    assert!(replica.head(NS) >= j["last_seq"].as_i64().unwrap());
    let st = stats(&c, &primary, NS).await;
    let f = &st["followers"][0];
    assert_eq!(f["applied_seq"], st["head_seq"], "{st}");
    assert_eq!(f["lag"], 0, "{st}");
    assert!(
        f["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{st}"
    );

    // Replica gone: the answer says the write is committed, and how many have it.
    replica.stop().await;
    wait_for(
        Duration::from_secs(20),
        "the follower to leave",
        async || {
            let st = stats(&c, &primary, NS).await;
            st.get("followers").is_none().then_some(())
        },
    )
    .await;
    let url = primary.url(&format!("/api/v1/{NS}/kv/late?acks=1&timeout_ms=200"));
    let (status, j) = call(&c, Method::PUT, &url, Some(&body)).await;
    assert_eq!(status, 504, "{j}");
    assert_eq!(j["committed"], true, "{j}");
    assert_eq!(j["acks"], 0, "{j}");
    assert!(j["error"].as_str().unwrap().contains("do not retry"), "{j}");
    let seq = j["seq"].as_i64().unwrap();
    assert_eq!(primary.head(NS), seq, "the write is stored");
    assert_eq!(
        get_value(&c, &primary, NS, "late").await,
        (200, b"v".to_vec())
    );

    // Bad parameters are refused before anything is written.
    for q in [
        "acks=x",
        "acks=1&timeout_ms=0",
        "acks=1&timeout_ms=999999",
        "ack=1",
    ] {
        let url = primary.url(&format!("/api/v1/{NS}/kv/bad?{q}"));
        let (status, j) = call(&c, Method::PUT, &url, Some(&body)).await;
        assert_eq!(status, 400, "{q}: {j}");
    }
    assert_eq!(primary.head(NS), seq, "nothing stored by a refused write");
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_config_sets_a_namespace_default() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = reqwest::Client::new();
    let text = format!(
        "{}[acks_config.{NS}]\nacks = 1\ntimeout_ms = 300\n",
        with_grpc(primary_config(pdir.path(), &[NS]))
    );
    let primary = TestNode::start(&text, pdir.path()).await;
    // No follower yet: the default makes a plain PUT wait, then say so.
    let body = serde_json::json!({"value": b64(b"v")}).to_string();
    let (status, j) = call(
        &c,
        Method::PUT,
        &primary.url("/api/v1/ns/kv/a"),
        Some(&body),
    )
    .await;
    assert_eq!((status, j["committed"].as_bool()), (504, Some(true)), "{j}");
    let replica = replica(rdir.path(), &primary.grpc(), "").await;
    wait_synced(&primary, &replica, NS).await;
    let (status, j) = wait_for(
        Duration::from_secs(20),
        "an acknowledged write",
        async || {
            let r = call(
                &c,
                Method::PUT,
                &primary.url("/api/v1/ns/kv/b"),
                Some(&body),
            )
            .await;
            (r.0 == 200).then_some(r)
        },
    )
    .await;
    assert_eq!(j["acks"], 1, "{status} {j}");
    // acks=0 on the request overrides the default.
    let (status, j) = call(
        &c,
        Method::PUT,
        &primary.url("/api/v1/ns/kv/c?acks=0"),
        Some(&body),
    )
    .await;
    assert_eq!(status, 200);
    assert!(j.get("acks").is_none(), "{j}");
    replica.stop().await;
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_primary_learns_it_was_superseded_and_can_be_fenced() {
    let (pdir, r1dir, r2dir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let c = reqwest::Client::new();
    let primary = TestNode::primary_with_grpc(pdir.path(), &[NS], 0).await;
    let r1 = replica(r1dir.path(), &primary.grpc(), "").await;
    let r2 = replica(r2dir.path(), &primary.grpc(), "").await;
    for i in 0..5 {
        put(&c, &primary, NS, &format!("k{i}"), b"v").await;
    }
    wait_synced(&primary, &r1, NS).await;
    wait_synced(&primary, &r2, NS).await;
    // R1 is promoted while the old primary keeps running (a partition, say); R2 moves over.
    // Through the CLI this time.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["promote", "--target", &r1.base, "--namespace", NS])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let promoted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(promoted["fork_seq"], 5, "{promoted}");
    // Again: refused (exit 1), saying why.
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["promote", "--target", &r1.base, "--namespace", NS])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already a primary"));
    r2.stop().await;
    let r2 = replica(r2dir.path(), &r1.grpc(), "").await;
    wait_for(Duration::from_secs(20), "R2 on R1's log", async || {
        (r2.ns(NS).log_id() == r1.ns(NS).log_id()).then_some(())
    })
    .await;
    assert!(stats(&c, &primary, NS).await.get("superseded_by").is_none());

    // R2 pointed back at the old primary by mistake: it refuses to follow a superseded log,
    // and the old primary learns that it was superseded.
    r2.stop().await;
    let r2 = replica(r2dir.path(), &primary.grpc(), "").await;
    let st = wait_replication_state(&c, &r2, NS, "stopped").await;
    let why = st["replication"]["last_error"].as_str().unwrap();
    assert!(why.contains("stale primary"), "{why}");
    assert_eq!(
        r2.ns(NS).log_id(),
        r1.ns(NS).log_id(),
        "R2 kept the newer history"
    );
    let st = stats(&c, &primary, NS).await;
    assert_eq!(st["superseded_by"]["log_id"], promoted["log_id"], "{st}");
    assert_eq!(st["superseded_by"]["fork_seq"], 5, "{st}");

    // Fenced, it refuses writes (and says why), is not ready, and stays fenced after a restart.
    let (status, _) = call(&c, Method::POST, &primary.url("/api/v1/ns/fence"), None).await;
    assert_eq!(status, 200);
    let body = serde_json::json!({"value": b64(b"late")}).to_string();
    let (status, j) = call(
        &c,
        Method::PUT,
        &primary.url("/api/v1/ns/kv/x"),
        Some(&body),
    )
    .await;
    assert_eq!(status, 403, "{j}");
    assert!(j["error"].as_str().unwrap().contains("fenced"), "{j}");
    assert_eq!(ready(&c, &primary).await.0, 503);
    let head = primary.head(NS);
    primary.stop().await;
    let primary = TestNode::primary_with_grpc(pdir.path(), &[NS], 0).await;
    let (status, _) = call(
        &c,
        Method::PUT,
        &primary.url("/api/v1/ns/kv/x"),
        Some(&body),
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(primary.head(NS), head);
    assert_eq!(stats(&c, &primary, NS).await["fenced"], true);
    r2.stop().await;
    r1.stop().await;
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_further_behind_than_max_lag_is_not_ready() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = reqwest::Client::new();
    let primary = TestNode::primary_with_grpc(pdir.path(), &[NS], 0).await;
    // ~3 MB of log: the replica gets part of it, then the proxy holds the stream.
    for b in 0..30 {
        let items: Vec<_> = (0..10)
            .map(|i| serde_json::json!({"key": format!("k{b}-{i}"), "value": b64(&[b'x'; 10_000])}))
            .collect();
        let body = serde_json::json!({"operation": "put", "items": items}).to_string();
        let url = primary.url(&format!("/api/v1/{NS}/kv/batch"));
        assert_eq!(call(&c, Method::POST, &url, Some(&body)).await.0, 200);
    }
    let stall = Arc::new(AtomicBool::new(true));
    let proxy = proxy(primary.grpc(), 2_500_000, PastLimit::Stall(stall.clone())).await;
    let replica = replica(rdir.path(), &proxy, "max_lag = 10").await;
    // Following, but stuck behind: not ready, and the reason says how far.
    let body = wait_for(Duration::from_secs(30), "catching up", async || {
        let (status, body) = ready(&c, &replica).await;
        let why = body["namespaces"][NS]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (status == 503 && why.starts_with("catching up")).then_some(body)
    })
    .await;
    assert!(
        body["namespaces"][NS]
            .as_str()
            .unwrap()
            .contains("max_lag 10"),
        "{body}"
    );
    assert!(replica.head(NS) < primary.head(NS));
    // Released, it catches up and is ready.
    stall.store(false, Ordering::SeqCst);
    wait_synced(&primary, &replica, NS).await;
    wait_for(Duration::from_secs(30), "ready", async || {
        (ready(&c, &replica).await.0 == 200).then_some(())
    })
    .await;
    replica.stop().await;
    primary.stop().await;
}

/// A promoted upstream whose lineage says it continues this replica's log, but whose entry at
/// the replica's head differs (the same log_id on a file with another history: a restore gone
/// wrong, a hand-edited file), is a divergence, found before anything is adopted: with
/// `on_divergence = "stop"` the replica keeps its log_id and says at which seq they disagree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_disagrees_at_its_head_with_a_promoted_upstream_does_not_adopt_its_log() {
    let (pdir, r1dir, xdir) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let c = reqwest::Client::new();
    let primary = TestNode::primary_with_grpc(pdir.path(), &[NS], 0).await;
    write_n(&c, &primary.base, "a", 5).await;
    let r1 = replica(r1dir.path(), &primary.grpc(), "").await;
    wait_synced(&primary, &r1, NS).await;
    let old_log = log_id(&pdir.path().join("ns.db"));
    // X: three entries of its own, then given the primary's log_id by hand.
    let x = TestNode::primary(xdir.path(), &[NS]).await;
    write_n(&c, &x.base, "x", 3).await;
    x.stop().await;
    rusqlite::Connection::open(xdir.path().join("ns.db"))
        .unwrap()
        .execute(
            "UPDATE meta SET value = ?1 WHERE name = 'log_id'",
            [&old_log],
        )
        .unwrap();
    primary.stop().await;
    let (status, body) = call(&c, Method::POST, &r1.url("/api/v1/ns/promote"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["prev_log_id"].as_str(), body["fork_seq"].as_i64()),
        (Some(old_log.as_str()), Some(5))
    );

    // X follows R1: its head (3) is before R1's fork (5) of X's own log_id.
    let x = replica(xdir.path(), &r1.grpc(), "on_divergence = \"stop\"").await;
    let st = wait_replication_state(&c, &x, NS, "stopped").await;
    let err = st["replication"]["last_error"].as_str().unwrap();
    assert!(
        err.contains("was forked from this replica's log")
            && err.contains("disagrees with it at seq 3"),
        "{err}"
    );
    assert_eq!(
        log_id(&xdir.path().join("ns.db")),
        old_log,
        "X's log_id is untouched"
    );
    assert_eq!(x.head(NS), 3);
    x.stop().await;
    r1.stop().await;
}
