//! `GET /metrics`: the Prometheus text format (0.0.4), encoded by `prometheus-client`.
//!
//! Per namespace (label `namespace`): the store's head and its writer's commits (counters and
//! histograms of commit latency and group size), readiness, a replica's replication progress,
//! and its notifier's messages. Per node: HTTP request latency by route class, build info, the
//! gRPC connections and streams open, and the process's CPU, memory and file descriptors (read
//! from `/proc/self`).
//!
//! Names follow Prometheus' conventions: base units in the name (`_seconds`, `_bytes`),
//! counters end in `_total`, `process_*` as every client library names them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use warp::Reply;
use warp::http::StatusCode;
use warp::reply::Response;

use super::Api;
use crate::replication::follower::{State, Status};

/// `GET /metrics`.
pub async fn metrics(api: Arc<Api>) -> Response {
    // /proc is read off the async threads.
    let process = tokio::task::spawn_blocking(Process::read)
        .await
        .ok()
        .flatten();
    let mut registry = Registry::default();
    registry.register(
        "ferry_http_request_duration_seconds",
        "HTTP requests by route class (read, write, admin, status, other) and status class, from arrival to response headers",
        api.http_metrics.latency.clone(),
    );
    registry.register_collector(Box::new(Scrape::of(&api, process)));
    let mut text = String::new();
    match prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        Ok(()) => warp::reply::with_header(
            text,
            "content-type",
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )
        .into_response(),
        Err(_) => warp::reply::with_status(
            warp::reply::json(&serde_json::json!({"error": "cannot encode the metrics"})),
            StatusCode::INTERNAL_SERVER_ERROR,
        )
        .into_response(),
    }
}

/// Labels of one HTTP latency series: route class and status class.
type RequestLabels = [(&'static str, &'static str); 2];

/// What the HTTP server measures as it serves (one per node; cheap to clone).
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    latency: Family<RequestLabels, Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> HttpMetrics {
        HttpMetrics {
            latency: Family::new_with_constructor(seconds_histogram),
        }
    }
}

impl HttpMetrics {
    /// Records one answered request (called by the server's log filter).
    pub fn observe(&self, info: warp::log::Info<'_>) {
        self.observe_parts(info.method(), info.path(), info.status(), info.elapsed());
    }

