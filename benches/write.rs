//! Write throughput of a primary, as a ratio of what SQLite itself does on this machine in the
//! same run (the machines are shared and noisy; ratios are comparable, absolute numbers less so).
//!
//! Run: `cargo bench --bench write` (add `-- --quick` for a shorter run, `-- --rounds N` for N
//! rounds instead of 5). For a quick A/B of
//! one load shape, `cargo bench --bench write -- --writers N [--sync full|normal|off]
//! [--keys ordered|per-writer] [--per-writer WRITES]` runs only ferry with N writers, 3 times.
//! `cargo bench --bench write -- --serve-floor whole|hop` serves the 1-writer floor (or the
//! one with a hand-off, below) on a loopback port it prints, until killed, for a load
//! generator in another process (`wrk -s benches/wrk/put.lua`; docs/performance.md, ninth
//! sitting).
//!
//! Measures, all durable per write (fsync before the reply) on files in a temp dir:
//! - SQLite ceiling: in-process rusqlite appending to wal_log + kv, 1 write per transaction and
//!   100 writes per transaction;
//! - ferry over real HTTP on loopback: 1 writer at a time, then 64 concurrent writers
//!   (group commit), 100-byte values. Each writer is one keep-alive HTTP/1.1 connection driven
//!   by a minimal client (pre-built request bytes), so that on a 2-core machine the load
//!   generator takes as little CPU from the server as possible — as wrk would;
//! - both for two key patterns (see [`Keys`]), each beside in-process SQLite writing the same
//!   keys in groups of the size ferry's writer formed, which is what group commit can at best
//!   reach with them;
//! - a warp PUT handler that stores nothing, 1 writer: the HTTP round trip alone; with
//!   in-process SQLite's 1 write/txn, idling that long between commits as a server's writer
//!   does, it gives the floor of one writer's latency as a sum of parts;
//! - a warp PUT handler that commits each write to SQLite itself, 1 writer: that floor measured
//!   whole (the parts' sum leaves out the wake-ups of threads that slept through the fsync);
//!   and the 64-writer floor below with 1 writer: the handler hands the write to a thread that
//!   commits it and waits for its answer, as ferry does, so the hand-off's cost is in the run;
//! - the same with 64 writers: a warp PUT handler handing each write to one thread that commits
//!   everything queued in one transaction (group commit, nothing else), and the no-op handler
//!   with 64 writers (the HTTP side alone);
//! - Redis with `appendonly yes, appendfsync always` (the bar users compare us with), driven by
//!   the same kind of client (pre-built RESP `SET` commands), 1 and 64 connections — when
//!   `redis-server` is on the PATH (`apt-get install redis-server`).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use common::{connect_when_up, http_round_trip, resp_set, round_trip, spawn_redis};
use ferry::config::Config;
use ferry::node::{Listeners, Mode, Node};

const VALUE_BYTES: usize = 100;
/// Writers in the concurrent runs.
const WRITERS: usize = 64;

/// Which keys the writers write: where in the `kv` index each write lands decides how many
/// pages a commit dirties, and so what SQLite itself can do, more than anything ferry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keys {
    /// Keys start with a counter all writers advance together (`00000042-w7`: writer 7,
    /// write 42), like ids that start with a time (ULIDs, event logs). New keys land at the
    /// end of the index, so a commit's writes share its last pages. The SQLite ceiling rows
    /// use these keys.
    Ordered,
    /// Each writer appends to a range of its own (`w7-42`): 64 places in the index, so every
    /// write in a group dirties a page of its own (4 KiB flushed per 100-byte value).
    PerWriter,
}

