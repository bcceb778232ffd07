//! Snapshot bootstrap on the receiving side: a staging file that collects a snapshot as it
//! arrives, and the one transaction that installs it.
//!
//! A snapshot is fetched into `<base_dir>/<namespace>.db.staging`, a scratch SQLite file, chunk
//! by chunk. If the stream breaks, the next `Snapshot` call asks for the keys after the last
//! one staged, so a download resumes instead of starting over, even across a restart of the
//! follower.
//!
//! # Fuzzy snapshots (as ZooKeeper's)
//!
//! Each `Snapshot` stream is consistent in itself, at the seq its first chunk names, but a
//! resumed download is made of several streams read at different seqs `s0 <= s1 <= ... <= sn`.
//! The rows staged are then a *fuzzy* copy: each one is right as of the stream it came from.
//! Replaying the log entries `(s0, sn]` over them gives exactly the state at `sn` (or later):
//! a key last written at or before `s0` has the same value in every stream, and a key written
//! after `s0` gets its last value from the replay, whatever the staged row says. So the
//! staging file also keeps those entries, and the install replays them, in the same
//! transaction, after the chain check.
//!
//! The installed file has `meta.base_seq`/`base_crc` = `s0` and its crc, `wal_log` holds the
//! replayed entries, and `kv` equals the upstream's at the last of them.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::StoreError;
use super::reader::KvRow;
use crate::log::{Entry, Op, Seq};

/// Where a namespace's snapshot is staged while it downloads.
pub fn staging_path(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}.staging", db.display()))
}

/// What has been staged so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// The upstream log the snapshot comes from; `None` before the first chunk.
    pub log_id: Option<String>,
    /// Seq and crc the first stream was read at (`s0`).
    pub start: (Seq, u32),
    /// Seq and crc the latest stream was read at (`sn`).
    pub end: (Seq, u32),
    /// The last key staged: a resumed stream starts after it.
    pub last_key: Option<String>,
    /// Every row has arrived (the last chunk had `done`).
    pub rows_done: bool,
    pub rows: i64,
    pub bytes: i64,
    /// Last log entry staged for the replay (`start.0` when none), and its crc.
    pub replayed_to: Seq,
    pub replayed_crc: u32,
}

impl Progress {
    /// Everything the install needs is staged: all rows, and the entries up to `end`.
    pub fn complete(&self) -> bool {
        self.rows_done && self.replayed_to >= self.end.0
    }
}

/// A staging file, open for writing.
pub struct Staging {
    /// `None` only while lent to a blocking thread (see [`Staging::lent`]).
    conn: Option<Connection>,
    path: PathBuf,
}

const STAGING_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, seq INTEGER NOT NULL, ts_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (seq INTEGER PRIMARY KEY, txn INTEGER NOT NULL, op TEXT NOT NULL, key TEXT NOT NULL, value BLOB, ts_ms INTEGER NOT NULL, crc INTEGER NOT NULL);
";

impl Staging {
    fn conn(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("the staging file is not lent out")
    }

    fn conn_mut(&mut self) -> &mut Connection {
        self.conn
            .as_mut()
            .expect("the staging file is not lent out")
    }

