//! The replica side: one follower task per followed namespace.
//!
//! A follower connects to its upstream, checks that both logs are the same log (log_id), asks
//! for everything after its own `max(seq)` (presenting the crc of its last entry), and applies
//! each received batch in one transaction after the writer verified continuity and the crc
//! chain. Its position is never stored anywhere but in `wal_log` itself.
//!
//! Trouble that may pass — the upstream down or restarting, the network, this replica's own
//! disk full or file busy — is retried with capped exponential backoff and jitter while reads
//! keep being served. The backoff only resets once a session made progress (applied something,
//! or caught up), so a replica that connects fine but cannot store what it receives does not
//! reconnect in a tight loop. Divergence (another log, a crc that does not chain, a gap) stops
//! the follower with the reason in the log and in `/stats`: it never applies an entry that does
//! not continue its own history.
//!
//! The log says what changes, not every attempt: the first failure (what failed, with which
//! upstream, when it tries next), a new kind of failure, a reminder every
//! [`STILL_FAILING_EVERY`] while it lasts, and "reconnected" once it is over. A catch-up logs
//! its progress every [`PROGRESS_EVERY`] and "caught up at seq N" when it ends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::client::{Client, Upstream};
use super::pb::{AckRequest, PositionRequest, TailRequest};
use super::{ErrorKind, is_log_id};
use crate::log::{Entry, LogId, Seq};
use crate::store::{Namespace, SqliteKind, StoreError};

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// While an upstream stays unreachable, how often the log says it still is.
pub(super) const STILL_FAILING_EVERY: Duration = Duration::from_secs(60);
/// How often a catch-up logs its progress.
pub(super) const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// How long a follower the upstream refused (no token, or a wrong one) waits before it tries
/// again: long enough not to hammer the upstream, short enough to pick up a fixed token file
/// (read again on each attempt) without a restart.
pub(super) const REFUSED_BACKOFF: Duration = Duration::from_secs(60);
/// How long a follower waits without any message before it reconnects.
pub(super) const SILENCE_LIMIT: Duration =
    Duration::from_secs(3 * super::service::HEARTBEAT.as_secs());
/// Most entries applied in one replica transaction when batches queue up.
const MAX_APPLY_ENTRIES: usize = 20_000;

/// What a follower is doing, as shown in `/stats`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Connecting,
    Following,
    /// Lost the upstream; retrying with backoff.
    Retrying,
    /// Fetching or installing a snapshot (see `snapshot` for progress).
    Bootstrapping,
    /// Gave up: the reason is in `last_error`. Needs an operator.
    Stopped,
}

/// What the follower does when its history differs from its upstream's
/// (`[relayer_config.NAME] on_divergence`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDivergence {
    /// Keep the entries the upstream lacks in a rollback file, then re-bootstrap.
    #[default]
    Rebootstrap,
    /// Stop following, with the reason in the log and `/stats`.
    Stop,
}

/// A snapshot download in progress, as shown in `/stats`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SnapshotProgress {
    pub rows: i64,
    pub bytes: i64,
    /// Seq the snapshot is (being) read at.
    pub seq: Seq,
    /// Times the download was resumed after a broken stream.
    pub resumed: u32,
}

/// A follower's progress, shared with the HTTP API.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub upstream: String,
    pub state: State,
    /// Head seq the upstream last reported.
    pub upstream_head_seq: Seq,
    /// Last seq applied here.
    pub applied_seq: Seq,
    /// `upstream_head_seq - applied_seq`; null while stopped or bootstrapping (unknown).
    pub lag: Option<Seq>,
    pub last_error: Option<String>,
    /// Snapshots installed since the node started.
    pub bootstraps: u64,
    /// Rollback files written since the node started (entries the upstream did not have).
    pub rollbacks: u64,
    /// The snapshot being fetched, while bootstrapping.
    pub snapshot: Option<SnapshotProgress>,
    /// Snapshot rows received since the node started (a resumed download does not fetch again
    /// what it already has).
    pub snapshot_rows_received: u64,
    /// Snapshot streams that broke and were resumed since the node started.
    pub snapshot_resumes: u64,
}

/// Handle to a follower's status.
#[derive(Clone)]
pub struct Tracker(Arc<Mutex<Status>>, tokio::sync::watch::Sender<bool>);

impl Tracker {
    pub fn snapshot(&self, ns: &Namespace) -> Status {
        let mut s = self.0.lock().unwrap().clone();
        s.applied_seq = ns.head().seq;
        // Stopped, or replacing its state with a snapshot (a new history, or a diverged one):
        // how far behind it is cannot be said, and 0 would read as "caught up".
        s.lag = match s.state {
            State::Stopped | State::Bootstrapping => None,
            _ => Some((s.upstream_head_seq - s.applied_seq).max(0)),
        };
        s
    }

