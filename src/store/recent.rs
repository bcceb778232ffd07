//! The most recent committed entries, kept in memory by the writer.
//!
//! Tail streams that are caught up (the common case: every live replica) read new entries from
//! here instead of SQLite, so a hundred streams cost a hundred cheap clones per commit rather
//! than a hundred queries. A stream further behind than this window reads the file.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::log::{Entry, Seq};

const MAX_ENTRIES: usize = 16 * 1024;
const MAX_BYTES: usize = 16 * 1024 * 1024;

#[derive(Default)]
pub struct Recent {
    ring: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    entries: VecDeque<Entry>,
    bytes: usize,
}

fn weight(e: &Entry) -> usize {
    e.key.len() + e.value.len() + 64
}

impl Recent {
    /// Appends entries just committed (consecutive, after the last ones held).
    pub fn push(&self, new: impl IntoIterator<Item = Entry>) {
        let mut ring = self.ring.lock().unwrap();
        for e in new {
            if ring
                .entries
                .back()
                .is_some_and(|last| last.seq + 1 != e.seq)
            {
                // Not contiguous (cannot happen with one writer): start over rather than lie.
                ring.entries.clear();
                ring.bytes = 0;
            }
            ring.bytes += weight(&e);
            ring.entries.push_back(e);
        }
        while ring.entries.len() > MAX_ENTRIES || ring.bytes > MAX_BYTES {
            let Some(old) = ring.entries.pop_front() else {
                break;
            };
            ring.bytes -= weight(&old);
        }
    }

    /// Forgets every entry: the history they belong to was replaced (a snapshot install).
    pub fn clear(&self) {
        let mut ring = self.ring.lock().unwrap();
        ring.entries.clear();
        ring.bytes = 0;
    }

    /// Entries from `from` on, bounded like [`super::reader::entries`] (never ending inside an
    /// atomic group). `None` when `from` is older than the window: read the file instead.
    pub fn since(&self, from: Seq, max_count: usize, max_bytes: usize) -> Option<Vec<Entry>> {
        let ring = self.ring.lock().unwrap();
        let first = ring.entries.front()?.seq;
        if from < first {
            return None;
        }
        let past_end = first + ring.entries.len() as Seq;
        if from >= past_end {
            return Some(Vec::new());
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in ring.entries.range((from - first) as usize..) {
            if (out.len() >= max_count || bytes >= max_bytes) && e.txn == e.seq {
                break;
            }
            bytes += e.key.len() + e.value.len();
            out.push(e.clone());
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::Op;

    fn entry(seq: Seq, txn: Seq) -> Entry {
        Entry {
            seq,
            txn,
            op: Op::Put,
            key: format!("k{seq}"),
            value: vec![0; 10],
            ts_ms: 0,
            crc: 0,
        }
    }

    #[test]
    fn serves_the_window_and_refuses_what_is_older() {
        let r = Recent::default();
        assert!(r.since(1, 10, 1 << 20).is_none(), "empty window");
        r.push((1..=5).map(|s| entry(s, s)));
        assert_eq!(
            r.since(3, 10, 1 << 20)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert!(r.since(6, 10, 1 << 20).unwrap().is_empty(), "caught up");
        assert!(
            r.since(100, 10, 1 << 20).unwrap().is_empty(),
            "past the head"
        );
        r.push((6..=MAX_ENTRIES as i64 + 10).map(|s| entry(s, s)));
        assert!(r.since(1, 10, 1 << 20).is_none(), "evicted");
    }

    #[test]
    fn batches_end_on_group_boundaries() {
        let r = Recent::default();
        // Groups: [1], [2, 3, 4], [5]
        r.push([
            entry(1, 1),
            entry(2, 2),
            entry(3, 2),
            entry(4, 2),
            entry(5, 5),
        ]);
        let b = r.since(1, 2, 1 << 20).unwrap();
        assert_eq!(b.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    }

    #[test]
    fn evicts_the_oldest_entries_once_over_the_byte_bound() {
        let r = Recent::default();
        let big = |seq: Seq| Entry {
            value: vec![0; 1 << 20],
            ..entry(seq, seq)
        };
        // 20 entries of just over 1 MiB each: far under MAX_ENTRIES, over MAX_BYTES (16 MiB).
        r.push((1..=20).map(big));
        assert!(r.since(5, 100, usize::MAX).is_none(), "evicted by bytes");
        let kept = r.since(6, 100, usize::MAX).expect("the newest 15 stay");
        assert_eq!(
            kept.iter().map(|e| e.seq).collect::<Vec<_>>(),
            (6..=20).collect::<Vec<_>>()
        );
    }

    #[test]
    fn holds_exactly_max_entries() {
        let r = Recent::default();
        r.push((1..=MAX_ENTRIES as Seq).map(|s| entry(s, s)));
        assert_eq!(
            r.since(1, 1, usize::MAX).unwrap()[0].seq,
            1,
            "a full window still serves its oldest entry"
        );
        r.push([entry(MAX_ENTRIES as Seq + 1, MAX_ENTRIES as Seq + 1)]);
        assert!(r.since(1, 1, usize::MAX).is_none(), "one more evicts it");
        assert_eq!(r.since(2, 1, usize::MAX).unwrap()[0].seq, 2);
    }

    #[test]
    fn batches_stop_at_the_byte_bound_on_a_group_boundary() {
        let r = Recent::default();
        // Each entry counts its key and value: 2 + 10 = 12 bytes. Groups: [1], [2], [3, 4], [5]
        r.push([
            entry(1, 1),
            entry(2, 2),
            entry(3, 3),
            entry(4, 3),
            entry(5, 5),
        ]);
        let seqs = |max_bytes| {
            r.since(1, 100, max_bytes)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(12), [1], "12 bytes reached after one entry");
        assert_eq!(seqs(20), [1, 2], "under 20 after one, 24 after two");
        assert_eq!(seqs(30), [1, 2, 3, 4], "the group [3, 4] is not split");
        assert_eq!(seqs(usize::MAX), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_cleared_window_forgets_the_replaced_history() {
        let r = Recent::default();
        r.push((1..=5).map(|s| entry(s, s)));
        r.clear();
        assert!(r.since(3, 10, usize::MAX).is_none(), "read the new file");
        // The installed history continues from its own base, not from the old entries.
        r.push((41..=42).map(|s| entry(s, s)));
        assert!(r.since(5, 10, usize::MAX).is_none());
        assert_eq!(r.since(41, 10, usize::MAX).unwrap().len(), 2);
    }
}
