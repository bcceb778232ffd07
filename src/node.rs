//! Wires one node together — store, HTTP API, gRPC replication service, followers, ZeroMQ
//! notifiers — and shuts it down in order.
//!
//! Shutdown order matters for "no acknowledged write is lost": first the listeners stop
//! accepting and in-flight requests finish (their writes are committed and answered; a client
//! that stopped reading is waited for [`DRAIN`] at most), then each namespace's writer drains
//! its queue and closes its file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::TokenSet;
use crate::config::Config;
use crate::config::GrpcConfig;
use crate::http::{self, Api, Role};
use crate::notify::{Notifier, NotifyError};
use crate::replication::MAX_MESSAGE_BYTES;
use crate::replication::client::{Security, Upstream};
use crate::replication::conns::Connections;
use crate::replication::follower::Follower;
use crate::replication::pb::replication_server::ReplicationServer;
use crate::replication::service::{ReplicationService, StreamLimits, TokenCheck};
use crate::store::{Store, StoreError};

/// How long shutdown waits for in-flight HTTP requests and gRPC streams before it stops
/// waiting for them.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs `server`, which stops accepting and drains its connections once `stop` is cancelled,
/// until it finishes or [`DRAIN`] has passed since `stop`. A client that stopped reading a
/// response leaves it stuck behind TCP or HTTP/2 flow control, and a graceful drain would wait
/// for it forever.
async fn drained<T>(
    what: &str,
    server: impl Future<Output = T>,
    stop: CancellationToken,
) -> Option<T> {
    tokio::select! {
        out = server => Some(out),
        () = async { stop.cancelled().await; tokio::time::sleep(DRAIN).await } => {
            tracing::warn!(
                "{what} connections still busy {DRAIN:?} after shutdown began (clients not reading?); no longer waiting for them"
            );
            None
        }
    }
}

/// Connections the kernel queues for a listener before the node accepts them.
const LISTEN_BACKLOG: u32 = 1024;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Notify(#[from] NotifyError),
    #[error("{0}")]
    Config(String),
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What kind of node to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Primary,
    Replica,
}

/// Sockets a node serves on, bound before the node starts so tests can use port 0.
pub struct Listeners {
    pub http: TcpListener,
    /// Present when the node serves the replication stream (`[grpc_config]`).
    pub grpc: Option<TcpListener>,
}

impl Listeners {
    /// Binds the ports named in the config on `listen_ip`.
    pub async fn bind(config: &Config) -> Result<Listeners, NodeError> {
        let bind = |what, port| async move {
            let addr = SocketAddr::new(config.listen_ip, port);
            listen(addr).map_err(|source| NodeError::Bind { what, addr, source })
        };
        let http = bind("HTTP", config.http_port).await?;
        let grpc = match &config.grpc_config {
            Some(g) => Some(bind("gRPC", g.port).await?),
            None => None,
        };
        Ok(Listeners { http, grpc })
    }
}

/// Binds a listener whose accepted connections have Nagle's algorithm off (Linux copies
/// TCP_NODELAY from the listener to each accepted socket). Without it, a small write that
/// follows another unacknowledged one waits for the peer's delayed ACK — up to 40 ms of
/// replication lag or request latency for nothing.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The HTTP API's tokens and TLS, read before anything is served so a bad file stops startup.
fn http_security(
    config: &Config,
) -> Result<
    (
        Option<http::auth::HttpAuth>,
        Option<tokio_rustls::TlsAcceptor>,
    ),
    NodeError,
> {
    let auth = http::auth::HttpAuth::load(config.auth.as_ref())
        .map_err(|e| NodeError::Config(format!("[auth]: {e}")))?;
    let tls = http::server::tls_acceptor(&config.http_config).map_err(NodeError::Config)?;
    Ok((auth, tls))
}

