//! Grow-only counter, in the walkthrough's format: each write is one replica's count,
//! `{"replica": "<id>", "count": <n>}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One replica's contribution, as stored under a `counter:` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterWrite {
    pub replica: String,
    pub count: u64,
}

impl CounterWrite {
    pub fn parse(bytes: &[u8]) -> Result<CounterWrite, String> {
        serde_json::from_slice(bytes).map_err(|e| {
            format!("not a G-counter write ({{\"replica\", \"count\"}} with count >= 0): {e}")
        })
    }
}

/// Per-replica maxima; the value is their sum. Merge is per-replica max, so it is
/// commutative, associative and idempotent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GCounter {
    pub counts: BTreeMap<String, u64>,
}

impl GCounter {
    /// Takes one replica's count; returns whether the state changed (counts only grow).
    pub fn merge_count(&mut self, replica: &str, count: u64) -> bool {
        let current = self.counts.entry(replica.to_owned()).or_insert(0);
        if count > *current {
            *current = count;
            true
        } else {
            false
        }
    }

    /// Merges a whole counter in.
    pub fn merge(&mut self, other: &GCounter) -> bool {
        let mut changed = false;
        for (replica, &count) in &other.counts {
            changed |= self.merge_count(replica, count);
        }
        changed
    }

    pub fn value(&self) -> u64 {
        self.counts.values().sum()
    }
}
