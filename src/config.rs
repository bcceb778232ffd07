//! The TOML configuration, with the walkthrough's keys.
//!
//! Files written for the walkthrough's older Go system load unchanged: keys that mean nothing to
//! ferry (`bytes_per_sync`, `segment_size`, ...) are accepted and reported by
//! [`Config::ignored_keys`] so the node can log them once. Any other unknown key is an error
//! naming the key and the file, because a typo that silently falls back to a default is worse
//! than a refusal to start.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A whole node's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// HTTP API port.
    pub http_port: u16,
    /// Address every listener (HTTP, gRPC, ZeroMQ) binds to. Default 127.0.0.1: a node is
    /// private to its machine until `listen_ip` says otherwise (e.g. "0.0.0.0" for every
    /// interface); a non-loopback address without tokens and TLS is served with a warning.
    #[serde(default = "default_listen_ip")]
    pub listen_ip: IpAddr,
    pub grpc_config: Option<GrpcConfig>,
    pub storage_config: StorageConfig,
    #[serde(default)]
    pub http_config: HttpConfig,
    /// Replica only: the upstreams to follow, by a free-form name.
    #[serde(default)]
    pub relayer_config: BTreeMap<String, RelayerConfig>,
    /// ZeroMQ publisher per namespace.
    #[serde(default)]
    pub notifier_config: BTreeMap<String, NotifierConfig>,
    /// Per namespace: how many followers a write waits for by default (ferry's; `?acks=K`
    /// overrides it per request).
    #[serde(default)]
    pub acks_config: BTreeMap<String, AcksConfig>,
    #[serde(default)]
    pub log_config: LogConfig,
    /// Bearer tokens (ferry's); absent: no authentication, as in the walkthrough.
    pub auth: Option<AuthConfig>,
    /// Accepted for compatibility; ferry notifies as soon as a commit is durable.
    pub write_notify_config: Option<WriteNotifyConfig>,
    /// The file this config was loaded from ([`Config::load`]); `None` when parsed from text.
    #[serde(skip)]
    pub file: Option<PathBuf>,
}

/// `[write_notify_config]`: the walkthrough's notification batching. Its keys are checked
/// (a typo is an error, as everywhere) and ignored: ferry notifies as soon as a commit is
/// durable.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteNotifyConfig {
    pub enabled: Option<bool>,
    #[serde(default, with = "opt_duration")]
    pub max_delay: Option<std::time::Duration>,
}

fn default_listen_ip() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    pub port: u16,
    /// PEM certificate chain this node presents; with `key_path`, gRPC is served over TLS.
    pub cert_path: Option<PathBuf>,
    /// PEM private key of `cert_path`.
    pub key_path: Option<PathBuf>,
    /// PEM CA bundle: when set, every client must present a certificate it signed (mTLS).
    pub ca_path: Option<PathBuf>,
    /// Serve plaintext gRPC when no certificate is configured. `false` without `cert_path`
    /// and `key_path` refuses to start.
    pub allow_insecure: Option<bool>,
    /// Most Tail and Snapshot streams open at once on this node (over it: RESOURCE_EXHAUSTED).
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
    /// Most Tail and Snapshot streams open at once on one connection.
    #[serde(default = "default_max_streams_per_connection")]
    pub max_streams_per_connection: usize,
    /// Bytes of entries or rows one stream reads ahead of its client: what a client that
    /// stops reading can cost in memory.
    #[serde(default = "default_stream_buffer_bytes")]
    pub stream_buffer_bytes: usize,
    /// A stream whose client has taken nothing for this long is closed (a Snapshot's read
    /// transaction with it, so the WAL checkpoints again).
    #[serde(default = "default_stream_stall_timeout", with = "duration")]
    pub stream_stall_timeout: std::time::Duration,
    /// How often an HTTP/2 ping checks that a client is still there.
    #[serde(default = "default_keepalive_interval", with = "duration")]
    pub keepalive_interval: std::time::Duration,
    /// A connection whose ping is not answered within this is closed.
    #[serde(default = "default_keepalive_timeout", with = "duration")]
    pub keepalive_timeout: std::time::Duration,
    /// A connection with no request or stream open for this long is closed.
    #[serde(default = "default_grpc_idle_timeout", with = "duration")]
    pub idle_timeout: std::time::Duration,
}

