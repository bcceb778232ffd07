//! The walkthrough end to end with the real binary: dc1, dc2 and the replica started from the
//! repository's configs (ports and directories rewritten so test runs do not collide), every
//! write of Scenarios 1-5 and the real-world use cases, and `ferry crdt-client` (its JSON
//! events, and the text it prints, snapshotted).

mod common;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::{Value, json};

/// Reads a repo config and rewrites what a parallel test run must not share: `base_dir`
/// becomes `dir`, every port is mapped through `port` (see [`rewrite`]), and the node listens
/// on loopback.
fn config(name: &str, dir: &Path, port: impl Fn(u16) -> u16) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("configs")
            .join(name),
    )
    .unwrap();
    format!("listen_ip = \"127.0.0.1\"\n{}", rewrite(&text, dir, port))
}

/// Rewrites a config line by line: each `key = value` line is split at its `=` and rebuilt
/// from its parsed value, so the values of `http_port`, `port` and `bind_port` and the port of
/// `upstream_address` are each mapped exactly once, and `base_dir` is set to `dir`. (A
/// substring replace per placeholder rewrote ports inserted before it: 38003 then "8003" ->
/// 46835 gave `http_port = 346835`.)
fn rewrite(text: &str, dir: &Path, port: impl Fn(u16) -> u16) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let parsed = line
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim()))
            .filter(|_| !line.trim_start().starts_with('#'));
        let new = match parsed {
            Some((key @ ("http_port" | "port" | "bind_port"), value)) => {
                format!("{key} = {}", port(value.parse().unwrap()))
            }
            Some(("upstream_address", value)) => {
                let (host, p) = value.trim_matches('"').rsplit_once(':').unwrap();
                format!("upstream_address = \"{host}:{}\"", port(p.parse().unwrap()))
            }
            Some(("base_dir", _)) => format!("base_dir = {:?}", dir.display().to_string()),
            _ => line.to_owned(),
        };
        out.push_str(&new);
        out.push('\n');
    }
    out
}

/// The port of a `host:port` address.
fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// The free-port rewrite cannot hit a port it inserted before: with each placeholder mapped
/// to a port that contains another placeholder, every key still gets exactly its own port.
#[test]
fn configs_are_rewritten_key_by_key() {
    let map = |p: u16| match p {
        8001 => 18003,
        8003 => 48001,
        4001 => 54002,
        4002 => 14001,
        5555 => 55556,
        5556 => 15555,
        other => other,
    };
    let dir = Path::new("/data/x");
    let table = |name| config(name, dir, map).parse::<toml::Table>().unwrap();
    let relayer = table("relayer.toml");
    assert_eq!(relayer["http_port"].as_integer(), Some(48001));
    assert_eq!(
        relayer["storage_config"]["base_dir"].as_str(),
        Some("/data/x")
    );
    let relay = &relayer["relayer_config"];
    assert_eq!(
        relay["relayer1"]["upstream_address"].as_str(),
        Some("127.0.0.1:54002")
    );
    assert_eq!(
        relay["relayer2"]["upstream_address"].as_str(),
        Some("127.0.0.1:14001")
    );
    let zmq = &relayer["notifier_config"];
    assert_eq!(
        zmq["ad-campaign-dc1"]["bind_port"].as_integer(),
        Some(55556)
    );
    assert_eq!(
        zmq["ad-campaign-dc2"]["bind_port"].as_integer(),
        Some(15555)
    );
    let dc1 = table("dc1.toml");
    assert_eq!(dc1["http_port"].as_integer(), Some(18003));
    assert_eq!(dc1["grpc_config"]["port"].as_integer(), Some(54002));
    assert_eq!(dc1["listen_ip"].as_str(), Some("127.0.0.1"));
}

