//! JSON shapes of the HTTP API (DESIGN.md §5). Values travel as standard padded base64.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::log::Seq;

pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes a base64 value; `what` names the field in the error.
pub fn decode(what: &str, b64: &str) -> Result<Vec<u8>, String> {
    STANDARD.decode(b64).map_err(|e| {
        let hint = if b64.contains('\n') || b64.contains('\r') {
            " (it contains a line break: GNU base64 wraps at 76 columns; use `base64 | tr -d '\\n'` or `base64 -w0`)"
        } else {
            ""
        };
        format!("{what} is not valid standard base64: {e}{hint}")
    })
}

#[derive(Debug, Deserialize)]
pub struct PutRequest {
    pub value: String,
}

#[derive(Debug, Serialize)]
pub struct WriteResponse {
    pub success: bool,
    pub seq: Seq,
    /// With `?acks=K`: how many followers have applied the write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acks: Option<usize>,
}

/// 504 for a write that waited for `?acks=K` in vain: it IS committed here, so a client must
/// not retry it.
#[derive(Debug, Serialize)]
pub struct AcksTimeout {
    pub error: String,
    pub seq: Seq,
    pub acks: usize,
    pub committed: bool,
}

#[derive(Debug, Serialize)]
pub struct GetResponse {
    pub value: String,
    pub found: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
pub struct BatchItem {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Deserialize)]
pub struct BatchRequest {
    pub operation: String,
    pub items: Option<Vec<BatchItem>>,
    pub keys: Option<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub struct BatchResponse {
    pub success: bool,
    pub count: usize,
    pub first_seq: Seq,
    pub last_seq: Seq,
    /// With `?acks=K`: how many followers have applied the batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acks: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct OffsetResponse {
    pub namespace: String,
    pub log_id: String,
    /// Seq of the last committed entry (0 for an empty log).
    pub head_seq: Seq,
    /// crc of that entry: (log_id, head_seq, head_crc) identifies the history.
    pub head_crc: u32,
}

#[derive(Debug, Serialize)]
pub struct StatsResponse {
    pub namespace: String,
    pub role: &'static str,
    pub log_id: String,
    pub head_seq: Seq,
    pub oldest_seq: Seq,
    /// The entry just before the oldest retained one: pruned, or the seq a snapshot was
    /// installed at (0 when the log was never pruned).
    pub base_seq: Seq,
    pub wal_entries: i64,
    pub keys: i64,
    pub file_bytes: u64,
    pub file: String,
    pub synchronous: &'static str,
    /// True once the file was found damaged (check at open, or SQLite reporting it
    /// malformed); reads and writes of the namespace then fail, naming the file.
    pub corrupt: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corrupt_reason: Option<String>,
    /// Replica only: upstream, state, upstream head, applied seq, lag, last error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication: Option<crate::replication::follower::Status>,
    /// "ready", or why `/ready` does not count this namespace as ready.
    pub ready: String,
    /// The namespace refuses writes (`POST /fence`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub fenced: bool,
    /// A newer log forked from this one, reported by a follower: this node is a stale primary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<SupersededBy>,
    /// The followers connected to this node for the namespace (Tail streams that name
    /// themselves), with what each applied: what `?acks=K` counts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub followers: Vec<FollowerStats>,
    /// When the namespace has a ZeroMQ notifier: its endpoint's counters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notifier: Option<NotifierStats>,
}

#[derive(Debug, Serialize)]
pub struct HealthResponse {
    pub status: &'static str,
    pub role: &'static str,
    pub namespaces: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct SupersededBy {
    pub log_id: String,
    pub fork_seq: Seq,
}

#[derive(Debug, Serialize)]
pub struct FollowerStats {
    pub id: String,
    pub address: String,
    pub applied_seq: Seq,
    /// This node's head seq minus `applied_seq`.
    pub lag: Seq,
    pub connected_since_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct NotifierStats {
    /// Messages handed to ZeroMQ (a subscriber past its high_water_mark still loses some).
    pub sent: u64,
    /// Distinct topic prefixes subscribed to right now.
    pub subscribed_topics: i64,
}

/// `GET /kv?prefix=&after=&limit=`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub after: String,
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct ListItem {
    pub key: String,
    pub value: String,
    pub seq: Seq,
    pub ts_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct ListResponse {
    pub items: Vec<ListItem>,
    /// Pass as `after` for the next page; null on the last page.
    pub next_after: Option<String>,
}

/// `GET /changes?since=&limit=`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    pub since: Seq,
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct Change {
    pub seq: Seq,
    pub txn: Seq,
    pub op: &'static str,
    pub key: String,
    /// Absent for a delete.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub ts_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct ChangesResponse {
    pub namespace: String,
    pub head_seq: Seq,
    /// Entries with seq > since, in seq order.
    pub entries: Vec<Change>,
}

/// `GET /kv/{key}?min_seq=&timeout_ms=`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    /// Wait until this node has applied this seq before reading (read-your-writes).
    pub min_seq: Option<Seq>,
    pub timeout_ms: Option<u64>,
}
