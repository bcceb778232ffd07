//! The writer thread: the only owner of a namespace's read-write connection.
//!
//! Requests arrive on a channel. The thread takes everything queued, commits it as ONE SQLite
//! transaction (group commit: one fsync for many writers), publishes the new head, then answers
//! each request. Each request's entries are contiguous and atomic: a request that fails is
//! rolled back to its savepoint without disturbing the others in the group.

use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot, watch};

use super::{Head, StoreError};
use crate::log::{Op, Seq, chain_crc};

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
    /// Finish everything queued before this, then stop.
    Close { reply: oneshot::Sender<()> },
}

/// Caps on one group so a flood of writers cannot build an unbounded transaction.
const MAX_GROUP_REQUESTS: usize = 4096;
const MAX_GROUP_BYTES: usize = 32 * 1024 * 1024;

pub(crate) struct Writer {
    pub namespace: String,
    pub conn: Connection,
    pub head: Head,
    pub head_tx: watch::Sender<Head>,
    pub rx: mpsc::Receiver<Command>,
}

type Reply = oneshot::Sender<Result<Committed, StoreError>>;
type Pending = (Reply, Result<Committed, StoreError>);

impl Writer {
    /// Runs until a `Close` command arrives or every sender is gone.
    pub fn run(mut self) {
        let mut group: Vec<Command> = Vec::new();
        loop {
            let Some(first) = self.rx.blocking_recv() else {
                return;
            };
            group.push(first);
            let mut bytes = 0;
            while group.len() < MAX_GROUP_REQUESTS && bytes < MAX_GROUP_BYTES {
                match self.rx.try_recv() {
                    Ok(cmd) => {
                        if let Command::Write { mutations, .. } = &cmd {
                            bytes += mutations.iter().map(Mutation::weight).sum::<usize>();
                        }
                        group.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            let mut close = None;
            let mut writes = Vec::with_capacity(group.len());
            for cmd in group.drain(..) {
                match cmd {
                    Command::Write { mutations, reply } => writes.push((mutations, reply)),
                    // Commands after Close in the same group are answered below (their
                    // senders are dropped, which callers see as "shutting down").
                    Command::Close { reply } => {
                        close = Some(reply);
                        break;
                    }
                }
            }
            if !writes.is_empty() {
                self.commit_group(writes);
            }
            if let Some(reply) = close {
                let _ = reply.send(());
                return;
            }
        }
    }

    fn commit_group(&mut self, writes: Vec<(Vec<Mutation>, Reply)>) {
        let ts_ms = now_ms();
        let start = self.head;
        let mut pending: Vec<Pending> = Vec::with_capacity(writes.len());
        let result = (|| -> rusqlite::Result<Head> {
            let tx = self
                .conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut head = start;
            for (mutations, reply) in writes {
                // Cached statements: parsing these per request costs as much as the writes.
                tx.prepare_cached("SAVEPOINT request")?.execute([])?;
                match append(&tx, head, &mutations, ts_ms) {
                    Ok(new_head) => {
                        tx.prepare_cached("RELEASE request")?.execute([])?;
                        let committed = Committed {
                            first_seq: head.seq + 1,
                            last_seq: new_head.seq,
                            ts_ms,
                        };
                        head = new_head;
                        pending.push((reply, Ok(committed)));
                    }
                    Err(e) => {
                        tx.execute_batch("ROLLBACK TO request; RELEASE request")?;
                        let key = mutations.first().map(Mutation::key).unwrap_or("");
                        tracing::warn!(namespace = %self.namespace, key, error = %e, "write rolled back; other writes in its group are unaffected");
                        pending.push((reply, Err(StoreError::Sqlite(e.to_string()))));
                    }
                }
            }
            tx.commit()?;
            Ok(head)
        })();
        match result {
            Ok(head) => {
                self.head = head;
                if head.seq != start.seq {
                    self.head_tx.send_replace(head);
                }
                for (reply, r) in pending {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                // Nothing of this group is durable; every writer in it learns so.
                tracing::error!(namespace = %self.namespace, error = %e, "group commit failed; its writes are not stored");
                for (reply, _) in pending {
                    let _ = reply.send(Err(StoreError::Sqlite(e.to_string())));
                }
            }
        }
    }
}

/// Appends one request's mutations after `head`, updating `kv` to match.
fn append(
    conn: &Connection,
    head: Head,
    mutations: &[Mutation],
    ts_ms: i64,
) -> rusqlite::Result<Head> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO wal_log (seq, txn, op, key, value, ts_ms, crc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut put = conn.prepare_cached(
        "INSERT INTO kv (key, value, seq, ts_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, seq = excluded.seq, ts_ms = excluded.ts_ms",
    )?;
    let mut delete = conn.prepare_cached("DELETE FROM kv WHERE key = ?1")?;
    let txn = head.seq + 1;
    let mut head = head;
    for m in mutations {
        let seq = head.seq + 1;
        let (op, key, value): (Op, &str, Option<&[u8]>) = match m {
            Mutation::Put { key, value } => (Op::Put, key, Some(value)),
            Mutation::Delete { key } => (Op::Delete, key, None),
        };
        let crc = chain_crc(head.crc, seq, txn, op, key, value.unwrap_or(&[]), ts_ms);
        insert.execute(params![
            seq,
            txn,
            op.as_str(),
            key,
            value,
            ts_ms,
            crc as i64
        ])?;
        match value {
            Some(v) => put.execute(params![key, v, seq, ts_ms])?,
            None => delete.execute([key])?,
        };
        head = Head { seq, crc };
    }
    Ok(head)
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
