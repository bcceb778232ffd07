//! Replication over a network nobody trusts: TLS with verified client certificates (mTLS), the
//! replication token, and the refusal to serve or follow in plaintext when the config says not
//! to. Certificates are made here with rcgen; nodes are real, over loopback.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use ferry::node::Mode;
use ferry::replication::ErrorKind;
use ferry::replication::pb::PositionRequest;
use ferry::replication::pb::replication_client::ReplicationClient;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

const NS: &str = "ns";

/// A certificate authority made for one test.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes `<name>.crt`, `<name>.key` (a certificate for 127.0.0.1 and localhost signed by
    /// this CA) and `<name>-ca.crt` into `dir`; returns (cert, key, ca) paths.
    fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let paths = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
            dir.join(format!("{name}-ca.crt")),
        );
        std::fs::write(&paths.0, cert.pem()).unwrap();
        std::fs::write(&paths.1, key.serialize_pem()).unwrap();
        std::fs::write(&paths.2, &self.pem).unwrap();
        paths
    }
}

fn p(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// A replica config following NS from `upstream`, with `relayer` lines under its relayer.
fn replica_text(dir: &Path, upstream: &str, relayer: &str) -> String {
    format!(
        "{}[relayer_config.up]\nnamespaces = [\"{NS}\"]\nupstream_address = {upstream:?}\n{relayer}",
        primary_config(dir, &[NS])
    )
}

async fn replica(dir: &Path, upstream: &str, relayer: &str) -> TestNode {
    TestNode::start_as(Mode::Replica, &replica_text(dir, upstream, relayer), dir).await
}

/// Waits until the replica's follower reports an error, and returns it.
async fn wait_error(c: &reqwest::Client, node: &TestNode) -> String {
    wait_for(
        Duration::from_secs(30),
        "the follower to report an error",
        async || {
            let st = stats(c, node, NS).await;
            st["replication"]["last_error"]
                .as_str()
                .map(|e| (st["replication"]["state"].to_string(), e.to_owned()))
        },
    )
    .await
    .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_lets_in_only_clients_with_a_certificate_of_the_configured_ca() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("ferry test CA");
    let other = Ca::new("some other CA");
    let (server_crt, server_key, ca_crt) = ca.issue(certs.path(), "server");
    let (client_crt, client_key, _) = ca.issue(certs.path(), "client");
    let (stranger_crt, stranger_key, _) = other.issue(certs.path(), "stranger");

    let pdir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[grpc_config]\nport = 0\nallow_insecure = false\ncert_path = {}\nkey_path = {}\nca_path = {}\n",
        primary_config(pdir.path(), &[NS]),
        p(&server_crt),
        p(&server_key),
        p(&ca_crt)
    );
    let primary = TestNode::start(&text, pdir.path()).await;
    let c = reqwest::Client::new();
    put(&c, &primary, NS, "a", b"1").await;

    // A certificate signed by the CA: replicates over TLS.
    let gdir = tempfile::tempdir().unwrap();
    let good = replica(
        gdir.path(),
        &primary.grpc(),
        &format!(
            "allow_insecure = false\nca_path = {}\ncert_path = {}\nkey_path = {}\n",
            p(&ca_crt),
            p(&client_crt),
            p(&client_key)
        ),
    )
    .await;
    wait_synced(&primary, &good, NS).await;
    wait_replication_state(&c, &good, NS, "following").await;

    // No client certificate, or one signed by another CA: refused, nothing replicated.
    let ndir = tempfile::tempdir().unwrap();
    let none = replica(
        ndir.path(),
        &primary.grpc(),
        &format!("ca_path = {}\n", p(&ca_crt)),
    )
    .await;
    let sdir = tempfile::tempdir().unwrap();
    let stranger = replica(
        sdir.path(),
        &primary.grpc(),
        &format!(
            "ca_path = {}\ncert_path = {}\nkey_path = {}\n",
            p(&ca_crt),
            p(&stranger_crt),
            p(&stranger_key)
        ),
    )
    .await;
    // A replica with no TLS settings at all: the listener hangs up on its plaintext, and it
    // says which key it lacks (the node's own words were "the upstream closed the stream").
    let pldir = tempfile::tempdir().unwrap();
    let plaintext = replica(pldir.path(), &primary.grpc(), "").await;
    let err = wait_error(&c, &plaintext).await;
    assert!(
        err.contains("needs relayer_config.up.ca_path"),
        "a plaintext replica: {err}"
    );
    // The replica without a certificate is told it needs one; the one whose certificate
    // another CA signed has every setting, so nothing is suggested.
    for (node, hint) in [
        (
            &none,
            Some("needs relayer_config.up.cert_path and relayer_config.up.key_path"),
        ),
        (&stranger, None),
    ] {
        let err = wait_error(&c, node).await;
        match hint {
            Some(hint) => assert!(err.contains(hint), "{err}"),
            None => assert!(!err.contains("needs"), "{err}"),
        }
        assert_eq!(
            stats(&c, node, NS).await["replication"]["state"],
            "retrying",
            "{err}"
        );
        assert_eq!(node.head(NS), 0, "a refused replica got entries: {err}");
    }

    // A plaintext client gets nothing from a TLS listener either.
    let plain = ReplicationClient::connect(format!("http://{}", primary.grpc())).await;
    if let Ok(mut plain) = plain {
        let answer = plain
            .position(PositionRequest {
                namespace: NS.into(),
                ..Default::default()
            })
            .await;
        assert!(answer.is_err(), "plaintext answered: {answer:?}");
    }

    put(&c, &primary, NS, "b", b"2").await;
    wait_synced(&primary, &good, NS).await;
    assert_eq!(none.head(NS), 0);
    assert_eq!(stranger.head(NS), 0);
    assert_eq!(plaintext.head(NS), 0);
    for node in [good, none, stranger, plaintext, primary] {
        node.stop().await;
    }
}

