//! The follower's recovery paths: snapshot bootstrap (the entries it needs were pruned) and
//! divergence (its history differs from the upstream's).
//!
//! Bootstrap downloads a `Snapshot` into a staging file next to the namespace file, resuming
//! after the last key staged when a stream breaks (see [`crate::store::snapshot`] for why a
//! resumed, fuzzy download is made exact by replaying the log), then installs it in one
//! transaction and tails from its head.
//!
//! Divergence never drops anything silently: the entries this replica has and the upstream
//! does not (everything after the last seq both logs agree on) are written to
//! `<base_dir>/rollback/<namespace>-<unix_ms>.jsonl` first, the event is logged at ERROR, and
//! only then is the state replaced by a snapshot. `on_divergence = "stop"` stops instead.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;

use super::ErrorKind;
use super::client::Client;
use super::follower::{
    End, Follower, OnDivergence, SILENCE_LIMIT, SnapshotProgress, State, status_end, store_end,
};
use super::pb::{PositionResponse, SnapshotRequest, TailRequest};
use crate::log::{Entry, Seq};
use crate::store::reader::{self, KvRow};
use crate::store::snapshot::{Progress, Staging, staging_path};
use crate::store::{Namespace, StoreError};

/// How often a long download logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

impl Follower {
    /// Fetches a snapshot of the upstream's log `log_id` (resuming what is staged), installs
    /// it, and asks to be reconnected at once.
    pub(super) async fn bootstrap(&self, client: &mut Client, log_id: &str) -> End {
        self.tracker.set(|s| {
            s.state = State::Bootstrapping;
            s.last_error = None;
        });
        let path = staging_path(self.ns.path());
        let mut staging = match blocking(move || Staging::open(&path)).await {
            Ok(s) => s,
            Err(e) => return store_end(e),
        };
        let name = self.ns.name().to_owned();
        let tracker = self.tracker.clone();
        let end = fetch(client, &name, log_id, &mut staging, &mut |event| {
            tracker.set(|s| match event {
                Fetched::Rows(p) => {
                    let resumed = s.snapshot.as_ref().map_or(0, |x| x.resumed);
                    s.snapshot = Some(SnapshotProgress {
                        rows: p.rows,
                        bytes: p.bytes,
                        seq: p.end.0,
                        resumed,
                    });
                    s.snapshot_rows_received += p.rows_in_chunk;
                }
                Fetched::Broke => {
                    s.snapshot_resumes += 1;
                    if let Some(p) = s.snapshot.as_mut() {
                        p.resumed += 1;
                    }
                }
            })
        })
        .await;
        let End::Again = end else {
            return end;
        };
        match self.ns.install_snapshot(staging.path()).await {
            Ok(head) => {
                tokio::task::spawn_blocking(move || staging.remove());
                self.tracker.set(|s| {
                    s.bootstraps += 1;
                    s.snapshot = None;
                });
                tracing::info!(namespace = %name, upstream = %self.upstream, head_seq = head.seq, "bootstrapped from a snapshot; tailing from seq {}", head.seq + 1);
                End::Again
            }
            Err(StoreError::Diverged(why)) => {
                // What was staged cannot be installed; start the download over.
                let _ = blocking(move || staging.reset().map(|_| staging)).await;
                End::Retry(format!(
                    "cannot install the snapshot ({why}); fetching it again"
                ))
            }
            Err(e) => store_end(e),
        }
    }
}

/// What [`fetch`] reports as it goes.
pub(crate) enum Fetched<'a> {
    /// A chunk was staged (`rows_in_chunk` of the total).
    Rows(&'a ChunkProgress),
    /// The stream broke; the next call resumes.
    Broke,
}

/// Progress after one chunk.
pub(crate) struct ChunkProgress {
    pub rows: i64,
    pub bytes: i64,
    pub end: (Seq, u32),
    pub rows_in_chunk: u64,
}