struct Cluster {
    dc1: Running,
    dc2: Running,
    replica: Running,
    replica_config: String,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// dc1 and dc2, then the replica following their real gRPC ports.
    fn start() -> Cluster {
        let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
        let conf_dir = &dirs[3];
        let start_primary = |name: &str, data: &Path| {
            let path = write(conf_dir, name, &config(name, data, |_| 0));
            let mut r = Running::spawn(&["server", "-config", &path]);
            // HTTP is logged first, then gRPC.
            let grpc = r
                .wait_line("gRPC listening on ")
                .rsplit(' ')
                .next()
                .unwrap()
                .to_owned();
            (r, grpc)
        };
        let (dc1, g1) = start_primary("dc1.toml", dirs[0].path());
        let (dc2, g2) = start_primary("dc2.toml", dirs[1].path());
        let (g1, g2) = (port_of(&g1), port_of(&g2));
        let upstreams = |p| match p {
            4001 => g1,
            4002 => g2,
            _ => 0,
        };
        let replica_config = write(
            conf_dir,
            "relayer.toml",
            &config("relayer.toml", dirs[2].path(), upstreams),
        );
        let mut replica = Running::spawn(&["replica", "-config", &replica_config]);
        replica.wait_line("HTTP listening on ");
        Cluster {
            dc1,
            dc2,
            replica,
            replica_config,
            _dirs: dirs,
        }
    }

    fn http(&self, r: &Running) -> String {
        format!("http://{}", r.find("HTTP listening on ").unwrap())
    }

