//! ZeroMQ change notifications (DESIGN.md §4): one PUB socket per namespace, owned by one
//! thread.
//!
//! The thread waits on the namespace's head signal — which the writer raises only after a
//! commit — reads the new entries from the file, and publishes one two-frame message per entry,
//! in seq order: topic `<ns>.kv`, then
//! `{"key","namespace","operation","entry_type":"kv","seq_num","txn","ts_ms"}`. The same path
//! serves local writes on a primary and applied batches on a replica.
//!
//! The socket is an XPUB — on the wire exactly a PUB to subscribers — so the notifier also
//! sees subscriptions arrive and can report how many topics are subscribed (`/stats`), which
//! also lets a client know its subscription is in place before it relies on it.
//!
//! PUB never blocks: a slow or absent subscriber loses messages once its `high_water_mark`
//! queue is full, and writes and replication are never held up. `seq_num` is the entry's log
//! seq, so a subscriber sees the gap and can re-read what it missed over HTTP.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::config::NotifierConfig;
use crate::log::Seq;
use crate::store::reader::EntryHead;
use crate::store::{Head, Namespace, reader, schema};

/// Why a notifier could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the ZeroMQ notifier of namespace {namespace:?} on {endpoint}: {reason}")]
pub struct NotifyError {
    pub namespace: String,
    pub endpoint: String,
    pub reason: String,
}

/// One notification, as published.
#[derive(Debug, Serialize)]
pub(crate) struct Notification<'a> {
    pub key: &'a str,
    pub namespace: &'a str,
    pub operation: &'a str,
    pub entry_type: &'static str,
    pub seq_num: Seq,
    pub txn: Seq,
    pub ts_ms: i64,
}

