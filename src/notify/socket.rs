//! A ZeroMQ PUB socket of our own: ZMTP 3.0 over TCP on tokio, so that what one subscriber
//! can make the node hold is bounded.
//!
//! libzmq 4.3.4 keeps every subscription a peer sends until the peer leaves — even under
//! XPUB_MANUAL — and has no way to drop one peer, so one SUB socket sending 100,000 distinct
//! topics costs the node ~80 MB. Here a peer's subscriptions are kept only if they can match
//! the namespace's one topic (`<ns>.kv`): a subscription matches a topic it is a prefix of, so
//! a peer holds at most `topic.len() + 1` of them, whatever it sends. The rest is bounded by
//! configuration: the peers (`max_subscribers`), each peer's queue (`high_water_mark`
//! messages, dropped beyond, as PUB does), the size of what a peer may send
//! (`max_subscription_bytes`) and the time it has to finish its handshake
//! (`handshake_timeout`).
//!
//! On the wire this is a PUB: libzmq's SUB (any binding) and other ZMTP 3 SUBs connect to it
//! unchanged. See docs/design.md, "The notifier's own PUB socket".

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::curve::{self, Opener, Sealer, ServerKeys};
use super::zmtp::{self, Frame, PeerError, Request};

/// The limits a [`PubSocket`] keeps.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Messages queued per subscriber; more are dropped for that subscriber.
    pub high_water_mark: usize,
    /// Largest frame a subscriber may send; a bigger one closes its connection.
    pub max_message: usize,
    /// Connected subscribers at most; more are closed as soon as they are accepted.
    pub max_peers: usize,
    /// Time a new connection has to complete its handshake.
    pub handshake_timeout: Duration,
    /// How long queued messages may still be written after [`PubSocket::close`].
    pub linger: Duration,
    /// With keys, subscribers must use CURVE; without, NULL (no security).
    pub curve: Option<Arc<ServerKeys>>,
}

/// One message as published: its frames, and their encoding for NULL peers (shared by all).
pub(crate) struct Message {
    wire: Vec<u8>,
}

impl Message {
    pub(crate) fn new(parts: &[&[u8]]) -> Arc<Message> {
        let mut wire = Vec::with_capacity(parts.iter().map(|p| p.len() + 9).sum());
        for (i, part) in parts.iter().enumerate() {
            zmtp::put_frame(&mut wire, i + 1 < parts.len(), false, part);
        }
        Arc::new(Message { wire })
    }
}

/// A bound PUB socket serving one topic.
pub(crate) struct PubSocket {
    hub: Arc<Hub>,
    peers: TaskTracker,
    local: SocketAddr,
}

/// What the accept loop, the peers and the publisher share.
struct Hub {
    /// The one topic published; subscriptions that cannot match it are not kept.
    topic: Vec<u8>,
    limits: Limits,
    peers: Mutex<HashMap<u64, Peer>>,
    next_id: AtomicU64,
    /// Subscriptions matching `topic`, summed over peers.
    subscribed: AtomicI64,
    closing: CancellationToken,
}

struct Peer {
    queue: mpsc::Sender<Arc<Message>>,
    /// The lengths of this peer's subscriptions, each a prefix of the topic.
    prefixes: BTreeSet<usize>,
}

