//! Reads waiting for a seq (`?min_seq=`): each waits for ITS seq, not for every commit.
//!
//! Waiters sit in a map ordered by the seq they wait for. After a commit the writer takes out
//! the ones its new head satisfies and wakes each once; the others are not touched. With no
//! waiter low enough, the writer pays two atomic loads and takes no lock. Their number is
//! capped (`[storage_config.performance_config] max_seq_waiters`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering::SeqCst};

use tokio::sync::oneshot;

use crate::log::Seq;

/// Why a wait did not start or did not end with the seq reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitError {
    /// As many reads as the cap allows are already waiting.
    Full { max: usize },
    /// The seq did not arrive in time.
    TimedOut,
    /// The namespace closed.
    ShuttingDown,
}

pub(crate) struct SeqWaiters {
    max: usize,
    /// The last seq the writer published.
    reached: AtomicI64,
    /// The smallest seq waited for (`Seq::MAX` when none): the writer's lock-free test.
    lowest: AtomicI64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    waiting: BTreeMap<(Seq, u64), oneshot::Sender<()>>,
    closed: bool,
}

impl Inner {
    fn lowest(&self) -> Seq {
        self.waiting.keys().next().map_or(Seq::MAX, |(seq, _)| *seq)
    }
}

impl SeqWaiters {
    pub fn new(max: usize, head: Seq) -> SeqWaiters {
        SeqWaiters {
            max,
            reached: AtomicI64::new(head),
            lowest: AtomicI64::new(Seq::MAX),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Reads waiting now.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().waiting.len()
    }

    /// The writer published `head`: wakes the waiters it satisfies, once each.
    pub fn reached(&self, head: Seq) {
        // SeqCst on both sides: a waiter stores `lowest` then loads `reached`, the writer stores
        // `reached` then loads `lowest`; one of them sees the other, so no wakeup is lost.
        self.reached.store(head, SeqCst);
        if self.lowest.load(SeqCst) > head {
            return;
        }
        let satisfied = {
            let mut inner = self.inner.lock().unwrap();
            let later = inner.waiting.split_off(&(head.saturating_add(1), 0));
            let satisfied = std::mem::replace(&mut inner.waiting, later);
            self.lowest.store(inner.lowest(), SeqCst);
            satisfied
        };
        for (_, tx) in satisfied {
            let _ = tx.send(());
        }
    }

    /// Refuses new waits and ends the current ones with [`WaitError::ShuttingDown`].
    pub fn close(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.closed = true;
        inner.waiting.clear();
        self.lowest.store(Seq::MAX, SeqCst);
    }

    /// Waits until the published head is at least `seq`, for at most `timeout`.
    pub async fn wait(&self, seq: Seq, timeout: std::time::Duration) -> Result<(), WaitError> {
        if self.reached.load(SeqCst) >= seq {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let key = {
            let mut inner = self.inner.lock().unwrap();
            if inner.closed {
                return Err(WaitError::ShuttingDown);
            }
            if inner.waiting.len() >= self.max {
                return Err(WaitError::Full { max: self.max });
            }
            let key = (seq, inner.next_id);
            inner.next_id += 1;
            inner.waiting.insert(key, tx);
            self.lowest.store(inner.lowest(), SeqCst);
            key
        };
        // Removes this waiter however the wait ends (woken, timed out, or the request dropped),
        // so an abandoned wait does not hold a place under the cap.
        let _slot = Slot { waiters: self, key };
        if self.reached.load(SeqCst) >= seq {
            return Ok(());
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(WaitError::ShuttingDown),
            Err(_) => Err(WaitError::TimedOut),
        }
    }
}

struct Slot<'a> {
    waiters: &'a SeqWaiters,
    key: (Seq, u64),
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut inner = self.waiters.inner.lock().unwrap();
        if inner.waiting.remove(&self.key).is_some() {
            self.waiters.lowest.store(inner.lowest(), SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LONG: Duration = Duration::from_secs(60);

    /// Each waiter is woken by the commit that reaches its seq, and not before: commits below
    /// its seq leave it waiting (and cost the writer no lock).
    #[tokio::test]
    async fn a_waiter_wakes_when_its_seq_arrives_and_not_before() {
        let w = std::sync::Arc::new(SeqWaiters::new(10, 0));
        let (w5, w7) = (w.clone(), w.clone());
        let five = tokio::spawn(async move { w5.wait(5, LONG).await });
        let seven = tokio::spawn(async move { w7.wait(7, LONG).await });
        while w.len() < 2 {
            tokio::task::yield_now().await;
        }
        for head in 1..5 {
            w.reached(head);
        }
        assert_eq!(w.len(), 2, "no waiter is satisfied below seq 5");
        w.reached(6);
        assert_eq!(five.await.unwrap(), Ok(()));
        assert_eq!(w.len(), 1, "the waiter for 7 still waits");
        assert!(!seven.is_finished());
        w.reached(7);
        assert_eq!(seven.await.unwrap(), Ok(()));
        assert_eq!(w.len(), 0);
        // Already reached: no wait at all.
        assert_eq!(w.wait(3, LONG).await, Ok(()));
    }

    /// Reads waiting for the same seq are all woken by it (each holds its own place), not
    /// one woken and the others told the node is shutting down.
    #[tokio::test]
    async fn reads_waiting_for_the_same_seq_are_all_woken() {
        let w = std::sync::Arc::new(SeqWaiters::new(10, 0));
        let waiting: Vec<_> = (0..3)
            .map(|_| {
                let w = w.clone();
                tokio::spawn(async move { w.wait(4, LONG).await })
            })
            .collect();
        // (A wait that ended early would leave fewer than three waiting: stop then too.)
        while w.len() < 3 && !waiting.iter().any(|t| t.is_finished()) {
            tokio::task::yield_now().await;
        }
        w.reached(4);
        for read in waiting {
            assert_eq!(read.await.unwrap(), Ok(()));
        }
        assert_eq!(w.len(), 0);
    }

    /// Over the cap a wait is refused at once; a timed-out or closed wait frees its place.
    #[tokio::test]
    async fn the_cap_refuses_and_ended_waits_free_their_place() {
        let w = std::sync::Arc::new(SeqWaiters::new(2, 0));
        let (a, b) = (w.clone(), w.clone());
        let first = tokio::spawn(async move { a.wait(10, LONG).await });
        let second = tokio::spawn(async move { b.wait(11, LONG).await });
        while w.len() < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(w.wait(12, LONG).await, Err(WaitError::Full { max: 2 }));
        assert_eq!(
            w.wait(12, Duration::from_millis(1)).await,
            Err(WaitError::Full { max: 2 })
        );
        w.close();
        assert_eq!(first.await.unwrap(), Err(WaitError::ShuttingDown));
        assert_eq!(second.await.unwrap(), Err(WaitError::ShuttingDown));
        assert_eq!(w.wait(12, LONG).await, Err(WaitError::ShuttingDown));

        let w = SeqWaiters::new(1, 0);
        assert_eq!(
            w.wait(5, Duration::from_millis(1)).await,
            Err(WaitError::TimedOut)
        );
        assert_eq!(w.len(), 0, "a timed-out wait leaves no waiter behind");
    }
}
