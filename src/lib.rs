//! ferry: a Raft-free, log-shipping database on SQLite.
//!
//! Module map:
//! - [`config`]: the TOML configuration (the walkthrough's keys).
//! - [`log`]: the log vocabulary — `Seq`, `Entry`, `Op`, the crc chain.
//! - [`store`]: one SQLite file per namespace; the writer thread (group commit) and readers.
//! - [`http`]: the warp HTTP/JSON API.
//! - [`node`]: wires a node together and shuts it down in order.

pub mod config;
pub mod crdt;
pub mod http;
pub mod log;
pub mod node;
pub mod notify;
pub mod replication;
pub mod store;