impl Keys {
    fn key(self, writer: usize, i: usize) -> String {
        match self {
            Keys::Ordered => format!("{i:08}-w{writer}"),
            Keys::PerWriter => format!("w{writer}-{i}"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Keys::Ordered => "ordered",
            Keys::PerWriter => "per-writer",
        }
    }
}

/// In-process SQLite writing `writes` times, `per_txn` writes per transaction, the writes
/// taking turns among [`WRITERS`] writers' keys as ferry's load does.
fn sqlite_ceiling(dir: &Path, writes: usize, per_txn: usize, keys: Keys) -> f64 {
    sqlite_paced(dir, writes, per_txn, keys, None)
}

/// [`sqlite_ceiling`], sleeping `pause` after each commit and timing only the commits: what a
/// commit costs a thread that idles between requests, as a server's writer does (on this VM
/// a commit after an idle gap is slower than one right after another).
fn sqlite_paced(
    dir: &Path,
    writes: usize,
    per_txn: usize,
    keys: Keys,
    pause: Option<std::time::Duration>,
) -> f64 {
    let paced = if pause.is_some() { "-paced" } else { "" };
    let path = dir.join(format!("ceiling-{per_txn}-{}{paced}.db", keys.name()));
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(include_str!("../migrations/0001_init.sql"))
        .unwrap();
    let value = vec![b'x'; VALUE_BYTES];
    let mut seq = 0i64;
    // Transaction `n` of `per_txn` writes, its keys numbered from `first` on.
    let mut commit = |n: usize, first: usize| {
        let tx = conn.transaction().unwrap();
        for w in 0..per_txn {
            let at = n * per_txn + w;
            let key = keys.key(at % WRITERS, first + at / WRITERS);
            seq += 1;
            tx.prepare_cached("INSERT INTO wal_log VALUES (?1, ?1, 'put', ?2, ?3, 0, 0)")
                .unwrap()
                .execute(rusqlite::params![seq, key, value])
                .unwrap();
            tx.prepare_cached("INSERT INTO kv VALUES (?1, ?2, ?3, 0) ON CONFLICT (key) DO UPDATE SET value = excluded.value, seq = excluded.seq")
                .unwrap()
                .execute(rusqlite::params![key, value, seq])
                .unwrap();
        }
        tx.commit().unwrap();
    };
    // Untimed, until the -wal file stops growing (see [`warm`]).
    let mut last = wal_bytes(&path);
    let mut n = 0;
    for _ in 0..10 {
        for _ in 0..WARM_CHUNK {
            commit(n, WARM_FIRST);
            n += 1;
        }
        let now = wal_bytes(&path);
        if now == last {
            break;
        }
        last = now;
    }
    let mut busy = std::time::Duration::ZERO;
    for n in 0..writes.div_ceil(per_txn) {
        if let Some(pause) = pause {
            std::thread::sleep(pause);
        }
        let start = Instant::now();
        commit(n, 0);
        busy += start.elapsed();
    }
    (writes.div_ceil(per_txn) * per_txn) as f64 / busy.as_secs_f64()
}

/// One ferry run: writes/s, and how many of the machine's cores the process kept busy
/// (server and load generator together) — to tell a CPU-bound run from one waiting on the disk.
struct Run {
    rate: f64,
    cores: f64,
    /// Requests per SQLite transaction (group commit's effect).
    per_commit: f64,
    /// Share of the run the writer thread spent inside transactions (fsync included).
    writer_busy: f64,
    /// Request latency, 99th percentile.
    p99: std::time::Duration,
}

async fn ferry_http(dir: &Path, writers: usize, per_writer: usize, sync: &str, keys: Keys) -> Run {
    ferry_http_waiting(dir, writers, per_writer, sync, keys, 0).await
}

/// [`ferry_http`] with `waiters` reads parked on `?min_seq=` of a seq the run never reaches,
/// each on a connection of its own (what once cut the write rate 3x: every commit woke them).
async fn ferry_http_waiting(
    dir: &Path,
    writers: usize,
    per_writer: usize,
    sync: &str,
    keys: Keys,
    waiters: usize,
) -> Run {
    let text = format!(
        "http_port = 0\nlisten_ip = \"127.0.0.1\"\n[storage_config]\nbase_dir = {:?}\nnamespaces = [\"bench\"]\nsynchronous = {sync:?}\n[http_config]\nmax_connections = 8192\n[log_config]\nlog_level = \"warn\"\n",
        dir.join(format!("ferry-{writers}-{}", keys.name()))
            .display()
            .to_string()
    );
    let text = format!(
        "{text}[storage_config.performance_config]\nmax_seq_waiters = {}\n",
        waiters.max(1)
    );
    let config = Config::parse(&text, Path::new("bench.toml")).unwrap();
    let listeners = Listeners::bind(&config).await.unwrap();
    let node = Node::start(config, Mode::Primary, listeners).await.unwrap();
    let addr = node.http_addr();
    let mut parked = Vec::new();
    for _ in 0..waiters {
        use tokio::io::AsyncWriteExt;
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /api/v1/bench/kv/x?min_seq=1000000000000&timeout_ms=30000 HTTP/1.1\r\nhost: bench\r\n\r\n")
            .await
            .unwrap();
        parked.push(c);
    }
    let ns = node.store().get("bench").unwrap().clone();
    while ns.seq_waiters() < waiters {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let db = dir
        .join(format!("ferry-{writers}-{}", keys.name()))
        .join("bench.db");
    warm(addr, &db, writers, warm_chunk(writers), keys).await;
    let counters = node.store().get("bench").unwrap().commit_counters();
    let load =
        |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed) as f64;
    let warmed = (
        load(&counters.requests),
        load(&counters.commits),
        load(&counters.micros),
    );
    let cpu = cpu_seconds();
    let (secs, mut latencies) = drive(addr, writers, per_writer, keys).await;
    latencies.sort();
    assert_eq!(ns.seq_waiters(), waiters, "the parked reads all still wait");
    drop(parked);
    let run = Run {
        rate: (writers * per_writer) as f64 / secs,
        cores: (cpu_seconds() - cpu) / secs,
        per_commit: (load(&counters.requests) - warmed.0)
            / (load(&counters.commits) - warmed.1).max(1.0),
        writer_busy: (load(&counters.micros) - warmed.2) / 1e6 / secs,
        p99: latencies[latencies.len() * 99 / 100],
    };
    node.shutdown().await;
    run
}

/// `writers` keep-alive connections to `addr`, each PUTting `per_writer` 100-byte values in
/// turn (the next request leaves when the previous answer is in): the run's seconds and every
/// request's latency.
async fn drive(
    addr: std::net::SocketAddr,
    writers: usize,
    per_writer: usize,
    keys: Keys,
) -> (f64, Vec<std::time::Duration>) {
    drive_from(addr, writers, 0, per_writer, keys).await
}

/// [`drive`] with each writer's keys numbered from `first`.
async fn drive_from(
    addr: std::net::SocketAddr,
    writers: usize,
    first: usize,
    per_writer: usize,
    keys: Keys,
) -> (f64, Vec<std::time::Duration>) {
    let body = Arc::new(format!(
        "{{\"value\":\"{}\"}}",
        base64::engine::general_purpose::STANDARD.encode(vec![b'x'; VALUE_BYTES])
    ));
    let mut conns = Vec::new();
    for _ in 0..writers {
        conns.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(w, mut conn)| {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(1024);
                let mut latencies = Vec::with_capacity(per_writer);
                for i in first..first + per_writer {
                    let asked = Instant::now();
                    let req = format!(
                        "PUT /api/v1/bench/kv/{} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        keys.key(w, i),
                        body.len()
                    );
                    let status = http_round_trip(&mut conn, req.as_bytes(), &mut buf).await;
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&buf));
                    latencies.push(asked.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    (start.elapsed().as_secs_f64(), latencies)
}

/// Size of a database file's `-wal`, 0 when there is none.
fn wal_bytes(db: &Path) -> u64 {
    std::fs::metadata(format!("{}-wal", db.display())).map_or(0, |m| m.len())
}

/// Keys of the warm-up writes: numbered after any a measured run uses.
const WARM_FIRST: usize = 10_000_000;

/// Writes to `addr` in chunks of `chunk` writes until the `-wal` file of `db` stops growing
/// over a chunk (at most ten): the WAL has started over inside its file, and every later
/// commit overwrites blocks already on disk, as on a node that has run for a while. Each
/// server that stores in SQLite is measured in that steady state: in a new file, the first
/// ~1,000 (SQLite's automatic checkpoint) or ~4,000 (ferry's checkpoints) WAL frames grow the
/// file, and on this disk a sync that grows a file costs about twice one that does not
/// (docs/performance.md, eighth sitting).
async fn warm(addr: std::net::SocketAddr, db: &Path, writers: usize, chunk: usize, keys: Keys) {
    let mut last = wal_bytes(db);
    for n in 0..10 {
        let first = WARM_FIRST + n * chunk / writers;
        drive_from(addr, writers, first, chunk / writers, keys).await;
        let now = wal_bytes(db);
        if now == last {
            return;
        }
        last = now;
    }
}

/// Writes per warm-up chunk: ~1,500 WAL frames for one writer, more with many.
const WARM_CHUNK: usize = 500;
const WARM_CHUNK_MANY: usize = 4_000;

fn warm_chunk(writers: usize) -> usize {
    if writers > 1 {
        WARM_CHUNK_MANY
    } else {
        WARM_CHUNK
    }
}

/// Serves `route` on a free loopback port until the task is aborted.
async fn serve<F>(route: F) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>)
where
    F: warp::Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(warp::serve(route).incoming(listener).run());
    (addr, server)
}

/// A warp server whose PUT handler reads the body and answers what ferry answers, storing
/// nothing: the HTTP round trip every write pays on this machine and runtime.
async fn noop_server() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use warp::Filter;
    let route = warp::put()
        .and(warp::path!("api" / "v1" / String / "kv" / String))
        .and(warp::body::bytes())
        .map(|_ns: String, _key: String, _body: bytes::Bytes| {
            warp::reply::with_header(
                "{\"success\":true,\"seq\":123456}",
                "content-type",
                "application/json",
            )
        });
    serve(route).await
}

