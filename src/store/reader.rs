//! Read-only access: a small pool of read-only connections, and the queries run on them.
//!
//! SQLite in WAL mode lets readers run beside the writer; each query sees the last commit
//! that finished before it started.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension};

use super::StoreError;
use crate::log::Seq;

/// Idle connections kept for reuse; more are opened under load and closed when returned.
const MAX_IDLE: usize = 16;

#[derive(Clone)]
pub(crate) struct Pool {
    path: Arc<PathBuf>,
    idle: Arc<Mutex<Vec<Connection>>>,
}

impl Pool {
    pub fn new(path: PathBuf) -> Pool {
        Pool {
            path: Arc::new(path),
            idle: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Runs `f` on a pooled connection (blocking: call from a blocking context).
    pub fn with<R>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StoreError> {
        let conn = self.idle.lock().unwrap().pop();
        let conn = match conn {
            Some(c) => c,
            None => super::schema::open_reader(&self.path)?,
        };
        let out = f(&conn);
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
        Ok(out?)
    }
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
    /// Oldest seq still in wal_log (0 when empty).
    pub oldest_seq: Seq,
    pub head_seq: Seq,
    pub file_bytes: u64,
}

pub fn stats(conn: &Connection) -> rusqlite::Result<Stats> {
    let keys = conn.query_row("SELECT COUNT(*) FROM kv", [], |r| r.get(0))?;
    let (wal_entries, oldest_seq, head_seq) = conn.query_row(
        "SELECT COUNT(*), COALESCE(MIN(seq), 0), COALESCE(MAX(seq), 0) FROM wal_log",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(Stats {
        keys,
        wal_entries,
        oldest_seq,
        head_seq,
        file_bytes: 0,
    })
}
