//! The namespace store: one SQLite file per namespace, one writer thread per file, a pool of
//! read-only connections for everything else.
//!
//! - [`schema`]: opening a file, migrations, refusing files ferry did not write.
//! - [`writer`]: the writer thread and group commit.
//! - [`reader`]: read-only queries (`kv` lookups, stats, log ranges).

pub mod acks;
pub(crate) mod checkpoint;
pub mod lock;
pub(crate) mod reader;
pub(crate) mod recent;
pub mod retention;
pub(crate) mod schema;
pub(crate) mod snapshot;
pub mod verify;
pub(crate) mod waiters;
pub(crate) mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{PerformanceConfig, StorageConfig, Synchronous};
use crate::log::{Entry, LogId, Seq};
pub use reader::{Stats, Value};
pub use waiters::WaitError;
use writer::{Command, Writer};
pub use writer::{CommitCounters, Committed, Lineage, Mutation, Prune, Pruned};

/// Commands queued for a writer thread before senders wait (backpressure on writes).
const COMMAND_QUEUE: usize = 4096;
/// The largest write committed on its caller's thread ([`Namespace::write_here`]): larger
/// ones take long enough that the hand-off to the writer thread costs nothing worth saving,
/// and the caller's runtime thread is not held by a big transaction.
const HERE_MAX_MUTATIONS: usize = 16;
const HERE_MAX_BYTES: usize = 64 * 1024;

/// The most bytes one request's log entries may take on the replication stream. A Tail
/// message never ends inside a request, so a request larger than one gRPC message could be
/// committed here and never reach a replica: the write is refused instead. Only reachable
/// when `max_body_bytes` is raised past 3 MiB (a delete batch of one-byte keys counts ~16
/// bytes of entries per byte of body).
pub const MAX_REQUEST_BYTES: usize = 48 * 1024 * 1024;

/// What a log entry takes on the wire besides its key and value, at most: seq, txn, ts_ms
/// (varints up to 10 bytes), op, crc, the tags and lengths, and its place in the message.
pub const ENTRY_OVERHEAD_BYTES: usize = 64;

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("namespace file {path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("cannot create {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    /// Another process (or another node in this process) serves this base_dir.
    #[error(
        "base_dir {dir} is in use by another ferry node ({holder}); one process per base_dir: stop it or point base_dir elsewhere"
    )]
    Locked { dir: PathBuf, holder: String },
    /// SQLite refused an operation; `kind` says whether it may pass (busy, full, I/O) or not.
    #[error("storage error: {message}")]
    Sqlite { kind: SqliteKind, message: String },
    /// The namespace file is damaged (SQLite reports it malformed, or a check found a broken
    /// crc chain or `kv` out of step with the log). A local fault: retrying cannot fix it.
    #[error(
        "namespace file {path} is corrupt: {reason}; check it with `ferry verify {path}`, then restore it from a backup or a replica"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A write with no mutations: it would take no seq and change nothing.
    #[error("nothing to write: the write has no items")]
    EmptyWrite,
    /// A write whose entries would not fit one replication message ([`MAX_REQUEST_BYTES`]).
    #[error(
        "the request's log entries would take {bytes} bytes, over the {limit} one request may hold so that replicas receive it whole; split it into several requests"
    )]
    TooLarge { bytes: usize, limit: usize },
    /// Entries offered to a replica do not continue its log.
    #[error("history differs: {0}")]
    Diverged(String),
}

/// SQLite's error codes, reduced to what decides what to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteKind {
    /// Another connection holds the lock past `busy_timeout` (SQLITE_BUSY, SQLITE_LOCKED).
    Busy,
    /// The disk or the file's size limit is full (SQLITE_FULL).
    Full,
    /// The OS failed a read or write (SQLITE_IOERR).
    Io,
    /// The file is damaged (SQLITE_CORRUPT, SQLITE_NOTADB).
    Corrupt,
    /// Anything else (constraints, misuse, conversions, ...).
    Other,
}