/// Writes/s of `writers` writers against the no-op PUT handler.
async fn noop(writers: usize, per_writer: usize) -> f64 {
    let (addr, server) = noop_server().await;
    let (secs, _) = drive(addr, writers, per_writer, Keys::Ordered).await;
    server.abort();
    (writers * per_writer) as f64 / secs
}

/// The file of a floor handler below: WAL, `synchronous = FULL`, ferry's tables, SQLite's
/// own automatic checkpoints.
fn floor_file(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(include_str!("../migrations/0001_init.sql"))
        .unwrap();
    conn
}

/// The value of a PUT body (`{"value": base64}`), as ferry decodes it.
fn floor_value(body: &[u8]) -> Vec<u8> {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(json["value"].as_str().unwrap())
        .unwrap()
}

/// Milliseconds since the epoch, the entries' timestamp.
fn floor_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The two rows ferry writes for a put at `seq`, with a timestamp and a checksum as wide as
/// ferry's.
fn floor_put(tx: &rusqlite::Transaction, seq: i64, key: &str, value: &[u8], ts_ms: i64) {
    let crc = i64::from(0x9e37_79b9_u32.wrapping_mul(seq as u32));
    tx.prepare_cached("INSERT INTO wal_log VALUES (?1, ?1, 'put', ?2, ?3, ?4, ?5)")
        .unwrap()
        .execute(rusqlite::params![seq, key, value, ts_ms, crc])
        .unwrap();
    tx.prepare_cached("INSERT INTO kv VALUES (?1, ?2, ?3, ?4) ON CONFLICT (key) DO UPDATE SET value = excluded.value, seq = excluded.seq, ts_ms = excluded.ts_ms")
        .unwrap()
        .execute(rusqlite::params![key, value, seq, ts_ms])
        .unwrap();
}

