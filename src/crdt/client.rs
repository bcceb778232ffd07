//! `ferry crdt-client`: the walkthrough's client, made robust.
//!
//! 1. Subscribes to each namespace's ZeroMQ notifications (topic `<ns>.kv`).
//! 2. Loads the current state of every `lww:` and `counter:` key over HTTP (key listing), so a
//!    client started late or restarted is right, not empty. It notes each namespace's head seq
//!    before listing.
//! 3. For each notification with a `seq_num` past what it has seen, reads the log from the
//!    changes feed (`GET /changes?since=`) up to that seq and merges each value. A `seq_num`
//!    that skips ahead (ZeroMQ dropped messages) is reported as a gap, and the same read fills
//!    it. A notification already covered is skipped.
//! 4. Every [`GAP_CHECK`], reads each namespace's head seq; a head that stayed ahead of what
//!    the client has seen for a whole period means notifications were lost with nothing after
//!    them to reveal the gap (a notifier restarted, unreachable, or past its high water
//!    mark): the client reads the missing entries as for a gap.
//!
//! Deletes are reported and leave the CRDT state alone: these CRDTs only grow (write a newer
//! LWW value to change a register). Malformed values are reported and skipped.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;
use tokio::sync::mpsc;

use super::state::{COUNTER_PREFIX, LWW_PREFIX, Outcome, State, plain};
use crate::log::Seq;

/// How often the client compares each namespace's head with what it has seen.
pub const GAP_CHECK: Duration = Duration::from_secs(2);

/// Where to listen and read.
#[derive(Debug, Clone)]
pub struct Options {
    /// (namespace, ZeroMQ endpoint) pairs.
    pub subscriptions: Vec<(String, String)>,
    /// Base URL of the node to read from, e.g. `http://localhost:8003`.
    pub http: String,
    /// One JSON line per event instead of the walkthrough's text.
    pub json: bool,
    /// CURVE keys for notifiers with CURVE on (every endpoint must have the same server key).
    pub curve: Option<crate::notify::CurveClientKeys>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ZeroMQ {endpoint}: {reason}")]
    Zmq { endpoint: String, reason: String },
    #[error("reading {url}: {reason}")]
    Http { url: String, reason: String },
    /// The changes asked for were pruned from the node's log (HTTP 410).
    #[error("reading {url}: {reason}")]
    Pruned { url: String, reason: String },
}

/// One notification as received.
#[derive(Debug, Deserialize)]
struct Notice {
    key: String,
    namespace: String,
    operation: String,
    seq_num: Seq,
}

#[derive(Debug, Deserialize)]
struct Change {
    seq: Seq,
    op: String,
    key: String,
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ChangesPage {
    entries: Vec<Change>,
}

#[derive(Debug, Deserialize)]
struct ListPage {
    items: Vec<ListItem>,
    next_after: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ListItem {
    key: String,
    value: String,
}

#[derive(Debug, Deserialize)]
struct Offset {
    head_seq: Seq,
}

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_default()
}

/// Reads from the node's HTTP API.
struct Reader {
    http: reqwest::Client,
    base: String,
}

impl Reader {
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let fail = |reason: String| ClientError::Http {
            url: url.clone(),
            reason,
        };
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| fail(e.to_string()))?;
        if status == reqwest::StatusCode::GONE {
            return Err(ClientError::Pruned {
                url,
                reason: format!("{status}: {text}"),
            });
        }
        if !status.is_success() {
            return Err(fail(format!("{status}: {text}")));
        }
        serde_json::from_str(&text).map_err(|e| fail(format!("unexpected response: {e}")))
    }

    async fn offset(&self, ns: &str) -> Result<Seq, ClientError> {
        Ok(self
            .get::<Offset>(&format!("/api/v1/{ns}/offset"))
            .await?
            .head_seq)
    }

    async fn list(&self, ns: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, ClientError> {
        let mut out = Vec::new();
        let mut after = String::new();
        loop {
            let query = serde_urlencoded::to_string([
                ("prefix", prefix),
                ("after", &after),
                ("limit", "1000"),
            ])
            .expect("query encodes");
            let page: ListPage = self.get(&format!("/api/v1/{ns}/kv?{query}")).await?;
            out.extend(page.items.into_iter().map(|i| (i.key, unb64(&i.value))));
            match page.next_after {
                Some(next) => after = next,
                None => return Ok(out),
            }
        }
    }

    async fn changes(&self, ns: &str, since: Seq) -> Result<ChangesPage, ClientError> {
        self.get(&format!("/api/v1/{ns}/changes?since={since}&limit=1000"))
            .await
    }
}