impl PubSocket {
    /// Starts accepting on `listener` (already bound, so a taken port failed at bind time).
    /// Must be called inside the tokio runtime that is to run the socket.
    pub(crate) fn start(
        listener: std::net::TcpListener,
        topic: &str,
        limits: Limits,
    ) -> std::io::Result<PubSocket> {
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let listener = TcpListener::from_std(listener)?;
        let hub = Arc::new(Hub {
            topic: topic.as_bytes().to_vec(),
            limits,
            peers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            subscribed: AtomicI64::new(0),
            closing: CancellationToken::new(),
        });
        let peers = TaskTracker::new();
        peers.spawn(accept(listener, hub.clone(), peers.clone()));
        Ok(PubSocket { hub, peers, local })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Queues `msg` for every subscriber whose subscriptions match; one whose queue is full
    /// misses it (it sees the gap in `seq_num`). Never waits.
    pub(crate) fn send(&self, msg: &Arc<Message>) {
        let peers = self.hub.peers.lock().expect("peers lock");
        for p in peers.values() {
            if !p.prefixes.is_empty() {
                let _ = p.queue.try_send(msg.clone());
            }
        }
    }

    /// Subscriptions that match the topic, counted per subscriber.
    pub(crate) fn subscribed(&self) -> i64 {
        self.hub.subscribed.load(Ordering::Relaxed)
    }

    /// Stops accepting; each subscriber gets what is queued for it, for at most the linger
    /// time; returns once every connection is closed.
    pub(crate) async fn close(self) {
        self.hub.closing.cancel();
        // Dropping the senders ends each peer's queue after its last message.
        self.hub.peers.lock().expect("peers lock").clear();
        self.peers.close();
        self.peers.wait().await;
    }
}

async fn accept(listener: TcpListener, hub: Arc<Hub>, peers: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            () = hub.closing.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, typically: wait a little instead of spinning.
                tracing::warn!(error = %e, "ZeroMQ notifier cannot accept a connection");
                tokio::select! {
                    () = hub.closing.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        if peers.len() > hub.limits.max_peers {
            // The accept loop is one of the tracked tasks.
            tracing::debug!(%addr, max_subscribers = hub.limits.max_peers, "ZeroMQ subscriber refused: too many connected");
            drop(stream);
            continue;
        }
        peers.spawn(serve(stream, addr, hub.clone()));
    }
}

/// One subscriber's connection, from handshake to close.
async fn serve(mut stream: TcpStream, addr: SocketAddr, hub: Arc<Hub>) {
    let _ = stream.set_nodelay(true);
    let handshake =
        tokio::time::timeout(hub.limits.handshake_timeout, handshake(&mut stream, &hub));
    let ended = tokio::select! {
        () = hub.closing.cancelled() => return,
        h = handshake => h,
    };
    let (sealer, opener) = match ended {
        Ok(Ok(keys)) => keys.unzip(),
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "ZeroMQ subscriber refused");
            return;
        }
        Err(_) => {
            tracing::debug!(%addr, timeout = ?hub.limits.handshake_timeout, "ZeroMQ subscriber refused: no handshake in time");
            return;
        }
    };
    let (queue, messages) = mpsc::channel(hub.limits.high_water_mark);
    let id = hub.next_id.fetch_add(1, Ordering::Relaxed);
    {
        let mut peers = hub.peers.lock().expect("peers lock");
        if hub.closing.is_cancelled() {
            return;
        }
        peers.insert(
            id,
            Peer {
                queue,
                prefixes: BTreeSet::new(),
            },
        );
    }
    let (r, w) = stream.into_split();
    let (pongs, pong_rx) = mpsc::channel(4);
    let served = async {
        tokio::select! {
            r = read_requests(r, opener, &hub, id, pongs) => r,
            w = write_messages(w, sealer, messages, pong_rx) => w,
        }
    };
    let lingered = async {
        hub.closing.cancelled().await;
        tokio::time::sleep(hub.limits.linger).await;
    };
    tokio::select! {
        biased;
        r = served => if let Err(e) = r {
            tracing::debug!(%addr, error = %e, "ZeroMQ subscriber disconnected");
        },
        () = lingered => {}
    }
    hub.remove(id);
}

/// The handshake: greetings, then NULL's READY each way or CURVE's four commands; the peer
/// must be a SUB or XSUB. With CURVE, returns what seals and opens the frames that follow.
async fn handshake(
    stream: &mut TcpStream,
    hub: &Hub,
) -> Result<Option<(Sealer, Opener)>, PeerError> {
    let mechanism = if hub.limits.curve.is_some() {
        "CURVE"
    } else {
        "NULL"
    };
    stream
        .write_all(&zmtp::greeting(mechanism, hub.limits.curve.is_some()))
        .await?;
    let mut g = [0u8; zmtp::GREETING_LEN];
    stream.read_exact(&mut g[..10]).await?;
    zmtp::check_signature(&g[..10])?;
    stream.read_exact(&mut g[10..]).await?;
    zmtp::check_greeting(&g, mechanism)?;
    if let Some(keys) = &hub.limits.curve {
        return curve::handshake(stream, keys, hub.max_handshake())
            .await
            .map(Some);
    }
    let ready = zmtp::properties(&[("Socket-Type", b"PUB")]);
    stream.write_all(&zmtp::command("READY", &ready)).await?;
    match zmtp::read_frame(stream, hub.max_handshake()).await? {
        Frame::Command { name, data } if name == b"READY" => {
            zmtp::check_socket_type(&data).map(|()| None)
        }
        Frame::Command { name, data } if name == b"ERROR" => Err(PeerError::Protocol(format!(
            "it sent ERROR {}",
            String::from_utf8_lossy(data.get(1..).unwrap_or_default())
        ))),
        _ => Err(PeerError::Protocol("no READY".into())),
    }
}

