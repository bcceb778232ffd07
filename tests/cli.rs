//! The real `ferry` binary, as a user runs it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn ferry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
}

#[tokio::test]
async fn the_walkthroughs_first_write_works_against_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    // The walkthrough's dc1.toml with the port and directory rewritten for a parallel test run.
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/configs/dc1.toml"))
        .unwrap()
        .replace(
            "http_port = 8001",
            "http_port = 0\nlisten_ip = \"127.0.0.1\"",
        )
        .replace(
            "/tmp/unisondb/examples/dc1",
            &dir.path().display().to_string(),
        );
    let config = dir.path().join("dc1.toml");
    std::fs::write(&config, text).unwrap();

    let mut node = Running::spawn(&["server", "-config", config.to_str().unwrap()]);
    // The walkthrough's keys that mean nothing to ferry: said once, on one line.
    let ignored = node.wait_line("config keys ignored");
    for key in [
        "log_config.min_level_percents",
        "storage_config.arena_size",
        "storage_config.bytes_per_sync",
        "storage_config.segment_size",
        "storage_config.wal_cleanup_config.min_segments/max_segments",
        "write_notify_config",
    ] {
        assert!(ignored.contains(key), "{key} not in {ignored}");
    }
    let opened = node.wait_line("namespace open");
    assert!(
        opened.contains("ad-campaign-dc1.db") && opened.contains("log_id="),
        "{opened}"
    );
    let line = node.wait_line("HTTP listening on ");
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    node.wait_line("ferry started");
    let mentions = node.seen.iter().filter(|l| l.contains("ignored")).count();
    assert_eq!(mentions, 1, "{:#?}", node.seen);

    // Scenario 1, with the body built as the README shows it.
    let value = r#"{"value":"online","timestamp":1698765432000,"replica":"ad-campaign-dc1"}"#;
    let resp = reqwest::Client::new()
        .put(format!(
            "http://{addr}/api/v1/ad-campaign-dc1/kv/lww:user-status"
        ))
        .header("Content-Type", "application/json")
        .body(format!(r#"{{"value": "{}"}}"#, b64(value.as_bytes())))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), r#"{"success":true,"seq":1}"#);

    let status = node.terminate();
    assert!(status.success(), "{status:?}");
    // What `sqlite3 <base_dir>/ad-campaign-dc1.db "select key, value from kv"` shows.
    let kv = kv_rows(&dir.path().join("ad-campaign-dc1.db"));
    assert_eq!(kv.len(), 1);
    assert_eq!(kv[0].0, "lww:user-status");
    assert_eq!(String::from_utf8(kv[0].1.clone()).unwrap(), value);
}

fn run_fail(args: &[&str]) -> String {
    let out = ferry().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn startup_errors_are_one_clear_line() {
    let err = run_fail(&["crdt-client", "--zmq", "tcp://localhost:5555"]);
    assert!(err.contains("is not namespace=endpoint"), "{err}");
    let err = run_fail(&["demo", "--configs", "/no/such/dir"]);
    assert!(
        err.contains("/no/such/dir/dc1.toml") && err.contains("--configs DIR"),
        "{err}"
    );
    let err = run_fail(&["server", "-config", "/no/such/dc1.toml"]);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(exit_code(&["server", "-config", "/no/such/dc1.toml"]), 2);
    assert!(
        err.contains("cannot read config file /no/such/dc1.toml"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("typo.toml");
    std::fs::write(
        &bad,
        primary_config(dir.path(), &["a"]).replace("http_port", "htp_port"),
    )
    .unwrap();
    let err = run_fail(&["server", "--config", bad.to_str().unwrap()]);
    assert!(
        err.contains("htp_port") && err.contains("typo.toml") && err.contains("line 1"),
        "{err}"
    );
    assert_eq!(exit_code(&["server", "--config", bad.to_str().unwrap()]), 2);

    // A CURVE key file that cannot be used is a config error too, naming the file.
    let key = dir.path().join("notify.key");
    std::fs::write(&key, "not a key\n").unwrap();
    let curve = dir.path().join("curve.toml");
    std::fs::write(
        &curve,
        format!(
            "{}[notifier_config.a]\nbind_port = 0\ncurve_secret_key_file = \"{}\"\n",
            primary_config(dir.path(), &["a"]),
            key.display()
        ),
    )
    .unwrap();
    let err = run_fail(&["server", "--config", curve.to_str().unwrap()]);
    assert!(err.contains("notify.key:1: not a CURVE key"), "{err}");
    assert_eq!(
        exit_code(&["server", "--config", curve.to_str().unwrap()]),
        2
    );

    // Port already taken: the error names the address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = dir.path().join("busy.toml");
    std::fs::write(
        &cfg,
        primary_config(dir.path(), &["a"]).replace("http_port = 0", &format!("http_port = {port}")),
    )
    .unwrap();
    let out = ferry()
        .args(["server", "--config", cfg.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a runtime failure");
    let err = String::from_utf8(out.stderr).unwrap();
    let said: Vec<&str> = err.lines().filter(|l| l.contains("in use")).collect();
    // Said once, on one line, and the OS's reason not repeated within it.
    assert_eq!(said.len(), 1, "{err}");
    assert!(
        said[0].starts_with(&format!(
            "ferry: cannot listen on 127.0.0.1:{port} (HTTP): "
        )),
        "{err}"
    );
    assert_eq!(said[0].matches("in use").count(), 1, "{err}");
}

fn exit_code(args: &[&str]) -> i32 {
    ferry().args(args).output().unwrap().status.code().unwrap()
}

/// Every subcommand of `ferry --help`.
const SUBCOMMANDS: &[&str] = &[
    "server",
    "replica",
    "demo",
    "crdt-client",
    "watch",
    "backup",
    "verify",
    "promote",
    "status",
];

#[test]
fn version_and_help_follow_the_conventions() {
    for flag in ["--version", "-V"] {
        let out = ferry().arg(flag).output().unwrap();
        assert!(out.status.success(), "{flag}");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            format!("ferry {}\n", env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
    let help = |args: &[&str]| {
        let out = ferry().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert!(out.stderr.is_empty(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let top = help(&["--help"]);
    assert!(top.starts_with("Usage: ferry "), "{top}");
    assert_eq!(help(&["-h"]), top);
    assert_eq!(help(&["help"]), top);
    for cmd in SUBCOMMANDS {
        let long = help(&[cmd, "--help"]);
        assert!(long.starts_with(&format!("Usage: ferry {cmd}")), "{long}");
        assert_eq!(help(&[cmd, "-h"]), long, "{cmd} -h");
    }
    // Usage errors exit 2 and say what is wrong on stderr.
    for args in [&[][..], &["--nope"], &["serve"], &["server"], &["status"]] {
        let out = ferry().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}

/// The `Options:` section of a `--help` text: (flags, description) per option, wrapped
/// descriptions joined.
fn options(help: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let section = help.split("Options:\n").nth(1).expect("an Options section");
    for line in section.lines().take_while(|l| !l.trim().is_empty()) {
        if line.starts_with("  -") {
            let (flags, desc) = line.trim().split_once("  ").unwrap_or((line.trim(), ""));
            out.push((flags.to_owned(), desc.trim().to_owned()));
        } else {
            let last = out.last_mut().expect("a continuation follows an option");
            last.1 = format!("{} {}", last.1, line.trim());
        }
    }
    out
}

/// An option's flags as `--help` lists them, and phrases its description must contain.
type OptionDoc = (&'static str, &'static [&'static str]);

#[test]
fn help_explains_every_option() {
    // Every option of every subcommand, and what its description must tell the user.
    let expected: &[(&str, &[OptionDoc])] = &[
        (
            "server",
            &[("-c, --config", &["TOML config file", "-config FILE"])],
        ),
        (
            "replica",
            &[("-c, --config", &["TOML config file", "-config FILE"])],
        ),
        (
            "demo",
            &[(
                "--configs",
                &["dc1.toml, dc2.toml and relayer.toml", "(default: configs)"],
            )],
        ),
        (
            "crdt-client",
            &[
                (
                    "--zmq",
                    &[
                        "namespace=endpoint",
                        "repeat",
                        "ad-campaign-dc1=tcp://localhost:5555",
                    ],
                ),
                ("--http", &["base URL", "(default: http://localhost:8003)"]),
                ("--json", &["JSON line per event"]),
                (
                    "--curve-server-key",
                    &["notifiers' CURVE public key", "every endpoint must have it"],
                ),
                (
                    "--curve-secret-key-file",
                    &[
                        "CURVE secret key file",
                        "ferry curve-keypair",
                        "new key pair",
                    ],
                ),
            ],
        ),
        (
            "watch",
            &[
                (
                    "-e, --endpoint",
                    &["zeroMQ endpoint", "tcp://localhost:5555", "repeat"],
                ),
                ("-t, --topic", &["topic prefix", "(default: everything)"]),
                (
                    "--curve-server-key",
                    &["notifier's CURVE public key", "curve_secret_key_file"],
                ),
                (
                    "--curve-secret-key-file",
                    &[
                        "CURVE secret key file",
                        "ferry curve-keypair",
                        "new key pair",
                    ],
                ),
            ],
        ),
        (
            "backup",
            &[
                ("--upstream", &["host:port", "gRPC listener"]),
                ("--namespace", &["namespace to back up"]),
                ("--out", &["file to write", "must not exist"]),
                ("--ca", &["CA certificate", "TLS"]),
                ("--cert", &["client certificate", "mTLS"]),
                ("--key", &["private key"]),
                ("--token-file", &["replication token"]),
            ],
        ),
        ("verify", &[]),
        (
            "promote",
            &[
                ("--target", &["base URL", "HTTP API"]),
                ("--namespace", &["namespace to promote"]),
            ],
        ),
        ("status", &[("--target", &["base URL", "HTTP API"])]),
        ("curve-keypair", &[]),
    ];
    let help_flags = "-h, --help, help";
    let out = ferry().arg("--help").output().unwrap();
    assert!(out.status.success());
    let top = String::from_utf8(out.stdout).unwrap();
    let top_options: Vec<String> = options(&top).into_iter().map(|(f, _)| f).collect();
    assert_eq!(top_options, ["-V, --version", help_flags], "{top}");

    // The commands listed are exactly the ones checked here, each with a description.
    let commands = top.split("Commands:\n").nth(1).expect("a Commands section");
    let listed: Vec<&str> = commands
        .lines()
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let want: Vec<&str> = expected.iter().map(|(c, _)| *c).collect();
    assert_eq!(listed, want, "{top}");
    for (cmd, opts) in expected {
        let line = commands
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{cmd} ")))
            .unwrap();
        assert!(
            line.len() > cmd.len() + 12,
            "{cmd} has no description:\n{top}"
        );

        let out = ferry().args([cmd, &"--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd} --help");
        let text = String::from_utf8(out.stdout).unwrap();
        let got = options(&text);
        let names: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
        let mut want: Vec<&str> = opts.iter().map(|(f, _)| *f).collect();
        want.push(help_flags);
        assert_eq!(names, want, "the options of {cmd}:\n{text}");
        for (flag, desc) in &got {
            assert!(desc.len() > 10, "{cmd} {flag} has no description");
        }
        for (flag, needles) in *opts {
            let desc = &got.iter().find(|(f, _)| f == flag).unwrap().1;
            for needle in *needles {
                assert!(
                    desc.contains(needle),
                    "{cmd} {flag}: {desc:?} lacks {needle:?}"
                );
            }
            let long = flag.rsplit(' ').next().unwrap();
            let usage = text.lines().next().unwrap();
            let short = flag.split(',').next().unwrap();
            assert!(usage.contains(long) || usage.contains(short), "{usage}");
        }
    }

    // `verify` takes the file as a positional argument, explained too.
    let out = ferry().args(["verify", "--help"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("Usage: ferry verify [--] <file>"),
        "{text}"
    );
    let positional = text.split("Positional Arguments:\n").nth(1).unwrap();
    assert!(positional.contains("the namespace file"), "{text}");

    // `demo --configs` changes the ports, so its help names none: the demo prints them.
    let out = ferry().args(["demo", "--help"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for port in ["8001", "8002", "8003", "4001", "4002", "5555", "5556"] {
        assert!(
            !text.contains(port),
            "demo --help names port {port}:\n{text}"
        );
    }
}

/// The walkthrough's Go-style `-config=FILE`, and the other spellings, all start a node.
#[test]
fn every_spelling_of_the_config_flag_works() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, primary_config(dir.path(), &["a"])).unwrap();
    let path = config.to_str().unwrap();
    let want = dir.path().join("a.db").display().to_string();
    let forms = [
        vec![format!("-config={path}")],
        vec![format!("--config={path}")],
        vec!["-config".to_owned(), path.to_owned()],
        vec!["-c".to_owned(), path.to_owned()],
    ];
    for form in forms {
        let mut args = vec!["server"];
        args.extend(form.iter().map(String::as_str));
        let mut node = Running::spawn(&args);
        // The node opened the namespace file the config names: the config was read.
        let opened = node.wait_line("namespace open");
        assert!(opened.contains(&want), "{args:?}: {opened}");
        node.wait_line("HTTP listening on ");
        // Dropping kills it (SIGTERM right after startup could beat the signal handler).
        drop(node);
    }
}

/// `/stats` of a namespace on a node running as a child process at `addr`.
async fn stats_at(c: &reqwest::Client, addr: &str, ns: &str) -> serde_json::Value {
    call(
        c,
        reqwest::Method::GET,
        &format!("http://{addr}/api/v1/{ns}/stats"),
        None,
    )
    .await
    .1
}

/// A TCP proxy to `upstream` that passes everything the client sends, but of what the
/// upstream sends only the first `budget` bytes (over all connections), then holds the rest
/// back. A replica behind it receives a prefix of its catch-up and then waits: it is mid
/// catch-up for as long as the test likes, however fast the disk.
async fn throttling_proxy(upstream: String, budget: usize) -> String {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let left = Arc::new(AtomicUsize::new(budget));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let (left, upstream) = (left.clone(), upstream.clone());
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                    return;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let up = tokio::io::copy(&mut from_client, &mut to_server);
                let down = async {
                    let mut buf = vec![0; 64 * 1024];
                    loop {
                        let n = match from_server.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let had = left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
                                Some(l.saturating_sub(n))
                            })
                            .unwrap();
                        let pass = had.min(n);
                        if to_client.write_all(&buf[..pass]).await.is_err() {
                            return;
                        }
                        if pass < n {
                            std::future::pending::<()>().await;
                        }
                    }
                };
                // Until the client goes: then both connections close.
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    addr
}

/// A replica SIGKILLed in the middle of its catch-up keeps a consistent prefix of the log and
/// resumes from it. The kill lands mid catch-up by construction: the replica first follows the
/// primary through a proxy that passes 3 MiB of a ~8 MB log, and is killed once it applied
/// something.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_catch_up_resumes_from_its_own_log() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = TestNode::primary_with_grpc(pdir.path(), &["ns"], 0).await;
    let c = reqwest::Client::new();
    let value = b64(&[b'v'; 200]);
    for b in 0..40 {
        let items: Vec<_> = (0..1000)
            .map(|i| serde_json::json!({"key": format!("k{b}-{i}"), "value": value}))
            .collect();
        let body = serde_json::json!({"operation": "put", "items": items}).to_string();
        let (s, _) = call(
            &c,
            reqwest::Method::POST,
            &primary.url("/api/v1/ns/kv/batch"),
            Some(&body),
        )
        .await;
        assert_eq!(s, 200);
    }
    let total = primary.head("ns");
    // A stream message holds at most ~1.3 MB here (MAX_BATCH_BYTES plus the rest of a
    // 1000-entry group): 3 MiB lets at least one through, and far less than the whole log.
    let proxy = throttling_proxy(primary.grpc(), 3 << 20).await;
    let config = rdir.path().join("replica.toml");
    std::fs::write(&config, replica_config(rdir.path(), &["ns"], &proxy, "")).unwrap();
    let args = ["replica", "--config", config.to_str().unwrap()];

    let mut replica = Running::spawn(&args);
    let line = replica.wait_line("HTTP listening on ");
    let addr = line.rsplit(' ').next().unwrap().to_owned();
    let applied = wait_for(
        Duration::from_secs(60),
        "the catch-up to start",
        async || {
            let applied = stats_at(&c, &addr, "ns").await["replication"]["applied_seq"]
                .as_i64()
                .unwrap();
            (applied > 0).then_some(applied)
        },
    )
    .await;
    replica.child.kill().unwrap(); // SIGKILL: no graceful anything
    replica.child.wait().unwrap();
    assert!(applied < total, "the proxy let the whole log through");

    // What survived the kill is a consistent prefix of the primary's log.
    let partial = verify_file(&rdir.path().join("ns.db"));
    assert!(
        partial >= applied as usize && partial < total as usize,
        "{partial}"
    );

    // Back, straight to the primary this time.
    std::fs::write(
        &config,
        replica_config(rdir.path(), &["ns"], &primary.grpc(), ""),
    )
    .unwrap();
    let mut replica = Running::spawn(&args);
    replica.wait_line("HTTP listening on ");
    let resumed = replica.wait_line("following upstream");
    assert!(
        resumed.contains(&format!("from_seq={}", partial + 1))
            && resumed.contains(&format!("{} entries behind", total - partial as i64)),
        "{resumed}"
    );
    wait_for(
        Duration::from_secs(60),
        "the replica to catch up",
        async || {
            let st = stats_at(&c, &addr_of(&replica), "ns").await;
            (st["replication"]["applied_seq"].as_i64() == Some(total)).then_some(())
        },
    )
    .await;
    let done = replica.wait_line("caught up with upstream");
    assert!(
        done.contains(&format!(
            "at seq {total} ({} entries applied in",
            total - partial as i64
        )),
        "{done}"
    );
    let status = replica.terminate();
    assert!(status.success());
    assert_same_files(&primary.db("ns"), &rdir.path().join("ns.db"));
    primary.stop().await;
}

fn addr_of(r: &Running) -> String {
    r.find("HTTP listening on ").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_watch_prints_each_notification() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[notifier_config.ns]\nbind_port = 0\n",
        primary_config(dir.path(), &["ns"])
    );
    let node = TestNode::start(&text, dir.path()).await;
    let endpoint = node.node.notifier_endpoint("ns").unwrap().to_owned();
    let mut watch = Running::spawn(&["watch", "-e", &endpoint, "--topic", "ns.kv"]);
    watch.wait_line(&format!("watching {endpoint}"));
    let c = reqwest::Client::new();
    wait_subscribed(&c, &node, "ns").await;
    let seq = put(&c, &node, "ns", "lww:user-status", b"online").await;
    let line = watch.wait_line("ns.kv ");
    let json: serde_json::Value =
        serde_json::from_str(line.strip_prefix("ns.kv ").unwrap()).unwrap();
    assert_eq!(json["key"], "lww:user-status");
    assert_eq!(json["operation"], "put");
    assert_eq!(json["namespace"], "ns");
    assert_eq!(json["entry_type"], "kv");
    assert_eq!(json["seq_num"], seq);
    drop(watch);
    node.stop().await;
}

/// A primary whose notifier of `ns` has CURVE on and allows one client key.
struct CurveNode {
    node: TestNode,
    /// The notifier's endpoint.
    endpoint: String,
    /// The notifier's public key (Z85).
    server_public: String,
    /// The allowed client's public key, and its key file as `ferry curve-keypair` writes it.
    client_public: String,
    client_file: String,
}

async fn curve_node(dir: &std::path::Path) -> CurveNode {
    let (server_public, server_secret) = ferry::notify::curve_keypair();
    let (client_public, client_secret) = ferry::notify::curve_keypair();
    let key = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let server_file = key("notify.key", format!("{server_secret}\n"));
    let allowed = key("clients.keys", format!("{client_public}\n"));
    let client_file = key(
        "client.key",
        format!("# public key: {client_public}\n{client_secret}\n"),
    );
    let text = format!(
        "{}[notifier_config.ns]\nbind_port = 0\ncurve_secret_key_file = {server_file:?}\ncurve_client_keys_file = {allowed:?}\n",
        primary_config(dir, &["ns"])
    );
    let node = TestNode::start(&text, dir).await;
    let endpoint = node.node.notifier_endpoint("ns").unwrap().to_owned();
    CurveNode {
        node,
        endpoint,
        server_public,
        client_public,
        client_file,
    }
}

/// `ferry crdt-client` with CURVE: with the notifier's public key and a client key file it
/// allows, the client subscribes (the notifier counts its topic) and a write reaches it as a
/// notification, not through its periodic check (no gap found); it says nothing of its
/// connections then (the walkthrough's story is unchanged). With a key the notifier does not
/// allow, it says why it has no connection, once. A key file without a server key is refused
/// at once. (Catches: the keys not set on the client's sockets: the notifier never sees the
/// subscription; a refusal not told, or told at each retry; a connection made told.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crdt_client_subscribes_with_curve() {
    let dir = tempfile::tempdir().unwrap();
    let CurveNode {
        node,
        endpoint,
        server_public,
        client_public,
        client_file,
    } = curve_node(dir.path()).await;
    let zmq = format!("ns={endpoint}");
    let args = [
        "crdt-client",
        "--json",
        "--http",
        &node.base,
        "--zmq",
        &zmq,
        "--curve-server-key",
        &server_public,
        "--curve-secret-key-file",
        &client_file,
    ];
    // A new key pair the notifier does not allow: refused, and told why once.
    let mut refused = Running::spawn(&args[..8]);
    let line = refused.wait_line(&format!("ZeroMQ ns: no connection to {endpoint}: "));
    assert!(
        line.contains("not in the notifier's curve_client_keys_file"),
        "{line}"
    );

    let mut client = Running::spawn(&args);
    assert_eq!(
        client.wait_line("CURVE client public key "),
        format!("CURVE client public key {client_public}")
    );
    client.wait_line("\"event\":\"ready\"");
    let c = reqwest::Client::new();
    wait_subscribed(&c, &node, "ns").await;
    let seq = put(
        &c,
        &node,
        "ns",
        "counter:c",
        br#"{"replica":"dc1","count":3}"#,
    )
    .await;
    let update = client.wait_line_where("the update of counter:c", |l| {
        serde_json::from_str::<serde_json::Value>(l)
            .is_ok_and(|v| v["event"] == "update" && v["key"] == "counter:c")
    });
    let update: serde_json::Value = serde_json::from_str(&update).unwrap();
    assert_eq!(update["seq"], seq, "{update}");
    let gaps: Vec<_> = client
        .seen
        .iter()
        .filter(|l| l.contains("\"gap\""))
        .collect();
    assert!(
        gaps.is_empty(),
        "found by the check, not notified: {gaps:?}"
    );
    let said: Vec<_> = client
        .kill()
        .into_iter()
        .filter(|l| l.contains("ZeroMQ ns:"))
        .collect();
    assert!(said.is_empty(), "{said:?}");
    let told = refused
        .kill()
        .iter()
        .filter(|l| l.contains("no connection to"))
        .count();
    assert_eq!(
        told, 1,
        "the refused client said why once, not at each retry"
    );

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "crdt-client",
            "--zmq",
            &zmq,
            "--curve-secret-key-file",
            &client_file,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ferry crdt-client: --curve-secret-key-file needs --curve-server-key"),
        "{stderr}"
    );
}

/// `ferry watch` with CURVE. With the notifier's public key and a client key file the notifier
/// allows, it says it is connected and prints each notification. With another server key, or
/// a new key pair the notifier does not allow, it says on stderr that it has no connection
/// and why, once. A malformed server key, or a client key file without one, is refused at
/// once. (Catches: the keys not set on the socket; the client's public key printed from
/// another pair; connection events not reported, or each retry's failure repeated.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_watch_subscribes_with_curve_and_says_why_it_has_no_connection() {
    let dir = tempfile::tempdir().unwrap();
    let CurveNode {
        node,
        endpoint,
        server_public,
        client_public,
        client_file,
    } = curve_node(dir.path()).await;
    let no_connection = format!("no connection to {endpoint}: ");

    let (stranger, _) = ferry::notify::curve_keypair();
    let mut wrong_server = Running::spawn(&[
        "watch",
        "-e",
        &endpoint,
        "--curve-server-key",
        &stranger,
        "--curve-secret-key-file",
        &client_file,
    ]);
    let line = wrong_server.wait_line(&no_connection);
    assert!(
        line.contains("closed the connection during the handshake"),
        "{line}"
    );
    let mut not_allowed = Running::spawn(&[
        "watch",
        "-e",
        &endpoint,
        "--curve-server-key",
        &server_public,
    ]);
    let new_public = not_allowed.wait_line("CURVE client public key ");
    assert!(!new_public.contains(&client_public), "{new_public}");
    let line = not_allowed.wait_line(&no_connection);
    assert!(
        line.contains("not in the notifier's curve_client_keys_file"),
        "{line}"
    );

    let mut watch = Running::spawn(&[
        "watch",
        "-e",
        &endpoint,
        "--topic",
        "ns.kv",
        "--curve-server-key",
        &server_public,
        "--curve-secret-key-file",
        &client_file,
    ]);
    assert_eq!(
        watch.wait_line("CURVE client public key "),
        format!("CURVE client public key {client_public}")
    );
    watch.wait_line(&format!("connected to {endpoint}"));
    let c = reqwest::Client::new();
    wait_subscribed(&c, &node, "ns").await;
    let seq = put(&c, &node, "ns", "k", b"v").await;
    let line = watch.wait_line("ns.kv ");
    let json: serde_json::Value =
        serde_json::from_str(line.strip_prefix("ns.kv ").unwrap()).unwrap();
    assert_eq!(
        (json["key"].clone(), json["seq_num"].clone()),
        ("k".into(), seq.into())
    );
    let st = stats(&c, &node, "ns").await;
    assert_eq!(
        st["notifier"]["subscribed_topics"], 1,
        "only the allowed client: {st}"
    );

    // Each refused client retried all along (libzmq, every 100 ms) and said so only once.
    for (name, mut refused) in [
        ("wrong server key", wrong_server),
        ("not allowed", not_allowed),
    ] {
        let said = refused
            .kill()
            .iter()
            .filter(|l| l.contains(&no_connection))
            .count();
        assert_eq!(said, 1, "{name}");
    }

    for (args, says) in [
        (
            vec!["--curve-server-key", "tooshort"],
            "is not a CURVE public key",
        ),
        (
            vec!["--curve-secret-key-file", &client_file],
            "needs --curve-server-key",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["watch", "-e", &endpoint])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    drop(watch);
    node.stop().await;
}

/// `ferry status --target URL` as a child process: (exit code, stdout, stderr).
async fn ferry_status(target: &str) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["status", "--target", target])
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `ferry status` sums a node up on one screen: role and readiness, and per namespace the
/// head, the upstream and lag or the followers; it exits 0 only when the node is ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_status_sums_up_a_node() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = TestNode::primary_with_grpc(pdir.path(), &["ns"], 0).await;
    let replica = TestNode::replica(rdir.path(), &["ns"], &primary.grpc(), "").await;
    let c = reqwest::Client::new();
    put(&c, &primary, "ns", "a", b"1").await;
    put(&c, &primary, "ns", "b", b"2").await;
    wait_synced(&primary, &replica, "ns").await;
    wait_for(
        Duration::from_secs(20),
        "the primary to list its follower at seq 2",
        async || {
            let st = stats(&c, &primary, "ns").await;
            (st["followers"][0]["applied_seq"] == 2).then_some(())
        },
    )
    .await;

    wait_for(
        Duration::from_secs(20),
        "the replica's notifier to publish both entries",
        async || (stats(&c, &replica, "ns").await["notifier"]["sent"] == 2).then_some(()),
    )
    .await;

    let (code, out, err) = ferry_status(&primary.base).await;
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("{}: primary, ready", primary.base),
        "{out}"
    );
    assert_eq!(lines[1], "  ns: primary head 2 (2 keys), ready", "{out}");
    assert!(
        lines[2].starts_with("    follower ") && lines[2].ends_with(": applied 2, lag 0"),
        "{out}"
    );
    assert_eq!(lines.len(), 3, "{out}");

    // Without the scheme, as `host:port`.
    let bare = replica.base.strip_prefix("http://").unwrap();
    let (code, out, err) = ferry_status(bare).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out,
        format!(
            "{}: replica, ready\n  ns: replica head 2 (2 keys), ready\n    upstream {} following: applied 2 of 2, lag 0\n    notifier: 2 sent, 0 topics subscribed\n",
            replica.base,
            primary.grpc()
        )
    );

    // The upstream gone: the replica says it is not ready, and why; exit 1.
    primary.stop().await;
    wait_replication_state(&c, &replica, "ns", "retrying").await;
    let (code, out, _) = ferry_status(&replica.base).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!("{}: replica, NOT READY\n", replica.base)),
        "{out}"
    );
    assert!(
        out.contains("  ns: replica head 2 (2 keys), retrying "),
        "{out}"
    );
    assert!(out.contains("last error: "), "{out}");

    // Nothing listening: one clear line naming the URL, exit 1.
    let base = replica.base.clone();
    replica.stop().await;
    let (code, out, err) = ferry_status(&base).await;
    assert_eq!(code, 1);
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("ferry status: cannot reach {base}/health (")),
        "{err}"
    );
}

/// At start a node says in one line what it is and everywhere it listens: version, role,
/// config file, HTTP, gRPC and each namespace's ZeroMQ endpoint. No access log by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_says_at_start_what_it_is_and_where_it_listens() {
    let (pdir, rdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let primary = TestNode::primary_with_grpc(pdir.path(), &["ns"], 0).await;
    let config = rdir.path().join("replica.toml");
    let text = replica_config(
        rdir.path(),
        &["ns"],
        &primary.grpc(),
        "[grpc_config]\nport = 0\n",
    );
    std::fs::write(&config, text).unwrap();
    let mut replica = Running::spawn(&["replica", "--config", config.to_str().unwrap()]);
    let http = replica.wait_line("HTTP listening on ");
    let http = http.rsplit(' ').next().unwrap().to_owned();
    let grpc = replica.wait_line("gRPC listening on ");
    let grpc = grpc.rsplit(' ').next().unwrap().to_owned();
    let started = replica.wait_line("ferry started");
    let field = |name: &str| {
        started
            .split(' ')
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name}= in {started}"))
            .to_owned()
    };
    assert_eq!(field("version"), env!("CARGO_PKG_VERSION"));
    assert_eq!(field("role"), "replica");
    assert_eq!(field("config"), config.display().to_string());
    assert_eq!(field("http"), http);
    assert_eq!(field("grpc"), grpc);
    let zeromq = field("zeromq");
    let endpoint = zeromq.strip_prefix("ns=tcp://127.0.0.1:").expect(&zeromq);
    assert_ne!(endpoint.parse::<u16>().unwrap(), 0, "{zeromq}");

    let c = reqwest::Client::new();
    let (s, _) = call(
        &c,
        reqwest::Method::GET,
        &format!("http://{http}/health"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let lines = replica.finish();
    assert_eq!(
        lines.iter().filter(|l| l.contains("ferry started")).count(),
        1
    );
    assert!(
        !lines.iter().any(|l| l.contains("ferry::access")),
        "{lines:#?}"
    );
    primary.stop().await;
}

/// A node whose log reader goes away (stderr a pipe whose other end closed: a log collector
/// that died) keeps serving and stops cleanly; the lines are lost, not the node. (Catches:
/// tracing's default of reporting a failed write with eprintln!, which panics on the same
/// broken stderr, so the node exited with 101 at its next log line.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_log_pipe_closes_keeps_serving() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    let text = format!(
        "{}[log_config]\naccess_log = true\n",
        primary_config(dir.path(), &["ns"])
    );
    std::fs::write(&config, text).unwrap();
    let mut child = Reaped(
        ferry()
            .args(["server", "--config", config.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let child = &mut child.0;
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let http = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.split("HTTP listening on ").nth(1).map(str::to_owned))
        .expect("the listening line");
    drop(lines);

    // Every request now logs an access line into the closed pipe.
    let c = reqwest::Client::new();
    let url = format!("http://{}/api/v1/ns/kv/k", http.trim());
    for i in 0..20 {
        let body = format!(r#"{{"value": "{}"}}"#, b64(format!("v{i}").as_bytes()));
        let (s, _) = call(&c, reqwest::Method::PUT, &url, Some(&body)).await;
        assert_eq!(s, 200, "write {i}");
    }
    let (s, j) = call(&c, reqwest::Method::GET, &url, None).await;
    assert_eq!(
        (s, unb64(j["value"].as_str().unwrap())),
        (200, b"v19".to_vec())
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// A child killed when dropped (a failing test must not leave a server behind); once it
/// has been waited for, there is nothing left to kill.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `log_format = "json"`: every line the node writes is a JSON object, the startup line and
/// the access log (`access_log = true`) included, with their fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    let text = format!(
        "{}[grpc_config]\nport = 0\n[log_config]\nlog_format = \"json\"\naccess_log = true\nmin_level_percents = {{ info = 100.0 }}\n",
        primary_config(dir.path(), &["ns"])
    );
    std::fs::write(&config, text).unwrap();
    let mut node = Running::spawn(&["server", "--config", config.to_str().unwrap()]);
    let started = node.wait_line("ferry started");
    let started: serde_json::Value = serde_json::from_str(&started).unwrap();
    let http = started["fields"]["http"].as_str().unwrap().to_owned();
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["fields"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(started["fields"]["role"], "primary");
    assert_eq!(started["fields"]["config"], config.display().to_string());

    let c = reqwest::Client::new();
    let body = format!(r#"{{"value": "{}"}}"#, b64(b"online"));
    let (s, reply) = call(
        &c,
        reqwest::Method::PUT,
        &format!("http://{http}/api/v1/ns/kv/lww:user-status"),
        Some(&body),
    )
    .await;
    assert_eq!(s, 200);
    // A GET of one key is served without warp's filters (the fast path): logged all the same.
    let (s, got) = call(
        &c,
        reqwest::Method::GET,
        &format!("http://{http}/api/v1/ns/kv/lww:user-status"),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(
        &c,
        reqwest::Method::GET,
        &format!("http://{http}/nope"),
        None,
    )
    .await;
    assert_eq!(s, 404);

    let lines = node.finish();
    let objects: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.is_object() && v["level"].is_string(), "{l}");
            v
        })
        .collect();
    let ignored = objects
        .iter()
        .find(|o| o["fields"]["keys"].is_string())
        .expect("the ignored keys line");
    assert_eq!(ignored["fields"]["keys"], "log_config.min_level_percents");
    let access: Vec<&serde_json::Value> = objects
        .iter()
        .filter(|o| o["target"] == "ferry::access")
        .map(|o| &o["fields"])
        .collect();
    assert_eq!(access.len(), 3, "{lines:#?}");
    assert_eq!(access[0]["method"], "PUT");
    assert_eq!(access[0]["path"], "/api/v1/ns/kv/lww:user-status");
    assert_eq!(access[0]["status"], 200);
    assert_eq!(access[0]["bytes"], reply.to_string().len());
    assert!(access[0]["duration_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(
        (&access[1]["method"], &access[1]["status"]),
        (&"GET".into(), &200.into())
    );
    assert_eq!(access[1]["path"], "/api/v1/ns/kv/lww:user-status");
    assert_eq!(access[1]["bytes"], got.to_string().len());
    assert_eq!(
        (&access[2]["method"], &access[2]["status"]),
        (&"GET".into(), &404.into())
    );
    assert_eq!(access[2]["path"], "/nope");
}

/// A read waiting with `?min_seq=` when the node is told to stop is answered "shutting down"
/// as shutdown begins, instead of holding the HTTP drain: it used to keep shutdown waiting the
/// whole drain (3 s), which ended with a warning that connections were still busy. The read
/// is seen waiting by the `ferry_seq_waiters` gauge before the SIGTERM. (Catches: the waiters
/// not closed when shutdown begins, where the "still busy" line appears; the gauge not
/// counting them, where the wait for it times out.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_waiting_for_a_seq_does_not_hold_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, primary_config(dir.path(), &["ns"])).unwrap();
    let mut node = Running::spawn(&["server", "--config", config.to_str().unwrap()]);
    node.wait_line("HTTP listening on ");
    let base = format!("http://{}", addr_of(&node));
    let c = reqwest::Client::new();
    let url = format!("{base}/api/v1/ns/kv/k?min_seq=1&timeout_ms=30000");
    let waiting = tokio::spawn({
        let c = c.clone();
        async move { call(&c, reqwest::Method::GET, &url, None).await }
    });
    wait_for(
        Duration::from_secs(30),
        "the read to wait for seq 1",
        async || {
            let text = c.get(format!("{base}/metrics")).send().await.ok()?;
            let text = text.text().await.ok()?;
            (metric(&text, "ferry_seq_waiters", "ns") == 1.0).then_some(())
        },
    )
    .await;

    let lines = node.finish();
    let (status, body) = waiting.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "the node is shutting down", "{body}");
    assert!(
        !lines.iter().any(|l| l.contains("still busy")),
        "{lines:#?}"
    );
}
