//! The `ferry` binary: parses the command line, loads the config, runs a command.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use ferry::config::{Config, LogFormat};
use ferry::node::{Listeners, Mode, Node};

/// ferry: a log-shipping database on SQLite. Primaries take writes over HTTP; replicas tail
/// their logs over gRPC.
#[derive(FromArgs)]
#[argh(help_triggers("-h", "--help", "help"))]
struct Cli {
    /// print the version and exit
    #[argh(switch, short = 'V')]
    version: bool,
    #[argh(subcommand)]
    command: Option<Command>,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Server(ServerCmd),
    Replica(ReplicaCmd),
    Demo(DemoCmd),
    CrdtClient(CrdtClientCmd),
    Watch(WatchCmd),
    Backup(BackupCmd),
    Verify(VerifyCmd),
    Promote(PromoteCmd),
    Status(StatusCmd),
    CurveKeypair(CurveKeypairCmd),
}

/// Print a new CURVE key pair for a ZeroMQ notifier: a comment line with the public key (what
/// subscribers set as their server key), then the secret key. Redirected to a file, it is a
/// `curve_secret_key_file` as it stands: `ferry curve-keypair > notify.key`.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "curve-keypair",
    help_triggers("-h", "--help", "help")
)]
struct CurveKeypairCmd {}

/// Print a one-screen summary of a running node from its HTTP API: its role and readiness,
/// and per namespace the head seq, the upstream and lag (followed namespaces) or the
/// connected followers. Exit codes: 0 ready, 1 not ready or unreachable, 2 usage.
#[derive(FromArgs)]
#[argh(subcommand, name = "status", help_triggers("-h", "--help", "help"))]
struct StatusCmd {
    /// base URL of the node's HTTP API, e.g. http://localhost:8003 (http:// may be left out)
    #[argh(option)]
    target: String,
}

/// Promote a namespace of a replica to primary: it stops following, takes a new log_id
/// (recording the old one and its head as lineage, so other replicas can continue from it
/// without a snapshot), and takes writes. Exit codes: 0 promoted, 1 refused or failed, 2 usage.
#[derive(FromArgs)]
#[argh(subcommand, name = "promote", help_triggers("-h", "--help", "help"))]
struct PromoteCmd {
    /// base URL of the replica's HTTP API, e.g. http://localhost:8003
    #[argh(option)]
    target: String,
    /// namespace to promote
    #[argh(option)]
    namespace: String,
}

/// Write a consistent copy of one namespace of a running node (primary or replica) to a new
/// namespace file, from its replication stream. Restore: stop the node, put the file in place
/// as <base_dir>/<namespace>.db, start the node. Exit codes: 0 done, 1 failed, 2 usage.
#[derive(FromArgs)]
#[argh(subcommand, name = "backup", help_triggers("-h", "--help", "help"))]
struct BackupCmd {
    /// host:port of the node's gRPC listener, e.g. localhost:4001
    #[argh(option)]
    upstream: String,
    /// namespace to back up
    #[argh(option)]
    namespace: String,
    /// the file to write (must not exist)
    #[argh(option)]
    out: PathBuf,
    /// CA certificate (PEM) that signed the node's gRPC certificate: connect over TLS
    #[argh(option)]
    ca: Option<PathBuf>,
    /// client certificate (PEM) for a node that requires mTLS (with --key)
    #[argh(option)]
    cert: Option<PathBuf>,
    /// private key (PEM) of --cert
    #[argh(option)]
    key: Option<PathBuf>,
    /// file whose first line is the node's replication token
    #[argh(option)]
    token_file: Option<PathBuf>,
}

/// Check a namespace file offline (a running node may keep using it): SQLite's
/// integrity_check, the crc chain of every entry still in wal_log, and kv against the replay
/// of that log. Exits 0 when the file is sound, 1 when something is wrong (each problem is
/// printed), 2 when the file cannot be opened.
#[derive(FromArgs)]
#[argh(subcommand, name = "verify", help_triggers("-h", "--help", "help"))]
struct VerifyCmd {
    /// the namespace file, e.g. /tmp/unisondb/examples/dc1/ad-campaign-dc1.db
    #[argh(positional)]
    file: PathBuf,
}

