//! Config files: the walkthrough's own files load unchanged; mistakes are refused clearly.

use std::path::Path;

use ferry::config::{Config, ConfigError, LogFormat, LogLevel, Synchronous};

fn repo_config(name: &str) -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("configs")
        .join(name);
    Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn the_walkthrough_configs_load_unchanged() {
    let dc1 = repo_config("dc1.toml");
    assert_eq!(dc1.http_port, 8001);
    assert_eq!(dc1.grpc_config.as_ref().unwrap().port, 4001);
    assert_eq!(dc1.storage_config.namespaces, ["ad-campaign-dc1"]);
    assert_eq!(
        dc1.storage_config.base_dir,
        Path::new("/tmp/unisondb/examples/dc1")
    );
    assert_eq!(dc1.storage_config.synchronous, Synchronous::Full);
    // No listen_ip in the file: private to the machine by default (#10).
    assert_eq!(dc1.listen_ip.to_string(), "127.0.0.1");
    assert_eq!(dc1.log_config.log_level, LogLevel::Info);
    assert_eq!(dc1.log_config.log_format, LogFormat::Text);
    assert!(!dc1.log_config.access_log);
    // The walkthrough's sizes and durations in the tables ferry ignores are read, not skipped.
    assert_eq!(dc1.storage_config.bytes_per_sync, Some(1 << 20));
    assert_eq!(dc1.storage_config.segment_size, Some(16 << 20));
    let notify = dc1.write_notify_config.as_ref().unwrap();
    assert_eq!(notify.max_delay, Some(std::time::Duration::from_millis(20)));
    assert!(dc1.log_config.disable_timestamp);
    let ignored: Vec<_> = dc1.ignored_keys().into_iter().map(|(k, _)| k).collect();
    for key in [
        "storage_config.bytes_per_sync",
        "storage_config.segment_size",
        "storage_config.arena_size",
        "storage_config.wal_cleanup_config.min_segments/max_segments",
        "write_notify_config",
        "log_config.min_level_percents",
    ] {
        assert!(
            ignored.contains(&key),
            "{key} not reported as ignored: {ignored:?}"
        );
    }

    // The walkthrough's retention is ferry's: enabled, every 5 minutes, 5 hours of log.
    let cleanup = dc1.storage_config.wal_cleanup_config.as_ref().unwrap();
    assert!(cleanup.enabled);
    assert_eq!(cleanup.interval, std::time::Duration::from_secs(300));
    assert_eq!(
        cleanup.max_age,
        Some(std::time::Duration::from_secs(5 * 3600))
    );
    assert_eq!(cleanup.max_entries, None);

    let dc2 = repo_config("dc2.toml");
    assert_eq!(dc2.http_port, 8002);
    assert_eq!(dc2.grpc_config.as_ref().unwrap().port, 4002);
    assert_eq!(dc2.storage_config.namespaces, ["ad-campaign-dc2"]);

    let relayer = repo_config("relayer.toml");
    assert_eq!(relayer.http_port, 8003);
    assert!(relayer.grpc_config.is_none());
    assert_eq!(
        relayer.relayer_config["relayer1"].upstream_address,
        "127.0.0.1:4001"
    );
    assert_eq!(
        relayer.relayer_config["relayer2"].namespaces,
        ["ad-campaign-dc2"]
    );
    assert_eq!(relayer.notifier_config["ad-campaign-dc1"].bind_port, 5555);
    assert_eq!(relayer.notifier_config["ad-campaign-dc2"].bind_port, 5556);
    assert_eq!(
        relayer.notifier_config["ad-campaign-dc2"].high_water_mark,
        1000
    );
}

fn parse_err(text: &str) -> String {
    match Config::parse(text, Path::new("/etc/ferry/node.toml")) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e.to_string(),
    }
}

const MINIMAL: &str =
    "http_port = 8001\n[storage_config]\nbase_dir = \"/tmp/x\"\nnamespaces = [\"a\"]\n";

#[test]
fn an_unknown_key_is_an_error_naming_the_key_and_the_file() {
    let err = parse_err(&MINIMAL.replace("http_port", "htp_port"));
    assert!(
        err.contains("htp_port") && err.contains("/etc/ferry/node.toml"),
        "{err}"
    );
    let err = parse_err(&format!("{MINIMAL}segment_sise = \"16MB\"\n"));
    assert!(err.contains("segment_sise"), "{err}");
    let err = parse_err(&format!("{MINIMAL}[grpc_config]\nport = 1\nprot = 2\n"));
    assert!(err.contains("prot"), "{err}");
}