    /// Waits until the follower task has ended (after a stop or a fatal error).
    pub async fn wait_stopped(&self) {
        let mut running = self.1.subscribe();
        let _ = running.wait_for(|r| !*r).await;
    }

    pub(super) fn set(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.0.lock().unwrap());
    }
}

/// Why a session with the upstream ended.
pub(super) enum End {
    /// Connect again at once (a snapshot was just installed).
    Again,
    /// Try again after a backoff.
    Retry(String),
    /// The upstream refused our credentials: try again after [`REFUSED_BACKOFF`].
    Refused(String),
    /// Stop following; the message says why.
    Fatal(String),
    Shutdown,
}

pub struct Follower {
    pub(super) ns: Arc<Namespace>,
    pub(super) upstream: String,
    /// How to connect to `upstream` (TLS, token).
    pub(super) connect: Upstream,
    pub(super) tracker: Tracker,
    pub(super) on_divergence: OnDivergence,
    /// Random, per follower task: names this follower in its Tail streams and Acks.
    pub(super) id: String,
    /// The divergence a rollback file was last written for (upstream log_id, split seq, local
    /// head), so a bootstrap that fails and is retried does not write the same file twice.
    pub(super) rolled_back: Mutex<Option<(String, Seq, Seq)>>,
    /// How the last attempts went: the backoff, and what the log already said.
    trouble: Mutex<Trouble>,
}

/// What the follower's backoff and log depend on: how its recent attempts went.
struct Trouble {
    /// The next failure waits between half and all of this, and doubles it.
    backoff: Duration,
    /// Set from a failure until a session makes progress again.
    failing: Option<Failing>,
}

/// A run of failed attempts.
struct Failing {
    since: Instant,
    attempts: u32,
    /// The kinds of failure (the reason with its numbers blanked) already logged in this run.
    logged: Vec<String>,
    last_logged: Instant,
}

/// At most this many kinds of failure are logged as news in one run of failures; the rest
/// show in the periodic reminder.
const MAX_KINDS_LOGGED: usize = 8;

impl Follower {
    pub fn new(ns: Arc<Namespace>, connect: Upstream, on_divergence: OnDivergence) -> Follower {
        let upstream = connect.address.clone();
        let tracker = Tracker(
            Arc::new(Mutex::new(Status {
                upstream: upstream.clone(),
                state: State::Connecting,
                upstream_head_seq: 0,
                applied_seq: 0,
                lag: Some(0),
                last_error: None,
                bootstraps: 0,
                rollbacks: 0,
                snapshot: None,
                snapshot_rows_received: 0,
                snapshot_resumes: 0,
            })),
            tokio::sync::watch::Sender::new(true),
        );
        Follower {
            ns,
            upstream,
            connect,
            tracker,
            on_divergence,
            id: crate::store::schema::mint_log_id()[..16].to_owned(),
            rolled_back: Mutex::new(None),
            trouble: Mutex::new(Trouble {
                backoff: BACKOFF_START,
                failing: None,
            }),
        }
    }

    /// A session ended with `reason`, which may pass: logs it if that is news (the first
    /// failure of a run, a new kind of failure, or a reminder every [`STILL_FAILING_EVERY`]),
    /// and returns how long to wait before the next attempt.
    fn failed(&self, reason: &str) -> Duration {
        let mut t = self.trouble.lock().unwrap();
        let delay = jitter(t.backoff);
        t.backoff = (t.backoff * 2).min(BACKOFF_MAX);
        let now = Instant::now();
        let f = t.failing.get_or_insert_with(|| Failing {
            since: now,
            attempts: 0,
            logged: Vec::new(),
            last_logged: now,
        });
        f.attempts += 1;
        let kind = kind_of(reason);
        let (name, upstream) = (self.ns.name(), &self.upstream);
        let (next, attempts) = (secs(delay), f.attempts);
        let failing_for = secs(now - f.since);
        if attempts == 1 {
            tracing::warn!(namespace = %name, %upstream, retry_in = %next, "{reason}; reconnecting to {upstream} in {next} (reads are still served)");
        } else if !f.logged.contains(&kind) && f.logged.len() < MAX_KINDS_LOGGED {
            tracing::warn!(namespace = %name, %upstream, attempts, retry_in = %next, "{reason}; still failing after {attempts} attempts in {failing_for}; reconnecting to {upstream} in {next}");
        } else if now - f.last_logged >= STILL_FAILING_EVERY {
            tracing::warn!(namespace = %name, %upstream, attempts, retry_in = %next, "still failing after {attempts} attempts in {failing_for}: {reason}; reconnecting to {upstream} in {next}");
        } else {
            return delay;
        }
        if !f.logged.contains(&kind) {
            f.logged.push(kind);
        }
        f.last_logged = now;
        delay
    }

