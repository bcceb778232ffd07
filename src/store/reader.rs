//! Read-only access: a small pool of read-only connections, and the queries run on them.
//!
//! SQLite in WAL mode lets readers run beside the writer; each query sees the last commit
//! that finished before it started.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::Semaphore;

use super::StoreError;
use crate::log::{Entry, Op, Seq};

/// Idle connections kept for reuse; more are opened under load and closed when returned.
const MAX_IDLE: usize = 16;
/// Most queries running at once on one namespace, hence most read connections open (each
/// holds a blocking thread and a file handle). Further queries wait for one to finish.
pub const MAX_CONNECTIONS: usize = 64;

#[derive(Clone)]
pub(crate) struct Pool {
    path: Arc<PathBuf>,
    /// `PRAGMA mmap_size` of every connection this pool opens (0: off).
    mmap_size: u64,
    idle: Arc<Mutex<Vec<Connection>>>,
    /// One permit per running query: bounds the connections open at once.
    running: Arc<Semaphore>,
    /// Names this pool's connections in the runtime threads' own (see [`Pool::run_here`]); it
    /// dies with the pool, and with it those connections, the next time their thread opens one.
    alive: Arc<u64>,
}

/// Ids of pools, so that a thread's connections are never mixed up between namespaces.
static NEXT_POOL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A connection a runtime thread keeps for one namespace.
struct Local {
    pool: std::sync::Weak<u64>,
    id: u64,
    conn: Connection,
}

thread_local! {
    /// The read connections of this thread, one per namespace it has read from.
    static LOCAL: std::cell::RefCell<Vec<Local>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Pool {
    pub fn new(path: PathBuf, mmap_size: u64) -> Pool {
        Pool {
            path: Arc::new(path),
            mmap_size,
            idle: Arc::new(Mutex::new(Vec::new())),
            running: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            alive: Arc::new(NEXT_POOL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
        }
    }

    /// Runs a short query (a point lookup: microseconds on cached pages) right here, on the
    /// calling thread, on a connection this thread keeps for this namespace: no hop to a
    /// blocking thread and back. The connection never waits for a lock; if SQLite reports
    /// the file busy, the query goes to [`Pool::run`].
    pub async fn run_here<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: Fn(&Connection) -> rusqlite::Result<R> + Send + Sync + 'static,
        R: Send + 'static,
    {
        match self.with_local(&f) {
            Err(e) if is_busy(&e) => self.run(f).await,
            other => other,
        }
    }

    /// Runs `f` on this thread's connection for this pool, opening it the first time.
    fn with_local<R>(
        &self,
        f: &dyn Fn(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StoreError> {
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let id = *self.alive;
            let i = match local.iter().position(|l| l.id == id) {
                Some(i) => i,
                None => {
                    // Connections of namespaces since closed go now.
                    local.retain(|l| l.pool.strong_count() > 0);
                    let conn = self.open()?;
                    conn.busy_timeout(std::time::Duration::ZERO)?;
                    local.push(Local {
                        pool: Arc::downgrade(&self.alive),
                        id,
                        conn,
                    });
                    local.len() - 1
                }
            };
            Ok(f(&local[i].conn)?)
        })
    }

    /// Waits until fewer than [`MAX_CONNECTIONS`] queries run, then runs `f` on a pooled
    /// connection on a blocking thread.
    pub async fn run<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let permit = self
            .running
            .clone()
            .acquire_owned()
            .await
            .expect("the pool never closes its semaphore");
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            pool.with(f)
        })
        .await
        .map_err(|e| StoreError::other(format!("reader task failed: {e}")))?
    }

    /// A new read connection to this pool's file, with its mapping size.
    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = super::schema::open_reader(&self.path)?;
        if self.mmap_size > 0 {
            // SQLite lowers a larger value to its own ceiling.
            conn.pragma_update(
                None,
                "mmap_size",
                i64::try_from(self.mmap_size).unwrap_or(i64::MAX),
            )?;
        }
        Ok(conn)
    }

    /// Runs `f` on a pooled connection (blocking).
    fn with<R>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<R>) -> Result<R, StoreError> {
        let conn = self.idle.lock().unwrap().pop();
        let conn = match conn {
            Some(c) => c,
            None => self.open()?,
        };
        let out = f(&conn);
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        Ok(out?)
    }
}