/// A warp PUT handler that stores each write itself, in SQLite, the simplest way: decodes the
/// body, then right in the handler commits the two rows ferry writes in one transaction
/// (`synchronous = FULL`, SQLite's automatic checkpoints; a timestamp and a checksum as wide
/// as ferry's) and answers with the seq.
/// What one writer through HTTP and SQLite costs on this machine, measured whole: the sum of
/// the no-op round trip and an in-process commit leaves out the wake-ups a request pays when
/// every thread has slept through the commit's fsync.
async fn sqlite_http_server(dir: &Path) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use warp::Filter;
    let conn = floor_file(&dir.join("sqlite-http.db"));
    let conn = Arc::new(std::sync::Mutex::new((conn, 0i64)));
    let route = warp::put()
        .and(warp::path!("api" / "v1" / String / "kv" / String))
        .and(warp::body::bytes())
        .map(move |_ns: String, key: String, body: bytes::Bytes| {
            let value = floor_value(&body);
            // Right on the worker, blocking it: with one writer nothing else waits for it,
            // and it is faster than `block_in_place` (measured).
            let seq = {
                let mut guard = conn.lock().unwrap();
                let (conn, seq) = &mut *guard;
                *seq += 1;
                let tx = conn.transaction().unwrap();
                floor_put(&tx, *seq, &key, &value, floor_now_ms());
                tx.commit().unwrap();
                *seq
            };
            warp::reply::with_header(
                format!("{{\"success\":true,\"seq\":{seq}}}"),
                "content-type",
                "application/json",
            )
        });
    serve(route).await
}

