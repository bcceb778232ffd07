//! What one gRPC client can cost a node: streams per node and per connection, memory per
//! stream whose client stops reading, a stalled Snapshot's hold on the WAL, and the size of
//! error messages that quote what the client sent.

mod common;

use std::time::Duration;

use common::*;
use ferry::replication::ErrorKind;
use ferry::replication::pb::replication_client::ReplicationClient;
use ferry::replication::pb::{AckRequest, PositionRequest, SnapshotRequest, TailRequest};
use tonic::transport::{Channel, Endpoint};

const NS: &str = "ns";

/// A primary serving gRPC with `grpc` lines added to its `[grpc_config]`; commits are not
/// fsynced (these tests write a lot and test no durability).
async fn primary(dir: &std::path::Path, grpc: &str) -> TestNode {
    let text = format!(
        "{}synchronous = \"off\"\n[grpc_config]\nport = 0\n{grpc}",
        primary_config(dir, &[NS])
    );
    TestNode::start(&text, dir).await
}

/// A client on a connection of its own whose flow-control windows are small: the server can
/// push only 64 KiB before it has to wait for the client to read.
async fn small_window_client(addr: &str) -> ReplicationClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    ReplicationClient::new(channel)
}

fn tail_request(log_id: &str) -> TailRequest {
    TailRequest {
        namespace: NS.into(),
        log_id: log_id.into(),
        from_seq: 1,
        prev_crc: 0,
        follower_id: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_caps_get_resource_exhausted_and_a_closed_one_frees_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let node = primary(
        dir.path(),
        "max_streams = 3\nmax_streams_per_connection = 2\n",
    )
    .await;
    let log_id = node.log_id(NS);
    let mut one = small_window_client(&node.grpc()).await;
    let mut two = small_window_client(&node.grpc()).await;

    let first = one.tail(tail_request(&log_id)).await.unwrap();
    let _second = one.tail(tail_request(&log_id)).await.unwrap();
    let over = one.tail(tail_request(&log_id)).await.unwrap_err();
    assert_eq!(over.code(), tonic::Code::ResourceExhausted, "{over:?}");
    assert_eq!(ErrorKind::of(&over), Some(ErrorKind::TooManyStreams));
    assert!(
        over.message()
            .contains("grpc_config.max_streams_per_connection"),
        "{over:?}"
    );
    // A snapshot counts too.
    let over = one
        .snapshot(SnapshotRequest {
            namespace: NS.into(),
            after_key: None,
        })
        .await
        .unwrap_err();
    assert_eq!(over.code(), tonic::Code::ResourceExhausted, "{over:?}");

    // Another connection has room, until the node is full.
    let _third = two.tail(tail_request(&log_id)).await.unwrap();
    let over = two.tail(tail_request(&log_id)).await.unwrap_err();
    assert_eq!(over.code(), tonic::Code::ResourceExhausted, "{over:?}");
    assert!(
        over.message().contains("(grpc_config.max_streams)"),
        "{over:?}"
    );

    // A client closing a stream frees its place.
    drop(first);
    let fourth = wait_for(
        Duration::from_secs(30),
        "a closed stream to free its place",
        async || two.tail(tail_request(&log_id)).await.ok(),
    )
    .await;
    // And its place on its connection: `one` may open a second stream again once the node
    // has room. (Catches the connection's count not going down when a stream closes.)
    drop(fourth);
    wait_for(
        Duration::from_secs(30),
        "a closed stream to free its place on its connection",
        async || one.tail(tail_request(&log_id)).await.ok(),
    )
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_quote_a_huge_input_only_up_to_a_bound() {
    let dir = tempfile::tempdir().unwrap();
    let node = primary(dir.path(), "").await;
    let mut client = ReplicationClient::connect(format!("http://{}", node.grpc()))
        .await
        .unwrap();
    let huge = "n".repeat(100_000);

    let err = client
        .position(PositionRequest {
            namespace: huge.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{:?}", err.code());
    assert_eq!(ErrorKind::of(&err), Some(ErrorKind::UnknownNamespace));
    assert!(err.message().len() < 200, "{}", err.message());
    assert!(err.message().contains("100000 bytes"), "{}", err.message());
    // No token is required here, so the caller is anonymous: no list of namespaces.
    assert!(!err.message().contains("serves"), "{}", err.message());

    let mut request = tail_request(&huge);
    let err = client.tail(request.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{:?}", err.code());
    assert!(err.message().len() < 200, "{}", err.message());

    request.log_id = node.log_id(NS);
    // The bound is 64 characters (not bytes): 64 of a two-byte character pass, 65 do not.
    request.follower_id = "é".repeat(64);
    client
        .tail(request.clone())
        .await
        .expect("a follower_id of exactly 64 characters is accepted");
    request.follower_id = "é".repeat(65);
    let err = client.tail(request.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{:?}", err.code());
    // Acks take the same bound.
    let ack = |follower_id: String| AckRequest {
        namespace: NS.into(),
        follower_id,
        applied_seq: 0,
    };
    client
        .ack(ack("é".repeat(64)))
        .await
        .expect("an ack from a follower_id of exactly 64 characters is taken");
    for id in ["é".repeat(65), huge.clone()] {
        let err = client.ack(ack(id)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{:?}", err.code());
        assert!(err.message().len() < 200, "{}", err.message());
    }
    request.follower_id = huge;
    let err = client.tail(request).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{:?}", err.code());
    assert!(err.message().len() < 200, "{}", err.message());
    node.stop().await;
}

/// `PRAGMA wal_checkpoint(PASSIVE)` on a connection of our own: (log frames, checkpointed).
/// SQLite answers -1, -1 while another checkpoint runs (the node checkpoints in the
/// background); ask again until one is ours.
fn checkpoint(db: &std::path::Path) -> (i64, i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (log, done): (i64, i64) = conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .unwrap();
        if log >= 0 {
            return (log, done);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a checkpoint of our own never ran"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_snapshot_is_closed_after_its_timeout_and_the_wal_checkpoints_again() {
    let dir = tempfile::tempdir().unwrap();
    let node = primary(
        dir.path(),
        "stream_stall_timeout = \"5s\"\nstream_buffer_bytes = 65536\n",
    )
    .await;
    let c = reqwest::Client::new();
    // ~1.2 MB of rows: far more than the client's window and the stream's budget.
    let value = vec![7u8; 4096];
    for i in 0..300 {
        put(&c, &node, NS, &format!("k{i:04}"), &value).await;
    }
    let mut client = small_window_client(&node.grpc()).await;
    let mut snapshot = client
        .snapshot(SnapshotRequest {
            namespace: NS.into(),
            after_key: None,
        })
        .await
        .unwrap()
        .into_inner();
    // The first chunk proves the read transaction is open; then the client stops reading.
    let first = snapshot.message().await.unwrap().expect("a first chunk");
    assert!(!first.done);

    // Commits after the snapshot's read transaction began cannot be checkpointed while it
    // lasts...
    for i in 0..10 {
        put(&c, &node, NS, &format!("later{i}"), &value).await;
    }
    let (log, done) = checkpoint(&node.db(NS));
    assert!(
        done < log,
        "the stalled snapshot does not pin the WAL yet: {done} of {log} frames checkpointed"
    );

    // ...and can once the stall timeout closed the stream.
    wait_for(
        Duration::from_secs(60),
        "the WAL to checkpoint completely",
        async || {
            let (log, done) = checkpoint(&node.db(NS));
            (done == log).then_some(())
        },
    )
    .await;

    // The client, reading again, learns why its stream ended.
    let ended = loop {
        match snapshot.message().await {
            Ok(Some(chunk)) => assert!(!chunk.done, "a stalled snapshot claimed to be complete"),
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(ErrorKind::of(&ended), Some(ErrorKind::Stalled), "{ended:?}");
    assert!(
        ended.message().contains("stream_stall_timeout"),
        "{ended:?}"
    );
    node.stop().await;
}

/// Streams that never read, and what each may cost the node (documented in docs/security.md):
/// about `stream_buffer_bytes`; the bound allows twice that per stream plus 24 MiB for
/// SQLite's page caches and the allocator.
const STREAMS: usize = 16;
const BUFFER: usize = 256 * 1024;
const SLACK_KIB: u64 = 24 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_streams_that_never_read_keep_the_node_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}synchronous = \"off\"\n[grpc_config]\nport = 0\nmax_streams_per_connection = 32\nstream_buffer_bytes = {BUFFER}\n[log_config]\nlog_level = \"info\"\n",
        primary_config(dir.path(), &[NS])
    );
    let path = dir.path().join("node.toml");
    std::fs::write(&path, config).unwrap();
    let mut node = Running::spawn(&["server", "-config", path.to_str().unwrap()]);
    let line = node.wait_line("gRPC listening on ");
    let grpc = line
        .split("gRPC listening on ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_owned();
    // HTTP is listening before gRPC starts.
    let http = node.find("HTTP listening on ").expect("the HTTP address");
    let pid = node.child.id();

    // 8 MB of log: every stream could read far more than its budget.
    let c = reqwest::Client::new();
    let value = b64(&vec![1u8; 64 * 1024]);
    for i in 0..128 {
        let resp = c
            .put(format!("http://{http}/api/v1/{NS}/kv/k{i}"))
            .header("content-type", "application/json")
            .body(format!("{{\"value\":\"{value}\"}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let mut client = ReplicationClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let log_id = client
        .position(PositionRequest {
            namespace: NS.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .log_id;
    let before = rss_kib(pid);

    // All on one connection with a 64 KiB window: the first stream fills it, and every
    // stream's server side is left holding what it read ahead.
    let mut reader = small_window_client(&grpc).await;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(reader.tail(tail_request(&log_id)).await.unwrap());
    }
    // Watch the node's memory over a window while the streams sit unread.
    let mut peak = 0;
    for _ in 0..40 {
        peak = peak.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(50)).await; // sampling interval
    }
    let bound = (STREAMS * BUFFER * 2) as u64 / 1024 + SLACK_KIB;
    assert!(
        peak.saturating_sub(before) <= bound,
        "{STREAMS} unread streams grew the node from {before} KiB to {peak} KiB (bound: +{bound} KiB)"
    );
    drop(streams);
    node.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let node = primary(dir.path(), "idle_timeout = \"1s\"\n").await;

    // A follower's connection with a Tail open outlives the idle timeout: it gets heartbeats
    // (one a second) for longer than that.
    let mut client = small_window_client(&node.grpc()).await;
    let mut tail = client
        .tail(tail_request(&node.log_id(NS)))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        tail.message().await.unwrap().expect("a heartbeat");
    }

    // A connection that never sends a byte is closed: its read ends instead of waiting.
    let mut idle = tokio::net::TcpStream::connect(node.grpc()).await.unwrap();
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match idle.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // the server's HTTP/2 preface
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "an idle connection was still open after 30 s"
    );
    assert!(tail.message().await.unwrap().is_some());
    node.stop().await;
}

/// A connector that counts the TCP connections a channel opens.
#[derive(Clone)]
struct CountingConnector {
    addr: String,
    made: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl tower_service::Service<tonic::transport::Uri> for CountingConnector {
    type Response = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: tonic::transport::Uri) -> Self::Future {
        let (addr, made) = (self.addr.clone(), self.made.clone());
        Box::pin(async move {
            made.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let io = tokio::net::TcpStream::connect(addr).await?;
            Ok(hyper_util::rt::TokioIo::new(io))
        })
    }
}

/// A connection whose client keeps making requests (unary ones, no stream open) is not idle:
/// it is still the same connection after more than twice `idle_timeout`. (Catches: requests
/// not counted as activity, `Connections::touch` doing nothing or the deadline computed from
/// the last request as `last_active - idle_timeout`; the server then closes the connection
/// one `idle_timeout` after it was opened, under a request in flight: "transport error",
/// broken pipe.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_making_requests_is_not_closed_as_idle() {
    let dir = tempfile::tempdir().unwrap();
    let node = primary(dir.path(), "idle_timeout = \"1s\"\n").await;
    let made = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let channel = Endpoint::from_shared(format!("http://{}", node.grpc()))
        .unwrap()
        .connect_with_connector(CountingConnector {
            addr: node.grpc(),
            made: made.clone(),
        })
        .await
        .unwrap();
    let mut client = ReplicationClient::new(channel);
    let start = std::time::Instant::now();
    let mut requests = 0;
    while start.elapsed() < Duration::from_millis(2_500) {
        client
            .position(PositionRequest {
                namespace: NS.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        requests += 1;
    }
    assert!(requests > 1);
    assert_eq!(
        made.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the busy connection was closed and another opened ({requests} requests)"
    );
    node.stop().await;
}

/// `ferry_grpc_connections` and `ferry_grpc_streams` of a node's `/metrics`.
async fn grpc_gauges(c: &reqwest::Client, node: &TestNode) -> (f64, f64) {
    let text = metrics(c, node).await;
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
            .parse()
            .unwrap()
    };
    (value("ferry_grpc_connections"), value("ferry_grpc_streams"))
}

/// `/metrics` counts the gRPC connections and the streams open, and both go back to 0 once
/// their clients leave: the node forgets a closed connection. (Catches: `IdleIo`'s `Drop`
/// doing nothing, or removing the entry only when it belongs to another connection (`==` as
/// `!=`), where the table of connections grows with every connection a client ever opened.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_grpc_connections_and_streams_and_closed_ones_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let node = primary(dir.path(), "").await;
    let c = reqwest::Client::new();
    assert_eq!(grpc_gauges(&c, &node).await, (0.0, 0.0));
    let mut raw = Vec::new();
    for _ in 0..5 {
        raw.push(tokio::net::TcpStream::connect(node.grpc()).await.unwrap());
    }
    let mut client = small_window_client(&node.grpc()).await;
    let tail = client.tail(tail_request(&node.log_id(NS))).await.unwrap();
    wait_for(
        Duration::from_secs(30),
        "6 connections and 1 stream in /metrics",
        async || (grpc_gauges(&c, &node).await == (6.0, 1.0)).then_some(()),
    )
    .await;
    drop(tail);
    drop(client);
    drop(raw);
    wait_for(
        Duration::from_secs(30),
        "the closed connections and stream gone from /metrics",
        async || (grpc_gauges(&c, &node).await == (0.0, 0.0)).then_some(()),
    )
    .await;
    node.stop().await;
}
