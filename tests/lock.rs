//! One process per base_dir: a second node on a directory in use refuses to start, naming the
//! directory and the holder's pid, and the directory is free again once the first one stops.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use ferry::config::Config;
use ferry::node::{Listeners, Mode, Node};

async fn start_err(text: &str) -> String {
    let config = Config::parse(text, Path::new("second.toml")).unwrap();
    let listeners = Listeners::bind(&config).await.unwrap();
    match Node::start(config, Mode::Primary, listeners).await {
        Ok(_) => panic!("a second node started on a base_dir in use"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_second_node_in_this_process_refuses_the_same_base_dir() {
    let dir = tempfile::tempdir().unwrap();
    let text = primary_config(dir.path(), &["ns"]);
    let first = TestNode::start(&text, dir.path()).await;
    let c = reqwest::Client::new();
    put(&c, &first, "ns", "k", b"v").await;

    let err = start_err(&text).await;
    assert!(
        err.contains(&dir.path().display().to_string())
            && err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    // The refused node changed nothing: the first one still writes.
    assert_eq!(put(&c, &first, "ns", "k", b"w").await, 2);

    // Another directory is fine meanwhile (the demo runs three nodes in one process).
    let other = tempfile::tempdir().unwrap();
    TestNode::primary(other.path(), &["ns"]).await.stop().await;

    first.stop().await;
    let again = TestNode::start(&text, dir.path()).await;
    assert_eq!(again.head("ns"), 2);
    again.stop().await;
}

#[test]
fn a_second_ferry_server_on_the_same_base_dir_exits_1_naming_dir_and_pid() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dc.toml");
    std::fs::write(&config, primary_config(dir.path(), &["ns"])).unwrap();
    let args = ["server", "--config", config.to_str().unwrap()];

    let mut first = Running::spawn(&args);
    first.wait_line("HTTP listening on ");
    // The second one must exit on its own; if it starts serving instead, the deadline ends it.
    let mut second = Running::spawn(&args);
    let err = second.wait_line_where("the refusal", |l| {
        l.starts_with("ferry: ") || l.contains("HTTP listening on ")
    });
    assert!(err.starts_with("ferry: "), "a second server started: {err}");
    let status = second.child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("base_dir {} is in use", dir.path().display()))
            && err.contains(&format!("pid {}", first.child.id())),
        "{err}"
    );

    assert!(first.terminate().success());
    let mut second = Running::spawn(&args);
    second.wait_line("HTTP listening on ");
    assert!(second.terminate().success());
}

#[test]
fn a_killed_holder_leaves_no_stale_lock() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("dc.toml");
    std::fs::write(&config, primary_config(dir.path(), &["ns"])).unwrap();
    let args = ["server", "--config", config.to_str().unwrap()];
    let mut first = Running::spawn(&args);
    first.wait_line("HTTP listening on ");
    first.child.kill().unwrap(); // SIGKILL: no cleanup runs
    first.child.wait().unwrap();
    let mut second = Running::spawn(&args);
    second.wait_line("HTTP listening on ");
    assert!(second.terminate().success());
}

/// `Store::close` releases base_dir even while the `Store` is still referenced, so a node's
/// shutdown frees the directory for the next node however long other handles live; a write
/// through the closed store is refused. (Catches: `Store::close` doing nothing: the lock
/// then lives as long as the `Store`.)
#[tokio::test]
async fn a_closed_store_frees_base_dir_while_still_referenced() {
    use ferry::store::{Mutation, Store, StoreError};
    let dir = tempfile::tempdir().unwrap();
    let text = primary_config(dir.path(), &["ns"]);
    let config = Config::parse(&text, Path::new("t.toml")).unwrap();
    let store = Store::open(&config.storage_config, &[]).await.unwrap();
    let ns = store.get("ns").unwrap().clone();
    let put = || {
        vec![Mutation::Put {
            key: "k".into(),
            value: b"v".to_vec(),
        }]
    };
    ns.write(put()).await.unwrap();
    let held = Store::open(&config.storage_config, &[]).await.err();
    assert!(matches!(held, Some(StoreError::Locked { .. })), "{held:?}");

    store.close().await;
    // As in `start_node`: another test's child process may hold the lock file a moment longer.
    let again = wait_for(
        Duration::from_secs(10),
        "base_dir's lock",
        async || match Store::open(&config.storage_config, &[]).await {
            Err(StoreError::Locked { .. }) => None,
            other => Some(other.unwrap()),
        },
    )
    .await;
    assert_eq!(again.get("ns").unwrap().head().seq, 1);
    let late = ns.write(put()).await;
    assert!(matches!(late, Err(StoreError::ShuttingDown)), "{late:?}");
    again.close().await;
    drop(store);
}