/// Prints what happens, as text or JSON lines.
struct Printer {
    json: bool,
}

impl Printer {
    fn line(&self, text: &str) {
        if !self.json {
            println!("{text}");
        }
    }

    fn event(&self, value: serde_json::Value) {
        if self.json {
            println!("{value}");
        }
    }
}

/// Runs the client until `stop` resolves.
pub async fn run(
    opts: Options,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ClientError> {
    let mut client = Client {
        out: Printer { json: opts.json },
        reader: Reader {
            http: reqwest::Client::new(),
            base: opts.http.trim_end_matches('/').to_owned(),
        },
        state: State::default(),
        seen: BTreeMap::new(),
    };
    client.out.line("  Waiting for change notifications...\n");
    let (subscribers, mut rx) =
        Subscribers::start(&opts.subscriptions, opts.curve.as_ref(), &client.out)?;
    tokio::pin!(stop);
    for (ns, _) in &opts.subscriptions {
        if !client.load(ns, stop.as_mut()).await {
            return Ok(());
        }
    }
    client.ready();
    let mut check = tokio::time::interval(GAP_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await; // the first tick is immediate; the load just read every head
    // Per namespace, a head seen ahead of the client at the previous check.
    let mut behind: BTreeMap<String, Seq> = BTreeMap::new();
    loop {
        tokio::select! {
            n = rx.recv() => match n {
                Some(n) => client.on_notice(n).await,
                None => break,
            },
            _ = check.tick() => client.check_heads(&mut behind).await,
            _ = &mut stop => break,
        }
    }
    subscribers.stop().await;
    Ok(())
}

/// The threads receiving notifications, one per namespace.
struct Subscribers {
    running: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Subscribers {
    /// Subscribes to each `(namespace, endpoint)`; the notifications arrive on the receiver.
    fn start(
        subscriptions: &[(String, String)],
        curve: Option<&crate::notify::CurveClientKeys>,
        out: &Printer,
    ) -> Result<(Subscribers, mpsc::Receiver<Notice>), ClientError> {
        let (tx, rx) = mpsc::channel::<Notice>(10_000);
        let running = Arc::new(AtomicBool::new(true));
        let mut threads = Vec::new();
        for (ns, endpoint) in subscriptions {
            out.line(&format!("  Connecting to ZeroMQ {ns}: {endpoint}"));
            threads.push(subscribe(ns, endpoint, curve, tx.clone(), running.clone())?);
        }
        drop(tx);
        for (ns, _) in subscriptions {
            out.line(&format!("  ZeroMQ listener started for namespace: {ns}"));
        }
        Ok((Subscribers { running, threads }, rx))
    }

    /// Stops the threads and waits for them.
    async fn stop(self) {
        self.running.store(false, Ordering::Relaxed);
        for t in self.threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// What the client knows and where it reads and prints.
struct Client {
    out: Printer,
    reader: Reader,
    state: State,
    /// Per namespace, the last seq merged into `state`.
    seen: BTreeMap<String, Seq>,
}

impl Client {
    /// Loads every CRDT key of `ns`, retrying every second until the node answers (it may start
    /// after the client). False when `stop` resolved first.
    async fn load(&mut self, ns: &str, mut stop: Pin<&mut impl Future<Output = ()>>) -> bool {
        let mut warned = false;
        let (head, count) = loop {
            match bootstrap(&self.reader, ns, &mut self.state).await {
                Ok(r) => break r,
                Err(e) => {
                    if !warned {
                        self.out.line(&format!(
                            "  Cannot load {ns} yet ({e}); retrying every second"
                        ));
                        self.out.event(serde_json::json!({"event": "waiting", "namespace": ns, "error": e.to_string()}));
                        warned = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = &mut stop => return false,
                    }
                }
            }
        };
        self.seen.insert(ns.to_owned(), head);
        self.out.line(&format!(
            "  Loaded {count} CRDT keys from {ns} (up to seq {head}) via {}",
            self.reader.base
        ));
        true
    }

    /// Every namespace is loaded: says so, and shows the state.
    fn ready(&self) {
        let state = &self.state;
        self.out.event(
            serde_json::json!({"event": "ready", "seqs": self.seen, "state": state.to_json()}),
        );
        if !state.lww.is_empty() || !state.counters.is_empty() {
            self.out.line(&format!("\n{}", state.render()));
        }
    }

    /// Reads each namespace's head; where the previous check already saw the client behind
    /// and it still is, reads the missing entries (their notifications were lost, and no later
    /// one came to show the gap). A lag seen once is only noted: its notifications may be on
    /// their way.
    async fn check_heads(&mut self, behind: &mut BTreeMap<String, Seq>) {
        let namespaces: Vec<String> = self.seen.keys().cloned().collect();
        for ns in namespaces {
            let Ok(head) = self.reader.offset(&ns).await else {
                continue; // the node is away: the next check, or notification, will do
            };
            let last = self.seen[&ns];
            let was = behind.remove(&ns);
            if head <= last {
                continue;
            }
            match was {
                Some(earlier) if earlier > last => self.advance(&ns, head).await,
                _ => {
                    behind.insert(ns, head);
                }
            }
        }
    }

    /// Merges what `notice` announces (and any gap before it), unless already seen.
    async fn on_notice(&mut self, notice: Notice) {
        let Some(&last) = self.seen.get(&notice.namespace) else {
            return;
        };
        if notice.seq_num <= last {
            return; // already covered by the bootstrap or an earlier read
        }
        let out = &self.out;
        out.line(&format!(
            "  Change notification received\n   Topic: {}.kv\n   Key: {}\n   Operation: {}\n",
            notice.namespace, notice.key, notice.operation
        ));
        if notice.seq_num > last + 1 {
            out.line(&format!(
                "  Gap detected in {}: seq {} to {} were not received; reading them from the changes feed",
                notice.namespace,
                last + 1,
                notice.seq_num - 1
            ));
            out.event(serde_json::json!({"event": "gap", "namespace": notice.namespace, "from": last + 1, "to": notice.seq_num - 1}));
        }
        self.read_up_to(&notice.namespace, last, notice.seq_num)
            .await;
    }

    /// What the periodic check found missing up to `head`: read it.
    async fn advance(&mut self, ns: &str, head: Seq) {
        let last = self.seen[ns];
        self.out.line(&format!(
            "  No notification for {ns} seq {} to {head} came; reading them from the changes feed",
            last + 1
        ));
        self.out.event(serde_json::json!({"event": "gap", "namespace": ns, "from": last + 1, "to": head, "found_by": "check"}));
        self.read_up_to(ns, last, head).await;
    }

    /// Reads and merges the log of `ns` after `last` up to `target`, and shows the state.
    async fn read_up_to(&mut self, ns: &str, last: Seq, target: Seq) {
        let out = &self.out;
        match catch_up(&self.reader, out, ns, last, target, &mut self.state).await {
            Ok(new_last) => {
                self.seen.insert(ns.to_owned(), new_last);
            }
            Err((new_last, e)) => {
                self.seen.insert(ns.to_owned(), new_last);
                out.line(&format!(
                    "  Could not read {ns} ({e}); will retry on the next notification or check"
                ));
                out.event(
                    serde_json::json!({"event": "error", "namespace": ns, "error": e.to_string()}),
                );
            }
        }
        out.line(&format!("\n{}", self.state.render()));
        out.event(
            serde_json::json!({"event": "state", "seqs": self.seen, "state": self.state.to_json()}),
        );
    }
}

/// Loads every CRDT key of `ns`; returns (the head seq read before listing, keys loaded).
async fn bootstrap(
    reader: &Reader,
    ns: &str,
    state: &mut State,
) -> Result<(Seq, usize), ClientError> {
    let head = reader.offset(ns).await?;
    let mut count = 0;
    for prefix in [LWW_PREFIX, COUNTER_PREFIX] {
        for (key, value) in reader.list(ns, prefix).await? {
            state.apply(&key, &value);
            count += 1;
        }
    }
    Ok((head, count))
}

/// Reads and merges the log of `ns` after `last` up to at least `target`. Returns the last seq
/// processed (on error too, with the error).
async fn catch_up(
    reader: &Reader,
    out: &Printer,
    ns: &str,
    mut last: Seq,
    target: Seq,
    state: &mut State,
) -> Result<Seq, (Seq, ClientError)> {
    while last < target {
        let page = match reader.changes(ns, last).await {
            Ok(p) => p,
            Err(ClientError::Pruned { .. }) => {
                // The entries after `last` are gone (retention, or the node re-bootstrapped):
                // merge every key again (CRDT merges are idempotent) and go on from the head.
                out.line(&format!(
                    "  The log of {ns} no longer has the entries after seq {last}; reloading every key"
                ));
                let (head, count) = bootstrap(reader, ns, state).await.map_err(|e| (last, e))?;
                out.event(serde_json::json!({"event": "reload", "namespace": ns, "head": head, "keys": count}));
                return Ok(head);
            }
            Err(e) => return Err((last, e)),
        };
        if page.entries.is_empty() {
            // The node has not applied `target` yet (a notification from a faster node).
            break;
        }
        for change in page.entries {
            last = change.seq;
            process(out, ns, &change, state);
        }
    }
    Ok(last)
}

fn process(out: &Printer, ns: &str, change: &Change, state: &mut State) {
    let key = &change.key;
    if change.op == "delete" {
        out.line(&format!(
            "  Key deleted in {ns}: {key} (the CRDT state keeps its merged value)"
        ));
        out.event(serde_json::json!({"event": "update", "namespace": ns, "seq": change.seq, "key": key, "outcome": "deleted"}));
        return;
    }
    let value = change.value.as_deref().map(unb64).unwrap_or_default();
    let outcome = state.apply(key, &value);
    if outcome != Outcome::NotCrdt {
        out.line(&format!("  Processing update: {key}"));
    }
    let label = match &outcome {
        Outcome::LwwUpdated(r) => {
            out.line(&format!(
                "  LWW-Register updated: {key}\n   Value: {}\n   Timestamp: {}\n   Replica: {}",
                plain(&r.value),
                r.timestamp,
                r.replica
            ));
            "updated"
        }
        Outcome::LwwStale { incoming, current } => {
            out.line(&format!(
                "    LWW-Register ignored (stale): {key}\n   Incoming timestamp: {}\n   Current timestamp: {}",
                incoming.timestamp, current.timestamp
            ));
            "stale"
        }
        Outcome::LwwUnchanged => "unchanged",
        Outcome::CounterUpdated { total } | Outcome::CounterUnchanged { total } => {
            let counts =
                serde_json::to_string(&state.counters[key.as_str()].counts).expect("serializes");
            out.line(&format!(
                "  G-Counter merged: {key}\n   Replica Counts: {counts}\n   Total: {total}"
            ));
            if matches!(outcome, Outcome::CounterUpdated { .. }) {
                "updated"
            } else {
                "unchanged"
            }
        }
        Outcome::NotCrdt => "not_crdt",
        Outcome::Malformed(e) => {
            out.line(&format!(
                "  Skipping malformed value of {key} in {ns} (seq {}): {e}",
                change.seq
            ));
            "malformed"
        }
    };
    out.event(serde_json::json!({"event": "update", "namespace": ns, "seq": change.seq, "key": key, "outcome": label}));
}

/// Starts a thread that receives `ns`'s notifications from `endpoint` into `tx`.
fn subscribe(
    ns: &str,
    endpoint: &str,
    curve: Option<&crate::notify::CurveClientKeys>,
    tx: mpsc::Sender<Notice>,
    running: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, ClientError> {
    let fail = |e: zmq::Error| ClientError::Zmq {
        endpoint: endpoint.to_owned(),
        reason: e.to_string(),
    };
    let ctx = zmq::Context::new();
    let socket = ctx.socket(zmq::SUB).map_err(fail)?;
    if let Some(keys) = curve {
        keys.set_on(&socket).map_err(fail)?;
    }
    // Only failures: the story's output stays the walkthrough's when all is well.
    let mut links = crate::notify::Links::watch(&ctx, &socket, true).map_err(fail)?;
    socket.connect(endpoint).map_err(fail)?;
    socket
        .set_subscribe(format!("{ns}.kv").as_bytes())
        .map_err(fail)?;
    let ns = ns.to_owned();
    Ok(std::thread::spawn(move || {
        let _ctx = ctx;
        while running.load(Ordering::Relaxed) {
            let (data, event) = {
                let mut items = [socket.as_poll_item(zmq::POLLIN), links.poll_item()];
                if zmq::poll(&mut items, 200).is_err() {
                    return;
                }
                (items[0].is_readable(), items[1].is_readable())
            };
            // Why a notifier refuses the connection, on stderr, once.
            if event {
                match links.read() {
                    Ok(Some(line)) => eprintln!("  ZeroMQ {ns}: {line}"),
                    Ok(None) => {}
                    Err(_) => return,
                }
            }
            if !data {
                continue;
            }
            let Ok(frames) = socket.recv_multipart(0) else {
                return;
            };
            let Some(body) = frames.get(1) else { continue };
            match serde_json::from_slice::<Notice>(body) {
                Ok(n) if n.namespace == ns => {
                    if tx.blocking_send(n).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => eprintln!("  Ignoring a malformed notification on {ns}: {e}"),
            }
        }
    }))
}
