//! The upstream side of replication: `Position`, the `Tail` stream, and `Snapshot`.
//!
//! Each tail stream is one task that waits on the namespace's head signal (no polling), reads
//! what is new through the shared reader pool, and sends it in bounded batches over a small
//! bounded channel — a slow follower slows only its own task, and memory per stream stays at a
//! few batches.
//!
//! What a client can hold is bounded (`[grpc_config]`): streams per node and per connection
//! ([`super::conns`]); per stream, batches of a quarter of `stream_buffer_bytes` with one
//! queued, so a stream whose client stops reading costs about `stream_buffer_bytes`; and a
//! stream whose client has taken nothing for `stream_stall_timeout` is ended, which for a
//! Snapshot ends its read transaction so the WAL can checkpoint again. Every call passes the
//! replication token check ([`TokenCheck`]) first when `[auth] replication_token_file` is set.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;
use tonic::service::Interceptor;
use tonic::{Request, Response, Status};

use super::conns::{Connections, StreamPermit};
use super::pb::replication_server::Replication;
use super::pb::{
    AckRequest, AckResponse, PositionRequest, PositionResponse, SnapshotChunk, SnapshotRequest,
    TailRequest, TailResponse,
};
use super::{ErrorKind, is_log_id, quote};
use crate::auth::{TokenSet, bearer};
use crate::log::LogId;
use crate::store::{Namespace, Store, StoreError, reader};

/// Most entries in one batch (a batch may run past this to finish an atomic group).
pub const MAX_BATCH_ENTRIES: usize = 2000;
/// Most key+value bytes in one batch (likewise).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// How long an idle stream waits before sending a heartbeat with the head seq.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Batches (or chunks) a stream reads ahead of its client, besides the one it holds and the
/// one being written to the connection.
const STREAM_QUEUE: usize = 1;
/// Most characters of a follower id (it is kept while its stream lives, and shown in stats).
const MAX_FOLLOWER_ID: usize = 64;

/// What one stream may cost (`[grpc_config]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamLimits {
    /// About the most bytes of entries or rows one stream holds in memory.
    pub buffer_bytes: usize,
    /// A stream whose client took nothing for this long is ended.
    pub stall_timeout: Duration,
}

impl StreamLimits {
    /// Bytes of one batch: a stream holds about four (one being read, one queued, one being
    /// encoded, one in the connection's send buffer).
    fn batch_bytes(self) -> usize {
        (self.buffer_bytes / 4).clamp(1, MAX_BATCH_BYTES)
    }
}

pub(crate) struct ReplicationService {
    store: Arc<Store>,
    /// The namespaces this node follows from an upstream (a replica's), with the upstream.
    followed: crate::http::Upstreams,
    shutdown: CancellationToken,
    /// The node's tasks: each stream's task is one, so shutdown waits for it.
    tasks: TaskTracker,
    conns: Arc<Connections>,
    limits: StreamLimits,
    /// Whether callers proved who they are (a replication token is required): only they are
    /// told which namespaces this node serves.
    authenticated: bool,
}

impl ReplicationService {
    pub(crate) fn new(
        store: Arc<Store>,
        followed: crate::http::Upstreams,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        conns: Arc<Connections>,
        limits: StreamLimits,
        authenticated: bool,
    ) -> ReplicationService {
        ReplicationService {
            store,
            followed,
            shutdown,
            tasks,
            conns,
            limits,
            authenticated,
        }
    }

    fn namespace(&self, name: &str) -> Result<Arc<Namespace>, Status> {
        self.store.get(name).cloned().ok_or_else(|| {
            let mut message = format!("unknown namespace {}", quote(name));
            if self.authenticated {
                message.push_str(&format!(
                    "; this node serves: {}",
                    self.store.names().join(", ")
                ));
            }
            ErrorKind::UnknownNamespace.status(message)
        })
    }
}

/// Checks the replication token of every call when `[auth] replication_token_file` is set:
/// none → UNAUTHENTICATED, one not in the file → PERMISSION_DENIED. Tokens are compared in
/// constant time and never logged.
#[derive(Clone)]
pub(crate) struct TokenCheck(pub Option<Arc<TokenSet>>);

