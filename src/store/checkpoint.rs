//! Background checkpoints: the WAL is copied into the database file by a thread of ours, not
//! inside a commit.
//!
//! SQLite's automatic checkpoint runs in the commit that crosses its threshold, so one writer
//! in a thousand pages waits for the copy and an fsync of the database file (a latency spike
//! on every client in that group). Here, as LiteFS and Litestream do, the writer's connection
//! has it off; a WAL hook tells this thread when the WAL holds `checkpoint_pages`, and the
//! thread runs a PASSIVE checkpoint on its own connection, beside the writer, never blocking
//! it. Once a checkpoint has copied everything, the writer's next transaction starts the WAL
//! over from its beginning, so its size stays about `checkpoint_pages` pages. After a second
//! without new work the WAL is truncated to zero (TRUNCATE, which gives up at once if a
//! transaction is running), so an idle node leaves no large `-wal` file behind.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, OpenFlags};

use super::writer::CommitCounters;

/// How long without new work before the WAL is truncated.
const IDLE: Duration = Duration::from_secs(1);
/// A WAL this many times `checkpoint_pages` long, even though checkpoints keep up, means the
/// writer never found it fully copied (it never idles): a RESTART checkpoint starts it over.
const RESTART_AFTER: i64 = 4;
/// How long a RESTART checkpoint waits for the writer to finish its transaction and for readers
/// of old frames. It holds the write lock while it waits, so every write waits with it: keep
/// it short.
const RESTART_WAIT: Duration = Duration::from_millis(100);
/// After a RESTART that could not finish (a long reader, such as a Snapshot stream, still
/// reads old frames), how long before the next try: writes stall at most `RESTART_WAIT` per
/// this much time, instead of at every commit for as long as the reader lasts.
const RESTART_BACKOFF: Duration = Duration::from_secs(2);

/// Installs the hook on the writer's connection and returns what the checkpoint thread needs.
///
/// The thread is woken each time the WAL has grown by `pages` frames since the last wake, not
/// after every commit once the WAL holds `pages`: a checkpoint copies what is there and syncs
/// the database file, so waking it per commit doubled the syncs on the disk. (Under load the
/// writer's next transaction usually starts before the checkpoint has copied everything, so
/// the WAL does not start over and stays over `pages`: with a per-commit wake, one writer's
/// 1,400 commits/s came with ~1,000 checkpoints/s.)
pub(crate) fn install(conn: &mut Connection, pages: u32) -> rusqlite::Result<Receiver<()>> {
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    let pages = i32::try_from(pages.max(1)).unwrap_or(i32::MAX);
    // Frames in the WAL at the last wake.
    let mut woken_at = 0;
    conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, in_wal: i32| {
        if in_wal < woken_at {
            // The WAL started over.
            woken_at = 0;
        }
        if in_wal - woken_at >= pages {
            woken_at = in_wal;
            signal(&tx);
        }
        Ok(())
    }))?;
    Ok(rx)
}

/// Wakes the checkpoint thread; a wake already pending is enough.
fn signal(tx: &SyncSender<()>) {
    match tx.try_send(()) {
        Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
    }
}

/// The checkpoint thread: runs until the writer's connection (and its hook) is gone.
/// Each checkpoint that ran is counted in `counters.checkpoints`.
pub(crate) fn run(
    namespace: String,
    path: PathBuf,
    pages: u32,
    wake: Receiver<()>,
    counters: Arc<CommitCounters>,
) {
    let checkpoint = |conn: &Connection, namespace: &str, mode| {
        let (log, done) = checkpoint(conn, namespace, mode);
        if log >= 0 {
            counters.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        (log, done)
    };
    let conn = match Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(namespace = %namespace, error = %e, "cannot open the checkpoint connection; the WAL will grow until restart");
            return;
        }
    };
    // Never wait for a lock: PASSIVE takes none a writer needs, and TRUNCATE is only worth
    // doing when nothing else runs.
    let _ = conn.busy_timeout(Duration::ZERO);
    // A connection that has not read the file yet does not know it is in WAL mode, and its
    // checkpoints would do nothing.
    if let Err(e) = conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        tracing::error!(namespace = %namespace, error = %e, "cannot read the file for checkpoints; the WAL will grow until restart");
        return;
    }
    let mut dirty = false;
    let mut restart_after = std::time::Instant::now();
    loop {
        match wake.recv_timeout(IDLE) {
            Ok(()) => {
                let (log, _) = checkpoint(&conn, &namespace, CheckpointMode::PASSIVE);
                dirty = true;
                if i64::from(log) > i64::from(pages) * RESTART_AFTER
                    && std::time::Instant::now() >= restart_after
                {
                    // The writer never starts a transaction while the WAL is fully copied
                    // (continuous load), so it never starts the WAL over: take the write lock
                    // between two groups, copy what is left (little: PASSIVE just copied the
                    // rest) and make the next transaction start the WAL over.
                    let _ = conn.busy_timeout(RESTART_WAIT);
                    let (log, done) = checkpoint(&conn, &namespace, CheckpointMode::RESTART);
                    let _ = conn.busy_timeout(Duration::ZERO);
                    if log < 0 || done < log {
                        restart_after = std::time::Instant::now() + RESTART_BACKOFF;
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) if dirty => {
                // Busy (a transaction started meanwhile): try again after the next idle second.
                let (log, done) = checkpoint(&conn, &namespace, CheckpointMode::TRUNCATE);
                dirty = !(log == 0 && done == 0);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One checkpoint: the WAL's frames, and how many of them are in the database file ((-1, -1)
/// when it could not run).
fn checkpoint(conn: &Connection, namespace: &str, mode: CheckpointMode) -> (i32, i32) {
    match conn.wal_checkpoint_v2(None::<&str>, mode) {
        Ok((log, done)) => {
            tracing::trace!(namespace, log, done, "checkpoint");
            (log, done)
        }
        Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => (-1, -1),
        Err(e) => {
            tracing::warn!(namespace, error = %e, "checkpoint failed; retried at the next one");
            (-1, -1)
        }
    }
}