    fn zmq(&self, ns: &str) -> String {
        let line = self
            .replica
            .seen
            .iter()
            .find(|l| l.contains("ZeroMQ notifications") && l.contains(&format!("namespace={ns} ")))
            .unwrap();
        line.split("endpoint=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned()
    }

    /// `ferry crdt-client --json` on the replica.
    fn client(&self) -> Running {
        self.client_with(&["--json"])
    }

    /// `ferry crdt-client` on the replica, with `extra` arguments.
    fn client_with(&self, extra: &[&str]) -> Running {
        let (z1, z2) = (self.zmq("ad-campaign-dc1"), self.zmq("ad-campaign-dc2"));
        let http = self.http(&self.replica);
        let (z1, z2) = (
            format!("ad-campaign-dc1={z1}"),
            format!("ad-campaign-dc2={z2}"),
        );
        let mut args = vec!["crdt-client", "--http", &http, "--zmq", &z1, "--zmq", &z2];
        args.extend(extra);
        Running::spawn(&args)
    }
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// `curl -X PUT .../kv/KEY -d '{"value": "<base64 of json>"}'` as the walkthrough does it.
/// Returns the seq the write got.
async fn curl_put(c: &reqwest::Client, base: &str, ns: &str, key: &str, value: &str) -> i64 {
    let body = format!(r#"{{"value": "{}"}}"#, b64(value.as_bytes()));
    let resp = c
        .put(format!("{base}/api/v1/{ns}/kv/{key}"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{key}");
    let reply: Value = resp.json().await.unwrap();
    reply["seq"].as_i64().unwrap()
}

const D1: &str = "ad-campaign-dc1";
const D2: &str = "ad-campaign-dc2";

/// `date +%s`, as the walkthrough's Scenario 2 and use cases take it.
fn date_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Every write of the walkthrough, in its order, as (namespace, key, value), with `now` as
/// `date +%s`. dc1's writes go to dc1's namespace, dc2's to dc2's.
fn walkthrough_writes(now: u64) -> Vec<(&'static str, &'static str, String)> {
    let w = |ns, key, value: &str| (ns, key, value.to_owned());
    let ts = format!("{now}000"); // Scenario 2: TIMESTAMP=$(date +%s)000
    vec![
        // Scenario 1
        w(
            D1,
            "lww:user-status",
            r#"{"value":"online","timestamp":1698765432000,"replica":"ad-campaign-dc1"}"#,
        ),
        w(
            D2,
            "lww:user-status",
            r#"{"value":"away","timestamp":1698765433000,"replica":"ad-campaign-dc2"}"#,
        ),
        // Scenario 2
        w(
            D1,
            "lww:config",
            &format!(r#"{{"value":"DC1 wins?","timestamp":{ts},"replica":"ad-campaign-dc1"}}"#),
        ),
        w(
            D2,
            "lww:config",
            &format!(r#"{{"value":"DC2 wins!","timestamp":{ts},"replica":"ad-campaign-dc2"}}"#),
        ),
        // Scenario 3
        w(
            D1,
            "counter:page-views",
            r#"{"replica":"ad-campaign-dc1","count":5}"#,
        ),
        w(
            D2,
            "counter:page-views",
            r#"{"replica":"ad-campaign-dc2","count":3}"#,
        ),
        // Scenario 4: the dc2 write is older, so it is stale once the dc1 one was seen
        w(
            D1,
            "lww:feature-flag",
            r#"{"value":true,"timestamp":2000,"replica":"ad-campaign-dc1"}"#,
        ),
        w(
            D2,
            "lww:feature-flag",
            r#"{"value":false,"timestamp":1000,"replica":"ad-campaign-dc2"}"#,
        ),
        // Scenario 5
        w(
            D1,
            "counter:api-calls",
            r#"{"replica":"ad-campaign-dc1","count":100}"#,
        ),
        w(
            D2,
            "counter:api-calls",
            r#"{"replica":"ad-campaign-dc2","count":75}"#,
        ),
        w(
            D1,
            "counter:db-queries",
            r#"{"replica":"ad-campaign-dc1","count":250}"#,
        ),
        // Real-world use cases
        w(
            D1,
            "lww:user:alice:status",
            &format!(r#"{{"value":"online","timestamp":{now}000,"replica":"us-east-1"}}"#),
        ),
        w(
            D2,
            "lww:user:alice:status",
            &format!(
                r#"{{"value":"away","timestamp":{}000,"replica":"eu-west-1"}}"#,
                now + 5
            ),
        ),
        w(
            D1,
            "counter:campaign-123:impressions",
            r#"{"replica":"us-east-1","count":1500}"#,
        ),
        w(
            D2,
            "counter:campaign-123:impressions",
            r#"{"replica":"eu-west-1","count":2300}"#,
        ),
        w(
            D1,
            "lww:feature:new-ui",
            &format!(r#"{{"value":true,"timestamp":{now}000,"replica":"control-plane"}}"#),
        ),
    ]
}

/// Sends each write of the walkthrough to its primary, and after each one waits (`seen`) until
/// the client has processed it: the story depends on the order the client sees the writes in
/// (Scenario 4's dc2 write is stale only if the dc1 one came first), and two primaries give no
/// order of their own. Returns the `date +%s` used.
async fn send_walkthrough_writes(
    c: &reqwest::Client,
    cluster: &Cluster,
    client: &mut Running,
    seen: impl Fn(&mut Running, &str, i64),
) -> u64 {
    let now = date_s();
    let (dc1, dc2) = (cluster.http(&cluster.dc1), cluster.http(&cluster.dc2));
    for (ns, key, value) in walkthrough_writes(now) {
        let base = if ns == D1 { &dc1 } else { &dc2 };
        let seq = curl_put(c, base, ns, key, &value).await;
        seen(client, ns, seq);
    }
    now
}

/// Waits until a `--json` client has printed a state that includes `seq` of `ns`.
fn json_client_saw(client: &mut Running, ns: &str, seq: i64) {
    client.wait_line_where(&format!("a state with seq {seq} of {ns}"), |l| {
        serde_json::from_str::<Value>(l)
            .is_ok_and(|v| v["event"] == "state" && v["seqs"][ns].as_i64() >= Some(seq))
    });
}

/// Waits until a text client has printed the state after one more notification (it prints
/// the state once per notification it processes).
fn text_client_saw(client: &mut Running, _ns: &str, _seq: i64) {
    client.wait_line("CURRENT CRDT STATE");
}

/// The converged state the walkthrough promises (timestamps from `date` as the test sent them).
fn expected(now: u64) -> Value {
    let lww = |v: Value, ts: u64, r: &str| json!({"value": v, "timestamp": ts, "replica": r});
    json!({
        "lww": {
            "lww:config": lww(json!("DC2 wins!"), now * 1000, "ad-campaign-dc2"),
            "lww:feature-flag": lww(json!(true), 2000, "ad-campaign-dc1"),
            "lww:feature:new-ui": lww(json!(true), now * 1000, "control-plane"),
            "lww:user-status": lww(json!("away"), 1698765433000, "ad-campaign-dc2"),
            "lww:user:alice:status": lww(json!("away"), (now + 5) * 1000, "eu-west-1"),
        },
        "counters": {
            "counter:api-calls": {"counts": {"ad-campaign-dc1": 100, "ad-campaign-dc2": 75}, "total": 175},
            "counter:campaign-123:impressions": {"counts": {"eu-west-1": 2300, "us-east-1": 1500}, "total": 3800},
            "counter:db-queries": {"counts": {"ad-campaign-dc1": 250}, "total": 250},
            "counter:page-views": {"counts": {"ad-campaign-dc1": 5, "ad-campaign-dc2": 3}, "total": 8},
        }
    })
}

/// Waits for a JSON line of `event` whose state equals `want`; returns every event seen so
/// far.
fn wait_state(client: &mut Running, event: &str, want: &Value) -> Vec<Value> {
    client.wait_line_where(&format!("{event} with the converged state"), |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| v["event"] == event && v["state"] == *want)
    });
    client
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walkthrough_converges_end_to_end() {
    let cluster = Cluster::start();
    let (dc1, dc2) = (cluster.http(&cluster.dc1), cluster.http(&cluster.dc2));
    let mut client = cluster.client();
    client.wait_line("\"event\":\"ready\"");
    // The client subscribes before it loads; make sure the replica's notifiers have both
    // subscriptions so no notification of the walkthrough is a slow-joiner loss.
    let c = reqwest::Client::new();
    for ns in ["ad-campaign-dc1", "ad-campaign-dc2"] {
        wait_subscribed_at(&c, &cluster.http(&cluster.replica), ns).await;
    }

    let now = send_walkthrough_writes(&c, &cluster, &mut client, json_client_saw).await;
    let want = expected(now);
    let events: Vec<Value> = client
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let last = events.iter().rfind(|e| e["event"] == "state").unwrap();
    assert_eq!(last["state"], want, "the converged state");

    // The stale write of Scenario 4 was seen and ignored (dc2's, seq 4 of its namespace).
    let flag = |ns: &str| {
        events
            .iter()
            .find(|e| e["key"] == "lww:feature-flag" && e["namespace"] == ns)
            .map(|e| e["outcome"].clone())
    };
    assert_eq!(
        (flag(D1), flag(D2)),
        (Some(json!("updated")), Some(json!("stale"))),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| e["event"] == "gap"),
        "no notification should be lost here"
    );

    // Reading from the replica, as the walkthrough does.
    let (s, got) = call(
        &c,
        reqwest::Method::GET,
        &format!(
            "{}/api/v1/ad-campaign-dc1/kv/lww:user-status",
            cluster.http(&cluster.replica)
        ),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        unb64(got["value"].as_str().unwrap()),
        br#"{"value":"online","timestamp":1698765432000,"replica":"ad-campaign-dc1"}"#
    );

    // A client started after every write reaches the same state by listing.
    let mut late = cluster.client();
    wait_state(&mut late, "ready", &want);

    // A malformed value and a delete are reported; neither changes the converged state, and
    // the client carries on.
    curl_put(
        &c,
        &dc1,
        "ad-campaign-dc1",
        "lww:broken",
        "this is not JSON",
    )
    .await;
    let del = c
        .delete(format!(
            "{dc2}/api/v1/ad-campaign-dc2/kv/counter:page-views"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    curl_put(
        &c,
        &dc1,
        "ad-campaign-dc1",
        "counter:page-views",
        r#"{"replica":"ad-campaign-dc1","count":6}"#,
    )
    .await;
    let mut after = want.clone();
    after["counters"]["counter:page-views"] =
        json!({"counts": {"ad-campaign-dc1": 6, "ad-campaign-dc2": 3}, "total": 9});
    let events = wait_state(&mut client, "state", &after);
    let outcome = |key: &str| {
        events
            .iter()
            .find(|e| e["event"] == "update" && e["key"] == key && e["seq"].as_i64() > Some(5))
            .map(|e| e["outcome"].clone())
    };
    assert_eq!(outcome("lww:broken"), Some(json!("malformed")));
    // The delete happened in the other namespace: its event may come before or after.
    let deleted = |l: &str| {
        serde_json::from_str::<Value>(l).is_ok_and(|e| {
            e["key"] == "counter:page-views"
                && e["outcome"] == "deleted"
                && e["namespace"] == "ad-campaign-dc2"
        })
    };
    if !client.seen.iter().any(|l| deleted(l)) {
        client.wait_line_where("the delete reported", deleted);
    }

    drop(late);
    drop(client);
}

/// The text the CRDT client prints for the walkthrough (what a user following it reads):
/// every notification, merge, stale write, malformed value and delete, and the state after
/// each, with the ports and the `date +%s` timestamps redacted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crdt_client_tells_the_walkthrough_story() {
    let cluster = Cluster::start();
    let (dc1, dc2) = (cluster.http(&cluster.dc1), cluster.http(&cluster.dc2));
    let replica = cluster.http(&cluster.replica);
    let mut client = cluster.client_with(&[]);
    client.wait_line("Loaded 0 CRDT keys from ad-campaign-dc2");
    let c = reqwest::Client::new();
    for ns in [D1, D2] {
        wait_subscribed_at(&c, &replica, ns).await;
    }
    let now = send_walkthrough_writes(&c, &cluster, &mut client, text_client_saw).await;
    // A malformed value, a delete, and a counter write after it.
    curl_put(&c, &dc1, D1, "lww:broken", "this is not JSON").await;
    text_client_saw(&mut client, D1, 0);
    let del = c
        .delete(format!("{dc2}/api/v1/{D2}/kv/counter:page-views"))
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    text_client_saw(&mut client, D2, 0);
    let count = r#"{"replica":"ad-campaign-dc1","count":6}"#;
    curl_put(&c, &dc1, D1, "counter:page-views", count).await;
    text_client_saw(&mut client, D1, 0);

    let story = client
        .finish()
        .join("\n")
        .replace(&cluster.zmq(D1), "[zmq endpoint of dc1]")
        .replace(&cluster.zmq(D2), "[zmq endpoint of dc2]")
        .replace(&replica, "[replica http]")
        .replace(&format!("{}000", now + 5), "[date +%s + 5]000")
        .replace(&format!("{now}000"), "[date +%s]000");
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!("walkthrough_crdt_client_story", story));
}

fn counter_state(total: u64) -> Value {
    json!({"lww": {}, "counters": {"counter:gap": {"counts": {"dc1": total}, "total": total}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_misses_notifications_still_converges() {
    let mut cluster = Cluster::start();
    let (dc1, replica_http) = (cluster.http(&cluster.dc1), cluster.http(&cluster.replica));
    let mut client = cluster.client();
    client.wait_line("\"event\":\"ready\"");
    let c = reqwest::Client::new();
    wait_subscribed_at(&c, &replica_http, "ad-campaign-dc1").await;
    let put_count = |n: u64| {
        let (c, dc1) = (c.clone(), dc1.clone());
        async move {
            let v = format!(r#"{{"replica":"dc1","count":{n}}}"#);
            curl_put(&c, &dc1, "ad-campaign-dc1", "counter:gap", &v).await;
        }
    };
    put_count(1).await;
    wait_state(&mut client, "state", &counter_state(1));

    // The replica goes away; seqs 2..=11 are written; a run of the replica without notifiers
    // applies them (so no notification for them is ever published); then the replica comes
    // back on the same ports. The client's subscription reconnects by itself.
    let ports = |marker: &str, r: &Running| {
        r.seen
            .iter()
            .filter_map(|l| l.split(marker).nth(1))
            .map(|rest| {
                rest.split_whitespace()
                    .next()
                    .unwrap()
                    .rsplit(':')
                    .next()
                    .unwrap()
                    .to_owned()
            })
            .collect::<Vec<_>>()
    };
    let http_port = ports("HTTP listening on ", &cluster.replica)[0].clone();
    let (z1, z2) = (
        cluster.zmq("ad-campaign-dc1"),
        cluster.zmq("ad-campaign-dc2"),
    );
    let zport = |e: &str| e.rsplit(':').next().unwrap().to_owned();
    let config_path = cluster.replica_config.clone();
    let text = std::fs::read_to_string(&config_path).unwrap();
    assert!(cluster.replica.terminate().success());
    for n in 2..=11 {
        put_count(n).await;
    }
    let silent = text[..text.find("## ZeroMQ notifier configuration").unwrap()].to_owned();
    let silent_path = config_path.replace("relayer.toml", "silent.toml");
    std::fs::write(&silent_path, &silent).unwrap();
    let mut catch_up = Running::spawn(&["replica", "-config", &silent_path]);
    let addr = catch_up
        .wait_line("HTTP listening on ")
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    wait_for(
        std::time::Duration::from_secs(20),
        "the silent catch-up",
        async || {
            let (_, off) = call(
                &c,
                reqwest::Method::GET,
                &format!("http://{addr}/api/v1/ad-campaign-dc1/offset"),
                None,
            )
            .await;
            (off["head_seq"] == 11).then_some(())
        },
    )
    .await;
    assert!(catch_up.terminate().success());
    // The notifiers would publish what the silent run applied (they resume after the last
    // seq they notified, kept in <ns>.notify): forget that, so those notifications are lost.
    let parsed: toml::Value = toml::from_str(&text).unwrap();
    let base_dir = parsed["storage_config"]["base_dir"].as_str().unwrap();
    for ns in ["ad-campaign-dc1", "ad-campaign-dc2"] {
        std::fs::remove_file(Path::new(base_dir).join(format!("{ns}.notify"))).unwrap();
    }

    let mut same_ports = text.replacen("http_port = 0", &format!("http_port = {http_port}"), 1);
    same_ports = same_ports.replacen("bind_port = 0", &format!("bind_port = {}", zport(&z1)), 1);
    same_ports = same_ports.replacen("bind_port = 0", &format!("bind_port = {}", zport(&z2)), 1);
    std::fs::write(&config_path, same_ports).unwrap();
    cluster.replica = Running::spawn(&["replica", "-config", &config_path]);
    cluster.replica.wait_line("HTTP listening on ");
    wait_subscribed_at(&c, &replica_http, "ad-campaign-dc1").await;

    // The next notification is seq 12: the client sees the gap and reads 2..=11 itself.
    put_count(12).await;
    let events = wait_state(&mut client, "state", &counter_state(12));
    let gap = events
        .iter()
        .find(|e| e["event"] == "gap")
        .expect("a gap event");
    assert_eq!(
        (
            gap["namespace"].clone(),
            gap["from"].clone(),
            gap["to"].clone()
        ),
        (json!("ad-campaign-dc1"), json!(2), json!(11))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_the_cluster_and_stops_on_ctrl_c() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let p = fixed_ports(7);
    let placeholders = [8001, 8002, 8003, 4001, 4002, 5555, 5556];
    let free = |old: u16| p[placeholders.iter().position(|&x| x == old).unwrap()];
    for (i, name) in ["dc1.toml", "dc2.toml", "relayer.toml"].iter().enumerate() {
        write(&dirs[3], name, &config(name, dirs[i].path(), free));
    }
    let mut demo = Running::spawn(&["demo", "--configs", dirs[3].path().to_str().unwrap()]);
    demo.wait_line("ferry demo: the walkthrough's three nodes are running");
    let dc1_line = demo.wait_line("dc1      primary");
    assert!(
        dc1_line.contains(&format!("http://localhost:{}", p[0])),
        "{dc1_line}"
    );

    let c = reqwest::Client::new();
    curl_put(
        &c,
        &format!("http://127.0.0.1:{}", p[0]),
        "ad-campaign-dc1",
        "lww:user-status",
        r#"{"value":"online","timestamp":1,"replica":"ad-campaign-dc1"}"#,
    )
    .await;
    let url = format!(
        "http://127.0.0.1:{}/api/v1/ad-campaign-dc1/kv/lww:user-status",
        p[2]
    );
    wait_for(
        std::time::Duration::from_secs(20),
        "the replica to have the write",
        async || {
            let (s, _) = call(&c, reqwest::Method::GET, &url, None).await;
            (s == 200).then_some(())
        },
    )
    .await;
    let pid = demo.child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(demo.child.wait().unwrap().success());
}
