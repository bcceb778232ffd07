//! Last-writer-wins register, in the walkthrough's format:
//! `{"value": <any JSON>, "timestamp": <ms>, "replica": "<id>"}`.

use serde::{Deserialize, Serialize};

/// A register's state. Merge keeps the write with the newer timestamp; on equal timestamps
/// the lexicographically larger replica id wins, so every replica converges to the same value
/// whatever order the writes arrive in.
///
/// One more tie-break the walkthrough's version lacks: the same replica writing two values in
/// the same millisecond. There the larger value (by its JSON text) wins; without it the result
/// would depend on delivery order (the property tests in `crdt/mod.rs` found exactly that).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LwwRegister {
    pub value: serde_json::Value,
    pub timestamp: i64,
    pub replica: String,
}

impl LwwRegister {
    /// Parses a stored value.
    pub fn parse(bytes: &[u8]) -> Result<LwwRegister, String> {
        serde_json::from_slice(bytes).map_err(|e| {
            format!("not an LWW register ({{\"value\", \"timestamp\", \"replica\"}}): {e}")
        })
    }

    /// Whether `other` beats `self`.
    pub fn loses_to(&self, other: &LwwRegister) -> bool {
        let key = |r: &LwwRegister| (r.timestamp, r.replica.clone(), r.value.to_string());
        key(other) > key(self)
    }

    /// Merges `other` in; returns whether the state changed.
    pub fn merge(&mut self, other: &LwwRegister) -> bool {
        if self.loses_to(other) {
            *self = other.clone();
            true
        } else {
            false
        }
    }
}
