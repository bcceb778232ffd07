//! Read throughput, and bulk writes, as ratios of references measured in the same run (the
//! machines are shared and noisy; ratios are comparable, absolute numbers less so).
//!
//! Run: `cargo bench --bench read` (add `-- --quick` for 100,000 keys and shorter loads).
//! To profile one load alone:
//! `-- [--quick] --only hot|hot-chain|cold|noop-hot|noop-cold|floor-hot|floor-cold|floor-cold-mmap
//! [--secs S]`
//! (the server's runtime threads are named `server`, the load generator's `load`).
//!
//! - `POST /kv/batch` of 1,000 items, loading 1,000,000 keys of 100 bytes, against in-process
//!   SQLite inserting the same rows 1,000 per transaction (synchronous=FULL both);
//! - `GET /kv/{key}` with 64 keep-alive connections, one hot key and a random key of the
//!   1,000,000 (cold), against a no-op warp handler answering a body of the same size on the
//!   same runtime (the HTTP ceiling of this machine), against the floor (that handler plus
//!   one SQLite lookup of the key in the namespace file, what any server reading each request
//!   from SQLite must do), and Redis `GET` beside them (when
//!   `redis-server` is on the PATH: `apt-get install redis-server`); then the cold keys again
//!   with `performance_config.mmap_size` at 1 GiB (the node restarted on the same file), the
//!   floor's connections mapping the file too.
//!
//! The load generator is a minimal client (pre-built request bytes, one task per connection)
//! on a runtime thread of its own, like wrk would be; the server gets a runtime of its own
//! with a worker per core, as `ferry server` does.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{connect_when_up, http_round_trip, resp_set, round_trip, spawn_redis};
use ferry::config::Config;
use ferry::node::{Listeners, Mode, Node};

const VALUE_BYTES: usize = 100;
const CONNS: usize = 64;
const BATCH: usize = 1000;

fn key(i: usize) -> String {
    format!("k{i:08}")
}

/// In-process SQLite inserting `keys` rows, `per_txn` per transaction, as ferry stores them
/// (a `wal_log` row and a `kv` row each).
fn sqlite_ceiling(dir: &Path, keys: usize, per_txn: usize) -> f64 {
    let path = dir.join("ceiling.db");
    let mut conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "FULL").unwrap();
    conn.execute_batch(include_str!("../migrations/0001_init.sql"))
        .unwrap();
    let value = vec![b'x'; VALUE_BYTES];
    let start = Instant::now();
    let mut seq = 0i64;
    while (seq as usize) < keys {
        let tx = conn.transaction().unwrap();
        for _ in 0..per_txn {
            seq += 1;
            let k = key(seq as usize);
            tx.prepare_cached("INSERT INTO wal_log VALUES (?1, ?1, 'put', ?2, ?3, 0, 0)")
                .unwrap()
                .execute(rusqlite::params![seq, k, value])
                .unwrap();
            tx.prepare_cached("INSERT INTO kv VALUES (?1, ?2, ?3, 0) ON CONFLICT (key) DO UPDATE SET value = excluded.value, seq = excluded.seq")
                .unwrap()
                .execute(rusqlite::params![k, value, seq])
                .unwrap();
        }
        tx.commit().unwrap();
    }
    seq as f64 / start.elapsed().as_secs_f64()
}