fn is_busy(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Sqlite {
            kind: super::SqliteKind::Busy,
            ..
        }
    )
}

/// A stored value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub value: Vec<u8>,
    pub seq: Seq,
    pub ts_ms: i64,
}

pub fn get(conn: &Connection, key: &str) -> rusqlite::Result<Option<Value>> {
    conn.prepare_cached("SELECT value, seq, ts_ms FROM kv WHERE key = ?1")?
        .query_row([key], |r| {
            Ok(Value {
                value: r.get(0)?,
                seq: r.get(1)?,
                ts_ms: r.get(2)?,
            })
        })
        .optional()
}

/// Counts and positions reported by `/stats`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub keys: i64,
    pub wal_entries: i64,
    /// Oldest seq still in wal_log (0 when the log never had an entry; `base_seq + 1`, past
    /// the head, when every entry was pruned or a snapshot was installed).
    pub oldest_seq: Seq,
    pub head_seq: Seq,
    /// The entry just before the oldest retained one (0 when nothing was ever pruned).
    pub base_seq: Seq,
    pub file_bytes: u64,
}

pub fn stats(conn: &Connection) -> rusqlite::Result<Stats> {
    // One read transaction, so the counts agree with each other.
    let tx = conn.unchecked_transaction()?;
    let keys = tx.query_row("SELECT COUNT(*) FROM kv", [], |r| r.get(0))?;
    let (base_seq, _) = super::schema::base(&tx)?;
    let (head_seq, _) = super::schema::head(&tx)?;
    let oldest_seq = if head_seq == 0 { 0 } else { oldest(&tx)? };
    // Seqs are dense, so the count is derived; COUNT(*) would read the whole log.
    let wal_entries = if head_seq == 0 {
        0
    } else {
        (head_seq - oldest_seq + 1).max(0)
    };
    Ok(Stats {
        keys,
        wal_entries,
        oldest_seq,
        head_seq,
        base_seq,
        file_bytes: 0,
    })
}

/// One `kv` row, verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRow {
    pub key: String,
    pub value: Vec<u8>,
    pub seq: Seq,
    pub ts_ms: i64,
}

/// A consistent copy of `kv` (the keys after `after_key`, or all), read in one transaction: `send` gets the seq and crc of the last
/// entry the copy includes (0, 0 for an empty log), the next rows in key order (up to
/// `max_rows` of them, or until they reach `max_bytes` of keys and values; the last call may
/// have none), and whether this is the last call. Stops early, without error, when `send`
/// returns false.
pub fn snapshot(
    conn: &Connection,
    after_key: Option<&str>,
    max_rows: usize,
    max_bytes: usize,
    mut send: impl FnMut(Seq, u32, Vec<KvRow>, bool) -> bool,
) -> rusqlite::Result<()> {
    // The read transaction starts at the first SELECT: the head and every row below come
    // from the same state of the file, whatever commits meanwhile.
    let tx = conn.unchecked_transaction()?;
    let (seq, crc) = super::schema::head(&tx)?;
    let mut stmt =
        tx.prepare("SELECT key, value, seq, ts_ms FROM kv WHERE key > ?1 ORDER BY key")?;
    let mut rows = stmt.query([after_key.unwrap_or("")])?;
    let (mut chunk, mut bytes) = (Vec::new(), 0);
    while let Some(r) = rows.next()? {
        let row = KvRow {
            key: r.get(0)?,
            value: r.get(1)?,
            seq: r.get(2)?,
            ts_ms: r.get(3)?,
        };
        bytes += row.key.len() + row.value.len();
        chunk.push(row);
        if chunk.len() >= max_rows || bytes >= max_bytes {
            if !send(seq, crc, std::mem::take(&mut chunk), false) {
                return Ok(());
            }
            bytes = 0;
        }
    }
    send(seq, crc, chunk, true);
    Ok(())
}