#[test]
fn bad_namespace_names_are_refused() {
    for bad in [
        "../etc/passwd",
        "a/b",
        "..",
        ".hidden",
        "",
        "sp ace",
        "a\\\\b",
    ] {
        let err = parse_err(&MINIMAL.replace("[\"a\"]", &format!("[\"{bad}\"]")));
        assert!(err.contains("namespace name"), "{bad:?}: {err}");
    }
    for good in ["ad-campaign-dc1", "a.b_c-9", "X"] {
        Config::parse(
            &MINIMAL.replace("[\"a\"]", &format!("[\"{good}\"]")),
            Path::new("x"),
        )
        .unwrap();
    }
}

#[test]
fn other_invalid_values_are_refused_with_the_reason() {
    let cases = [
        (MINIMAL.replace("[\"a\"]", "[]"), "namespaces is empty"),
        (
            MINIMAL.replace("[\"a\"]", "[\"a\", \"a\"]"),
            "lists \"a\" twice",
        ),
        (
            format!("{MINIMAL}synchronous = \"sometimes\"\n"),
            "sometimes",
        ),
        (
            format!("{MINIMAL}[log_config]\nlog_level = \"loud\"\n"),
            "log_level \"loud\"",
        ),
        (
            format!("{MINIMAL}[notifier_config.b]\nbind_port = 5555\n"),
            "notifier_config.b",
        ),
        (
            format!(
                "{MINIMAL}[relayer_config.r]\nnamespaces = [\"z\"]\nupstream_address = \"h:1\"\n"
            ),
            "\"z\"",
        ),
        (MINIMAL.replace("8001", "\"eighty\""), "http_port"),
        (
            format!(
                "{MINIMAL}[relayer_config.r1]\nnamespaces = [\"a\"]\nupstream_address = \"h:1\"\n[relayer_config.r2]\nnamespaces = [\"a\"]\nupstream_address = \"h:2\"\n"
            ),
            "followed by both relayer_config.r1 and relayer_config.r2",
        ),
    ];
    for (text, needle) in cases {
        let err = parse_err(&text);
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
}

#[test]
fn a_missing_config_file_names_the_path() {
    let err = Config::load(Path::new("/no/such/ferry.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("/no/such/ferry.toml"), "{err}");
}

#[test]
fn retention_durations_and_limits_are_checked() {
    use ferry::config::parse_duration;
    assert_eq!(
        parse_duration("5m"),
        Ok(std::time::Duration::from_secs(300))
    );
    assert_eq!(
        parse_duration("250ms"),
        Ok(std::time::Duration::from_millis(250))
    );
    assert_eq!(
        parse_duration("1h30m"),
        Ok(std::time::Duration::from_secs(5400))
    );
    assert_eq!(
        parse_duration("2d"),
        Ok(std::time::Duration::from_secs(172_800))
    );
    for bad in ["", "5", "m", "5 minutes", "-1s", "1.5h"] {
        assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
    }
    let with = |table: &str| {
        let text = format!(
            "http_port = 0\n[storage_config]\nbase_dir = \"/x\"\nnamespaces = [\"ns\"]\n[storage_config.wal_cleanup_config]\n{table}"
        );
        Config::parse(&text, Path::new("r.toml")).map(|_| ())
    };
    assert!(with("enabled = true\nmax_entries = 10\n").is_ok());
    let err = |table: &str| with(table).unwrap_err().to_string();
    assert!(err("enabled = true\n").contains("neither max_age nor max_entries"));
    assert!(
        err("enabled = true\nmax_age = \"5 hours\"\n").contains("invalid duration \"5 hours\"")
    );
    assert!(err("enabled = true\nmax_entries = 0\n").contains("max_entries must be at least 1"));
    assert!(
        err("enabled = true\nmax_entries = 5\ninterval = \"0s\"\n")
            .contains("interval must be greater than 0")
    );
    assert!(err("enabled = true\nmax_entriez = 5\n").contains("max_entriez"));
    // Disabled retention needs no limits (and prunes nothing).
    assert!(with("enabled = false\n").is_ok());
}

#[test]
fn failover_keys_are_checked() {
    let base = "http_port = 0\n[storage_config]\nbase_dir = \"/x\"\nnamespaces = [\"ns\"]\n";
    let parse = |extra: &str| Config::parse(&format!("{base}{extra}"), Path::new("f.toml"));
    let relayer = |line: &str| {
        parse(&format!(
            "[relayer_config.up]\nnamespaces = [\"ns\"]\nupstream_address = \"127.0.0.1:1\"\n{line}\n"
        ))
    };
    let ok = relayer("on_divergence = \"stop\"\nmax_lag = 0").unwrap();
    let r = &ok.relayer_config["up"];
    assert_eq!(
        (r.on_divergence, r.max_lag),
        (ferry::replication::OnDivergence::Stop, 0)
    );
    let defaults = relayer("").unwrap();
    assert_eq!(defaults.relayer_config["up"].max_lag, 10_000);
    let err = relayer("on_divergence = \"ignore\"")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ignore") && err.contains("rebootstrap"),
        "{err}"
    );
    let err = relayer("max_lag = -1").unwrap_err().to_string();
    assert!(err.contains("max_lag must be 0 or more"), "{err}");

    let acks = parse("[acks_config.ns]\nacks = 2\n").unwrap();
    assert_eq!(
        (
            acks.acks_config["ns"].acks,
            acks.acks_config["ns"].timeout_ms
        ),
        (2, 5000)
    );
    let err = parse("[acks_config.other]\nacks = 1\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("acks_config.other") && err.contains("not in storage_config"),
        "{err}"
    );
    for bad in ["0", "60001"] {
        let err = parse(&format!("[acks_config.ns]\ntimeout_ms = {bad}\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("timeout_ms must be 1 to 60000"),
            "{bad}: {err}"
        );
    }
    let err = parse("[acks_config.ns]\nack = 1\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("ack"), "{err}");
}

#[test]
fn an_invalid_upstream_address_is_an_error_naming_the_key() {
    let relayer = |addr: &str| {
        format!(
            "{MINIMAL}[relayer_config.dc1]\nnamespaces = [\"a\"]\nupstream_address = {addr:?}\n"
        )
    };
    for bad in [
        "",
        "not an address",
        "http://127.0.0.1:9599",
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:99999",
        "host:port",
        ":4001",
        "::1:4001",
        "[::1]",
        "[nope]:4001",
        "dc1/x:4001",
    ] {
        let err = parse_err(&relayer(bad));
        assert!(
            err.contains("relayer_config.dc1.upstream_address")
                && err.contains(&format!("{bad:?} is not host:port")),
            "{bad:?}: {err}"
        );
    }
    let err = parse_err(&relayer("http://127.0.0.1:9599"));
    assert!(err.contains("no scheme"), "{err}");
    for good in [
        "127.0.0.1:4001",
        "dc1.example.com:4001",
        "[::1]:4001",
        "localhost:1",
    ] {
        let config = Config::parse(&relayer(good), Path::new("r.toml"))
            .unwrap_or_else(|e| panic!("{good:?}: {e}"));
        assert_eq!(config.relayer_config["dc1"].upstream_address, good);
    }
}

#[test]
fn unknown_keys_inside_the_ignored_tables_are_errors() {
    let cases = [
        (
            "[write_notify_config]\nenabled = true\nmax_dealy = \"20ms\"\n",
            "max_dealy",
        ),
        (
            "[log_config.min_level_percents]\ninfo = 10.0\ninfos = 10.0\n",
            "infos",
        ),
        ("[log_config]\nlog_levle = \"info\"\n", "log_levle"),
        (
            "[relayer_config.r]\nnamespaces = [\"a\"]\nupstream_address = \"h:1\"\nsegment_lag_treshold = 10\n",
            "segment_lag_treshold",
        ),
        (
            "[storage_config.wal_cleanup_config]\nmin_segments = 5\nmax_segmentz = 10\n",
            "max_segmentz",
        ),
        (
            "[notifier_config.a]\nbind_port = 0\nlinger_tme = 1\n",
            "linger_tme",
        ),
    ];
    for (table, key) in cases {
        let err = parse_err(&format!("{MINIMAL}{table}"));
        assert!(
            err.contains(&format!("unknown field `{key}`")) && err.contains("/etc/ferry/node.toml"),
            "{key}: {err}"
        );
    }
    // The values of ignored keys are checked too: a wrong type or form is a mistake.
    let cases = [
        (
            "[write_notify_config]\nmax_delay = \"soon\"\n",
            "invalid duration \"soon\"",
        ),
        (
            "[write_notify_config]\nenabled = \"yes\"\n",
            "enabled = \"yes\"",
        ),
        (
            "[log_config.min_level_percents]\ninfo = \"ten\"\n",
            "info = \"ten\"",
        ),
    ];
    for (table, needle) in cases {
        let err = parse_err(&format!("{MINIMAL}{table}"));
        assert!(err.contains(needle), "{needle}: {err}");
    }
    let storage = |line: &str| {
        MINIMAL.replace(
            "namespaces = [\"a\"]\n",
            &format!("namespaces = [\"a\"]\n{line}\n"),
        )
    };
    let err = parse_err(&storage("segment_size = \"16 parsecs\""));
    assert!(
        err.contains("segment_size") && err.contains("invalid size \"16 parsecs\""),
        "{err}"
    );
}

#[test]
fn sizes_take_the_walkthroughs_forms() {
    use ferry::config::parse_size;
    for (text, bytes) in [
        ("4096", 4096),
        ("1MB", 1 << 20),
        ("64KB", 64 << 10),
        ("64kb", 64 << 10),
        ("16 MiB", 16 << 20),
        ("2GB", 2 << 30),
        ("10B", 10),
        ("0", 0),
    ] {
        assert_eq!(parse_size(text), Ok(bytes), "{text}");
    }
    for bad in [
        "",
        "MB",
        "1.5MB",
        "-1MB",
        "1 MBs",
        "1TB",
        "99999999999999999999",
        "17179869184GB",
    ] {
        assert!(parse_size(bad).is_err(), "{bad:?} accepted");
    }
    let http = |value: &str| {
        Config::parse(
            &format!("{MINIMAL}[http_config]\nmax_body_bytes = {value}\n"),
            Path::new("s.toml"),
        )
    };
    assert_eq!(http("\"1MB\"").unwrap().http_config.max_body_bytes, 1 << 20);
    assert_eq!(http("\"64KB\"").unwrap().http_config.max_body_bytes, 65536);
    assert_eq!(http("2048").unwrap().http_config.max_body_bytes, 2048);
    for (value, needle) in [
        ("\"lots\"", "invalid size \"lots\""),
        ("-1", "invalid size -1"),
        ("true", "expected a size"),
        ("0", "max_body_bytes must be greater than 0"),
        ("\"0KB\"", "max_body_bytes must be greater than 0"),
    ] {
        let err = http(value).unwrap_err().to_string();
        assert!(
            err.contains(needle) && err.contains("max_body_bytes"),
            "{value}: {err}"
        );
    }
}

#[test]
fn durations_take_the_walkthroughs_forms() {
    let acks = |value: &str| {
        Config::parse(
            &format!("{MINIMAL}[acks_config.a]\nacks = 1\ntimeout_ms = {value}\n"),
            Path::new("d.toml"),
        )
        .map(|c| c.acks_config["a"].timeout_ms)
    };
    assert_eq!(acks("1500").unwrap(), 1500);
    assert_eq!(acks("\"2s\"").unwrap(), 2000);
    assert_eq!(acks("\"20ms\"").unwrap(), 20);
    for (value, needle) in [
        ("\"2 seconds\"", "invalid duration \"2 seconds\""),
        ("-5", "invalid duration -5"),
        ("\"2m\"", "timeout_ms must be 1 to 60000, got 120000"),
    ] {
        let err = acks(value).unwrap_err().to_string();
        assert!(
            err.contains(needle) && err.contains("timeout_ms"),
            "{value}: {err}"
        );
    }
    // The notifier's linger_time (the walkthrough writes milliseconds) takes both forms too.
    let linger = |value: &str| {
        Config::parse(
            &format!("{MINIMAL}[notifier_config.a]\nbind_port = 0\nlinger_time = {value}\n"),
            Path::new("d.toml"),
        )
        .map(|c| c.notifier_config["a"].linger_time)
    };
    assert_eq!(linger("250").unwrap(), 250);
    assert_eq!(linger("\"1s\"").unwrap(), 1000);
    let err = linger("\"2d\"").unwrap_err().to_string();
    assert!(err.contains("linger_time must be at most"), "{err}");
}

/// The notifier's limits: defaults as documented, and values that would leave a subscriber
/// unbounded (a queue of 0, which libzmq read as unlimited) or a node unreachable are errors
/// naming the key. (Catches: high_water_mark = 0 accepted, an unchecked max_subscribers or
/// handshake_timeout, client keys without a server key.)
#[test]
fn notifier_limits_have_defaults_and_refuse_unbounded_values() {
    let notifier = |keys: &str| {
        Config::parse(
            &format!("{MINIMAL}[notifier_config.a]\nbind_port = 0\n{keys}\n"),
            Path::new("n.toml"),
        )
        .map(|c| c.notifier_config["a"].clone())
    };
    let n = notifier("").unwrap();
    assert_eq!(n.high_water_mark, 1000);
    assert_eq!(n.max_subscribers, 1024);
    assert_eq!(n.handshake_timeout, std::time::Duration::from_secs(10));
    assert_eq!(n.max_subscription_bytes, 256);
    assert!(n.curve_secret_key_file.is_none());
    for (keys, needle) in [
        (
            "high_water_mark = 0",
            "high_water_mark must be 1 to 1000000",
        ),
        (
            "high_water_mark = 1000001",
            "high_water_mark must be 1 to 1000000",
        ),
        ("max_subscribers = 0", "max_subscribers must be at least 1"),
        (
            "handshake_timeout = \"0s\"",
            "handshake_timeout must be more than 0",
        ),
        (
            "curve_client_keys_file = \"c.keys\"",
            "curve_client_keys_file needs curve_secret_key_file",
        ),
    ] {
        let err = notifier(keys).unwrap_err().to_string();
        assert!(err.contains(needle), "{keys}: {err}");
    }
}

#[test]
fn log_keys_are_typed() {
    let log = |table: &str| {
        Config::parse(
            &format!("{MINIMAL}[log_config]\n{table}\n"),
            Path::new("l.toml"),
        )
        .map(|c| c.log_config)
    };
    for (text, level) in [
        ("trace", LogLevel::Trace),
        ("debug", LogLevel::Debug),
        ("INFO", LogLevel::Info),
        ("warn", LogLevel::Warn),
        ("warning", LogLevel::Warn),
        ("error", LogLevel::Error),
    ] {
        assert_eq!(
            log(&format!("log_level = {text:?}")).unwrap().log_level,
            level
        );
    }
    let c = log("log_format = \"json\"\naccess_log = true").unwrap();
    assert_eq!((c.log_format, c.access_log), (LogFormat::Json, true));
    assert_eq!(
        log("log_format = \"text\"").unwrap().log_format,
        LogFormat::Text
    );
    let err = log("log_format = \"xml\"").unwrap_err().to_string();
    assert!(err.contains("log_format") && err.contains("xml"), "{err}");
    let err = log("access_log = \"yes\"").unwrap_err().to_string();
    assert!(err.contains("access_log"), "{err}");
}

/// contrib/ferry.toml loads, and the Dockerfile and the systemd unit agree with it: the
/// ports the image exposes are the ones it listens on, its data lives in the volume / state
/// directory.
#[test]
fn the_packaging_examples_agree_with_their_config() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let config = Config::load(&root.join("ferry.toml")).unwrap();
    let base_dir = config.storage_config.base_dir.display().to_string();
    let mut ports = vec![config.http_port, config.grpc_config.as_ref().unwrap().port];
    ports.extend(config.notifier_config.values().map(|n| n.bind_port));
    ports.sort();

    let docker = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let line = |prefix: &str| {
        docker
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in the Dockerfile"))
            .trim()
            .to_owned()
    };
    let mut exposed: Vec<u16> = line("EXPOSE ")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    exposed.sort();
    assert_eq!(exposed, ports);
    assert_eq!(line("VOLUME "), format!("[{base_dir:?}]"));
    assert_eq!(line("USER "), "ferry:ferry");
    assert!(docker.contains("cargo build --release --locked"));

    let unit = std::fs::read_to_string(root.join("ferry.service")).unwrap();
    assert!(unit.contains("\nStateDirectory=ferry\n"));
    assert_eq!(base_dir, "/var/lib/ferry");
    assert!(
        unit.contains("\nExecStart=/usr/local/bin/ferry server --config /etc/ferry/ferry.toml\n")
    );
    // A config error exits 2: systemd must not restart into it forever.
    assert!(unit.contains("\nRestartPreventExitStatus=2\n"));
}

#[test]
fn performance_keys_have_defaults_and_refuse_bad_values() {
    let perf = |keys: &str| {
        Config::parse(
            &format!("{MINIMAL}[storage_config.performance_config]\n{keys}\n"),
            Path::new("p.toml"),
        )
        .map(|c| c.storage_config.performance_config)
    };
    let p = perf("").unwrap();
    assert_eq!(p.checkpoint_pages, 1000);
    assert_eq!(p.max_seq_waiters, 10_000);
    assert_eq!(p.mmap_size, 0);
    assert_eq!(
        perf("mmap_size = 2147418112").unwrap().mmap_size,
        0x7fff_0000
    );
    for (keys, needle) in [
        (
            "checkpoint_pages = 0",
            "checkpoint_pages must be at least 1",
        ),
        ("max_seq_waiters = 0", "max_seq_waiters must be at least 1"),
        (
            "mmap_size = 2147418113",
            "mmap_size must be at most 2147418112 bytes",
        ),
        ("mmap_size = -1", "mmap_size"),
    ] {
        let err = perf(keys).unwrap_err().to_string();
        assert!(err.contains(needle), "{keys}: {err}");
    }
}