impl Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(tokens) = &self.0 else {
            return Ok(req);
        };
        let presented = req
            .metadata()
            .get("authorization")
            .map(|v| bearer(v.as_bytes()));
        match presented {
            Some(Some(token)) if tokens.accepts(token) => Ok(req),
            Some(Some(_)) => {
                tracing::debug!(peer = ?req.remote_addr(), "gRPC call refused: wrong replication token");
                Err(ErrorKind::PermissionDenied.status(
                    "the replication token presented is not one this node accepts ([auth] replication_token_file)",
                ))
            }
            Some(None) | None => {
                tracing::debug!(peer = ?req.remote_addr(), "gRPC call refused: no replication token");
                Err(ErrorKind::Unauthenticated.status(
                    "this node requires a replication token: send `authorization: Bearer <token>` metadata (a follower: relayer_config.NAME.token_file)",
                ))
            }
        }
    }
}

/// The sending end of one stream: a send that waits longer than the stall timeout ends the
/// stream.
struct Sink<T> {
    tx: mpsc::Sender<Result<T, Status>>,
    stall_timeout: Duration,
    stalled: CancellationToken,
}

enum Sent {
    Ok,
    /// The client left.
    Gone,
    /// The client took nothing for the stall timeout; the stream is ended.
    Stalled,
}

impl<T> Sink<T> {
    async fn send(&self, msg: Result<T, Status>) -> Sent {
        match tokio::time::timeout(self.stall_timeout, self.tx.send(msg)).await {
            Ok(Ok(())) => Sent::Ok,
            Ok(Err(_)) => Sent::Gone,
            Err(_) => {
                self.stalled.cancel();
                Sent::Stalled
            }
        }
    }
}

/// A stream's response: what its task sends, until the task reports a stall. Holds the
/// stream's place under the caps until the client is done with it.
struct Guarded<T> {
    rx: mpsc::Receiver<Result<T, Status>>,
    stalled: Pin<Box<WaitForCancellationFutureOwned>>,
    stall_timeout: Duration,
    done: bool,
    _permit: StreamPermit,
}

/// A stream with its sending end and its response.
fn guarded<T>(limits: StreamLimits, permit: StreamPermit) -> (Sink<T>, Guarded<T>) {
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let stalled = CancellationToken::new();
    let sink = Sink {
        tx,
        stall_timeout: limits.stall_timeout,
        stalled: stalled.clone(),
    };
    let response = Guarded {
        rx,
        stalled: Box::pin(stalled.cancelled_owned()),
        stall_timeout: limits.stall_timeout,
        done: false,
        _permit: permit,
    };
    (sink, response)
}

impl<T> Stream for Guarded<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.stalled.as_mut().poll(cx).is_ready() {
            self.done = true;
            self.rx.close();
            let message = format!(
                "this stream was closed: its client took nothing for {:?} (grpc_config.stream_stall_timeout)",
                self.stall_timeout
            );
            return Poll::Ready(Some(Err(ErrorKind::Stalled.status(message))));
        }
        self.rx.poll_recv(cx)
    }
}

fn internal(e: StoreError) -> Status {
    match e {
        StoreError::ShuttingDown => ErrorKind::ShuttingDown.status(e.to_string()),
        e => Status::internal(e.to_string()),
    }
}

