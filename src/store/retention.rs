//! Log retention (`[storage_config.wal_cleanup_config]`): a task per namespace that prunes
//! old `wal_log` entries every `interval`.
//!
//! The rule: an entry goes when it is older than `max_age` or more than `max_entries` behind
//! the head. Connected followers hold pruning back: nothing a live tail stream still has to
//! send is pruned, unless it is older than twice `max_age` or more than twice `max_entries`
//! behind (a stuck follower must not make the log grow without bound; it bootstraps from a
//! snapshot when it reconnects). The head entry is never pruned, and `kv` never is.
//!
//! Each step deletes at most [`STEP_ROWS`] entries in its own short transaction, so writes
//! queued behind the writer wait for one step, not for the whole backlog. Deleted pages go
//! to SQLite's free list and are reused by later writes, so under steady churn the file stops
//! growing once the retained window is full.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{Namespace, Prune, StoreError};
use crate::config::WalCleanupConfig;
use crate::log::Seq;

/// Most entries deleted per transaction.
pub const STEP_ROWS: usize = 1000;

/// Prunes `ns` every `config.interval` until `shutdown`.
pub async fn run(ns: Arc<Namespace>, config: WalCleanupConfig, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(config.interval) => {}
            _ = shutdown.cancelled() => return,
        }
        match prune_once(&ns, &config).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(namespace = %ns.name(), pruned = n, oldest_seq = ns.base_seq() + 1, "log retention: pruned old entries")
            }
            Err(StoreError::ShuttingDown) => return,
            Err(e) => {
                tracing::warn!(namespace = %ns.name(), error = %e, "log retention failed; trying again at the next interval")
            }
        }
    }
}

/// One round of retention: returns the number of entries deleted.
pub async fn prune_once(ns: &Namespace, config: &WalCleanupConfig) -> Result<usize, StoreError> {
    let head = ns.head().seq;
    let now = super::writer::now_ms();
    // Everything before the slowest live stream's next seq may go; nothing after it, within
    // the hard bound.
    let held = ns.slowest_tail().map_or(Seq::MAX, |next| next - 1);
    let mut steps = Vec::new();
    if let Some(max) = config.max_entries {
        let max = max.min(i64::MAX as u64 / 2) as i64;
        steps.push((head - max).min(held));
        steps.push(head - 2 * max);
    }
    let mut total = 0;
    for upto in steps {
        total += prune_all(ns, upto, None).await?;
    }
    if let Some(age) = config.max_age {
        let age = age.as_millis().min(i64::MAX as u128 / 2) as i64;
        total += prune_all(ns, held, Some(now - age)).await?;
        total += prune_all(ns, Seq::MAX, Some(now - 2 * age)).await?;
    }
    Ok(total)
}

async fn prune_all(
    ns: &Namespace,
    upto: Seq,
    older_than_ms: Option<i64>,
) -> Result<usize, StoreError> {
    let mut total = 0;
    loop {
        let step = Prune {
            upto,
            older_than_ms,
            max_rows: STEP_ROWS,
        };
        let done = ns.prune(step).await?;
        total += done.deleted;
        if done.deleted < STEP_ROWS {
            return Ok(total);
        }
    }
}
