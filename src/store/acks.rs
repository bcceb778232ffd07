//! Followers' acknowledgements: which followers are connected to this node for a namespace,
//! and the last seq each has applied, so a write can wait until K of them have it
//! (`?acks=K`).
//!
//! A follower is registered while its Tail stream is open (it names itself with a
//! `follower_id`) and reports its applied seq with the `Ack` RPC. Only direct followers
//! count: a chained replica's own followers ack to it, not to the primary.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use crate::log::Seq;

/// One connected follower, as `/stats` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FollowerInfo {
    pub id: String,
    /// The follower's address as this node sees it.
    pub address: String,
    /// Last seq the follower reported applied.
    pub applied_seq: Seq,
    pub connected_since_ms: i64,
}

/// The followers of one namespace on this node.
pub struct Acks {
    followers: Mutex<BTreeMap<u64, FollowerInfo>>,
    next: std::sync::atomic::AtomicU64,
    /// Bumped whenever an applied seq moves or a follower leaves: waiters re-count.
    changed: watch::Sender<u64>,
}

impl Default for Acks {
    fn default() -> Self {
        Acks {
            followers: Mutex::new(BTreeMap::new()),
            next: std::sync::atomic::AtomicU64::new(0),
            changed: watch::Sender::new(0),
        }
    }
}

/// Keeps a follower registered while it lives (its Tail stream's life).
pub struct Registration<'a> {
    acks: &'a Acks,
    key: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.acks.followers.lock().unwrap().remove(&self.key);
        self.acks.changed.send_modify(|v| *v += 1);
    }
}

impl Acks {
    /// Registers follower `id` at `address`, which has applied up to `applied`.
    pub fn register(&self, id: &str, address: String, applied: Seq) -> Registration<'_> {
        let key = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.followers.lock().unwrap().insert(
            key,
            FollowerInfo {
                id: id.to_owned(),
                address,
                applied_seq: applied,
                connected_since_ms: super::writer::now_ms(),
            },
        );
        self.changed.send_modify(|v| *v += 1);
        Registration { acks: self, key }
    }

    /// Follower `id` has applied up to `seq`. False when no such follower is connected.
    pub fn ack(&self, id: &str, seq: Seq) -> bool {
        let mut found = false;
        for f in self.followers.lock().unwrap().values_mut() {
            if f.id == id {
                f.applied_seq = f.applied_seq.max(seq);
                found = true;
            }
        }
        if found {
            self.changed.send_modify(|v| *v += 1);
        }
        found
    }

    /// Distinct followers that have applied `seq`.
    pub fn count_at(&self, seq: Seq) -> usize {
        let followers = self.followers.lock().unwrap();
        let mut ids: Vec<&str> = followers
            .values()
            .filter(|f| f.applied_seq >= seq)
            .map(|f| f.id.as_str())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }

    /// Waits until `k` followers have applied `seq`, or `timeout`; returns how many have.
    pub async fn wait(&self, seq: Seq, k: usize, timeout: Duration) -> usize {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = self.count_at(seq);
            if n >= k {
                return n;
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.count_at(seq),
            }
        }
    }

    /// The connected followers.
    pub fn list(&self) -> Vec<FollowerInfo> {
        self.followers.lock().unwrap().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_for_two_acks_returns_only_once_two_followers_have_the_seq() {
        let acks = Acks::default();
        let _a = acks.register("a", "127.0.0.1:1".into(), 0);
        let _b = acks.register("b", "127.0.0.1:2".into(), 0);
        let wait = acks.wait(5, 2, Duration::from_secs(60));
        tokio::pin!(wait);
        assert!(futures::poll!(&mut wait).is_pending(), "nobody has seq 5");
        assert!(acks.ack("a", 5));
        assert!(
            futures::poll!(&mut wait).is_pending(),
            "one ack of two: the write keeps waiting"
        );
        // A stale ack does not move a follower back.
        assert!(acks.ack("a", 3));
        assert!(!acks.ack("nobody", 9), "not connected");
        assert!(futures::poll!(&mut wait).is_pending());
        assert!(acks.ack("b", 6));
        assert_eq!(wait.await, 2);
        assert_eq!(acks.count_at(5), 2);
        assert_eq!(acks.count_at(6), 1);
    }

    #[tokio::test]
    async fn a_follower_connected_twice_counts_once_and_leaves_with_its_streams() {
        let acks = Acks::default();
        let first = acks.register("a", "127.0.0.1:1".into(), 0);
        let second = acks.register("a", "127.0.0.1:2".into(), 0);
        acks.ack("a", 5);
        assert_eq!(acks.count_at(5), 1, "one follower, two streams");
        assert_eq!(acks.list().len(), 2);
        drop(first);
        assert_eq!(acks.list().len(), 1);
        drop(second);
        assert!(acks.list().is_empty());
        assert_eq!(acks.count_at(0), 0);
    }
}
