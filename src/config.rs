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
    /// Address every listener (HTTP, gRPC, ZeroMQ) binds to. Default 0.0.0.0 (all interfaces),
    /// as the walkthrough expects; set 127.0.0.1 to keep a node private to the machine.
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
    /// Accepted for compatibility; ferry notifies as soon as a commit is durable.
    pub write_notify_config: Option<toml::Value>,
}

fn default_listen_ip() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    pub port: u16,
    /// Accepted for compatibility; ferry's gRPC is plaintext (put TLS in front of it).
    pub allow_insecure: Option<bool>,
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
    // Keys of the walkthrough's storage engine with no meaning for SQLite.
    pub bytes_per_sync: Option<toml::Value>,
    pub segment_size: Option<toml::Value>,
    pub arena_size: Option<toml::Value>,
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
}

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
    pub min_segments: Option<toml::Value>,
    pub max_segments: Option<toml::Value>,
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

mod opt_duration {
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<std::time::Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body accepted (413 above it).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: default_max_body_bytes(),
        }
    }
}

fn default_max_body_bytes() -> u64 {
    1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayerConfig {
    pub namespaces: Vec<String>,
    /// `host:port` of the upstream's gRPC listener.
    pub upstream_address: String,
    pub segment_lag_threshold: Option<toml::Value>,
    pub allow_insecure: Option<bool>,
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
    /// How long a write waits for them before it is answered 504 (still committed here).
    #[serde(default = "default_acks_timeout_ms")]
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
    /// ZeroMQ send high-water mark: messages queued per subscriber before drops.
    #[serde(default = "default_hwm")]
    pub high_water_mark: i32,
    /// Milliseconds pending messages may delay shutdown.
    #[serde(default)]
    pub linger_time: i32,
}

fn default_hwm() -> i32 {
    1000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// trace, debug, info, warn or error.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    #[serde(default)]
    pub disable_timestamp: bool,
    /// Accepted for compatibility (log sampling); ferry logs every line at or above `log_level`.
    pub min_level_percents: Option<toml::Value>,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            log_level: default_log_level(),
            disable_timestamp: false,
            min_level_percents: None,
        }
    }
}

fn default_log_level() -> String {
    "info".to_string()
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

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
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
        for name in self.notifier_config.keys() {
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
        if self.http_config.max_body_bytes == 0 {
            return Err("http_config.max_body_bytes must be greater than 0".into());
        }
        if !matches!(
            self.log_config.log_level.to_ascii_lowercase().as_str(),
            "trace" | "debug" | "info" | "warn" | "error"
        ) {
            return Err(format!(
                "log_config.log_level {:?} is not one of trace, debug, info, warn, error",
                self.log_config.log_level
            ));
        }
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
        if let Some(g) = &self.grpc_config {
            note(
                g.allow_insecure.is_some(),
                "grpc_config.allow_insecure",
                "ferry's gRPC is plaintext; put a TLS proxy in front of it",
            );
        }
        for r in self.relayer_config.values() {
            note(
                r.segment_lag_threshold.is_some(),
                "relayer_config.*.segment_lag_threshold",
                "ferry has no segments; lag is reported in entries",
            );
            note(
                r.allow_insecure.is_some(),
                "relayer_config.*.allow_insecure",
                "ferry's gRPC is plaintext",
            );
        }
        out.sort();
        out.dedup();
        out
    }
}