    /// Opens (creating if needed) the staging file at `path`.
    pub fn open(path: &Path) -> Result<Staging, StoreError> {
        let bad = |e: rusqlite::Error| StoreError::BadFile {
            path: path.to_owned(),
            reason: format!("snapshot staging file: {e}"),
        };
        let conn = Connection::open(path).map_err(bad)?;
        // A process crash loses nothing committed (WAL + NORMAL); a power loss may lose the
        // last chunks, which are then fetched again.
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"))
            .and_then(|_| conn.execute_batch(STAGING_SCHEMA))
            .map_err(bad)?;
        Ok(Staging {
            conn: Some(conn),
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A stand-in with no connection, for the moment a `Staging` is lent to a blocking thread.
    pub fn lent() -> Staging {
        Staging {
            conn: None,
            path: PathBuf::new(),
        }
    }

    pub fn progress(&self) -> Result<Progress, StoreError> {
        Ok(progress(self.conn(), "")?)
    }

    /// Forgets everything staged (another log, or a replay the upstream can no longer give).
    pub fn reset(&self) -> Result<(), StoreError> {
        self.conn().execute_batch(
            "BEGIN; DELETE FROM kv; DELETE FROM entries; DELETE FROM meta; COMMIT;",
        )?;
        Ok(())
    }

    /// Stages one chunk of a stream read at (`seq`, `crc`) of log `log_id`.
    pub fn add_chunk(
        &mut self,
        log_id: &str,
        seq: Seq,
        crc: u32,
        rows: &[KvRow],
        done: bool,
    ) -> Result<(), StoreError> {
        let tx = self.conn_mut().transaction()?;
        let first = progress(&tx, "")?.log_id.is_none();
        let set = |name: &str, value: String| -> rusqlite::Result<()> {
            tx.prepare_cached(
                "INSERT INTO meta (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )?
            .execute(params![name, value])
            .map(|_| ())
        };
        if first {
            set("log_id", log_id.to_owned())?;
            set("start_seq", seq.to_string())?;
            set("start_crc", crc.to_string())?;
            set("replayed_to", seq.to_string())?;
            set("replayed_crc", crc.to_string())?;
        }
        set("end_seq", seq.to_string())?;
        set("end_crc", crc.to_string())?;
        let mut bytes = 0;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO kv (key, value, seq, ts_ms) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, seq = excluded.seq, ts_ms = excluded.ts_ms",
            )?;
            for r in rows {
                insert.execute(params![r.key, r.value, r.seq, r.ts_ms])?;
                bytes += (r.key.len() + r.value.len()) as i64;
            }
        }
        if let Some(last) = rows.last() {
            set("last_key", last.key.clone())?;
        }
        let p = progress(&tx, "")?;
        set("rows", (p.rows + rows.len() as i64).to_string())?;
        set("bytes", (p.bytes + bytes).to_string())?;
        if done {
            set("rows_done", "1".to_owned())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Stages log entries for the replay (consecutive, after the last staged).
    pub fn add_entries(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let tx = self.conn_mut().transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO entries (seq, txn, op, key, value, ts_ms, crc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for e in entries {
                insert.execute(params![
                    e.seq,
                    e.txn,
                    e.op.as_str(),
                    e.key,
                    e.value,
                    e.ts_ms,
                    e.crc as i64
                ])?;
            }
        }
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE name = 'replayed_to'",
            [last.seq.to_string()],
        )?;
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE name = 'replayed_crc'",
            [last.crc.to_string()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Closes and deletes the staging file (and its -wal/-shm).
    pub fn remove(mut self) {
        let path = self.path.clone();
        drop(self.conn.take());
        remove_files(&path);
    }
}

/// Deletes a staging file and its WAL companions; missing files are fine.
pub fn remove_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// Reads the staging meta; `schema` is "" for the main database or "staging." when attached.
fn progress(conn: &Connection, schema: &str) -> rusqlite::Result<Progress> {
    let get = |name: &str| -> rusqlite::Result<Option<String>> {
        conn.query_row(
            &format!("SELECT value FROM {schema}meta WHERE name = ?1"),
            [name],
            |r| r.get(0),
        )
        .optional()
    };
    let num = |name: &str| -> rusqlite::Result<i64> {
        Ok(get(name)?.and_then(|v| v.parse().ok()).unwrap_or(0))
    };
    Ok(Progress {
        log_id: get("log_id")?,
        start: (num("start_seq")?, num("start_crc")? as u32),
        end: (num("end_seq")?, num("end_crc")? as u32),
        last_key: get("last_key")?,
        rows_done: num("rows_done")? == 1,
        rows: num("rows")?,
        bytes: num("bytes")?,
        replayed_to: num("replayed_to")?,
        replayed_crc: num("replayed_crc")? as u32,
    })
}

/// What an install did.
#[derive(Debug)]
pub struct Installed {
    pub log_id: String,
    /// seq and crc of the entry the snapshot starts after (`meta.base_seq`/`base_crc`).
    pub base: (Seq, u32),
    /// seq and crc of the last entry replayed: the new head.
    pub head: (Seq, u32),
    pub keys: i64,
    /// The entries replayed over the staged rows, now the whole of `wal_log`.
    pub replayed: Vec<Entry>,
}

/// Replaces `kv`, `wal_log` and the log's identity in `conn` (a namespace file's read-write
/// connection) with the snapshot staged at `staging`, in ONE transaction: the old rows go, the
/// staged rows come in, `meta` takes the snapshot's log_id and base, and the staged entries are
/// replayed after checking that they continue the base's crc chain. Any failure changes nothing.
pub fn install(conn: &Connection, staging: &Path) -> Result<Installed, StoreError> {
    conn.execute(
        "ATTACH DATABASE ?1 AS staging",
        [staging.display().to_string()],
    )?;
    let result = install_attached(conn);
    // Whatever happened, the transaction is over (committed or rolled back) by now.
    let detached = conn.execute("DETACH DATABASE staging", []);
    let installed = result?;
    detached?;
    Ok(installed)
}

fn install_attached(conn: &Connection) -> Result<Installed, StoreError> {
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    let p = progress(&tx, "staging.")?;
    let Some(log_id) = p.log_id.clone().filter(|_| p.complete()) else {
        return Err(StoreError::Diverged(format!(
            "the staged snapshot is incomplete (rows done: {}, entries to seq {} of {})",
            p.rows_done, p.replayed_to, p.end.0
        )));
    };
    tx.execute_batch(
        "DELETE FROM main.kv;
         DELETE FROM main.wal_log;
         INSERT INTO main.kv (key, value, seq, ts_ms) SELECT key, value, seq, ts_ms FROM staging.kv;",
    )?;
    super::schema::set_meta(&tx, "log_id", &log_id)?;
    super::schema::set_base(&tx, p.start.0, p.start.1)?;
    let mut head = p.start;
    let mut replayed = Vec::new();
    {
        let mut stmt = tx.prepare(
            "SELECT seq, txn, op, key, value, ts_ms, crc FROM staging.entries WHERE seq > ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query([p.start.0])?;
        while let Some(r) = rows.next()? {
            let op: String = r.get(2)?;
            let e = Entry {
                seq: r.get(0)?,
                txn: r.get(1)?,
                op: Op::parse(&op).ok_or_else(|| {
                    StoreError::Diverged(format!("staged entry has an unknown op {op:?}"))
                })?,
                key: r.get(3)?,
                value: r.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default(),
                ts_ms: r.get(5)?,
                crc: r.get::<_, i64>(6)? as u32,
            };
            if e.seq != head.0 + 1 || e.expected_crc(head.1) != e.crc {
                return Err(StoreError::Diverged(format!(
                    "staged entry {} does not continue the snapshot's log after seq {}",
                    e.seq, head.0
                )));
            }
            super::writer::store_entry(&tx, &e)?;
            head = (e.seq, e.crc);
            replayed.push(e);
        }
    }
    if head.0 < p.end.0 {
        return Err(StoreError::Diverged(format!(
            "the staged entries end at seq {}, the snapshot needs them up to {}",
            head.0, p.end.0
        )));
    }
    let keys = tx.query_row("SELECT COUNT(*) FROM main.kv", [], |r| r.get(0))?;
    tx.commit()?;
    Ok(Installed {
        log_id,
        base: p.start,
        head,
        keys,
        replayed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Synchronous;
    use crate::log::chain_crc;
    use crate::store::schema;

    fn entry(seq: Seq, prev_crc: u32, key: &str, value: &[u8]) -> Entry {
        let crc = chain_crc(prev_crc, seq, seq, Op::Put, key, value, 7);
        Entry {
            seq,
            txn: seq,
            op: Op::Put,
            key: key.into(),
            value: value.into(),
            ts_ms: 7,
            crc,
        }
    }

    /// A namespace file `ns.db` in `dir`, of log `00…0`, opened as its writer.
    fn namespace_file(dir: &Path) -> Connection {
        let path = dir.join("ns.db");
        schema::open_writer(&path, "ns", Synchronous::Full, || "0".repeat(32))
            .unwrap()
            .0
    }

    /// kv, the seqs of wal_log, the base and the log_id.
    type State = (Vec<(String, Vec<u8>)>, Vec<Seq>, (Seq, u32), String);

    fn state(conn: &Connection) -> State {
        let kv = conn
            .prepare("SELECT key, value FROM kv ORDER BY key")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let seqs = conn
            .prepare("SELECT seq FROM wal_log ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let log_id = conn
            .query_row("SELECT value FROM meta WHERE name = 'log_id'", [], |r| {
                r.get(0)
            })
            .unwrap();
        (kv, seqs, schema::base(conn).unwrap(), log_id)
    }

    /// A fuzzy snapshot: rows read at seq 2 and (resumed) at seq 3, and the entry 3 that makes
    /// them exact.
    fn stage(dir: &Path, third_crc_ok: bool) -> PathBuf {
        let path = dir.join("ns.db.staging");
        let mut s = Staging::open(&path).unwrap();
        let e1 = entry(1, 0, "a", b"1");
        let e2 = entry(2, e1.crc, "b", b"2");
        let mut e3 = entry(3, e2.crc, "a", b"3");
        if !third_crc_ok {
            e3.crc ^= 1;
        }
        let row = |k: &str, v: &[u8], seq| KvRow {
            key: k.into(),
            value: v.into(),
            seq,
            ts_ms: 7,
        };
        let id = "f".repeat(32);
        s.add_chunk(&id, 2, e2.crc, &[row("a", b"1", 1)], false)
            .unwrap();
        s.add_chunk(&id, 3, e3.crc, &[row("b", b"2", 2)], true)
            .unwrap();
        assert!(
            !s.progress().unwrap().complete(),
            "entry 3 is not staged yet"
        );
        s.add_entries(&[e3]).unwrap();
        assert!(s.progress().unwrap().complete());
        path
    }

    #[test]
    fn an_install_replays_the_log_over_fuzzy_rows() {
        let dir = tempfile::tempdir().unwrap();
        let conn = namespace_file(dir.path());
        let staging = stage(dir.path(), true);
        let done = install(&conn, &staging).unwrap();
        assert_eq!(done.base.0, 2);
        assert_eq!(done.head.0, 3);
        let (kv, seqs, base, log_id) = state(&conn);
        assert_eq!(
            kv,
            [("a".into(), b"3".to_vec()), ("b".into(), b"2".to_vec())],
            "entry 3 overrides the row read before it"
        );
        assert_eq!(seqs, [3]);
        assert_eq!(base.0, 2);
        assert_eq!(log_id, "f".repeat(32));
    }

    /// A namespace that installs a snapshot publishes the snapshot's head with a new epoch
    /// (what tells its own tail streams that their positions belong to the replaced history),
    /// and serves the snapshot's log and log_id from then on.
    #[tokio::test]
    async fn a_namespace_that_installs_a_snapshot_publishes_a_new_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let ns = crate::store::Namespace::open(dir.path(), "ns", Synchronous::Full).unwrap();
        ns.write(vec![crate::store::Mutation::Put {
            key: "old".into(),
            value: b"x".to_vec(),
        }])
        .await
        .unwrap();
        let mut heads = ns.subscribe();
        heads.borrow_and_update();
        assert_eq!(ns.head().epoch, 0);
        let staging = stage(dir.path(), true);
        let head = ns.install_snapshot(&staging).await.unwrap();
        assert_eq!((head.seq, head.epoch), (3, 1));
        assert!(heads.has_changed().unwrap());
        assert_eq!(*heads.borrow_and_update(), head);
        let log = ns.entries_from(1, 10, usize::MAX).await.unwrap();
        assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
        assert_eq!(ns.log_id().unwrap().to_string(), "f".repeat(32));
        ns.close().await;
    }

    /// A staging file whose meta says its replay is done but whose entries stop short of the
    /// snapshot's seq (entry 3 lost) is refused: installed, its rows would be the fuzzy read
    /// that entry 3 makes exact. (Catches `head.0 < p.end.0` as `>`.)
    #[test]
    fn a_staged_replay_that_stops_short_of_the_snapshot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = namespace_file(dir.path());
        let staging = stage(dir.path(), true);
        Connection::open(&staging)
            .unwrap()
            .execute("DELETE FROM entries WHERE seq = 3", [])
            .unwrap();
        let before = state(&conn);
        let err = install(&conn, &staging).unwrap_err();
        assert!(
            err.to_string()
                .contains("the staged entries end at seq 2, the snapshot needs them up to 3"),
            "{err}"
        );
        assert_eq!(state(&conn), before);
    }

    #[test]
    fn a_failed_install_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let conn = namespace_file(dir.path());
        let old = entry(1, 0, "old", b"x");
        crate::store::writer::store_entry(&conn, &old).unwrap();
        let before = state(&conn);
        // The last step of the install (replaying a staged entry) fails its chain check: the
        // rows already replaced by then must come back.
        let staging = stage(dir.path(), false);
        let err = install(&conn, &staging).unwrap_err();
        assert!(err.to_string().contains("does not continue"), "{err}");
        assert_eq!(state(&conn), before);
        // The connection is usable and the staging file detached.
        assert!(conn.execute("DETACH DATABASE staging", []).is_err());
    }
}
