//! Replication over real gRPC on loopback, with real SQLite files and real ZeroMQ sockets.

mod common;

use common::*;
use ferry::replication::pb::replication_client::ReplicationClient;
use ferry::replication::pb::{PositionRequest, SnapshotChunk, SnapshotRequest, TailRequest};
use ferry::replication::{ERROR_KEY, ErrorKind};
use reqwest::Method;
use serde_json::json;

const NS: &str = "ns";

/// The temp dirs of a [`pair`], deleted when dropped.
struct Dirs {
    primary: tempfile::TempDir,
    _replica: tempfile::TempDir,
}

/// A primary serving gRPC and a replica of it, for namespace [`NS`], each on a temp dir of its
/// own. Bindings drop last to first, so `let (dirs, primary, replica) = pair().await` keeps
/// the dirs until the nodes are gone.
async fn pair() -> (Dirs, TestNode, TestNode) {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = TestNode::primary_with_grpc(pdir.path(), &[NS], 0).await;
    let replica = TestNode::replica(rdir.path(), &[NS], &primary.grpc(), "").await;
    let dirs = Dirs {
        primary: pdir,
        _replica: rdir,
    };
    (dirs, primary, replica)
}

async fn batch_put(
    c: &reqwest::Client,
    node: &TestNode,
    ns: &str,
    from: usize,
    n: usize,
    value_len: usize,
) {
    let items: Vec<_> = (from..from + n)
        .map(|i| json!({"key": format!("key{i:06}"), "value": b64(&vec![b'a' + (i % 26) as u8; value_len])}))
        .collect();
    let body = json!({"operation": "put", "items": items}).to_string();
    let (s, j) = call(
        c,
        Method::POST,
        &node.url(&format!("/api/v1/{ns}/kv/batch")),
        Some(&body),
    )
    .await;
    assert_eq!(s, 200, "{j}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_transcript() {
    let (_dirs, primary, replica) = pair().await;
    let sub = Subscriber::connect(&replica, NS).await;
    let c = reqwest::Client::new();

    put(
        &c,
        &primary,
        NS,
        "lww:user-status",
        br#"{"value":"online","timestamp":1,"replica":"dc1"}"#,
    )
    .await;
    put(
        &c,
        &primary,
        NS,
        "counter:page-views",
        br#"{"replica":"dc1","count":5}"#,
    )
    .await;
    let batch = json!({"operation": "put", "items": [
        {"key": "a", "value": b64(b"1")}, {"key": "b", "value": b64(b"2")}]});
    call(
        &c,
        Method::POST,
        &primary.url(&format!("/api/v1/{NS}/kv/batch")),
        Some(&batch.to_string()),
    )
    .await;
    call(
        &c,
        Method::DELETE,
        &primary.url(&format!("/api/v1/{NS}/kv/a")),
        None,
    )
    .await;
    put(
        &c,
        &primary,
        NS,
        "lww:user-status",
        br#"{"value":"away","timestamp":2,"replica":"dc1"}"#,
    )
    .await;
    let last = primary.head(NS);

    let notes = sub.collect_until(last);
    wait_synced(&primary, &replica, NS).await;
    assert_same_files(&primary.db(NS), &replica.db(NS));

    let mut t = String::from("notifications (topic, message):\n");
    for (topic, mut j) in notes {
        j["ts_ms"] = json!("[ts]");
        t.push_str(&format!("{topic} {j}\n"));
    }
    t.push_str("\nreplica wal_log (seq, txn, op, key, value):\n");
    for r in wal_rows(&replica.db(NS)) {
        let v = r.value.map(|v| String::from_utf8(v).unwrap());
        t.push_str(&format!("{} {} {} {} {:?}\n", r.seq, r.txn, r.op, r.key, v));
    }
    t.push_str("\nreplica kv (key, value, seq):\n");
    for (k, v, s) in kv_rows(&replica.db(NS)) {
        t.push_str(&format!("{k} {} {s}\n", String::from_utf8(v).unwrap()));
    }
    let (_, mut stats) = call(
        &c,
        Method::GET,
        &replica.url(&format!("/api/v1/{NS}/stats")),
        None,
    )
    .await;
    stats["replication"]["upstream"] = json!("[upstream]");
    t.push_str(&format!(
        "\nreplica stats.replication: {}\n",
        stats["replication"]
    ));
    t.push_str(&format!("replica stats.notifier: {}\n", stats["notifier"]));

    replica.stop().await;
    primary.stop().await;
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!("replication_transcript", t));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_applied_entry_is_notified_once_in_order() {
    let (_dirs, primary, replica) = pair().await;
    let sub = Subscriber::connect(&replica, NS).await;
    let c = reqwest::Client::new();
    // Concurrent single writes and batches, so the replica applies groups of many sizes.
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (c, url) = (c.clone(), primary.url(&format!("/api/v1/{NS}/kv/")));
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let body = json!({"value": b64(b"v")}).to_string();
                let (s, _) = call(&c, Method::PUT, &format!("{url}w{w}-{i}"), Some(&body)).await;
                assert_eq!(s, 200);
            }
        }));
    }
    for i in 0..5 {
        batch_put(&c, &primary, NS, i * 30, 30, 10).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let last = primary.head(NS);
    assert_eq!(last, 550);
    let notes = sub.collect_until(last);
    wait_synced(&primary, &replica, NS).await;
    let rows = wal_rows(&replica.db(NS));
    assert_eq!(notes.len(), rows.len(), "one notification per entry");
    for ((topic, n), r) in notes.iter().zip(&rows) {
        assert_eq!(topic, "ns.kv");
        assert_eq!(n["seq_num"], r.seq);
        assert_eq!(n["txn"], r.txn);
        assert_eq!(n["key"], r.key);
        assert_eq!(n["operation"], r.op);
        assert_eq!(n["namespace"], NS);
        assert_eq!(n["entry_type"], "kv");
    }
    replica.stop().await;
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_replica_catches_up_and_a_write_to_it_is_refused() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = TestNode::primary_with_grpc(pdir.path(), &[NS], 0).await;
    let c = reqwest::Client::new();
    for i in 0..100 {
        batch_put(&c, &primary, NS, i * 100, 100, 100).await;
    }
    call(
        &c,
        Method::DELETE,
        &primary.url(&format!("/api/v1/{NS}/kv/key000007")),
        None,
    )
    .await;
    assert_eq!(primary.head(NS), 10_001);
    let replica = TestNode::replica(rdir.path(), &[NS], &primary.grpc(), "").await;
    wait_synced(&primary, &replica, NS).await;
    assert_same_files(&primary.db(NS), &replica.db(NS));

    // Replicas are read-only: 403, nothing stored.
    let body = json!({"value": b64(b"x")}).to_string();
    let (s, j) = call(
        &c,
        Method::PUT,
        &replica.url(&format!("/api/v1/{NS}/kv/key000001")),
        Some(&body),
    )
    .await;
    assert_eq!(s, 403);
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("read-only replica of"),
        "{j}"
    );
    let (s, _) = call(
        &c,
        Method::DELETE,
        &replica.url(&format!("/api/v1/{NS}/kv/key000001")),
        None,
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = call(
        &c,
        Method::POST,
        &replica.url(&format!("/api/v1/{NS}/kv/batch")),
        Some(&json!({"operation": "delete", "keys": ["key000001"]}).to_string()),
    )
    .await;
    assert_eq!(s, 403);
    // Reads are served.
    assert_eq!(
        get_value(&c, &replica, NS, "key000001").await,
        (200, vec![b'b'; 100])
    );
    assert_same_files(&primary.db(NS), &replica.db(NS));
    replica.stop().await;
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_restarting_under_a_connected_replica() {
    let (dirs, primary, replica) = pair().await;
    let port = primary.node.grpc_addr().unwrap().port();
    let c = reqwest::Client::new();
    batch_put(&c, &primary, NS, 0, 50, 10).await;
    wait_synced(&primary, &replica, NS).await;
    primary.stop().await;

    // While the primary is down the replica keeps serving reads and says it is retrying.
    assert_eq!(get_value(&c, &replica, NS, "key000001").await.0, 200);
    wait_replication_state(&c, &replica, NS, "retrying").await;

    let primary = TestNode::primary_with_grpc(dirs.primary.path(), &[NS], port).await;
    batch_put(&c, &primary, NS, 50, 50, 10).await;
    wait_synced(&primary, &replica, NS).await;
    assert_same_files(&primary.db(NS), &replica.db(NS));
    let st = stats(&c, &replica, NS).await;
    assert_eq!(st["replication"]["state"], "following");
    assert_eq!(st["replication"]["applied_seq"], 100);
    replica.stop().await;
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_chain_and_end_identical() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let primary = TestNode::primary_with_grpc(dirs[0].path(), &[NS, "two"], 0).await;
    let c = reqwest::Client::new();
    batch_put(&c, &primary, NS, 0, 200, 20).await;
    let hop1 = TestNode::replica(
        dirs[1].path(),
        &[NS, "two"],
        &primary.grpc(),
        "[grpc_config]\nport = 0\n",
    )
    .await;
    let hop2 = TestNode::replica(dirs[2].path(), &[NS, "two"], &hop1.grpc(), "").await;
    // Live writes while the chain is up.
    for i in 0..20 {
        put(&c, &primary, NS, &format!("live{i}"), b"x").await;
        put(&c, &primary, "two", &format!("k{i}"), b"y").await;
    }
    for ns in [NS, "two"] {
        wait_synced(&primary, &hop2, ns).await;
        assert_same_files(&primary.db(ns), &hop1.db(ns));
        assert_same_files(&primary.db(ns), &hop2.db(ns));
        // A replica serving the stream serves the same snapshot as the primary.
        assert_eq!(
            snapshot(&hop1, ns).await.unwrap(),
            snapshot(&primary, ns).await.unwrap()
        );
    }
    hop2.stop().await;
    hop1.stop().await;
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_entry_stops_the_follower_and_keeps_its_data() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let c = reqwest::Client::new();
    let primary = TestNode::primary_with_grpc(pdir.path(), &[NS], 0).await;
    for i in 0..3 {
        put(&c, &primary, NS, &format!("k{i}"), b"good").await;
    }
    let replica = TestNode::replica(rdir.path(), &[NS], &primary.grpc(), "").await;
    wait_synced(&primary, &replica, NS).await;
    replica.stop().await;
    put(&c, &primary, NS, "k3", b"new").await;
    put(&c, &primary, NS, "k4", b"new").await;
    // More than the 100 newest entries the primary checks itself at open: seq 5 is served.
    batch_put(&c, &primary, NS, 0, 150, 10).await;
    primary.stop().await;
    rusqlite::Connection::open(pdir.path().join("ns.db"))
        .unwrap()
        .execute("UPDATE wal_log SET crc = crc + 1 WHERE seq = 5", [])
        .unwrap();
    let before = (
        wal_rows(&rdir.path().join("ns.db")),
        kv_rows(&rdir.path().join("ns.db")),
    );

    let primary = TestNode::primary_with_grpc(pdir.path(), &[NS], 0).await;
    let replica = TestNode::replica(rdir.path(), &[NS], &primary.grpc(), "").await;
    let stats = wait_replication_state(&c, &replica, NS, "stopped").await;
    let err = stats["replication"]["last_error"].as_str().unwrap();
    assert!(err.contains("crc mismatch at seq 5"), "{err}");
    // The batch holding the bad entry was refused whole; what the replica had is intact.
    assert_eq!(
        (wal_rows(&replica.db(NS)), kv_rows(&replica.db(NS))),
        before
    );
    assert_eq!(
        get_value(&c, &replica, NS, "k2").await,
        (200, b"good".to_vec())
    );
    replica.stop().await;
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_grpc_requests_get_typed_errors_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let c = reqwest::Client::new();
    let primary = TestNode::primary_with_grpc(dir.path(), &[NS], 0).await;
    put(&c, &primary, NS, "k1", b"v").await;
    put(&c, &primary, NS, "k2", b"v").await;
    let mut client = ReplicationClient::connect(format!("http://{}", primary.grpc()))
        .await
        .unwrap();
    let pos = client
        .position(PositionRequest {
            probe_seq: 0,
            namespace: NS.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((pos.head_seq, pos.oldest_seq, pos.log_id.len()), (2, 1, 32));
    assert!(!pos.probe_found, "no probe was asked for: {pos:?}");
    // A probe answers the crc of the entry at that seq, and only for a seq the log holds.
    for (probe_seq, found, crc) in [(2, true, pos.head_crc), (3, false, 0)] {
        let p = client
            .position(PositionRequest {
                probe_seq,
                namespace: NS.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (p.probe_found, p.probe_crc),
            (found, crc),
            "probe {probe_seq}"
        );
    }

    // A healthy stream stays open across the bad requests below.
    let mut good = client
        .tail(TailRequest {
            follower_id: String::new(),
            namespace: NS.into(),
            log_id: pos.log_id.clone(),
            from_seq: 1,
            prev_crc: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = good.message().await.unwrap().unwrap();
    assert_eq!(
        first.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2]
    );

    let tail = |namespace: &str, log_id: &str, from_seq, prev_crc| TailRequest {
        follower_id: String::new(),
        namespace: namespace.into(),
        log_id: log_id.into(),
        from_seq,
        prev_crc,
    };
    let other_id = "0123456789abcdef0123456789abcdef";
    let cases = [
        (
            tail("nope", &pos.log_id, 1, 0),
            tonic::Code::NotFound,
            ErrorKind::UnknownNamespace,
        ),
        (
            tail(NS, "garbage", 1, 0),
            tonic::Code::InvalidArgument,
            ErrorKind::InvalidArgument,
        ),
        (
            tail(NS, &pos.log_id, 0, 0),
            tonic::Code::InvalidArgument,
            ErrorKind::InvalidArgument,
        ),
        (
            tail(NS, &pos.log_id, 10, 0),
            tonic::Code::OutOfRange,
            ErrorKind::AheadOfUpstream,
        ),
        (
            tail(NS, other_id, 1, 0),
            tonic::Code::FailedPrecondition,
            ErrorKind::HistoryDiffers,
        ),
        (
            tail(NS, &pos.log_id, 2, 12345),
            tonic::Code::FailedPrecondition,
            ErrorKind::HistoryDiffers,
        ),
    ];
    for (req, code, kind) in cases {
        let what = format!("{req:?}");
        let status = client
            .tail(req)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what} accepted"));
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert_eq!(
            status.metadata().get(ERROR_KEY).unwrap().to_str().unwrap(),
            kind.code(),
            "{what}"
        );
        assert!(!status.message().is_empty());
    }
    let status = client
        .position(PositionRequest {
            probe_seq: 0,
            namespace: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(ErrorKind::of(&status), Some(ErrorKind::UnknownNamespace));

    // The healthy stream still receives new entries as they commit.
    put(&c, &primary, NS, "k3", b"v").await;
    let next = loop {
        let m = good.message().await.unwrap().unwrap();
        if !m.entries.is_empty() {
            break m;
        }
    };
    assert_eq!(next.entries[0].seq, 3);
    assert_eq!(next.entries[0].key, "k3");
    drop(good);
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_on_a_replica_can_wait_for_a_seq() {
    let (_dirs, primary, replica) = pair().await;
    let c = reqwest::Client::new();
    for i in 0..20 {
        // Read-your-writes: the seq a write returns, presented to the replica right away.
        let seq = put(&c, &primary, NS, "k", format!("v{i}").as_bytes()).await;
        let url = replica.url(&format!("/api/v1/{NS}/kv/k?min_seq={seq}"));
        let (s, got) = call(&c, Method::GET, &url, None).await;
        assert_eq!(s, 200, "{got}");
        assert_eq!(got["seq"], seq);
        assert_eq!(
            unb64(got["value"].as_str().unwrap()),
            format!("v{i}").as_bytes()
        );
    }
    let head = primary.head(NS);
    let (s, j) = call(
        &c,
        Method::GET,
        &replica.url(&format!(
            "/api/v1/{NS}/kv/k?min_seq={}&timeout_ms=50",
            head + 10
        )),
        None,
    )
    .await;
    assert_eq!(s, 504, "{j}");
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains(&format!("seq {} did not arrive within 50 ms", head + 10)),
        "{j}"
    );
    let (s, j) = call(
        &c,
        Method::GET,
        &replica.url(&format!("/api/v1/{NS}/kv/k?min_seq=1&timeout_ms=999999")),
        None,
    )
    .await;
    assert_eq!(s, 400, "{j}");
    let (s, j) = call(
        &c,
        Method::GET,
        &replica.url(&format!("/api/v1/{NS}/kv/k?min_sq=1")),
        None,
    )
    .await;
    assert_eq!(s, 400, "{j}");
    replica.stop().await;
    primary.stop().await;
}

#[tokio::test]
async fn a_taken_notifier_port_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let text = format!(
        "{}[notifier_config.{NS}]\nbind_port = {port}\n",
        primary_config(dir.path(), &[NS])
    );
    let config = ferry::config::Config::parse(&text, std::path::Path::new("n.toml")).unwrap();
    let listeners = ferry::node::Listeners::bind(&config).await.unwrap();
    let err = match ferry::node::Node::start(config, ferry::node::Mode::Primary, listeners).await {
        Ok(_) => panic!("started with its notifier port taken"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(&format!(
            "cannot start the ZeroMQ notifier of namespace \"{NS}\" on tcp://127.0.0.1:{port}"
        )),
        "{err}"
    );
    assert!(
        err.to_lowercase().contains("address already in use"),
        "{err}"
    );
    // The namespace file was closed cleanly and opens again.
    let node = TestNode::primary(dir.path(), &[NS]).await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_accepts_but_never_answers_is_retried() {
    // A black hole: connections are accepted and then nothing is ever sent back.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = hole.local_addr().unwrap().to_string();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for conn in hole.incoming().map_while(Result::ok) {
            keep.lock().unwrap().push(conn);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let replica = TestNode::replica(dir.path(), &[NS], &addr, "").await;
    let c = reqwest::Client::new();
    let st = wait_replication_state(&c, &replica, NS, "retrying").await;
    let err = st["replication"]["last_error"].as_str().unwrap();
    assert!(err.contains("no answer from the upstream"), "{err}");
    assert!(
        !held.lock().unwrap().is_empty(),
        "the follower never connected"
    );
    replica.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_file_created_by_a_primary_can_become_a_replica() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // `ferry server` ran once on the replica's directory: the file has its own log_id and no
    // entries, so there is no history to lose by following another log.
    TestNode::primary(rdir.path(), &[NS]).await.stop().await;
    let primary = TestNode::primary_with_grpc(pdir.path(), &[NS], 0).await;
    let c = reqwest::Client::new();
    put(&c, &primary, NS, "k", b"v").await;
    let replica = TestNode::replica(rdir.path(), &[NS], &primary.grpc(), "").await;
    wait_synced(&primary, &replica, NS).await;
    assert_same_files(&primary.db(NS), &replica.db(NS));
    replica.stop().await;
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_show_position_lag_and_notifications() {
    let (_dirs, primary, replica) = pair().await;
    let c = reqwest::Client::new();
    let _sub = Subscriber::connect(&replica, NS).await;
    batch_put(&c, &primary, NS, 0, 3, 5).await;
    wait_synced(&primary, &replica, NS).await;
    let p = metrics(&c, &primary).await;
    assert!(
        p.contains("# TYPE ferry_head_seq gauge\nferry_head_seq{namespace=\"ns\"} 3\n"),
        "{p}"
    );
    assert!(
        !p.contains("ferry_replication_lag_entries{"),
        "a primary has no followers: {p}"
    );
    let want = [
        "ferry_head_seq{namespace=\"ns\"} 3",
        "ferry_replication_upstream_head_seq{namespace=\"ns\"} 3",
        "ferry_replication_lag_entries{namespace=\"ns\"} 0",
        "ferry_replication_following{namespace=\"ns\"} 1",
        "ferry_notifications_sent_total{namespace=\"ns\"} 3",
        "ferry_notifier_subscribed_topics{namespace=\"ns\"} 1",
    ];
    let r = wait_for(
        std::time::Duration::from_secs(10),
        "the replica's metrics",
        async || {
            let r = metrics(&c, &replica).await;
            want.iter()
                .all(|line| r.lines().any(|l| l == *line))
                .then_some(r)
        },
    )
    .await;
    assert!(
        r.contains("# TYPE ferry_notifications_sent_total counter"),
        "{r}"
    );
    // One batch request on the primary, one commit for it; the replica commits what it
    // applies, and stores no client requests.
    assert_eq!(metric(&p, "ferry_commit_requests_total", NS), 1.0);
    assert_eq!(metric(&p, "ferry_commits_total", NS), 1.0);
    assert!(metric(&r, "ferry_commits_total", NS) >= 1.0);
    assert_eq!(metric(&r, "ferry_commit_requests_total", NS), 0.0);
    replica.stop().await;
    primary.stop().await;
}

/// A primary serving gRPC with `n` values of 1,000 bytes in [`NS`] (keys `key000000` on).
async fn primary_with_values(dir: &std::path::Path, n: usize) -> (TestNode, reqwest::Client) {
    let primary = TestNode::primary_with_grpc(dir, &[NS], 0).await;
    let c = reqwest::Client::new();
    for from in (0..n).step_by(500) {
        batch_put(&c, &primary, NS, from, 500.min(n - from), 1000).await;
    }
    (primary, c)
}

/// A `Snapshot` stream of `ns` from `node`, not read yet.
async fn open_snapshot(
    node: &TestNode,
    ns: &str,
) -> Result<tonic::Streaming<SnapshotChunk>, tonic::Status> {
    let mut client = ReplicationClient::connect(format!("http://{}", node.grpc()))
        .await
        .unwrap();
    let request = SnapshotRequest {
        after_key: None,
        namespace: ns.into(),
    };
    Ok(client.snapshot(request).await?.into_inner())
}

/// Every chunk of a `Snapshot` of `ns` from `node`, in order.
async fn snapshot(node: &TestNode, ns: &str) -> Result<Vec<SnapshotChunk>, tonic::Status> {
    let mut stream = open_snapshot(node, ns).await?;
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await? {
        chunks.push(chunk);
    }
    Ok(chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_the_kv_of_one_seq_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    // 3,500 values of 1,000 bytes: more than the 1 MiB a chunk holds, three times over.
    let (primary, c) = primary_with_values(dir.path(), 3_500).await;
    // Overwrites and deletes, so that kv is not simply every key ever written.
    batch_put(&c, &primary, NS, 100, 50, 20).await;
    for i in 10..20 {
        let url = primary.url(&format!("/api/v1/{NS}/kv/key{i:06}"));
        assert_eq!(call(&c, Method::DELETE, &url, None).await.0, 200);
    }
    let before = primary.node.store().get(NS).unwrap().head().seq;

    // Writes keep committing while the snapshot is read.
    let writes = async {
        for i in 0..100 {
            put(&c, &primary, NS, &format!("live{i:03}"), b"during").await;
            put(&c, &primary, NS, &format!("key{i:06}"), b"overwritten").await;
        }
    };
    let (chunks, ()) = tokio::join!(snapshot(&primary, NS), writes);
    let chunks = chunks.unwrap();

    let (log_id, seq, crc) = (&chunks[0].log_id, chunks[0].seq, chunks[0].crc);
    assert!(chunks.len() >= 4, "{} chunks", chunks.len());
    for (i, chunk) in chunks.iter().enumerate() {
        assert_eq!((&chunk.log_id, chunk.seq, chunk.crc), (log_id, seq, crc));
        assert_eq!(chunk.done, i == chunks.len() - 1, "done on chunk {i}");
    }
    assert_eq!(*log_id, primary.log_id(NS));
    let head = primary.node.store().get(NS).unwrap().head().seq;
    assert!(before <= seq && seq <= head, "{before} <= {seq} <= {head}");

    // The rows are exactly what replaying the log up to `seq` gives, in key order.
    let log = wal_rows(&primary.db(NS));
    let mut replay = std::collections::BTreeMap::new();
    for r in log.iter().take_while(|r| r.seq <= seq) {
        match r.op.as_str() {
            "put" => replay.insert(r.key.clone(), (r.value.clone().unwrap(), r.seq, r.ts_ms)),
            _ => replay.remove(&r.key),
        };
    }
    let rows: Vec<_> = chunks
        .into_iter()
        .flat_map(|c| c.rows)
        .map(|r| (r.key, (r.value, r.seq, r.ts_ms)))
        .collect();
    assert!(
        rows.windows(2).all(|w| w[0].0 < w[1].0),
        "keys out of order"
    );
    assert_eq!(rows, replay.into_iter().collect::<Vec<_>>());
    assert_eq!(
        i64::from(crc),
        log[seq as usize - 1].crc,
        "crc of entry {seq}"
    );
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_an_empty_log_and_of_an_unknown_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let primary = TestNode::primary_with_grpc(dir.path(), &[NS], 0).await;
    let chunks = snapshot(&primary, NS).await.unwrap();
    assert_eq!(
        chunks,
        vec![SnapshotChunk {
            log_id: primary.log_id(NS),
            seq: 0,
            crc: 0,
            rows: vec![],
            done: true,
        }]
    );
    let err = snapshot(&primary, "nope").await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(ErrorKind::of(&err), Some(ErrorKind::UnknownNamespace));
    assert!(err.message().contains("nope"), "{}", err.message());
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_readers_that_stall_do_not_hold_up_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    // 15 MB: far more than a stream's flow-control window and the server's buffers hold
    // (about 4 chunks of 1 MiB), so the server's side really is left waiting.
    let (primary, _) = primary_with_values(dir.path(), 15_000).await;
    let mut snapshot = open_snapshot(&primary, NS).await.unwrap();
    let first = snapshot.message().await.unwrap().expect("a first chunk");
    assert!(!first.done);
    let log_id = first.log_id.clone();
    let mut client = ReplicationClient::connect(format!("http://{}", primary.grpc()))
        .await
        .unwrap();
    let mut tail = client
        .tail(TailRequest {
            follower_id: String::new(),
            namespace: NS.into(),
            log_id,
            from_seq: 1,
            prev_crc: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(tail.message().await.unwrap().is_some());
    // Both readers stop pulling: the server's side of each waits on them.
    tokio::time::timeout(std::time::Duration::from_secs(10), primary.stop())
        .await
        .expect("shutdown waited on stalled stream readers");
    // What is left of the snapshot ends without `done`: cut short, and recognisably so.
    let mut done = false;
    while let Ok(Some(chunk)) = snapshot.message().await {
        done |= chunk.done;
    }
    assert!(
        !done,
        "a snapshot cut by shutdown must not claim to be complete"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_on_a_pruned_log_bootstraps_from_a_snapshot() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = TestNode::primary_with_grpc(pdir.path(), &[NS], 0).await;
    let c = reqwest::Client::new();
    batch_put(&c, &primary, NS, 0, 100, 10).await;
    // What retention does: drop the oldest entries (kv keeps their effect).
    let pruned = primary
        .ns(NS)
        .prune(ferry::store::Prune {
            upto: 50,
            older_than_ms: None,
            max_rows: 1000,
        })
        .await
        .unwrap();
    assert_eq!(pruned.deleted, 50);

    let mut client = ReplicationClient::connect(format!("http://{}", primary.grpc()))
        .await
        .unwrap();
    let tail_from = |from_seq| TailRequest {
        follower_id: String::new(),
        namespace: NS.into(),
        log_id: primary.log_id(NS),
        from_seq,
        prev_crc: 0,
    };
    let err = client.tail(tail_from(1)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(ErrorKind::of(&err), Some(ErrorKind::SnapshotNeeded));
    assert!(err.message().contains("starts at 51"), "{}", err.message());

    // A brand-new replica bootstraps from a snapshot instead, then tails on.
    let replica = TestNode::replica(rdir.path(), &[NS], &primary.grpc(), "").await;
    wait_synced(&primary, &replica, NS).await;
    // "following" again means the bootstrap is counted (the head shows a moment earlier).
    let st = wait_replication_state(&c, &replica, NS, "following").await;
    assert_eq!(st["replication"]["bootstraps"], 1, "{st}");
    assert_eq!(st["base_seq"], 100, "{st}");
    assert_eq!(kv_rows(&primary.db(NS)), kv_rows(&replica.db(NS)));
    put(&c, &primary, NS, "after", b"bootstrap").await;
    wait_synced(&primary, &replica, NS).await;
    assert_eq!(
        get_value(&c, &replica, NS, "after").await,
        (200, b"bootstrap".to_vec())
    );
    replica.stop().await;
    primary.stop().await;
}

/// An idle Tail stream is kept alive: with nothing to send, the upstream sends a heartbeat (no
/// entries, its head seq) at least every HEARTBEAT, which is how a follower tells an idle
/// upstream from a silent one. (Catches: no heartbeats on an idle stream.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tail_stream_gets_heartbeats_with_the_head() {
    use ferry::replication::service::HEARTBEAT;
    let dir = tempfile::tempdir().unwrap();
    let c = reqwest::Client::new();
    let primary = TestNode::primary_with_grpc(dir.path(), &[NS], 0).await;
    put(&c, &primary, NS, "k", b"v").await;
    let mut client = ReplicationClient::connect(format!("http://{}", primary.grpc()))
        .await
        .unwrap();
    let mut tail = client
        .tail(TailRequest {
            follower_id: String::new(),
            namespace: NS.into(),
            log_id: primary.log_id(NS),
            from_seq: 1,
            prev_crc: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = tail.message().await.unwrap().unwrap();
    assert_eq!(first.entries.len(), 1);
    // Generous deadlines for a loaded machine: the point is that beats keep coming.
    for _ in 0..2 {
        let beat = tokio::time::timeout(HEARTBEAT * 10, tail.message())
            .await
            .expect("no heartbeat on an idle stream")
            .unwrap()
            .expect("the stream stays open");
        assert!(beat.entries.is_empty(), "{beat:?}");
        assert_eq!(beat.head_seq, 1);
    }
    primary.stop().await;
}

/// A batch request is one atomic group, and however it is cut into stream messages, no
/// message ends inside it: a follower applies each message in one transaction, so a replica
/// never exposes half of a request. Checked on the read that feeds the stream and on the
/// Tail stream itself, both from memory (just committed) and from the file (after a restart,
/// which empties the in-memory window). (Catches: `reader::entries` stopping at max_count
/// inside a group.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stream_message_ends_inside_an_atomic_batch() {
    use ferry::replication::service::MAX_BATCH_ENTRIES;
    let dir = tempfile::tempdir().unwrap();
    let c = reqwest::Client::new();
    let primary = TestNode::primary_with_grpc(dir.path(), &[NS], 0).await;
    // seq 1 alone, then one request of 2.5 stream messages' worth of entries, then one more.
    put(&c, &primary, NS, "first", b"v").await;
    let group = MAX_BATCH_ENTRIES as i64 * 5 / 2;
    batch_put(&c, &primary, NS, 0, group as usize, 8).await;
    put(&c, &primary, NS, "last", b"v").await;
    assert_eq!(primary.head(NS), group + 2);
    assert_batches_whole(&primary, group).await;
    primary.stop().await;
    let primary = TestNode::primary_with_grpc(dir.path(), &[NS], 0).await;
    assert_batches_whole(&primary, group).await;
    primary.stop().await;
}

/// The log is seq 1, a group of `group` entries from seq 2, and one more entry.
async fn assert_batches_whole(primary: &TestNode, group: i64) {
    let ns = primary.ns(NS);
    let head = group + 2;
    // Asked for fewer entries than the group holds, a read still ends where it ends.
    for from in [1, 2, 3] {
        let read = ns.entries_from(from, 10, 1 << 20).await.unwrap();
        assert_eq!(read.first().map(|e| e.seq), Some(from));
        assert_eq!(read.last().map(|e| e.seq), Some(group + 1), "from {from}");
    }

    let mut client = ReplicationClient::connect(format!("http://{}", primary.grpc()))
        .await
        .unwrap();
    let mut tail = client
        .tail(TailRequest {
            follower_id: String::new(),
            namespace: NS.into(),
            log_id: ns.log_id().unwrap().to_string(),
            from_seq: 1,
            prev_crc: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut next = 1;
    while next <= head {
        let msg = tail.message().await.unwrap().unwrap();
        let Some(first) = msg.entries.first() else {
            continue; // a heartbeat
        };
        assert_eq!(first.seq, next);
        assert_eq!(
            first.txn, first.seq,
            "a message starts inside the group of txn {}",
            first.txn
        );
        next = msg.entries.last().unwrap().seq + 1;
    }
}

/// An atomic request larger than tonic's default 4 MiB message still replicates: the Tail
/// message that holds it may be up to `MAX_MESSAGE_BYTES` on both sides. (Catches: the
/// server's encoding or the follower's decoding limit left at tonic's default, or
/// `MAX_MESSAGE_BYTES` under a request the store accepts.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_a_default_grpc_message_replicates() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let text = format!(
        "{}[grpc_config]\nport = 0\n[http_config]\nmax_body_bytes = \"8MB\"\n",
        primary_config(pdir.path(), &[NS])
    );
    let primary = TestNode::start(&text, pdir.path()).await;
    let c = reqwest::Client::new();
    batch_put(&c, &primary, NS, 0, 5, 1 << 20).await;
    assert_eq!(primary.head(NS), 5);
    let replica = TestNode::replica(rdir.path(), &[NS], &primary.grpc(), "").await;
    wait_synced(&primary, &replica, NS).await;
    assert_same_files(&primary.db(NS), &replica.db(NS));
    replica.stop().await;
    primary.stop().await;
}

/// An `upstream_address` that is not an address cannot get better by retrying. A config file
/// naming one is refused at load (tests/config.rs); a config built in code that bypasses that
/// check still cannot make the follower retry forever: it stops and says why in `/stats`, and
/// the replica keeps serving what it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_upstream_address_stops_the_follower_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let text = replica_config(dir.path(), &[NS], "not an address:4001", "");
    let err = ferry::config::Config::parse(&text, std::path::Path::new("r.toml")).unwrap_err();
    assert!(
        err.to_string()
            .contains("relayer_config.up.upstream_address \"not an address:4001\""),
        "{err}"
    );
    let mut config = ferry::config::Config::parse(
        &replica_config(dir.path(), &[NS], "127.0.0.1:4001", ""),
        std::path::Path::new("r.toml"),
    )
    .unwrap();
    config
        .relayer_config
        .get_mut("up")
        .unwrap()
        .upstream_address = "not an address:4001".into();
    let listeners = ferry::node::Listeners::bind(&config).await.unwrap();
    let node = ferry::node::Node::start(config, ferry::node::Mode::Replica, listeners)
        .await
        .unwrap();
    let replica = TestNode {
        base: format!("http://{}", node.http_addr()),
        node,
        dir: dir.path().to_owned(),
    };
    let c = reqwest::Client::new();
    let st = wait_replication_state(&c, &replica, NS, "stopped").await;
    let reason = st["replication"]["last_error"].as_str().unwrap();
    assert!(
        reason.contains("invalid upstream_address") && reason.contains("not an address:4001"),
        "{reason}"
    );
    let (s, off) = call(
        &c,
        Method::GET,
        &replica.url(&format!("/api/v1/{NS}/offset")),
        None,
    )
    .await;
    assert_eq!((s, off["head_seq"].as_i64()), (200, Some(0)), "{off}");
    replica.stop().await;
}
