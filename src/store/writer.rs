//! The writer: the only user of a namespace's read-write connection, and its thread.
//!
//! Requests arrive on a channel. The thread takes everything queued, commits it as ONE SQLite
//! transaction (group commit: one fsync for many writers), publishes the new head, then answers
//! each request. Each request's entries are contiguous and atomic: a request that fails is
//! rolled back to its savepoint without disturbing the others in the group.
//!
//! The writer sits behind a mutex that its thread holds while it works: a lone write that
//! finds it free, with nothing queued, takes the mutex and commits on its caller's thread
//! instead, a group of one (see `Namespace::write_here`). Either way one transaction at a
//! time, in the order the mutex is taken.

use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot, watch};

use super::{Head, StoreError};
use crate::log::{Entry, LogId, Op, Seq, chain_crc};

/// One change requested by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

impl Mutation {
    fn key(&self) -> &str {
        match self {
            Mutation::Put { key, .. } | Mutation::Delete { key } => key,
        }
    }

    fn weight(&self) -> usize {
        match self {
            Mutation::Put { key, value } => key.len() + value.len(),
            Mutation::Delete { key } => key.len(),
        }
    }

    /// The most bytes this mutation's log entry can take in a replication message.
    pub(crate) fn wire_bytes(&self) -> usize {
        self.weight() + super::ENTRY_OVERHEAD_BYTES
    }
}

/// Where a committed request landed in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub first_seq: Seq,
    pub last_seq: Seq,
    pub ts_ms: i64,
}

pub(crate) enum Command {
    Write {
        mutations: Vec<Mutation>,
        reply: oneshot::Sender<Result<Committed, StoreError>>,
    },
    /// Replica: append entries received from upstream verbatim, in one transaction.
    Apply {
        entries: Vec<Entry>,
        reply: oneshot::Sender<Result<Head, StoreError>>,
    },
    /// Replica: record the upstream's log_id in a file that has none yet, or (with `lineage`)
    /// in a file whose history the upstream's log continues (see [`Lineage`]).
    AdoptLogId {
        log_id: String,
        lineage: Option<Lineage>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Record in `meta` that this namespace refuses writes (a superseded primary).
    Fence {
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Turn this namespace's log into a new one forked at the head (a promotion).
    Promote {
        /// The upstream it followed until now, kept in `meta.promoted_from`.
        from: String,
        reply: oneshot::Sender<Result<Option<Lineage>, StoreError>>,
    },
    /// Delete the oldest entries (see [`Prune`]), in one small transaction.
    Prune {
        prune: Prune,
        reply: oneshot::Sender<Result<Pruned, StoreError>>,
    },
    /// Replace this namespace's state with a staged snapshot, in one transaction.
    Install {
        staging: std::path::PathBuf,
        reply: oneshot::Sender<Result<Head, StoreError>>,
    },
    /// Finish everything queued before this, then stop.
    Close { reply: oneshot::Sender<()> },
}

/// Where a log was forked from: history up to `fork_seq` is shared with log `prev_log_id`
/// (`meta.prev_log_id`, `meta.fork_seq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub prev_log_id: LogId,
    pub fork_seq: Seq,
}

/// Which old entries to delete: the oldest ones, up to `max_rows` of them, with seq <= `upto`
/// and, when `older_than_ms` is set, written before it. The head entry is never deleted.
#[derive(Debug, Clone, Copy)]
pub struct Prune {
    pub upto: Seq,
    pub older_than_ms: Option<i64>,
    pub max_rows: usize,
}

/// What one prune step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub deleted: usize,
    /// The new base: the entry just before the oldest retained one.
    pub base_seq: Seq,
}