/// One loud warning when the HTTP API listens beyond this machine without tokens or TLS,
/// saying what anyone who reaches the port can do.
fn warn_if_exposed(addr: SocketAddr, auth: Option<&http::auth::HttpAuth>, tls: bool) {
    use http::auth::Scope;
    if addr.ip().is_loopback() {
        return;
    }
    let mut exposed = Vec::new();
    if !auth.is_some_and(|a| a.protects(Scope::Write)) {
        exposed.push("anyone who reaches it can write, delete, promote and fence every namespace (no [auth] write_token_file)");
    }
    if !auth.is_some_and(|a| a.protects(Scope::Read)) {
        exposed.push(
            "anyone who reaches it can read every key, change and stat (no [auth] read_token_file)",
        );
    }
    if !tls {
        exposed.push("requests, values and tokens cross the network in clear text (no [http_config] cert_path and key_path)");
    }
    if !exposed.is_empty() {
        tracing::warn!(
            "SECURITY: the HTTP API listens on {addr}, beyond this machine: {}. Set listen_ip = \"127.0.0.1\" to keep it local, or see the README's Security section",
            exposed.join("; ")
        );
    }
}

/// The same warning for the replication stream: without TLS and a token, anyone who reaches
/// the gRPC port streams every namespace's log and a snapshot of all of `kv`.
fn warn_if_grpc_exposed(addr: SocketAddr, tls: bool, token: bool) {
    if addr.ip().is_loopback() {
        return;
    }
    let mut exposed = Vec::new();
    if !token {
        exposed.push("anyone who reaches it can stream every namespace's log and a snapshot of all its keys (no [auth] replication_token_file)");
    }
    if !tls {
        exposed.push(
            "the log crosses the network in clear text (no [grpc_config] cert_path and key_path)",
        );
    }
    if !exposed.is_empty() {
        tracing::warn!(
            "SECURITY: gRPC replication listens on {addr}, beyond this machine: {}. Set listen_ip = \"127.0.0.1\" to keep it local, or see the README's Security section",
            exposed.join("; ")
        );
    }
}

/// And for the notifiers without CURVE (`endpoints`): no authentication or encryption.
fn warn_if_notifiers_exposed(ip: std::net::IpAddr, endpoints: &[String]) {
    if ip.is_loopback() || endpoints.is_empty() {
        return;
    }
    tracing::warn!(
        "SECURITY: ZeroMQ notifiers listen beyond this machine without CURVE ({}): anyone who reaches them sees every key written (not values) in clear text, with no authentication. Set curve_secret_key_file, or listen_ip = \"127.0.0.1\" to keep them local, or filter the ports at the network",
        endpoints.join(", ")
    );
}

/// A namespace promoted on this node (`meta.promoted_at_ms`) is this node's to write: a
/// config that still follows it from the upstream it was promoted away from (the config was
/// not changed since) would throw its new history away. Refuse that. A config that follows it
/// from another upstream (an operator re-pointed it: this node rejoins a newer primary) goes
/// ahead with a loud warning; divergence recovery keeps what only this node had.
async fn refuse_promoted(
    store: &Store,
    config: &Config,
    replicated: &[String],
) -> Result<(), NodeError> {
    for name in replicated {
        let ns = store.get(name).expect("opened above");
        if ns.corrupt().is_some() {
            // Unreadable; the follower stops on it and /stats says why.
            continue;
        }
        let promoted = ns
            .read(|c| {
                Ok((
                    crate::store::schema::promoted_at_ms(c)?,
                    crate::store::schema::lineage(c)?,
                    crate::store::schema::meta(c, "promoted_from")?,
                ))
            })
            .await?;
        let (Some(at), lineage, from) = promoted else {
            continue;
        };
        let (relayer, upstream) = config
            .relayer_config
            .iter()
            .find(|(_, r)| r.namespaces.contains(name))
            .map_or(("?", ""), |(k, r)| {
                (k.as_str(), r.upstream_address.as_str())
            });
        if from.as_deref() == Some(upstream) {
            return Err(NodeError::Config(format!(
                "namespace {name:?} was promoted to a primary on this node (at unix ms {at}; log {}{}) away from {upstream}, and relayer_config.{relayer} still follows it from there: remove it from relayer_config.{relayer} to serve it as a primary, or point upstream_address at the new primary to make this node its replica again",
                crate::log::LogId::wire(ns.log_id().as_ref()),
                lineage.map_or(String::new(), |l| format!(
                    " forked from {} at seq {}",
                    l.prev_log_id, l.fork_seq
                )),
            )));
        }
        tracing::warn!(namespace = %name, promoted_at_ms = at, %upstream, "this namespace was promoted on this node, and now follows {upstream}: rejoining as a replica (entries the new upstream does not have go to a rollback file)");
    }
    Ok(())
}

