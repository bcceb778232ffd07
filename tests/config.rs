//! Config files: the walkthrough's own files load unchanged; mistakes are refused clearly.

use std::path::Path;

use ferry::config::{Config, ConfigError, Synchronous};

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
    assert_eq!(dc1.log_config.log_level, "info");
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
