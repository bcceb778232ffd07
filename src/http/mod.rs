//! The HTTP/JSON API (DESIGN.md §5), built with warp.
//!
//! - `filters` (here): which route calls which handler.
//! - [`handlers`]: what each route does.
//! - [`metrics`]: `GET /metrics`.
//! - [`models`]: the JSON shapes.
//! - [`error`]: the one place errors become `{"error": ...}` responses.
//! - [`auth`]: bearer tokens, checked before any route.
//! - [`server`]: connections: the cap, timeouts, TLS.

pub mod auth;
pub mod error;
pub mod failover;
pub mod handlers;
pub mod metrics;
pub mod models;
pub mod server;

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
    /// How long a request body may take to arrive (`http_config.body_read_timeout`).
    pub body_read_timeout: std::time::Duration,
    /// Tokens required per scope (`[auth]`); `None`: the API is open.
    pub auth: Option<Arc<auth::HttpAuth>>,
    /// Replica: each followed namespace's follower.
    pub followers: BTreeMap<String, Followed>,
    /// Per namespace: the default `?acks=K&timeout_ms=T` of writes (`[acks_config.NS]`).
    pub acks: BTreeMap<String, crate::config::AcksConfig>,
    /// Per namespace with a notifier: notifications handed to ZeroMQ, subscribed topics.
    pub notifications: BTreeMap<String, NotifierCounters>,
    /// Log one line per request (`[log_config] access_log`).
    pub access_log: bool,
    /// Request latency by route class, for `/metrics`.
    pub http_metrics: metrics::HttpMetrics,
    /// The gRPC server's connections and streams (`None` without `[grpc_config]`), for
    /// `/metrics`.
    pub(crate) grpc_conns: Option<Arc<crate::replication::conns::Connections>>,
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
    /// `http_config.body_read_timeout`: a body that trickles in is not waited for forever.
    timeout: std::time::Duration,
    stream: BodyStream,
}

/// The chunks of a request body, from warp's filter or straight from hyper (see [`fast`]).
type BodyStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, BodyError>> + Send>>;
type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl Body {
    /// Reads the whole body, refusing (413) anything over `limit` bytes, and (408) a body
    /// that has not arrived in full within the body read timeout.
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
        let timeout = self.timeout;
        let read = async {
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
        };
        tokio::time::timeout(timeout, read).await.unwrap_or_else(|_| {
            Err(error::ApiError::new(
                warp::http::StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received in full within {timeout:?} (http_config.body_read_timeout)"
                ),
            ))
        })
    }
}

fn body(
    timeout: std::time::Duration,
) -> impl Filter<Extract = (Body,), Error = warp::Rejection> + Clone {
    let boxed = move |content_length: Option<u64>, stream| Body {
        content_length,
        timeout,
        stream: boxed_stream(stream),
    };
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .map(boxed)
}

fn boxed_stream<S, B>(stream: S) -> BodyStream
where
    S: futures_util::Stream<Item = Result<B, warp::Error>> + Send + 'static,
    B: warp::Buf,
{
    use futures_util::TryStreamExt;
    Box::pin(
        stream
            .map_ok(|mut b| b.copy_to_bytes(b.remaining()))
            .map_err(BodyError::from),
    )
}

/// The data chunks of a body as hyper hands it over (trailers, which no route reads, skipped).
fn incoming_stream(mut body: hyper::body::Incoming) -> BodyStream {
    use hyper::body::Body as _;
    use std::task::Poll;
    Box::pin(futures_util::stream::poll_fn(move |cx| {
        loop {
            return match std::pin::Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(data))),
                    Err(_trailers) => continue,
                },
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
    }))
}

/// The query string, empty when there is none.
fn raw_query() -> impl Filter<Extract = (String,), Error = std::convert::Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// Every route of the API, behind the token check, with errors rendered as JSON.
pub fn routes(api: Arc<Api>) -> BoxedFilter<(Response,)> {
    auth::require(api.auth.clone())
        .and(api_routes(api))
        .recover(error::recover)
        .unify()
        .boxed()
}