fn default_max_streams() -> usize {
    256
}

fn default_max_streams_per_connection() -> usize {
    16
}

fn default_stream_buffer_bytes() -> usize {
    2 * 1024 * 1024
}

fn default_stream_stall_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

fn default_keepalive_interval() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

fn default_keepalive_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

fn default_grpc_idle_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

/// Smallest `stream_buffer_bytes`: room for a few batches of small entries.
pub const MIN_STREAM_BUFFER_BYTES: usize = 64 * 1024;

/// `[auth]`: bearer tokens, each read from a file holding one token per line (several lines
/// let an old and a new token work side by side while clients rotate).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Tokens for writes: PUT, DELETE, batch, promote, fence.
    pub write_token_file: Option<PathBuf>,
    /// Tokens for reads: every GET except `/health` and `/ready`.
    pub read_token_file: Option<PathBuf>,
    /// Tokens a follower presents on gRPC (`authorization: Bearer ...` metadata).
    pub replication_token_file: Option<PathBuf>,
}

/// How hard SQLite works to make a commit durable (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: an acknowledged write survives power loss.
    #[default]
    Full,
    /// fsync at checkpoints only: survives a process crash, may lose the last commits on power loss.
    Normal,
    /// Never fsync. For throwaway data and benchmarks.
    Off,
}

impl Synchronous {
    pub fn pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
            Synchronous::Off => "OFF",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Directory holding one `<namespace>.db` file per namespace. Created if missing.
    pub base_dir: PathBuf,
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub synchronous: Synchronous,
    // Keys of the walkthrough's storage engine with no meaning for SQLite (sizes: "1MB").
    #[serde(default, with = "opt_size")]
    pub bytes_per_sync: Option<u64>,
    #[serde(default, with = "opt_size")]
    pub segment_size: Option<u64>,
    #[serde(default, with = "opt_size")]
    pub arena_size: Option<u64>,
    /// Log retention; absent or `enabled = false` keeps the whole log.
    pub wal_cleanup_config: Option<WalCleanupConfig>,
    /// Checkpointing and `?min_seq=` waiters (see [`PerformanceConfig`]).
    #[serde(default)]
    pub performance_config: PerformanceConfig,
}

/// `[storage_config.performance_config]`: how the WAL is checkpointed and how many reads may
/// wait for a seq. Kept apart from the other storage keys: these tune, they change no data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerformanceConfig {
    /// WAL pages (4 KiB each) after which a background thread checkpoints the WAL into the
    /// database file (PASSIVE: never blocks a commit). SQLite's own automatic checkpoint, which
    /// runs inside the commit that crosses its threshold, is off. Default 1000.
    #[serde(default = "default_checkpoint_pages")]
    pub checkpoint_pages: u32,
    /// Reads waiting with `?min_seq=` on one namespace at once; over it, 503. Default 10,000.
    #[serde(default = "default_max_seq_waiters")]
    pub max_seq_waiters: usize,
    /// Bytes of the namespace file each read connection maps into memory (SQLite's `PRAGMA
    /// mmap_size`): reads of pages in the mapping skip a `pread` copy. Mapped pages count in
    /// the node's RSS (they are the OS page cache, shared and reclaimable), and an I/O error
    /// under a mapping is a SIGBUS instead of an error, so it is off (0) by default. At most
    /// [`MAX_MMAP_SIZE`].
    #[serde(default)]
    pub mmap_size: u64,
}

/// SQLite's compile-time ceiling for `mmap_size` (`SQLITE_MAX_MMAP_SIZE`, 0x7fff0000).
pub const MAX_MMAP_SIZE: u64 = 0x7fff_0000;