type TailStream = Pin<Box<dyn Stream<Item = Result<TailResponse, Status>> + Send>>;
type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn position(
        &self,
        req: Request<PositionRequest>,
    ) -> Result<Response<PositionResponse>, Status> {
        self.conns.touch(req.remote_addr());
        let req = req.into_inner();
        let ns = self.namespace(&req.namespace)?;
        let head = ns.head();
        let following = self.followed.read().unwrap().contains_key(&req.namespace);
        if !following
            && !req.follower_prev_log_id.is_empty()
            && ns.log_id().as_deref() == Some(req.follower_prev_log_id.as_str())
            && let Some(newer) = LogId::parse(&req.follower_log_id)
        {
            // A follower whose log was forked from ours: we are a stale primary.
            ns.mark_superseded(newer, req.follower_fork_seq);
        }
        let probe = req.probe_seq;
        let (oldest, probed, lineage) = ns
            .read(move |c| {
                let probed = if probe > 0 {
                    reader::crc_at(c, probe)?
                } else {
                    None
                };
                Ok((
                    reader::oldest(c)?,
                    probed,
                    crate::store::schema::lineage(c)?,
                ))
            })
            .await
            .map_err(internal)?;
        Ok(Response::new(PositionResponse {
            namespace: req.namespace,
            log_id: LogId::wire(ns.log_id().as_ref()),
            head_seq: head.seq,
            head_crc: head.crc,
            oldest_seq: if head.seq == 0 { 0 } else { oldest },
            probe_found: probed.is_some(),
            probe_crc: probed.unwrap_or(0),
            following,
            prev_log_id: lineage
                .as_ref()
                .map(|l| l.prev_log_id.to_string())
                .unwrap_or_default(),
            fork_seq: lineage.map_or(0, |l| l.fork_seq),
        }))
    }

    type TailStream = TailStream;

    async fn tail(&self, req: Request<TailRequest>) -> Result<Response<TailStream>, Status> {
        let peer = req.remote_addr();
        self.conns.touch(peer);
        let address = peer.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let req = req.into_inner();
        let ns = self.namespace(&req.namespace)?;
        if req.follower_id.chars().count() > MAX_FOLLOWER_ID {
            return Err(ErrorKind::InvalidArgument.status(format!(
                "follower_id {} is longer than {MAX_FOLLOWER_ID} characters",
                quote(&req.follower_id)
            )));
        }
        if req.from_seq < 1 {
            return Err(ErrorKind::InvalidArgument
                .status(format!("from_seq must be at least 1, got {}", req.from_seq)));
        }
        if !is_log_id(&req.log_id) {
            return Err(ErrorKind::InvalidArgument.status(format!(
                "log_id {} is not 32 lowercase hex digits",
                quote(&req.log_id)
            )));
        }
        let log_id = LogId::wire(ns.log_id().as_ref());
        if req.log_id != log_id {
            return Err(ErrorKind::HistoryDiffers.status(format!(
                "namespace {:?} here has log_id {log_id}, the follower has {}: they are different logs",
                req.namespace, req.log_id
            )));
        }
        let head = ns.head();
        if req.from_seq > head.seq + 1 {
            return Err(ErrorKind::AheadOfUpstream.status(format!(
                "from_seq {} is beyond this node's head {} + 1: the follower has entries this log never had",
                req.from_seq, head.seq
            )));
        }
        let oldest = ns.read(reader::oldest).await.map_err(internal)?;
        if req.from_seq < oldest {
            // A follower asking for pruned entries, e.g. a brand-new one on a pruned log.
            return Err(ErrorKind::SnapshotNeeded.status(format!(
                "entries from {} are no longer in the log (it starts at {oldest}); bootstrap from a snapshot",
                req.from_seq
            )));
        }
        {
            let prev = req.from_seq - 1;
            let crc = ns
                .read(move |c| reader::crc_at(c, prev))
                .await
                .map_err(internal)?;
            match crc {
                None => {
                    return Err(ErrorKind::SnapshotNeeded.status(format!(
                        "entry {prev} is no longer in the log; bootstrap from a snapshot"
                    )));
                }
                Some(crc) if crc != req.prev_crc => {
                    return Err(ErrorKind::HistoryDiffers.status(format!(
                        "entry {prev} has crc {crc:#010x} here, {:#010x} on the follower: the logs diverged",
                        req.prev_crc
                    )));
                }
                Some(_) => {}
            }
        }
        let permit = self.conns.open_stream(peer)?;
        let (sink, response) = guarded(self.limits, permit);
        let follower = (!req.follower_id.is_empty()).then(|| (req.follower_id.clone(), address));
        self.tasks.spawn(stream_entries(
            ns,
            req.from_seq,
            follower,
            sink,
            self.limits.batch_bytes(),
            self.shutdown.clone(),
        ));
        Ok(Response::new(Box::pin(response)))
    }

    async fn ack(&self, req: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        self.conns.touch(req.remote_addr());
        let req = req.into_inner();
        if req.follower_id.chars().count() > MAX_FOLLOWER_ID {
            return Err(ErrorKind::InvalidArgument.status(format!(
                "follower_id {} is longer than {MAX_FOLLOWER_ID} characters",
                quote(&req.follower_id)
            )));
        }
        let ns = self.namespace(&req.namespace)?;
        ns.acks.ack(&req.follower_id, req.applied_seq);
        Ok(Response::new(AckResponse {}))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        let peer = req.remote_addr();
        self.conns.touch(peer);
        let req = req.into_inner();
        let ns = self.namespace(&req.namespace)?;
        let permit = self.conns.open_stream(peer)?;
        let (sink, response) = guarded(self.limits, permit);
        self.tasks.spawn(stream_snapshot(
            ns,
            req.after_key,
            sink,
            self.limits.batch_bytes(),
            self.shutdown.clone(),
        ));
        Ok(Response::new(Box::pin(response)))
    }
}

