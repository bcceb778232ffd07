//! Request handlers: decode, validate, call the store, shape the reply. Every failure is an
//! [`ApiError`], rendered in `error.rs`.

use std::sync::Arc;

use warp::Reply;
use warp::http::StatusCode;
use warp::reply::{Response, json, with_status};

use super::error::ApiError;
use super::models::*;
use super::{Api, Body};
use crate::store::{Mutation, Namespace, WaitError};

/// Longest key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 4096;

type Result<T> = std::result::Result<T, ApiError>;

/// Renders a handler's outcome, success or error, as a response.
pub fn respond(r: Result<Response>) -> Response {
    r.unwrap_or_else(Reply::into_response)
}

pub(crate) fn namespace(api: &Api, ns: &str) -> Result<Arc<Namespace>> {
    api.store
        .get(ns)
        .cloned()
        .ok_or_else(|| ApiError::unknown_namespace(ns, &api.store.names()))
}

fn writable(api: &Api, ns: &str) -> Result<Arc<Namespace>> {
    let namespace = namespace(api, ns)?;
    if let Some(upstream) = api.role.upstream(ns) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "namespace {ns:?} on this node is a read-only replica of {upstream}; send writes to the primary"
            ),
        ));
    }
    if namespace.fenced() {
        let why = match namespace.superseded_by() {
            Some(l) => format!(
                "; log {} was forked from this one at seq {} by a promotion",
                l.prev_log_id, l.fork_seq
            ),
            None => String::new(),
        };
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "namespace {ns:?} on this node is fenced: it was superseded and refuses writes{why}; send writes to the new primary"
            ),
        ));
    }
    Ok(namespace)
}

/// Checks a key that arrived in a URL path segment (still percent-encoded).
pub fn key_from_path(raw: &str) -> Result<String> {
    let key = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("key is not valid UTF-8 after percent-decoding"))?;
    check_key("key", &key)?;
    Ok(key.into_owned())
}

fn check_key(what: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(ApiError::bad_request(format!(
            "{what} is empty; use /api/v1/{{namespace}}/kv/{{key}}"
        )));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad_request(format!(
            "{what} is {} bytes long; the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

/// Parses a JSON body, explaining the classic shell mistake when the body was cut short.
fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| {
        let hint = if e.is_eof() {
            ". The body ends too early: if it was built with an unquoted $(... | base64), GNU \
             base64 wrapped the value at 76 columns and the shell split it; use \
             \"$(... | base64 | tr -d '\\n')\" or `base64 -w0`"
        } else {
            ""
        };
        ApiError::bad_request(format!("invalid JSON body: {e}{hint}"))
    })
}

fn ok_json<T: serde::Serialize>(body: &T) -> Result<Response> {
    Ok(json(body).into_response())
}

pub async fn health(api: Arc<Api>) -> Response {
    json(&HealthResponse {
        status: "ok",
        role: api.role.name(),
        namespaces: api.store.names(),
    })
    .into_response()
}

/// How long `?min_seq=` waits by default, and at most.
const DEFAULT_WAIT_MS: u64 = 5_000;
const MAX_WAIT_MS: u64 = 30_000;

/// Read-your-writes: waits until this node has applied `min_seq` (a seq a write returned from
/// the primary), bounded by `timeout_ms`.
async fn wait_for_seq(ns: &Namespace, min_seq: i64, timeout_ms: u64) -> Result<()> {
    if timeout_ms > MAX_WAIT_MS {
        return Err(ApiError::bad_request(format!(
            "timeout_ms must be at most {MAX_WAIT_MS}"
        )));
    }
    let wait = std::time::Duration::from_millis(timeout_ms);
    match ns.wait_for_seq(min_seq, wait).await {
        Ok(()) => Ok(()),
        Err(WaitError::Full { max }) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{max} reads are already waiting with ?min_seq on namespace {:?} (the limit, [storage_config.performance_config] max_seq_waiters); retry later",
                ns.name()
            ),
        )),
        Err(WaitError::ShuttingDown) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is shutting down",
        )),
        Err(WaitError::TimedOut) => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "namespace {:?} has applied up to seq {}; seq {min_seq} did not arrive within {timeout_ms} ms (replication lag, or no such seq yet)",
                ns.name(),
                ns.head().seq
            ),
        )),
    }
}