    /// Records one answered request from its parts (for routes served without warp's filters).
    pub fn observe_parts(
        &self,
        method: &warp::http::Method,
        path: &str,
        status: warp::http::StatusCode,
        elapsed: std::time::Duration,
    ) {
        let labels = [
            ("route", route_class(method, path)),
            ("status", status_class(status)),
        ];
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

/// Latency buckets: 0.5 ms to ~8 s, doubling (as the writer's commit latency).
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// Which kind of work a request is, for latency by route class.
pub fn route_class(method: &warp::http::Method, path: &str) -> &'static str {
    use warp::http::Method;
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, parts.as_slice()) {
        (&Method::GET, ["health" | "ready" | "metrics"] | ["api", "v1", _, "stats"]) => "status",
        (&Method::POST, ["api", "v1", _, "kv", "batch"]) => "write",
        (&Method::GET, ["api", "v1", _, "kv", _, ..] | ["api", "v1", _, "offset" | "changes"]) => {
            "read"
        }
        (&Method::PUT | &Method::DELETE, ["api", "v1", _, "kv", _, ..]) => "write",
        (&Method::POST, ["api", "v1", _, "promote" | "fence"]) => "admin",
        _ => "other",
    }
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// One namespace's samples.
#[derive(Debug)]
struct NamespaceSample {
    name: String,
    head_seq: i64,
    commits: u64,
    requests: u64,
    checkpoints: u64,
    commits_here: u64,
    commit_seconds: f64,
    commit_duration: Histogram,
    commit_group: Histogram,
    ready: bool,
    /// Reads waiting with `?min_seq=`.
    seq_waiters: usize,
    /// A replica's follower of it.
    followed: Option<Status>,
    /// Its notifier's messages sent and topics subscribed.
    notifier: Option<(u64, i64)>,
}

/// Everything one scrape reports but the HTTP latency, read at once.
#[derive(Debug)]
struct Scrape {
    namespaces: Vec<NamespaceSample>,
    /// gRPC connections tracked and Tail/Snapshot streams open (with `[grpc_config]`).
    grpc: Option<(usize, usize)>,
    process: Option<Process>,
}

impl Scrape {
    fn of(api: &Api, process: Option<Process>) -> Scrape {
        let namespaces = api
            .store
            .iter()
            .map(|n| {
                let c = n.commit_counters();
                let followed = api
                    .followers
                    .get(n.name())
                    .filter(|_| api.role.upstream(n.name()).is_some())
                    .map(|f| f.tracker.snapshot(n));
                NamespaceSample {
                    name: n.name().to_owned(),
                    head_seq: n.head().seq,
                    commits: c.commits.load(Ordering::Relaxed),
                    requests: c.requests.load(Ordering::Relaxed),
                    checkpoints: c.checkpoints.load(Ordering::Relaxed),
                    commits_here: c.here.load(Ordering::Relaxed),
                    commit_seconds: c.micros.load(Ordering::Relaxed) as f64 / 1e6,
                    commit_duration: c.duration.clone(),
                    commit_group: c.group_size.clone(),
                    ready: super::failover::not_ready(api, n).is_none(),
                    seq_waiters: n.seq_waiters(),
                    followed,
                    notifier: api.notifications.get(n.name()).map(|c| {
                        (
                            c.sent.load(Ordering::Relaxed),
                            c.subscriptions.load(Ordering::Relaxed),
                        )
                    }),
                }
            })
            .collect();
        Scrape {
            namespaces,
            grpc: api.grpc_conns.as_ref().map(|c| c.counts()),
            process,
        }
    }
}

/// Encodes one family: its HELP and TYPE lines, then a sample per `(labels, metric)`.
fn family<L, M>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error>
where
    L: prometheus_client::encoding::EncodeLabelSet,
    M: EncodeMetric,
{
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, m) in series {
        m.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge, Histogram as Hist};
        let ns = &self.namespaces;
        let per = |f: &dyn Fn(&NamespaceSample) -> i64| {
            ns.iter()
                .map(|n| ([("namespace", n.name.as_str())], ConstGauge::new(f(n))))
                .collect::<Vec<_>>()
        };
        let count = |f: &dyn Fn(&NamespaceSample) -> u64| {
            ns.iter()
                .map(|n| ([("namespace", n.name.as_str())], ConstCounter::new(f(n))))
                .collect::<Vec<_>>()
        };
        family(
            &mut e,
            "ferry_build_info",
            "The running ferry's version (always 1).",
            Gauge,
            [([("version", env!("CARGO_PKG_VERSION"))], ConstGauge::new(1))],
        )?;
        family(
            &mut e,
            "ferry_head_seq",
            "Seq of the last entry committed to the namespace's log.",
            Gauge,
            ns.iter().map(|n| {
                (
                    [("namespace", n.name.as_str())],
                    ConstGauge::new(n.head_seq),
                )
            }),
        )?;
        family(
            &mut e,
            "ferry_commits",
            "SQLite transactions the writer committed: groups of client writes, and replicated batches.",
            Counter,
            count(&|n| n.commits),
        )?;
        family(
            &mut e,
            "ferry_commits_on_caller",
            "Of ferry_commits_total, lone client writes committed on the HTTP thread that received them rather than handed to the writer thread (writes coming one at a time, nothing else begun on the node between them).",
            Counter,
            count(&|n| n.commits_here),
        )?;
        family(
            &mut e,
            "ferry_commit_requests",
            "Client write requests stored; divided by ferry_commits_total, the size of a group commit.",
            Counter,
            count(&|n| n.requests),
        )?;
        family(
            &mut e,
            "ferry_checkpoints",
            "WAL checkpoints run (copies of the WAL into the database file, each with a sync of it): under load one after every commit or two while the WAL holds storage_config.performance_config.checkpoint_pages, and one when the node goes idle.",
            Counter,
            count(&|n| n.checkpoints),
        )?;
        family(
            &mut e,
            "ferry_commit_seconds",
            "Time the writer spent in transactions, BEGIN to end of COMMIT (fsync included); its rate is how busy the writer is.",
            Counter,
            ns.iter().map(|n| {
                (
                    [("namespace", n.name.as_str())],
                    ConstCounter::new(n.commit_seconds),
                )
            }),
        )?;
        family(
            &mut e,
            "ferry_commit_duration_seconds",
            "Latency of each writer transaction, BEGIN to end of COMMIT (fsync included).",
            Hist,
            ns.iter()
                .map(|n| ([("namespace", n.name.as_str())], n.commit_duration.clone())),
        )?;
        family(
            &mut e,
            "ferry_commit_group_requests",
            "Client write requests stored by each group commit (replicated batches not counted).",
            Hist,
            ns.iter()
                .map(|n| ([("namespace", n.name.as_str())], n.commit_group.clone())),
        )?;
        family(
            &mut e,
            "ferry_ready",
            "1 when the namespace counts as ready for GET /ready (serving; following within max_lag on a replica), else 0 (/stats says why).",
            Gauge,
            per(&|n| i64::from(n.ready)),
        )?;
        family(
            &mut e,
            "ferry_seq_waiters",
            "Reads waiting with ?min_seq= for a seq the namespace has not reached (503 past storage_config.performance_config.max_seq_waiters).",
            Gauge,
            per(&|n| i64::try_from(n.seq_waiters).unwrap_or(i64::MAX)),
        )?;
        let followed: Vec<(&str, &Status)> = ns
            .iter()
            .filter_map(|n| n.followed.as_ref().map(|s| (n.name.as_str(), s)))
            .collect();
        let replica = |f: &dyn Fn(&Status) -> Known| {
            followed
                .iter()
                .map(|(n, s)| ([("namespace", *n)], ConstGauge::new(f(s))))
                .collect::<Vec<_>>()
        };
        family(
            &mut e,
            "ferry_replication_upstream_head_seq",
            "Head seq the upstream last reported (replicas).",
            Gauge,
            replica(&|s| Known(Some(s.upstream_head_seq))),
        )?;
        family(
            &mut e,
            "ferry_replication_lag_entries",
            "Entries the upstream has that this replica has not applied yet (NaN once stopped: unknown).",
            Gauge,
            replica(&|s| Known(s.lag)),
        )?;
        family(
            &mut e,
            "ferry_replication_following",
            "1 while the follower is streaming from its upstream, else 0 (see /stats for why).",
            Gauge,
            replica(&|s| Known(Some(i64::from(s.state == State::Following)))),
        )?;
        let notified: Vec<(&str, (u64, i64))> = ns
            .iter()
            .filter_map(|n| n.notifier.map(|c| (n.name.as_str(), c)))
            .collect();
        family(
            &mut e,
            "ferry_notifications_sent",
            "ZeroMQ notifications handed to the publisher socket.",
            Counter,
            notified
                .iter()
                .map(|(n, (sent, _))| ([("namespace", *n)], ConstCounter::new(*sent))),
        )?;
        family(
            &mut e,
            "ferry_notifier_subscribed_topics",
            "Distinct topic prefixes subscribed to on the namespace's ZeroMQ socket.",
            Gauge,
            notified
                .iter()
                .map(|(n, (_, subs))| ([("namespace", *n)], ConstGauge::new(*subs))),
        )?;
        if let Some((connections, streams)) = self.grpc {
            let gauge = |n: usize| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
            let none: [(&str, &str); 0] = [];
            family(
                &mut e,
                "ferry_grpc_connections",
                "gRPC connections open on this node (closed after grpc_config.idle_timeout with no stream and no request).",
                Gauge,
                [(none, gauge(connections))],
            )?;
            family(
                &mut e,
                "ferry_grpc_streams",
                "Tail and Snapshot streams open on this node (RESOURCE_EXHAUSTED past grpc_config.max_streams).",
                Gauge,
                [(none, gauge(streams))],
            )?;
        }
        if let Some(p) = &self.process {
            p.encode(&mut e)?;
        }
        Ok(())
    }
}

