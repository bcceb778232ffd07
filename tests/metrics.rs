//! `/metrics` is strictly valid Prometheus text (format 0.0.4) and has what an operator
//! graphs: latency histograms (HTTP by route class, commits), the group-commit size, build
//! info and the process's resources. The checker here is written from the format's
//! specification, independently of the crate that encodes it.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A metric family: its TYPE and samples.
#[derive(Debug, Default)]
struct MetricFamily {
    kind: String,
    help: bool,
    samples: Vec<Sample>,
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    is_name(s) && !s.contains(':')
}

fn parse_value(s: &str) -> f64 {
    match s {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        _ => s
            .parse()
            .unwrap_or_else(|_| panic!("bad sample value {s:?}")),
    }
}

/// Parses `{a="x",b="y"}` (escapes \\, \" and \n) and returns the labels and the rest.
fn parse_labels(s: &str) -> (BTreeMap<String, String>, &str) {
    let mut labels = BTreeMap::new();
    let Some(mut rest) = s.strip_prefix('{') else {
        return (labels, s);
    };
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return (labels, r);
        }
        let eq = rest.find('=').expect("label without =");
        let name = &rest[..eq];
        assert!(is_label_name(name), "bad label name {name:?}");
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .expect("label value not quoted");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().expect("unterminated label value") {
                (i, '"') => break i,
                (_, '\\') => match chars.next().unwrap().1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => panic!("bad escape \\{c}"),
                },
                (_, c) => value.push(c),
            }
        };
        assert!(
            labels.insert(name.to_owned(), value).is_none(),
            "label {name} twice"
        );
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// The family a sample belongs to, given the families declared so far.
fn family_of<'a>(name: &'a str, declared: &BTreeMap<String, MetricFamily>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && declared.get(base).is_some_and(|f| f.kind == "histogram")
        {
            return base;
        }
    }
    name
}

/// Parses and checks the whole text; returns the families by name.
fn parse_strict(text: &str) -> BTreeMap<String, MetricFamily> {
    assert!(text.ends_with('\n'), "the text must end with a newline");
    let mut families: BTreeMap<String, MetricFamily> = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut finished = BTreeSet::new();
    let mut series = BTreeSet::new();
    for line in text.lines() {
        assert!(!line.is_empty(), "empty line");
        if let Some(rest) = line.strip_prefix("# ") {
            let mut words = rest.splitn(3, ' ');
            let (keyword, name) = (words.next().unwrap(), words.next().unwrap_or(""));
            if keyword != "HELP" && keyword != "TYPE" {
                continue;
            }
            assert!(is_name(name), "bad metric name in {line:?}");
            if current.as_deref() != Some(name) {
                if let Some(c) = current.take() {
                    finished.insert(c);
                }
                assert!(!finished.contains(name), "family {name} split: {line:?}");
                current = Some(name.to_owned());
            }
            let family = families.entry(name.to_owned()).or_default();
            match keyword {
                "HELP" => {
                    assert!(!family.help, "two HELP lines for {name}");
                    family.help = true;
                }
                _ => {
                    assert!(family.kind.is_empty(), "two TYPE lines for {name}");
                    assert!(family.samples.is_empty(), "TYPE after samples of {name}");
                    let kind = words.next().unwrap_or("");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "bad type in {line:?}"
                    );
                    family.kind = kind.to_owned();
                }
            }
            continue;
        }
        assert!(!line.starts_with('#'), "a comment needs a space: {line:?}");
        let name_end = line.find(['{', ' ']).expect("sample without value");
        let name = &line[..name_end];
        assert!(is_name(name), "bad metric name in {line:?}");
        let (labels, rest) = parse_labels(&line[name_end..]);
        let mut parts = rest
            .strip_prefix(' ')
            .expect("no space before value")
            .split(' ');
        let value = parse_value(parts.next().unwrap());
        if let Some(ts) = parts.next() {
            ts.parse::<i64>().expect("bad timestamp");
        }
        assert!(parts.next().is_none(), "trailing text in {line:?}");
        let family = family_of(name, &families).to_owned();
        if current.as_deref() != Some(family.as_str()) {
            if let Some(c) = current.take() {
                finished.insert(c);
            }
            assert!(
                !finished.contains(&family),
                "family {family} split: {line:?}"
            );
            current = Some(family.clone());
        }
        assert!(
            series.insert(format!("{name}{labels:?}")),
            "duplicate series {line:?}"
        );
        families.entry(family).or_default().samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    for (name, f) in &families {
        assert!(f.help && !f.kind.is_empty(), "{name} lacks HELP or TYPE");
        match f.kind.as_str() {
            "counter" => {
                assert!(
                    name.ends_with("_total"),
                    "counter {name} must end in _total"
                );
                for s in &f.samples {
                    assert!(s.value >= 0.0, "negative counter {s:?}");
                }
            }
            "histogram" => check_histogram(name, f),
            _ => {}
        }
        for s in &f.samples {
            assert!(
                f.kind == "histogram" || s.name == *name,
                "sample {} in family {name}",
                s.name
            );
        }
    }
    families
}