fn default_checkpoint_pages() -> u32 {
    1000
}

fn default_max_seq_waiters() -> usize {
    10_000
}

impl Default for PerformanceConfig {
    fn default() -> Self {
        PerformanceConfig {
            checkpoint_pages: default_checkpoint_pages(),
            max_seq_waiters: default_max_seq_waiters(),
            mmap_size: 0,
        }
    }
}

/// `[storage_config.wal_cleanup_config]`: which old `wal_log` entries are pruned.
///
/// An entry is pruned when it is older than `max_age` or more than `max_entries` behind the
/// head, whichever says so first; the head entry is always kept, and `kv` is never pruned.
/// Pruning waits for connected followers that still need an entry, up to twice either limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WalCleanupConfig {
    #[serde(default)]
    pub enabled: bool,
    /// How often to look for entries to prune (default 5m).
    #[serde(default = "default_cleanup_interval", with = "duration")]
    pub interval: std::time::Duration,
    /// Prune entries written longer ago than this, e.g. "5h".
    #[serde(default, with = "opt_duration")]
    pub max_age: Option<std::time::Duration>,
    /// Keep at most this many newest entries (ferry's key).
    pub max_entries: Option<u64>,
    // The walkthrough engine's segment counts: no segments here.
    pub min_segments: Option<u64>,
    pub max_segments: Option<u64>,
}

fn default_cleanup_interval() -> std::time::Duration {
    std::time::Duration::from_secs(300)
}

/// Parses a duration as the walkthrough writes them: a number and a unit, `ms`, `s`, `m`, `h`
/// or `d` ("5m", "1h", "250ms"); several may follow each other ("1h30m").
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || {
        format!("invalid duration {text:?}: use a number and a unit (ms, s, m, h, d), e.g. \"5m\"")
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = std::time::Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_ms = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        total += std::time::Duration::from_millis(n.checked_mul(unit_ms).ok_or_else(bad)?);
        rest = &rest[unit_len..];
    }
    Ok(total)
}

mod duration {
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<std::time::Duration, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Parses a size as the walkthrough writes them: a number of bytes, optionally followed by a
/// unit `B`, `KB`, `MB`, `GB` (powers of 1024, as `KiB`, `MiB`, `GiB` also say): "1MB",
/// "64KB", "4096". Case-insensitive; a space before the unit is allowed.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "invalid size {text:?}: use a number of bytes, optionally with a unit (B, KB, MB, GB), e.g. \"1MB\""
        )
    };
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits].parse().map_err(|_| bad())?;
    let unit: u64 = match t[digits..].trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).ok_or_else(bad)
}

/// A size key: an integer (bytes) or a string with a unit ([`parse_size`]).
mod size {
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Size {
            Bytes(i64),
            Text(String),
        }
        let bad = |e: String| serde::de::Error::custom(e);
        match Size::deserialize(d).map_err(|_: D::Error| {
            bad("expected a size: a number of bytes or a string such as \"1MB\"".to_owned())
        })? {
            Size::Bytes(n) => {
                u64::try_from(n).map_err(|_| bad(format!("invalid size {n}: must be 0 or more")))
            }
            Size::Text(t) => super::parse_size(&t).map_err(bad),
        }
    }
    use serde::Deserialize;
}

mod opt_size {
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        super::size::deserialize(d).map(Some)
    }
}

/// A duration in milliseconds: an integer (milliseconds) or a string with units
/// ([`parse_duration`]: "5s", "250ms").
mod millis {
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Millis {
            Number(i64),
            Text(String),
        }
        let bad = |e: String| serde::de::Error::custom(e);
        match Millis::deserialize(d).map_err(|_: D::Error| {
            bad("expected milliseconds or a duration such as \"5s\"".to_owned())
        })? {
            Millis::Number(n) => u64::try_from(n)
                .map_err(|_| bad(format!("invalid duration {n}: must be 0 or more"))),
            Millis::Text(t) => super::parse_duration(&t)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .map_err(bad),
        }
    }
    use serde::Deserialize;
}