/// An integer gauge value, NaN when unknown.
#[derive(Debug)]
struct Known(Option<i64>);

impl prometheus_client::encoding::EncodeGaugeValue for Known {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::GaugeValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        match self.0 {
            Some(v) => v.encode(encoder),
            None => f64::NAN.encode(encoder),
        }
    }
}

/// The process's resource use, as every Prometheus client library reports it (Linux only:
/// read from `/proc/self`).
#[derive(Debug)]
struct Process {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    open_fds: u64,
    max_fds: Option<u64>,
    start_time_seconds: Option<f64>,
}

impl Process {
    fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The fields after the command name, which is in parentheses and may hold spaces:
        // field 3 (state) is at index 0.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
        // SAFETY: sysconf reads a constant of the running system; it has no preconditions.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let ticks = (ticks > 0).then_some(ticks as f64)?;
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| {
                let line = s.lines().find(|l| l.starts_with("Max open files"))?;
                line.split_whitespace().nth(3)?.parse().ok()
            });
        Some(Process {
            cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page.max(0) as u64,
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as u64,
            max_fds,
            start_time_seconds: boot.map(|b| b as f64 + field(22).unwrap_or(0) as f64 / ticks),
        })
    }

    fn encode(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let none: [(&str, &str); 0] = [];
        family(
            e,
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            Counter,
            [(none, ConstCounter::new(self.cpu_seconds))],
        )?;
        family(
            e,
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            Gauge,
            [(none, ConstGauge::new(self.resident_bytes as i64))],
        )?;
        family(
            e,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            Gauge,
            [(none, ConstGauge::new(self.virtual_bytes as i64))],
        )?;
        family(
            e,
            "process_open_fds",
            "Number of open file descriptors.",
            Gauge,
            [(none, ConstGauge::new(self.open_fds as i64))],
        )?;
        if let Some(max) = self.max_fds {
            family(
                e,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                Gauge,
                [(none, ConstGauge::new(max as i64))],
            )?;
        }
        if let Some(start) = self.start_time_seconds {
            family(
                e,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                Gauge,
                [(none, ConstGauge::new(start))],
            )?;
        }
        Ok(())
    }
}
