//! `GET /metrics`: Prometheus text format, one series per namespace, in families for the
//! store, replication and notifications.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use warp::Reply;
use warp::reply::Response;

use super::Api;
use crate::replication::follower::State;
use crate::store::{CommitCounters, Namespace};

/// `GET /metrics`.
pub async fn metrics(api: Arc<Api>) -> Response {
    let namespaces: Vec<_> = api.store.iter().cloned().collect();
    let mut out = Exposition::default();
    store(&mut out, &namespaces);
    replication(&mut out, &api, &namespaces);
    notifications(&mut out, &api);
    warp::reply::with_header(out.text, "content-type", "text/plain; version=0.0.4").into_response()
}

/// The text being built.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    /// One metric family: its HELP and TYPE lines, then a sample per `(labels, value)`.
    fn family(&mut self, name: &str, kind: &str, help: &str, series: Vec<(String, String)>) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in series {
            let _ = writeln!(self.text, "{name}{{{labels}}} {value}");
        }
    }
}

fn label(ns: &str) -> String {
    format!("namespace=\"{ns}\"")
}

/// Each namespace's head and its writer's commits.
fn store(out: &mut Exposition, namespaces: &[Arc<Namespace>]) {
    out.family(
        "ferry_head_seq",
        "gauge",
        "Seq of the last entry committed to the namespace's log.",
        namespaces
            .iter()
            .map(|n| (label(n.name()), n.head().seq.to_string()))
            .collect(),
    );
    let commits = |value: fn(&CommitCounters) -> String| {
        namespaces
            .iter()
            .map(|n| (label(n.name()), value(n.commit_counters())))
            .collect()
    };
    out.family(
        "ferry_commits_total",
        "counter",
        "SQLite transactions the writer committed: groups of client writes, and replicated batches.",
        commits(|c| c.commits.load(Ordering::Relaxed).to_string()),
    );
    out.family(
        "ferry_commit_requests_total",
        "counter",
        "Client write requests stored; divided by ferry_commits_total, the size of a group commit.",
        commits(|c| c.requests.load(Ordering::Relaxed).to_string()),
    );
    out.family(
        "ferry_commit_seconds_total",
        "counter",
        "Time the writer spent in transactions, BEGIN to end of COMMIT (fsync included); its rate is how busy the writer is.",
        commits(|c| format!("{:.6}", c.micros.load(Ordering::Relaxed) as f64 / 1e6)),
    );
}

/// Each followed namespace's progress (replicas).
fn replication(out: &mut Exposition, api: &Api, namespaces: &[Arc<Namespace>]) {
    out.family(
        "ferry_ready",
        "gauge",
        "1 when the namespace counts as ready for GET /ready (serving; following within max_lag on a replica), else 0 (/stats says why).",
        namespaces
            .iter()
            .map(|n| {
                let ready = super::failover::not_ready(api, n).is_none();
                (label(n.name()), u8::from(ready).to_string())
            })
            .collect(),
    );
    let followed: Vec<_> = namespaces
        .iter()
        .filter_map(|n| {
            api.followers
                .get(n.name())
                .filter(|_| api.role.upstream(n.name()).is_some())
                .map(|f| (n.name().to_owned(), f.tracker.snapshot(n)))
        })
        .collect();
    out.family(
        "ferry_replication_upstream_head_seq",
        "gauge",
        "Head seq the upstream last reported (replicas).",
        followed
            .iter()
            .map(|(n, s)| (label(n), s.upstream_head_seq.to_string()))
            .collect(),
    );
    out.family(
        "ferry_replication_lag_entries",
        "gauge",
        "Entries the upstream has that this replica has not applied yet (NaN once stopped: unknown).",
        followed
            .iter()
            .map(|(n, s)| (label(n), s.lag.map_or("NaN".into(), |l| l.to_string())))
            .collect(),
    );
    out.family(
        "ferry_replication_following",
        "gauge",
        "1 while the follower is streaming from its upstream, else 0 (see /stats for why).",
        followed
            .iter()
            .map(|(n, s)| {
                let on = s.state == State::Following;
                (label(n), u8::from(on).to_string())
            })
            .collect(),
    );
}

/// Each ZeroMQ notifier's messages and subscriptions.
fn notifications(out: &mut Exposition, api: &Api) {
    let notifiers: Vec<_> = api.notifications.iter().collect();
    out.family(
        "ferry_notifications_sent_total",
        "counter",
        "ZeroMQ notifications handed to the publisher socket.",
        notifiers
            .iter()
            .map(|(n, c)| (label(n), c.sent.load(Ordering::Relaxed).to_string()))
            .collect(),
    );
    out.family(
        "ferry_notifier_subscribed_topics",
        "gauge",
        "Distinct topic prefixes subscribed to on the namespace's ZeroMQ socket.",
        notifiers
            .iter()
            .map(|(n, c)| {
                (
                    label(n),
                    c.subscriptions.load(Ordering::Relaxed).to_string(),
                )
            })
            .collect(),
    );
}