/// What the writer has committed since the node started: how well group commit is working
/// (requests per commit) and how busy the writer is (seconds in commits per second), for
/// `/metrics`.
#[derive(Debug)]
pub struct CommitCounters {
    /// SQLite transactions committed: groups of client writes, and replicated batches.
    pub commits: std::sync::atomic::AtomicU64,
    /// Client write requests (PUT, DELETE, batch) acknowledged as stored.
    pub requests: std::sync::atomic::AtomicU64,
    /// Time spent in those transactions, from BEGIN to the end of COMMIT (fsync included).
    pub micros: std::sync::atomic::AtomicU64,
    /// Each transaction's time, for `/metrics`.
    pub duration: prometheus_client::metrics::histogram::Histogram,
    /// Each group commit's client requests (replicated batches are not groups).
    pub group_size: prometheus_client::metrics::histogram::Histogram,
    /// Checkpoints run, by the background thread or by the WAL hook (see `checkpoint.rs`).
    pub checkpoints: std::sync::atomic::AtomicU64,
    /// Of `commits`, lone writes committed on their caller's thread (`Namespace::write_here`).
    pub here: std::sync::atomic::AtomicU64,
}

impl Default for CommitCounters {
    fn default() -> CommitCounters {
        use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
        CommitCounters {
            commits: Default::default(),
            requests: Default::default(),
            micros: Default::default(),
            checkpoints: Default::default(),
            here: Default::default(),
            // 0.5 ms to ~8 s, and 1 to 4096 requests (MAX_GROUP_REQUESTS), doubling.
            duration: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
            group_size: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
        }
    }
}

impl CommitCounters {
    fn add(&self, requests: usize, started: std::time::Instant) {
        use std::sync::atomic::Ordering::Relaxed;
        let took = started.elapsed();
        self.commits.fetch_add(1, Relaxed);
        self.requests.fetch_add(requests as u64, Relaxed);
        self.micros.fetch_add(took.as_micros() as u64, Relaxed);
        self.duration.observe(took.as_secs_f64());
        if requests > 0 {
            self.group_size.observe(requests as f64);
        }
    }
}

/// Caps on one group so a flood of writers cannot build an unbounded transaction.
const MAX_GROUP_REQUESTS: usize = 4096;
const MAX_GROUP_BYTES: usize = 32 * 1024 * 1024;

pub(crate) struct Writer {
    pub namespace: String,
    pub conn: Connection,
    pub head: Head,
    pub head_tx: watch::Sender<Head>,
    pub recent: std::sync::Arc<super::recent::Recent>,
    pub counters: std::sync::Arc<CommitCounters>,
    /// `meta.base_seq`, shared with readers that must not look up the meta table per request.
    pub base_seq: std::sync::Arc<std::sync::atomic::AtomicI64>,
    /// Reads waiting for a seq (`?min_seq=`), woken when the head reaches theirs.
    pub waiters: std::sync::Arc<super::waiters::SeqWaiters>,
    /// Requests in the last group committed: 1 while writers come one at a time.
    pub last_group: usize,
}

/// The writer, shared by its thread and the lone writes that commit on their caller's thread
/// (`Namespace::write_here`); `None` once it has closed.
pub(crate) type Shared = std::sync::Arc<std::sync::Mutex<Option<Writer>>>;

impl Drop for Writer {
    fn drop(&mut self) {
        // Reads still waiting for a seq learn that none will come.
        self.waiters.close();
    }
}

impl Writer {
    /// Publishes a new head: to `subscribe()`rs, then to the reads waiting for a seq it reaches.
    fn publish(&self, head: Head) {
        self.head_tx.send_replace(head);
        self.waiters.reached(head.seq);
    }

    /// Whether a write that finds this writer free (nothing queued, no commit running) may
    /// commit on its caller's thread: only while writers come one at a time (the last group
    /// was one request). See `Namespace::write_here`.
    pub fn lone(&self) -> bool {
        self.last_group <= 1
    }

    /// Commits a group of requests in one transaction; the outcome of each, in order.
    pub fn commit_group(
        &mut self,
        batches: &[Vec<Mutation>],
    ) -> Vec<Result<Committed, StoreError>> {
        let ts_ms = now_ms();
        self.last_group = batches.len();
        // Fast path: the whole group in one transaction with no savepoints (a savepoint makes
        // SQLite copy every page it touches into a sub-journal). Requests are validated before
        // they get here, so a failing one is rare; if one does fail, the group is redone with a
        // savepoint per request, so only that request fails.
        let started = std::time::Instant::now();
        let result = match self.run_group(batches, false, ts_ms) {
            Err(GroupError::Request) => self.run_group(batches, true, ts_ms),
            other => other,
        };
        match result {
            Ok((head, outcomes, fresh)) => {
                let stored = outcomes.iter().filter(|o| o.is_ok()).count();
                self.counters.add(stored, started);
                if head.seq != self.head.seq {
                    self.head = head;
                    self.recent.push(fresh);
                    self.publish(head);
                }
                outcomes
            }
            Err(e) => {
                // Nothing of this group is durable; every writer in it learns so.
                let e = match e {
                    GroupError::Sqlite(e) => StoreError::from(e),
                    GroupError::Request => StoreError::other("a request failed while isolated"),
                };
                tracing::error!(namespace = %self.namespace, error = %e, "group commit failed; its writes are not stored");
                batches.iter().map(|_| Err(e.clone())).collect()
            }
        }
    }

