//! Serving the API's filters: the accept loop, the cap on open connections, the per-connection
//! timeouts, optional TLS, and JSON bodies for the errors hyper answers by itself.
//!
//! warp 0.4 has no TLS and no timeouts of its own, so connections are served here with
//! hyper's HTTP/1.1 connection and warp's filters as the service.
//!
//! Each connection is watched against one deadline at a time:
//! - while a request head is arriving (from the moment it connects, or from the first byte
//!   of the next request): `header_read_timeout` after it started (slowloris);
//! - while a handler runs: none (each handler bounds its own waits; bodies have
//!   `body_read_timeout`, see [`super::Body::read`]);
//! - otherwise (keep-alive, or a response being written): `idle_timeout` after the last byte
//!   moved either way.
//!
//! When it passes, the connection is dropped: no request is in progress on it.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use warp::filters::BoxedFilter;
use warp::reply::Response;

use crate::config::HttpConfig;

/// Reads the certificate and key of `[http_config]`; `None` without them (plain HTTP).
pub fn tls_acceptor(config: &HttpConfig) -> Result<Option<TlsAcceptor>, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let (Some(cert_path), Some(key_path)) = (&config.cert_path, &config.key_path) else {
        return Ok(None);
    };
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "http_config.cert_path {}: cannot read a PEM certificate chain: {e}",
                cert_path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "http_config.cert_path {}: no PEM certificate in it",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        format!(
            "http_config.key_path {}: cannot read a PEM private key: {e}",
            key_path.display()
        )
    })?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        format!(
            "http_config: certificate {} and key {} cannot be used together: {e}",
            cert_path.display(),
            key_path.display()
        )
    })?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(tls))))
}

/// The answer to a connection over `max_connections`, written without waiting before the
/// connection is closed.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 87\r\n\r\n{\"error\":\"too many open connections (http_config.max_connections); retry in a moment\"}\n";

/// Routes answered without warp's filter chain (the hot `GET` and `PUT /kv/{key}`, see
/// `http::fast`): the request's response, or the request handed back to go to the filters.
pub type Fast = Arc<
    dyn Fn(
            hyper::Request<Incoming>,
        )
            -> Result<futures_util::future::BoxFuture<'static, Response>, hyper::Request<Incoming>>
        + Send
        + Sync,
>;

/// Serves `routes` on `listener` until `shutdown` resolves, then stops accepting and lets the
/// requests in progress finish. Requests that `fast` takes skip `routes`.
pub async fn serve(
    routes: BoxedFilter<(Response,)>,
    fast: Option<Fast>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    config: HttpConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let stop = CancellationToken::new();
    let connections = TaskTracker::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let config = Arc::new(config);
    let mut last_cap_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) if is_connection_error(&e) => {
                    tracing::debug!(error = %e, "HTTP connection failed before it was accepted");
                    continue;
                }
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close rather than
                    // spin. The node keeps serving the connections it has.
                    tracing::warn!(error = %e, "cannot accept HTTP connections; retrying in 100ms");
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refuse(&stream, tls.is_some());
            if last_cap_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                last_cap_warning = Some(Instant::now());
                tracing::warn!(
                    max_connections = config.max_connections,
                    "HTTP connection cap reached: refusing new connections with 503 (http_config.max_connections); logged at most once a minute"
                );
            }
            continue;
        };
        let (routes, fast, tls, config, stop) = (
            routes.clone(),
            fast.clone(),
            tls.clone(),
            config.clone(),
            stop.child_token(),
        );
        connections.spawn(async move {
            serve_connection(routes, fast, stream, peer, tls, &config, stop).await;
            drop(permit);
        });
    }
    drop(listener);
    stop.cancel();
    connections.close();
    connections.wait().await;
}