impl SqliteKind {
    pub fn of(e: &rusqlite::Error) -> SqliteKind {
        use rusqlite::ErrorCode as C;
        match e.sqlite_error_code() {
            Some(C::DatabaseBusy | C::DatabaseLocked) => SqliteKind::Busy,
            Some(C::DiskFull) => SqliteKind::Full,
            Some(C::SystemIoFailure) => SqliteKind::Io,
            Some(C::DatabaseCorrupt | C::NotADatabase) => SqliteKind::Corrupt,
            _ => SqliteKind::Other,
        }
    }

    /// Busy, full and I/O errors can pass without anyone touching the file.
    pub fn is_transient(self) -> bool {
        matches!(self, SqliteKind::Busy | SqliteKind::Full | SqliteKind::Io)
    }
}

impl StoreError {
    /// An error that is not SQLite's own but travels the same way (e.g. a reader task died).
    pub fn other(message: impl Into<String>) -> StoreError {
        StoreError::Sqlite {
            kind: SqliteKind::Other,
            message: message.into(),
        }
    }

    /// True when the namespace file itself is damaged.
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            StoreError::Corrupt { .. }
                | StoreError::Sqlite {
                    kind: SqliteKind::Corrupt,
                    ..
                }
        )
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite {
            kind: SqliteKind::of(&e),
            message: e.to_string(),
        }
    }
}

/// The last committed entry of a log: what the writer publishes after every commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Head {
    pub seq: Seq,
    pub crc: u32,
    /// Counts the times this node replaced the namespace's history with a snapshot. A change
    /// tells tail streams and the notifier that positions they hold belong to the old history.
    pub epoch: u32,
}

/// One open namespace.
pub struct Namespace {
    name: String,
    path: PathBuf,
    /// Empty on a replica that has not met its upstream yet.
    log_id: std::sync::RwLock<Option<LogId>>,
    commands: mpsc::Sender<Command>,
    /// The writer its thread runs, which a lone write may run on its caller's thread instead
    /// ([`Namespace::write_here`]).
    writer: writer::Shared,
    /// Operations begun on this node, shared by its namespaces.
    activity: Activity,
    /// `activity`'s number of this namespace's last write (see [`Namespace::write_here`]).
    last_write_op: AtomicU64,
    /// Client writes between [`Namespace::write`]'s start and its answer.
    writes_in_flight: AtomicUsize,
    head: watch::Receiver<Head>,
    readers: reader::Pool,
    recent: Arc<recent::Recent>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Background checkpoints (see [`checkpoint`]); ends after the writer thread.
    checkpoint_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Reads waiting with `?min_seq=`.
    waiters: Arc<waiters::SeqWaiters>,
    counters: Arc<CommitCounters>,
    /// `meta.base_seq`, kept current by the writer.
    base_seq: Arc<AtomicI64>,
    /// Connected followers and what they have applied (`?acks=K`).
    pub acks: acks::Acks,
    /// The next seq each live tail stream will send: retention holds back for them.
    tails: Mutex<BTreeMap<u64, Arc<AtomicI64>>>,
    next_tail: AtomicU64,
    /// Set (once, for the node's life) when the file is found damaged: by the check at open,
    /// or by SQLite reporting it malformed. Reads and writes of this namespace then fail with
    /// [`StoreError::Corrupt`]; other namespaces keep serving.
    corrupt: std::sync::OnceLock<String>,
    /// A newer log forked from this one (a promotion elsewhere), as a follower reported it.
    superseded: Mutex<Option<Lineage>>,
    /// Refuses writes (`meta.fenced_at_ms`): an operator fenced this superseded primary.
    fenced: std::sync::atomic::AtomicBool,
}

/// A live tail stream's position, registered with its namespace while the stream lives.
pub struct TailPosition<'a> {
    ns: &'a Namespace,
    id: u64,
    next: Arc<AtomicI64>,
}

impl TailPosition<'_> {
    /// The next seq this stream will send.
    pub fn set(&self, next: Seq) {
        self.next.store(next, Ordering::Relaxed);
    }
}

impl Drop for TailPosition<'_> {
    fn drop(&mut self) {
        self.ns.tails.lock().unwrap().remove(&self.id);
    }
}