/// Largest page of `GET /kv` and `GET /changes`.
pub const MAX_PAGE: usize = 10_000;
/// Keys in a `GET /kv` page when the request sets no `limit`.
const DEFAULT_KEYS_PAGE: usize = 100;
/// Entries in a `GET /changes` page when the request sets no `limit`.
const DEFAULT_CHANGES_PAGE: usize = 1000;

fn parse_query<T: serde::de::DeserializeOwned>(raw: &str) -> Result<T> {
    serde_urlencoded::from_str(raw)
        .map_err(|e| ApiError::bad_request(format!("invalid query string: {e}")))
}

fn page_limit(limit: Option<usize>, default: usize) -> Result<usize> {
    match limit.unwrap_or(default) {
        0 => Err(ApiError::bad_request("limit must be at least 1")),
        n if n > MAX_PAGE => Err(ApiError::bad_request(format!(
            "limit must be at most {MAX_PAGE}"
        ))),
        n => Ok(n),
    }
}

/// `GET /kv/{key}`, or with no key, `GET /kv?prefix=&after=&limit=`: a page of keys in order.
pub async fn get(api: Arc<Api>, ns: String, raw_key: String, query: String) -> Result<Response> {
    let namespace = namespace(&api, &ns)?;
    if raw_key.is_empty() {
        let q: ListQuery = parse_query(&query)?;
        let limit = page_limit(q.limit, DEFAULT_KEYS_PAGE)?;
        let page = namespace.list(q.prefix, q.after, limit).await?;
        let next_after = (page.len() == limit)
            .then(|| page.last().map(|(k, _)| k.clone()))
            .flatten();
        let items = page
            .into_iter()
            .map(|(key, v)| ListItem {
                key,
                value: encode(&v.value),
                seq: v.seq,
                ts_ms: v.ts_ms,
            })
            .collect();
        return ok_json(&ListResponse { items, next_after });
    }
    let key = key_from_path(&raw_key)?;
    let q: GetQuery = parse_query(&query)?;
    if let Some(min_seq) = q.min_seq {
        wait_for_seq(&namespace, min_seq, q.timeout_ms.unwrap_or(DEFAULT_WAIT_MS)).await?;
    }
    match namespace.get(key).await? {
        Some(v) => ok_json(&GetResponse {
            value: encode(&v.value),
            found: true,
            seq: Some(v.seq),
            ts_ms: Some(v.ts_ms),
        }),
        None => Ok(with_status(
            json(&GetResponse {
                value: String::new(),
                found: false,
                seq: None,
                ts_ms: None,
            }),
            StatusCode::NOT_FOUND,
        )
        .into_response()),
    }
}

/// `PUT /kv/{key}`: JSON `{"value": base64}` by default; with
/// `Content-Type: application/octet-stream` the raw body is the value.
pub async fn put(
    api: Arc<Api>,
    ns: String,
    raw_key: String,
    content_type: Option<String>,
    query: String,
    body: Body,
) -> Result<Response> {
    let namespace = writable(&api, &ns)?;
    let key = key_from_path(&raw_key)?;
    let acks = write_acks(&api, &ns, &query)?;
    let body = body.read(api.max_body_bytes).await?;
    let raw = content_type
        .as_deref()
        .is_some_and(|ct| ct.trim().starts_with("application/octet-stream"));
    let value = if raw {
        body.to_vec()
    } else {
        let req: PutRequest = parse_json(&body)?;
        decode("value", &req.value).map_err(ApiError::bad_request)?
    };
    let c = namespace.write(vec![Mutation::Put { key, value }]).await?;
    let acked = wait_acks(&namespace, c.last_seq, acks).await?;
    ok_json(&WriteResponse {
        success: true,
        seq: c.last_seq,
        acks: acked,
    })
}

pub async fn delete(api: Arc<Api>, ns: String, raw_key: String, query: String) -> Result<Response> {
    let namespace = writable(&api, &ns)?;
    let key = key_from_path(&raw_key)?;
    let acks = write_acks(&api, &ns, &query)?;
    let c = namespace.write(vec![Mutation::Delete { key }]).await?;
    let acked = wait_acks(&namespace, c.last_seq, acks).await?;
    ok_json(&WriteResponse {
        success: true,
        seq: c.last_seq,
        acks: acked,
    })
}

