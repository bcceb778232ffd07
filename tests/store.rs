//! The namespace store under load, across restarts, and facing files it did not write.

mod common;

use std::collections::BTreeSet;

use common::*;
use ferry::config::{Config, Synchronous};
use ferry::store::{Namespace, StoreError};
use reqwest::Method;
use serde_json::json;

const NS: &str = "ns";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_get_unique_dense_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::primary(dir.path(), &[NS]).await;
    let c = reqwest::Client::new();
    let mut tasks = Vec::new();
    for t in 0..64 {
        let (c, url) = (c.clone(), node.url(&format!("/api/v1/{NS}/kv/")));
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..100 {
                let body = json!({ "value": b64(format!("{t}-{i}").as_bytes()) }).to_string();
                let (s, j) = call(&c, Method::PUT, &format!("{url}w{t}-{i}"), Some(&body)).await;
                assert_eq!(s, 200, "{j}");
                seqs.push(j["seq"].as_i64().unwrap());
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.unwrap();
        // One writer's acknowledged writes are ordered in the log as it sent them.
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        all.extend(seqs);
    }
    let unique: BTreeSet<i64> = all.iter().copied().collect();
    assert_eq!(unique.len(), 6400, "duplicate seqs acknowledged");
    assert_eq!(
        unique.iter().copied().collect::<Vec<_>>(),
        (1..=6400).collect::<Vec<_>>()
    );
    assert_eq!(verify_file(&node.db(NS)), 6400);
    assert_eq!(kv_rows(&node.db(NS)).len(), 6400);
    // Group commit: many writers' requests shared transactions (and their fsyncs).
    let m = metrics(&c, &node).await;
    let requests = metric(&m, "ferry_commit_requests_total", NS);
    let commits = metric(&m, "ferry_commits_total", NS);
    assert_eq!(requests, 6400.0);
    assert!(
        commits >= 1.0 && commits < requests,
        "{commits} commits for {requests} requests"
    );
    assert!(metric(&m, "ferry_commit_seconds_total", NS) > 0.0);
    node.stop().await;
}

/// xorshift64*: deterministic, seedable, no extra crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kv_equals_the_replay_of_wal_log_after_random_operations() {
    let dir = tempfile::tempdir().unwrap();
    // Durability is not what this test is about: skip the fsyncs to keep it fast.
    let config = primary_config(dir.path(), &[NS])
        .replace("namespaces", "synchronous = \"off\"\nnamespaces");
    let node = TestNode::start(&config, dir.path()).await;
    let c = reqwest::Client::new();
    // Eight concurrent clients, each a different random stream of puts, deletes, batches
    // (including batches that touch a key twice) and invalid batches that must store nothing.
    let mut tasks = Vec::new();
    for worker in 0..8u64 {
        let (c, base) = (c.clone(), node.url(&format!("/api/v1/{NS}/kv/")));
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (worker + 1));
            let key = |rng: &mut Rng| format!("k{}", rng.below(40));
            for _ in 0..400 {
                let (method, url, body) = match rng.below(10) {
                    0..=4 => {
                        let len = rng.below(64) as usize;
                        let v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                        (Method::PUT, format!("{base}{}", key(&mut rng)), Some(json!({"value": b64(&v)})))
                    }
                    5..=6 => (Method::DELETE, format!("{base}{}", key(&mut rng)), None),
                    7..=8 => {
                        let n = 1 + rng.below(6);
                        if rng.below(2) == 0 {
                            let items: Vec<_> = (0..n)
                                .map(|_| json!({"key": key(&mut rng), "value": b64(&rng.next().to_le_bytes())}))
                                .collect();
                            (Method::POST, format!("{base}batch"), Some(json!({"operation": "put", "items": items})))
                        } else {
                            let keys: Vec<_> = (0..n).map(|_| key(&mut rng)).collect();
                            (Method::POST, format!("{base}batch"), Some(json!({"operation": "delete", "keys": keys})))
                        }
                    }
                    _ => {
                        let items = json!([{"key": key(&mut rng), "value": "AA=="}, {"key": "bad", "value": "*"}]);
                        let (s, _) = call(&c, Method::POST, &format!("{base}batch"),
                            Some(&json!({"operation": "put", "items": items}).to_string())).await;
                        assert_eq!(s, 400);
                        continue;
                    }
                };
                let (s, j) = call(&c, method, &url, body.map(|b| b.to_string()).as_deref()).await;
                assert_eq!(s, 200, "{url}: {j}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = verify_file(&node.db(NS));
    assert!(n > 2500, "only {n} entries");
    assert!(!kv_rows(&node.db(NS)).iter().any(|(k, _, _)| k == "bad"));
    node.stop().await;
}

#[tokio::test]
async fn a_restarted_node_has_everything_and_continues_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let c = reqwest::Client::new();
    let node = TestNode::primary(dir.path(), &[NS]).await;
    for i in 0..50 {
        put(&c, &node, NS, &format!("k{i}"), format!("v{i}").as_bytes()).await;
    }
    let (_, off1) = call(
        &c,
        Method::GET,
        &node.url(&format!("/api/v1/{NS}/offset")),
        None,
    )
    .await;
    let before = (wal_rows(&node.db(NS)), kv_rows(&node.db(NS)));
    node.stop().await;

    let node = TestNode::primary(dir.path(), &[NS]).await;
    assert_eq!((wal_rows(&node.db(NS)), kv_rows(&node.db(NS))), before);
    let (_, off2) = call(
        &c,
        Method::GET,
        &node.url(&format!("/api/v1/{NS}/offset")),
        None,
    )
    .await;
    assert_eq!(off1, off2, "position and log_id survive a restart");
    let (s, got) = call(
        &c,
        Method::GET,
        &node.url(&format!("/api/v1/{NS}/kv/k49")),
        None,
    )
    .await;
    assert_eq!(
        (s, unb64(got["value"].as_str().unwrap())),
        (200, b"v49".to_vec())
    );
    assert_eq!(put(&c, &node, NS, "after", b"restart").await, 51);
    assert_eq!(verify_file(&node.db(NS)), 51);
    node.stop().await;
}