impl Namespace {
    /// Opens (creating if needed) `<base_dir>/<name>.db` and starts its writer thread. A new
    /// file gets a freshly minted log_id.
    pub fn open(base_dir: &Path, name: &str, sync: Synchronous) -> Result<Namespace, StoreError> {
        Namespace::open_with(
            base_dir,
            name,
            sync,
            PerformanceConfig::default(),
            schema::mint_log_id,
            Activity::default(),
        )
    }

    /// [`Namespace::open`] with `[storage_config.performance_config]` settings.
    pub fn open_tuned(
        base_dir: &Path,
        name: &str,
        sync: Synchronous,
        perf: PerformanceConfig,
    ) -> Result<Namespace, StoreError> {
        Namespace::open_with(
            base_dir,
            name,
            sync,
            perf,
            schema::mint_log_id,
            Activity::default(),
        )
    }

    /// Opens a namespace of a node whose namespaces share `activity`. A new file gets
    /// `new_log_id()` as its log_id: a replica's gets none (`String::new`) until the follower
    /// adopts its upstream's ([`Namespace::adopt_log_id`]).
    fn open_with(
        base_dir: &Path,
        name: &str,
        sync: Synchronous,
        perf: PerformanceConfig,
        new_log_id: fn() -> String,
        activity: Activity,
    ) -> Result<Namespace, StoreError> {
        crate::config::validate_namespace(name).map_err(|reason| StoreError::BadFile {
            path: base_dir.join(name),
            reason,
        })?;
        let path = base_dir.join(format!("{name}.db"));
        let (mut conn, info) = schema::open_writer(&path, name, sync, new_log_id)?;
        let counters = Arc::new(CommitCounters::default());
        let wake_checkpoint =
            checkpoint::install(&mut conn, name, perf.checkpoint_pages, counters.clone()).map_err(
                |e| StoreError::BadFile {
                    path: path.clone(),
                    reason: format!("cannot configure checkpoints: {e}"),
                },
            )?;
        // Cheap enough for every start (SQLite's quick_check plus the last entries' chain),
        // and it turns a silently damaged file into a loud, named one.
        let check = verify::quick(&conn);
        let head = Head {
            seq: info.head_seq,
            crc: info.head_crc,
            epoch: 0,
        };
        let base_seq = Arc::new(AtomicI64::new(info.base_seq));
        let (head_tx, head_rx) = watch::channel(head);
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let recent = Arc::new(recent::Recent::default());
        let waiters = Arc::new(waiters::SeqWaiters::new(perf.max_seq_waiters, head.seq));
        let writer = Writer {
            namespace: name.to_owned(),
            conn,
            head,
            head_tx,
            recent: recent.clone(),
            counters: counters.clone(),
            base_seq: base_seq.clone(),
            waiters: waiters.clone(),
            last_group: 0,
        };
        let writer: writer::Shared = Arc::new(Mutex::new(Some(writer)));
        let thread_writer = writer.clone();
        let (ns_name, ns_path, ns_counters) = (name.to_owned(), path.clone(), counters.clone());
        let checkpoint_thread = std::thread::Builder::new()
            .name(format!("checkpoint-{name}"))
            .spawn(move || checkpoint::run(ns_name, ns_path, wake_checkpoint, ns_counters))
            .map_err(|e| StoreError::Io {
                path: path.clone(),
                reason: format!("cannot start checkpoint thread: {e}"),
            })?;
        let thread = std::thread::Builder::new()
            .name(format!("writer-{name}"))
            .spawn(move || writer::run(rx, thread_writer))
            .map_err(|e| StoreError::Io {
                path: path.clone(),
                reason: format!("cannot start writer thread: {e}"),
            })?;
        tracing::info!(
            namespace = name,
            file = %path.display(),
            head_seq = head.seq,
            log_id = %info.log_id,
            created = info.created,
            "namespace open"
        );
        let ns = Namespace {
            name: name.to_owned(),
            readers: reader::Pool::new(path.clone(), perf.mmap_size),
            recent,
            path,
            log_id: std::sync::RwLock::new(LogId::from_meta(info.log_id.clone())),
            commands: tx,
            writer,
            activity,
            last_write_op: AtomicU64::new(0),
            writes_in_flight: AtomicUsize::new(0),
            head: head_rx,
            writer_thread: Mutex::new(Some(thread)),
            checkpoint_thread: Mutex::new(Some(checkpoint_thread)),
            waiters,
            counters,
            base_seq,
            acks: acks::Acks::default(),
            tails: Mutex::new(BTreeMap::new()),
            next_tail: AtomicU64::new(0),
            corrupt: std::sync::OnceLock::new(),
            superseded: Mutex::new(None),
            fenced: std::sync::atomic::AtomicBool::new(info.fenced),
        };
        if !check.is_ok() {
            ns.mark_corrupt(format!("the check at open found: {}", check.summary()));
        }
        Ok(ns)
    }

