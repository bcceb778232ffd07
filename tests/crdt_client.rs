//! `ferry crdt-client` when notifications do not come: its periodic check of each namespace's
//! head reads what it missed, and a log pruned past what it has seen makes it reload every key.
//! The client's ZeroMQ endpoint has no notifier behind it, so no notification ever arrives.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const NS: &str = "ns";

/// The client's state with `counter:c` at `total`.
fn counter(total: u64) -> Value {
    json!({"lww": {}, "counters": {"counter:c": {"counts": {"dc1": total}, "total": total}}})
}

async fn put_count(c: &reqwest::Client, node: &TestNode, n: u64) {
    let value = format!(r#"{{"replica":"dc1","count":{n}}}"#);
    put(c, node, NS, "counter:c", value.as_bytes()).await;
}

/// `ferry crdt-client --json` reading from `node`, subscribed to a port nobody listens on.
fn client_for(node: &TestNode) -> Running {
    // Below the ephemeral range: the client's own retries cannot connect to themselves.
    let port = fixed_ports(1)[0];
    let zmq = format!("{NS}=tcp://127.0.0.1:{port}");
    Running::spawn(&["crdt-client", "--json", "--http", &node.base, "--zmq", &zmq])
}

/// Waits for a JSON line of `event` whose state is `want`; returns every event so far.
fn wait_state(client: &mut Running, event: &str, want: &Value) -> Vec<Value> {
    client.wait_line_where(&format!("{event} with state {want}"), |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| v["event"] == event && v["state"] == *want)
    });
    client
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn signal(client: &Running, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &client.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// #13: entries written after the client is ready, whose notifications never come and with
/// nothing after them, are still read: the periodic check sees the head ahead and reads the
/// gap. (Catches: a client that repairs gaps only when the next notification arrives.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_whose_notifications_never_come_are_read_by_the_periodic_check() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::primary(dir.path(), &[NS]).await;
    let c = reqwest::Client::new();
    put_count(&c, &node, 1).await;
    let mut client = client_for(&node);
    wait_state(&mut client, "ready", &counter(1));

    put_count(&c, &node, 2).await;
    put_count(&c, &node, 3).await;
    let events = wait_state(&mut client, "state", &counter(3));
    let gap = events
        .iter()
        .find(|e| e["event"] == "gap")
        .expect("a gap event");
    assert_eq!(
        (
            gap["namespace"].clone(),
            gap["from"].clone(),
            gap["to"].clone()
        ),
        (json!(NS), json!(2), json!(3)),
        "{events:?}"
    );
    drop(client);
    node.stop().await;
}

/// #14: a client whose missing entries were pruned from the node's log (`/changes` answers
/// 410) reloads every key instead, and ends with the right state. The client is paused
/// (SIGSTOP) while the entries are written and pruned, so it cannot read them first.
/// (Catches: a client that gives up, or keeps its old state, on 410.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_behind_a_pruned_log_reloads_every_key() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[storage_config.wal_cleanup_config]\nenabled = true\ninterval = \"20ms\"\nmax_entries = 2\n",
        primary_config(dir.path(), &[NS])
    );
    let node = TestNode::start(&text, dir.path()).await;
    let c = reqwest::Client::new();
    put_count(&c, &node, 1).await;
    let mut client = client_for(&node);
    wait_state(&mut client, "ready", &counter(1));

    signal(&client, "-STOP");
    for n in 2..=11 {
        put_count(&c, &node, n).await;
    }
    wait_for(Duration::from_secs(30), "retention to prune", async || {
        (node.ns(NS).base_seq() >= 2).then_some(())
    })
    .await;
    signal(&client, "-CONT");

    let events = wait_state(&mut client, "state", &counter(11));
    let reload = events
        .iter()
        .find(|e| e["event"] == "reload")
        .unwrap_or_else(|| panic!("a reload event in {events:?}"));
    assert_eq!(reload["namespace"], NS);
    assert_eq!(reload["head"], 11);
    drop(client);
    node.stop().await;
}