#[tokio::test]
async fn writes_queued_before_shutdown_are_committed_and_later_ones_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Namespace::open(dir.path(), NS, Synchronous::Full).unwrap();
    let ns = std::sync::Arc::new(ns);
    let writes: Vec<_> = (0..20)
        .map(|i| {
            let ns = ns.clone();
            tokio::spawn(async move {
                ns.write(vec![ferry::store::Mutation::Put {
                    key: format!("k{i}"),
                    value: vec![1],
                }])
                .await
            })
        })
        .collect();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    let empty = ns.write(Vec::new()).await;
    assert!(matches!(empty, Err(StoreError::EmptyWrite)), "{empty:?}");
    ns.close().await;
    let late = ns
        .write(vec![ferry::store::Mutation::Delete { key: "k1".into() }])
        .await;
    assert!(matches!(late, Err(StoreError::ShuttingDown)), "{late:?}");
    assert_eq!(verify_file(&dir.path().join("ns.db")), 20);
}

/// One request's entries must fit one replication message, or a replica could never receive
/// it: the store refuses a request over `MAX_REQUEST_BYTES`, counting each entry's overhead
/// as well as its key and value, and stores nothing of it; a request at the limit is stored
/// whole. (Catches: the check removed, `>` as `>=`, the overhead not counted.)
#[tokio::test]
async fn a_request_too_large_for_one_replication_message_is_refused_whole() {
    use ferry::store::{ENTRY_OVERHEAD_BYTES as OVERHEAD, MAX_REQUEST_BYTES as LIMIT, Mutation};
    let dir = tempfile::tempdir().unwrap();
    let ns = Namespace::open(dir.path(), NS, Synchronous::Full).unwrap();
    // A put and a delete whose entries take `LIMIT + extra` bytes.
    let request = |extra: usize| {
        vec![
            Mutation::Put {
                key: "a".into(),
                value: vec![7; LIMIT - 2 * (1 + OVERHEAD) + extra],
            },
            Mutation::Delete { key: "b".into() },
        ]
    };
    let over = ns.write(request(1)).await;
    assert!(
        matches!(over, Err(StoreError::TooLarge { bytes, limit }) if bytes == LIMIT + 1 && limit == LIMIT),
        "{over:?}"
    );
    // Keys and values alone under the limit: their entries' overhead takes it over.
    let keys = LIMIT / (8 + OVERHEAD) + 1;
    assert!(keys * 8 < LIMIT);
    let deletes = (0..keys)
        .map(|i| Mutation::Delete {
            key: format!("{i:08}"),
        })
        .collect();
    let over = ns.write(deletes).await;
    assert!(matches!(over, Err(StoreError::TooLarge { .. })), "{over:?}");
    assert_eq!(ns.head().seq, 0, "a refused request took a seq");

    let at = ns.write(request(0)).await.unwrap();
    assert_eq!((at.first_seq, at.last_seq), (1, 2));
    ns.close().await;
    let db = dir.path().join("ns.db");
    assert_eq!(verify_file(&db), 2);
    assert_eq!(
        kv_rows(&db).len(),
        1,
        "the put is stored, the delete found nothing"
    );
}