/// `?acks=K&timeout_ms=T` of a write, or the namespace's `[acks_config]` default.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AcksQuery {
    acks: Option<u32>,
    timeout_ms: Option<u64>,
}

/// How many followers a write must wait for, and for how long (checked before the write, so
/// a bad parameter stores nothing).
fn write_acks(api: &Api, ns: &str, query: &str) -> Result<(usize, std::time::Duration)> {
    let q: AcksQuery = parse_query(query)?;
    let default = api.acks.get(ns).copied().unwrap_or_default();
    let timeout_ms = q.timeout_ms.unwrap_or(default.timeout_ms);
    if timeout_ms == 0 || timeout_ms > crate::config::MAX_ACKS_TIMEOUT_MS {
        return Err(ApiError::bad_request(format!(
            "timeout_ms must be 1 to {}, got {timeout_ms}",
            crate::config::MAX_ACKS_TIMEOUT_MS
        )));
    }
    let acks = q.acks.unwrap_or(default.acks) as usize;
    Ok((acks, std::time::Duration::from_millis(timeout_ms)))
}

/// Waits until `acks` followers applied `seq` (nothing to wait for when 0). Returns how many
/// did; a timeout is 504 saying the write IS committed here, so it must not be retried.
async fn wait_acks(
    namespace: &Namespace,
    seq: crate::log::Seq,
    (acks, timeout): (usize, std::time::Duration),
) -> Result<Option<usize>> {
    if acks == 0 {
        return Ok(None);
    }
    let got = namespace.acks.wait(seq, acks, timeout).await;
    if got >= acks {
        return Ok(Some(got));
    }
    let body = AcksTimeout {
        error: format!(
            "seq {seq} is committed on this node, but only {got} of the {acks} followers asked for applied it within {} ms; do not retry the write (it is stored), read it back with ?min_seq={seq} on a replica instead",
            timeout.as_millis()
        ),
        seq,
        acks: got,
        committed: true,
    };
    Err(ApiError::json(StatusCode::GATEWAY_TIMEOUT, &body))
}

/// `POST /kv/batch`: every item is validated before anything is written, then the whole batch
/// commits as one atomic group (one seq range, one `txn`).
pub async fn batch(api: Arc<Api>, ns: String, query: String, body: Body) -> Result<Response> {
    let namespace = writable(&api, &ns)?;
    let acks = write_acks(&api, &ns, &query)?;
    let body = body.read(api.max_body_bytes).await?;
    let req: BatchRequest = parse_json(&body)?;
    let mutations = match req.operation.as_str() {
        "put" => {
            let items = req.items.ok_or_else(|| {
                ApiError::bad_request("a put batch needs \"items\": [{\"key\", \"value\"}, ...]")
            })?;
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    check_key(&format!("items[{i}].key"), &item.key)?;
                    let value = decode(&format!("items[{i}].value"), &item.value)
                        .map_err(ApiError::bad_request)?;
                    Ok(Mutation::Put {
                        key: item.key,
                        value,
                    })
                })
                .collect::<Result<Vec<_>>>()?
        }
        "delete" => {
            let keys = req.keys.ok_or_else(|| {
                ApiError::bad_request("a delete batch needs \"keys\": [\"key\", ...]")
            })?;
            keys.into_iter()
                .enumerate()
                .map(|(i, key)| {
                    check_key(&format!("keys[{i}]"), &key)?;
                    Ok(Mutation::Delete { key })
                })
                .collect::<Result<Vec<_>>>()?
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown batch operation {other:?}; use \"put\" or \"delete\""
            )));
        }
    };
    if mutations.is_empty() {
        return Err(ApiError::bad_request("the batch is empty"));
    }
    let count = mutations.len();
    let c = namespace.write(mutations).await?;
    let acked = wait_acks(&namespace, c.last_seq, acks).await?;
    ok_json(&BatchResponse {
        success: true,
        count,
        first_seq: c.first_seq,
        last_seq: c.last_seq,
        acks: acked,
    })
}

pub async fn offset(api: Arc<Api>, ns: String) -> Result<Response> {
    let namespace = namespace(&api, &ns)?;
    let head = namespace.head();
    ok_json(&OffsetResponse {
        namespace: ns,
        log_id: crate::log::LogId::wire(namespace.log_id().as_ref()),
        head_seq: head.seq,
        head_crc: head.crc,
    })
}