/// Run the walkthrough's cluster in one process: dc1, dc2 and the replica, on the ports their
/// config files name; it prints where each listens. Ctrl-C stops all three.
#[derive(FromArgs)]
#[argh(subcommand, name = "demo", help_triggers("-h", "--help", "help"))]
struct DemoCmd {
    /// directory holding dc1.toml, dc2.toml and relayer.toml (default: configs)
    #[argh(option, default = "PathBuf::from(\"configs\")")]
    configs: PathBuf,
}

/// The walkthrough's CRDT client: merges LWW registers and G-counters from the replica's
/// notifications and prints the converged state.
#[derive(FromArgs)]
#[argh(
    subcommand,
    name = "crdt-client",
    help_triggers("-h", "--help", "help")
)]
struct CrdtClientCmd {
    /// namespace=endpoint to subscribe to; repeat for several (default:
    /// ad-campaign-dc1=tcp://localhost:5555 and ad-campaign-dc2=tcp://localhost:5556)
    #[argh(option)]
    zmq: Vec<String>,
    /// base URL of the node to read values from (default: http://localhost:8003)
    #[argh(option, default = "String::from(\"http://localhost:8003\")")]
    http: String,
    /// print one JSON line per event instead of text
    #[argh(switch)]
    json: bool,
    /// the notifiers' CURVE public key (Z85, 40 characters; the comment line of their
    /// curve_secret_key_file), for notifiers with CURVE on; every endpoint must have it
    #[argh(option)]
    curve_server_key: Option<String>,
    /// this client's CURVE secret key file, as `ferry curve-keypair` writes it (default: a
    /// new key pair each run, its public key printed)
    #[argh(option)]
    curve_secret_key_file: Option<PathBuf>,
}

/// Run a primary: owns the namespaces in storage_config.namespaces and takes writes on HTTP.
#[derive(FromArgs)]
#[argh(subcommand, name = "server", help_triggers("-h", "--help", "help"))]
struct ServerCmd {
    /// path to the TOML config file, e.g. configs/dc1.toml (`-config FILE` works too)
    #[argh(option, short = 'c')]
    config: PathBuf,
}

/// Run a read-only replica: follows each [relayer_config.NAME]'s namespaces from its
/// upstream_address over gRPC, serves reads, publishes ZeroMQ notifications.
#[derive(FromArgs)]
#[argh(subcommand, name = "replica", help_triggers("-h", "--help", "help"))]
struct ReplicaCmd {
    /// path to the TOML config file, e.g. configs/relayer.toml (`-config FILE` works too)
    #[argh(option, short = 'c')]
    config: PathBuf,
}

/// Print the ZeroMQ change notifications of a node, one line per entry.
#[derive(FromArgs)]
#[argh(subcommand, name = "watch", help_triggers("-h", "--help", "help"))]
struct WatchCmd {
    /// zeroMQ endpoint to subscribe to (default tcp://localhost:5555); repeat for several
    #[argh(option, short = 'e')]
    endpoint: Vec<String>,
    /// topic prefix to subscribe to, e.g. ad-campaign-dc1.kv (default: everything)
    #[argh(option, short = 't', default = "String::new()")]
    topic: String,
    /// the notifier's CURVE public key (Z85, 40 characters; the comment line of its
    /// curve_secret_key_file), for a notifier with CURVE on; every endpoint must have it
    #[argh(option)]
    curve_server_key: Option<String>,
    /// this client's CURVE secret key file, as `ferry curve-keypair` writes it (default: a
    /// new key pair each run, its public key printed)
    #[argh(option)]
    curve_secret_key_file: Option<PathBuf>,
}

/// Accepts the walkthrough's Go-style `-config FILE` / `-config=FILE` by rewriting it to
/// `--config FILE` before argh sees it.
fn go_style_args(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    for a in args {
        if a == "-config" {
            out.push("--config".to_owned());
        } else if let Some(v) = a
            .strip_prefix("-config=")
            .or_else(|| a.strip_prefix("--config="))
        {
            out.push("--config".to_owned());
            out.push(v.to_owned());
        } else {
            out.push(a);
        }
    }
    out
}