/// Stages the snapshot of namespace `name` of log `log_id` into `staging`: the rows (after the
/// last key already staged), then the log entries that make a resumed download exact.
/// `End::Again` when everything the install needs is staged; `End::Retry` when a stream broke
/// (call again to resume).
pub(crate) async fn fetch(
    client: &mut Client,
    name: &str,
    log_id: &str,
    staging: &mut Staging,
    report: &mut (dyn FnMut(Fetched<'_>) + Send),
) -> End {
    let name = name.to_owned();
    let mut progress = match staging.progress() {
        Ok(p) => p,
        Err(e) => return store_end(e),
    };
    if progress.log_id.as_deref().is_some_and(|id| id != log_id) {
        tracing::info!(namespace = %name, "the staged snapshot is of another log; starting over");
        if let Err(e) = staging.reset() {
            return store_end(e);
        }
        progress = Progress::default();
    }
    let mut last_report = Instant::now();
    let started = Instant::now();
    let resuming = progress.last_key.is_some();
    if resuming {
        tracing::info!(namespace = %name, rows = progress.rows, after_key = ?progress.last_key, "resuming a snapshot download");
    }
    while !progress.rows_done {
        let request = SnapshotRequest {
            namespace: name.clone(),
            after_key: progress.last_key.clone(),
        };
        let mut stream = match tokio::time::timeout(SILENCE_LIMIT, client.snapshot(request)).await {
            Ok(Ok(s)) => s.into_inner(),
            Ok(Err(s)) => return status_end(&s),
            Err(_) => return End::Retry("no answer to the snapshot request".into()),
        };
        loop {
            let chunk = match tokio::time::timeout(SILENCE_LIMIT, stream.message()).await {
                Ok(Ok(Some(c))) => c,
                Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                    report(Fetched::Broke);
                    return End::Retry(format!(
                        "the snapshot stream broke after {} rows; resuming after key {:?}",
                        progress.rows, progress.last_key
                    ));
                }
            };
            let moved_back = progress.log_id.is_some() && chunk.seq < progress.end.0;
            if chunk.log_id != log_id || moved_back {
                let _ = staging.reset();
                return End::Retry("the upstream's log changed during the snapshot".into());
            }
            let rows: Vec<KvRow> = chunk
                .rows
                .into_iter()
                .map(|r| KvRow {
                    key: r.key,
                    value: r.value,
                    seq: r.seq,
                    ts_ms: r.ts_ms,
                })
                .collect();
            let (seq, crc, done) = (chunk.seq, chunk.crc, chunk.done);
            let rows_in_chunk = rows.len() as u64;
            let id = log_id.to_owned();
            progress = match with_staging(staging, move |s| {
                s.add_chunk(&id, seq, crc, &rows, done)?;
                s.progress()
            })
            .await
            {
                Ok(p) => p,
                Err(e) => return store_end(e),
            };
            report(Fetched::Rows(&ChunkProgress {
                rows: progress.rows,
                bytes: progress.bytes,
                end: progress.end,
                rows_in_chunk,
            }));
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                let secs = started.elapsed().as_secs_f64().max(0.001);
                tracing::info!(namespace = %name, rows = progress.rows, bytes = progress.bytes, rows_per_s = (progress.rows as f64 / secs) as u64, "snapshot download in progress");
            }
            if done {
                break;
            }
        }
    }
    // The rows are fuzzy if the download took several streams: replay the log from the
    // first stream's seq to the last's.
    while progress.replayed_to < progress.end.0 {
        let request = TailRequest {
            namespace: name.clone(),
            log_id: log_id.to_owned(),
            from_seq: progress.replayed_to + 1,
            prev_crc: progress.replayed_crc,
            // Not a follower's stream: it does not count towards acks.
            follower_id: String::new(),
        };
        let mut stream = match tokio::time::timeout(SILENCE_LIMIT, client.tail(request)).await {
            Ok(Ok(s)) => s.into_inner(),
            Ok(Err(s)) if ErrorKind::of(&s) == Some(ErrorKind::SnapshotNeeded) => {
                // The upstream pruned the entries the replay needs: start over.
                let _ = staging.reset();
                return End::Retry(
                    "the upstream pruned the entries needed to complete the snapshot; fetching it again".into(),
                );
            }
            Ok(Err(s)) => return status_end(&s),
            Err(_) => return End::Retry("no answer to the replay request".into()),
        };
        while progress.replayed_to < progress.end.0 {
            let msg = match tokio::time::timeout(SILENCE_LIMIT, stream.message()).await {
                Ok(Ok(Some(m))) => m,
                _ => return End::Retry("the replay stream broke; resuming".into()),
            };
            let entries: Result<Vec<Entry>, String> =
                msg.entries.into_iter().map(Entry::try_from).collect();
            let entries = match entries {
                Ok(e) => e,
                Err(e) => {
                    return End::Fatal(format!("the upstream sent an invalid entry: {e}"));
                }
            };
            progress = match with_staging(staging, move |s| {
                s.add_entries(&entries)?;
                s.progress()
            })
            .await
            {
                Ok(p) => p,
                Err(e) => return store_end(e),
            };
        }
    }
    if resuming || progress.end.0 != progress.start.0 {
        tracing::info!(namespace = %name, rows = progress.rows, from_seq = progress.start.0, to_seq = progress.end.0, "snapshot complete after a resumed or fuzzy download; replayed the log between its streams");
    }
    End::Again
}

