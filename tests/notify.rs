//! The ZeroMQ notifier on its own, with a real SUB socket.

mod common;

use std::time::Duration;

use common::*;
use ferry::config::NotifierConfig;
use ferry::notify::Notifier;
use serde_json::json;

const NS: &str = "ns";

/// Entries committed after the task relaying head changes to the notifier is gone are still
/// published, each once, in order. An orderly shutdown always relays the final head, so this
/// arranges the other case: the relay runs on a runtime that never polls it, and dropping that
/// runtime drops the relay before it saw any of the commits. Only the notifier's own check of
/// the head at close can find them. (Catches: the notifier returning at close without
/// publishing what was committed since its last wake-up.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_the_relay_never_saw_are_notified_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::primary(dir.path(), &[NS]).await;
    let c = reqwest::Client::new();
    // Linger: the notifier's thread ends right after publishing; its last messages must
    // still leave the socket.
    let config: NotifierConfig =
        toml::from_str("bind_port = 0\nhigh_water_mark = 100000\nlinger_time = 10000\n").unwrap();
    let relay_runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let notifier = Notifier::start(
        node.ns(NS),
        "127.0.0.1".parse().unwrap(),
        &config,
        relay_runtime.handle().clone(),
        &tokio_util::task::TaskTracker::new(),
    )
    .unwrap();

    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB).unwrap();
    sub.set_rcvhwm(1_000_000).unwrap();
    sub.connect(notifier.endpoint()).unwrap();
    sub.set_subscribe(b"").unwrap();
    let subscriptions = notifier.subscriptions();
    wait_for(
        Duration::from_secs(20),
        "the subscription to reach the notifier",
        async || (subscriptions.load(std::sync::atomic::Ordering::Relaxed) >= 1).then_some(()),
    )
    .await;

    // Single writes and one atomic batch: seqs 1..=8.
    for k in ["a", "b", "c", "d", "e"] {
        put(&c, &node, NS, k, b"v").await;
    }
    let items: Vec<_> = ["f", "g", "h"]
        .iter()
        .map(|k| json!({"key": k, "value": b64(b"v")}))
        .collect();
    let body = json!({"operation": "put", "items": items}).to_string();
    let (s, j) = call(
        &c,
        reqwest::Method::POST,
        &node.url(&format!("/api/v1/{NS}/kv/batch")),
        Some(&body),
    )
    .await;
    assert_eq!(s, 200, "{j}");
    assert_eq!(node.head(NS), 8);

    // Dropping the runtime drops the relay task unpolled (off the test's runtime: tokio does
    // not allow dropping a runtime from async code).
    std::thread::spawn(move || drop(relay_runtime))
        .join()
        .unwrap();
    let got = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        while got.last().map(|(seq, _, _)| *seq) != Some(8) {
            assert!(
                std::time::Instant::now() < deadline,
                "not every commit was notified; got {got:?}"
            );
            if sub.poll(zmq::POLLIN, 100).unwrap() == 0 {
                continue;
            }
            let frames = sub.recv_multipart(0).unwrap();
            assert_eq!(frames[0], b"ns.kv");
            let n: serde_json::Value = serde_json::from_slice(&frames[1]).unwrap();
            got.push((
                n["seq_num"].as_i64().unwrap(),
                n["txn"].as_i64().unwrap(),
                n["key"].as_str().unwrap().to_owned(),
            ));
        }
        got
    })
    .await
    .unwrap();
    let want: Vec<_> = [
        (1, 1, "a"),
        (2, 2, "b"),
        (3, 3, "c"),
        (4, 4, "d"),
        (5, 5, "e"),
        (6, 6, "f"),
        (7, 6, "g"),
        (8, 6, "h"),
    ]
    .iter()
    .map(|&(s, t, k)| (s, t, k.to_owned()))
    .collect();
    assert_eq!(got, want, "each commit notified once, in seq order");
    // With everything published and the relay gone, the notifier's thread ends by itself.
    tokio::task::spawn_blocking(move || notifier.join())
        .await
        .unwrap();
    node.stop().await;
}

/// A notifier duration that is not one is a config error naming the key and the value;
/// the defaults are what the README says. (Catches: `startup_grace` parsed leniently, or
/// defaults drifting from the documentation.)
#[test]
fn notifier_config_checks_startup_grace_and_has_the_documented_defaults() {
    let err = toml::from_str::<NotifierConfig>("bind_port = 0\nstartup_grace = \"soon\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("startup_grace") && err.contains("invalid duration \"soon\""),
        "{err}"
    );
    let c: NotifierConfig = toml::from_str("bind_port = 0\n").unwrap();
    assert_eq!(c.startup_grace, Duration::from_secs(2));
    assert_eq!(c.max_subscription_bytes, 256);
    let c: NotifierConfig = toml::from_str("bind_port = 0\nstartup_grace = \"250ms\"\n").unwrap();
    assert_eq!(c.startup_grace, Duration::from_millis(250));
}

/// The count of subscriptions that can match (shown in `/stats`, and saved so that a restart
/// holds notifications back until as many are back) follows subscribers as they unsubscribe
/// and leave; a subscription that cannot match is not counted. (Catches: an unsubscription
/// counted as one more subscription; a subscriber that left never removed, its
/// subscriptions counted, and a restart waiting for them, forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_count_follows_unsubscriptions_and_departures() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::primary(dir.path(), &[NS]).await;
    let config: NotifierConfig = toml::from_str("bind_port = 0\n").unwrap();
    let notifier = Notifier::start(
        node.ns(NS),
        "127.0.0.1".parse().unwrap(),
        &config,
        tokio::runtime::Handle::current(),
        &tokio_util::task::TaskTracker::new(),
    )
    .unwrap();
    let count = notifier.subscriptions();
    let reaches = async |want: i64| {
        wait_for(
            Duration::from_secs(20),
            &format!("the notifier to count {want} subscriptions"),
            async || (count.load(std::sync::atomic::Ordering::Relaxed) == want).then_some(()),
        )
        .await
    };

    let ctx = zmq::Context::new();
    let a = ctx.socket(zmq::SUB).unwrap();
    a.connect(notifier.endpoint()).unwrap();
    a.set_subscribe(b"").unwrap();
    a.set_subscribe(b"other.kv").unwrap(); // cannot match "ns.kv"
    let b = ctx.socket(zmq::SUB).unwrap();
    b.connect(notifier.endpoint()).unwrap();
    b.set_subscribe(b"ns.").unwrap();
    reaches(2).await;
    b.set_unsubscribe(b"ns.").unwrap();
    reaches(1).await;
    drop(a);
    reaches(0).await;

    drop(b);
    node.stop().await;
    tokio::task::spawn_blocking(move || notifier.join())
        .await
        .unwrap();
}