fn promote(cmd: PromoteCmd) -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    let url = format!(
        "{}/api/v1/{}/promote",
        cmd.target.trim_end_matches('/'),
        cmd.namespace
    );
    let answer = runtime.block_on(async {
        let resp = reqwest::Client::new().post(&url).send().await?;
        let status = resp.status();
        Ok::<_, reqwest::Error>((status, resp.text().await?))
    });
    match answer {
        Ok((status, body)) if status.is_success() => {
            println!("{body}");
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("ferry promote: {url}: {status}: {body}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("ferry promote: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn backup(cmd: BackupCmd) -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    let started = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let mut progress = |rows: i64, bytes: i64| {
        if last.elapsed() >= std::time::Duration::from_secs(1) {
            last = std::time::Instant::now();
            eprintln!("backup: {rows} keys, {bytes} bytes so far");
        }
    };
    let security = ferry::replication::client::Security {
        ca_path: cmd.ca.clone(),
        cert_path: cmd.cert.clone(),
        key_path: cmd.key.clone(),
        token_file: cmd.token_file.clone(),
    };
    let done = runtime.block_on(ferry::replication::backup::backup_with(
        &cmd.upstream,
        &security,
        &cmd.namespace,
        &cmd.out,
        &mut progress,
    ));
    match done {
        Ok(b) => {
            eprintln!(
                "backup: wrote {} ({} keys at seq {} of log {}) in {:.1}s",
                cmd.out.display(),
                b.keys,
                b.seq,
                b.log_id,
                started.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ferry backup: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Exit code of a usage error or of a config file that cannot be read or is invalid.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let args = go_style_args(std::env::args().collect());
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let cli = match Cli::from_args(&["ferry"], &strs[1..]) {
        Ok(cli) => cli,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    // `ferry --help | head` closes the pipe early: not an error.
                    let _ = writeln!(std::io::stdout(), "{}", early.output);
                    ExitCode::SUCCESS
                }
                Err(()) => {
                    eprintln!("{}", early.output);
                    ExitCode::from(USAGE)
                }
            };
        }
    };
    if cli.version {
        let _ = writeln!(std::io::stdout(), "ferry {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let Some(command) = cli.command else {
        eprintln!("ferry: no command given; `ferry --help` lists them");
        return ExitCode::from(USAGE);
    };
    let (config_path, mode) = match command {
        Command::Server(c) => (c.config, Mode::Primary),
        Command::Replica(c) => (c.config, Mode::Replica),
        Command::Watch(w) => return watch(w),
        Command::Backup(b) => return backup(b),
        Command::Promote(p) => return promote(p),
        Command::CrdtClient(c) => return crdt_client(c),
        Command::Demo(d) => return demo(d),
        Command::Verify(v) => return verify(v),
        Command::Status(s) => return status(s),
        Command::CurveKeypair(CurveKeypairCmd {}) => {
            let (public, secret) = ferry::notify::curve_keypair();
            println!("# public key: {public}\n{secret}");
            return ExitCode::SUCCESS;
        }
    };
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry: {e}");
            return ExitCode::from(USAGE);
        }
    };
    let json = config.log_config.log_format == LogFormat::Json;
    init_tracing(&config);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    match runtime.block_on(run(config, mode)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Said once: as a log line when the log is JSON (so every line parses), else
            // as the command's last word.
            let message = error_chain(e.as_ref());
            if json {
                tracing::error!("{message}");
            } else {
                eprintln!("ferry: {message}");
            }
            // A config the node refuses at start (a certificate or token file that is not
            // usable, a namespace followed from where it was promoted away) is fixed by
            // editing the config, never by retrying: exit as for an invalid config file.
            match e.downcast_ref::<ferry::node::NodeError>() {
                Some(ferry::node::NodeError::Config(_)) => ExitCode::from(USAGE),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// An error and its causes, joined with ": ", leaving out a cause whose text the message
/// already holds (e.g. "cannot listen on ...: Address already in use (os error 98)" is not
/// followed by the io error again).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

async fn run(config: Config, mode: Mode) -> anyhow::Result<()> {
    // Listening for SIGINT/SIGTERM starts before the node does: a signal that arrives while it
    // starts (e.g. right after "HTTP listening on") stops it cleanly instead of killing it.
    let stop = shutdown_signal();
    let listeners = Listeners::bind(&config).await?;
    let node = Node::start(config, mode, listeners).await?;
    stop.await;
    tracing::info!("shutdown requested; finishing in-flight requests");
    node.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM received after this call (the handlers are
/// installed now, not when the future is first polled).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
        async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// `log_config.log_level` sets the level (`RUST_LOG`, when set, overrides it);
/// `log_config.log_format` picks text or JSON lines, on stderr.
fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let log = &config.log_config;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(log.log_level.as_str()));
    // A log line that cannot be written (the reader of stderr is gone: a pipe to a log
    // collector that died) is dropped. By default tracing reports it with eprintln!, which
    // panics on that same broken stderr: the node exited (101) at its next log line.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match (log.log_format, log.disable_timestamp) {
        (LogFormat::Json, true) => builder.json().without_time().init(),
        (LogFormat::Json, false) => builder.json().init(),
        (LogFormat::Text, no_time) => {
            let builder = builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
            if no_time {
                builder.without_time().init()
            } else {
                builder.init()
            }
        }
    }
}

/// The CURVE keys of a subscribing command (`ferry watch`, `ferry crdt-client`) from its
/// `--curve-server-key` and `--curve-secret-key-file`: none without a server key; the
/// client's public key told on stderr (what a notifier's curve_client_keys_file must hold).
fn curve_client_keys(
    command: &str,
    server: &Option<String>,
    secret_file: &Option<PathBuf>,
) -> Result<Option<ferry::notify::CurveClientKeys>, ExitCode> {
    match (server, secret_file) {
        (None, None) => Ok(None),
        (None, Some(_)) => {
            eprintln!("ferry {command}: --curve-secret-key-file needs --curve-server-key");
            Err(ExitCode::FAILURE)
        }
        (Some(server), file) => {
            match ferry::notify::CurveClientKeys::new(server, file.as_deref()) {
                Ok(keys) => {
                    eprintln!("CURVE client public key {}", keys.public_z85());
                    Ok(Some(keys))
                }
                Err(e) => {
                    eprintln!("ferry {command}: {e}");
                    Err(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// `ferry watch`: subscribe and print `topic json` lines until interrupted.
fn watch(cmd: WatchCmd) -> ExitCode {
    let endpoints = if cmd.endpoint.is_empty() {
        vec!["tcp://localhost:5555".to_owned()]
    } else {
        cmd.endpoint
    };
    let curve = match curve_client_keys("watch", &cmd.curve_server_key, &cmd.curve_secret_key_file)
    {
        Ok(curve) => curve,
        Err(code) => return code,
    };
    match ferry::notify::watch(
        &endpoints,
        &cmd.topic,
        curve.as_ref(),
        &mut std::io::stdout(),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry watch: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `ferry verify FILE`: the report on stdout; the exit code says sound (0), damaged (1) or
/// unreadable (2).
fn verify(cmd: VerifyCmd) -> ExitCode {
    let file = cmd.file.display();
    let report = match ferry::store::verify::verify_file(&cmd.file) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry verify: {e}");
            return ExitCode::from(2);
        }
    };
    let base = match report.base {
        Some((seq, _)) => format!(", pruned up to base_seq {seq}"),
        None => String::new(),
    };
    let range = if report.entries == 0 {
        "the log is empty".to_owned()
    } else {
        format!("seq {}..={}", report.first_seq, report.last_seq)
    };
    let counts = format!(
        "{} entries checked ({range}{base}), {} keys checked",
        report.entries, report.keys
    );
    if report.is_ok() {
        println!("{file}: OK: integrity_check ok, crc chain ok, kv matches the log; {counts}");
        return ExitCode::SUCCESS;
    }
    let problems = report.problems.len() as u64 + report.unlisted;
    let plural = if problems == 1 { "" } else { "s" };
    println!("{file}: CORRUPT: {problems} problem{plural}; {counts}");
    for p in &report.problems {
        println!("  {p}");
    }
    if report.unlisted > 0 {
        println!("  ... and {} more", report.unlisted);
    }
    ExitCode::FAILURE
}

fn crdt_client(cmd: CrdtClientCmd) -> ExitCode {
    let pairs = if cmd.zmq.is_empty() {
        vec![
            "ad-campaign-dc1=tcp://localhost:5555".to_owned(),
            "ad-campaign-dc2=tcp://localhost:5556".to_owned(),
        ]
    } else {
        cmd.zmq
    };
    let mut subscriptions = Vec::new();
    for p in pairs {
        match p.split_once('=') {
            Some((ns, endpoint)) if !ns.is_empty() && !endpoint.is_empty() => {
                subscriptions.push((ns.to_owned(), endpoint.to_owned()))
            }
            _ => {
                eprintln!(
                    "ferry crdt-client: --zmq {p:?} is not namespace=endpoint (e.g. ad-campaign-dc1=tcp://localhost:5555)"
                );
                return ExitCode::from(2);
            }
        }
    }
    let curve = match curve_client_keys(
        "crdt-client",
        &cmd.curve_server_key,
        &cmd.curve_secret_key_file,
    ) {
        Ok(curve) => curve,
        Err(code) => return code,
    };
    let opts = ferry::crdt::client::Options {
        subscriptions,
        http: cmd.http,
        json: cmd.json,
        curve,
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    match runtime.block_on(async { ferry::crdt::client::run(opts, shutdown_signal()).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry crdt-client: {e}");
            ExitCode::FAILURE
        }
    }
}

fn demo(cmd: DemoCmd) -> ExitCode {
    let load = |name: &str| Config::load(&cmd.configs.join(name));
    let configs = match (load("dc1.toml"), load("dc2.toml"), load("relayer.toml")) {
        (Ok(a), Ok(b), Ok(c)) => [a, b, c],
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("ferry demo: {e} (run it from the repository root, or pass --configs DIR)");
            return ExitCode::from(USAGE);
        }
    };
    init_tracing(&configs[0]);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    match runtime.block_on(async { ferry::demo::run(configs, shutdown_signal()).await }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferry demo: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// `ferry status --target URL`: what a node says of itself on `/health`, `/ready` and each
/// namespace's `/stats`, on one screen.
fn status(cmd: StatusCmd) -> ExitCode {
    let base = if cmd.target.contains("://") {
        cmd.target.trim_end_matches('/').to_owned()
    } else {
        format!("http://{}", cmd.target.trim_end_matches('/'))
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    match runtime.block_on(node_status(&base)) {
        Ok((text, ready)) => {
            print!("{text}");
            if ready {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("ferry status: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The summary text, and whether the node is ready.
async fn node_status(base: &str) -> anyhow::Result<(String, bool)> {
    use anyhow::Context;
    use serde_json::Value;
    use std::fmt::Write;
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let get = async |path: &str| -> anyhow::Result<Value> {
        let url = format!("{base}{path}");
        let resp = client.get(&url).send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach {url} ({}): is the node running, and is this its HTTP address?",
                error_chain(&e)
            )
        })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .with_context(|| format!("{url}: {status}"))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{url}: {status}: not a ferry node's JSON: {text:.200}"))
    };
    let health = get("/health").await?;
    let ready = get("/ready").await?;
    let role = health["role"].as_str().unwrap_or("?");
    let is_ready = ready["status"] == "ready";
    let mut out = String::new();
    writeln!(
        out,
        "{base}: {role}, {}",
        if is_ready { "ready" } else { "NOT READY" }
    )?;
    let names: Vec<&str> = health["namespaces"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for ns in names {
        let st = get(&format!("/api/v1/{ns}/stats")).await?;
        let n = |v: &Value| v.as_i64().map_or("?".to_owned(), |n| n.to_string());
        writeln!(
            out,
            "  {ns}: {} head {} ({} keys), {}",
            st["role"].as_str().unwrap_or("?"),
            n(&st["head_seq"]),
            n(&st["keys"]),
            st["ready"].as_str().unwrap_or("?"),
        )?;
        let r = &st["replication"];
        if r.is_object() {
            let lag = r["lag"]
                .as_i64()
                .map_or("unknown".to_owned(), |l| l.to_string());
            write!(
                out,
                "    upstream {} {}: applied {} of {}, lag {lag}",
                r["upstream"].as_str().unwrap_or("?"),
                r["state"].as_str().unwrap_or("?"),
                n(&r["applied_seq"]),
                n(&r["upstream_head_seq"]),
            )?;
            match r["last_error"].as_str() {
                Some(e) => writeln!(out, "; last error: {e}")?,
                None => writeln!(out)?,
            }
        }
        let followers = st["followers"].as_array().cloned().unwrap_or_default();
        if followers.is_empty() && !r.is_object() {
            writeln!(out, "    no followers connected")?;
        }
        for f in &followers {
            writeln!(
                out,
                "    follower {} at {}: applied {}, lag {}",
                f["id"].as_str().unwrap_or("?"),
                f["address"].as_str().unwrap_or("?"),
                n(&f["applied_seq"]),
                n(&f["lag"]),
            )?;
        }
        if st["notifier"].is_object() {
            writeln!(
                out,
                "    notifier: {} sent, {} topics subscribed",
                n(&st["notifier"]["sent"]),
                n(&st["notifier"]["subscribed_topics"]),
            )?;
        }
    }
    Ok((out, is_ready))
}