/// Loads `keys` keys through `POST /kv/batch`, `BATCH` per request, one client; items/s.
async fn load_batches(addr: SocketAddr, keys: usize) -> f64 {
    let value = base64::engine::general_purpose::STANDARD.encode(vec![b'x'; VALUE_BYTES]);
    // The bodies are built before the clock starts: the client's JSON is not the server's cost.
    let bodies: Vec<String> = (0..keys / BATCH)
        .map(|b| {
            let items: Vec<String> = (b * BATCH..(b + 1) * BATCH)
                .map(|i| format!("{{\"key\":\"{}\",\"value\":\"{value}\"}}", key(i)))
                .collect();
            let body = format!("{{\"operation\":\"put\",\"items\":[{}]}}", items.join(","));
            format!(
                "POST /api/v1/bench/kv/batch HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        })
        .collect();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let start = Instant::now();
    for req in &bodies {
        let status = http_round_trip(&mut conn, req.as_bytes(), &mut buf).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&buf));
    }
    (bodies.len() * BATCH) as f64 / start.elapsed().as_secs_f64()
}

/// Which key each request asks for.
#[derive(Clone, Copy)]
enum Pick {
    Hot,
    /// The hot key with an empty query string (`?`): served by the whole warp filter chain
    /// rather than the `GET /kv/{key}` fast path, to compare the two in one run.
    HotChain,
    /// A random one of the first `n`.
    Cold(usize),
}

/// A small xorshift generator: the load must not spend its core on randomness.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

impl Pick {
    fn index(self, rng: &mut Rng) -> usize {
        match self {
            Pick::Hot | Pick::HotChain => 42,
            Pick::Cold(n) => rng.below(n),
        }
    }
}

/// What the load asks for.
#[derive(Clone, Copy)]
enum Load {
    /// HTTP GETs of `/api/v1/bench/kv/{key}`; every answer must be a 200.
    Http(Pick),
    /// Redis `GET`s.
    Redis(Pick),
}

impl Load {
    async fn one(self, conn: &mut tokio::net::TcpStream, rng: &mut Rng, buf: &mut Vec<u8>) {
        match self {
            Load::Http(pick) => {
                let query = if matches!(pick, Pick::HotChain) {
                    "?"
                } else {
                    ""
                };
                let req = format!(
                    "GET /api/v1/bench/kv/{}{query} HTTP/1.1\r\nhost: bench\r\n\r\n",
                    key(pick.index(rng))
                );
                let status = http_round_trip(conn, req.as_bytes(), buf).await;
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(buf));
            }
            Load::Redis(pick) => {
                let k = key(pick.index(rng));
                let req = format!("*2\r\n$3\r\nGET\r\n${}\r\n{k}\r\n", k.len());
                round_trip(conn, req.as_bytes(), buf, |b| {
                    b.len() >= 6 + VALUE_BYTES + 2
                })
                .await;
                assert!(buf.starts_with(b"$100\r\n"), "{buf:?}");
            }
        }
    }
}

