//! What one gRPC client may hold on a node: how many Tail/Snapshot streams (per node and per
//! connection), and how long a connection may stay open with nothing to do.
//!
//! Connections are told apart by their peer address (one TCP connection, one address). Every
//! accepted socket is wrapped in an [`IdleIo`], which registers the connection here and closes
//! it (a read error, which makes hyper drop it) once it has had no stream open and no request
//! for `idle_timeout`. Reads do not count as activity: HTTP/2 pings answered by an idle client
//! would otherwise keep it open forever.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tonic::Status;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::ErrorKind;

/// The stream caps of a node and the connections it has open.
#[derive(Debug)]
pub(crate) struct Connections {
    max_streams: usize,
    max_per_connection: usize,
    idle_timeout: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Tail and Snapshot streams open on this node.
    open: usize,
    conns: HashMap<SocketAddr, Conn>,
    /// Numbers the connections, so a closing one never removes a newer one from its address.
    accepted: u64,
}

#[derive(Debug)]
struct Conn {
    id: u64,
    open: usize,
    last_active: Instant,
}

impl Connections {
    pub(crate) fn new(
        max_streams: usize,
        max_per_connection: usize,
        idle_timeout: Duration,
    ) -> Arc<Connections> {
        Arc::new(Connections {
            max_streams,
            max_per_connection,
            idle_timeout,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The connections this node tracks (accepted, not closed yet) and the Tail/Snapshot
    /// streams open on it, for `/metrics`.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap();
        (inner.conns.len(), inner.open)
    }

    /// Notes a request on the connection from `peer` (it is not idle).
    pub(crate) fn touch(&self, peer: Option<SocketAddr>) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(c) = peer.and_then(|p| inner.conns.get_mut(&p)) {
            c.last_active = Instant::now();
        }
    }

    /// Counts a new stream from `peer`, or refuses it with RESOURCE_EXHAUSTED when the node or
    /// the connection is at its cap. The stream counts until the permit is dropped.
    pub(crate) fn open_stream(
        self: &Arc<Self>,
        peer: Option<SocketAddr>,
    ) -> Result<StreamPermit, Status> {
        let mut inner = self.inner.lock().unwrap();
        if inner.open >= self.max_streams {
            return Err(ErrorKind::TooManyStreams.status(format!(
                "this node already serves {} Tail/Snapshot streams, its limit (grpc_config.max_streams); retry later",
                inner.open
            )));
        }
        if let Some(c) = peer.and_then(|p| inner.conns.get_mut(&p)) {
            if c.open >= self.max_per_connection {
                return Err(ErrorKind::TooManyStreams.status(format!(
                    "this connection already has {} Tail/Snapshot streams open, its limit (grpc_config.max_streams_per_connection)",
                    c.open
                )));
            }
            c.open += 1;
            c.last_active = Instant::now();
        }
        inner.open += 1;
        Ok(StreamPermit {
            conns: self.clone(),
            peer,
        })
    }

    /// When the connection from `peer` becomes idle enough to close, or `None` while it has a
    /// stream open.
    fn idle_deadline(&self, peer: Option<SocketAddr>, opened: Instant) -> Option<Instant> {
        let inner = self.inner.lock().unwrap();
        match peer.and_then(|p| inner.conns.get(&p)) {
            Some(c) if c.open > 0 => None,
            Some(c) => Some(c.last_active + self.idle_timeout),
            None => Some(opened + self.idle_timeout),
        }
    }

    /// Wraps an accepted socket: it is registered until dropped, and closed when idle.
    pub(crate) fn accept(self: &Arc<Self>, io: TcpStream) -> IdleIo {
        let peer = io.peer_addr().ok();
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap();
        inner.accepted += 1;
        let id = inner.accepted;
        if let Some(p) = peer {
            let conn = Conn {
                id,
                open: 0,
                last_active: now,
            };
            inner.conns.insert(p, conn);
        }
        drop(inner);
        IdleIo {
            inner: io,
            id,
            peer,
            opened: now,
            timer: Box::pin(tokio::time::sleep_until(now + self.idle_timeout)),
            conns: self.clone(),
        }
    }
}

/// One open Tail or Snapshot stream; dropping it (the response stream ended or its client
/// left) frees its place.
#[derive(Debug)]
pub(crate) struct StreamPermit {
    conns: Arc<Connections>,
    peer: Option<SocketAddr>,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut inner = self.conns.inner.lock().unwrap();
        inner.open -= 1;
        if let Some(c) = self.peer.and_then(|p| inner.conns.get_mut(&p)) {
            c.open -= 1;
            c.last_active = Instant::now();
        }
    }
}

/// An accepted socket that fails its reads once its connection has been idle for
/// `idle_timeout` (see the module doc).
pub(crate) struct IdleIo {
    inner: TcpStream,
    id: u64,
    peer: Option<SocketAddr>,
    opened: Instant,
    timer: Pin<Box<Sleep>>,
    conns: Arc<Connections>,
}

impl Drop for IdleIo {
    fn drop(&mut self) {
        if let Some(p) = self.peer {
            let mut inner = self.conns.inner.lock().unwrap();
            if inner.conns.get(&p).is_some_and(|c| c.id == self.id) {
                inner.conns.remove(&p);
            }
        }
    }
}

impl Connected for IdleIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

impl AsyncRead for IdleIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Poll::Ready(r) = Pin::new(&mut self.inner).poll_read(cx, buf) {
            return Poll::Ready(r);
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            match self.conns.idle_deadline(self.peer, self.opened) {
                Some(deadline) if deadline <= now => {
                    tracing::debug!(peer = ?self.peer, "closing an idle gRPC connection (grpc_config.idle_timeout)");
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "idle connection closed (grpc_config.idle_timeout)",
                    )));
                }
                Some(deadline) => self.timer.as_mut().reset(deadline),
                // A stream is open: look again later.
                None => {
                    let next = now + self.conns.idle_timeout;
                    self.timer.as_mut().reset(next);
                }
            }
        }
        Poll::Pending
    }
}

impl AsyncWrite for IdleIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