/// A running notifier.
pub struct Notifier {
    endpoint: String,
    sent: Arc<AtomicU64>,
    subscriptions: Arc<AtomicI64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Entries read per query while catching up with the head.
const READ_CHUNK: usize = 4096;
/// How often an idle notifier looks for (un)subscriptions.
const SUBSCRIPTION_CHECK: Duration = Duration::from_millis(50);

impl Notifier {
    /// Binds the PUB socket now (so a taken port fails startup) and starts publishing every
    /// entry committed after this call. Port 0 picks a free port ([`Notifier::endpoint`]).
    ///
    /// The task relaying head changes to the notifier's thread runs on `runtime`, tracked by
    /// `relays`; it ends when the namespace closes.
    pub fn start(
        ns: Arc<Namespace>,
        listen_ip: IpAddr,
        config: &NotifierConfig,
        runtime: tokio::runtime::Handle,
        relays: &TaskTracker,
    ) -> Result<Notifier, NotifyError> {
        let host = match listen_ip {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        let port = if config.bind_port == 0 {
            "*".to_string()
        } else {
            config.bind_port.to_string()
        };
        let wanted = format!("tcp://{host}:{port}");
        let fail = |reason: String| NotifyError {
            namespace: ns.name().to_owned(),
            endpoint: wanted.clone(),
            reason,
        };
        let (ctx, socket) = bind(&wanted, listen_ip, config).map_err(fail)?;
        let endpoint = socket
            .get_last_endpoint()
            .ok()
            .and_then(|e| e.ok())
            .unwrap_or_else(|| wanted.clone());
        let conn = schema::open_reader(ns.path())
            .map_err(|e| fail(format!("cannot read the namespace file: {e}")))?;
        let sent = Arc::new(AtomicU64::new(0));
        let subscriptions = Arc::new(AtomicI64::new(0));
        let start = ns.head().seq;
        // A task relays head changes to the thread over a std channel (capacity 1: wake-ups
        // coalesce). When the namespace closes — or the runtime goes away — the task ends, the
        // sender drops, and the thread finishes on its own.
        let (wake_tx, wake_rx) = std::sync::mpsc::sync_channel::<Seq>(1);
        let mut head_rx = ns.subscribe();
        relays.spawn_on(
            async move {
                while head_rx.changed().await.is_ok() {
                    let head = head_rx.borrow_and_update().seq;
                    if let Err(std::sync::mpsc::TrySendError::Disconnected(_)) =
                        wake_tx.try_send(head)
                    {
                        return;
                    }
                }
            },
            &runtime,
        );
        let head = ns.subscribe();
        let epoch = head.borrow().epoch;
        let name = ns.name().to_owned();
        let publisher = Publisher {
            topic: format!("{name}.kv"),
            epoch,
            name,
            socket,
            _ctx: ctx,
            conn,
            wake: wake_rx,
            head,
            last: start,
            sent: sent.clone(),
            subscriptions: subscriptions.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("notify-{}", ns.name()))
            .spawn(move || publisher.run())
            .map_err(|e| fail(format!("cannot start thread: {e}")))?;
        tracing::info!(namespace = %ns.name(), %endpoint, "ZeroMQ notifications on topic {}.kv", ns.name());
        Ok(Notifier {
            endpoint,
            sent,
            subscriptions,
            thread: Some(thread),
        })
    }

    /// The bound endpoint, e.g. `tcp://0.0.0.0:5555`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Counter of messages handed to ZeroMQ so far (PUB may still drop them at a subscriber's
    /// HWM; subscribers see that as a gap in `seq_num`).
    pub fn sent(&self) -> Arc<AtomicU64> {
        self.sent.clone()
    }

    /// Number of distinct topic prefixes currently subscribed to.
    pub fn subscriptions(&self) -> Arc<AtomicI64> {
        self.subscriptions.clone()
    }

    /// Waits for the thread, which ends once its namespace has closed.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Creates the XPUB socket `config` describes and binds it to `endpoint`.
fn bind(
    endpoint: &str,
    listen_ip: IpAddr,
    config: &NotifierConfig,
) -> Result<(zmq::Context, zmq::Socket), String> {
    let ctx = zmq::Context::new();
    let socket = ctx.socket(zmq::XPUB).map_err(|e| e.to_string())?;
    socket
        .set_sndhwm(config.high_water_mark)
        .map_err(|e| format!("high_water_mark: {e}"))?;
    socket
        .set_linger(config.linger_time)
        .map_err(|e| format!("linger_time: {e}"))?;
    if listen_ip.is_ipv6() {
        socket.set_ipv6(true).map_err(|e| e.to_string())?;
    }
    socket.bind(endpoint).map_err(|e| e.to_string())?;
    Ok((ctx, socket))
}

/// The notifier's thread: owns the socket and a read connection, publishes what each commit
/// appended, and counts subscriptions.
struct Publisher {
    name: String,
    topic: String,
    socket: zmq::Socket,
    /// The context must outlive the socket; both end with this thread.
    _ctx: zmq::Context,
    conn: rusqlite::Connection,
    /// Wake-ups relayed from the head signal; disconnected once the namespace closes.
    wake: std::sync::mpsc::Receiver<Seq>,
    /// The latest head, read directly (wake-ups coalesce, so the relayed value may be older).
    head: watch::Receiver<Head>,
    /// The last seq published (or dropped at the high water mark).
    last: Seq,
    /// The epoch of the history `last` belongs to.
    epoch: u32,
    sent: Arc<AtomicU64>,
    subscriptions: Arc<AtomicI64>,
}

impl Publisher {
    fn run(mut self) {
        loop {
            let woke = self.wake.recv_timeout(SUBSCRIPTION_CHECK);
            self.count_subscriptions();
            match woke {
                Ok(_) => {}
                // Timed out: nothing new, only subscriptions to look at.
                Err(RecvTimeoutError::Timeout) => continue,
                // The namespace is closing. Publish what was committed, then stop.
                Err(RecvTimeoutError::Disconnected) if self.last >= self.head.borrow().seq => {
                    return;
                }
                Err(RecvTimeoutError::Disconnected) => {}
            }
            if let Err(e) = self.publish_new() {
                tracing::error!(namespace = %self.name, error = %e, "cannot read entries to notify; notifications stop");
                return;
            }
        }
    }

    /// Each (un)subscription arrives as a message: 1 or 0, then the topic.
    fn count_subscriptions(&self) {
        while let Ok(msg) = self.socket.recv_bytes(zmq::DONTWAIT) {
            match msg.first() {
                Some(1) => self.subscriptions.fetch_add(1, Ordering::Relaxed),
                Some(0) => self.subscriptions.fetch_sub(1, Ordering::Relaxed),
                _ => 0,
            };
        }
    }

    /// Publishes the entries after `last` up to the current head.
    fn publish_new(&mut self) -> rusqlite::Result<()> {
        let now = *self.head.borrow();
        if now.epoch != self.epoch {
            // A snapshot replaced the history: carry on from its base, so the entries after
            // it (replayed or new) are notified and subscribers see the jump in seq_num (a gap
            // to recover, or seqs starting over).
            self.epoch = now.epoch;
            self.last = schema::base(&self.conn).map_or(now.seq, |(base, _)| base);
            tracing::info!(namespace = %self.name, from_seq = self.last + 1, "history replaced by a snapshot; notifications continue after its base");
        }
        while self.last < now.seq {
            let batch = reader::entry_heads(&self.conn, self.last, now.seq, READ_CHUNK)?;
            if batch.is_empty() {
                break;
            }
            for e in &batch {
                self.publish(e);
                self.last = e.seq;
            }
        }
        Ok(())
    }

    /// Sends one notification without waiting: at a subscriber's high water mark it is dropped.
    fn publish(&self, e: &EntryHead) {
        let body = serde_json::to_vec(&Notification {
            key: &e.key,
            namespace: &self.name,
            operation: e.op.as_str(),
            entry_type: "kv",
            seq_num: e.seq,
            txn: e.txn,
            ts_ms: e.ts_ms,
        })
        .expect("notification serializes");
        let sent = self
            .socket
            .send(self.topic.as_bytes(), zmq::SNDMORE | zmq::DONTWAIT)
            .and_then(|()| self.socket.send(body, zmq::DONTWAIT));
        match sent {
            Ok(()) => {
                self.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(zmq::Error::EAGAIN) => {}
            Err(err) => {
                tracing::warn!(namespace = %self.name, seq = e.seq, error = %err, "notification not sent")
            }
        }
    }
}

/// `ferry watch`: subscribes to `endpoints` (topics starting with `topic`) and writes each
/// notification as one line, `topic json`, until the output or the socket fails.
pub fn watch(
    endpoints: &[String],
    topic: &str,
    out: &mut impl std::io::Write,
) -> Result<(), String> {
    let ctx = zmq::Context::new();
    let socket = ctx.socket(zmq::SUB).map_err(|e| e.to_string())?;
    for e in endpoints {
        socket
            .connect(e)
            .map_err(|err| format!("cannot connect to {e}: {err}"))?;
        eprintln!("watching {e}");
    }
    socket
        .set_subscribe(topic.as_bytes())
        .map_err(|e| e.to_string())?;
    loop {
        let frames = socket.recv_multipart(0).map_err(|e| e.to_string())?;
        let text: Vec<_> = frames.iter().map(|f| String::from_utf8_lossy(f)).collect();
        writeln!(out, "{}", text.join(" ")).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
}