mod opt_duration {
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<std::time::Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }
}

/// `[http_config]`: the HTTP API's limits and optional TLS. Every limit bounds what one
/// client, authenticated or not, can make the node hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body accepted (413 above it): bytes, or a size such as "1MB".
    #[serde(default = "default_max_body_bytes", with = "size")]
    pub max_body_bytes: u64,
    /// PEM certificate chain the API presents; with `key_path`, HTTP is served over TLS only.
    pub cert_path: Option<PathBuf>,
    /// PEM private key of `cert_path`.
    pub key_path: Option<PathBuf>,
    /// Open connections served at once; a connection over the cap is answered 503 and closed
    /// at once, and the node keeps accepting (default 512).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a client has to send a request's line and headers (and finish the TLS
    /// handshake), from the moment it connects or starts the request (default 10s).
    #[serde(default = "default_header_read_timeout", with = "duration")]
    pub header_read_timeout: std::time::Duration,
    /// How long a connection with no request in progress stays open with nothing sent or
    /// received (keep-alive, or a response the client does not read) (default 60s).
    #[serde(default = "default_idle_timeout", with = "duration")]
    pub idle_timeout: std::time::Duration,
    /// How long a request body may take to arrive in full (408 after it) (default 30s).
    #[serde(default = "default_body_read_timeout", with = "duration")]
    pub body_read_timeout: std::time::Duration,
    /// Largest request line plus headers, in bytes (431 above it; at least 8192) (default 65536).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: default_max_body_bytes(),
            cert_path: None,
            key_path: None,
            max_connections: default_max_connections(),
            header_read_timeout: default_header_read_timeout(),
            idle_timeout: default_idle_timeout(),
            body_read_timeout: default_body_read_timeout(),
            max_header_bytes: default_max_header_bytes(),
        }
    }
}

impl HttpConfig {
    fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes == 0 {
            return Err("http_config.max_body_bytes must be greater than 0".into());
        }
        if self.cert_path.is_some() != self.key_path.is_some() {
            return Err(
                "http_config: set both cert_path and key_path to serve HTTPS, or neither".into(),
            );
        }
        if self.max_connections == 0 {
            return Err("http_config.max_connections must be at least 1".into());
        }
        for (key, d) in [
            ("header_read_timeout", self.header_read_timeout),
            ("idle_timeout", self.idle_timeout),
            ("body_read_timeout", self.body_read_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("http_config.{key} must be greater than 0"));
            }
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            return Err(format!(
                "http_config.max_header_bytes must be at least {MIN_HEADER_BYTES}, got {}",
                self.max_header_bytes
            ));
        }
        Ok(())
    }
}

/// The smallest `max_header_bytes` (hyper's smallest read buffer).
pub const MIN_HEADER_BYTES: usize = 8192;

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

fn default_max_connections() -> usize {
    512
}

fn default_header_read_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

fn default_idle_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

fn default_body_read_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

fn default_max_header_bytes() -> usize {
    64 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayerConfig {
    pub namespaces: Vec<String>,
    /// `host:port` of the upstream's gRPC listener (checked by [`check_host_port`]).
    pub upstream_address: String,
    pub segment_lag_threshold: Option<u64>,
    /// Connect over plaintext when no `ca_path` is set. `false` without `ca_path` refuses to start.
    pub allow_insecure: Option<bool>,
    /// PEM CA bundle that signed the upstream's certificate; set: connect over TLS.
    pub ca_path: Option<PathBuf>,
    /// PEM client certificate presented to an upstream that requires mTLS (with `key_path`).
    pub cert_path: Option<PathBuf>,
    /// PEM private key of `cert_path`.
    pub key_path: Option<PathBuf>,
    /// File holding the replication token this follower presents (first line used).
    pub token_file: Option<PathBuf>,
    /// What to do when this replica's history differs from the upstream's: "rebootstrap"
    /// (default: keep the entries the upstream lacks in a rollback file, then install a
    /// snapshot) or "stop".
    #[serde(default)]
    pub on_divergence: crate::replication::follower::OnDivergence,
    /// `/ready` answers 503 while a namespace of this relayer is more than this many entries
    /// behind its upstream (default 10000).
    #[serde(default = "default_max_lag")]
    pub max_lag: i64,
}

fn default_max_lag() -> i64 {
    10_000
}

/// `[acks_config.NS]`: the default `?acks=K&timeout_ms=T` of writes to NS on this node.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AcksConfig {
    /// Followers that must have applied a write before it is answered (default 0: none).
    #[serde(default)]
    pub acks: u32,
    /// How long a write waits for them before it is answered 504 (still committed here):
    /// milliseconds, or a duration such as "5s".
    #[serde(default = "default_acks_timeout_ms", with = "millis")]
    pub timeout_ms: u64,
}

