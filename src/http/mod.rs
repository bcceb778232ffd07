//! The HTTP/JSON API (DESIGN.md §5), built with warp.
//!
//! - `filters` (here): which route calls which handler.
//! - [`handlers`]: what each route does.
//! - [`metrics`]: `GET /metrics`.
//! - [`models`]: the JSON shapes.
//! - [`error`]: the one place errors become `{"error": ...}` responses.

pub mod error;
pub mod failover;
pub mod handlers;
pub mod metrics;
pub mod models;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use warp::Filter;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::config::Synchronous;
use crate::store::Store;

/// Whether this node takes writes, per namespace.
#[derive(Debug, Clone)]
pub enum Role {
    Primary,
    /// Maps each namespace this node follows to its upstream's address; the others (not
    /// followed, or promoted since) take writes.
    Replica {
        upstreams: Upstreams,
    },
}

/// The namespaces a replica follows, by name, with their upstream; shared with the follower
/// tasks' owner so a promotion takes effect everywhere at once.
pub type Upstreams = Arc<std::sync::RwLock<BTreeMap<String, String>>>;

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica { .. } => "replica",
        }
    }

    /// The upstream a namespace is replicated from, if this node follows it.
    pub fn upstream(&self, ns: &str) -> Option<String> {
        match self {
            Role::Primary => None,
            Role::Replica { upstreams } => upstreams.read().unwrap().get(ns).cloned(),
        }
    }

    /// "replica" for a namespace this node follows, else "primary".
    pub fn of(&self, ns: &str) -> &'static str {
        if self.upstream(ns).is_some() {
            "replica"
        } else {
            "primary"
        }
    }
}

/// What a replica's API needs to know of one followed namespace.
#[derive(Clone)]
pub struct Followed {
    pub tracker: crate::replication::follower::Tracker,
    /// Stops this namespace's follower (a promotion).
    pub stop: tokio_util::sync::CancellationToken,
    /// `/ready` answers 503 while the follower is further behind than this.
    pub max_lag: i64,
}

/// Counters a notifier shares with `/stats`.
#[derive(Clone)]
pub struct NotifierCounters {
    pub sent: Arc<std::sync::atomic::AtomicU64>,
    pub subscriptions: Arc<std::sync::atomic::AtomicI64>,
}

/// State every handler shares.
pub struct Api {
    pub store: Arc<Store>,
    pub role: Role,
    pub synchronous: Synchronous,
    pub max_body_bytes: u64,
    /// Replica: each followed namespace's follower.
    pub followers: BTreeMap<String, Followed>,
    /// Per namespace: the default `?acks=K&timeout_ms=T` of writes (`[acks_config.NS]`).
    pub acks: BTreeMap<String, crate::config::AcksConfig>,
    /// Per namespace with a notifier: notifications handed to ZeroMQ, subscribed topics.
    pub notifications: BTreeMap<String, NotifierCounters>,
    /// Request latency by route class, for `/metrics`.
    pub http_metrics: metrics::HttpMetrics,
}

fn with_api(
    api: Arc<Api>,
) -> impl Filter<Extract = (Arc<Api>,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || api.clone())
}

/// A request body not read yet: handlers validate the path first, then read it with a size
/// limit (so `PUT /kv/` answers "key is empty", and a chunked body cannot exceed the limit).
pub struct Body {
    content_length: Option<u64>,
    stream: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, warp::Error>> + Send>,
    >,
}

