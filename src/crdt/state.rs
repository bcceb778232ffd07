//! The client's merged view: every `lww:` register and `counter:` G-counter seen in any
//! namespace, and what each incoming write did to it.

use std::collections::BTreeMap;

use serde::Serialize;

use super::gcounter::{CounterWrite, GCounter};
use super::lww::LwwRegister;

pub const LWW_PREFIX: &str = "lww:";
pub const COUNTER_PREFIX: &str = "counter:";

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct State {
    pub lww: BTreeMap<String, LwwRegister>,
    pub counters: BTreeMap<String, GCounter>,
}

/// What one incoming value did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    LwwUpdated(LwwRegister),
    LwwStale {
        incoming: LwwRegister,
        current: LwwRegister,
    },
    /// The very write the register already holds (seen twice, e.g. at bootstrap and live).
    LwwUnchanged,
    CounterUpdated {
        total: u64,
    },
    CounterUnchanged {
        total: u64,
    },
    /// The key has no CRDT prefix.
    NotCrdt,
    /// The value does not parse; the state is unchanged.
    Malformed(String),
}

impl State {
    /// Merges the value stored under `key` into the state.
    pub fn apply(&mut self, key: &str, value: &[u8]) -> Outcome {
        if key.starts_with(LWW_PREFIX) {
            let incoming = match LwwRegister::parse(value) {
                Ok(r) => r,
                Err(e) => return Outcome::Malformed(e),
            };
            match self.lww.get_mut(key) {
                None => {
                    self.lww.insert(key.to_owned(), incoming.clone());
                    Outcome::LwwUpdated(incoming)
                }
                Some(current) => {
                    if *current == incoming {
                        Outcome::LwwUnchanged
                    } else if current.merge(&incoming) {
                        Outcome::LwwUpdated(incoming)
                    } else {
                        Outcome::LwwStale {
                            incoming,
                            current: current.clone(),
                        }
                    }
                }
            }
        } else if key.starts_with(COUNTER_PREFIX) {
            let write = match CounterWrite::parse(value) {
                Ok(w) => w,
                Err(e) => return Outcome::Malformed(e),
            };
            let counter = self.counters.entry(key.to_owned()).or_default();
            if counter.merge_count(&write.replica, write.count) {
                Outcome::CounterUpdated {
                    total: counter.value(),
                }
            } else {
                Outcome::CounterUnchanged {
                    total: counter.value(),
                }
            }
        } else {
            Outcome::NotCrdt
        }
    }

    /// Merges another state in (what two clients do when they compare notes).
    pub fn merge(&mut self, other: &State) {
        for (k, r) in &other.lww {
            match self.lww.get_mut(k) {
                Some(mine) => {
                    mine.merge(r);
                }
                None => {
                    self.lww.insert(k.clone(), r.clone());
                }
            }
        }
        for (k, c) in &other.counters {
            self.counters.entry(k.clone()).or_default().merge(c);
        }
    }

    /// The walkthrough's "CURRENT CRDT STATE" block.
    pub fn render(&self) -> String {
        let mut out = String::from("  CURRENT CRDT STATE\n");
        if !self.lww.is_empty() {
            out.push_str("\n  LWW-Registers:\n");
            for (k, r) in &self.lww {
                out.push_str(&format!(
                    "  {k}:\n    Value: {}\n    Timestamp: {}\n    Replica: {}\n",
                    plain(&r.value),
                    r.timestamp,
                    r.replica
                ));
            }
        }
        if !self.counters.is_empty() {
            out.push_str("\n  G-Counters:\n");
            for (k, c) in &self.counters {
                out.push_str(&format!(
                    "  {k}:\n    Replica Counts: {}\n    Total: {}\n\n",
                    serde_json::to_string(&c.counts).expect("counts serialize"),
                    c.value()
                ));
            }
        }
        out
    }

    /// One JSON line: `{"lww": {...}, "counters": {key: {"counts": {...}, "total": n}}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let counters: BTreeMap<_, _> = self
            .counters
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    serde_json::json!({"counts": c.counts, "total": c.value()}),
                )
            })
            .collect();
        serde_json::json!({ "lww": self.lww, "counters": counters })
    }
}

/// A JSON value as the walkthrough prints it: strings without quotes.
pub fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