impl Default for AcksConfig {
    fn default() -> Self {
        AcksConfig {
            acks: 0,
            timeout_ms: default_acks_timeout_ms(),
        }
    }
}

fn default_acks_timeout_ms() -> u64 {
    5_000
}

/// Most a write may wait for acknowledgements.
pub const MAX_ACKS_TIMEOUT_MS: u64 = 60_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierConfig {
    pub bind_port: u16,
    /// Messages queued per subscriber; a subscriber whose queue is full misses the next ones
    /// (it sees a gap in `seq_num`). 1 to 1,000,000.
    #[serde(default = "default_hwm")]
    pub high_water_mark: i32,
    /// How long pending messages may delay shutdown: milliseconds, or a duration such as
    /// "1s" (at most 24 hours).
    #[serde(default, with = "millis")]
    pub linger_time: u64,
    /// After a start, how long the notifier holds back what it has to publish while the
    /// subscribers it had before come back and subscribe again.
    #[serde(default = "default_startup_grace", with = "duration")]
    pub startup_grace: std::time::Duration,
    /// Largest message a subscriber may send (a subscription is one): a connection sending
    /// more is closed. At least 64.
    #[serde(default = "default_max_subscription_bytes")]
    pub max_subscription_bytes: i64,
    /// Subscribers connected at once at most; more are disconnected as soon as they connect.
    #[serde(default = "default_max_subscribers")]
    pub max_subscribers: usize,
    /// Time a new connection has to complete the ZeroMQ handshake.
    #[serde(default = "default_handshake_timeout", with = "duration")]
    pub handshake_timeout: std::time::Duration,
    /// A file holding the notifier's CURVE secret key (Z85): subscribers must then use CURVE
    /// with its public key. Unset: no encryption (the walkthrough's clients).
    #[serde(default)]
    pub curve_secret_key_file: Option<PathBuf>,
    /// A file of the CURVE public keys (Z85, one per line) of the subscribers allowed in.
    /// Unset: any subscriber that knows the server's public key.
    #[serde(default)]
    pub curve_client_keys_file: Option<PathBuf>,
}

fn default_hwm() -> i32 {
    1000
}

/// Longest `linger_time`: ZeroMQ takes it as an `int` of milliseconds.
pub const MAX_LINGER_MS: u64 = 86_400_000;

fn default_startup_grace() -> std::time::Duration {
    std::time::Duration::from_secs(2)
}

fn default_max_subscription_bytes() -> i64 {
    256
}

fn default_max_subscribers() -> usize {
    1024
}

fn default_handshake_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}

/// Largest `high_water_mark`: what one slow subscriber may hold queued.
pub const MAX_HIGH_WATER_MARK: i32 = 1_000_000;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// trace, debug, info, warn or error (any case).
    #[serde(default)]
    pub log_level: LogLevel,
    #[serde(default)]
    pub disable_timestamp: bool,
    /// "text" (default) or "json": one JSON object per line.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Log one line per HTTP request (method, path, status, duration, bytes) at INFO.
    #[serde(default)]
    pub access_log: bool,
    /// Accepted for compatibility (log sampling); ferry logs every line at or above `log_level`.
    pub min_level_percents: Option<MinLevelPercents>,
}