impl Body {
    /// Reads the whole body, refusing (413) anything over `limit` bytes.
    pub async fn read(mut self, limit: u64) -> Result<bytes::Bytes, error::ApiError> {
        use futures_util::StreamExt;
        let too_large = |n: u64| {
            error::ApiError::new(
                warp::http::StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body of {n} bytes or more is over the limit of {limit} bytes (http_config.max_body_bytes)"
                ),
            )
        };
        if let Some(n) = self.content_length.filter(|&n| n > limit) {
            return Err(too_large(n));
        }
        let mut buf = bytes::BytesMut::new();
        while let Some(chunk) = self.stream.next().await {
            let chunk = chunk.map_err(|e| {
                error::ApiError::bad_request(format!("cannot read request body: {e}"))
            })?;
            if (buf.len() + chunk.len()) as u64 > limit {
                return Err(too_large((buf.len() + chunk.len()) as u64));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

fn body() -> impl Filter<Extract = (Body,), Error = warp::Rejection> + Clone {
    fn boxed<S, B>(content_length: Option<u64>, stream: S) -> Body
    where
        S: futures_util::Stream<Item = Result<B, warp::Error>> + Send + 'static,
        B: warp::Buf,
    {
        use futures_util::TryStreamExt;
        Body {
            content_length,
            stream: Box::pin(stream.map_ok(|mut b| b.copy_to_bytes(b.remaining()))),
        }
    }
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .map(boxed)
}

/// The query string, empty when there is none.
fn raw_query() -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// Every route of the API, with errors rendered as JSON.
pub fn routes(api: Arc<Api>) -> BoxedFilter<(Response,)> {
    get_health(api.clone())
        .or(get_metrics(api.clone()))
        .unify()
        .or(post_batch(api.clone()))
        .unify()
        .or(get_kv(api.clone()))
        .unify()
        .or(put_kv(api.clone()))
        .unify()
        .or(delete_kv(api.clone()))
        .unify()
        .or(get_offset(api.clone()))
        .unify()
        .or(get_stats(api.clone()))
        .unify()
        .or(get_changes(api.clone()))
        .unify()
        .or(failover::routes(api))
        .unify()
        .recover(error::recover)
        .unify()
        .boxed()
}

/// `/api/v1/{namespace}`, extracting the namespace.
fn namespace() -> impl Filter<Extract = (String,), Error = warp::Rejection> + Clone {
    warp::path("api")
        .and(warp::path("v1"))
        .and(warp::path::param::<String>())
}

/// `/api/v1/{namespace}/kv/{key}`, extracting both. The key is the rest of the path,
/// percent-decoded by the handler (so an empty key can get a clear 400 rather than a bare 404).
fn kv_key() -> impl Filter<Extract = (String, String), Error = warp::Rejection> + Clone {
    namespace()
        .and(warp::path("kv"))
        .and(warp::path::tail())
        .map(|ns: String, tail: warp::path::Tail| (ns, tail.as_str().to_owned()))
        .untuple_one()
}

/// `GET /health`
fn get_health(api: Arc<Api>) -> BoxedFilter<(Response,)> {
    warp::path!("health")
        .and(warp::get())
        .and(with_api(api))
        .then(handlers::health)
        .boxed()
}

/// `GET /metrics`
fn get_metrics(api: Arc<Api>) -> BoxedFilter<(Response,)> {
    warp::path!("metrics")
        .and(warp::get())
        .and(with_api(api))
        .then(metrics::metrics)
        .boxed()
}

/// `POST /api/v1/{namespace}/kv/batch`
fn post_batch(api: Arc<Api>) -> BoxedFilter<(Response,)> {
    namespace()
        .and(warp::path!("kv" / "batch"))
        .and(warp::post())
        .and(with_api(api))
        .and(raw_query())
        .and(body())
        .then(|ns, api, query, body| async move {
            handlers::respond(handlers::batch(api, ns, query, body).await)
        })
        .boxed()
}

/// `GET /api/v1/{namespace}/kv/{key}`
fn get_kv(api: Arc<Api>) -> BoxedFilter<(Response,)> {
    kv_key()
        .and(warp::get())
        .and(with_api(api))
        .and(raw_query())
        .then(|ns, key, api, query| async move {
            handlers::respond(handlers::get(api, ns, key, query).await)
        })
        .boxed()
}

/// `PUT /api/v1/{namespace}/kv/{key}`
fn put_kv(api: Arc<Api>) -> BoxedFilter<(Response,)> {
    kv_key()
        .and(warp::put())
        .and(with_api(api))
        .and(warp::header::optional::<String>("content-type"))
        .and(raw_query())
        .and(body())
        .then(|ns, key, api, ct, query, body| async move {
            handlers::respond(handlers::put(api, ns, key, ct, query, body).await)
        })
        .boxed()
}

/// `DELETE /api/v1/{namespace}/kv/{key}`
fn delete_kv(api: Arc<Api>) -> BoxedFilter<(Response,)> {
    kv_key()
        .and(warp::delete())
        .and(with_api(api))
        .and(raw_query())
        .then(|ns, key, api, query| async move {
            handlers::respond(handlers::delete(api, ns, key, query).await)
        })
        .boxed()
}

/// `GET /api/v1/{namespace}/offset`
fn get_offset(api: Arc<Api>) -> BoxedFilter<(Response,)> {
    namespace()
        .and(warp::path!("offset"))
        .and(warp::get())
        .and(with_api(api))
        .then(|ns, api| async move { handlers::respond(handlers::offset(api, ns).await) })
        .boxed()
}

/// `GET /api/v1/{namespace}/changes`
fn get_changes(api: Arc<Api>) -> BoxedFilter<(Response,)> {
    namespace()
        .and(warp::path!("changes"))
        .and(warp::get())
        .and(with_api(api))
        .and(raw_query())
        .then(|ns, api, query| async move {
            handlers::respond(handlers::changes(api, ns, query).await)
        })
        .boxed()
}

/// `GET /api/v1/{namespace}/stats`
fn get_stats(api: Arc<Api>) -> BoxedFilter<(Response,)> {
    namespace()
        .and(warp::path!("stats"))
        .and(warp::get())
        .and(with_api(api))
        .then(|ns, api| async move { handlers::respond(handlers::stats(api, ns).await) })
        .boxed()
}

/// Serves the API on an already-bound listener until `shutdown` resolves, then lets in-flight
/// requests finish.
pub async fn serve(
    api: Arc<Api>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // Every answered request is timed for /metrics.
    let observed = api.http_metrics.clone();
    let timed = routes(api).with(warp::log::custom(move |info| observed.observe(info)));
    warp::serve(timed)
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
}