/// The first seq a follower can read from this log: the oldest retained entry, or
/// `base_seq + 1` when none is retained (1 for a log that never had any). (A bare `MIN(seq)`
/// on the primary key is one b-tree descent; wrapped in other expressions SQLite would scan.)
pub fn oldest(conn: &Connection) -> rusqlite::Result<Seq> {
    let min = conn
        .prepare_cached("SELECT MIN(seq) FROM wal_log")?
        .query_row([], |r| r.get::<_, Option<Seq>>(0))?;
    match min {
        Some(seq) => Ok(seq),
        None => Ok(super::schema::base(conn)?.0 + 1),
    }
}

/// Entries from `from` on, in seq order: at least one, stopping once `max_count` entries or
/// `max_bytes` of keys and values are reached — but never inside an atomic group (`txn`), so a
/// follower that applies each batch in one transaction keeps batches atomic on its side too.
pub fn entries(
    conn: &Connection,
    from: Seq,
    max_count: usize,
    max_bytes: usize,
) -> rusqlite::Result<Vec<Entry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, txn, op, key, value, ts_ms, crc FROM wal_log WHERE seq >= ?1 ORDER BY seq",
    )?;
    let mut rows = stmt.query([from])?;
    let mut out: Vec<Entry> = Vec::new();
    let mut bytes = 0;
    while let Some(r) = rows.next()? {
        let (seq, txn): (Seq, Seq) = (r.get(0)?, r.get(1)?);
        let full = out.len() >= max_count || bytes >= max_bytes;
        if full && txn == seq {
            break;
        }
        let entry = Entry {
            seq,
            txn,
            op: op_at(r, 2)?,
            key: r.get(3)?,
            value: r.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default(),
            ts_ms: r.get(5)?,
            crc: r.get::<_, i64>(6)? as u32,
        };
        bytes += entry.key.len() + entry.value.len();
        out.push(entry);
    }
    Ok(out)
}

/// Column `idx` of `r`, a `wal_log.op`.
fn op_at(r: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<Op> {
    let op: String = r.get(idx)?;
    Op::parse(&op).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            rusqlite::types::Type::Text,
            format!("unknown op {op:?}").into(),
        )
    })
}

/// The crc of entry `seq`, if the log still knows it: a retained entry, the base (the entry
/// just before the oldest retained one), or 0 for seq 0.
pub fn crc_at(conn: &Connection, seq: Seq) -> rusqlite::Result<Option<u32>> {
    let crc = conn
        .prepare_cached("SELECT crc FROM wal_log WHERE seq = ?1")?
        .query_row([seq], |r| r.get::<_, i64>(0))
        .optional()?;
    if let Some(c) = crc {
        return Ok(Some(c as u32));
    }
    let (base_seq, base_crc) = super::schema::base(conn)?;
    Ok(match seq {
        0 => Some(0),
        s if s == base_seq => Some(base_crc),
        _ => None,
    })
}

/// What a notification says about an entry (no value).
#[derive(Debug, Clone)]
pub struct EntryHead {
    pub seq: Seq,
    pub txn: Seq,
    pub op: Op,
    pub key: String,
    pub ts_ms: i64,
}

/// Entries with seq in `(after, upto]`, without their values, at most `limit`.
pub fn entry_heads(
    conn: &Connection,
    after: Seq,
    upto: Seq,
    limit: usize,
) -> rusqlite::Result<Vec<EntryHead>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, txn, op, key, ts_ms FROM wal_log WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
    )?;
    let rows = stmt.query_map(rusqlite::params![after, upto, limit as i64], |r| {
        Ok(EntryHead {
            seq: r.get(0)?,
            txn: r.get(1)?,
            op: op_at(r, 2)?,
            key: r.get(3)?,
            ts_ms: r.get(4)?,
        })
    })?;
    rows.collect()
}

