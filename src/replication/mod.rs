//! Log shipping over gRPC (DESIGN.md §3, `proto/ferry/v1/replication.proto`).
//!
//! - [`service`]: the upstream side — `Position`, the `Tail` stream and `Snapshot`, served by
//!   primaries and by replicas that have a `[grpc_config]` (chaining).
//! - [`follower`]: the replica side — one task per followed namespace: connect, verify, apply,
//!   retry with backoff, stop on divergence.
//! - here: the generated protobuf code, conversions to domain types, and the typed errors.

pub mod backup;
mod bootstrap;
pub mod client;
pub(crate) mod conns;
pub(crate) mod follower;
pub use follower::OnDivergence;
pub mod service;

use tonic::Status;
use tonic::metadata::MetadataValue;

use crate::log::{Entry, Op};

/// Generated from `proto/ferry/v1/replication.proto`.
pub mod pb {
    tonic::include_proto!("ferry.v1");
}

/// Largest gRPC message a node sends or a client of it accepts (tonic's default is 4 MiB): a
/// tail batch runs past [`service::MAX_BATCH_BYTES`] to finish an atomic request.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

// A Tail message is a batch of at most `MAX_BATCH_BYTES` finished by the request it stopped
// inside: the largest request the store accepts must fit beside a whole batch.
const _: () = assert!(
    crate::store::MAX_REQUEST_BYTES
        + service::MAX_BATCH_BYTES
        + crate::store::ENTRY_OVERHEAD_BYTES * service::MAX_BATCH_ENTRIES
        <= MAX_MESSAGE_BYTES
);

/// Metadata key carrying the typed error code on a gRPC status.
pub const ERROR_KEY: &str = "ferry-error";

/// The replication errors a client can branch on (see the .proto for the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    UnknownNamespace,
    InvalidArgument,
    AheadOfUpstream,
    HistoryDiffers,
    SnapshotNeeded,
    ShuttingDown,
    /// The node or the connection is at its stream cap (`grpc_config.max_streams*`).
    TooManyStreams,
    /// The client did not read for `grpc_config.stream_stall_timeout`; the stream was closed.
    Stalled,
    /// No replication token was presented, and this node requires one.
    Unauthenticated,
    /// The replication token presented is not one of this node's.
    PermissionDenied,
}

/// Every typed error, for reading one back from a status.
const KINDS: [ErrorKind; 10] = [
    ErrorKind::UnknownNamespace,
    ErrorKind::InvalidArgument,
    ErrorKind::AheadOfUpstream,
    ErrorKind::HistoryDiffers,
    ErrorKind::SnapshotNeeded,
    ErrorKind::ShuttingDown,
    ErrorKind::TooManyStreams,
    ErrorKind::Stalled,
    ErrorKind::Unauthenticated,
    ErrorKind::PermissionDenied,
];

impl ErrorKind {
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::UnknownNamespace => "unknown-namespace",
            ErrorKind::InvalidArgument => "invalid-argument",
            ErrorKind::AheadOfUpstream => "ahead-of-upstream",
            ErrorKind::HistoryDiffers => "history-differs",
            ErrorKind::SnapshotNeeded => "snapshot-needed",
            ErrorKind::ShuttingDown => "shutting-down",
            ErrorKind::TooManyStreams => "too-many-streams",
            ErrorKind::Stalled => "stream-stalled",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::PermissionDenied => "permission-denied",
        }
    }

    fn grpc(self) -> tonic::Code {
        match self {
            ErrorKind::UnknownNamespace => tonic::Code::NotFound,
            ErrorKind::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorKind::AheadOfUpstream => tonic::Code::OutOfRange,
            ErrorKind::HistoryDiffers | ErrorKind::SnapshotNeeded => {
                tonic::Code::FailedPrecondition
            }
            ErrorKind::ShuttingDown | ErrorKind::Stalled => tonic::Code::Unavailable,
            ErrorKind::TooManyStreams => tonic::Code::ResourceExhausted,
            ErrorKind::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorKind::PermissionDenied => tonic::Code::PermissionDenied,
        }
    }

    /// The one place a typed error becomes a gRPC status.
    pub fn status(self, message: impl Into<String>) -> Status {
        let mut status = Status::new(self.grpc(), message);
        status
            .metadata_mut()
            .insert(ERROR_KEY, MetadataValue::from_static(self.code()));
        status
    }

    /// Reads the typed error back from a status, if it has one.
    pub fn of(status: &Status) -> Option<ErrorKind> {
        let code = status.metadata().get(ERROR_KEY)?.to_str().ok()?;
        KINDS.into_iter().find(|k| k.code() == code)
    }
}

/// Most characters of a client's input quoted back in an error message: a status message
/// travels in a header, and a client's header limit must not turn ferry's answer into
/// RESOURCE_EXHAUSTED.
pub const MAX_QUOTED_CHARS: usize = 64;

/// `text` quoted for an error message, cut to [`MAX_QUOTED_CHARS`] characters with "…" and
/// its full length when longer.
pub fn quote(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &text[..cut], text.len()),
    }
}

impl From<Entry> for pb::Entry {
    fn from(e: Entry) -> pb::Entry {
        pb::Entry {
            seq: e.seq,
            txn: e.txn,
            op: match e.op {
                Op::Put => pb::Op::Put,
                Op::Delete => pb::Op::Delete,
            } as i32,
            key: e.key,
            value: e.value,
            ts_ms: e.ts_ms,
            crc: e.crc,
        }
    }
}

impl TryFrom<pb::Entry> for Entry {
    type Error = String;

    fn try_from(e: pb::Entry) -> Result<Entry, String> {
        let op = match pb::Op::try_from(e.op) {
            Ok(pb::Op::Put) => Op::Put,
            Ok(pb::Op::Delete) => Op::Delete,
            Err(_) => return Err(format!("entry {} has unknown op {}", e.seq, e.op)),
        };
        Ok(Entry {
            seq: e.seq,
            txn: e.txn,
            op,
            key: e.key,
            value: e.value,
            ts_ms: e.ts_ms,
            crc: e.crc,
        })
    }
}

impl From<crate::store::reader::KvRow> for pb::KvRow {
    fn from(r: crate::store::reader::KvRow) -> pb::KvRow {
        pb::KvRow {
            key: r.key,
            value: r.value,
            seq: r.seq,
            ts_ms: r.ts_ms,
        }
    }
}

/// Whether `s` is a log id as minted ([`crate::log::LogId`]): 32 lowercase hex digits.
pub fn is_log_id(s: &str) -> bool {
    crate::log::LogId::parse(s).is_some()
}