/// Sends a consistent copy of `kv` in chunks. The rows are read in one read transaction on a
/// blocking thread, which waits for the client to take each chunk (memory stays at a few
/// chunks) and gives up when it leaves, stalls, or the node stops — ending the transaction.
async fn stream_snapshot(
    ns: Arc<Namespace>,
    after_key: Option<String>,
    sink: Sink<SnapshotChunk>,
    batch_bytes: usize,
    shutdown: CancellationToken,
) {
    let log_id = LogId::wire(ns.log_id().as_ref());
    let runtime = tokio::runtime::Handle::current();
    let sink = Arc::new(sink);
    let chunks = sink.clone();
    let stop = shutdown.clone();
    let read = ns.read(move |conn| {
        reader::snapshot(
            conn,
            after_key.as_deref(),
            MAX_BATCH_ENTRIES,
            batch_bytes,
            |seq, crc, rows, done| {
                let chunk = SnapshotChunk {
                    log_id: log_id.clone(),
                    seq,
                    crc,
                    rows: rows.into_iter().map(Into::into).collect(),
                    done,
                };
                let sent = runtime.block_on(async {
                    tokio::select! {
                        sent = chunks.send(Ok(chunk)) => Some(matches!(sent, Sent::Ok)),
                        _ = stop.cancelled() => None,
                    }
                });
                sent.unwrap_or_else(|| {
                    let stopping = ErrorKind::ShuttingDown.status("the upstream is shutting down");
                    let _ = chunks.tx.try_send(Err(stopping));
                    false
                })
            },
        )
    });
    if let Err(e) = read.await {
        // A client that stopped reading must not hold up shutdown.
        tokio::select! {
            _ = sink.send(Err(internal(e))) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Sends entries from `next` on as they commit, until the follower leaves or the node stops.
async fn stream_entries(
    ns: Arc<Namespace>,
    mut next: i64,
    follower: Option<(String, String)>,
    sink: Sink<TailResponse>,
    batch_bytes: usize,
    shutdown: CancellationToken,
) {
    let tx = &sink.tx;
    let mut head_rx = ns.subscribe();
    let epoch = head_rx.borrow().epoch;
    // Retention holds back for this stream while it lives; `?acks=K` counts its follower.
    let position = ns.register_tail(next);
    let _follower = follower.map(|(id, address)| ns.acks.register(&id, address, next - 1));
    loop {
        let head = *head_rx.borrow_and_update();
        if head.epoch != epoch {
            // This node installed a snapshot: the follower's position belongs to the replaced
            // history. It reconnects and finds out where it stands.
            let _ = tx.try_send(Err(Status::unavailable(
                "this node replaced its history with a snapshot; reconnect",
            )));
            return;
        }
        position.set(next);
        while next <= head.seq {
            let from = next;
            let batch = match ns.entries_from(from, MAX_BATCH_ENTRIES, batch_bytes).await {
                Ok(b) if b.first().is_some_and(|e| e.seq != from) => {
                    // Retention pruned what this follower still needed (it fell more than
                    // twice the limits behind).
                    let _ = tx.try_send(Err(ErrorKind::SnapshotNeeded.status(format!(
                        "entries from {from} were pruned while this follower was behind; bootstrap from a snapshot"
                    ))));
                    return;
                }
                Ok(b) if !b.is_empty() => b,
                Ok(_) => break,
                Err(e) => {
                    let _ = tx.try_send(Err(internal(e)));
                    return;
                }
            };
            next = batch.last().map_or(next, |e| e.seq + 1);
            let msg = TailResponse {
                head_seq: ns.head().seq,
                entries: batch.into_iter().map(Into::into).collect(),
            };
            tokio::select! {
                sent = sink.send(Ok(msg)) => if !matches!(sent, Sent::Ok) { return },
                _ = shutdown.cancelled() => break,
            }
            position.set(next);
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                let _ = tx.try_send(Err(ErrorKind::ShuttingDown.status("the upstream is shutting down")));
                return;
            }
            changed = head_rx.changed() => {
                if changed.is_err() {
                    // The writer stopped: the node is closing this namespace. `try_send`: a
                    // follower that stopped reading must not hold up shutdown.
                    let _ = tx.try_send(Err(ErrorKind::ShuttingDown.status("the upstream is shutting down")));
                    return;
                }
            }
            _ = tokio::time::sleep(HEARTBEAT) => {
                let beat = TailResponse { head_seq: ns.head().seq, entries: Vec::new() };
                tokio::select! {
                    sent = sink.send(Ok(beat)) => if !matches!(sent, Sent::Ok) { return },
                    _ = shutdown.cancelled() => {}
                }
            }
            _ = tx.closed() => return,
        }
    }
}