impl Follower {
    /// The upstream's history differs from this replica's: keep what only this replica has in
    /// a rollback file, then re-bootstrap (or stop, if configured so).
    pub(super) async fn diverged(
        &self,
        client: &mut Client,
        pos: &PositionResponse,
        reason: String,
    ) -> End {
        let name = self.ns.name().to_owned();
        if self.on_divergence == OnDivergence::Stop {
            return End::Fatal(format!(
                "{reason}; on_divergence = \"stop\": not re-bootstrapping"
            ));
        }
        let local_id = self.ns.log_id();
        let ours = |id: &str| local_id.as_deref() == Some(id);
        let head = self.ns.head();
        let base = self.ns.base_seq();
        // The same log, or one the upstream's was forked from (then only up to the fork).
        let forked_from_ours = !pos.prev_log_id.is_empty() && ours(&pos.prev_log_id);
        let split = if ours(&pos.log_id) || forked_from_ours {
            let hi = if forked_from_ours {
                head.seq.min(pos.fork_seq)
            } else {
                head.seq
            };
            // Below its oldest entry the upstream knows no crcs (except its base's).
            let lo = base.max(pos.oldest_seq - 1);
            match self.split_point(client, lo, hi.min(pos.head_seq)).await {
                Ok(s) => s,
                Err(end) => return end,
            }
        } else {
            base
        };
        if ours(&pos.log_id) && pos.following && pos.head_seq < head.seq && split == pos.head_seq {
            // Nothing differs: the upstream is a replica that has not caught up with this one
            // yet (e.g. this replica was re-pointed to a sibling), and all it has agrees with
            // ours. Its log will grow. (The split is at most the upstream's head, so this is
            // where it ends when the two agree.)
            return End::Retry(format!(
                "the upstream (a replica) is behind this replica (its head {} < {}); waiting for it to catch up",
                pos.head_seq, head.seq
            ));
        }
        let key = (pos.log_id.clone(), split, head.seq);
        let already = self.rolled_back.lock().unwrap().as_ref() == Some(&key);
        let mut file = None;
        if !already && head.seq > split {
            match write_rollback(self.ns.clone(), split).await {
                Ok((path, count)) => {
                    self.tracker.set(|s| s.rollbacks += 1);
                    file = Some((path, count));
                }
                Err(e) => {
                    return End::Retry(format!(
                        "cannot write the rollback file, so not re-bootstrapping yet: {e}"
                    ));
                }
            }
        }
        *self.rolled_back.lock().unwrap() = Some(key);
        let (file_text, count) = match &file {
            Some((p, n)) => (p.display().to_string(), *n),
            None => ("none (no entries beyond the common point)".into(), 0),
        };
        tracing::error!(
            namespace = %name,
            upstream = %self.upstream,
            local_log_id = %crate::log::LogId::wire(local_id.as_ref()),
            upstream_log_id = %pos.log_id,
            local_head = head.seq,
            upstream_head = pos.head_seq,
            common_seq = split,
            rolled_back_entries = count,
            rollback_file = %file_text,
            "DIVERGED from the upstream: {reason}. The entries after seq {split} that only this replica had are kept in the rollback file; re-bootstrapping from the upstream's snapshot"
        );
        self.bootstrap(client, &pos.log_id).await
    }