/// Keys starting with `prefix`, after `after`, in key order, at most `limit`.
pub fn list(
    conn: &Connection,
    prefix: &str,
    after: &str,
    limit: usize,
) -> rusqlite::Result<Vec<(String, Value)>> {
    // Matching keys are contiguous from `prefix` on in key order: scan from there and stop at
    // the first key that no longer matches (the primary key index makes this a range scan).
    let mut stmt = conn.prepare_cached(
        "SELECT key, value, seq, ts_ms FROM kv WHERE key >= ?1 AND key > ?2 ORDER BY key",
    )?;
    let mut rows = stmt.query(rusqlite::params![prefix, after])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let key: String = r.get(0)?;
        if !key.starts_with(prefix) || out.len() >= limit {
            break;
        }
        out.push((
            key,
            Value {
                value: r.get(1)?,
                seq: r.get(2)?,
                ts_ms: r.get(3)?,
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;
    use crate::store::{Mutation, Namespace, Prune};

    fn put(key: &str, value: &[u8]) -> Mutation {
        Mutation::Put {
            key: key.into(),
            value: value.to_vec(),
        }
    }

    /// A namespace in a temp dir with `keys` written one per request, values `v0`, `v1`, ...
    async fn namespace(dir: &std::path::Path, keys: &[&str]) -> Namespace {
        let ns = Namespace::open(dir, "ns", Synchronous::Full).unwrap();
        for (i, key) in keys.iter().enumerate() {
            ns.write(vec![put(key, format!("v{i}").as_bytes())])
                .await
                .unwrap();
        }
        ns
    }

    /// A bootstrap copy comes in chunks of at most `max_rows` rows or `max_bytes` of keys and
    /// values (a chunk stops at the row that reaches the bound), every chunk carries the head it
    /// was read at, the last one says so, and together they hold every row once, in key order.
    /// The pools this thread holds a connection for, by id.
    fn local_pools() -> Vec<u64> {
        LOCAL.with(|l| l.borrow().iter().map(|l| l.id).collect())
    }

    /// The read connections a node holds stay bounded: a runtime thread closes its
    /// connection to a namespace that is gone (when it next opens one, and only those), and
    /// a pool keeps at most [`MAX_IDLE`] connections between queries, but does keep them.
    /// (Catches: the `retain` of gone namespaces inverted or turned off, which keeps files
    /// of closed namespaces open, or closes the live ones; `idle.len() < MAX_IDLE` as `==`,
    /// `>` (nothing kept) or `<=` (17 kept).)
    #[tokio::test]
    async fn read_connections_of_gone_namespaces_close_and_idle_ones_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for name in ["gone", "live", "new"] {
            let sub = dir.path().join(name);
            std::fs::create_dir(&sub).unwrap();
            namespace(&sub, &["a"]).await.close().await;
            files.push(sub.join("ns.db"));
        }
        let get =
            |c: &Connection| c.query_row("SELECT COUNT(*) FROM kv", [], |r| r.get::<_, i64>(0));
        // This thread's connections to two namespaces; then one of them goes.
        let gone = Pool::new(files[0].clone(), 0);
        let live = Pool::new(files[1].clone(), 0);
        gone.run_here(get).await.unwrap();
        live.run_here(get).await.unwrap();
        let (gone_id, live_id) = (*gone.alive, *live.alive);
        assert!(local_pools().contains(&gone_id) && local_pools().contains(&live_id));
        drop(gone);
        // Opening another closes the gone one's, and only that.
        let new = Pool::new(files[2].clone(), 0);
        new.run_here(get).await.unwrap();
        let held = local_pools();
        assert!(
            !held.contains(&gone_id),
            "a gone namespace's connection is kept: {held:?}"
        );
        assert!(
            held.contains(&live_id),
            "a live namespace's connection was closed: {held:?}"
        );
        assert!(held.contains(&*new.alive), "{held:?}");

        // 20 queries at once on the pool: 20 connections, of which MAX_IDLE stay.
        let all_in = Arc::new(std::sync::Barrier::new(20));
        let queries: Vec<_> = (0..20)
            .map(|_| {
                let (new, all_in) = (new.clone(), all_in.clone());
                tokio::spawn(async move {
                    new.run(move |c| {
                        all_in.wait();
                        get(c)
                    })
                    .await
                })
            })
            .collect();
        for q in queries {
            assert_eq!(q.await.unwrap().unwrap(), 1);
        }
        assert_eq!(new.idle.lock().unwrap().len(), MAX_IDLE);
        // And one is used again, not opened anew: the idle ones stay as many.
        new.run(get).await.unwrap();
        assert_eq!(new.idle.lock().unwrap().len(), MAX_IDLE);
    }

    /// A read that finds the file locked on this thread's own connection (which never
    /// waits for a lock) is not refused: it moves to the pool, whose connections wait for
    /// the lock, and is answered once the lock goes. (Catches `is_busy` as false, or
    /// `run_here` not falling back: the client would be told "database is locked".)
    #[tokio::test]
    async fn a_read_that_finds_the_file_locked_waits_for_it_on_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        // Closed: its own connections would keep the lock below from being taken.
        namespace(dir.path(), &["a"]).await.close().await;
        let path = dir.path().join("ns.db");
        let pool = Pool::new(path.clone(), 0);
        let get = |c: &Connection| {
            c.query_row("SELECT value FROM kv WHERE key = 'a'", [], |r| {
                r.get::<_, Vec<u8>>(0)
            })
        };
        // Another connection takes the file for itself: no reader gets in.
        let locker = Connection::open(&path).unwrap();
        locker
            .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
            .unwrap();
        let read = tokio::spawn({
            let pool = pool.clone();
            async move { pool.run_here(get).await }
        });
        // The read moved to the pool: it holds one of its permits while it waits.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while pool.running.available_permits() == MAX_CONNECTIONS && !read.is_finished() {
            assert!(
                std::time::Instant::now() < deadline,
                "the read never reached the pool"
            );
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(!read.is_finished(), "{:?}", read.await);
        // Closing it lets go of the file (its WAL index is in its own memory: it cannot go
        // back to normal locking while open).
        drop(locker);
        assert_eq!(read.await.unwrap().unwrap(), b"v0");
    }

    #[tokio::test]
    async fn a_snapshot_comes_in_bounded_chunks_that_hold_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ["a", "b", "c", "d", "e", "f", "g"];
        let ns = namespace(dir.path(), &keys).await;
        let head = ns.head();
        let chunks = |after: Option<&'static str>, rows: usize, bytes: usize| {
            ns.read(move |c| {
                let mut out = Vec::new();
                snapshot(c, after, rows, bytes, |seq, crc, rows, done| {
                    out.push((seq, crc, rows, done));
                    true
                })?;
                Ok(out)
            })
        };
        let shape = |chunks: &[(Seq, u32, Vec<KvRow>, bool)]| -> Vec<(Vec<String>, bool)> {
            for (seq, crc, _, _) in chunks {
                assert_eq!((*seq, *crc), (head.seq, head.crc));
            }
            chunks
                .iter()
                .map(|(_, _, rows, done)| (rows.iter().map(|r| r.key.clone()).collect(), *done))
                .collect()
        };
        let keys_of = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();

        // By rows: 3 + 3 + 1.
        let by_rows = chunks(None, 3, usize::MAX).await.unwrap();
        assert_eq!(
            shape(&by_rows),
            vec![
                (keys_of(&["a", "b", "c"]), false),
                (keys_of(&["d", "e", "f"]), false),
                (keys_of(&["g"]), true),
            ]
        );
        let row = &by_rows[0].2[1];
        assert_eq!((row.value.as_slice(), row.seq), (&b"v1"[..], 2));

        // By bytes: each row is 3 bytes ("a" + "v0"); 5 bytes are reached at the second row.
        let by_bytes = chunks(None, usize::MAX, 5).await.unwrap();
        assert_eq!(
            shape(&by_bytes),
            vec![
                (keys_of(&["a", "b"]), false),
                (keys_of(&["c", "d"]), false),
                (keys_of(&["e", "f"]), false),
                (keys_of(&["g"]), true),
            ]
        );

        // Resumed after a key; a copy that fills its last chunk exactly ends with an empty one.
        let resumed = chunks(Some("d"), 3, usize::MAX).await.unwrap();
        assert_eq!(
            shape(&resumed),
            vec![(keys_of(&["e", "f", "g"]), false), (vec![], true)]
        );

        // A receiver that leaves stops the copy.
        let calls = ns
            .read(|c| {
                let mut calls = 0;
                snapshot(c, None, 2, usize::MAX, |_, _, _, _| {
                    calls += 1;
                    false
                })?;
                Ok(calls)
            })
            .await
            .unwrap();
        assert_eq!(calls, 1);
        ns.close().await;
    }

    /// A follower's batches: bounded by count and by bytes of keys and values, but an atomic
    /// group (`txn`) is never split, so a replica never applies half a request; past the head
    /// there is nothing.
    #[tokio::test]
    async fn entries_are_bounded_but_never_split_a_group() {
        let dir = tempfile::tempdir().unwrap();
        let ns = namespace(dir.path(), &["a"]).await;
        // seq 2..=4 are one request.
        ns.write(vec![put("b", b"v1"), put("c", b"v2"), put("d", b"v3")])
            .await
            .unwrap();
        ns.write(vec![put("e", b"v4")]).await.unwrap();
        ns.write(vec![Mutation::Delete { key: "a".into() }])
            .await
            .unwrap();
        let seqs = |from: Seq, count: usize, bytes: usize| {
            ns.read(move |c| {
                Ok(entries(c, from, count, bytes)?
                    .iter()
                    .map(|e| e.seq)
                    .collect::<Vec<_>>())
            })
        };
        assert_eq!(
            seqs(1, 100, usize::MAX).await.unwrap(),
            vec![1, 2, 3, 4, 5, 6]
        );
        assert_eq!(seqs(1, 2, usize::MAX).await.unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(seqs(5, 1, usize::MAX).await.unwrap(), vec![5]);
        // Each entry is 3 bytes ("a" + "v0"): 3 are reached after the first.
        assert_eq!(seqs(1, 100, 3).await.unwrap(), vec![1]);
        assert_eq!(seqs(2, 100, 4).await.unwrap(), vec![2, 3, 4]);
        assert_eq!(seqs(7, 100, usize::MAX).await.unwrap(), Vec::<Seq>::new());

        let all = ns.read(|c| entries(c, 1, 100, usize::MAX)).await.unwrap();
        assert_eq!(
            all.iter().map(|e| e.txn).collect::<Vec<_>>(),
            vec![1, 2, 2, 2, 5, 6]
        );
        assert_eq!(
            (all[2].op, all[2].key.as_str(), all[2].value.as_slice()),
            (Op::Put, "c", &b"v2"[..])
        );
        assert_eq!(
            (all[5].op, all[5].key.as_str(), all[5].value.as_slice()),
            (Op::Delete, "a", &b""[..])
        );
        ns.close().await;
    }

    /// `/stats` positions before any write, after writes, and after the oldest entries were
    /// pruned: the retained log is `oldest_seq..=head_seq`, `base_seq` just below it.
    #[tokio::test]
    async fn stats_report_the_retained_log_before_and_after_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let ns = namespace(dir.path(), &[]).await;
        let empty = ns.read(stats).await.unwrap();
        assert_eq!(
            (
                empty.keys,
                empty.wal_entries,
                empty.oldest_seq,
                empty.head_seq,
                empty.base_seq
            ),
            (0, 0, 0, 0, 0)
        );
        // A follower of a log that never had an entry starts at seq 1.
        assert_eq!(ns.read(oldest).await.unwrap(), 1);
        for (i, key) in ["a", "b", "c", "a", "d"].iter().enumerate() {
            ns.write(vec![put(key, format!("v{i}").as_bytes())])
                .await
                .unwrap();
        }
        let full = ns.read(stats).await.unwrap();
        assert_eq!(
            (
                full.keys,
                full.wal_entries,
                full.oldest_seq,
                full.head_seq,
                full.base_seq
            ),
            (4, 5, 1, 5, 0)
        );
        let pruned = ns
            .prune(Prune {
                upto: 2,
                older_than_ms: None,
                max_rows: 1000,
            })
            .await
            .unwrap();
        assert_eq!((pruned.deleted, pruned.base_seq), (2, 2));
        let st = ns.read(stats).await.unwrap();
        assert_eq!(
            (
                st.keys,
                st.wal_entries,
                st.oldest_seq,
                st.head_seq,
                st.base_seq
            ),
            (4, 3, 3, 5, 2)
        );
        assert_eq!(ns.read(oldest).await.unwrap(), 3);
        ns.close().await;
    }

    /// The crc a follower's position is checked against: seq 0 has crc 0, a retained entry
    /// its own, the base (the entry just below the oldest retained) the crc kept for it, and
    /// a pruned entry below the base or a seq past the head none.
    #[tokio::test]
    async fn crc_at_knows_retained_entries_the_base_and_seq_0_only() {
        let dir = tempfile::tempdir().unwrap();
        let ns = namespace(dir.path(), &["a", "b", "c", "d"]).await;
        let log = ns.read(|c| entries(c, 1, 100, usize::MAX)).await.unwrap();
        let crc = |seq: Seq| ns.read(move |c| crc_at(c, seq));
        assert_eq!(crc(0).await.unwrap(), Some(0));
        assert_eq!(crc(2).await.unwrap(), Some(log[1].crc));
        assert_ne!(log[1].crc, 0);
        assert_eq!(crc(5).await.unwrap(), None);
        ns.prune(Prune {
            upto: 2,
            older_than_ms: None,
            max_rows: 1000,
        })
        .await
        .unwrap();
        assert_eq!(crc(2).await.unwrap(), Some(log[1].crc), "the base");
        assert_eq!(crc(1).await.unwrap(), None, "pruned below the base");
        assert_eq!(crc(3).await.unwrap(), Some(log[2].crc));
        assert_eq!(crc(0).await.unwrap(), Some(0));
        ns.close().await;
    }

    /// A listing holds only keys with the prefix, after `after`, in key order, at most
    /// `limit` of them.
    #[tokio::test]
    async fn list_holds_the_prefixed_keys_after_the_cursor_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let ns = namespace(
            dir.path(),
            &["user/3", "a", "user/1", "user/2", "usez", "z"],
        )
        .await;
        let list = |prefix: &'static str, after: &'static str, limit: usize| {
            ns.read(move |c| {
                Ok(list(c, prefix, after, limit)?
                    .into_iter()
                    .map(|(k, v)| (k, v.value))
                    .collect::<Vec<_>>())
            })
        };
        let kv = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            list("user/", "", 10).await.unwrap(),
            kv(&[("user/1", "v2"), ("user/2", "v3"), ("user/3", "v0")])
        );
        assert_eq!(
            list("user/", "", 2).await.unwrap(),
            kv(&[("user/1", "v2"), ("user/2", "v3")])
        );
        assert_eq!(
            list("user/", "user/2", 10).await.unwrap(),
            kv(&[("user/3", "v0")])
        );
        assert_eq!(list("nope", "", 10).await.unwrap(), vec![]);
        ns.close().await;
    }
}