/// Closes a connection over the cap at once: a plaintext client reads a 503 (when its socket
/// has room, which a new one has), a TLS client sees the connection closed.
fn refuse(stream: &TcpStream, tls: bool) {
    if !tls {
        let _ = stream.try_write(REFUSED);
    }
    tracing::debug!("HTTP connection refused: over http_config.max_connections");
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn serve_connection(
    routes: BoxedFilter<(Response,)>,
    fast: Option<Fast>,
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    config: &HttpConfig,
    stop: CancellationToken,
) {
    let watch = Arc::new(Watch::new());
    match tls {
        None => {
            serve_io(
                routes,
                fast,
                Guarded::new(stream, &watch),
                watch,
                config,
                stop,
            )
            .await
        }
        Some(tls) => {
            // The handshake is part of the first request's head: same deadline.
            let handshake = tokio::time::timeout(config.header_read_timeout, tls.accept(stream));
            match handshake.await {
                Ok(Ok(stream)) => {
                    serve_io(
                        routes,
                        fast,
                        Guarded::new(stream, &watch),
                        watch,
                        config,
                        stop,
                    )
                    .await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake not finished within http_config.header_read_timeout")
                }
            }
        }
    }
}

async fn serve_io<I>(
    routes: BoxedFilter<(Response,)>,
    fast: Option<Fast>,
    io: Guarded<I>,
    watch: Arc<Watch>,
    config: &HttpConfig,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = warp::service(routes);
    let in_handler = watch.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let busy = Busy::new(&in_handler);
        let req = match fast.as_ref() {
            Some(f) => f(req),
            None => Err(req),
        };
        let response = match req {
            Ok(fast) => futures_util::future::Either::Left(async move {
                Ok::<_, std::convert::Infallible>(fast.await)
            }),
            Err(req) => futures_util::future::Either::Right(service.clone().call(req)),
        };
        async move {
            let response = response.await;
            drop(busy);
            response
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_header_size(config.max_header_bytes)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = watch.deadline(config);
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    // Whatever a client sends: not the node's error, and not worth more.
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            () = watch.changed.notified() => {}
            () = sleep_until(deadline) => {
                if let Some(why) = watch.expired(config) {
                    tracing::debug!("HTTP connection closed: {why}");
                    return;
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// What a connection is doing, for its deadline.
struct Watch {
    state: Mutex<State>,
    /// Woken when the deadline may have moved earlier (a request head started).
    changed: Notify,
}

struct State {
    /// When the request head being read started; set at connect.
    head_since: Option<Instant>,
    /// Handlers running (hyper serves one request at a time on HTTP/1.1; a counter anyway).
    in_handler: usize,
    last_io: Instant,
}

impl Watch {
    fn new() -> Watch {
        let now = Instant::now();
        Watch {
            state: Mutex::new(State {
                head_since: Some(now),
                in_handler: 0,
                last_io: now,
            }),
            changed: Notify::new(),
        }
    }

    fn deadline(&self, config: &HttpConfig) -> Option<Instant> {
        let s = self.state.lock().unwrap();
        if s.in_handler > 0 {
            None
        } else if let Some(since) = s.head_since {
            Some(since + config.header_read_timeout)
        } else {
            Some(s.last_io + config.idle_timeout)
        }
    }

    fn expired(&self, config: &HttpConfig) -> Option<&'static str> {
        let deadline = self.deadline(config)?;
        if Instant::now() < deadline {
            return None;
        }
        Some(if self.state.lock().unwrap().head_since.is_some() {
            "request head not received within http_config.header_read_timeout"
        } else {
            "idle for http_config.idle_timeout"
        })
    }

    fn read(&self) {
        let mut s = self.state.lock().unwrap();
        s.last_io = Instant::now();
        if s.in_handler == 0 && s.head_since.is_none() {
            s.head_since = Some(s.last_io);
            drop(s);
            self.changed.notify_one();
        }
    }

    fn wrote(&self) {
        self.state.lock().unwrap().last_io = Instant::now();
    }

    fn in_handler(&self) -> bool {
        self.state.lock().unwrap().in_handler > 0
    }
}

/// A handler running; its end starts the idle clock.
struct Busy(Arc<Watch>);

impl Busy {
    fn new(watch: &Arc<Watch>) -> Busy {
        let mut s = watch.state.lock().unwrap();
        s.in_handler += 1;
        s.head_since = None;
        drop(s);
        Busy(watch.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap();
        s.in_handler -= 1;
        s.last_io = Instant::now();
    }
}

/// A connection's socket: reports traffic to its [`Watch`], and gives the error responses
/// hyper writes by itself (malformed request, URI or headers too long) a JSON body.
struct Guarded<I> {
    io: I,
    watch: Arc<Watch>,
    /// A replacement response still to write, and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<I> Guarded<I> {
    fn new(io: I, watch: &Arc<Watch>) -> Guarded<I> {
        Guarded {
            io,
            watch: watch.clone(),
            pending: None,
        }
    }
}

impl<I: AsyncWrite + Unpin> Guarded<I> {
    /// Writes what is left of a replacement response.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((buf, done)) = &mut self.pending {
            if *done == buf.len() {
                self.pending = None;
                break;
            }
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &buf[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
            self.watch.wrote();
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.watch.read();
        }
        read
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        if !this.watch.in_handler()
            && let Some(json) = json_for_hyper_error(buf)
        {
            // Reported as written in full; the replacement goes out instead.
            this.pending = Some((json, 0));
            return match this.poll_pending(cx) {
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                _ => Poll::Ready(Ok(buf.len())),
            };
        }
        let n = std::task::ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        if n > 0 {
            this.watch.wrote();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// hyper answers a request it cannot parse itself, before any handler, with an empty
/// `HTTP/1.1 4xx` response and closes the connection. Recognised by its shape (no handler
/// running, an error status, `content-length: 0`: every response of ferry's handlers has a
/// JSON body), it is replaced by the same status with `{"error": ...}`.
fn json_for_hyper_error(buf: &[u8]) -> Option<Vec<u8>> {
    let head = buf.strip_prefix(b"HTTP/1.1 ")?;
    if !buf.ends_with(b"\r\n\r\n") || !contains(buf, b"\r\ncontent-length: 0\r\n") {
        return None;
    }
    let (status, message) = match head.get(..3)? {
        b"400" => (
            "400 Bad Request",
            "malformed HTTP request: invalid request line, header or Content-Length",
        ),
        b"414" => (
            "414 URI Too Long",
            "request URI too long (at most 65534 bytes)",
        ),
        b"431" => (
            "431 Request Header Fields Too Large",
            "request line and headers too large (over http_config.max_header_bytes, or more than 100 headers)",
        ),
        b"505" => (
            "505 HTTP Version Not Supported",
            "HTTP version not supported: use HTTP/1.1",
        ),
        _ => return None,
    };
    let body = serde_json::json!({ "error": message }).to_string();
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_complete_json_response() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["error"].as_str().unwrap().contains("max_connections"));
    }

    #[test]
    fn only_hyper_s_empty_error_responses_are_replaced() {
        let hyper_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(json_for_hyper_error(hyper_400).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(out.ends_with("}"));
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n";
        assert!(json_for_hyper_error(ours).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(json_for_hyper_error(ok).is_none());
    }
}
