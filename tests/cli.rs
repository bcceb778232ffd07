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
    node.wait_line("config key ignored");
    let opened = node.wait_line("namespace open");
    assert!(
        opened.contains("ad-campaign-dc1.db") && opened.contains("log_id="),
        "{opened}"
    );
    let line = node.wait_line("HTTP listening on ");
    let addr = line.rsplit(' ').next().unwrap().to_owned();

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

    // Port already taken: the error names the address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = dir.path().join("busy.toml");
    std::fs::write(
        &cfg,
        primary_config(dir.path(), &["a"]).replace("http_port = 0", &format!("http_port = {port}")),
    )
    .unwrap();
    let err = run_fail(&["server", "--config", cfg.to_str().unwrap()]);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port} (HTTP)")),
        "{err}"
    );
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
            ],
        ),
    ];
    let out = ferry().arg("--help").output().unwrap();
    assert!(out.status.success());
    let top = String::from_utf8(out.stdout).unwrap();
    let commands = top.split("Commands:\n").nth(1).expect("a Commands section");
    for (cmd, opts) in expected {
        let listed = commands
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{cmd} ")));
        assert!(
            listed.is_some_and(|l| l.len() > cmd.len() + 12),
            "{cmd} in:\n{top}"
        );

        let out = ferry().args([cmd, &"--help"]).output().unwrap();
        assert!(out.status.success(), "{cmd} --help");
        let text = String::from_utf8(out.stdout).unwrap();
        let got = options(&text);
        let mut names: Vec<&str> = got.iter().map(|(f, _)| f.as_str()).collect();
        names.retain(|f| *f != "--help, help");
        let want: Vec<&str> = opts.iter().map(|(f, _)| *f).collect();
        assert_eq!(names, want, "the options of {cmd}:\n{text}");
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
        resumed.contains(&format!("from_seq={}", partial + 1)),
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