/// [`sqlite_http_server`] for many writers: the handler decodes the body and hands the write
/// to one thread that commits everything queued in one transaction (group commit, as ferry's
/// writer does), then answers each write with its seq. The rows, pragmas and checkpoints are
/// the same. What a server that does nothing but store each request in SQLite durably reaches
/// with [`WRITERS`] writers on this machine, measured whole: the floor ferry's extras (the crc
/// chain, the recent entries for replicas, the head for tails and waiters, metrics) add to.
async fn sqlite_group_http_server(
    dir: &Path,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use warp::Filter;
    type Write = (String, Vec<u8>, tokio::sync::oneshot::Sender<i64>);
    let mut conn = floor_file(&dir.join("sqlite-group-http.db"));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Write>(4096);
    std::thread::spawn(move || {
        let mut seq = 0i64;
        let mut group = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            group.push(first);
            while let Ok(more) = rx.try_recv() {
                group.push(more);
            }
            let txn = conn.transaction().unwrap();
            let ts_ms = floor_now_ms();
            let mut seqs = Vec::with_capacity(group.len());
            for (key, value, _) in &group {
                seq += 1;
                floor_put(&txn, seq, key, value, ts_ms);
                seqs.push(seq);
            }
            txn.commit().unwrap();
            for ((_, _, reply), seq) in group.drain(..).zip(seqs) {
                let _ = reply.send(seq);
            }
        }
    });
    let route = warp::put()
        .and(warp::path!("api" / "v1" / String / "kv" / String))
        .and(warp::body::bytes())
        .then(move |_ns: String, key: String, body: bytes::Bytes| {
            let tx = tx.clone();
            async move {
                let value = floor_value(&body);
                let (reply, seq) = tokio::sync::oneshot::channel();
                tx.send((key, value, reply)).await.unwrap();
                let seq = seq.await.unwrap();
                warp::reply::with_header(
                    format!("{{\"success\":true,\"seq\":{seq}}}"),
                    "content-type",
                    "application/json",
                )
            }
        });
    serve(route).await
}

/// Writes/s of [`WRITERS`] writers against [`sqlite_group_http_server`].
async fn sqlite_group_http(dir: &Path, writers: usize, per_writer: usize) -> f64 {
    std::fs::create_dir_all(dir).unwrap();
    let (addr, server) = sqlite_group_http_server(dir).await;
    let db = dir.join("sqlite-group-http.db");
    warm(addr, &db, writers, warm_chunk(writers), Keys::Ordered).await;
    let (secs, _) = drive(addr, writers, per_writer, Keys::Ordered).await;
    server.abort();
    (writers * per_writer) as f64 / secs
}

/// Writes/s of one writer against [`sqlite_http_server`].
async fn sqlite_http(dir: &Path, per_writer: usize) -> f64 {
    std::fs::create_dir_all(dir).unwrap();
    let (addr, server) = sqlite_http_server(dir).await;
    warm(
        addr,
        &dir.join("sqlite-http.db"),
        1,
        WARM_CHUNK,
        Keys::Ordered,
    )
    .await;
    let (secs, _) = drive(addr, 1, per_writer, Keys::Ordered).await;
    server.abort();
    per_writer as f64 / secs
}

/// CPU time (user + system) this process has used so far, from /proc (0 where there is none).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime and stime are the 12th and
    // 13th, in clock ticks (100 per second on Linux).
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