/// `[log_config] log_level`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The spelling `tracing`'s filters take.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<LogLevel, D::Error> {
        let text = String::deserialize(d)?;
        Ok(match text.to_ascii_lowercase().as_str() {
            "trace" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" | "warning" => LogLevel::Warn,
            "error" => LogLevel::Error,
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "log_level {text:?} is not one of trace, debug, info, warn, error"
                )));
            }
        })
    }
}

/// `[log_config] log_format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (fields `timestamp`, `level`, `fields.message`, ...).
    Json,
}

/// `[log_config.min_level_percents]`: the walkthrough's log sampling, by level. Checked and
/// ignored.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinLevelPercents {
    pub trace: Option<f64>,
    pub debug: Option<f64>,
    pub info: Option<f64>,
    pub warn: Option<f64>,
    pub error: Option<f64>,
}

/// Checks an upstream address: `host:port`, as the walkthrough writes it ("127.0.0.1:4001",
/// "dc1.example:4001", "[::1]:4001"); no scheme, no path.
pub fn check_host_port(addr: &str) -> Result<(), String> {
    let bad = |why: &str| format!("{addr:?} is not host:port ({why}), e.g. \"127.0.0.1:4001\"");
    if addr.contains("://") {
        return Err(bad("no scheme: ferry adds it"));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(bad("no port"));
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad("the port must be 1 to 65535")),
    }
    let host = match host.strip_prefix('[') {
        Some(v6) => match v6.strip_suffix(']') {
            Some(ip) if ip.parse::<std::net::Ipv6Addr>().is_ok() => return Ok(()),
            _ => return Err(bad("not an IPv6 address in brackets")),
        },
        None => host,
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(bad("the host must be a name or an IP address"));
    }
    Ok(())
}

/// Checks a namespace name: it becomes a file name, so only letters, digits, `-`, `_` and `.`,
/// no leading dot and no `..` — a name can never point outside `base_dir`.
pub fn validate_namespace(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err(format!(
            "namespace name {name:?} must be 1 to 128 characters long"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "namespace name {name:?} contains {c:?}; use letters, digits, '-', '_' and '.'"
        ));
    }
    if name.starts_with('.') || name.contains("..") {
        return Err(format!(
            "namespace name {name:?} must not start with '.' or contain '..'"
        ));
    }
    Ok(())
}