    /// Runs one group in one transaction. With `isolate`, each request runs in a savepoint and
    /// a failing request is rolled back alone; without, a failing request abandons the whole
    /// transaction with [`GroupError::Request`].
    fn run_group(&mut self, batches: &[Vec<Mutation>], isolate: bool, ts_ms: i64) -> GroupResult {
        let namespace = &self.namespace;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut head = self.head;
        let mut outcomes = Vec::with_capacity(batches.len());
        let mut fresh = Vec::new();
        for mutations in batches {
            if isolate {
                tx.prepare_cached("SAVEPOINT request")?.execute([])?;
            }
            match append(&tx, head, mutations, ts_ms) {
                Ok((new_head, entries)) => {
                    if isolate {
                        tx.prepare_cached("RELEASE request")?.execute([])?;
                    }
                    fresh.extend(entries);
                    outcomes.push(Ok(Committed {
                        first_seq: head.seq + 1,
                        last_seq: new_head.seq,
                        ts_ms,
                    }));
                    head = new_head;
                }
                // Dropping the transaction rolls it back.
                Err(_) if !isolate => return Err(GroupError::Request),
                Err(e) => {
                    tx.execute_batch("ROLLBACK TO request; RELEASE request")?;
                    let key = mutations.first().map(Mutation::key).unwrap_or_default();
                    tracing::warn!(namespace = %namespace, key, error = %e, "write rolled back; other writes in its group are unaffected");
                    outcomes.push(Err(StoreError::from(e)));
                }
            }
        }
        tx.commit()?;
        Ok((head, outcomes, fresh))
    }
}

type Reply = oneshot::Sender<Result<Committed, StoreError>>;

/// The writer thread: runs until a `Close` command arrives or every sender is gone, then
/// drops the writer (closing its connection).
pub(crate) fn run(mut rx: mpsc::Receiver<Command>, shared: Shared) {
    let mut group: Vec<Command> = Vec::new();
    loop {
        let Some(first) = rx.blocking_recv() else {
            shared.lock().unwrap().take();
            return;
        };
        // A write committing on its own thread holds the writer until it is done.
        let mut guard = shared.lock().unwrap();
        let Some(writer) = guard.as_mut() else {
            return;
        };
        group.push(first);
        let mut bytes = 0;
        while group.len() < MAX_GROUP_REQUESTS && bytes < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(cmd) => {
                    if let Command::Write { mutations, .. } = &cmd {
                        bytes += mutations.iter().map(Mutation::weight).sum::<usize>();
                    }
                    group.push(cmd);
                }
                Err(_) => break,
            }
        }
        // Client writes are committed together; the rarer commands run alone, in order.
        let mut writes = Vec::with_capacity(group.len());
        for cmd in group.drain(..) {
            match cmd {
                Command::Write { mutations, reply } => writes.push((mutations, reply)),
                other => {
                    if !writes.is_empty() {
                        commit_and_answer(writer, std::mem::take(&mut writes));
                    }
                    match other {
                        Command::Apply { entries, reply } => {
                            let _ = reply.send(writer.apply(entries));
                        }
                        Command::AdoptLogId {
                            log_id,
                            lineage,
                            reply,
                        } => {
                            let _ = reply.send(writer.adopt_log_id(&log_id, lineage));
                        }
                        Command::Promote { from, reply } => {
                            let _ = reply.send(writer.promote(&from));
                        }
                        Command::Fence { reply } => {
                            let r = super::schema::set_meta(
                                &writer.conn,
                                "fenced_at_ms",
                                &now_ms().to_string(),
                            );
                            let _ = reply.send(r.map_err(StoreError::from));
                        }
                        Command::Prune { prune, reply } => {
                            let _ = reply.send(writer.prune(prune));
                        }
                        Command::Install { staging, reply } => {
                            let _ = reply.send(writer.install(&staging));
                        }
                        Command::Close { reply } => {
                            // Commands queued after Close are dropped with the channel;
                            // their callers see "shutting down".
                            guard.take();
                            let _ = reply.send(());
                            return;
                        }
                        Command::Write { .. } => unreachable!("handled above"),
                    }
                }
            }
        }
        if !writes.is_empty() {
            let answers = commit(writer, writes);
            // Answered once the writer is let go: a lone writer's next write, sent the moment
            // it has this answer, finds the writer free.
            drop(guard);
            answer(answers);
        }
    }
}