/// Buckets ascending by `le`, cumulative, ending in `+Inf` equal to `_count`; a `_sum`.
fn check_histogram(name: &str, f: &MetricFamily) {
    let mut by_series: BTreeMap<String, Vec<&Sample>> = BTreeMap::new();
    for s in &f.samples {
        let mut key = s.labels.clone();
        key.remove("le");
        by_series.entry(format!("{key:?}")).or_default().push(s);
    }
    for (key, samples) in by_series {
        let buckets: Vec<&&Sample> = samples
            .iter()
            .filter(|s| s.name == format!("{name}_bucket"))
            .collect();
        assert!(buckets.len() >= 2, "{name}{key} has no buckets");
        let mut last = (f64::NEG_INFINITY, 0.0);
        for b in &buckets {
            let le = parse_value(b.labels.get("le").expect("bucket without le"));
            assert!(le > last.0, "{name}{key}: le not ascending");
            assert!(b.value >= last.1, "{name}{key}: buckets not cumulative");
            last = (le, b.value);
        }
        assert_eq!(last.0, f64::INFINITY, "{name}{key}: no +Inf bucket");
        let count = samples
            .iter()
            .find(|s| s.name == format!("{name}_count"))
            .expect("no _count");
        assert_eq!(count.value, last.1, "{name}{key}: +Inf bucket != _count");
        assert!(
            samples.iter().any(|s| s.name == format!("{name}_sum")),
            "{name}{key}: no _sum"
        );
    }
}

