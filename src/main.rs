//! The `ferry` binary: parses the command line, loads the config, runs a command.

use std::path::PathBuf;
use std::process::ExitCode;

use argh::FromArgs;
use ferry::config::Config;
use ferry::node::{Listeners, Mode, Node};

/// ferry: a log-shipping database on SQLite. Primaries take writes over HTTP; replicas tail
/// their logs over gRPC.
#[derive(FromArgs)]
struct Cli {
    #[argh(subcommand)]
    command: Command,
}

#[derive(FromArgs)]
#[argh(subcommand)]
enum Command {
    Server(ServerCmd),
    Replica(ReplicaCmd),
    Watch(WatchCmd),
}

/// Run a primary: owns the namespaces in storage_config.namespaces and takes writes on HTTP.
#[derive(FromArgs)]
#[argh(subcommand, name = "server")]
struct ServerCmd {
    /// path to the TOML config file, e.g. configs/dc1.toml (`-config FILE` works too)
    #[argh(option, short = 'c')]
    config: PathBuf,
}

/// Run a read-only replica: follows each [relayer_config.NAME]'s namespaces from its
/// upstream_address over gRPC, serves reads, publishes ZeroMQ notifications.
#[derive(FromArgs)]
#[argh(subcommand, name = "replica")]
struct ReplicaCmd {
    /// path to the TOML config file, e.g. configs/relayer.toml (`-config FILE` works too)
    #[argh(option, short = 'c')]
    config: PathBuf,
}

/// Print the ZeroMQ change notifications of a node, one line per entry.
#[derive(FromArgs)]
#[argh(subcommand, name = "watch")]
struct WatchCmd {
    /// zeroMQ endpoint to subscribe to (default tcp://localhost:5555); repeat for several
    #[argh(option, short = 'e')]
    endpoint: Vec<String>,
    /// topic prefix to subscribe to, e.g. ad-campaign-dc1.kv (default: everything)
    #[argh(option, short = 't', default = "String::new()")]
    topic: String,
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

fn main() -> ExitCode {
    let args = go_style_args(std::env::args().collect());
    let strs: Vec<&str> = args.iter().map(String::as_str).collect();
    let cli = match Cli::from_args(&["ferry"], &strs[1..]) {
        Ok(cli) => cli,
        Err(early) => {
            return match early.status {
                Ok(()) => {
                    println!("{}", early.output);
                    ExitCode::SUCCESS
                }
                Err(()) => {
                    eprintln!("{}", early.output);
                    ExitCode::from(2)
                }
            };
        }
    };
    let (config_path, mode) = match cli.command {
        Command::Server(c) => (c.config, Mode::Primary),
        Command::Replica(c) => (c.config, Mode::Replica),
        Command::Watch(w) => return watch(w),
    };
    let config = match Config::load(&config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_tracing(&config);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime starts");
    match runtime.block_on(run(config, mode)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("ferry: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, mode: Mode) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&config).await?;
    let node = Node::start(config, mode, listeners).await?;
    shutdown_signal().await;
    tracing::info!("shutdown requested; finishing in-flight requests");
    node.shutdown().await;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `log_config.log_level` sets the level; `RUST_LOG`, when set, overrides it.
fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log_config.log_level.to_ascii_lowercase()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if config.log_config.disable_timestamp {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// `ferry watch`: subscribe and print `topic json` lines until interrupted.
fn watch(cmd: WatchCmd) -> ExitCode {
    let endpoints = if cmd.endpoint.is_empty() {
        vec!["tcp://localhost:5555".to_owned()]
    } else {
        cmd.endpoint
    };
    let ctx = zmq::Context::new();
    let socket = match ctx.socket(zmq::SUB) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ferry watch: {e}");
            return ExitCode::FAILURE;
        }
    };
    for e in &endpoints {
        if let Err(err) = socket.connect(e) {
            eprintln!("ferry watch: cannot connect to {e}: {err}");
            return ExitCode::FAILURE;
        }
        eprintln!("watching {e}");
    }
    if let Err(e) = socket.set_subscribe(cmd.topic.as_bytes()) {
        eprintln!("ferry watch: {e}");
        return ExitCode::FAILURE;
    }
    loop {
        match socket.recv_multipart(0) {
            Ok(frames) => {
                let text: Vec<String> = frames
                    .iter()
                    .map(|f| String::from_utf8_lossy(f).into_owned())
                    .collect();
                println!("{}", text.join(" "));
            }
            Err(e) => {
                eprintln!("ferry watch: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
}