/// Commits `writes` as one group and answers each.
fn commit_and_answer(writer: &mut Writer, writes: Vec<(Vec<Mutation>, Reply)>) {
    answer(commit(writer, writes));
}

/// Commits `writes` as one group: each one's reply and outcome. Replies are kept apart from
/// the work so that, whatever fails, every caller gets an answer that says what happened (a
/// dropped reply would read as "shutting down").
fn commit(writer: &mut Writer, writes: Vec<(Vec<Mutation>, Reply)>) -> Answers {
    let (batches, replies): (Vec<_>, Vec<Reply>) = writes.into_iter().unzip();
    replies
        .into_iter()
        .zip(writer.commit_group(&batches))
        .collect()
}

type Answers = Vec<(Reply, Result<Committed, StoreError>)>;

fn answer(answers: Answers) {
    for (reply, outcome) in answers {
        let _ = reply.send(outcome);
    }
}

enum GroupError {
    /// A request failed on the fast path; redo the group with savepoints.
    Request,
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for GroupError {
    fn from(e: rusqlite::Error) -> Self {
        GroupError::Sqlite(e)
    }
}

type GroupResult = Result<(Head, Vec<Result<Committed, StoreError>>, Vec<Entry>), GroupError>;

impl Writer {
    /// Appends entries produced by the upstream, after checking that they continue this log:
    /// the first seq is head + 1, seqs are consecutive, and every crc matches the chain. Any
    /// mismatch refuses the whole batch and changes nothing.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<Head, StoreError> {
        let mut expect = self.head;
        for e in &entries {
            if e.seq != expect.seq + 1 {
                return Err(StoreError::Diverged(format!(
                    "expected seq {} after {}, received {}",
                    expect.seq + 1,
                    expect.seq,
                    e.seq
                )));
            }
            let crc = e.expected_crc(expect.crc);
            if crc != e.crc {
                return Err(StoreError::Diverged(format!(
                    "crc mismatch at seq {}: entry carries {:#010x}, the chain gives {:#010x}",
                    e.seq, e.crc, crc
                )));
            }
            expect = Head {
                seq: e.seq,
                crc,
                ..expect
            };
        }
        if entries.is_empty() {
            return Ok(self.head);
        }
        let started = std::time::Instant::now();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for e in &entries {
            store_entry(&tx, e)?;
        }
        tx.commit()?;
        self.counters.add(0, started);
        // `expect` is this log's head moved to the last entry (its epoch is ours).
        self.head = expect;
        self.recent.push(entries);
        self.publish(expect);
        Ok(expect)
    }