/// Redis with an fsync per write, same load shape as ferry's. None without redis-server.
async fn redis(dir: &Path, writers: usize, per_writer: usize) -> Option<f64> {
    let data = dir.join(format!("redis-{writers}"));
    std::fs::create_dir_all(&data).unwrap();
    let (mut child, port) = spawn_redis(&[
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--dir",
        data.to_str().unwrap(),
    ])?;
    let mut conns = Vec::new();
    for _ in 0..writers {
        conns.push(connect_when_up(port).await);
    }
    let value = "x".repeat(VALUE_BYTES);
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(w, mut conn)| {
            let value = value.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                for i in 0..per_writer {
                    let key = format!("w{w}-{i}");
                    let req = resp_set(&key, &value);
                    round_trip(&mut conn, req.as_bytes(), &mut buf, |b| {
                        b.ends_with(b"\r\n")
                    })
                    .await;
                    assert_eq!(&buf[..], b"+OK\r\n");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = (writers * per_writer) as f64 / start.elapsed().as_secs_f64();
    let _ = child.kill();
    let _ = child.wait();
    Some(rate)
}

/// One key pattern, measured once.
struct Pattern {
    one: Run,
    many: Run,
    /// In-process SQLite, the same keys, 1 write per transaction.
    sqlite_one: f64,
    /// In-process SQLite, the same keys, as many writes per transaction as ferry's 64-writer
    /// run committed together (its requests per commit).
    sqlite_group: f64,
}

fn pattern(rt: &tokio::runtime::Runtime, dir: &Path, keys: Keys, scale: usize) -> Pattern {
    let dir = dir.join(keys.name());
    std::fs::create_dir_all(&dir).unwrap();
    let one = rt.block_on(ferry_http(&dir, 1, 1000 * scale, "full", keys));
    let many = rt.block_on(ferry_http(&dir, WRITERS, 100 * scale, "full", keys));
    let group = (many.per_commit.round() as usize).max(1);
    Pattern {
        sqlite_one: sqlite_ceiling(&dir, 1000 * scale, 1, keys),
        sqlite_group: sqlite_ceiling(&dir, 100 * scale * WRITERS, group, keys),
        one,
        many,
    }
}

/// One measurement of every configuration, in its own directory.
struct Round {
    single: f64,
    /// One writer against a no-op warp PUT handler: the HTTP round trip alone.
    noop_one: f64,
    /// In-process SQLite, 1 write/txn, idling one no-op round trip between commits.
    single_paced: f64,
    /// One writer against [`sqlite_http_server`]: the floor of one writer, measured whole.
    sqlite_http_one: f64,
    /// One writer against [`sqlite_group_http_server`]: that floor with ferry's hand-off to a
    /// committing thread and back.
    sqlite_hop_one: f64,
    /// [`WRITERS`] writers against a no-op warp PUT handler: the HTTP side alone.
    noop_many: f64,
    /// [`WRITERS`] writers against [`sqlite_group_http_server`]: their floor, measured whole.
    sqlite_http_many: f64,
    batched: f64,
    ordered: Pattern,
    per_writer: Pattern,
    /// Ordered keys, 64 writers, with `WAITERS` min_seq reads parked.
    waiting: Run,
    redis: Option<(f64, f64)>,
}

/// `?min_seq=` reads parked during one of the 64-writer runs.
const WAITERS: usize = 3000;

impl Round {
    fn of(&self, keys: Keys) -> &Pattern {
        match keys {
            Keys::Ordered => &self.ordered,
            Keys::PerWriter => &self.per_writer,
        }
    }
}

fn median_duration(mut v: Vec<std::time::Duration>) -> std::time::Duration {
    v.sort();
    v[v.len() / 2]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The value following `flag` on the command line.
fn arg(flag: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == flag)?;
    Some(
        args.get(i + 1)
            .unwrap_or_else(|| panic!("{flag} needs a value"))
            .clone(),
    )
}

/// `--writers N`: only ferry, N writers, 3 runs (for comparing two builds), then the no-op
/// handler; with 1 writer also the SQLite handler and Redis (when installed).
fn only_ferry(
    rt: &tokio::runtime::Runtime,
    writers: usize,
    per_writer: usize,
    sync: &str,
    keys: Keys,
) {
    let dir = tempfile::tempdir().unwrap();
    for r in 0..3 {
        let d = dir.path().join(format!("run{r}"));
        let run = rt.block_on(ferry_http(&d, writers, per_writer, sync, keys));
        println!(
            "ferry HTTP, synchronous={sync}, {} keys, {writers} writer(s): {:.0} writes/s, p99 {:.2?}, {:.2} cores busy, {:.1} requests per commit, writer in transactions {:.0}% of the time",
            keys.name(),
            run.rate,
            run.p99,
            run.cores,
            run.per_commit,
            run.writer_busy * 100.0
        );
    }
    let n = rt.block_on(noop(writers, per_writer));
    println!(
        "no-op warp PUT handler, {writers} writer(s): {n:.0} writes/s ({:.0} us a round trip each)",
        1e6 * writers as f64 / n
    );
    if writers > 1 {
        let s = rt.block_on(sqlite_group_http(
            &dir.path().join("sqlite-group-http"),
            writers,
            per_writer,
        ));
        println!(
            "warp PUT handler handing writes to one thread committing each group to SQLite (synchronous=FULL, ordered keys), {writers} writers: {s:.0} writes/s"
        );
        if let Some(r) = rt.block_on(redis(dir.path(), writers, per_writer)) {
            println!("redis appendfsync=always, {writers} clients: {r:.0} writes/s");
        }
    }
    if writers == 1 {
        let h = rt.block_on(sqlite_group_http(
            &dir.path().join("sqlite-group-http"),
            1,
            per_writer,
        ));
        println!(
            "warp PUT handler handing each write to a thread that commits it to SQLite (synchronous=FULL, ordered keys), 1 writer: {h:.0} writes/s ({:.0} us a round trip each)",
            1e6 / h
        );
        let s = rt.block_on(sqlite_http(&dir.path().join("sqlite-http"), per_writer));
        println!(
            "warp PUT handler committing to SQLite itself (synchronous=FULL, ordered keys), 1 writer: {s:.0} writes/s ({:.0} us a round trip each)",
            1e6 / s
        );
        if let Some(r) = rt.block_on(redis(dir.path(), 1, per_writer)) {
            println!("redis appendfsync=always, 1 client: {r:.0} writes/s");
        }
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (scale, rounds) = if quick { (1, 1) } else { (3, 5) };
    let rounds = arg("--rounds").map_or(rounds, |n| n.parse().expect("--rounds takes a number"));
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Some(which) = arg("--serve-floor") {
        // For a client in another process (wrk): serve one floor until killed.
        let d = dir.path().to_path_buf();
        rt.block_on(async move {
            let (addr, server) = match which.as_str() {
                "whole" => sqlite_http_server(&d).await,
                "hop" => sqlite_group_http_server(&d).await,
                other => panic!("--serve-floor takes whole or hop, not {other:?}"),
            };
            println!("{addr}");
            server.await.unwrap();
        });
        return;
    }
    if let Some(writers) = arg("--writers") {
        let writers: usize = writers.parse().expect("--writers takes a number");
        let keys = arg("--keys").map_or(Keys::Ordered, |name| {
            [Keys::Ordered, Keys::PerWriter]
                .into_iter()
                .find(|k| k.name() == name)
                .unwrap_or_else(|| panic!("--keys takes ordered or per-writer, not {name:?}"))
        });
        let per_writer = arg("--per-writer").map_or(64_000 / writers.max(16), |n| {
            n.parse().expect("--per-writer takes a number")
        });
        only_ferry(
            &rt,
            writers,
            per_writer,
            &arg("--sync").unwrap_or_else(|| "full".into()),
            keys,
        );
        return;
    }

    // Several interleaved rounds, reporting medians: on a shared machine one round can be
    // off by a third.
    let results: Vec<Round> = (0..rounds)
        .map(|r| {
            let d = dir.path().join(format!("round{r}"));
            std::fs::create_dir_all(&d).unwrap();
            let noop_one = rt.block_on(noop(1, 1000 * scale));
            let sqlite_http_one = rt.block_on(sqlite_http(&d.join("sqlite-http"), 1000 * scale));
            let sqlite_hop_one = rt.block_on(sqlite_group_http(
                &d.join("sqlite-hop-http"),
                1,
                1000 * scale,
            ));
            let noop_many = rt.block_on(noop(WRITERS, 100 * scale));
            let sqlite_http_many = rt.block_on(sqlite_group_http(
                &d.join("sqlite-group-http"),
                WRITERS,
                100 * scale,
            ));
            let redis = rt
                .block_on(redis(&d, 1, 1000 * scale))
                .zip(rt.block_on(redis(&d, WRITERS, 100 * scale)));
            Round {
                single: sqlite_ceiling(&d, 1000 * scale, 1, Keys::Ordered),
                noop_one,
                sqlite_http_one,
                sqlite_hop_one,
                noop_many,
                sqlite_http_many,
                single_paced: sqlite_paced(
                    &d,
                    1000 * scale,
                    1,
                    Keys::Ordered,
                    Some(std::time::Duration::from_secs_f64(1.0 / noop_one)),
                ),
                batched: sqlite_ceiling(&d, 50_000 * scale, 100, Keys::Ordered),
                ordered: pattern(&rt, &d, Keys::Ordered, scale),
                per_writer: pattern(&rt, &d, Keys::PerWriter, scale),
                waiting: rt.block_on(ferry_http_waiting(
                    &d.join("waiting"),
                    WRITERS,
                    100 * scale,
                    "full",
                    Keys::Ordered,
                    WAITERS,
                )),
                redis,
            }
        })
        .collect();
    let med = |f: &dyn Fn(&Round) -> f64| median(results.iter().map(f).collect());
    let (single, batched) = (med(&|r| r.single), med(&|r| r.batched));

    println!(
        "synchronous=FULL, {VALUE_BYTES}-byte values, writes/s, median of {rounds} round(s) (ratios are within the same run)"
    );
    println!("sqlite in-process, 1 write/txn          {single:>8.0}   1.00x");
    println!(
        "sqlite in-process, 100 writes/txn       {batched:>8.0}   {:.2}x of 1 write/txn",
        batched / single
    );
    let mut ferry_one = 0.0;
    let mut ferry_many = 0.0;
    for keys in [Keys::Ordered, Keys::PerWriter] {
        let one = med(&|r| r.of(keys).one.rate);
        let many = med(&|r| r.of(keys).many.rate);
        let group = med(&|r| r.of(keys).many.per_commit);
        let (sqlite_one, sqlite_group) = (
            med(&|r| r.of(keys).sqlite_one),
            med(&|r| r.of(keys).sqlite_group),
        );
        if keys == Keys::Ordered {
            (ferry_one, ferry_many) = (one, many);
        }
        println!("{} keys (`{}`):", keys.name(), keys.key(7, 42));
        println!(
            "  ferry HTTP, 1 writer                  {one:>8.0}   {:.2}x of sqlite 1 write/txn ({:.2} cores busy)",
            one / single,
            med(&|r| r.of(keys).one.cores)
        );
        println!(
            "  ferry HTTP, {WRITERS} writers                {many:>8.0}   {:.1}x of ferry 1 writer (p99 {:.2?}, {:.2} cores busy, {group:.1} requests per commit, writer in transactions {:.0}% of the time)",
            many / one,
            median_duration(results.iter().map(|r| r.of(keys).many.p99).collect()),
            med(&|r| r.of(keys).many.cores),
            med(&|r| r.of(keys).many.writer_busy) * 100.0
        );
        println!(
            "  sqlite in-process, same keys: 1 write/txn {sqlite_one:.0}, {group:.0} writes/txn {sqlite_group:.0} ({:.1}x): ferry {WRITERS} writers at {:.2}x of it",
            sqlite_group / sqlite_one,
            many / sqlite_group
        );
        println!(
            "  ratio {WRITERS} writers / 1 writer per round: {:?}",
            results
                .iter()
                .map(|r| format!("{:.1}", r.of(keys).many.rate / r.of(keys).one.rate))
                .collect::<Vec<_>>()
        );
    }
    let waiting = med(&|r| r.waiting.rate);
    println!(
        "ferry HTTP, {WRITERS} writers, ordered keys, {WAITERS} ?min_seq reads parked: {waiting:.0} ({:.2}x of without; per round {:?})",
        waiting / ferry_many,
        results
            .iter()
            .map(|r| format!("{:.2}", r.waiting.rate / r.ordered.many.rate))
            .collect::<Vec<_>>()
    );
    let redis_all = results.iter().all(|r| r.redis.is_some());
    if redis_all {
        let one_r = med(&|r| r.redis.unwrap().0);
        let many_r = med(&|r| r.redis.unwrap().1);
        println!(
            "redis appendfsync=always, 1 client     {one_r:>8.0}   {:.2}x of sqlite 1 write/txn",
            one_r / single
        );
        println!(
            "redis appendfsync=always, {WRITERS} clients   {many_r:>8.0}   {:.2}x of sqlite 1 write/txn",
            many_r / single
        );
        println!(
            "ferry (ordered keys) / redis: 1 writer {:.2}x, {WRITERS} writers {:.2}x",
            ferry_one / one_r,
            ferry_many / many_r
        );
        // What one writer can reach at best: SQLite's own commit, made by a thread that
        // idles between requests, plus an HTTP round trip that does nothing.
        let noop = med(&|r| r.noop_one);
        let paced = med(&|r| r.single_paced);
        let floor = 1.0 / (1.0 / paced + 1.0 / noop);
        println!(
            "1-writer floor: sqlite commit after an idle gap ({:.0} us, against {:.0} us back to back) + no-op warp PUT round trip ({:.0} us) = {floor:.0}/s = {:.2}x of redis 1 client; ferry 1 writer at {:.2}x of it",
            1e6 / paced,
            1e6 / single,
            1e6 / noop,
            floor / one_r,
            ferry_one / floor
        );
        let whole = med(&|r| r.sqlite_http_one);
        println!(
            "1-writer floor measured whole: a warp PUT handler committing to SQLite itself {whole:.0}/s ({:.0} us a write) = {:.2}x of redis 1 client; ferry 1 writer at {:.2}x of it",
            1e6 / whole,
            whole / one_r,
            ferry_one / whole
        );
        let hop = med(&|r| r.sqlite_hop_one);
        println!(
            "1-writer floor with a hand-off: the handler hands each write to a thread that commits it, as ferry's writer does {hop:.0}/s ({:.0} us a write) = {:.2}x of the floor measured whole, {:.2}x of redis 1 client; ferry 1 writer at {:.2}x of it",
            1e6 / hop,
            hop / whole,
            hop / one_r,
            ferry_one / hop
        );
        let (noop_many, whole_many) = (med(&|r| r.noop_many), med(&|r| r.sqlite_http_many));
        println!(
            "{WRITERS}-writer floor measured whole: a warp PUT handler handing writes to one thread that commits each group to SQLite {whole_many:.0}/s = {:.2}x of redis {WRITERS} clients; ferry {WRITERS} writers at {:.2}x of it; no-op warp PUT handler {noop_many:.0}/s = {:.2}x of redis",
            whole_many / many_r,
            ferry_many / whole_many,
            noop_many / many_r
        );
    } else {
        println!(
            "redis-server not found: `apt-get install redis-server` to measure it side by side"
        );
    }
}