    /// Why this namespace's file is considered damaged, if it is.
    pub(crate) fn corrupt(&self) -> Option<&str> {
        self.corrupt.get().map(String::as_str)
    }

    fn mark_corrupt(&self, reason: String) {
        if self.corrupt.set(reason.clone()).is_ok() {
            tracing::error!(
                namespace = %self.name,
                file = %self.path.display(),
                %reason,
                "namespace file is corrupt: its reads and writes now fail (other namespaces keep serving); check it with `ferry verify`, then restore it from a backup or a replica"
            );
        }
    }

    /// Refuses to touch a file already known to be damaged.
    fn usable(&self) -> Result<(), StoreError> {
        match self.corrupt() {
            Some(reason) => Err(StoreError::Corrupt {
                path: self.path.clone(),
                reason: reason.to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// Every store error passes here: SQLite saying the file is malformed marks the
    /// namespace corrupt (logged once) and comes back naming the file.
    fn noticed(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Sqlite {
                kind: SqliteKind::Corrupt,
                message,
            } => {
                self.mark_corrupt(message.clone());
                StoreError::Corrupt {
                    path: self.path.clone(),
                    reason: message,
                }
            }
            other => other,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The random id minted when this log was created; equal ids and equal (seq, crc) mean
    /// equal history.
    /// This namespace's log id; `None` for a replica's file that has not adopted its
    /// upstream's yet.
    pub fn log_id(&self) -> Option<LogId> {
        self.log_id.read().unwrap().clone()
    }

    /// The last committed entry.
    pub fn head(&self) -> Head {
        *self.head.borrow()
    }

    /// What the writer has committed since this node opened the namespace.
    pub fn commit_counters(&self) -> &CommitCounters {
        &self.counters
    }

    /// A receiver that changes after every commit that appended entries.
    pub fn subscribe(&self) -> watch::Receiver<Head> {
        self.head.clone()
    }

    /// Commits `mutations` atomically as consecutive log entries. Returns once durable (as
    /// durable as `synchronous` makes it).
    pub async fn write(&self, mutations: Vec<Mutation>) -> Result<Committed, StoreError> {
        if mutations.is_empty() {
            return Err(StoreError::EmptyWrite);
        }
        let bytes: usize = mutations.iter().map(Mutation::wire_bytes).sum();
        if bytes > MAX_REQUEST_BYTES {
            return Err(StoreError::TooLarge {
                bytes,
                limit: MAX_REQUEST_BYTES,
            });
        }
        self.usable()?;
        let flight = InFlight::enter(&self.writes_in_flight);
        let mutations = match self.write_here(mutations, bytes, flight.alone) {
            Ok(outcome) => return outcome.map_err(|e| self.noticed(e)),
            Err(mutations) => mutations,
        };
        self.request(|reply| Command::Write { mutations, reply })
            .await
            .map_err(|e| self.noticed(e))
    }

    /// Commits a small write on the caller's thread, as a group of its own, when nothing
    /// is gained by handing it to the writer thread: the writer is free (nothing queued
    /// for its thread, no commit running), writers have been coming one at a time (the
    /// last group was a single request), no other write to this namespace is under way
    /// (`alone_in_flight`: concurrent writers share commits), and the node began no other
    /// operation since this namespace's last write ([`Activity`]), so the commit holds up
    /// nobody else's work on this runtime thread (a primary with a replica tailing it
    /// serves the replica after each commit, so its writes keep going through the writer
    /// thread). For a lone writer the hand-off and the answer back are two thread
    /// wake-ups, 5-25% of its round trip (docs/performance.md, tenth sitting). Gives the
    /// mutations back when the write must go through the writer thread: every write from
    /// concurrent writers (group commit), and every write beside other work, such as
    /// reads, which a commit here would hold up for its fsync.
    fn write_here(
        &self,
        mutations: Vec<Mutation>,
        bytes: usize,
        alone_in_flight: bool,
    ) -> Result<Result<Committed, StoreError>, Vec<Mutation>> {
        let mine = self.activity.begin();
        let alone = self.last_write_op.swap(mine, Ordering::Relaxed) + 1 == mine;
        if !alone
            || !alone_in_flight
            || mutations.len() > HERE_MAX_MUTATIONS
            || bytes > HERE_MAX_BYTES
            || self.commands.capacity() != self.commands.max_capacity()
        {
            return Err(mutations);
        }
        let Ok(mut guard) = self.writer.try_lock() else {
            return Err(mutations);
        };
        let Some(writer) = guard.as_mut().filter(|w| w.lone()) else {
            return Err(mutations);
        };
        let mut outcomes = writer.commit_group(&[mutations]);
        self.counters.here.fetch_add(1, Ordering::Relaxed);
        Ok(outcomes.pop().expect("one outcome per request"))
    }

    /// Replica: appends entries received from upstream (verbatim, one transaction) after
    /// checking they continue this log. Returns the new head.
    pub(crate) async fn apply(&self, entries: Vec<Entry>) -> Result<Head, StoreError> {
        self.usable()?;
        self.request(|reply| Command::Apply { entries, reply })
            .await
            .map_err(|e| self.noticed(e))
    }

    /// Replica: takes the upstream's log_id. Allowed only while this file has none (a new,
    /// empty replica file); otherwise the ids must already be equal.
    pub(crate) async fn adopt_log_id(
        &self,
        log_id: &str,
        lineage: Option<Lineage>,
    ) -> Result<(), StoreError> {
        let id = log_id.to_owned();
        self.request(|reply| Command::AdoptLogId {
            log_id: id,
            lineage,
            reply,
        })
        .await?;
        *self.log_id.write().unwrap() = LogId::from_meta(log_id.to_owned());
        Ok(())
    }

    /// Promotes this namespace's log to a new one forked at the head (a new log_id; the old
    /// one, the head and `from`, the upstream it followed, recorded in `meta`). Returns the
    /// lineage.
    pub async fn promote(&self, from: &str) -> Result<Option<Lineage>, StoreError> {
        let from = from.to_owned();
        let lineage = self
            .request(|reply| Command::Promote { from, reply })
            .await?;
        let log_id = self
            .read(|c| {
                c.query_row("SELECT value FROM meta WHERE name = 'log_id'", [], |r| {
                    r.get::<_, String>(0)
                })
            })
            .await?;
        *self.log_id.write().unwrap() = LogId::from_meta(log_id);
        Ok(lineage)
    }

    /// Records that log `log_id`, forked from this one at `fork_seq`, exists elsewhere: this
    /// node is a superseded primary for the namespace. Logged loudly once per newer log.
    pub fn mark_superseded(&self, log_id: LogId, fork_seq: Seq) {
        let newer = Lineage {
            prev_log_id: log_id,
            fork_seq,
        };
        let log_id = &newer.prev_log_id;
        let mut superseded = self.superseded.lock().unwrap();
        if superseded.as_ref() != Some(&newer) {
            tracing::error!(namespace = %self.name, own_log_id = %LogId::wire(self.log_id().as_ref()), newer_log_id = %log_id, fork_seq, "SUPERSEDED: a follower reports log {log_id}, forked from this node's log at seq {fork_seq} (a replica was promoted). Writes here will not reach that history: stop this primary, or fence it (POST /api/v1/{}/fence) and rejoin it as a replica", self.name);
            *superseded = Some(newer);
        }
    }

    /// Whether this namespace refuses writes (fenced).
    pub fn fenced(&self) -> bool {
        self.fenced.load(Ordering::Relaxed)
    }

    /// Refuses writes from now on, durably (`meta.fenced_at_ms`): what an operator does to a
    /// primary that a promotion superseded, until it rejoins as a replica.
    pub async fn fence(&self) -> Result<(), StoreError> {
        self.request(|reply| Command::Fence { reply }).await?;
        self.fenced.store(true, Ordering::Relaxed);
        tracing::warn!(namespace = %self.name, "FENCED: this namespace refuses writes from now on");
        Ok(())
    }

    /// The newer log that superseded this one, if a follower reported one (`prev_log_id` holds
    /// the newer log's id here).
    pub fn superseded_by(&self) -> Option<Lineage> {
        self.superseded.lock().unwrap().clone()
    }

    /// The entry just before the oldest retained one (0 when nothing was ever pruned).
    pub fn base_seq(&self) -> Seq {
        self.base_seq.load(Ordering::Relaxed)
    }

    /// Registers a live tail stream that will send `next` first; retention holds back for it
    /// while the returned guard lives.
    pub fn register_tail(&self, next: Seq) -> TailPosition<'_> {
        let id = self.next_tail.fetch_add(1, Ordering::Relaxed);
        let pos = Arc::new(AtomicI64::new(next));
        self.tails.lock().unwrap().insert(id, pos.clone());
        TailPosition {
            ns: self,
            id,
            next: pos,
        }
    }

    /// The smallest next seq of the live tail streams (the slowest connected follower), if any.
    pub(crate) fn slowest_tail(&self) -> Option<Seq> {
        let tails = self.tails.lock().unwrap();
        tails.values().map(|p| p.load(Ordering::Relaxed)).min()
    }

    /// Read-your-writes: waits until this node has committed `seq`, for at most `timeout`.
    /// Only the commit that reaches `seq` wakes this wait. At most
    /// `performance_config.max_seq_waiters` reads wait at once; past that, [`WaitError::Full`].
    pub async fn wait_for_seq(
        &self,
        seq: Seq,
        timeout: std::time::Duration,
    ) -> Result<(), WaitError> {
        self.waiters.wait(seq, timeout).await
    }

    /// Reads waiting in [`Namespace::wait_for_seq`] now.
    pub fn seq_waiters(&self) -> usize {
        self.waiters.len()
    }

    /// Deletes old entries as `prune` allows (one bounded transaction).
    pub async fn prune(&self, prune: Prune) -> Result<Pruned, StoreError> {
        self.request(|reply| Command::Prune { prune, reply }).await
    }

    /// Replaces this namespace's state and history with the snapshot staged in `staging`
    /// (see [`snapshot::Staging`]), atomically, and takes the snapshot's log_id.
    pub(crate) async fn install_snapshot(&self, staging: &Path) -> Result<Head, StoreError> {
        let staging = staging.to_owned();
        let head = self
            .request(|reply| Command::Install { staging, reply })
            .await?;
        let log_id = self.read(|c| {
            c.query_row("SELECT value FROM meta WHERE name = 'log_id'", [], |r| {
                r.get::<_, String>(0)
            })
        });
        *self.log_id.write().unwrap() = LogId::from_meta(log_id.await?);
        Ok(head)
    }

    /// Sends one command to the writer thread and waits for its reply.
    async fn request<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Command,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| StoreError::ShuttingDown)?;
        rx.await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Entries from `from` on (bounded, ending on a group boundary), from memory when they are
    /// recent, else from the file. Empty when `from` is past the head.
    pub async fn entries_from(
        &self,
        from: Seq,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.usable()?;
        // A Tail stream's work after each commit: a lone write committing on the runtime
        // thread would hold it up (see `Namespace::write_here`).
        self.activity.begin();
        if let Some(entries) = self.recent.since(from, max_count, max_bytes) {
            return Ok(entries);
        }
        self.read(move |c| reader::entries(c, from, max_count, max_bytes))
            .await
    }

    /// Runs a read-only query on a pooled connection, off the async runtime. Refused once the
    /// file is known to be damaged.
    pub async fn read<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.usable()?;
        self.read_anyway(f).await
    }

    /// [`Namespace::read`] even on a damaged file (for `/stats`, which must still answer).
    async fn read_anyway<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&rusqlite::Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        self.activity.begin();
        self.readers.run(f).await.map_err(|e| self.noticed(e))
    }

    /// One key's value: a point lookup, run on the calling runtime thread (see
    /// [`reader::Pool::run_here`]).
    pub async fn get(&self, key: String) -> Result<Option<Value>, StoreError> {
        self.usable()?;
        self.activity.begin();
        self.readers
            .run_here(move |c| reader::get(c, &key))
            .await
            .map_err(|e| self.noticed(e))
    }

    /// Keys with `prefix` after `after`, in key order.
    pub(crate) async fn list(
        &self,
        prefix: String,
        after: String,
        limit: usize,
    ) -> Result<Vec<(String, Value)>, StoreError> {
        self.read(move |c| reader::list(c, &prefix, &after, limit))
            .await
    }

    pub(crate) async fn stats(&self) -> Result<Stats, StoreError> {
        let path = self.path.clone();
        // On the reader's blocking thread: `file_bytes` asks the file system.
        self.read_anyway(move |c| {
            let mut stats = reader::stats(c)?;
            stats.file_bytes = file_bytes(&path);
            Ok(stats)
        })
        .await
    }

    /// Lets queued writes finish, then stops the writer thread and waits for it. Later writes
    /// fail with [`StoreError::ShuttingDown`].
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Close { reply }).await.is_ok() {
            let _ = done.await;
        }
        let thread = self.writer_thread.lock().unwrap().take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        // It ends once the writer's connection (and its WAL hook) is gone.
        let thread = self.checkpoint_thread.lock().unwrap().take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Counts a client write in flight on its namespace while it lives.
struct InFlight<'a> {
    count: &'a AtomicUsize,
    /// No other write was in flight when this one entered.
    alone: bool,
}

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize) -> InFlight<'a> {
        let before = count.fetch_add(1, Ordering::Relaxed);
        InFlight {
            count,
            alone: before == 0,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Operations begun on one node's namespaces: writes, reads, entries read for Tail streams and
/// the changes feed. A write that finds the count one past its namespace's last write knows
/// the node began nothing else in between (see [`Namespace::write_here`]); the count itself
/// means nothing.
#[derive(Clone, Default)]
struct Activity(Arc<AtomicU64>);

impl Activity {
    /// Counts an operation; its number.
    fn begin(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Size of the database file plus its WAL.
fn file_bytes(path: &Path) -> u64 {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    [path, wal.as_path()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Every namespace a node owns, by name.
pub struct Store {
    namespaces: BTreeMap<String, Arc<Namespace>>,
    /// The exclusive lock on `<base_dir>/LOCK`, held from open to [`Store::close`].
    lock: Mutex<Option<lock::DirLock>>,
}

impl Store {
    /// Opens every configured namespace, creating `base_dir` if needed. Fails on the first file
    /// that cannot be used, closing the ones already open.
    /// Namespaces in `replicated` are opened as replicas: a new file gets no log_id until the
    /// follower adopts its upstream's.
    pub async fn open(config: &StorageConfig, replicated: &[String]) -> Result<Store, StoreError> {
        let (config, replicated) = (config.clone(), replicated.to_vec());
        // Creating base_dir, locking it, opening and checking each file: all of it blocks.
        let opened = tokio::task::spawn_blocking(move || Store::open_files(&config, &replicated))
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        match opened? {
            (store, None) => Ok(store),
            (store, Some(e)) => {
                store.close().await;
                Err(e)
            }
        }
    }

    /// [`Store::open`]'s blocking part: the store with the files opened before the first that
    /// failed, and that failure.
    fn open_files(
        config: &StorageConfig,
        replicated: &[String],
    ) -> Result<(Store, Option<StoreError>), StoreError> {
        std::fs::create_dir_all(&config.base_dir).map_err(|e| StoreError::Io {
            path: config.base_dir.clone(),
            reason: e.to_string(),
        })?;
        // Before any file is opened: two writers on one file would both take seqs.
        let lock = lock::DirLock::acquire(&config.base_dir)?;
        let mut store = Store {
            namespaces: BTreeMap::new(),
            lock: Mutex::new(Some(lock)),
        };
        let activity = Activity::default();
        for name in &config.namespaces {
            let new_log_id = if replicated.contains(name) {
                String::new
            } else {
                schema::mint_log_id
            };
            match Namespace::open_with(
                &config.base_dir,
                name,
                config.synchronous,
                config.performance_config,
                new_log_id,
                activity.clone(),
            ) {
                Ok(ns) => {
                    store.namespaces.insert(name.clone(), Arc::new(ns));
                }
                Err(e) => return Ok((store, Some(e))),
            }
        }
        Ok((store, None))
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Namespace>> {
        self.namespaces.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.namespaces.keys().cloned().collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Namespace>> {
        self.namespaces.values()
    }

    /// Answers every read waiting with `?min_seq=` "shutting down" now, and refuses new ones
    /// that would have to wait: called as shutdown begins, so that those reads do not hold the
    /// HTTP drain. Their seq may still come before the node stops (a write in flight on a
    /// primary), or never (replication stops with the node); either way the client learns at
    /// once that this node is going away and can ask another.
    pub fn stop_waiting(&self) {
        for ns in self.namespaces.values() {
            ns.waiters.close();
        }
    }

    /// Closes every namespace: queued writes finish, writer threads exit. Then releases
    /// base_dir, so another node may open it (even while this `Store` is still referenced).
    pub async fn close(&self) {
        for ns in self.namespaces.values() {
            ns.close().await;
        }
        self.lock.lock().unwrap().take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn kind(e: rusqlite::Error) -> SqliteKind {
        match StoreError::from(e) {
            StoreError::Sqlite { kind, .. } => kind,
            other => panic!("not a Sqlite error: {other:?}"),
        }
    }

    /// Real SQLite failures keep their kind through `StoreError`, which is what lets a replica
    /// retry a busy or full file and stop on a corrupt one.
    #[test]
    fn sqlite_errors_keep_their_kind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let a = Connection::open(&path).unwrap();
        a.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x UNIQUE); BEGIN IMMEDIATE")
            .unwrap();
        let b = Connection::open(&path).unwrap();
        b.busy_timeout(std::time::Duration::ZERO).unwrap();
        let busy = kind(b.execute("INSERT INTO t VALUES (1)", []).unwrap_err());
        assert_eq!(busy, SqliteKind::Busy);
        assert!(busy.is_transient());
        a.execute_batch("ROLLBACK").unwrap();

        a.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let page_count: i64 = a.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
        a.pragma_update(None, "max_page_count", page_count).unwrap();
        let big = vec![0u8; 1 << 20];
        let full = kind(a.execute("INSERT INTO t VALUES (?1)", [big]).unwrap_err());
        assert_eq!(full, SqliteKind::Full);
        assert!(full.is_transient());

        let other = kind(a.execute("INSERT INTO t VALUES (1)", []).unwrap_err());
        assert_eq!(other, SqliteKind::Other);
        assert!(!other.is_transient());

        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![0x42u8; 4096]).unwrap();
        let c = Connection::open(&junk).unwrap();
        let e = StoreError::from(c.execute_batch("SELECT * FROM sqlite_master").unwrap_err());
        assert!(e.is_corrupt(), "{e:?}");
        assert!(!StoreError::other("x").is_corrupt());
    }

    /// An I/O error of the OS (SQLITE_IOERR, whatever its extended code) is retried, not
    /// fatal: a disk that fails a write now may take it later. SQLite cannot be made to fail
    /// a read here without a faulty disk, so the error is built as SQLite reports it.
    /// (Catches the `SystemIoFailure` arm of `SqliteKind::of` deleted: the error reads as
    /// `Other` and a replica stops for good on it.)
    #[test]
    fn an_io_error_of_the_os_is_transient() {
        let ioerr_write = rusqlite::ffi::SQLITE_IOERR_WRITE;
        let e = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(ioerr_write), None);
        let io = kind(e);
        assert_eq!(io, SqliteKind::Io);
        assert!(io.is_transient());
    }
}