    fn adopt_log_id(&mut self, log_id: &str, lineage: Option<Lineage>) -> Result<(), StoreError> {
        let current: String =
            self.conn
                .query_row("SELECT value FROM meta WHERE name = 'log_id'", [], |r| {
                    r.get(0)
                })?;
        if current == log_id {
            return Ok(());
        }
        match &lineage {
            // An empty log has no history to diverge from, whoever minted its id.
            None if self.head.seq == 0 => {}
            // The upstream's log was forked from this one at or after this file's head: the
            // history here is the upstream's too (the follower checked the crc at the head).
            Some(l) if *l.prev_log_id == current && self.head.seq <= l.fork_seq => {}
            _ => {
                return Err(StoreError::Diverged(format!(
                    "this file already follows log {current:?} (head seq {}); the upstream's log is {log_id:?}",
                    self.head.seq
                )));
            }
        }
        let tx = self.conn.transaction()?;
        super::schema::set_meta(&tx, "log_id", log_id)?;
        if let Some(l) = lineage {
            // Kept, so that followers of the old log can continue from this node too.
            super::schema::set_meta(&tx, "prev_log_id", &l.prev_log_id)?;
            super::schema::set_meta(&tx, "fork_seq", &l.fork_seq.to_string())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Forks this log at its head: a new log_id, with the old one and the head recorded as its
    /// lineage, and the namespace marked promoted (it no longer follows an upstream).
    /// A file with no log yet (a replica that never met its upstream) gets a log of its own
    /// and no lineage.
    fn promote(&mut self, from: &str) -> Result<Option<Lineage>, StoreError> {
        let tx = self.conn.transaction()?;
        let current: String =
            tx.query_row("SELECT value FROM meta WHERE name = 'log_id'", [], |r| {
                r.get(0)
            })?;
        let lineage = LogId::from_meta(current).map(|prev_log_id| Lineage {
            prev_log_id,
            fork_seq: self.head.seq,
        });
        super::schema::set_meta(&tx, "log_id", &super::schema::mint_log_id())?;
        if let Some(l) = &lineage {
            super::schema::set_meta(&tx, "prev_log_id", &l.prev_log_id)?;
            super::schema::set_meta(&tx, "fork_seq", &l.fork_seq.to_string())?;
        }
        super::schema::set_meta(&tx, "promoted_at_ms", &now_ms().to_string())?;
        super::schema::set_meta(&tx, "promoted_from", from)?;
        tx.commit()?;
        Ok(lineage)
    }
}

impl Writer {
    /// Deletes the oldest entries `prune` allows, in one transaction, and moves the base up to
    /// the last one deleted. A bounded number of rows per call keeps each transaction short, so
    /// writers queued behind it wait for milliseconds, not for the whole backlog.
    fn prune(&mut self, prune: Prune) -> Result<Pruned, StoreError> {
        let upto = prune.upto.min(self.head.seq - 1);
        let base_now = self.base_seq.load(std::sync::atomic::Ordering::Relaxed);
        if upto <= base_now {
            return Ok(Pruned {
                deleted: 0,
                base_seq: base_now,
            });
        }
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // The candidates, oldest first; stop at the first one too young to go.
        let mut last: Option<(Seq, u32)> = None;
        let mut deleted = 0;
        {
            let mut stmt = tx.prepare_cached(
                "SELECT seq, crc, ts_ms FROM wal_log WHERE seq <= ?1 ORDER BY seq LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![upto, prune.max_rows as i64])?;
            while let Some(r) = rows.next()? {
                let (seq, crc, ts_ms): (Seq, i64, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
                if prune.older_than_ms.is_some_and(|cutoff| ts_ms >= cutoff) {
                    break;
                }
                last = Some((seq, crc as u32));
                deleted += 1;
            }
        }
        let Some((base_seq, base_crc)) = last else {
            return Ok(Pruned {
                deleted: 0,
                base_seq: base_now,
            });
        };
        tx.prepare_cached("DELETE FROM wal_log WHERE seq <= ?1")?
            .execute([base_seq])?;
        super::schema::set_base(&tx, base_seq, base_crc)?;
        tx.commit()?;
        self.base_seq
            .store(base_seq, std::sync::atomic::Ordering::Relaxed);
        Ok(Pruned { deleted, base_seq })
    }

    /// Replaces `kv`, `wal_log` and the log's identity with a staged snapshot (see
    /// [`super::snapshot`]) in ONE transaction: a crash leaves either the old state or the new.
    fn install(&mut self, staging: &std::path::Path) -> Result<Head, StoreError> {
        let installed = super::snapshot::install(&self.conn, staging)?;
        let head = Head {
            seq: installed.head.0,
            crc: installed.head.1,
            epoch: self.head.epoch + 1,
        };
        self.head = head;
        self.base_seq
            .store(installed.base.0, std::sync::atomic::Ordering::Relaxed);
        // What the window held belongs to the replaced history.
        self.recent.clear();
        self.recent.push(installed.replayed);
        self.counters.add(0, std::time::Instant::now());
        tracing::info!(namespace = %self.namespace, log_id = %installed.log_id, base_seq = installed.base.0, head_seq = head.seq, keys = installed.keys, "snapshot installed");
        self.publish(head);
        Ok(head)
    }
}

pub(crate) fn update_kv(
    conn: &Connection,
    key: &str,
    value: Option<&[u8]>,
    seq: Seq,
    ts_ms: i64,
) -> rusqlite::Result<()> {
    match value {
        Some(v) => conn
            .prepare_cached(
                "INSERT INTO kv (key, value, seq, ts_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, seq = excluded.seq, ts_ms = excluded.ts_ms",
            )?
            .execute(params![key, v, seq, ts_ms])?,
        None => conn.prepare_cached("DELETE FROM kv WHERE key = ?1")?.execute([key])?,
    };
    Ok(())
}

/// Stores one entry: appends it to `wal_log` and applies it to `kv`. The one primitive behind
/// a primary's writes, a replica's applies and a snapshot's replay, so that "a replica equals
/// its primary" holds by construction.
pub(crate) fn store_entry(conn: &Connection, e: &Entry) -> rusqlite::Result<()> {
    let value = (e.op == Op::Put).then_some(e.value.as_slice());
    conn.prepare_cached(
        "INSERT INTO wal_log (seq, txn, op, key, value, ts_ms, crc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        e.seq,
        e.txn,
        e.op.as_str(),
        e.key,
        value,
        e.ts_ms,
        e.crc as i64
    ])?;
    update_kv(conn, &e.key, value, e.seq, e.ts_ms)
}

/// Appends one request's mutations after `head`, updating `kv` to match.
fn append(
    conn: &Connection,
    head: Head,
    mutations: &[Mutation],
    ts_ms: i64,
) -> rusqlite::Result<(Head, Vec<Entry>)> {
    let txn = head.seq + 1;
    let mut head = head;
    let mut entries = Vec::with_capacity(mutations.len());
    for m in mutations {
        let seq = head.seq + 1;
        let (op, key, value) = match m {
            Mutation::Put { key, value } => (Op::Put, key.clone(), value.clone()),
            Mutation::Delete { key } => (Op::Delete, key.clone(), Vec::new()),
        };
        let crc = chain_crc(head.crc, seq, txn, op, &key, &value, ts_ms);
        let entry = Entry {
            seq,
            txn,
            op,
            key,
            value,
            ts_ms,
            crc,
        };
        store_entry(conn, &entry)?;
        head = Head { seq, crc, ..head };
        entries.push(entry);
    }
    Ok((head, entries))
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use crate::config::Synchronous;
    use crate::store::{Lineage, Mutation, Namespace, StoreError};

    /// A file keeps the history it has: it takes another log's id only while it has no
    /// entries, or when that log was forked from this one at or after this file's head. Any
    /// other id is refused as a divergence and changes nothing. (The follower checks this
    /// first; this is the store's own guard.)
    #[tokio::test]
    async fn a_log_id_is_adopted_only_by_a_file_whose_history_it_continues() {
        let dir = tempfile::tempdir().unwrap();
        let other = "a".repeat(32);
        let empty = Namespace::open(dir.path(), "empty", Synchronous::Full).unwrap();
        empty.adopt_log_id(&other, None).await.unwrap();
        assert_eq!(empty.log_id().unwrap().to_string(), other);

        let ns = Namespace::open(dir.path(), "ns", Synchronous::Full).unwrap();
        for key in ["a", "b"] {
            ns.write(vec![Mutation::Put {
                key: key.into(),
                value: vec![1],
            }])
            .await
            .unwrap();
        }
        let own = ns.log_id().unwrap().to_string();
        ns.adopt_log_id(&own, None).await.unwrap();
        let fork = |prev_log_id: &str, fork_seq| {
            Some(Lineage {
                prev_log_id: crate::log::LogId::parse(prev_log_id).unwrap(),
                fork_seq,
            })
        };
        for (lineage, what) in [
            (None, "an unrelated log"),
            (fork(&own, 1), "a log forked before this file's head"),
            (fork(&"b".repeat(32), 5), "a log forked from another log"),
        ] {
            let r = ns.adopt_log_id(&other, lineage).await;
            assert!(matches!(r, Err(StoreError::Diverged(_))), "{what}: {r:?}");
            assert_eq!(ns.log_id().unwrap().to_string(), own, "{what}");
        }
        ns.adopt_log_id(&other, fork(&own, 2)).await.unwrap();
        assert_eq!(ns.log_id().unwrap().to_string(), other);
        ns.close().await;
        empty.close().await;
    }

    /// Writes queued ahead of a `Close` in one wake-up of the writer are committed and
    /// answered before it stops: a write sent before shutdown began is not turned away.
    /// Another connection holds the file's write lock while the writes and the `Close` are
    /// queued, so the writer is stalled in its first commit and finds all of them in one
    /// group. (Catches: a group's pending writes not committed ahead of a rarer command,
    /// `!writes.is_empty()` with its `!` deleted, which drops them at `Close`.)
    #[tokio::test]
    async fn writes_queued_ahead_of_close_are_committed_first() {
        use super::Command;
        use tokio::sync::oneshot;
        let dir = tempfile::tempdir().unwrap();
        let ns = Namespace::open(dir.path(), "ns", Synchronous::Full).unwrap();
        let blocker = rusqlite::Connection::open(dir.path().join("ns.db")).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut replies = Vec::new();
        for i in 0..20 {
            let (reply, answer) = oneshot::channel();
            let mutations = vec![Mutation::Put {
                key: format!("k{i}"),
                value: vec![1],
            }];
            let write = Command::Write { mutations, reply };
            ns.commands.send(write).await.unwrap();
            replies.push(answer);
        }
        let (reply, closed) = oneshot::channel();
        ns.commands.send(Command::Close { reply }).await.unwrap();
        blocker.execute_batch("COMMIT").unwrap();
        closed.await.unwrap();
        for (i, answer) in replies.into_iter().enumerate() {
            let committed = answer.await.unwrap().unwrap();
            assert_eq!(committed.last_seq, i as i64 + 1);
        }
        let seq: i64 = blocker
            .query_row("SELECT max(seq) FROM wal_log", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seq, 20);
        ns.close().await;
    }
}

/// Which writes commit on their caller's thread (`Namespace::write_here`) and which go to the
/// writer thread. Each test counts the first in `CommitCounters::here`.
#[cfg(test)]
mod here_tests {
    use super::{Command, Mutation};
    use crate::config::Synchronous;
    use crate::store::{InFlight, Namespace, Store};
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    fn put(key: &str, bytes: usize) -> Vec<Mutation> {
        vec![Mutation::Put {
            key: key.into(),
            value: vec![7; bytes],
        }]
    }

    fn here(ns: &Namespace) -> u64 {
        ns.commit_counters().here.load(Ordering::Relaxed)
    }

    /// Waits (with a deadline) until the writer thread has let go of the writer after its
    /// last command, as a write arriving a moment later would find it.
    async fn writer_free(ns: &Namespace) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while ns.writer.try_lock().is_err() {
            assert!(Instant::now() < deadline, "the writer thread never let go");
            tokio::task::yield_now().await;
        }
    }

    /// A lone small write commits on the caller's thread; the first write after a group of
    /// several, and writes over 16 mutations or 64 KiB, go to the writer thread. (Catches:
    /// never committing on the caller's thread; `lone()` true after a larger group, which
    /// would take writes from group commit under concurrent writers; the size bounds dropped,
    /// which would hold a runtime thread for a big batch.)
    #[tokio::test]
    async fn a_lone_small_write_commits_on_its_callers_thread() {
        let dir = tempfile::tempdir().unwrap();
        let ns = Namespace::open(dir.path(), "ns", Synchronous::Full).unwrap();
        ns.write(put("a", 1)).await.unwrap();
        assert_eq!(here(&ns), 1, "a lone write on a free writer commits here");

        // A group of 20: queued while the test holds the writer, so the writer thread, which
        // takes the writer before it looks for more commands, finds all of them at once.
        let held = ns.writer.lock().unwrap();
        let mut answers = Vec::new();
        for i in 0..20 {
            let (reply, answer) = tokio::sync::oneshot::channel();
            let mutations = put(&format!("g{i}"), 1);
            let write = Command::Write { mutations, reply };
            ns.commands.try_send(write).ok().unwrap();
            answers.push(answer);
        }
        drop(held);
        for answer in answers {
            answer.await.unwrap().unwrap();
        }
        writer_free(&ns).await;
        let c = ns.write(put("after-group", 1)).await.unwrap();
        assert_eq!(c.last_seq, 22);
        assert_eq!(
            here(&ns),
            1,
            "after a group of 20, the next write is grouped"
        );

        writer_free(&ns).await;
        ns.write(put("lone-again", 1)).await.unwrap();
        assert_eq!(
            here(&ns),
            2,
            "after a group of one, writes commit here again"
        );

        let many: Vec<Mutation> = (0..17).flat_map(|i| put(&format!("m{i}"), 1)).collect();
        for (what, mutations) in [("17 mutations", many), ("65 KiB", put("big", 65 * 1024))] {
            writer_free(&ns).await;
            ns.write(mutations).await.unwrap();
            assert_eq!(here(&ns), 2, "a write of {what} goes to the writer thread");
        }
        assert_eq!(ns.head().seq, 23 + 17 + 1);
        ns.close().await;
    }

    /// A write goes to the writer thread when the node began anything else since that
    /// namespace's last write: a read, a listing, entries read for a Tail stream, a write
    /// to another namespace. Committing on the caller's thread would hold up that work for
    /// the fsync (measured: ~15% of the reads of 64 busy connections beside one writer).
    /// A write beside another write to the same namespace still under way goes there too:
    /// concurrent writers share commits. (Catches: reads, listings or a Tail's entries not
    /// counted as operations; the count kept per namespace instead of per node; the check
    /// dropped; the writes in flight not checked.)
    #[tokio::test]
    async fn a_write_after_other_work_on_the_node_goes_to_the_writer_thread() {
        let dir = tempfile::tempdir().unwrap();
        let config = format!("base_dir = {:?}\nnamespaces = [\"a\", \"b\"]", dir.path());
        let config: crate::config::StorageConfig = toml::from_str(&config).unwrap();
        let node = Store::open(&config, &[]).await.unwrap();
        let (a, b) = (node.get("a").unwrap(), node.get("b").unwrap());
        a.write(put("k", 1)).await.unwrap();
        assert_eq!(here(a), 1, "the node's first operation, a lone write");

        a.get("k".into()).await.unwrap();
        a.write(put("k", 1)).await.unwrap();
        assert_eq!(here(a), 1, "a write after a read");
        writer_free(a).await;
        a.write(put("k", 1)).await.unwrap();
        assert_eq!(here(a), 2, "back to back again");

        a.list(String::new(), String::new(), 10).await.unwrap();
        writer_free(a).await;
        a.write(put("k", 1)).await.unwrap();
        assert_eq!(here(a), 2, "a write after a listing");

        a.entries_from(1, 10, usize::MAX).await.unwrap();
        writer_free(a).await;
        a.write(put("k", 1)).await.unwrap();
        assert_eq!(here(a), 2, "a write after entries read for a Tail stream");

        writer_free(a).await;
        b.write(put("k", 1)).await.unwrap();
        writer_free(a).await;
        a.write(put("k", 1)).await.unwrap();
        assert_eq!(here(a), 2, "a write after another namespace's");
        assert_eq!(here(b), 0, "a write after another namespace's");
        writer_free(a).await;
        a.write(put("k", 1)).await.unwrap();
        assert_eq!(here(a), 3, "back to back again");

        // Another write to `a` under way: entered, not answered yet.
        let other = InFlight::enter(&a.writes_in_flight);
        writer_free(a).await;
        a.write(put("k", 1)).await.unwrap();
        assert_eq!(here(a), 3, "a write beside another in flight");
        drop(other);
        writer_free(a).await;
        a.write(put("k", 1)).await.unwrap();
        assert_eq!(here(a), 4, "alone again");
        assert_eq!(a.head().seq, 9);
        node.close().await;
    }
}