/// Runs `ferry backup` (the real binary) of NS on `node` into `out` with `flags`: its exit
/// code and what it printed on stderr.
fn ferry_backup(node: &TestNode, out: &Path, flags: &[(&str, &Path)]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
    cmd.args(["backup", "--upstream", &node.grpc(), "--namespace", NS]);
    cmd.arg("--out").arg(out);
    for (flag, path) in flags {
        cmd.arg(flag).arg(path);
    }
    let output = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

/// Runs the real binary with `config` and returns (exit code, everything it printed).
fn refused_start(mode: &str, config: &str, dir: &Path) -> (Option<i32>, String) {
    let path = dir.join("node.toml");
    std::fs::write(&path, config).unwrap();
    let mut node = Running::spawn(&[mode, "-config", path.to_str().unwrap()]);
    node.wait_line("ferry: ");
    let code = node.child.wait().unwrap().code();
    (code, node.seen.join("\n"))
}

#[test]
fn allow_insecure_false_without_certificates_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let server = format!(
        "{}[grpc_config]\nport = 0\nallow_insecure = false\n",
        primary_config(dir.path(), &[NS])
    );
    let (code, out) = refused_start("server", &server, dir.path());
    // A config error: exit 2, as for every usage or config error.
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("grpc_config.allow_insecure = false") && out.contains("grpc_config.cert_path"),
        "{out}"
    );

    let replica = replica_text(dir.path(), "127.0.0.1:1", "allow_insecure = false\n");
    let (code, out) = refused_start("replica", &replica, dir.path());
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("relayer_config.up.allow_insecure = false") && out.contains("ca_path"),
        "{out}"
    );

    // A certificate file that is not PEM is named, not served.
    let junk = dir.path().join("junk.crt");
    std::fs::write(&junk, "not a certificate").unwrap();
    let bad = format!(
        "{}[grpc_config]\nport = 0\ncert_path = {}\nkey_path = {}\n",
        primary_config(dir.path(), &[NS]),
        p(&junk),
        p(&junk)
    );
    let (code, out) = refused_start("server", &bad, dir.path());
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("grpc_config.cert_path") && out.contains("junk.crt"),
        "{out}"
    );
}

/// A TCP relay to `upstream` that counts the connections made through it.
async fn counting_proxy(upstream: String) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, count)
}