    /// The last seq in `[lo, hi]` where this log and the upstream's have the same crc (crcs
    /// chain, so they agree on everything before it too); this log's base when they already
    /// differ at `lo` (the first seq both still know).
    async fn split_point(&self, client: &mut Client, lo: Seq, hi: Seq) -> Result<Seq, End> {
        let name = self.ns.name().to_owned();
        let matches = |seq: Seq| {
            let mut client = client.clone();
            let name = name.clone();
            let ns = self.ns.clone();
            async move {
                let local = ns
                    .read(move |c| reader::crc_at(c, seq))
                    .await
                    .map_err(store_end)?;
                let remote = super::follower::upstream_crc(&mut client, &name, seq).await?;
                Ok(local.is_some() && local == remote)
            }
        };
        // Seq 0 is before every log: the same log (same log_id) always shares it.
        if lo > 0 && !matches(lo).await? {
            // They differ already where both logs begin: nothing retained is shared.
            return Ok(self.ns.base_seq());
        }
        if hi <= lo {
            return Ok(lo);
        }
        if matches(hi).await? {
            return Ok(hi);
        }
        // matches(lo) and !matches(hi): bisect.
        let (mut good, mut bad) = (lo, hi);
        while bad - good > 1 {
            let mid = good + (bad - good) / 2;
            if matches(mid).await? {
                good = mid;
            } else {
                bad = mid;
            }
        }
        Ok(good)
    }
}

/// One rolled-back entry, as written to the rollback file.
#[derive(serde::Serialize)]
struct RolledBack<'a> {
    seq: Seq,
    txn: Seq,
    op: &'a str,
    key: &'a str,
    value: String,
    ts_ms: i64,
    crc: u32,
}

/// Writes every entry after `split` to `<base_dir>/rollback/<namespace>-<unix_ms>.jsonl`
/// (fsynced before it returns). Returns the file and the number of entries.
async fn write_rollback(ns: Arc<Namespace>, split: Seq) -> Result<(PathBuf, usize), String> {
    let dir = ns
        .path()
        .parent()
        .map(|p| p.join("rollback"))
        .ok_or("the namespace file has no directory")?;
    let path = dir.join(format!(
        "{}-{}.jsonl",
        ns.name(),
        crate::store::writer::now_ms()
    ));
    let mut out = Vec::new();
    let mut next = split + 1;
    let mut count = 0;
    loop {
        let from = next;
        let batch = ns
            .read(move |c| reader::entries(c, from, 10_000, 16 * 1024 * 1024))
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = batch.last() else { break };
        next = last.seq + 1;
        for e in &batch {
            let line = RolledBack {
                seq: e.seq,
                txn: e.txn,
                op: e.op.as_str(),
                key: &e.key,
                value: base64::engine::general_purpose::STANDARD.encode(&e.value),
                ts_ms: e.ts_ms,
                crc: e.crc,
            };
            serde_json::to_writer(&mut out, &line).map_err(|e| e.to_string())?;
            out.push(b'\n');
            count += 1;
        }
    }
    let target = path.clone();
    blocking(move || -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        let mut f = std::fs::File::create(&target)?;
        f.write_all(&out)?;
        f.sync_all()?;
        std::fs::File::open(&dir)?.sync_all()
    })
    .await
    .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((path, count))
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static, E: Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task does not panic")
}

/// Runs `f` on the staging file off the async threads, handing it back afterwards.
async fn with_staging<T: Send + 'static>(
    staging: &mut Staging,
    f: impl FnOnce(&mut Staging) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    // Staging owns a rusqlite Connection (Send, not Sync): move it to the blocking thread and
    // back.
    let placeholder = std::mem::replace(staging, Staging::lent());
    let (back, out) = tokio::task::spawn_blocking(move || {
        let mut s = placeholder;
        let out = f(&mut s);
        (s, out)
    })
    .await
    .expect("blocking task does not panic");
    *staging = back;
    out
}
