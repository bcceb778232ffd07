//! ZeroMQ change notifications (DESIGN.md §4): one PUB socket per namespace, owned by one
//! thread.
//!
//! The thread waits on the namespace's head signal — which the writer raises only after a
//! commit — reads the new entries from the file, and publishes one two-frame message per entry,
//! in seq order: topic `<ns>.kv`, then
//! `{"key","namespace","operation","entry_type":"kv","seq_num","txn","ts_ms"}`. The same path
//! serves local writes on a primary and applied batches on a replica.
//!
//! The socket is a PUB of our own (`socket.rs`, speaking ZMTP 3.0 on tokio): on the wire a
//! PUB to every ZeroMQ SUB, but one that keeps only the subscriptions that can match our
//! topic, so what a subscriber can make the node hold is bounded. It also counts the
//! subscriptions (`/stats`), which lets a client know its subscription is in place before it
//! relies on it.
//!
//! PUB never blocks: a slow or absent subscriber loses messages once its `high_water_mark`
//! queue is full, and writes and replication are never held up. `seq_num` is the entry's log
//! seq, so a subscriber sees the gap and can re-read what it missed over HTTP.
//!
//! Restarts lose nothing for a subscriber that stays connected (its socket reconnects): the
//! notifier keeps, next to the namespace file (`<ns>.notify`), the last seq it published and
//! how many subscriptions it had. A new start resumes after that seq — entries committed but
//! not yet published before a stop, and those a replica catches up, are published after it —
//! and first holds everything back until as many subscriptions are back, at most
//! `startup_grace`. See docs/design.md, "Notifications across restarts".

mod curve;
mod socket;
mod zmtp;

pub use curve::ClientKeys as CurveClientKeys;
pub use curve::keypair as curve_keypair;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;

use crate::config::NotifierConfig;
use crate::log::Seq;
use crate::store::reader::EntryHead;
use crate::store::{Head, Namespace, reader, schema};
use curve::ServerKeys;
use socket::{Limits, Message, PubSocket};