/// The reverse mistake: TLS settings for an upstream that serves plaintext. The replica and
/// `ferry backup` say the upstream answered in plaintext (rustls' own words are "received
/// corrupt message of type InvalidContentType"). (Catches: that case not recognised in the
/// error chain.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_settings_for_a_plaintext_upstream_are_told_as_such() {
    let certs = tempfile::tempdir().unwrap();
    let (_, _, ca_crt) = Ca::new("ferry test CA").issue(certs.path(), "unused");
    let pdir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[grpc_config]\nport = 0\n",
        primary_config(pdir.path(), &[NS])
    );
    let primary = TestNode::start(&text, pdir.path()).await;
    let c = reqwest::Client::new();
    put(&c, &primary, NS, "a", b"1").await;
    let said = "the upstream answered in plaintext: it does not serve gRPC over TLS";

    let rdir = tempfile::tempdir().unwrap();
    let tls_replica = replica(
        rdir.path(),
        &primary.grpc(),
        &format!("ca_path = {}\n", p(&ca_crt)),
    )
    .await;
    let err = wait_error(&c, &tls_replica).await;
    assert!(err.contains(said), "{err}");
    assert_eq!(tls_replica.head(NS), 0);

    let out = rdir.path().join("backup.db");
    let (code, stderr) = ferry_backup(&primary, &out, &[("--ca", &ca_crt)]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(said), "{stderr}");
    assert!(!out.exists());
    tls_replica.stop().await;
    primary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replication_token_is_required_and_a_refused_follower_does_not_hammer() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("replication.tokens");
    // Two tokens side by side: a rotation in progress.
    std::fs::write(&tokens, "# rotating\nold-secret\nnew-secret\n").unwrap();
    let (good_token, wrong_token) = (dir.path().join("good"), dir.path().join("wrong"));
    std::fs::write(&good_token, "new-secret\n").unwrap();
    std::fs::write(&wrong_token, "guess\n").unwrap();

    let pdir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[grpc_config]\nport = 0\n[auth]\nreplication_token_file = {}\n",
        primary_config(pdir.path(), &[NS]),
        p(&tokens)
    );
    let primary = TestNode::start(&text, pdir.path()).await;
    let c = reqwest::Client::new();
    put(&c, &primary, NS, "a", b"1").await;

    // The right token (the second line of the server's file) replicates.
    let gdir = tempfile::tempdir().unwrap();
    let good = replica(
        gdir.path(),
        &primary.grpc(),
        &format!("token_file = {}\n", p(&good_token)),
    )
    .await;
    wait_synced(&primary, &good, NS).await;

    // Typed answers to a client without a token, and with a wrong one.
    let mut raw = ReplicationClient::connect(format!("http://{}", primary.grpc()))
        .await
        .unwrap();
    let position = || PositionRequest {
        namespace: NS.into(),
        ..Default::default()
    };
    let none = raw.position(position()).await.unwrap_err();
    assert_eq!(none.code(), tonic::Code::Unauthenticated, "{none:?}");
    assert_eq!(ErrorKind::of(&none), Some(ErrorKind::Unauthenticated));
    let mut req = tonic::Request::new(position());
    req.metadata_mut()
        .insert("authorization", "Bearer guess".parse().unwrap());
    let wrong = raw.position(req).await.unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::PermissionDenied, "{wrong:?}");
    assert_eq!(ErrorKind::of(&wrong), Some(ErrorKind::PermissionDenied));
    assert!(!wrong.message().contains("secret"), "{wrong:?}");

    // Followers without the token, or with a wrong one, are refused with the typed error...
    let (proxied, attempts) = counting_proxy(primary.grpc()).await;
    let ndir = tempfile::tempdir().unwrap();
    let tokenless = replica(ndir.path(), &proxied, "").await;
    let wdir = tempfile::tempdir().unwrap();
    let wrong = replica(
        wdir.path(),
        &primary.grpc(),
        &format!("token_file = {}\n", p(&wrong_token)),
    )
    .await;
    let err = wait_error(&c, &tokenless).await;
    assert!(err.contains("requires a replication token"), "{err}");
    let err = wait_error(&c, &wrong).await;
    assert!(err.contains("not one this node accepts"), "{err}");
    assert!(!err.contains("guess"), "the token is in the error: {err}");

    // ...and do not retry in a loop: over a window many times the normal backoff's first
    // steps (100 ms, 200 ms, ...), the refused follower connects once.
    let seen = attempts.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(3)).await; // an observation window, not a wait
    let after = attempts.load(Ordering::SeqCst);
    assert!(
        seen <= 1 && after <= 1,
        "a refused follower connected {seen} then {after} times in 3 s"
    );
    assert_eq!(tokenless.head(NS), 0);
    assert_eq!(wrong.head(NS), 0);

    // The server re-reads its token file when it changes: a token added to it is accepted
    // with no restart. (Catches: the replication token file left out of the files watched.)
    std::fs::write(&tokens, "new-secret\nguess\n").unwrap();
    wait_for(
        Duration::from_secs(20),
        "a token added to the file accepted",
        async || {
            let mut req = tonic::Request::new(position());
            req.metadata_mut()
                .insert("authorization", "Bearer guess".parse().unwrap());
            raw.position(req).await.ok().map(|_| ())
        },
    )
    .await;

    for node in [good, tokenless, wrong, primary] {
        node.stop().await;
    }
}

