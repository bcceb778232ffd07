//! ferry: a Raft-free, log-shipping database on SQLite.
//!
//! Module map:
//! - [`auth`]: bearer tokens read from files.
//! - [`config`]: the TOML configuration (the walkthrough's keys).
//! - [`log`]: the log vocabulary — `Seq`, `Entry`, `Op`, the crc chain.
//! - [`store`]: one SQLite file per namespace; the writer thread (group commit) and readers.
//! - [`http`]: the warp HTTP/JSON API.
//! - [`replication`]: the gRPC log stream (service and follower).
//! - [`grpc_tooling`]: gRPC server reflection and the per-namespace health service.
//! - [`notify`]: ZeroMQ change notifications (and `ferry watch`).
//! - [`tls`]: TLS and mTLS for replication (PEM files into rustls).
//! - [`node`]: wires a node together and shuts it down in order.
//! - [`crdt`]: LWW registers, G-counters and the walkthrough's client.
//! - [`demo`]: `ferry demo`, the walkthrough's cluster in one process.

pub mod auth;
pub mod config;
pub mod crdt;
pub mod demo;
pub mod grpc_tooling;
pub(crate) mod http;
pub mod log;
pub mod node;
pub mod notify;
pub mod replication;
pub mod store;
pub mod tls;