/// Reads a subscriber's frames until it leaves: (un)subscriptions and heartbeats.
async fn read_requests(
    r: tokio::net::tcp::OwnedReadHalf,
    mut opener: Option<Opener>,
    hub: &Hub,
    id: u64,
    pongs: mpsc::Sender<Vec<u8>>,
) -> Result<(), PeerError> {
    let mut r = tokio::io::BufReader::new(r);
    // A sealed frame is bigger than what it holds: 8-byte nonce, 16-byte tag, flags.
    let max = hub.limits.max_message + if opener.is_some() { 8 + 8 + 16 + 1 } else { 0 };
    let mut first = true;
    loop {
        let frame = match zmtp::read_frame(&mut r, max).await {
            Err(PeerError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(());
            }
            f => f?,
        };
        let frame = match &mut opener {
            Some(o) => o.open(frame)?,
            None => frame,
        };
        match zmtp::request(&frame, first) {
            Request::Subscribe(prefix) => hub.subscribe(id, prefix, true),
            Request::Cancel(prefix) => hub.subscribe(id, prefix, false),
            Request::Ping(context) => {
                let _ = pongs.try_send(zmtp::command_body("PONG", context));
            }
            Request::Other => {}
        }
        first = !matches!(frame, Frame::Message { more: true, .. });
    }
}

/// Writes a subscriber's queue (and heartbeat answers) until the queue ends.
async fn write_messages(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut sealer: Option<Sealer>,
    mut messages: mpsc::Receiver<Arc<Message>>,
    mut pongs: mpsc::Receiver<Vec<u8>>,
) -> Result<(), PeerError> {
    /// Bytes gathered from the queue into one write.
    const BATCH: usize = 64 * 1024;
    let mut buf = Vec::new();
    fn put(sealer: &mut Option<Sealer>, buf: &mut Vec<u8>, m: &Message) {
        match sealer {
            None => buf.extend_from_slice(&m.wire),
            Some(s) => {
                for (more, body) in zmtp::frames(&m.wire) {
                    s.seal(buf, more, false, body);
                }
            }
        }
    }
    loop {
        tokio::select! {
            m = messages.recv() => match m {
                Some(m) => {
                    put(&mut sealer, &mut buf, &m);
                    while buf.len() < BATCH {
                        match messages.try_recv() {
                            Ok(m) => put(&mut sealer, &mut buf, &m),
                            Err(_) => break,
                        }
                    }
                }
                None => {
                    w.shutdown().await?;
                    return Ok(());
                }
            },
            Some(pong) = pongs.recv() => match &mut sealer {
                None => zmtp::put_frame(&mut buf, false, true, &pong),
                Some(s) => s.seal(&mut buf, false, true, &pong),
            },
        }
        w.write_all(&buf).await?;
        buf.clear();
    }
}

impl Hub {
    /// The largest handshake command accepted (CURVE's INITIATE carries metadata).
    fn max_handshake(&self) -> usize {
        self.limits.max_message.max(1024)
    }

    /// Records a subscription (`on`) or its cancellation, if it can match the topic.
    fn subscribe(&self, id: u64, prefix: &[u8], on: bool) {
        if !self.topic.starts_with(prefix) {
            return;
        }
        let mut peers = self.peers.lock().expect("peers lock");
        let Some(peer) = peers.get_mut(&id) else {
            return;
        };
        let changed = if on {
            peer.prefixes.insert(prefix.len())
        } else {
            peer.prefixes.remove(&prefix.len())
        };
        if changed {
            self.subscribed
                .fetch_add(if on { 1 } else { -1 }, Ordering::Relaxed);
        }
    }

    fn remove(&self, id: u64) {
        if let Some(peer) = self.peers.lock().expect("peers lock").remove(&id) {
            self.subscribed
                .fetch_sub(peer.prefixes.len() as i64, Ordering::Relaxed);
        }
    }
}