/// Creates a namespace file and closes it cleanly (WAL checkpointed into the main file).
async fn create(dir: &std::path::Path, name: &str) {
    Namespace::open(dir, name, Synchronous::Full)
        .unwrap()
        .close()
        .await;
}

fn open_err(dir: &std::path::Path, name: &str) -> String {
    match Namespace::open(dir, name, Synchronous::Full) {
        Ok(_) => panic!("{name}: opened a file it should refuse"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn files_ferry_did_not_write_are_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();

    // Not a database at all.
    std::fs::write(
        d.join("garbage.db"),
        b"this is not a database, just some bytes...",
    )
    .unwrap();
    // A SQLite database of some other application.
    let foreign = rusqlite::Connection::open(d.join("foreign.db")).unwrap();
    foreign
        .execute_batch("CREATE TABLE users (id INTEGER); INSERT INTO users VALUES (1);")
        .unwrap();
    drop(foreign);
    // A ferry file from the future.
    create(d, "future").await;
    rusqlite::Connection::open(d.join("future.db"))
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    // A ferry file copied under another namespace's name.
    create(d, "original").await;
    std::fs::copy(d.join("original.db"), d.join("copy.db")).unwrap();
    // A ferry file whose identity was removed.
    create(d, "anon").await;
    rusqlite::Connection::open(d.join("anon.db"))
        .unwrap()
        .execute("DELETE FROM meta WHERE name = 'log_id'", [])
        .unwrap();
    // A ferry file with entries whose identity was blanked (only a new replica file, with no
    // entries yet, has an empty log_id).
    let blank = Namespace::open(d, "blank", Synchronous::Full).unwrap();
    blank
        .write(vec![ferry::store::Mutation::Put {
            key: "k".into(),
            value: vec![1],
        }])
        .await
        .unwrap();
    blank.close().await;
    rusqlite::Connection::open(d.join("blank.db"))
        .unwrap()
        .execute("UPDATE meta SET value = '' WHERE name = 'log_id'", [])
        .unwrap();

    let snapshot = |name: &str| std::fs::read(d.join(format!("{name}.db"))).unwrap();
    let cases = [
        ("garbage", "not a SQLite database"),
        (
            "foreign",
            "not a ferry namespace file (no schema version, but it has tables: users)",
        ),
        (
            "future",
            "schema version 99 is newer than this ferry understands",
        ),
        ("copy", "belongs to namespace \"original\", not \"copy\""),
        ("anon", "meta.log_id is missing"),
        ("blank", "meta.log_id is empty but wal_log has entries"),
    ];
    for (name, needle) in cases {
        let before = snapshot(name);
        let err = open_err(d, name);
        assert!(err.contains(needle), "{name}: {err:?} lacks {needle:?}");
        assert!(
            err.contains(&format!("{name}.db")),
            "{name}: error does not name the file: {err}"
        );
        assert_eq!(
            snapshot(name),
            before,
            "{name}: the refused file was modified"
        );
    }
    // The user's data in the foreign file is still there.
    let n: i64 = rusqlite::Connection::open(d.join("foreign.db"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

#[tokio::test]
async fn a_node_refuses_to_start_on_a_bad_file_and_says_which() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.db"), vec![0x42u8; 4096]).unwrap();
    let config = Config::parse(
        &primary_config(dir.path(), &["a", "b"]),
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let listeners = ferry::node::Listeners::bind(&config).await.unwrap();
    let err = match ferry::node::Node::start(config, ferry::node::Mode::Primary, listeners).await {
        Ok(_) => panic!("started on a corrupt file"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("b.db") && err.contains("not a SQLite database"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("b.db")).unwrap(),
        vec![0x42u8; 4096]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_in_sqlite_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ns = std::sync::Arc::new(Namespace::open(dir.path(), NS, Synchronous::Off).unwrap());
    // A trigger (installed from outside, as any SQLite user could) makes one key fail inside
    // the transaction, after all validation.
    rusqlite::Connection::open(dir.path().join("ns.db"))
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON wal_log WHEN NEW.key = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poisoned key'); END;",
        )
        .unwrap();
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let ns = ns.clone();
            tokio::spawn(async move {
                let key = if i % 20 == 7 {
                    "poison".to_owned()
                } else {
                    format!("k{i}")
                };
                let batch = vec![
                    ferry::store::Mutation::Put {
                        key: format!("first{i}"),
                        value: vec![1],
                    },
                    ferry::store::Mutation::Put {
                        key,
                        value: vec![2],
                    },
                ];
                (i, ns.write(batch).await)
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        let (i, r) = t.await.unwrap();
        if i % 20 == 7 {
            let err = r.expect_err("the poisoned write must fail").to_string();
            assert!(err.contains("poisoned key"), "{err}");
        } else {
            let c = r.unwrap();
            assert_eq!(c.last_seq, c.first_seq + 1);
            ok += 1;
        }
    }
    ns.close().await;
    // The failed requests are not counted as stored.
    let stored = ns
        .commit_counters()
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(stored, ok as u64);
    // Only the 57 good requests are stored, each whole, with dense seqs.
    assert_eq!(verify_file(&dir.path().join("ns.db")), ok * 2);
    let kv = kv_rows(&dir.path().join("ns.db"));
    assert!(
        !kv.iter()
            .any(|(k, _, _)| k == "poison" || k == "first7" || k == "first27")
    );
}

/// Size of a namespace file's `-wal`, 0 when there is none.
fn wal_bytes(db: &std::path::Path) -> u64 {
    std::fs::metadata(format!("{}-wal", db.display())).map_or(0, |m| m.len())
}

/// The WAL is checkpointed by ferry's own thread, not left to grow and not left to SQLite's
/// automatic checkpoint (1000 pages, inside a commit): after writing far more than
/// `checkpoint_pages`, the `-wal` file is within what an idle node keeps (8x
/// `checkpoint_pages` frames) while the node still runs, and every write is in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_thread_keeps_the_wal_bounded() {
    const PAGES: u32 = 16;
    let dir = tempfile::tempdir().unwrap();
    let perf = ferry::config::PerformanceConfig {
        checkpoint_pages: PAGES,
        ..Default::default()
    };
    let ns = Namespace::open_tuned(dir.path(), NS, Synchronous::Full, perf).unwrap();
    let db = dir.path().join("ns.db");
    // ~2.5 MB in 8 KB writes: some 600 pages, 40 times the threshold (and more than SQLite's
    // own automatic checkpoint would let through: it keeps up to 1000 pages, 4 MB).
    let value = vec![7u8; 8 * 1024];
    for i in 0..300 {
        ns.write(vec![ferry::store::Mutation::Put {
            key: format!("k{i:04}"),
            value: value.clone(),
        }])
        .await
        .unwrap();
    }
    // The WAL's header, and 8x PAGES frames with theirs.
    let bound = 32 + 8 * PAGES as u64 * (4096 + 24);
    wait_for(
        std::time::Duration::from_secs(60),
        "the -wal file to come back under the bound",
        async || (wal_bytes(&db) <= bound).then_some(()),
    )
    .await;
    // The data is there for a new reader (whatever the WAL holds).
    assert_eq!(
        ns.get("k0299".into()).await.unwrap().map(|v| v.value),
        Some(value)
    );
    ns.close().await;
    assert_eq!(verify_file(&db), 300);
}

/// Rows of `kv` in a copy of the database file alone, without its `-wal`: what the WAL's
/// copies have put in the file itself (`None` while a copy tears or cannot be read).
fn kv_rows_in_the_file_alone(db: &std::path::Path, scratch: &std::path::Path) -> Option<i64> {
    let copy = scratch.join("alone.db");
    std::fs::copy(db, &copy).ok()?;
    let conn = rusqlite::Connection::open(&copy).ok()?;
    let rows = conn
        .query_row("SELECT COUNT(*) FROM kv", [], |r| r.get(0))
        .ok();
    drop(conn);
    let _ = std::fs::remove_file(&copy);
    rows
}

/// An idle node copies everything into the database file but keeps its `-wal` file (within
/// 8x `checkpoint_pages` frames), for the next writes to start the WAL over in blocks already
/// on disk instead of growing the file: a sync of a growing file costs about twice as much
/// (docs/performance.md). A `-wal` file grown past that, here by a reader holding the WAL
/// back, is truncated. (Catches: the idle checkpoint truncating the file again; the bound not
/// applied, or applied to the wrong size.)
#[tokio::test]
async fn an_idle_node_keeps_its_wal_file_for_the_next_writes_within_a_bound() {
    const PAGES: u32 = 64;
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let perf = ferry::config::PerformanceConfig {
        checkpoint_pages: PAGES,
        ..Default::default()
    };
    let ns = Namespace::open_tuned(dir.path(), NS, Synchronous::Full, perf).unwrap();
    let db = dir.path().join("ns.db");
    let put = |i: usize, bytes: usize| {
        vec![ferry::store::Mutation::Put {
            key: format!("k{i:04}"),
            value: vec![7u8; bytes],
        }]
    };
    // A reader holds the WAL back while 30 small writes (about 100 frames, past PAGES: the
    // checkpoint thread is woken) land, so nothing it copies then completes the database file:
    // only the copy of the idle second after the reader is gone does.
    let reader = rusqlite::Connection::open(&db).unwrap();
    reader
        .execute_batch("BEGIN; SELECT COUNT(*) FROM meta;")
        .unwrap();
    for i in 0..30 {
        ns.write(put(i, 100)).await.unwrap();
    }
    // Let the wakes the writes left behind (one running, one pending at most) be spent while
    // the reader still holds the WAL back: once three more checkpoints have run, at least one
    // was an idle one, and no wake is left. The copy that completes the file after the
    // reader goes can then only be the idle one.
    let checkpoints = || {
        ns.commit_counters()
            .checkpoints
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let spent = checkpoints() + 3;
    wait_for(
        std::time::Duration::from_secs(60),
        "the checkpoint thread to spend its wakes and idle once",
        async || (checkpoints() >= spent).then_some(()),
    )
    .await;
    drop(reader);
    wait_for(
        std::time::Duration::from_secs(60),
        "the idle copy of every write into the database file",
        async || (kv_rows_in_the_file_alone(&db, scratch.path()) == Some(30)).then_some(()),
    )
    .await;
    assert!(wal_bytes(&db) > 0, "the -wal file was truncated at idle");
    // (The next writes then start the WAL over in it, unless a checkpoint is still running
    // as the first one begins: SQLite's choice, not asserted here.)
    for i in 30..40 {
        ns.write(put(i, 100)).await.unwrap();
    }

    // A reader holds the WAL back: it cannot start over, and grows past the bound.
    let reader = rusqlite::Connection::open(&db).unwrap();
    reader
        .execute_batch("BEGIN; SELECT COUNT(*) FROM kv;")
        .unwrap();
    for i in 40..100 {
        ns.write(put(i, 16 * 1024)).await.unwrap();
    }
    let bound = 32 + 8 * PAGES as u64 * (4096 + 24);
    assert!(wal_bytes(&db) > bound, "{} bytes", wal_bytes(&db));
    drop(reader);
    wait_for(
        std::time::Duration::from_secs(60),
        "the idle truncation of a -wal file over the bound",
        async || (wal_bytes(&db) == 0).then_some(()),
    )
    .await;
    assert_eq!(kv_rows_in_the_file_alone(&db, scratch.path()), Some(100));
    ns.close().await;
    assert_eq!(verify_file(&db), 100);
}

/// `?min_seq=` waiters: woken by the commit that reaches their seq; capped by
/// Under continuous writes the WAL still starts over: SQLite does that only when a write
/// transaction begins with the WAL fully copied, which with the thread copying beside a busy
/// writer never happens by itself; so once the WAL is 4x `checkpoint_pages` the hook copies
/// the rest right after that commit. 600 writes from eight writers over a 64-page threshold:
/// the `-wal` file stays near 4x (~265 pages). Checkpoints are counted for /metrics.
/// (Catches: the hook not copying the rest itself: the file grew to 451-560 pages; checkpoints
/// not counted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_continuous_writes_the_wal_starts_over_near_4x_checkpoint_pages() {
    const PAGES: u32 = 64;
    const WRITES: u64 = 600;
    let dir = tempfile::tempdir().unwrap();
    let perf = ferry::config::PerformanceConfig {
        checkpoint_pages: PAGES,
        ..Default::default()
    };
    // Synchronous::Full: a checkpoint (two syncs) outlasts a commit (one), as under load.
    let ns = std::sync::Arc::new(
        Namespace::open_tuned(dir.path(), NS, Synchronous::Full, perf).unwrap(),
    );
    // The largest the -wal file gets while the writes run.
    let db = dir.path().join("ns.db");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let (db, done) = (db.clone(), done.clone());
        move || {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                most = most.max(wal_bytes(&db));
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            most
        }
    });
    // Eight writers at once: the writer thread never idles, as under load.
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let ns = ns.clone();
            tokio::spawn(async move {
                for i in (w..WRITES).step_by(8) {
                    ns.write(vec![ferry::store::Mutation::Put {
                        key: format!("k{i:05}"),
                        value: vec![7u8; 100],
                    }])
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let checkpoints = || {
        ns.commit_counters()
            .checkpoints
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    wait_for(
        std::time::Duration::from_secs(30),
        "a checkpoint counted",
        async || (checkpoints() > 0).then_some(()),
    )
    .await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.join().unwrap();
    assert!(
        most <= (5 * u64::from(PAGES) + 32) * (4096 + 24) + 32,
        "the -wal file reached {most} bytes during {WRITES} writes (threshold {PAGES} pages)"
    );
    ns.close().await;
    assert_eq!(verify_file(&db), WRITES as usize);
}

/// `performance_config.mmap_size` reaches the read connections: with it set, a read maps the
/// namespace file into the process (reads skip a `pread` copy); with the default (0) no
/// connection maps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mmap_size_maps_the_file_for_reads_and_is_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let mapped = |name: &str| {
        let file = dir.path().join(format!("{name}.db"));
        let file = file.to_str().unwrap().to_owned();
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .any(|l| l.ends_with(&file))
    };
    let perf = ferry::config::PerformanceConfig {
        mmap_size: 1 << 20,
        ..Default::default()
    };
    let open = || {
        (
            Namespace::open(dir.path(), "plain", Synchronous::Full).unwrap(),
            Namespace::open_tuned(dir.path(), "mm", Synchronous::Full, perf).unwrap(),
        )
    };
    let (plain, mm) = open();
    for ns in [&plain, &mm] {
        ns.write(vec![ferry::store::Mutation::Put {
            key: "k".into(),
            value: b"v".to_vec(),
        }])
        .await
        .unwrap();
    }
    // Closed and opened again, the pages are in the file, not in the WAL (whose pages SQLite
    // never reads through the mapping).
    plain.close().await;
    mm.close().await;
    let (plain, mm) = open();
    for ns in [&plain, &mm] {
        assert_eq!(
            ns.get("k".into()).await.unwrap().map(|v| v.value),
            Some(b"v".to_vec())
        );
    }
    assert!(
        mapped("mm"),
        "the file of a namespace with mmap_size is not mapped"
    );
    assert!(
        !mapped("plain"),
        "a namespace without mmap_size maps its file"
    );
    plain.close().await;
    mm.close().await;
}

/// `max_seq_waiters`, past which a read gets a JSON 503 naming the limit; a freed place is
/// usable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_seq_waiters_are_capped_and_woken_by_their_seq() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = primary_config(dir.path(), &[NS]);
    text.push_str("[storage_config.performance_config]\nmax_seq_waiters = 2\n");
    let node = TestNode::start(&text, dir.path()).await;
    let c = reqwest::Client::new();
    let url = |seq: i64| node.url(&format!("/api/v1/{NS}/kv/k?min_seq={seq}&timeout_ms=30000"));
    let waiting: Vec<_> = [1, 2]
        .into_iter()
        .map(|seq| {
            let (c, url) = (c.clone(), url(seq));
            tokio::spawn(async move { call(&c, Method::GET, &url, None).await })
        })
        .collect();
    let ns = node.ns(NS);
    wait_for(
        std::time::Duration::from_secs(30),
        "two reads waiting",
        async || (ns.seq_waiters() == 2).then_some(()),
    )
    .await;
    let (status, body) = call(&c, Method::GET, &url(1), None).await;
    assert_eq!(status, 503, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("max_seq_waiters"), "{error}");
    assert!(error.contains("2 reads are already waiting"), "{error}");

    // Seq 1 wakes the first waiter only; seq 2 the second.
    assert_eq!(put(&c, &node, NS, "k", b"one").await, 1);
    let mut waiting = waiting.into_iter();
    let (status, body) = waiting.next().unwrap().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(unb64(body["value"].as_str().unwrap()), b"one");
    assert_eq!(
        ns.seq_waiters(),
        1,
        "the read waiting for seq 2 still waits"
    );
    assert_eq!(put(&c, &node, NS, "k", b"two").await, 2);
    let (status, body) = waiting.next().unwrap().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(unb64(body["value"].as_str().unwrap()), b"two");

    // Places freed: a timed-out wait leaves none taken either.
    let short = node.url(&format!("/api/v1/{NS}/kv/k?min_seq=99&timeout_ms=1"));
    let (status, body) = call(&c, Method::GET, &short, None).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(ns.seq_waiters(), 0);
    node.stop().await;
}

/// A read waiting with `?min_seq=` when the node shuts down is told so at once, a JSON 503,
/// rather than left to its timeout. (Catches: the waiters closed by neither the node's
/// shutdown nor the namespace's close, where the read waits its 30 s and gets a 504.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waiting_for_a_seq_is_told_when_the_node_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::primary(dir.path(), &[NS]).await;
    let c = reqwest::Client::new();
    let url = node.url(&format!("/api/v1/{NS}/kv/k?min_seq=1&timeout_ms=30000"));
    let waiting = tokio::spawn(async move { call(&c, Method::GET, &url, None).await });
    let ns = node.ns(NS);
    wait_for(
        std::time::Duration::from_secs(30),
        "the read to wait for seq 1",
        async || (ns.seq_waiters() == 1).then_some(()),
    )
    .await;
    node.stop().await;
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "the node is shutting down", "{body}");
    assert_eq!(ns.seq_waiters(), 0);
}

/// A namespace closed on its own (no node around it, or its writer gone) ends the reads
/// waiting for a seq with "shutting down", and refuses new ones that would wait. (Catches: the
/// writer's `Drop` that no longer closes the waiters, where the wait runs to its timeout; the
/// node's shutdown closes them first, so the test above no longer sees this.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_namespace_ends_the_reads_waiting_for_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let ns = std::sync::Arc::new(Namespace::open(dir.path(), NS, Synchronous::Full).unwrap());
    let waiting = tokio::spawn({
        let ns = ns.clone();
        async move { ns.wait_for_seq(1, std::time::Duration::from_secs(30)).await }
    });
    wait_for(
        std::time::Duration::from_secs(30),
        "the read to wait for seq 1",
        async || (ns.seq_waiters() == 1).then_some(()),
    )
    .await;
    ns.close().await;
    assert!(matches!(
        waiting.await.unwrap(),
        Err(ferry::store::WaitError::ShuttingDown)
    ));
    assert!(matches!(
        ns.wait_for_seq(1, std::time::Duration::from_secs(30)).await,
        Err(ferry::store::WaitError::ShuttingDown)
    ));
    assert_eq!(ns.seq_waiters(), 0);
}

/// Pruning never deletes the head entry, however far `upto` reaches: the log keeps the entry
/// the next write chains its crc from, and a reader at the seq before it still gets it.
/// (Catches: the cap `head - 1` as `head + 1` or `head / 1`, which empties the log.)
#[tokio::test]
async fn pruning_keeps_the_head_entry() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Namespace::open(dir.path(), NS, Synchronous::Full).unwrap();
    for i in 0..3 {
        ns.write(vec![ferry::store::Mutation::Put {
            key: format!("k{i}"),
            value: vec![1],
        }])
        .await
        .unwrap();
    }
    let pruned = ns
        .prune(ferry::store::Prune {
            upto: i64::MAX,
            older_than_ms: None,
            max_rows: 1000,
        })
        .await
        .unwrap();
    assert_eq!((pruned.deleted, pruned.base_seq), (2, 2));
    let kept = ns.entries_from(3, 10, usize::MAX).await.unwrap();
    assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), [3]);
    ns.close().await;
    let rows = wal_rows(&dir.path().join("ns.db"));
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), [3]);
}
