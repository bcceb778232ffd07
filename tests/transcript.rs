//! A short HTTP session against a primary, recorded as a transcript and compared with the
//! reviewed snapshot in `snapshots/`. Only values that change from run to run are redacted.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

/// Replaces run-dependent values (timestamps, log ids, crcs, file paths and sizes).
fn redact(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map.iter_mut() {
                match k.as_str() {
                    "ts_ms" | "log_id" | "head_crc" | "file" | "file_bytes" => {
                        *val = json!(format!("[{k}]"))
                    }
                    _ => redact(val),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

#[tokio::test]
async fn http_transcript() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::primary(dir.path(), &["ad-campaign-dc1"]).await;
    let c = reqwest::Client::new();
    let lww = b64(br#"{"value":"online","timestamp":1698765432000,"replica":"ad-campaign-dc1"}"#);
    let counter = b64(br#"{"replica":"ad-campaign-dc1","count":5}"#);
    let steps: Vec<(Method, &str, Option<String>)> = vec![
        (Method::GET, "/health", None),
        (
            Method::PUT,
            "/api/v1/ad-campaign-dc1/kv/lww:user-status",
            Some(json!({"value": lww}).to_string()),
        ),
        (
            Method::GET,
            "/api/v1/ad-campaign-dc1/kv/lww:user-status",
            None,
        ),
        (
            Method::PUT,
            "/api/v1/ad-campaign-dc1/kv/counter:page-views",
            Some(json!({"value": counter}).to_string()),
        ),
        (
            Method::POST,
            "/api/v1/ad-campaign-dc1/kv/batch",
            Some(
                json!({"operation": "put", "items": [
            {"key": "lww:user:alice:status", "value": b64(b"online")},
            {"key": "lww:user:bob:status", "value": b64(b"away")}]})
                .to_string(),
            ),
        ),
        (
            Method::POST,
            "/api/v1/ad-campaign-dc1/kv/batch",
            Some(json!({"operation": "delete", "keys": ["lww:user:bob:status"]}).to_string()),
        ),
        (
            Method::DELETE,
            "/api/v1/ad-campaign-dc1/kv/counter:page-views",
            None,
        ),
        (
            Method::GET,
            "/api/v1/ad-campaign-dc1/kv/counter:page-views",
            None,
        ),
        (
            Method::PUT,
            "/api/v1/ad-campaign-dc1/kv/bad",
            Some(r#"{"value": "eyJ2YWx1"#.into()),
        ),
        (
            Method::PUT,
            "/api/v1/ad-campaign-dc2/kv/x",
            Some(json!({"value": "eA=="}).to_string()),
        ),
        (Method::GET, "/api/v1/ad-campaign-dc1/offset", None),
        (Method::GET, "/api/v1/ad-campaign-dc1/stats", None),
    ];
    let mut transcript = String::new();
    for (method, path, body) in steps {
        let (status, mut json) = call(&c, method.clone(), &node.url(path), body.as_deref()).await;
        redact(&mut json);
        transcript.push_str(&format!("> {method} {path}\n"));
        if let Some(b) = body {
            transcript.push_str(&format!("> {b}\n"));
        }
        transcript.push_str(&format!("< {status} {json}\n\n"));
    }
    node.stop().await;
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!("http_transcript", transcript));
}