/// The value of the sample `name` with exactly these labels (le excluded unless given).
fn value(families: &BTreeMap<String, MetricFamily>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    families
        .values()
        .flat_map(|f| &f.samples)
        .find(|s| s.name == name && s.labels == want)
        .unwrap_or_else(|| panic!("no {name}{want:?}"))
        .value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_strict_prometheus_text_with_histograms_build_and_process_info() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::primary(dir.path(), &["ns"]).await;
    let c = reqwest::Client::new();
    for i in 0..5 {
        put(&c, &node, "ns", &format!("k{i}"), b"v").await;
    }
    get_value(&c, &node, "ns", "k1").await;
    let (s, _) = call(
        &c,
        reqwest::Method::GET,
        &node.url("/api/v1/nope/kv/x"),
        None,
    )
    .await;
    assert_eq!(s, 404);

    let resp = c.get(node.url("/metrics")).send().await.unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    let f = parse_strict(&text);

    let kinds: Vec<(&str, &str)> = [
        "ferry_http_request_duration_seconds",
        "ferry_commit_duration_seconds",
        "ferry_commit_group_requests",
        "ferry_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "ferry_commits_total",
        "ferry_commits_on_caller_total",
        "ferry_head_seq",
    ]
    .into_iter()
    .map(|n| (n, f.get(n).map_or("missing", |f| f.kind.as_str())))
    .collect();
    assert_eq!(
        kinds,
        [
            ("ferry_http_request_duration_seconds", "histogram"),
            ("ferry_commit_duration_seconds", "histogram"),
            ("ferry_commit_group_requests", "histogram"),
            ("ferry_build_info", "gauge"),
            ("process_cpu_seconds_total", "counter"),
            ("process_resident_memory_bytes", "gauge"),
            ("process_virtual_memory_bytes", "gauge"),
            ("process_open_fds", "gauge"),
            ("process_max_fds", "gauge"),
            ("process_start_time_seconds", "gauge"),
            ("ferry_commits_total", "counter"),
            ("ferry_commits_on_caller_total", "counter"),
            ("ferry_head_seq", "gauge"),
        ]
    );

    // Requests by route class: five writes, one read, one 404.
    let http = "ferry_http_request_duration_seconds_count";
    assert_eq!(
        value(&f, http, &[("route", "write"), ("status", "2xx")]),
        5.0
    );
    assert_eq!(
        value(&f, http, &[("route", "read"), ("status", "2xx")]),
        1.0
    );
    assert_eq!(
        value(&f, http, &[("route", "read"), ("status", "4xx")]),
        1.0
    );

    // Every commit timed; every stored request in a group.
    let ns = [("namespace", "ns")];
    assert_eq!(
        value(&f, "ferry_commit_duration_seconds_count", &ns),
        value(&f, "ferry_commits_total", &ns)
    );
    assert_eq!(value(&f, "ferry_commit_group_requests_sum", &ns), 5.0);
    assert!(value(&f, "ferry_commit_group_requests_count", &ns) >= 1.0);
    assert!(value(&f, "ferry_commit_duration_seconds_sum", &ns) > 0.0);
    // One client's writes one after another, nothing else begun on the node between them:
    // each commits on the HTTP thread that took it, but perhaps the first (whatever the node
    // read before it).
    let here = value(&f, "ferry_commits_on_caller_total", &ns);
    assert!(
        (4.0..=5.0).contains(&here),
        "{here} of 5 lone writes committed on the HTTP thread"
    );

    assert_eq!(
        value(
            &f,
            "ferry_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // This process: it holds files open and has used some memory and CPU.
    assert!(value(&f, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&f, "process_open_fds", &[]) >= 3.0);
    assert!(value(&f, "process_max_fds", &[]) >= value(&f, "process_open_fds", &[]));
    assert!(value(&f, "process_cpu_seconds_total", &[]) > 0.0);
    let started = value(&f, "process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        started <= now + 1.0 && started > now - 3600.0,
        "{started} vs {now}"
    );
    node.stop().await;
}

/// The checker itself rejects what Prometheus would: a test that cannot fail is no test.
#[test]
fn the_checker_rejects_invalid_text() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n";
    parse_strict(ok);
    for bad in [
        "# HELP a A.\n# TYPE a counter\na 2\n", // counter without _total
        "# HELP a A.\n# TYPE a gauge\na{x=\"1\"} 2\na{x=\"1\"} 3\n", // duplicate series
        "# HELP a A.\n# TYPE a gauge\na{x=1} 2\n", // unquoted label value
        "# HELP a A.\n# TYPE a gauge\na 2",     // no final newline
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n", // not cumulative
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
        "# HELP a A.\n# TYPE a gauge\na 1\n# HELP b B.\n# TYPE b gauge\nb 1\na{x=\"2\"} 1\n", // split
        "# TYPE a gauge\na 1\n", // no HELP
    ] {
        let caught = std::panic::catch_unwind(|| parse_strict(bad)).is_err();
        assert!(caught, "accepted:\n{bad}");
    }
}