/// A running node.
pub struct Node {
    store: Arc<Store>,
    http_addr: SocketAddr,
    grpc_addr: Option<SocketAddr>,
    notifiers: BTreeMap<String, Notifier>,
    shutdown: CancellationToken,
    /// Every task that serves, follows or prunes; shutdown waits for them before it closes
    /// the store.
    tasks: TaskTracker,
    /// The tasks relaying head changes to the notifiers. They pass on every commit until their
    /// namespace closes, so shutdown waits for them after it closes the store.
    relays: TaskTracker,
}

impl Node {
    /// Opens the store and starts serving. Returns once everything listens.
    pub async fn start(
        config: Config,
        mode: Mode,
        listeners: Listeners,
    ) -> Result<Node, NodeError> {
        check_mode(&config, mode)?;
        // Certificates and token files are read before anything opens, so a mistake in one
        // stops the node with the key and the file named.
        let relayers = relayer_upstreams(&config, mode)?;
        let grpc = match &config.grpc_config {
            Some(g) => Some(GrpcServing::prepare(g, &config)?),
            None => None,
        };
        let replicated = replicated(&config, mode);
        let store = Arc::new(Store::open(&config.storage_config, &replicated).await?);
        if let Err(e) = refuse_promoted(&store, &config, &replicated).await {
            store.close().await;
            return Err(e);
        }
        let upstreams: http::Upstreams = Arc::new(std::sync::RwLock::new(
            config
                .relayer_config
                .values()
                .filter(|_| mode == Mode::Replica)
                .flat_map(|r| {
                    r.namespaces
                        .iter()
                        .map(|ns| (ns.clone(), r.upstream_address.clone()))
                })
                .collect(),
        ));
        let role = match mode {
            Mode::Primary => Role::Primary,
            Mode::Replica => Role::Replica {
                upstreams: upstreams.clone(),
            },
        };
        let (http_auth, tls) = match http_security(&config) {
            Ok(security) => security,
            Err(e) => {
                store.close().await;
                return Err(e);
            }
        };
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let relays = TaskTracker::new();

        let notifiers = start_notifiers(&config, &store, &relays).await?;
        start_retention(&config, &store, &tasks, &shutdown);
        // Token files are re-read when they change: rotation needs no restart.
        let grpc_tokens = grpc.as_ref().and_then(|g| g.tokens.0.clone());
        for set in http_auth
            .iter()
            .flat_map(|a| a.token_sets())
            .chain(grpc_tokens.as_deref())
        {
            set.watch(&tasks, shutdown.clone());
        }
        let followers = match mode {
            Mode::Primary => BTreeMap::new(),
            Mode::Replica => start_followers(&config, relayers, &store, &tasks, &shutdown),
        };

        let api = Arc::new(Api {
            store: store.clone(),
            role,
            synchronous: config.storage_config.synchronous,
            max_body_bytes: config.http_config.max_body_bytes,
            body_read_timeout: config.http_config.body_read_timeout,
            auth: http_auth.map(Arc::new),
            followers,
            acks: config.acks_config.clone(),
            notifications: notifiers
                .iter()
                .map(|(k, n)| {
                    let counters = http::NotifierCounters {
                        sent: n.sent(),
                        subscriptions: n.subscriptions(),
                    };
                    (k.clone(), counters)
                })
                .collect(),
            access_log: config.log_config.access_log,
            http_metrics: Default::default(),
            grpc_conns: grpc.as_ref().map(|g| g.conns.clone()),
        });
        let local_addr = |l: &TcpListener, what| {
            l.local_addr().map_err(|source| NodeError::Bind {
                what,
                addr: SocketAddr::new(config.listen_ip, 0),
                source,
            })
        };
        let http_addr = local_addr(&listeners.http, "HTTP")?;
        warn_if_exposed(http_addr, api.auth.as_deref(), tls.is_some());
        let scheme = if tls.is_some() { "HTTPS" } else { "HTTP" };
        tasks.spawn(drained(
            "HTTP",
            http::serve(
                api.clone(),
                listeners.http,
                tls,
                config.http_config.clone(),
                shutdown.clone().cancelled_owned(),
            ),
            shutdown.clone(),
        ));
        tracing::info!("{scheme} listening on {http_addr}");

        let grpc_addr = match (listeners.grpc, grpc) {
            (Some(listener), Some(grpc)) => {
                let addr = local_addr(&listener, "gRPC")?;
                let service = ReplicationService::new(
                    store.clone(),
                    upstreams.clone(),
                    shutdown.clone(),
                    tasks.clone(),
                    grpc.conns.clone(),
                    grpc.limits,
                    grpc.tokens.0.is_some(),
                );
                let (grpc_tls, grpc_token) = (grpc.tls, grpc.tokens.0.is_some());
                let security = match (grpc_tls, grpc_token) {
                    (true, true) => "TLS, replication token required",
                    (true, false) => "TLS, no replication token",
                    (false, true) => "plaintext, replication token required",
                    (false, false) => "plaintext, no replication token",
                };
                let health = crate::grpc_tooling::health(api, &tasks, shutdown.clone()).await;
                tasks.spawn(serve_grpc(
                    service,
                    health,
                    listener,
                    grpc,
                    shutdown.clone(),
                ));
                warn_if_grpc_exposed(addr, grpc_tls, grpc_token);
                // The address ends its line: scripts and tests read it from there.
                tracing::info!("gRPC security: {security}");
                tracing::info!("gRPC listening on {addr}");
                Some(addr)
            }
            _ => None,
        };
        let zeromq: Vec<String> = notifiers
            .iter()
            .map(|(ns, n)| format!("{ns}={}", n.endpoint()))
            .collect();
        let plain: Vec<String> = notifiers
            .iter()
            .filter(|(ns, _)| config.notifier_config[*ns].curve_secret_key_file.is_none())
            .map(|(ns, n)| format!("{ns}={}", n.endpoint()))
            .collect();
        warn_if_notifiers_exposed(config.listen_ip, &plain);
        tracing::info!(
            version = %env!("CARGO_PKG_VERSION"),
            role = %match mode {
                Mode::Primary => "primary",
                Mode::Replica => "replica",
            },
            config = %config.file.as_deref().map_or("-".into(), |p| p.display().to_string()),
            http = %http_addr,
            grpc = %grpc_addr.map_or("-".into(), |a| a.to_string()),
            zeromq = %if zeromq.is_empty() { "-".into() } else { zeromq.join(",") },
            "ferry started"
        );
        Ok(Node {
            store,
            http_addr,
            grpc_addr,
            notifiers,
            shutdown,
            tasks,
            relays,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the replication stream is served, if it is.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// The ZeroMQ endpoint publishing `namespace`'s notifications, if any.
    pub fn notifier_endpoint(&self, namespace: &str) -> Option<&str> {
        self.notifiers.get(namespace).map(Notifier::endpoint)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Stops accepting, lets in-flight requests finish, stops followers and streams, then
    /// closes every namespace file (the notifiers publish what was committed, then stop).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.store.stop_waiting();
        self.tasks.close();
        self.tasks.wait().await;
        self.store.close().await;
        self.relays.close();
        self.relays.wait().await;
        let notifiers = self.notifiers;
        let _ =
            tokio::task::spawn_blocking(move || notifiers.into_values().for_each(Notifier::join))
                .await;
        tracing::info!("node stopped");
    }
}

/// Refuses a replica with nothing to follow; says what a primary ignores.
fn check_mode(config: &Config, mode: Mode) -> Result<(), NodeError> {
    let ignored = config.ignored_keys();
    if !ignored.is_empty() {
        let keys: Vec<&str> = ignored.iter().map(|(k, _)| *k).collect();
        tracing::info!(keys = %keys.join(", "), "config keys ignored: the walkthrough's, with no meaning for ferry (README, Configuration)");
        for (key, why) in ignored {
            tracing::debug!(key, "config key ignored: {why}");
        }
    }
    match mode {
        Mode::Replica if config.relayer_config.is_empty() => Err(NodeError::Config(
            "a replica needs at least one [relayer_config.NAME] with namespaces and upstream_address".into(),
        )),
        Mode::Primary if !config.relayer_config.is_empty() => {
            tracing::warn!(
                "relayer_config is ignored by `ferry server`; run `ferry replica` to follow an upstream"
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The namespaces this node follows from an upstream (none on a primary).
fn replicated(config: &Config, mode: Mode) -> Vec<String> {
    match mode {
        Mode::Primary => Vec::new(),
        Mode::Replica => config
            .relayer_config
            .values()
            .flat_map(|r| r.namespaces.iter().cloned())
            .collect(),
    }
}

/// One notifier per `[notifier_config.NAME]`. If one cannot start, closes the store (which
/// ends the notifiers already started) and fails.
async fn start_notifiers(
    config: &Config,
    store: &Store,
    relays: &TaskTracker,
) -> Result<BTreeMap<String, Notifier>, NodeError> {
    let mut notifiers = BTreeMap::new();
    for (name, cfg) in &config.notifier_config {
        let ns = store
            .get(name)
            .expect("config validation checked the namespace")
            .clone();
        let runtime = tokio::runtime::Handle::current();
        let (listen_ip, cfg, relays) = (config.listen_ip, cfg.clone(), relays.clone());
        // Binding the socket and opening the namespace file block.
        let started = tokio::task::spawn_blocking(move || {
            Notifier::start(ns, listen_ip, &cfg, runtime, &relays)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        match started {
            Ok(n) => {
                notifiers.insert(name.clone(), n);
            }
            Err(e) => {
                store.close().await;
                let _ = tokio::task::spawn_blocking(move || {
                    notifiers.into_values().for_each(Notifier::join)
                })
                .await;
                if e.config {
                    return Err(NodeError::Config(e.to_string()));
                }
                return Err(e.into());
            }
        }
    }
    Ok(notifiers)
}

/// A retention task per namespace, when `[wal_cleanup_config]` enables it.
fn start_retention(
    config: &Config,
    store: &Store,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let Some(retention) = config
        .storage_config
        .wal_cleanup_config
        .as_ref()
        .filter(|w| w.enabled)
    else {
        return;
    };
    for ns in store.iter() {
        tasks.spawn(crate::store::retention::run(
            ns.clone(),
            retention.clone(),
            shutdown.clone(),
        ));
    }
}

/// How to reach each `[relayer_config.NAME]`'s upstream (none on a primary).
fn relayer_upstreams(config: &Config, mode: Mode) -> Result<BTreeMap<String, Upstream>, NodeError> {
    if mode == Mode::Primary {
        return Ok(BTreeMap::new());
    }
    config
        .relayer_config
        .iter()
        .map(|(name, r)| {
            let security = Security {
                ca_path: r.ca_path.clone(),
                cert_path: r.cert_path.clone(),
                key_path: r.key_path.clone(),
                token_file: r.token_file.clone(),
            };
            let what = format!("relayer_config.{name}");
            let upstream =
                Upstream::new(&r.upstream_address, &what, &security).map_err(NodeError::Config)?;
            Ok((name.clone(), upstream))
        })
        .collect()
}

/// Everything the gRPC server needs besides its listener, checked before the node starts.
struct GrpcServing {
    server: tonic::transport::Server,
    tls: bool,
    tokens: TokenCheck,
    conns: Arc<Connections>,
    limits: StreamLimits,
}

impl GrpcServing {
    fn prepare(g: &GrpcConfig, config: &Config) -> Result<GrpcServing, NodeError> {
        let tls = crate::tls::server_config(g).map_err(NodeError::Config)?;
        let mut server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(g.keepalive_interval))
            .http2_keepalive_timeout(Some(g.keepalive_timeout))
            // A protocol-level bound beside ferry's own per-connection stream cap (which
            // answers RESOURCE_EXHAUSTED): room for the streams and for unary calls.
            .max_concurrent_streams(Some(
                u32::try_from(g.max_streams_per_connection.saturating_add(32)).unwrap_or(u32::MAX),
            ));
        let has_tls = tls.is_some();
        if let Some(tls) = tls {
            server = server.tls_config(tls).map_err(|e| {
                NodeError::Config(format!(
                    "grpc_config.cert_path/key_path/ca_path: {}",
                    crate::replication::follower::error_chain(&e)
                ))
            })?;
        }
        let tokens = match config
            .auth
            .as_ref()
            .and_then(|a| a.replication_token_file.as_ref())
        {
            Some(path) => Some(Arc::new(TokenSet::load(path).map_err(|e| {
                NodeError::Config(format!("auth.replication_token_file: {e}"))
            })?)),
            None => None,
        };
        Ok(GrpcServing {
            server,
            tls: has_tls,
            tokens: TokenCheck(tokens),
            conns: Connections::new(g.max_streams, g.max_streams_per_connection, g.idle_timeout),
            limits: StreamLimits {
                buffer_bytes: g.stream_buffer_bytes,
                stall_timeout: g.stream_stall_timeout,
            },
        })
    }
}

/// A replica's followers, one per namespace of each `[relayer_config.NAME]`: their progress,
/// by namespace.
fn start_followers(
    config: &Config,
    relayers: BTreeMap<String, Upstream>,
    store: &Store,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
) -> BTreeMap<String, http::Followed> {
    let mut followers = BTreeMap::new();
    for (relayer_name, relayer) in &config.relayer_config {
        for name in &relayer.namespaces {
            let ns = store
                .get(name)
                .expect("config validation checked the namespace")
                .clone();
            let upstream = relayers[relayer_name].clone();
            let follower = Follower::new(ns, upstream, relayer.on_divergence);
            // Its own token, so a promotion can stop this follower alone.
            let stop = shutdown.child_token();
            followers.insert(
                name.clone(),
                http::Followed {
                    tracker: follower.tracker(),
                    stop: stop.clone(),
                    max_lag: relayer.max_lag,
                },
            );
            tasks.spawn(follower.run(stop));
        }
    }
    for name in store.names().iter().filter(|n| !followers.contains_key(*n)) {
        tracing::warn!(namespace = %name, "no relayer_config follows this namespace: this node is its primary and accepts writes to it");
    }
    followers
}

/// Serves the replication service on `listener` until shutdown (and [`DRAIN`] after it), with
/// the health service and server reflection beside it (see [`crate::grpc_tooling`]).
async fn serve_grpc(
    service: ReplicationService,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    listener: TcpListener,
    grpc: GrpcServing,
    stop: CancellationToken,
) {
    use tokio_stream::StreamExt;
    let GrpcServing {
        mut server,
        tokens,
        conns,
        ..
    } = grpc;
    let replication = ReplicationServer::new(service).max_encoding_message_size(MAX_MESSAGE_BYTES);
    let (reflection, reflection_v1alpha) = crate::grpc_tooling::reflection();
    // Every accepted socket is counted per connection and closed once idle.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener)
        .map(move |accepted| accepted.map(|io| conns.accept(io)));
    let server = server
        .add_service(tonic::service::interceptor::InterceptedService::new(
            replication,
            tokens,
        ))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned());
    // Streams end on their own once shutdown begins (they send `shutting-down`); `drained`
    // covers clients that stopped reading.
    let served = drained("gRPC", server, stop).await.unwrap_or(Ok(()));
    if let Err(e) = served {
        tracing::error!(error = %e, "gRPC server failed");
    }
}