fn validate_grpc(g: &GrpcConfig) -> Result<(), String> {
    if g.cert_path.is_some() != g.key_path.is_some() {
        return Err(
            "grpc_config: cert_path and key_path go together (the certificate and its key)".into(),
        );
    }
    if g.ca_path.is_some() && g.cert_path.is_none() {
        return Err("grpc_config.ca_path (verify client certificates) needs cert_path and key_path: client certificates are checked over TLS".into());
    }
    if g.allow_insecure == Some(false) && g.cert_path.is_none() {
        return Err("grpc_config.allow_insecure = false but no cert_path/key_path is set: set grpc_config.cert_path and grpc_config.key_path to serve gRPC over TLS, or allow_insecure = true to serve plaintext".into());
    }
    if g.max_streams == 0 || g.max_streams_per_connection == 0 {
        return Err(
            "grpc_config.max_streams and max_streams_per_connection must be at least 1".into(),
        );
    }
    if g.stream_buffer_bytes < MIN_STREAM_BUFFER_BYTES {
        return Err(format!(
            "grpc_config.stream_buffer_bytes must be at least {MIN_STREAM_BUFFER_BYTES}, got {}",
            g.stream_buffer_bytes
        ));
    }
    for (key, d) in [
        ("stream_stall_timeout", g.stream_stall_timeout),
        ("keepalive_interval", g.keepalive_interval),
        ("keepalive_timeout", g.keepalive_timeout),
        ("idle_timeout", g.idle_timeout),
    ] {
        if d.is_zero() {
            return Err(format!("grpc_config.{key} must be greater than 0"));
        }
    }
    Ok(())
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text, path)?;
        config.file = Some(path.to_owned());
        Ok(config)
    }

    /// Parses and validates config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            // "line N (`the line`): message": the line shows which key a type error is about.
            let line = e
                .span()
                .map(|s| {
                    let n = text[..s.start].matches('\n').count();
                    let src = text.lines().nth(n).unwrap_or("").trim();
                    format!("line {} (`{src}`): ", n + 1)
                })
                .unwrap_or_default();
            ConfigError::Parse {
                path: path.to_owned(),
                message: format!("{line}{}", e.message().trim_end()),
            }
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let ns = &self.storage_config.namespaces;
        if ns.is_empty() {
            return Err("storage_config.namespaces is empty".into());
        }
        for (i, name) in ns.iter().enumerate() {
            validate_namespace(name).map_err(|e| format!("storage_config.namespaces: {e}"))?;
            if ns[..i].contains(name) {
                return Err(format!("storage_config.namespaces lists {name:?} twice"));
            }
        }
        let mut followed: Vec<(&str, &str)> = Vec::new();
        for (relayer, r) in &self.relayer_config {
            for name in &r.namespaces {
                if let Some((other, _)) = followed.iter().find(|(_, n)| *n == name.as_str()) {
                    return Err(format!(
                        "namespace {name:?} is followed by both relayer_config.{other} and relayer_config.{relayer}; a namespace has one upstream"
                    ));
                }
                followed.push((relayer, name));
                if !ns.contains(name) {
                    return Err(format!(
                        "relayer_config.{relayer} follows namespace {name:?}, which is not in storage_config.namespaces"
                    ));
                }
            }
        }
        for (relayer, r) in &self.relayer_config {
            check_host_port(&r.upstream_address)
                .map_err(|e| format!("relayer_config.{relayer}.upstream_address {e}"))?;
            if r.max_lag < 0 {
                return Err(format!(
                    "relayer_config.{relayer}.max_lag must be 0 or more, got {}",
                    r.max_lag
                ));
            }
        }
        for (name, a) in &self.acks_config {
            if !ns.contains(name) {
                return Err(format!(
                    "acks_config.{name}: namespace {name:?} is not in storage_config.namespaces"
                ));
            }
            if a.timeout_ms == 0 || a.timeout_ms > MAX_ACKS_TIMEOUT_MS {
                return Err(format!(
                    "acks_config.{name}.timeout_ms must be 1 to {MAX_ACKS_TIMEOUT_MS}, got {}",
                    a.timeout_ms
                ));
            }
        }
        for (name, n) in &self.notifier_config {
            if !(1..=MAX_HIGH_WATER_MARK).contains(&n.high_water_mark) {
                return Err(format!(
                    "notifier_config.{name}.high_water_mark must be 1 to {MAX_HIGH_WATER_MARK} (messages queued per subscriber; ferry keeps every queue bounded, so 0 does not mean unlimited), got {}",
                    n.high_water_mark
                ));
            }
            if n.max_subscribers == 0 {
                return Err(format!(
                    "notifier_config.{name}.max_subscribers must be at least 1"
                ));
            }
            if n.curve_client_keys_file.is_some() && n.curve_secret_key_file.is_none() {
                return Err(format!(
                    "notifier_config.{name}.curve_client_keys_file needs curve_secret_key_file"
                ));
            }
            if n.handshake_timeout.is_zero() {
                return Err(format!(
                    "notifier_config.{name}.handshake_timeout must be more than 0"
                ));
            }
            if n.linger_time > MAX_LINGER_MS {
                return Err(format!(
                    "notifier_config.{name}.linger_time must be at most {MAX_LINGER_MS} ms (24h), got {}",
                    n.linger_time
                ));
            }
            if !ns.contains(name) {
                return Err(format!(
                    "notifier_config.{name}: namespace {name:?} is not in storage_config.namespaces"
                ));
            }
        }
        let perf = &self.storage_config.performance_config;
        if perf.checkpoint_pages == 0 {
            return Err(
                "storage_config.performance_config.checkpoint_pages must be at least 1".into(),
            );
        }
        if perf.max_seq_waiters == 0 {
            return Err(
                "storage_config.performance_config.max_seq_waiters must be at least 1".into(),
            );
        }
        if perf.mmap_size > MAX_MMAP_SIZE {
            return Err(format!(
                "storage_config.performance_config.mmap_size must be at most {MAX_MMAP_SIZE} bytes (SQLite's limit), got {}",
                perf.mmap_size
            ));
        }
        if let Some(w) = &self.storage_config.wal_cleanup_config
            && w.enabled
        {
            if w.max_age.is_none() && w.max_entries.is_none() {
                return Err("storage_config.wal_cleanup_config is enabled but sets neither max_age nor max_entries".into());
            }
            if w.interval.is_zero() {
                return Err(
                    "storage_config.wal_cleanup_config.interval must be greater than 0".into(),
                );
            }
            if w.max_entries == Some(0) {
                return Err(
                    "storage_config.wal_cleanup_config.max_entries must be at least 1".into(),
                );
            }
        }
        if let Some(g) = &self.grpc_config {
            validate_grpc(g)?;
        }
        for (relayer, r) in &self.relayer_config {
            if r.cert_path.is_some() != r.key_path.is_some() {
                return Err(format!(
                    "relayer_config.{relayer}: cert_path and key_path go together (the client certificate and its key)"
                ));
            }
            if r.cert_path.is_some() && r.ca_path.is_none() {
                return Err(format!(
                    "relayer_config.{relayer}: cert_path needs ca_path (a client certificate is presented over TLS, and TLS needs the CA that signed the upstream's certificate)"
                ));
            }
            if r.allow_insecure == Some(false) && r.ca_path.is_none() {
                return Err(format!(
                    "relayer_config.{relayer}.allow_insecure = false but no ca_path is set: set ca_path (the CA that signed the upstream's certificate) to connect over TLS, or allow_insecure = true for plaintext"
                ));
            }
        }
        self.http_config.validate()?;
        Ok(())
    }

    /// The keys present in this file that ferry accepts but does not act on, with the reason,
    /// so the node can say so once at startup.
    pub fn ignored_keys(&self) -> Vec<(&'static str, &'static str)> {
        const ENGINE: &str =
            "a setting of the walkthrough's storage engine; SQLite manages its own files";
        let s = &self.storage_config;
        let mut out = Vec::new();
        let mut note = |present: bool, key, why| {
            if present {
                out.push((key, why));
            }
        };
        note(
            s.bytes_per_sync.is_some(),
            "storage_config.bytes_per_sync",
            ENGINE,
        );
        note(
            s.segment_size.is_some(),
            "storage_config.segment_size",
            ENGINE,
        );
        note(s.arena_size.is_some(), "storage_config.arena_size", ENGINE);
        if let Some(w) = &s.wal_cleanup_config {
            note(
                w.min_segments.is_some() || w.max_segments.is_some(),
                "storage_config.wal_cleanup_config.min_segments/max_segments",
                "ferry's log has no segments; retention follows max_age and max_entries",
            );
        }
        note(
            self.write_notify_config.is_some(),
            "write_notify_config",
            "ferry pushes every commit to followers and subscribers at once, without a delay",
        );
        note(
            self.log_config.min_level_percents.is_some(),
            "log_config.min_level_percents",
            "log sampling is not supported; every line at or above log_level is written",
        );
        for r in self.relayer_config.values() {
            note(
                r.segment_lag_threshold.is_some(),
                "relayer_config.*.segment_lag_threshold",
                "ferry has no segments; lag is reported in entries",
            );
        }
        out.sort();
        out.dedup();
        out
    }
}