/// Why a notifier could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the ZeroMQ notifier of namespace {namespace:?} on {endpoint}: {reason}")]
pub struct NotifyError {
    pub namespace: String,
    pub endpoint: String,
    pub reason: String,
    /// The config is at fault (a CURVE key file that cannot be used), not the machine.
    pub config: bool,
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
/// How often an idle notifier looks for (un)subscriptions and saves its position.
const SUBSCRIPTION_CHECK: Duration = Duration::from_millis(50);
/// A busy notifier saves its position at least this often.
const SAVE_EVERY: Duration = Duration::from_secs(1);
/// The smallest `max_subscription_bytes`: a connection's handshake must still fit.
const MIN_MESSAGE_BYTES: i64 = 64;

impl Notifier {
    /// Binds the PUB socket now (so a taken port fails startup) and starts publishing every
    /// entry committed after the last one notified before a restart (`<ns>.notify`), or after
    /// this call when there is none. Port 0 picks a free port ([`Notifier::endpoint`]).
    ///
    /// The notifier runs on a thread of its own (the socket's connections on a runtime of
    /// that thread). The task relaying head changes to it runs on `runtime`, tracked by
    /// `relays`; it ends when the namespace closes.
    pub fn start(
        ns: Arc<Namespace>,
        listen_ip: IpAddr,
        config: &NotifierConfig,
        runtime: tokio::runtime::Handle,
        relays: &TaskTracker,
    ) -> Result<Notifier, NotifyError> {
        let wanted = SocketAddr::new(listen_ip, config.bind_port);
        let error = |reason: String, config: bool| NotifyError {
            namespace: ns.name().to_owned(),
            endpoint: format!("tcp://{wanted}"),
            reason,
            config,
        };
        let fail = |reason: String| error(reason, false);
        let limits = limits(config).map_err(|reason| error(reason, true))?;
        let listener = std::net::TcpListener::bind(wanted).map_err(|e| fail(e.to_string()))?;
        let own = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| fail(format!("cannot start its runtime: {e}")))?;
        let topic = format!("{}.kv", ns.name());
        let socket = {
            let _in = own.enter();
            PubSocket::start(listener, &topic, limits).map_err(|e| fail(e.to_string()))?
        };
        let endpoint = match socket.local_addr() {
            SocketAddr::V4(a) => format!("tcp://{a}"),
            SocketAddr::V6(a) => format!("tcp://[{}]:{}", a.ip(), a.port()),
        };
        let conn = schema::open_reader(ns.path())
            .map_err(|e| fail(format!("cannot read the namespace file: {e}")))?;
        let sent = Arc::new(AtomicU64::new(0));
        let subscriptions = Arc::new(AtomicI64::new(0));
        let state_path = state_path(ns.path());
        let saved = Saved::load(&state_path);
        let now = ns.head();
        let start = saved
            .as_ref()
            .and_then(|s| s.resume_seq(&conn, &log_id(&conn), now.seq))
            .unwrap_or(now.seq);
        if start < now.seq {
            tracing::info!(namespace = %ns.name(), from_seq = start + 1, to_seq = now.seq, "notifying what was committed since the last notification before the restart");
        }
        let hold = saved
            .as_ref()
            .filter(|s| s.subscriptions > 0)
            .map(|s| Hold::new(s.subscriptions, config.startup_grace));
        // A task relays head changes to the thread (capacity 1: wake-ups coalesce). When the
        // namespace closes — or the runtime goes away — the task ends, the sender drops, and
        // the thread finishes on its own.
        let (wake_tx, wake_rx) = mpsc::channel::<Seq>(1);
        let mut head_rx = ns.subscribe();
        relays.spawn_on(
            async move {
                while head_rx.changed().await.is_ok() {
                    let head = head_rx.borrow_and_update().seq;
                    if let Err(mpsc::error::TrySendError::Closed(_)) = wake_tx.try_send(head) {
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
            topic,
            epoch,
            name,
            socket,
            config: config.clone(),
            conn,
            wake: wake_rx,
            head,
            last: start,
            sent: sent.clone(),
            subscriptions: subscriptions.clone(),
            subscribed: 0,
            hold,
            state_path,
            dirty: true,
            saved_at: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("notify-{}", ns.name()))
            .spawn(move || own.block_on(publisher.run()))
            .map_err(|e| fail(format!("cannot start thread: {e}")))?;
        tracing::info!(namespace = %ns.name(), %endpoint, "ZeroMQ notifications on topic {}.kv", ns.name());
        Ok(Notifier {
            endpoint,
            sent,
            subscriptions,
            thread: Some(thread),
        })
    }

    /// The bound endpoint, e.g. `tcp://127.0.0.1:5555`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Counter of messages published so far (a subscriber whose queue is full misses them;
    /// subscribers see that as a gap in `seq_num`).
    pub fn sent(&self) -> Arc<AtomicU64> {
        self.sent.clone()
    }

    /// Subscriptions that match our topic, counted per subscriber.
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

/// The socket's limits and security from the notifier's config (reading the key files).
fn limits(config: &NotifierConfig) -> Result<Limits, String> {
    let curve = match &config.curve_secret_key_file {
        None => None,
        Some(secret) => {
            let keys = ServerKeys::load(secret, config.curve_client_keys_file.as_deref())?;
            tracing::info!(public_key = %keys.public_z85(), clients = ?keys, "ZeroMQ notifications over CURVE");
            Some(Arc::new(keys))
        }
    };
    Ok(Limits {
        high_water_mark: config.high_water_mark.max(1) as usize,
        max_message: config.max_subscription_bytes.max(MIN_MESSAGE_BYTES) as usize,
        max_peers: config.max_subscribers,
        handshake_timeout: config.handshake_timeout,
        linger: Duration::from_millis(config.linger_time),
        curve,
    })
}

/// The notifier's thread: owns the socket and a read connection, publishes what each commit
/// appended, and keeps count of subscriptions.
struct Publisher {
    name: String,
    topic: String,
    socket: PubSocket,
    config: NotifierConfig,
    conn: rusqlite::Connection,
    /// Wake-ups relayed from the head signal; closed once the namespace closes.
    wake: mpsc::Receiver<Seq>,
    /// The latest head, read directly (wake-ups coalesce, so the relayed value may be older).
    head: watch::Receiver<Head>,
    /// The last seq published (or dropped at the high water mark).
    last: Seq,
    /// The epoch of the history `last` belongs to.
    epoch: u32,
    sent: Arc<AtomicU64>,
    /// `subscribed`, for `/stats`.
    subscriptions: Arc<AtomicI64>,
    /// Subscriptions that match our topic (a prefix of it, or empty), per subscriber.
    subscribed: i64,
    /// While set, nothing is published: subscribers are coming back after a start.
    hold: Option<Hold>,
    /// Where `last` and `subscribed` are saved (`<ns>.notify`).
    state_path: PathBuf,
    dirty: bool,
    saved_at: Instant,
}

/// Holding back notifications until `expect` subscriptions are back, or until `until`.
#[derive(Debug)]
struct Hold {
    expect: i64,
    until: Instant,
}

impl Hold {
    fn new(expect: i64, grace: Duration) -> Hold {
        Hold {
            expect,
            until: Instant::now() + grace,
        }
    }
}

impl Publisher {
    /// Publishes until the namespace closes, then lets subscribers have what is queued for
    /// them (up to `linger_time`) and closes the socket.
    async fn run(mut self) {
        if let Some(h) = &self.hold {
            tracing::info!(namespace = %self.name, subscriptions = h.expect, grace = ?self.config.startup_grace, "holding notifications back until the subscribers from before the restart subscribe again");
        }
        loop {
            // Ok(Some): woken by a commit; Ok(None): the namespace closed; Err: idle.
            let woke = tokio::time::timeout(SUBSCRIPTION_CHECK, self.wake.recv()).await;
            self.read_subscriptions();
            let closing = matches!(woke, Ok(None));
            // On the way out while still holding back, publish nothing: the saved position
            // makes the next start publish it, when the subscribers may be back.
            if !self.holding()
                && let Err(e) = self.publish_new()
            {
                tracing::error!(namespace = %self.name, error = %e, "cannot read entries to notify; notifications stop");
                break;
            }
            if closing && (self.hold.is_some() || self.last >= self.head.borrow().seq) {
                self.save();
                break;
            }
            let idle = !matches!(woke, Ok(Some(_)));
            if self.dirty && (idle || self.saved_at.elapsed() >= SAVE_EVERY) {
                self.save();
            }
        }
        self.socket.close().await;
    }

    /// Whether notifications are still held back; ends the hold once the subscriptions are
    /// back or the grace window is over.
    fn holding(&mut self) -> bool {
        if let Some(h) = &self.hold {
            let back = self.subscribed >= h.expect;
            if back || Instant::now() >= h.until {
                tracing::info!(namespace = %self.name, subscriptions = self.subscribed, expected = h.expect, "notifications resume{}", if back { "" } else { " (grace window over)" });
                self.hold = None;
            }
        }
        self.hold.is_some()
    }

    /// Takes the socket's count of subscriptions that can match our topic.
    fn read_subscriptions(&mut self) {
        let now = self.socket.subscribed();
        if now != self.subscribed {
            self.subscribed = now;
            self.dirty = true;
        }
        self.subscriptions.store(self.subscribed, Ordering::Relaxed);
    }

    /// Saves `last` and the subscription count; a failure is logged, not fatal (the next
    /// start would then publish from an older seq, or from the head).
    fn save(&mut self) {
        let crc = match reader::crc_at(&self.conn, self.last) {
            Ok(Some(crc)) => crc,
            // Pruned meanwhile: the next start cannot check it, and starts from its head.
            _ => return,
        };
        let saved = Saved {
            // Read from the file: a replica adopts its upstream's log after starting.
            log_id: log_id(&self.conn),
            seq: self.last,
            crc,
            subscriptions: match &self.hold {
                // Still holding: the subscribers expected have not all come back yet.
                Some(h) => h.expect.max(self.subscribed),
                None => self.subscribed,
            },
        };
        match saved.store(&self.state_path) {
            Ok(()) => {
                self.dirty = false;
                self.saved_at = Instant::now();
            }
            Err(e) => {
                tracing::warn!(namespace = %self.name, path = %self.state_path.display(), error = %e, "cannot save the notifier's position; a restart may notify from an older seq");
                self.saved_at = Instant::now();
            }
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
            self.dirty = true;
        }
        Ok(())
    }

    /// Queues one notification for every subscriber, without waiting: one whose queue is
    /// full misses it.
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
        self.socket
            .send(&Message::new(&[self.topic.as_bytes(), &body]));
        self.sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// The namespace's log_id ("" before a replica first meets its upstream).
fn log_id(conn: &rusqlite::Connection) -> String {
    schema::meta(conn, "log_id")
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// `<ns>.notify` beside `<ns>.db`.
fn state_path(db: &Path) -> PathBuf {
    db.with_extension("notify")
}

/// What a notifier keeps across restarts.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    /// The log `seq` belongs to.
    log_id: String,
    /// The last seq notified.
    seq: Seq,
    /// The crc of entry `seq`: a history replaced since (a snapshot, a rollback) has another.
    crc: u32,
    /// Subscriptions to wait for after a start.
    subscriptions: i64,
}

impl Saved {
    fn load(path: &Path) -> Option<Saved> {
        let text = std::fs::read(path).ok()?;
        match serde_json::from_slice(&text) {
            Ok(saved) => Some(saved),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable notifier state file; notifying from the head");
                None
            }
        }
    }

    /// Written beside and renamed over, so a crash leaves the old file or the new one.
    fn store(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("notify.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).expect("state serializes"))?;
        std::fs::rename(&tmp, path)
    }

    /// Where to resume: after `seq` if it is still an entry of this history (same log,
    /// same crc at `seq`, not past the head), else `None` (start from the head).
    fn resume_seq(&self, conn: &rusqlite::Connection, log_id: &str, head: Seq) -> Option<Seq> {
        if self.log_id != log_id || self.seq > head {
            return None;
        }
        match reader::crc_at(conn, self.seq) {
            Ok(Some(crc)) if crc == self.crc => Some(self.seq),
            // Pruned since: what is left after the base is published; the gap shows.
            Ok(None) if self.seq < reader::oldest(conn).unwrap_or(0) => Some(self.seq),
            _ => None,
        }
    }
}

/// `ferry watch`: subscribes to `endpoints` (topics starting with `topic`), with CURVE when
/// `curve` is given, and writes each notification as one line, `topic json`, until the output
/// or the socket fails. Connections, and handshakes that fail, are told on stderr: a failure
/// once until the endpoint connects again (libzmq retries it every 100 ms), so a subscriber
/// that gets nothing says why.
pub fn watch(
    endpoints: &[String],
    topic: &str,
    curve: Option<&CurveClientKeys>,
    out: &mut impl std::io::Write,
) -> Result<(), String> {
    let zmq_err = |e: zmq::Error| e.to_string();
    let ctx = zmq::Context::new();
    let socket = ctx.socket(zmq::SUB).map_err(zmq_err)?;
    if let Some(keys) = curve {
        keys.set_on(&socket).map_err(zmq_err)?;
    }
    let mut links = Links::watch(&ctx, &socket, false).map_err(zmq_err)?;
    for e in endpoints {
        socket
            .connect(e)
            .map_err(|err| format!("cannot connect to {e}: {err}"))?;
        eprintln!("watching {e}");
    }
    socket.set_subscribe(topic.as_bytes()).map_err(zmq_err)?;
    loop {
        let (data, event) = {
            let mut items = [socket.as_poll_item(zmq::POLLIN), links.poll_item()];
            zmq::poll(&mut items, -1).map_err(zmq_err)?;
            (items[0].is_readable(), items[1].is_readable())
        };
        if event && let Some(line) = links.read().map_err(zmq_err)? {
            eprintln!("{line}");
        }
        if data {
            let frames = socket.recv_multipart(0).map_err(zmq_err)?;
            let text: Vec<_> = frames.iter().map(|f| String::from_utf8_lossy(f)).collect();
            writeln!(out, "{}", text.join(" ")).map_err(|e| e.to_string())?;
            out.flush().map_err(|e| e.to_string())?;
        }
    }
}

/// A subscriber socket's connections, as its monitor reports them: made, lost, or refused
/// and why ([`connection_event`]), each told once.
pub struct Links {
    monitor: zmq::Socket,
    told: std::collections::HashMap<String, Link>,
    /// Tell only the connections that fail, and why (not those made or lost).
    failures_only: bool,
}

impl Links {
    /// Monitors `socket` (call before it connects), through an `inproc` pair in `ctx`; with
    /// `failures_only`, [`Links::read`] tells only why a connection could not be made.
    pub fn watch(
        ctx: &zmq::Context,
        socket: &zmq::Socket,
        failures_only: bool,
    ) -> zmq::Result<Links> {
        socket.monitor("inproc://ferry-links", zmq::SocketEvent::ALL as i32)?;
        let monitor = ctx.socket(zmq::PAIR)?;
        monitor.connect("inproc://ferry-links")?;
        Ok(Links {
            monitor,
            told: std::collections::HashMap::new(),
            failures_only,
        })
    }

    /// For `zmq::poll`: readable when an event is waiting.
    pub fn poll_item(&self) -> zmq::PollItem<'_> {
        self.monitor.as_poll_item(zmq::POLLIN)
    }

    /// Reads the waiting event: the line to tell, if it is news.
    pub fn read(&mut self) -> zmq::Result<Option<String>> {
        let event = self.monitor.recv_multipart(0)?;
        let line = connection_event(&event, &mut self.told);
        let failed = || {
            let endpoint = event
                .get(1)
                .map(|e| String::from_utf8_lossy(e).into_owned());
            endpoint.and_then(|e| self.told.get(&e).copied()) == Some(Link::Failed)
        };
        Ok(line.filter(|_| !self.failures_only || failed()))
    }
}

/// What [`watch`] last told of an endpoint's connection.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Link {
    Connected,
    /// Was connected, then lost; reconnecting.
    Lost,
    /// A handshake failed, and why was told.
    Failed,
}

/// What a socket monitor's event (`frames`: event and value, then the endpoint) says about a
/// connection, if it is news: a connection made or lost, or a handshake that failed when the
/// one before it did not (libzmq retries every 100 ms, each retry failing the same way).
fn connection_event(
    frames: &[Vec<u8>],
    links: &mut std::collections::HashMap<String, Link>,
) -> Option<String> {
    use zmq::SocketEvent as E;
    let [event, endpoint] = frames else {
        return None;
    };
    let (id, value) = (event.get(..2)?, event.get(2..6)?);
    let value = u32::from_le_bytes(value.try_into().ok()?);
    let endpoint = String::from_utf8_lossy(endpoint).into_owned();
    let was = links.get(&endpoint).copied();
    let kind = E::from_raw(u16::from_le_bytes([id[0], id[1]]));
    let why = match kind {
        E::HANDSHAKE_SUCCEEDED => {
            links.insert(endpoint.clone(), Link::Connected);
            return Some(format!("connected to {endpoint}"));
        }
        E::DISCONNECTED if was == Some(Link::Connected) => {
            links.insert(endpoint.clone(), Link::Lost);
            return Some(format!("disconnected from {endpoint}"));
        }
        // A notifier that cannot open the HELLO (another server key) or meets a mechanism it
        // does not run closes the connection: libzmq reports the broken pipe, or only that.
        E::DISCONNECTED | E::HANDSHAKE_FAILED_NO_DETAIL => {
            let errno = match kind {
                E::HANDSHAKE_FAILED_NO_DETAIL => {
                    format!(" ({})", std::io::Error::from_raw_os_error(value as i32))
                }
                _ => String::new(),
            };
            format!(
                "the notifier closed the connection during the handshake{errno}: another \
                 --curve-server-key than its key, or CURVE on one side only?"
            )
        }
        E::HANDSHAKE_FAILED_AUTH => format!(
            "the notifier refused this client's key (status {value}): it is not in the \
             notifier's curve_client_keys_file"
        ),
        E::HANDSHAKE_FAILED_PROTOCOL => format!(
            "the handshake broke the protocol (libzmq error {value:#x}): CURVE on one side \
             only?"
        ),
        _ => return None,
    };
    if links.insert(endpoint.clone(), Link::Failed) == Some(Link::Failed) {
        return None;
    }
    Some(format!("no connection to {endpoint}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use zmq::SocketEvent as E;

    fn event(kind: E, value: u32, endpoint: &str) -> Vec<Vec<u8>> {
        let mut head = (kind as u16).to_le_bytes().to_vec();
        head.extend_from_slice(&value.to_le_bytes());
        vec![head, endpoint.as_bytes().to_vec()]
    }

    /// `ferry watch` tells each change of a connection once: a failed handshake once however
    /// often libzmq retries it, then the connection, its loss, and a failure after the loss
    /// (with its reason); other events and other endpoints apart. (Catches: every retry's
    /// failure printed, a failure after a lost connection never told, the endpoints' states
    /// mixed.)
    #[test]
    fn watch_tells_each_change_of_a_connection_once() {
        let (a, b) = ("tcp://127.0.0.1:1", "tcp://127.0.0.1:2");
        let mut links = std::collections::HashMap::new();
        let mut told =
            |kind, value, endpoint| connection_event(&event(kind, value, endpoint), &mut links);
        let first = told(E::HANDSHAKE_FAILED_NO_DETAIL, 32, a).unwrap();
        assert!(
            first.starts_with("no connection to tcp://127.0.0.1:1: the notifier closed the connection during the handshake (Broken pipe"),
            "{first}"
        );
        for _ in 0..3 {
            assert_eq!(told(E::DISCONNECTED, 0, a), None);
            assert_eq!(told(E::CONNECT_RETRIED, 100, a), None);
            assert_eq!(told(E::HANDSHAKE_FAILED_NO_DETAIL, 32, a), None);
        }
        let auth = told(E::HANDSHAKE_FAILED_AUTH, 400, b).unwrap();
        assert!(
            auth.contains("tcp://127.0.0.1:2") && auth.contains("status 400"),
            "{auth}"
        );
        assert_eq!(
            told(E::HANDSHAKE_SUCCEEDED, 0, a).as_deref(),
            Some("connected to tcp://127.0.0.1:1")
        );
        assert_eq!(
            told(E::DISCONNECTED, 0, a).as_deref(),
            Some("disconnected from tcp://127.0.0.1:1")
        );
        let after = told(E::HANDSHAKE_FAILED_PROTOCOL, 0x1000_0001, a).unwrap();
        assert!(after.contains("libzmq error 0x10000001"), "{after}");
        assert_eq!(told(E::HANDSHAKE_FAILED_AUTH, 400, b), None);
        assert_eq!(told(E::MONITOR_STOPPED, 0, a), None);
    }
}
