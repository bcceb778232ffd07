//! Wires one node together — store, HTTP API — and shuts it down in order.
//!
//! Shutdown order matters for "no acknowledged write is lost": first the listeners stop
//! accepting and in-flight requests finish (their writes are committed and answered), then
//! each namespace's writer drains its queue and closes its file.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::http::{self, Api, Role};
use crate::store::{Store, StoreError};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
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
}

impl Listeners {
    /// Binds the ports named in the config on `listen_ip`.
    pub async fn bind(config: &Config) -> Result<Listeners, NodeError> {
        let addr = SocketAddr::new(config.listen_ip, config.http_port);
        let http = TcpListener::bind(addr)
            .await
            .map_err(|source| NodeError::Bind {
                what: "HTTP",
                addr,
                source,
            })?;
        Ok(Listeners { http })
    }
}

/// A running node.
pub struct Node {
    store: Arc<Store>,
    http_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Node {
    /// Opens the store and starts serving. Returns once everything listens.
    pub async fn start(
        config: Config,
        mode: Mode,
        listeners: Listeners,
    ) -> Result<Node, NodeError> {
        for (key, why) in config.ignored_keys() {
            tracing::info!(key, "config key ignored: {why}");
        }
        let store = Arc::new(Store::open(&config.storage_config).await?);
        let role = match mode {
            Mode::Primary => Role::Primary,
            Mode::Replica => Role::Replica {
                upstreams: config
                    .relayer_config
                    .values()
                    .flat_map(|r| {
                        r.namespaces
                            .iter()
                            .map(|ns| (ns.clone(), r.upstream_address.clone()))
                    })
                    .collect(),
            },
        };
        let api = Arc::new(Api {
            store: store.clone(),
            role,
            synchronous: config.storage_config.synchronous,
            max_body_bytes: config.http_config.max_body_bytes,
        });
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let http_addr = listeners
            .http
            .local_addr()
            .map_err(|source| NodeError::Bind {
                what: "HTTP",
                addr: SocketAddr::new(config.listen_ip, config.http_port),
                source,
            })?;
        tasks.spawn(http::serve(
            api,
            listeners.http,
            shutdown.clone().cancelled_owned(),
        ));
        tracing::info!("HTTP listening on {http_addr}");
        Ok(Node {
            store,
            http_addr,
            shutdown,
            tasks,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Stops accepting, lets in-flight requests finish, then closes every namespace file.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        self.store.close().await;
        tracing::info!("node stopped");
    }
}