/// `CONNS` keep-alive connections each sending one request after another for `secs`;
/// requests/s.
async fn run_load(addr: SocketAddr, load: Load, secs: f64) -> f64 {
    let mut conns = Vec::new();
    for _ in 0..CONNS {
        let c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.set_nodelay(true).unwrap();
        conns.push(c);
    }
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((i as u64 + 1) * 0x2545_F491));
                let mut buf = Vec::with_capacity(1024);
                let mut done = 0u64;
                while Instant::now() < until {
                    load.one(&mut conn, &mut rng, &mut buf).await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// A warp server whose GET handler does nothing but answer a body shaped like ferry's: the
/// most any HTTP handler can do on this machine and runtime.
async fn noop_server() -> SocketAddr {
    use warp::Filter;
    let body = Arc::new(format!(
        "{{\"value\":\"{}\",\"found\":true,\"seq\":123456,\"ts_ms\":1764442800000}}",
        base64::engine::general_purpose::STANDARD.encode(vec![b'x'; VALUE_BYTES])
    ));
    let route = warp::get()
        .and(warp::path!("api" / "v1" / String / "kv" / String))
        .map(move |_ns: String, _key: String| {
            warp::reply::with_header(body.to_string(), "content-type", "application/json")
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    addr
}

/// A warp server whose GET handler reads the key from the namespace file itself and answers
/// ferry's body: the no-op handler plus one SQLite point lookup, on a read-only connection
/// each runtime thread keeps with its statement prepared (as ferry's reads are), mapping the
/// file when `mmap_size` is not 0. Nothing any server that reads each request from the file
/// can skip: the floor of the GET rows.
async fn sqlite_get_server(db: std::path::PathBuf, mmap_size: u64) -> SocketAddr {
    use rusqlite::OpenFlags;
    use std::cell::RefCell;
    use warp::Filter;
    thread_local! {
        /// This thread's connection for each `mmap_size` (one floor server per size).
        static CONNS: RefCell<Vec<(u64, rusqlite::Connection)>> = const { RefCell::new(Vec::new()) };
    }
    let db = Arc::new(db);
    let route = warp::get()
        .and(warp::path!("api" / "v1" / String / "kv" / String))
        .map(move |_ns: String, key: String| {
            let (value, seq, ts_ms): (Vec<u8>, i64, i64) = CONNS.with(|conns| {
                let mut conns = conns.borrow_mut();
                let i = conns
                    .iter()
                    .position(|(m, _)| *m == mmap_size)
                    .unwrap_or_else(|| {
                        let flags =
                            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                        let conn = rusqlite::Connection::open_with_flags(&*db, flags).unwrap();
                        conn.pragma_update(None, "mmap_size", mmap_size as i64)
                            .unwrap();
                        conns.push((mmap_size, conn));
                        conns.len() - 1
                    });
                conns[i]
                    .1
                    .prepare_cached("SELECT value, seq, ts_ms FROM kv WHERE key = ?1")
                    .unwrap()
                    .query_row([&key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .unwrap()
            });
            let body = format!(
                "{{\"value\":\"{}\",\"found\":true,\"seq\":{seq},\"ts_ms\":{ts_ms}}}",
                base64::engine::general_purpose::STANDARD.encode(value)
            );
            warp::reply::with_header(body, "content-type", "application/json")
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(warp::serve(route).incoming(listener).run());
    addr
}

/// A Redis server (no persistence: reads only) holding `keys` keys; None without redis-server.
async fn redis(keys: usize) -> Option<(std::process::Child, SocketAddr)> {
    let (child, port) = spawn_redis(&["--save", "", "--appendonly", "no"])?;
    let mut conn = connect_when_up(port).await;
    // Pipelined SETs, 1,000 at a time.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let value = "x".repeat(VALUE_BYTES);
    for chunk in (0..keys).collect::<Vec<_>>().chunks(1000) {
        let req: String = chunk.iter().map(|&i| resp_set(&key(i), &value)).collect();
        conn.write_all(req.as_bytes()).await.unwrap();
        let want = chunk.len() * 5;
        let mut got = Vec::new();
        while got.len() < want {
            let mut b = [0u8; 8192];
            let n = conn.read(&mut b).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&b[..n]);
        }
    }
    Some((child, ([127, 0, 0, 1], port).into()))
}

/// Resident memory of this process, in MB (from /proc; 0 where there is none).
fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
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

/// `performance_config.mmap_size` of the last GET row.
const MMAP_SIZE: u64 = 1 << 30;

/// A primary node with one namespace, `bench`, under `dir`.
async fn start(dir: &Path, mmap_size: u64) -> Node {
    let text = format!(
        "http_port = 0\nlisten_ip = \"127.0.0.1\"\n[storage_config]\nbase_dir = {:?}\nnamespaces = [\"bench\"]\n[storage_config.performance_config]\nmmap_size = {mmap_size}\n[log_config]\nlog_level = \"warn\"\n",
        dir.join("ferry").display().to_string()
    );
    let config = Config::parse(&text, Path::new("bench.toml")).unwrap();
    let listeners = Listeners::bind(&config).await.unwrap();
    Node::start(config, Mode::Primary, listeners).await.unwrap()
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (keys, secs) = if quick {
        (100_000, 2.0)
    } else {
        (1_000_000, 5.0)
    };
    let dir = tempfile::tempdir().unwrap();
    // Named threads, so that a profile (`perf report --sort comm`) tells the server's share
    // from the load generator's.
    let server = tokio::runtime::Builder::new_multi_thread()
        .thread_name("server")
        .enable_all()
        .build()
        .unwrap();
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("load")
        .enable_all()
        .build()
        .unwrap();

    let ceiling = if arg("--only").is_some() {
        0.0
    } else {
        sqlite_ceiling(dir.path(), keys, BATCH)
    };

    let node = server.block_on(start(dir.path(), 0));
    let addr = node.http_addr();
    let batch = client.block_on(load_batches(addr, keys));
    let noop = server.block_on(noop_server());
    let db = dir.path().join("ferry").join("bench.db");
    let floor = server.block_on(sqlite_get_server(db.clone(), 0));
    let floor_mmap = server.block_on(sqlite_get_server(db, MMAP_SIZE));

    // `--only NAME --secs S`: one load alone, for a profiler to attach to (the pid and the
    // moment it starts are printed on stderr).
    if let Some(only) = arg("--only") {
        let secs: f64 = arg("--secs").map_or(secs, |s| s.parse().expect("--secs takes seconds"));
        let (target, pick) = match only.as_str() {
            "hot" => (addr, Pick::Hot),
            "hot-chain" => (addr, Pick::HotChain),
            "cold" => (addr, Pick::Cold(keys)),
            "noop-hot" => (noop, Pick::Hot),
            "noop-cold" => (noop, Pick::Cold(keys)),
            "floor-hot" => (floor, Pick::Hot),
            "floor-cold" => (floor, Pick::Cold(keys)),
            "floor-cold-mmap" => (floor_mmap, Pick::Cold(keys)),
            other => panic!(
                "--only takes hot, hot-chain, cold, noop-hot, noop-cold, floor-hot, floor-cold or floor-cold-mmap, not {other:?}"
            ),
        };
        eprintln!("pid {} loading {only} for {secs} s", std::process::id());
        let rate = client.block_on(run_load(target, Load::Http(pick), secs));
        println!("GET {CONNS} conns, {only}: {rate:.0} req/s");
        server.block_on(node.shutdown());
        return;
    }

    // Interleaved, so that a slow moment of the machine hits every row alike.
    let mut rows = Vec::new();
    for (name, pick) in [("hot key", Pick::Hot), ("cold keys", Pick::Cold(keys))] {
        let f = client.block_on(run_load(addr, Load::Http(pick), secs));
        let n = client.block_on(run_load(noop, Load::Http(pick), secs));
        let l = client.block_on(run_load(floor, Load::Http(pick), secs));
        rows.push((name, f, n, l));
    }
    // The same file again, read through connections that map it (`mmap_size`, off by default).
    server.block_on(node.shutdown());
    let node = server.block_on(start(dir.path(), MMAP_SIZE));
    let addr = node.http_addr();
    let f = client.block_on(run_load(addr, Load::Http(Pick::Cold(keys)), secs));
    let n = client.block_on(run_load(noop, Load::Http(Pick::Cold(keys)), secs));
    let l = client.block_on(run_load(floor_mmap, Load::Http(Pick::Cold(keys)), secs));
    rows.push(("cold keys, mmap_size 1 GiB", f, n, l));
    let redis = client.block_on(redis(keys)).map(|(mut child, raddr)| {
        let hot = client.block_on(run_load(raddr, Load::Redis(Pick::Hot), secs));
        let cold = client.block_on(run_load(raddr, Load::Redis(Pick::Cold(keys)), secs));
        let _ = child.kill();
        let _ = child.wait();
        (hot, cold)
    });

    println!(
        "{keys} keys, {VALUE_BYTES}-byte values, synchronous=FULL; ratios are within this run"
    );
    println!(
        "POST /kv/batch of {BATCH}            {batch:>9.0} items/s   {:.2}x of sqlite in-process at {BATCH}/txn ({ceiling:.0} rows/s)",
        batch / ceiling
    );
    for (i, (name, f, n, floor)) in rows.iter().enumerate() {
        let redis = redis
            .map(|r| if i == 0 { r.0 } else { r.1 })
            .map_or("redis-server not found".to_owned(), |r| {
                format!("redis GET {r:.0} (ferry {:.2}x of it)", f / r)
            });
        println!(
            "GET {CONNS} conns, {name:<26}{f:>9.0} req/s     {:.2}x of no-op warp GET ({n:.0}); {redis}",
            f / n
        );
        println!(
            "    floor: no-op + SQLite lookup {floor:>9.0} req/s     {:.2}x of the no-op; ferry {:.2}x of the floor",
            floor / n,
            f / floor
        );
    }
    println!("process RSS after the run: {:.0} MB", rss_mb());
    server.block_on(node.shutdown());
}
