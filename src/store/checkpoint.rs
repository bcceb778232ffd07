//! Background checkpoints: the WAL is copied into the database file by a thread of ours, not
//! inside a commit.
//!
//! SQLite's automatic checkpoint runs in the commit that crosses its threshold, so one writer
//! in a thousand pages waits for the copy and an fsync of the database file (a latency spike
//! on every client in that group). Here, as LiteFS and Litestream do, the writer's connection
//! has it off; a WAL hook tells this thread when the WAL holds `checkpoint_pages`, and the
//! thread runs a PASSIVE checkpoint on its own connection, beside the writer, never blocking
//! it. Once a checkpoint has copied everything, the writer's next transaction starts the WAL
//! over from its beginning, so with pauses between writes its size stays about
//! `checkpoint_pages` pages (under continuous writes, about 4x: see below). After a second
//! without new work the thread copies whatever is left, so an idle node's database file is
//! complete. The `-wal` file keeps its size: the next writes start it over and overwrite
//! blocks already on disk, and a sync of those costs about half of one that grows the file
//! (the file's size and new blocks go through the file system's journal; docs/performance.md
//! has the traces). A `-wal` file larger than [`KEEP_FRAMES_TIMES`] times `checkpoint_pages`
//! frames (a reader held the WAL back, or a huge group commit) is truncated to zero instead
//! (TRUNCATE, which gives up at once if a transaction is running), so an idle node never
//! keeps a large one.
//!
//! Under continuous writes the next transaction has usually begun before the thread's copy
//! ends, and SQLite starts the WAL over only when a write transaction begins with it fully
//! copied. So once the WAL is [`HOOK_COPIES_AFTER`] times `checkpoint_pages` long, the hook itself
//! copies what is left, on the writer's connection, right after that commit: PASSIVE, so it
//! never waits for a lock or a reader; the next transaction then begins with the WAL fully
//! copied and starts it over (unless a reader still reads old frames, such as a Snapshot
//! stream: then the WAL grows while that reader lasts, and the hook copies again every
//! `checkpoint_pages`). One commit in 4x `checkpoint_pages` pays for copying the few frames
//! the thread had not, and a sync of the database file.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, OpenFlags};

use super::writer::CommitCounters;

/// How long without new work before the WAL is truncated.
const IDLE: Duration = Duration::from_secs(1);
/// A WAL this many times `checkpoint_pages` long, even though checkpoints keep up, means the
/// writer never found it fully copied (it never idles): the hook copies the rest itself.
const HOOK_COPIES_AFTER: i32 = 4;

/// An idle node keeps a `-wal` file of up to this many times `checkpoint_pages` frames (twice
/// the size it reaches under continuous writes) for the next writes to overwrite; a larger
/// one is truncated.
const KEEP_FRAMES_TIMES: u64 = 2 * HOOK_COPIES_AFTER as u64;
/// The WAL's header and each frame's, in bytes.
const WAL_HEADER_BYTES: u64 = 32;
const FRAME_HEADER_BYTES: u64 = 24;

/// The checkpoint thread copies at least `checkpoint_pages / MIN_COPY_DIVISOR` frames at a
/// time. Woken by every commit, beside a lone writer it copied the 2-4 frames of each commit
/// and synced the database file for them: two more syncs per commit sharing the disk with
/// the writer's. With a quarter of `checkpoint_pages` (250 frames, ~1 MB, by default) one
/// writer did ~10% more writes/s, and the write tail at 5,000 writes/s was no worse (copying
/// all of `checkpoint_pages` at once was: see below; docs/performance.md has the runs).
const MIN_COPY_DIVISOR: i32 = 4;

/// Installs the hook on the writer's connection and returns what the checkpoint thread needs.
///
/// While the WAL holds `checkpoint_pages` or more, every commit that leaves a quarter of them
/// uncopied wakes the thread (a wake already pending is enough), so under load it copies
/// continuously, ~1 MB at a time by default.
/// Waking it only once per `checkpoint_pages` of growth was tried: half the checkpoints, but
/// each copied ~4 MB and synced it at once, and the writer's own syncs queued behind that one:
/// write p99.9 at 5,000 writes/s was over 20 ms in 8 runs of 20 (up to 117 ms), against
/// 7.4-11.6 ms in every one of 10 with a wake per commit (see docs/performance.md).
pub(crate) fn install(
    conn: &mut Connection,
    namespace: &str,
    pages: u32,
    counters: Arc<CommitCounters>,
) -> rusqlite::Result<Wake> {
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
    let copied = Arc::new(AtomicI32::new(0));
    let thread_copied = copied.clone();
    let pages = i32::try_from(pages.max(1)).unwrap_or(i32::MAX);
    let namespace = namespace.to_owned();
    // Frames in the WAL when the hook last copied it itself.
    let mut copied_at = 0;
    conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, in_wal: i32| {
        if in_wal < copied_at {
            // The WAL started over.
            copied_at = 0;
        }
        if in_wal >= pages.saturating_mul(HOOK_COPIES_AFTER) && in_wal - copied_at >= pages {
            // See the module's doc. Once per `pages` at most: while a reader keeps the WAL
            // from starting over, the thread does the copying.
            match wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                Ok(_) => {
                    copied_at = in_wal;
                    counters.checkpoints.fetch_add(1, Ordering::Relaxed);
                }
                // The thread is copying: try again after the next commit.
                Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {}
                Err(e) => {
                    copied_at = in_wal;
                    tracing::warn!(namespace = %namespace, error = %e, "checkpoint failed; retried at the next one");
                }
            }
        } else if wakes_thread(in_wal, copied.load(Ordering::Relaxed), pages) {
            signal(&tx);
        }
        Ok(())
    }))?;
    Ok(Wake {
        rx,
        copied: thread_copied,
        pages,
    })
}