pub async fn stats(api: Arc<Api>, ns: String) -> Result<Response> {
    let namespace = namespace(&api, &ns)?;
    // A damaged file may not even answer the counts; the head and the reason still matter.
    let s = match namespace.stats().await {
        Ok(s) => s,
        Err(_) if namespace.corrupt().is_some() => crate::store::Stats {
            head_seq: namespace.head().seq,
            ..Default::default()
        },
        Err(e) => return Err(e.into()),
    };
    ok_json(&StatsResponse {
        namespace: ns,
        role: api.role.of(namespace.name()),
        log_id: crate::log::LogId::wire(namespace.log_id().as_ref()),
        head_seq: s.head_seq,
        oldest_seq: s.oldest_seq,
        base_seq: s.base_seq,
        wal_entries: s.wal_entries,
        keys: s.keys,
        file_bytes: s.file_bytes,
        file: namespace.path().display().to_string(),
        synchronous: api.synchronous.pragma(),
        corrupt: namespace.corrupt().is_some(),
        corrupt_reason: namespace.corrupt().map(str::to_owned),
        replication: api
            .followers
            .get(namespace.name())
            .filter(|_| api.role.upstream(namespace.name()).is_some())
            .map(|f| f.tracker.snapshot(&namespace)),
        ready: super::failover::not_ready(&api, &namespace).unwrap_or_else(|| "ready".to_owned()),
        fenced: namespace.fenced(),
        superseded_by: namespace.superseded_by().map(|l| SupersededBy {
            log_id: l.prev_log_id.to_string(),
            fork_seq: l.fork_seq,
        }),
        followers: namespace
            .acks
            .list()
            .into_iter()
            .map(|f| FollowerStats {
                lag: (s.head_seq - f.applied_seq).max(0),
                id: f.id,
                address: f.address,
                applied_seq: f.applied_seq,
                connected_since_ms: f.connected_since_ms,
            })
            .collect(),
        notifier: api
            .notifications
            .get(namespace.name())
            .map(|n| NotifierStats {
                sent: n.sent.load(std::sync::atomic::Ordering::Relaxed),
                subscribed_topics: n.subscriptions.load(std::sync::atomic::Ordering::Relaxed),
            }),
    })
}

/// `GET /changes?since=N&limit=M`: the log after seq N — how a subscriber that saw a gap in
/// `seq_num` re-reads what it missed.
pub async fn changes(api: Arc<Api>, ns: String, query: String) -> Result<Response> {
    let namespace = namespace(&api, &ns)?;
    let q: ChangesQuery = parse_query(&query)?;
    if q.since < 0 {
        return Err(ApiError::bad_request("since must be 0 or more"));
    }
    let limit = page_limit(q.limit, DEFAULT_CHANGES_PAGE)?;
    let head = namespace.head().seq;
    let entries = namespace
        .entries_from(q.since + 1, limit, usize::MAX)
        .await?;
    // Entries start at the oldest one kept: answering from a later seq than asked would hide
    // the gap from a client recovering missed changes.
    // (Recently pruned entries may still be in the writer's memory window: the log's base
    // decides, so the answer does not depend on what happens to be cached.)
    let base = namespace.base_seq();
    let first = if q.since < base {
        Some(base + 1)
    } else {
        entries.first().map(|e| e.seq)
    };
    if let Some(first) = first.filter(|&seq| seq > q.since + 1) {
        return Err(ApiError::new(
            StatusCode::GONE,
            format!(
                "the entries after seq {} were pruned: the log of {ns:?} starts at seq {}; read the keys again (GET /api/v1/{ns}/kv) and continue from head seq {head}",
                q.since, first
            ),
        ));
    }
    let entries = entries
        .into_iter()
        .take(limit)
        .map(|e| Change {
            seq: e.seq,
            txn: e.txn,
            op: e.op.as_str(),
            value: (e.op == crate::log::Op::Put).then(|| encode(&e.value)),
            key: e.key,
            ts_ms: e.ts_ms,
        })
        .collect();
    ok_json(&ChangesResponse {
        namespace: ns,
        head_seq: head,
        entries,
    })
}