    /// A session made progress (applied entries, caught up, installed a snapshot): the
    /// backoff starts over. Ends a run of failures with one line saying so (`now` is what the
    /// follower does now) and returns true; false when there was no such run.
    fn recovered(&self, now: &str) -> bool {
        let mut t = self.trouble.lock().unwrap();
        t.backoff = BACKOFF_START;
        let Some(f) = t.failing.take() else {
            return false;
        };
        let upstream = &self.upstream;
        tracing::info!(namespace = %self.ns.name(), %upstream, attempts = f.attempts, "reconnected to upstream {upstream} after {} failed attempts in {}; {now}", f.attempts, secs(f.since.elapsed()));
        true
    }

    fn is_failing(&self) -> bool {
        self.trouble.lock().unwrap().failing.is_some()
    }

    pub fn tracker(&self) -> Tracker {
        self.tracker.clone()
    }

    /// Follows until `shutdown` or a fatal error.
    pub async fn run(self, shutdown: CancellationToken) {
        /// Tells `wait_stopped` however this task ends (returned, or dropped).
        struct Ended(tokio::sync::watch::Sender<bool>);
        impl Drop for Ended {
            fn drop(&mut self) {
                self.0.send_replace(false);
            }
        }
        let _ended = Ended(self.tracker.1.clone());
        let name = self.ns.name().to_owned();
        loop {
            let end = tokio::select! {
                end = self.session() => end,
                _ = shutdown.cancelled() => End::Shutdown,
            };
            match end {
                End::Shutdown => return,
                End::Again => {
                    self.recovered("installed a snapshot; following from its head");
                }
                End::Fatal(reason) => {
                    tracing::error!(namespace = %name, upstream = %self.upstream, "replication stopped: {reason}; this replica keeps serving reads of what it has");
                    self.tracker.set(|s| {
                        s.state = State::Stopped;
                        s.last_error = Some(reason);
                    });
                    return;
                }
                End::Refused(reason) => {
                    // Every refusal counts as a failure (logged as news once per kind), but the
                    // wait is the long one: credentials do not fix themselves in milliseconds.
                    // The token itself is never in `reason`.
                    self.failed(&format!("{reason}; check relayer_config token_file against the upstream's [auth] replication_token_file (next try in {REFUSED_BACKOFF:?})"));
                    self.tracker.set(|s| {
                        s.state = State::Retrying;
                        s.last_error = Some(reason);
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(REFUSED_BACKOFF) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
                End::Retry(reason) => {
                    let delay = self.failed(&reason);
                    self.tracker.set(|s| {
                        s.state = State::Retrying;
                        s.last_error = Some(reason);
                    });
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// One connection to the upstream: handshake, then apply batches until something breaks.
    async fn session(&self) -> End {
        if let Some(invalid) = self.connect.invalid() {
            return End::Fatal(invalid.to_owned());
        }
        let mut client = match self.connect.connect().await {
            Ok(c) => c,
            Err(e) => return End::Retry(e),
        };
        let name = self.ns.name().to_owned();

        // Our own lineage goes with the request: a stale primary learns it was superseded.
        let lineage = match self.ns.read(crate::store::schema::lineage).await {
            Ok(l) => l,
            Err(e) => return store_end(e),
        };
        let position = client.position(PositionRequest {
            namespace: name.clone(),
            probe_seq: 0,
            follower_log_id: LogId::wire(self.ns.log_id().as_ref()),
            follower_prev_log_id: lineage
                .as_ref()
                .map(|l| l.prev_log_id.to_string())
                .unwrap_or_default(),
            follower_fork_seq: lineage.as_ref().map_or(0, |l| l.fork_seq),
        });
        let pos = match tokio::time::timeout(SILENCE_LIMIT, position).await {
            Ok(Ok(p)) => p.into_inner(),
            // The first request: a hang-up may be a TLS setting this replica lacks.
            Ok(Err(s)) => {
                return match status_end(&s) {
                    End::Retry(reason) => End::Retry(self.connect.hung_up(&s, reason)),
                    end => end,
                };
            }
            Err(_) => {
                return End::Retry(format!(
                    "no answer from the upstream {} to a position request within {SILENCE_LIMIT:?}",
                    self.upstream
                ));
            }
        };
        self.tracker.set(|s| s.upstream_head_seq = pos.head_seq);
        if !is_log_id(&pos.log_id) {
            // A chained upstream that has not met its own upstream yet.
            return End::Retry(format!("upstream has no log_id for {name:?} yet"));
        }
        let local_id = self.ns.log_id();
        let ours_is = |id: &str| local_id.as_deref() == Some(id);
        let local = LogId::wire(local_id.as_ref());
        if let Some(ours) = lineage.filter(|l| *l.prev_log_id == pos.log_id) {
            // The upstream serves the log ours was forked from: it is the primary a promotion
            // replaced. Following it would throw the newer history away.
            return End::Fatal(format!(
                "the upstream {} serves log {}, which this replica's log {local} superseded at seq {} (a promotion): it is a stale primary; point this replica at the new primary",
                self.upstream, pos.log_id, ours.fork_seq
            ));
        }
        if !ours_is(&pos.log_id) {
            let head = self.ns.head();
            let lineage = LogId::parse(&pos.prev_log_id)
                .filter(|prev| ours_is(prev))
                .map(|prev_log_id| crate::store::Lineage {
                    prev_log_id,
                    fork_seq: pos.fork_seq,
                });
            if head.seq == 0 {
                // An empty log has no history to lose: it takes the upstream's identity (a
                // new replica, or a file some other run created without entries).
                if let Err(e) = self.ns.adopt_log_id(&pos.log_id, None).await {
                    return store_end(e);
                }
                tracing::info!(namespace = %name, log_id = %pos.log_id, "empty replica: adopted the upstream's log_id");
            } else if let Some(lineage) = lineage.clone().filter(|l| head.seq <= l.fork_seq) {
                // The upstream was promoted from this log at or after our head (PSYNC2-style):
                // if it agrees on our last entry, its history continues ours.
                match upstream_crc(&mut client, &name, head.seq).await {
                    Ok(Some(crc)) if crc == head.crc => {}
                    Ok(_) => {
                        let reason = format!(
                            "history differs: the upstream's log {} was forked from this replica's log {local} at seq {}, but disagrees with it at seq {}",
                            pos.log_id, pos.fork_seq, head.seq
                        );
                        return self.diverged(&mut client, &pos, reason).await;
                    }
                    Err(end) => return end,
                }
                if let Err(e) = self.ns.adopt_log_id(&pos.log_id, Some(lineage)).await {
                    return store_end(e);
                }
                tracing::info!(namespace = %name, old_log_id = %local, log_id = %pos.log_id, fork_seq = pos.fork_seq, head_seq = head.seq, "the upstream was promoted from this log: continuing on its new log_id without a snapshot");
            } else {
                let reason = if lineage.is_some() {
                    format!(
                        "history differs: the upstream's log {} was forked from this replica's log {local} at seq {}, and this replica has entries after that (head seq {})",
                        pos.log_id, pos.fork_seq, head.seq
                    )
                } else {
                    format!(
                        "history differs: this replica's log_id is {local}, the upstream's is {}; the upstream's file was replaced or this is another namespace",
                        pos.log_id
                    )
                };
                return self.diverged(&mut client, &pos, reason).await;
            }
        }

        let head = self.ns.head();
        let request = TailRequest {
            namespace: name.clone(),
            log_id: pos.log_id.clone(),
            from_seq: head.seq + 1,
            prev_crc: head.crc,
            follower_id: self.id.clone(),
        };
        let mut stream = match tokio::time::timeout(SILENCE_LIMIT, client.tail(request)).await {
            Ok(Ok(s)) => s.into_inner(),
            Ok(Err(s)) => match ErrorKind::of(&s) {
                Some(ErrorKind::SnapshotNeeded) => {
                    tracing::info!(namespace = %name, upstream = %self.upstream, from_seq = head.seq + 1, "the entries this replica needs are no longer in the upstream's log: bootstrapping from a snapshot");
                    return self.bootstrap(&mut client, &pos.log_id).await;
                }
                Some(ErrorKind::HistoryDiffers | ErrorKind::AheadOfUpstream) => {
                    let reason = format!("history differs: {}", s.message());
                    return self.diverged(&mut client, &pos, reason).await;
                }
                _ => return status_end(&s),
            },
            Err(_) => {
                return End::Retry(format!(
                    "no answer from the upstream {} to a stream request within {SILENCE_LIMIT:?}",
                    self.upstream
                ));
            }
        };
        self.tracker.set(|s| {
            s.state = State::Following;
            s.last_error = None;
        });
        // During a run of failures, this is not news yet: `recovered` says so once the session
        // made progress.
        if !self.is_failing() {
            let upstream = &self.upstream;
            let behind = (pos.head_seq - head.seq).max(0);
            tracing::info!(namespace = %name, %upstream, from_seq = head.seq + 1, upstream_head = pos.head_seq, "following upstream {upstream} from seq {}: {behind} entries behind", head.seq + 1);
        }

        // Receiving and applying run side by side: while one batch is being committed, the
        // next ones arrive, and everything that arrived meanwhile is applied in the next single
        // transaction (one fsync), so a replica keeps up with a primary that commits faster
        // than one fsync per upstream commit would allow.
        // At most 16 batches (each at most ~1 MiB) wait here: enough to keep the writer busy,
        // bounded so a fast upstream cannot fill a slow replica's memory.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<super::pb::Entry>>(16);
        // The upstream head each message reports (None until one arrives), for `progress`.
        let (reported_tx, reported) = tokio::sync::watch::channel(None::<Seq>);
        let receive = async {
            // Owning the senders here means they are dropped when receiving ends, which lets
            // the applier finish what is queued and stop.
            let (tx, reported_tx) = (tx, reported_tx);
            loop {
                // The upstream sends at least a heartbeat every HEARTBEAT; silence for several
                // means it is gone even if the connection looks open.
                let msg = match tokio::time::timeout(SILENCE_LIMIT, stream.message()).await {
                    Ok(Ok(Some(m))) => m,
                    Ok(Ok(None)) => {
                        return End::Retry(format!("upstream {} ended the stream", self.upstream));
                    }
                    Ok(Err(s)) => return status_end(&s),
                    Err(_) => {
                        return End::Retry(format!(
                            "no message or heartbeat from upstream {} for {SILENCE_LIMIT:?}",
                            self.upstream
                        ));
                    }
                };
                self.tracker.set(|s| s.upstream_head_seq = msg.head_seq);
                reported_tx.send_replace(Some(msg.head_seq));
                if !msg.entries.is_empty() && tx.send(msg.entries).await.is_err() {
                    return End::Shutdown;
                }
            }
        };
        let apply = async {
            let mut progressed = false;
            while let Some(mut batch) = rx.recv().await {
                while batch.len() < MAX_APPLY_ENTRIES {
                    match rx.try_recv() {
                        Ok(more) => batch.extend(more),
                        Err(_) => break,
                    }
                }
                let entries: Result<Vec<Entry>, String> =
                    batch.into_iter().map(Entry::try_from).collect();
                let entries = match entries {
                    Ok(e) => e,
                    Err(e) => {
                        return Some(End::Fatal(format!(
                            "the upstream sent an invalid entry: {e}"
                        )));
                    }
                };
                let first = entries.first().map_or(0, |e| e.seq);
                if let Err(e) = self.ns.apply(entries).await {
                    return Some(store_end(e));
                }
                if !progressed {
                    progressed = true;
                    self.recovered(&format!("applying from seq {first}"));
                }
            }
            None
        };
        let progress = self.catch_up(head.seq, pos.head_seq, reported);
        // Report what is applied (durably) to the upstream, for writes waiting on `?acks=K`:
        // once now, then after every commit here (coalesced: the latest head each time).
        let ack = async {
            let mut head_rx = self.ns.subscribe();
            let mut client = client.clone();
            loop {
                let seq = head_rx.borrow_and_update().seq;
                let report = AckRequest {
                    namespace: name.clone(),
                    follower_id: self.id.clone(),
                    applied_seq: seq,
                };
                // A lost ack only delays a waiting write; the stream's own errors end the
                // session.
                let _ = tokio::time::timeout(SILENCE_LIMIT, client.ack(report)).await;
                if head_rx.changed().await.is_err() {
                    return std::future::pending::<End>().await;
                }
            }
        };
        tokio::pin!(receive, apply, ack, progress);
        tokio::select! {
            end = &mut ack => end,
            end = &mut progress => end,
            end = &mut apply => end.unwrap_or(End::Shutdown),
            end = &mut receive => {
                // Apply what already arrived before reconnecting: the next session starts from
                // this replica's head, which must not move under it.
                match apply.await {
                    Some(failed) => failed,
                    None => end,
                }
            }
        }
    }
}

impl Follower {
    /// Tells how a session's catch-up goes: its progress every [`PROGRESS_EVERY`] while
    /// behind, and "caught up at seq N" once this replica has everything the upstream had when
    /// the session began (`target`) and has heard from it on the stream (`reported`): the
    /// session's proof that it works, which ends a run of failures. Never ends by itself.
    async fn catch_up(
        &self,
        from: Seq,
        target: Seq,
        mut reported: tokio::sync::watch::Receiver<Option<Seq>>,
    ) -> End {
        let (name, upstream) = (self.ns.name(), &self.upstream);
        let started = Instant::now();
        let mut heads = self.ns.subscribe();
        let mut next_report = tokio::time::Instant::now() + PROGRESS_EVERY;
        loop {
            let head = self.ns.head().seq;
            let latest = *reported.borrow_and_update();
            if latest.is_some() && head >= target {
                let applied = head - from;
                if !self.recovered(&format!("caught up at seq {head}")) {
                    tracing::info!(namespace = %name, %upstream, head_seq = head, applied, "caught up with upstream {upstream} at seq {head} ({applied} entries applied in {})", secs(started.elapsed()));
                }
                return std::future::pending().await;
            }
            tokio::select! {
                changed = heads.changed() => if changed.is_err() {
                    return std::future::pending().await;
                },
                changed = reported.changed() => if changed.is_err() {
                    return std::future::pending().await;
                },
                _ = tokio::time::sleep_until(next_report) => {
                    next_report += PROGRESS_EVERY;
                    // A failing run says so itself; progress lines would repeat per attempt.
                    if self.is_failing() {
                        continue;
                    }
                    let up = latest.unwrap_or(target).max(target);
                    let (applied, remaining) = (head - from, (up - head).max(0));
                    let rate = applied as f64 / started.elapsed().as_secs_f64().max(0.001);
                    tracing::info!(namespace = %name, %upstream, head_seq = head, upstream_head = up, applied, remaining, "catching up with upstream {upstream}: at seq {head} of {up}, {remaining} to go ({applied} applied in {}, {rate:.0}/s)", secs(started.elapsed()));
                }
            }
        }
    }
}

/// What a failed local store operation means for the follower. Divergence stops it. So does a
/// corrupt local file: that is a fault of this replica's disk, not of the upstream, and
/// reconnecting would only fail the same way forever. Transient storage trouble (a lock held by
/// another connection past busy_timeout, a full disk, an I/O error) may pass, so it is retried
/// with backoff like a network error; so are SQLite errors of no known kind, as before.
pub(super) fn store_end(e: StoreError) -> End {
    match e {
        StoreError::ShuttingDown => End::Shutdown,
        e if e.is_corrupt() => End::Fatal(format!(
            "the local namespace file is corrupt (a local fault, not the upstream's): {e}"
        )),
        StoreError::Diverged(_)
        | StoreError::BadFile { .. }
        | StoreError::EmptyWrite
        | StoreError::TooLarge { .. }
        | StoreError::Locked { .. }
        | StoreError::Corrupt { .. } => End::Fatal(e.to_string()),
        StoreError::Sqlite {
            kind: SqliteKind::Full,
            ..
        } => End::Retry(format!(
            "this replica's disk is full (a local fault, not the upstream's): {e}"
        )),
        StoreError::Sqlite { .. } | StoreError::Io { .. } => End::Retry(format!(
            "this replica cannot store what it receives (a local fault, not the upstream's): {e}"
        )),
    }
}

/// What a gRPC error from the upstream means for the follower, in our words: the typed
/// errors carry ferry's own message; the transport's are reduced to what happened to the
/// connection, without gRPC's boilerplate for the status code.
pub(super) fn status_end(s: &tonic::Status) -> End {
    let refused = || format!("the upstream refused: {}", s.message());
    match ErrorKind::of(s) {
        Some(ErrorKind::ShuttingDown) => End::Retry("the upstream is shutting down".into()),
        Some(ErrorKind::Unauthenticated | ErrorKind::PermissionDenied) => End::Refused(refused()),
        // The upstream is busy, or cut a stream this replica did not read in time.
        Some(ErrorKind::TooManyStreams | ErrorKind::Stalled) => End::Retry(refused()),
        // Reconnecting finds out what to do (bootstrap, or divergence recovery).
        Some(ErrorKind::SnapshotNeeded | ErrorKind::HistoryDiffers) => End::Retry(refused()),
        Some(_) => End::Fatal(refused()),
        // Untyped statuses come from the transport (connection reset, upstream gone).
        None => match s.code() {
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Internal => End::Retry(lost(s)),
            tonic::Code::DeadlineExceeded => {
                End::Retry("the upstream did not answer in time".into())
            }
            tonic::Code::Unimplemented => End::Fatal(format!(
                "the upstream does not serve ferry's replication service ({}): is upstream_address the [grpc_config] port of a ferry node?",
                s.message()
            )),
            code => End::Fatal(format!("the upstream answered {code:?}: {}", s.message())),
        },
    }
}

/// A transport failure in our words: which side went away, and the connection's last words.
fn lost(s: &tonic::Status) -> String {
    match io_cause(s) {
        Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            "the upstream refuses connections (not running?)".into()
        }
        Some(e) => format!("the upstream closed the stream ({})", io_words(e)),
        None => "the upstream closed the stream".into(),
    }
}

/// The root cause of a connection failure in plain words ("connection refused"), without
/// the layers' repetitions.
pub(crate) fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    match io_cause(e) {
        Some(io) => io_words(io),
        None => error_chain(e),
    }
}

/// The I/O error at the bottom of an error's chain, if there is one.
pub(crate) fn io_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut err = Some(e);
    while let Some(inner) = err {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        err = inner.source();
    }
    None
}

fn io_words(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused: nothing listens there".into(),
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
            "the connection was reset".into()
        }
        K::UnexpectedEof => "the connection was closed".into(),
        K::TimedOut => "the connection timed out".into(),
        _ => e.to_string(),
    }
}

/// A failure's kind: its reason without the details that vary between attempts failing the
/// same way — numbers (seqs, counts, ports) and what is in parentheses (how the connection
/// went, which may be reset one time and closed the next).
fn kind_of(reason: &str) -> String {
    let mut kind = String::with_capacity(reason.len());
    let mut depth = 0usize;
    for c in reason.chars() {
        match c {
            '(' => {
                depth += 1;
                kind.truncate(kind.trim_end().len());
            }
            ')' => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            c if c.is_ascii_digit() => {
                if !kind.ends_with('#') {
                    kind.push('#');
                }
            }
            c => kind.push(c),
        }
    }
    kind
}

/// A duration as an operator reads it in a log line: "1.6s".
fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(inner) = src {
        let part = inner.to_string();
        // Layers often repeat their inner error's words; say each once.
        if !parts.last().is_some_and(|p| p.ends_with(&part)) {
            parts.push(part);
        }
        src = inner.source();
    }
    parts.join(": ")
}

/// The crc of entry `seq` in the upstream's log, if it still knows it.
pub(super) async fn upstream_crc(
    client: &mut Client,
    namespace: &str,
    seq: Seq,
) -> Result<Option<u32>, End> {
    let probe = PositionRequest {
        namespace: namespace.to_owned(),
        probe_seq: seq,
        ..Default::default()
    };
    match tokio::time::timeout(SILENCE_LIMIT, client.position(probe)).await {
        Ok(Ok(p)) => {
            let p = p.into_inner();
            Ok(p.probe_found.then_some(p.probe_crc))
        }
        Ok(Err(s)) => Err(status_end(&s)),
        Err(_) => Err(End::Retry("no answer to a position probe".into())),
    }
}

/// A delay between half and all of `d`, so many replicas do not retry in lockstep.
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 4];
    let r = getrandom::fill(&mut b)
        .map(|_| u32::from_le_bytes(b))
        .unwrap_or(0);
    d / 2 + d.mul_f64(r as f64 / u32::MAX as f64 / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error with a message and, optionally, the error under it.
    #[derive(Debug)]
    struct Layer(
        &'static str,
        Option<Box<dyn std::error::Error + Send + Sync>>,
    );

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    fn io(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::new(kind, "os words")
    }

    /// What goes into the log and `last_error` when a connection fails: the cause at the
    /// bottom of the chain in plain words, each layer's words once.
    #[test]
    fn connection_failures_are_told_in_plain_words() {
        use std::io::ErrorKind as K;
        for (kind, words) in [
            (
                K::ConnectionRefused,
                "connection refused: nothing listens there",
            ),
            (K::ConnectionReset, "the connection was reset"),
            (K::ConnectionAborted, "the connection was reset"),
            (K::BrokenPipe, "the connection was reset"),
            (K::UnexpectedEof, "the connection was closed"),
            (K::TimedOut, "the connection timed out"),
            (K::PermissionDenied, "os words"),
        ] {
            assert_eq!(io_words(&io(kind)), words, "{kind:?}");
            // Under two layers of transport errors, the I/O error is what is told.
            let chain = Layer(
                "transport error",
                Some(Box::new(Layer("connect", Some(Box::new(io(kind)))))),
            );
            assert_eq!(cause(&chain), words, "{kind:?}");
        }
        // Without an I/O error at the bottom: every layer, each once.
        let chain = Layer(
            "handshake failed: bad certificate",
            Some(Box::new(Layer(
                "bad certificate",
                Some(Box::new(Layer("expired", None))),
            ))),
        );
        assert_eq!(cause(&chain), "handshake failed: bad certificate: expired");
        assert_eq!(
            error_chain(&Layer("a", Some(Box::new(Layer("b", None))))),
            "a: b"
        );
        assert_eq!(error_chain(&Layer("alone", None)), "alone");

        let mut refused = tonic::Status::unavailable("transport");
        refused.set_source(Arc::new(io(K::ConnectionRefused)));
        assert_eq!(
            lost(&refused),
            "the upstream refuses connections (not running?)"
        );
        let mut reset = tonic::Status::unavailable("transport");
        reset.set_source(Arc::new(io(K::ConnectionReset)));
        assert_eq!(
            lost(&reset),
            "the upstream closed the stream (the connection was reset)"
        );
        assert_eq!(
            lost(&tonic::Status::unavailable("h2")),
            "the upstream closed the stream"
        );
    }

    /// Two failures are of one kind when only their numbers and their parenthesised details
    /// differ; that is what keeps a run of failures from logging every attempt.
    #[test]
    fn a_failure_s_kind_leaves_out_numbers_and_details() {
        let kind =
            kind_of("upstream at seq 1234 is behind seq 99 (the connection was reset) again");
        assert_eq!(kind, "upstream at seq # is behind seq # again");
        assert_eq!(
            kind_of("upstream at seq 7 is behind seq 100000 (closed (twice)) again"),
            kind
        );
        assert_ne!(kind_of("the upstream refuses connections"), kind);
        assert_eq!(kind_of("x (a) y (b) z"), "x y z");
        assert_eq!(secs(Duration::from_millis(1_649)), "1.6s");
        assert_eq!(secs(Duration::from_secs(75)), "75.0s");
    }

    /// Retries are spread between half and all of the delay, so replicas that lost the same
    /// upstream do not come back in lockstep.
    #[test]
    fn jitter_spreads_a_delay_over_its_second_half() {
        let d = Duration::from_secs(1);
        let delays: Vec<_> = (0..200).map(|_| jitter(d)).collect();
        for j in &delays {
            assert!(*j >= d / 2 && *j <= d, "{j:?}");
        }
        // 200 draws all in one fifth of the range: a chance of 2e-20.
        assert!(
            delays.iter().any(|j| *j < Duration::from_millis(600)),
            "{delays:?}"
        );
        assert!(
            delays.iter().any(|j| *j > Duration::from_millis(900)),
            "{delays:?}"
        );
    }

    /// A writer that keeps what it is given, for [`logged`].
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The lines `f` logs on this thread.
    fn logged<R>(f: impl FnOnce() -> R) -> (R, Vec<String>) {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .finish();
        let r = tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        (r, text.lines().map(str::to_owned).collect())
    }

    fn follower(dir: &std::path::Path) -> Follower {
        let ns = Namespace::open(dir, "ns", crate::config::Synchronous::Full).unwrap();
        let upstream = Upstream::new("127.0.0.1:1", "test", &Default::default()).unwrap();
        Follower::new(Arc::new(ns), upstream, OnDivergence::Rebootstrap)
    }

    /// The delay between attempts doubles from 100 ms up to 5 s, jittered, and starts over
    /// once a session makes progress, which ends the run of failures.
    #[test]
    fn the_backoff_doubles_to_its_cap_and_starts_over_after_progress() {
        let dir = tempfile::tempdir().unwrap();
        let f = follower(dir.path());
        // Under a subscriber of its own, as every test that reaches the follower's log lines:
        // tracing caches each line's interest when the line is first reached, and one first
        // reached with no subscriber on any thread can stay silent for the log test running
        // beside this one.
        logged(|| {
            assert!(!f.is_failing());
            assert!(!f.recovered("following"), "no run of failures to end");
            let mut full = BACKOFF_START;
            for attempt in 0..10 {
                let d = f.failed("the upstream refuses connections");
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempt}: {d:?} for {full:?}"
                );
                full = (full * 2).min(BACKOFF_MAX);
                assert!(f.is_failing());
            }
            assert_eq!(full, BACKOFF_MAX, "the cap was reached");
            assert!(f.recovered("following"));
            assert!(!f.is_failing());
            let d = f.failed("the upstream refuses connections");
            assert!(d >= BACKOFF_START / 2 && d <= BACKOFF_START, "{d:?}");
        });
    }

    /// A run of failures is logged when it starts, at each new kind of failure (up to
    /// [`MAX_KINDS_LOGGED`]), every [`STILL_FAILING_EVERY`] while it lasts, and once when it
    /// ends; the same failure again is not news.
    #[test]
    fn a_run_of_failures_logs_what_is_news_and_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let f = follower(dir.path());
        let ((), lines) = logged(|| {
            f.failed("the upstream closed the stream (the connection was reset)");
            f.failed("the upstream closed the stream (the connection was closed)");
            f.failed("entry 12 does not continue seq 10");
            f.failed("entry 13 does not continue seq 11");
        });
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(
            lines[0].contains("the upstream closed the stream (the connection was reset); reconnecting to 127.0.0.1:1 in"),
            "{lines:#?}"
        );
        assert!(
            lines[1]
                .contains("entry 12 does not continue seq 10; still failing after 3 attempts in"),
            "{lines:#?}"
        );

        // New kinds are news up to MAX_KINDS_LOGGED of them (two are logged already).
        let ((), lines) = logged(|| {
            for k in 0..MAX_KINDS_LOGGED {
                f.failed(&format!("failure of kind {}", "x".repeat(k + 1)));
            }
        });
        assert_eq!(lines.len(), MAX_KINDS_LOGGED - 2, "{lines:#?}");
        assert!(
            lines[0].contains("still failing after 5 attempts"),
            "{lines:#?}"
        );

        // A reminder once STILL_FAILING_EVERY has passed since the last line.
        {
            let mut t = f.trouble.lock().unwrap();
            let run = t.failing.as_mut().unwrap();
            run.last_logged = run.last_logged.checked_sub(STILL_FAILING_EVERY).unwrap();
        }
        let ((), lines) = logged(|| {
            f.failed("entry 14 does not continue seq 12");
            f.failed("entry 15 does not continue seq 13");
        });
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].contains("still failing after 13 attempts in")
                && lines[0].contains(": entry 14 does not continue seq 12; reconnecting to"),
            "{lines:#?}"
        );

        let (recovered, lines) = logged(|| f.recovered("following"));
        assert!(recovered);
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].contains("reconnected to upstream 127.0.0.1:1 after 14 failed attempts in")
                && lines[0].contains("; following namespace=ns"),
            "{lines:#?}"
        );
    }
}