/// Whether a commit that left `in_wal` frames in the WAL wakes the checkpoint thread, whose
/// last checkpoint had copied `copied` frames: once the WAL holds `pages` frames, and there
/// are at least a quarter of `pages` new frames to copy ([`MIN_COPY_DIVISOR`]). A `copied`
/// above `in_wal` is from before the WAL started over: everything in it is new.
fn wakes_thread(in_wal: i32, copied: i32, pages: i32) -> bool {
    let copied = if copied > in_wal { 0 } else { copied };
    in_wal >= pages && in_wal - copied >= (pages / MIN_COPY_DIVISOR).max(1)
}

/// What the checkpoint thread is woken by, and where it says how far it copied.
pub(crate) struct Wake {
    rx: Receiver<()>,
    copied: Arc<AtomicI32>,
    /// `checkpoint_pages`.
    pages: i32,
}

/// Wakes the checkpoint thread; a wake already pending is enough.
fn signal(tx: &SyncSender<()>) {
    match tx.try_send(()) {
        Ok(()) | Err(TrySendError::Full(())) | Err(TrySendError::Disconnected(())) => {}
    }
}

/// The checkpoint thread: runs until the writer's connection (and its hook) is gone.
/// Each checkpoint that ran is counted in `counters.checkpoints`.
pub(crate) fn run(namespace: String, path: PathBuf, wake: Wake, counters: Arc<CommitCounters>) {
    let Wake {
        rx: wake,
        copied,
        pages,
    } = wake;
    let counted = |conn: &Connection, namespace: &str, mode| {
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
    let page_size = conn
        .pragma_query_value(None, "page_size", |r| r.get::<_, i64>(0))
        .unwrap_or(4096) as u64;
    let keep_bytes = kept_wal_bytes(pages, page_size);
    let wal = {
        let mut name = path.clone().into_os_string();
        name.push("-wal");
        PathBuf::from(name)
    };
    let mut dirty = false;
    loop {
        match wake.recv_timeout(IDLE) {
            Ok(()) => {
                let (_, done) = counted(&conn, &namespace, CheckpointMode::PASSIVE);
                if done >= 0 {
                    copied.store(done, Ordering::Relaxed);
                }
                dirty = true;
            }
            Err(RecvTimeoutError::Timeout) if dirty => {
                // Everything copied, and the -wal file kept for the next writes to overwrite,
                // unless it grew too large (see the module's doc). Busy (a transaction started
                // meanwhile): try again after the next idle second.
                let large = std::fs::metadata(&wal).map_or(0, |m| m.len()) > keep_bytes;
                let mode = if large {
                    CheckpointMode::TRUNCATE
                } else {
                    CheckpointMode::PASSIVE
                };
                let (log, done) = counted(&conn, &namespace, mode);
                if done >= 0 {
                    copied.store(done, Ordering::Relaxed);
                }
                dirty = !(log >= 0 && done == log);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The largest `-wal` file an idle node keeps: [`KEEP_FRAMES_TIMES`] times `pages` frames of
/// `page_size` bytes, with their headers.
fn kept_wal_bytes(pages: i32, page_size: u64) -> u64 {
    WAL_HEADER_BYTES + KEEP_FRAMES_TIMES * pages as u64 * (page_size + FRAME_HEADER_BYTES)
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

#[cfg(test)]
mod tests {
    use super::wakes_thread;

    /// The thread is woken once the WAL holds `pages` frames and a quarter of them are new
    /// since its last copy; a WAL that started over counts from zero. (Catches: a wake per
    /// commit again (two syncs of the database file for each of a lone writer's commits); a
    /// WAL that started over never copied until it outgrows the old count.)
    #[test]
    fn the_thread_is_woken_for_a_quarter_of_checkpoint_pages_at_a_time() {
        // Under the threshold: never, whatever is new.
        assert!(!wakes_thread(999, 0, 1000));
        // First crossing: everything is new.
        assert!(wakes_thread(1000, 0, 1000));
        // Copied up to 1000: 249 new frames are not enough, 250 are.
        assert!(!wakes_thread(1249, 1000, 1000));
        assert!(wakes_thread(1250, 1000, 1000));
        // The WAL started over after a copy of 1300 frames: 1000 new ones are all new.
        assert!(wakes_thread(1000, 1300, 1000));
        // Tiny thresholds still copy (a quarter of 1 or 3 pages is one frame).
        assert!(wakes_thread(1, 0, 1));
        assert!(wakes_thread(4, 3, 3));
    }
}