/// `ferry backup` of a node that serves gRPC only over TLS, asks for a client certificate of
/// its CA, and takes a replication token: with `--ca`, `--cert`, `--key` and `--token-file` it
/// writes a sound file holding the node's keys; without any one of them it fails (exit 1),
/// saying which option the node needs, and writes nothing. (Catches: the command not handing
/// one of the four options to its connection; a connection the node hung up on told as
/// "operation was canceled", as tonic words it; a failed backup leaving a file behind.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ferry_backup_reaches_a_node_over_mtls_with_its_token() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new("ferry test CA");
    let (server_crt, server_key, ca_crt) = ca.issue(certs.path(), "server");
    let (client_crt, client_key, _) = ca.issue(certs.path(), "client");
    let tokens = certs.path().join("replication.tokens");
    std::fs::write(&tokens, "backup-secret\n").unwrap();

    let pdir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[grpc_config]\nport = 0\nallow_insecure = false\ncert_path = {}\nkey_path = {}\nca_path = {}\n[auth]\nreplication_token_file = {}\n",
        primary_config(pdir.path(), &[NS]),
        p(&server_crt),
        p(&server_key),
        p(&ca_crt),
        p(&tokens)
    );
    let primary = TestNode::start(&text, pdir.path()).await;
    let c = reqwest::Client::new();
    for key in ["a", "b", "c"] {
        put(&c, &primary, NS, key, key.as_bytes()).await;
    }

    let out_dir = tempfile::tempdir().unwrap();
    let backup = |name: &str, skip: &str| {
        let out = out_dir.path().join(name);
        let flags: Vec<(&str, &Path)> = [
            ("--ca", &ca_crt),
            ("--cert", &client_crt),
            ("--key", &client_key),
            ("--token-file", &tokens),
        ]
        .into_iter()
        // A certificate goes with its key.
        .filter(|(flag, _)| *flag != skip && !(skip == "--cert" && *flag == "--key"))
        .map(|(flag, path)| (flag, path.as_path()))
        .collect();
        let (code, stderr) = ferry_backup(&primary, &out, &flags);
        (code, stderr, out)
    };

    let (code, stderr, out) = backup("all.db", "");
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("3 keys at seq 3"), "{stderr}");
    assert_eq!(kv_rows(&out), kv_rows(&primary.db(NS)));
    verify_file(&out);

    for (skip, why, says) in [
        ("--ca", "plaintext to a TLS listener", "needs --ca"),
        ("--cert", "no client certificate", "needs --cert and --key"),
        ("--token-file", "no token", "requires a replication token"),
    ] {
        let (code, stderr, out) = backup(&format!("without{skip}.db"), skip);
        assert_eq!(code, Some(1), "{why}: {stderr}");
        assert!(
            stderr.starts_with(&format!("ferry backup: {}: ", primary.grpc())),
            "{why}: {stderr}"
        );
        assert!(stderr.contains(says), "{why}: {stderr}");
        assert!(
            !out.exists(),
            "{why}: a failed backup left {}",
            out.display()
        );
    }
    primary.stop().await;
}