fn api_routes(api: Arc<Api>) -> BoxedFilter<(Response,)> {
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
    let body = body(api.body_read_timeout);
    namespace()
        .and(warp::path!("kv" / "batch"))
        .and(warp::post())
        .and(with_api(api))
        .and(raw_query())
        .and(body)
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
    let body = body(api.body_read_timeout);
    kv_key()
        .and(warp::put())
        .and(with_api(api))
        .and(warp::header::optional::<String>("content-type"))
        .and(raw_query())
        .and(body)
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

/// Serves the API on an already-bound listener (over TLS with `tls`), with the connection
/// limits of `config`, until `shutdown` resolves, then lets in-flight requests finish.
pub async fn serve(
    api: Arc<Api>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    config: crate::config::HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let access_log = api.access_log;
    let api_for_fast = api.clone();
    // Every answered request is timed for /metrics.
    let observed = api.http_metrics.clone();
    let routes = routes(api)
        .with(warp::log::custom(move |info| observed.observe(info)))
        .map(warp::Reply::into_response)
        .boxed();
    let routes = if access_log { logged(routes) } else { routes };
    let fast = fast(api_for_fast);
    server::serve(routes, Some(fast), listener, tls, config, shutdown).await;
}

/// `GET` and `PUT /api/v1/{namespace}/kv/{key}` with no query string, the hot read and
/// write, answered without warp's filter chain: the profile of 64 connections reading one key
/// put ~11% of the server's CPU in the chain (a boxed future per route tried, rejections
/// combined) and the handler itself under 20%. It does what the chain does for them: the
/// token check (a refused request goes to the chain, which renders the 401/403), the handler,
/// the latency for `/metrics` and the access log line. Anything else, and any other shape of
/// request (a query, an empty key or namespace, a header the chain would refuse), goes to the
/// chain, which answers it as before.
// The request handed back (the `Err`) is large; boxing it would cost every request the
// chain answers an allocation, to save a copy of a few hundred bytes.
#[allow(clippy::result_large_err)]
fn fast(api: Arc<Api>) -> server::Fast {
    Arc::new(move |req| {
        let Some(FastRequest {
            write,
            ns,
            raw_key,
            content_type,
            content_length,
        }) = FastRequest::of(&req, api.auth.as_deref())
        else {
            return Err(req);
        };
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let api = api.clone();
        let start = std::time::Instant::now();
        type Answer = futures_util::future::BoxFuture<
            'static,
            std::result::Result<Response, error::ApiError>,
        >;
        let answer: Answer = if write {
            let body = Body {
                content_length,
                timeout: api.body_read_timeout,
                stream: incoming_stream(req.into_body()),
            };
            let query = String::new();
            Box::pin(handlers::put(
                api.clone(),
                ns,
                raw_key,
                content_type,
                query,
                body,
            ))
        } else {
            Box::pin(handlers::get(api.clone(), ns, raw_key, String::new()))
        };
        Ok(Box::pin(async move {
            let resp = handlers::respond(answer.await);
            api.http_metrics
                .observe_parts(&method, &path, resp.status(), start.elapsed());
            if api.access_log {
                log_access(start, &method, &path, &resp);
            }
            resp
        })
            as futures_util::future::BoxFuture<'static, Response>)
    })
}

/// What [`fast`] takes from a request it answers.
struct FastRequest {
    /// `PUT` (else `GET`).
    write: bool,
    ns: String,
    raw_key: String,
    content_type: Option<String>,
    content_length: Option<u64>,
}

impl FastRequest {
    /// The parts of a `GET` or `PUT /api/v1/{ns}/kv/{key}` without a query whose token is
    /// good; `None` for any other request, and for a header the chain would refuse or answer
    /// differently (not visible ASCII, an unparsable length).
    fn of(
        req: &hyper::Request<hyper::body::Incoming>,
        auth: Option<&auth::HttpAuth>,
    ) -> Option<Self> {
        let write = match *req.method() {
            warp::http::Method::GET => false,
            warp::http::Method::PUT => true,
            _ => return None,
        };
        if req.uri().query().is_some() {
            return None;
        }
        let path = req.uri().path();
        let (ns, raw_key) = path.strip_prefix("/api/v1/")?.split_once("/kv/")?;
        if ns.is_empty() || ns.contains('/') || raw_key.is_empty() {
            return None;
        }
        let header = |name| match req.headers().get(name).map(|h| h.to_str()) {
            None => Some(None),
            Some(Ok(h)) => Some(Some(h)),
            Some(Err(_)) => None,
        };
        if let Some(auth) = auth {
            auth.check(
                auth::Scope::of(req.method(), path),
                header("authorization")?,
            )
            .ok()?;
        }
        let (content_type, content_length) = if write {
            let length = match header("content-length")? {
                None => None,
                Some(n) => Some(n.parse().ok()?),
            };
            (header("content-type")?.map(str::to_owned), length)
        } else {
            (None, None)
        };
        Some(FastRequest {
            write,
            ns: ns.to_owned(),
            raw_key: raw_key.to_owned(),
            content_type,
            content_length,
        })
    }
}

/// The access log line of one request (see [`logged`]).
fn log_access(start: std::time::Instant, method: &warp::http::Method, path: &str, resp: &Response) {
    use warp::hyper::body::Body as _;
    tracing::info!(
        target: "ferry::access",
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        duration_ms = (start.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        bytes = resp.body().size_hint().exact(),
        "request"
    );
}

/// `routes` with one INFO line per request on target `ferry::access`: method, path, status,
/// duration and response body bytes (absent when the body is streamed without a length).
fn logged(routes: BoxedFilter<(Response,)>) -> BoxedFilter<(Response,)> {
    warp::any()
        .map(std::time::Instant::now)
        .and(warp::method())
        .and(warp::path::full())
        .and(routes)
        .map(
            |start: std::time::Instant,
             method: warp::http::Method,
             path: warp::path::FullPath,
             resp: Response| {
                log_access(start, &method, path.as_str(), &resp);
                resp
            },
        )
        .boxed()
}
