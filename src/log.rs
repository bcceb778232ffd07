//! The log vocabulary shared by the store, the replication stream and the notifier:
//! sequence numbers, operations, entries and the crc chain that gives a log its identity.
//!
//! # The crc chain
//!
//! Every `wal_log` row carries `crc = crc32(prev_crc ‖ encoding(entry))`, where `prev_crc` is the
//! crc of the entry before it (0 before the first entry of a log) and CRC-32 is the IEEE
//! polynomial (the one zlib, gzip and `crc32fast` use). The encoding, all integers
//! little-endian:
//!
//! ```text
//! prev_crc   u32
//! seq        i64
//! txn        i64
//! op         u8      0 = put, 1 = delete
//! key_len    u32     then key_len bytes of UTF-8 key
//! value_len  u32     then value_len bytes of value (0 for a delete)
//! ts_ms      i64
//! ```
//!
//! Because each crc covers the one before it, two logs that agree on `(seq, crc)` agree on every
//! entry up to `seq`: a replica proves it shares the primary's history by presenting one number.

use std::fmt;

/// A position in a namespace's log. Dense, starting at 1; 0 means "before the first entry".
pub type Seq = i64;

/// A log's identity: 32 lowercase hex digits (128 random bits), minted when a primary's
/// namespace is created or promoted. `(log_id, seq, crc)` names a point of one history. A
/// replica's file has none until it adopts its upstream's: that is `Option<LogId>`, never an
/// empty string (the wire format, protobuf and JSON, still says "" for none).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct LogId(String);

impl LogId {
    /// A fresh random id.
    pub fn mint() -> LogId {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).expect("the OS random source is available");
        LogId(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// `text` if it is a log id as minted (32 lowercase hex digits).
    pub fn parse(text: &str) -> Option<LogId> {
        let ok = text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| LogId(text.to_owned()))
    }

    /// The id stored in a file's `meta.log_id`: "" means none yet. Taken as stored (a file
    /// written by ferry holds only minted ids; `ferry verify` checks the rest).
    pub fn from_meta(text: String) -> Option<LogId> {
        (!text.is_empty()).then_some(LogId(text))
    }

    /// The wire form of a maybe-id: "" for none.
    pub fn wire(id: Option<&LogId>) -> String {
        id.map(|l| l.0.clone()).unwrap_or_default()
    }
}

impl std::ops::Deref for LogId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an entry does to `kv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Put,
    Delete,
}

impl Op {
    /// The spelling stored in `wal_log.op` and sent in notifications.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        match s {
            "put" => Some(Op::Put),
            "delete" => Some(Op::Delete),
            _ => None,
        }
    }

    fn code(self) -> u8 {
        match self {
            Op::Put => 0,
            Op::Delete => 1,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `wal_log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: Seq,
    /// Seq of the first entry of the atomic group this entry was committed in.
    pub txn: Seq,
    pub op: Op,
    pub key: String,
    /// The stored bytes for a put; empty for a delete.
    pub value: Vec<u8>,
    pub ts_ms: i64,
    pub crc: u32,
}

impl Entry {
    /// The crc this entry must carry if the entry before it has crc `prev_crc`.
    pub fn expected_crc(&self, prev_crc: u32) -> u32 {
        chain_crc(
            prev_crc,
            self.seq,
            self.txn,
            self.op,
            &self.key,
            &self.value,
            self.ts_ms,
        )
    }
}

/// Computes the chained crc of one entry; see the module docs for the exact encoding.
pub fn chain_crc(
    prev_crc: u32,
    seq: Seq,
    txn: Seq,
    op: Op,
    key: &str,
    value: &[u8],
    ts_ms: i64,
) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&prev_crc.to_le_bytes());
    h.update(&seq.to_le_bytes());
    h.update(&txn.to_le_bytes());
    h.update(&[op.code()]);
    h.update(&(key.len() as u32).to_le_bytes());
    h.update(key.as_bytes());
    h.update(&(value.len() as u32).to_le_bytes());
    h.update(value);
    h.update(&ts_ms.to_le_bytes());
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_id_is_32_lowercase_hex_digits_and_none_is_never_empty() {
        let a = LogId::mint();
        assert_eq!(LogId::parse(&a), Some(a.clone()));
        assert_ne!(LogId::mint(), a, "minted ids are random");
        for bad in [
            "",
            "abc",
            &a.to_uppercase(),
            &format!("{a}0"),
            &a.replace(&a[..1], "g"),
        ] {
            assert_eq!(LogId::parse(bad), None, "{bad:?}");
        }
        assert_eq!(LogId::from_meta(String::new()), None);
        assert_eq!(LogId::from_meta(a.to_string()), Some(a.clone()));
        assert_eq!(LogId::wire(None), "");
        assert_eq!(LogId::wire(Some(&a)), a.to_string());
    }

    #[test]
    fn crc_covers_every_column_and_the_previous_crc() {
        let base = chain_crc(0, 1, 1, Op::Put, "k", b"v", 10);
        let variants = [
            chain_crc(1, 1, 1, Op::Put, "k", b"v", 10),
            chain_crc(0, 2, 1, Op::Put, "k", b"v", 10),
            chain_crc(0, 1, 2, Op::Put, "k", b"v", 10),
            chain_crc(0, 1, 1, Op::Delete, "k", b"v", 10),
            chain_crc(0, 1, 1, Op::Put, "K", b"v", 10),
            chain_crc(0, 1, 1, Op::Put, "k", b"w", 10),
            chain_crc(0, 1, 1, Op::Put, "k", b"v", 11),
            // Length prefixes keep key/value boundaries unambiguous.
            chain_crc(0, 1, 1, Op::Put, "kv", b"", 10),
        ];
        for v in variants {
            assert_ne!(base, v);
        }
    }

    #[test]
    fn ops_read_back_from_their_stored_spelling() {
        // `wal_log.op` holds `as_str`; readers and the follower parse it back, and
        // notifications print it with `Display`.
        for op in [Op::Put, Op::Delete] {
            assert_eq!(Op::parse(op.as_str()), Some(op));
            assert_eq!(op.to_string(), op.as_str());
        }
        assert_eq!((Op::Put.as_str(), Op::Delete.as_str()), ("put", "delete"));
        assert_eq!(Op::parse("PUT"), None);
        assert_eq!(Op::parse(""), None);
    }

    #[test]
    fn crc_encoding_is_stable() {
        // Value computed independently with Python: zlib.crc32(struct.pack("<Iqqb", 0, 1, 1, 0)
        // + struct.pack("<I", 1) + b"k" + struct.pack("<I", 1) + b"v" + struct.pack("<q", 10)).
        // Pinned so an accidental change to the encoding (which would make every existing
        // file fail verification) cannot go unnoticed.
        assert_eq!(chain_crc(0, 1, 1, Op::Put, "k", b"v", 10), 0xc2b8_859e);
    }
}
