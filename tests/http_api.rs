//! The primary's HTTP API against a real node: real SQLite files in temp dirs, real HTTP on
//! port 0.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const NS: &str = "ad-campaign-dc1";

#[tokio::test]
async fn every_route_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::primary(dir.path(), &[NS, "other"]).await;
    let c = reqwest::Client::new();

    let (s, health) = call(&c, Method::GET, &node.url("/health"), None).await;
    assert_eq!(s, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["namespaces"], json!(["ad-campaign-dc1", "other"]));

    // PUT then GET: the value comes back byte for byte, with the seq of its write.
    let value = br#"{"value":"online","timestamp":1698765432000,"replica":"ad-campaign-dc1"}"#;
    let seq = put(&c, &node, NS, "lww:user-status", value).await;
    assert_eq!(seq, 1);
    let (s, got) = call(
        &c,
        Method::GET,
        &node.url(&format!("/api/v1/{NS}/kv/lww:user-status")),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(got["found"], true);
    assert_eq!(got["seq"], 1);
    assert_eq!(unb64(got["value"].as_str().unwrap()), value);

    // Percent-encoded UTF-8 keys and keys with slashes are decoded to the stored key.
    assert_eq!(put(&c, &node, NS, "caf%C3%A9%2Fmenu", b"x").await, 2);
    let kv = kv_rows(&node.db(NS));
    assert!(kv.iter().any(|(k, _, _)| k == "café/menu"), "{kv:?}");

    // DELETE removes the key and is logged.
    let (s, del) = call(
        &c,
        Method::DELETE,
        &node.url(&format!("/api/v1/{NS}/kv/lww:user-status")),
        None,
    )
    .await;
    assert_eq!((s, del.clone()), (200, json!({"success": true, "seq": 3})));
    let (s, missing) = call(
        &c,
        Method::GET,
        &node.url(&format!("/api/v1/{NS}/kv/lww:user-status")),
        None,
    )
    .await;
    assert_eq!((s, missing), (404, json!({"value": "", "found": false})));

    // Batch put: one seq range, one txn.
    let batch = json!({"operation": "put", "items": [
        {"key": "a", "value": b64(b"1")}, {"key": "b", "value": b64(b"2")}, {"key": "c", "value": b64(b"")}
    ]});
    let (s, r) = call(
        &c,
        Method::POST,
        &node.url(&format!("/api/v1/{NS}/kv/batch")),
        Some(&batch.to_string()),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        r,
        json!({"success": true, "count": 3, "first_seq": 4, "last_seq": 6})
    );
    let rows = wal_rows(&node.db(NS));
    assert!(rows[3..6].iter().all(|r| r.txn == 4), "{rows:?}");

    // Batch delete.
    let batch = json!({"operation": "delete", "keys": ["a", "b"]});
    let (s, r) = call(
        &c,
        Method::POST,
        &node.url(&format!("/api/v1/{NS}/kv/batch")),
        Some(&batch.to_string()),
    )
    .await;
    assert_eq!(
        (s, r["count"].clone(), r["last_seq"].clone()),
        (200, json!(2), json!(8))
    );

    // Raw bytes with Content-Type: application/octet-stream.
    let resp = c
        .put(node.url(&format!("/api/v1/{NS}/kv/raw")))
        .header("content-type", "application/octet-stream")
        .body(vec![0u8, 159, 146, 150])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (_, got) = call(
        &c,
        Method::GET,
        &node.url(&format!("/api/v1/{NS}/kv/raw")),
        None,
    )
    .await;
    assert_eq!(
        unb64(got["value"].as_str().unwrap()),
        vec![0u8, 159, 146, 150]
    );

    let (s, off) = call(
        &c,
        Method::GET,
        &node.url(&format!("/api/v1/{NS}/offset")),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(off["head_seq"], 9);
    let rows = wal_rows(&node.db(NS));
    assert_eq!(off["head_crc"].as_i64().unwrap(), rows.last().unwrap().crc);
    assert_eq!(off["log_id"].as_str().unwrap().len(), 32);

    let (s, stats) = call(
        &c,
        Method::GET,
        &node.url(&format!("/api/v1/{NS}/stats")),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(stats["role"], "primary");
    assert_eq!(stats["head_seq"], 9);
    assert_eq!(stats["wal_entries"], 9);
    assert_eq!(stats["keys"], 3); // café/menu, c, raw
    assert_eq!(stats["synchronous"], "FULL");
    assert_eq!(stats["log_id"], off["log_id"]);
    // The file and its WAL on disk hold at least every page of the database. (Catches
    // `file_bytes` reading 0 or 1.)
    let db = rusqlite::Connection::open(node.db(NS)).unwrap();
    let pages: i64 = db.query_row("PRAGMA page_count", [], |r| r.get(0)).unwrap();
    let page_size: i64 = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
    assert!(pages >= 5, "{pages}");
    assert!(
        stats["file_bytes"].as_i64().unwrap() >= pages * page_size,
        "{stats} against {pages} pages of {page_size}"
    );

    // The other namespace is its own file with its own log.
    assert_eq!(put(&c, &node, "other", "k", b"v").await, 1);
    verify_file(&node.db(NS));
    verify_file(&node.db("other"));
    node.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[http_config]\nmax_body_bytes = 1024\n",
        primary_config(dir.path(), &[NS])
    );
    let node = TestNode::start(&config, dir.path()).await;
    let c = reqwest::Client::new();
    put(&c, &node, NS, "keep", b"precious").await;
    let before = (wal_rows(&node.db(NS)), kv_rows(&node.db(NS)));

    let kv_url = node.url(&format!("/api/v1/{NS}/kv/k"));
    let batch_url = node.url(&format!("/api/v1/{NS}/kv/batch"));
    // The walkthrough's body cut short by GNU base64's line wrapping.
    let cut = r#"{"value": "eyJ2YWx1ZSI6Im9ubGluZSIsInRpbWVzdGFtcCI6MTY5ODc2NTQzMjAwMCwicmVwbGlj"#;
    let big = json!({"value": b64(&[7u8; 2000])}).to_string();
    let cases: Vec<(Method, String, Option<String>, u16, &str)> = vec![
        (Method::PUT, kv_url.clone(), Some("{not json".into()), 400, "invalid JSON body"),
        (Method::PUT, kv_url.clone(), Some(cut.into()), 400, "GNU base64 wrapped"),
        (Method::PUT, kv_url.clone(), Some(r#"{"valu": "YQ=="}"#.into()), 400, "missing field `value`"),
        (Method::PUT, kv_url.clone(), Some(r#"{"value": "not base64!"}"#.into()), 400, "not valid standard base64"),
        (Method::PUT, kv_url.clone(), Some("{\"value\": \"YWJj\\nZA==\"}".into()), 400, "line break"),
        (Method::PUT, kv_url.clone(), Some(big), 413, "over the limit of 1024 bytes"),
        (Method::PUT, node.url(&format!("/api/v1/{NS}/kv/")), Some(r#"{"value":"YQ=="}"#.into()), 400, "key is empty"),
        (Method::PUT, node.url(&format!("/api/v1/{NS}/kv/%FF")), Some(r#"{"value":"YQ=="}"#.into()), 400, "not valid UTF-8"),
        (Method::PUT, node.url(&format!("/api/v1/{NS}/kv/{}", "k".repeat(5000))), Some(r#"{"value":"YQ=="}"#.into()), 400, "is 5000 bytes long; the limit is 4096"),
        (Method::PUT, node.url("/api/v1/nope/kv/k"), Some(r#"{"value":"YQ=="}"#.into()), 404, "unknown namespace \"nope\""),
        (Method::GET, node.url("/api/v1/nope/kv/k"), None, 404, "unknown namespace"),
        (Method::GET, node.url("/api/v1/nope/stats"), None, 404, "unknown namespace"),
        (Method::DELETE, node.url(&format!("/api/v1/{NS}/kv/")), None, 400, "key is empty"),
        (Method::GET, node.url("/nothing/here"), None, 404, "no such route"),
        (Method::POST, batch_url.clone(), Some(r#"{"operation":"upsert","items":[]}"#.into()), 400, "unknown batch operation \"upsert\""),
        (Method::POST, batch_url.clone(), Some(r#"{"operation":"put","items":[]}"#.into()), 400, "the batch is empty"),
        (Method::POST, batch_url.clone(), Some(r#"{"operation":"put"}"#.into()), 400, "needs \"items\""),
        (Method::POST, batch_url.clone(), Some(r#"{"operation":"delete","keys":["a",""]}"#.into()), 400, "keys[1] is empty"),
        // One invalid item: the whole batch is refused, nothing of it is stored.
        (Method::POST, batch_url.clone(),
         Some(json!({"operation":"put","items":[{"key":"x","value":"eA=="},{"key":"y","value":"%%%"}]}).to_string()),
         400, "items[1].value is not valid"),
    ];
    // A PUT without a query string is answered outside warp's filter chain (`http::fast`),
    // one with a query by the chain: both must refuse alike.
    let through_chain: Vec<_> = cases
        .iter()
        .filter(|(method, url, ..)| *method == Method::PUT && url.contains("/kv/"))
        .map(|(method, url, body, status, needle)| {
            (
                method.clone(),
                format!("{url}?acks=0"),
                body.clone(),
                *status,
                *needle,
            )
        })
        .collect();
    for (method, url, body, status, needle) in cases.into_iter().chain(through_chain) {
        let (s, j) = call(&c, method.clone(), &url, body.as_deref()).await;
        let msg = j["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {url}: no error field in {j}"));
        assert_eq!(s, status, "{method} {url}: {msg}");
        assert!(
            msg.contains(needle),
            "{method} {url}: {msg:?} lacks {needle:?}"
        );
    }
    assert_eq!((wal_rows(&node.db(NS)), kv_rows(&node.db(NS))), before);
    node.stop().await;
}

#[tokio::test]
async fn key_listing_and_changes_feed() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::primary(dir.path(), &[NS]).await;
    let c = reqwest::Client::new();
    for k in ["lww:b", "counter:x", "lww:a", "lww:c", "lx", "lww;"] {
        put(&c, &node, NS, k, k.as_bytes()).await;
    }
    call(
        &c,
        Method::DELETE,
        &node.url(&format!("/api/v1/{NS}/kv/lww:c")),
        None,
    )
    .await;

    // Prefix listing in key order, paginated with `after`.
    let list = |q: &str| node.url(&format!("/api/v1/{NS}/kv?{q}"));
    let (s, page) = call(&c, Method::GET, &list("prefix=lww:&limit=1"), None).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(page["items"][0]["key"], "lww:a");
    assert_eq!(unb64(page["items"][0]["value"].as_str().unwrap()), b"lww:a");
    assert_eq!(page["next_after"], "lww:a");
    let (_, page) = call(
        &c,
        Method::GET,
        &list("prefix=lww:&after=lww:a&limit=10"),
        None,
    )
    .await;
    let keys: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].clone())
        .collect();
    assert_eq!(keys, [json!("lww:b")]);
    assert_eq!(page["next_after"], Value::Null);
    let (_, all) = call(
        &c,
        Method::GET,
        &node.url(&format!("/api/v1/{NS}/kv")),
        None,
    )
    .await;
    assert_eq!(all["items"].as_array().unwrap().len(), 5);

    // The changes feed: everything after a seq, deletes without a value.
    let (s, ch) = call(
        &c,
        Method::GET,
        &node.url(&format!("/api/v1/{NS}/changes?since=4")),
        None,
    )
    .await;
    assert_eq!(s, 200, "{ch}");
    assert_eq!(ch["head_seq"], 7);
    assert_eq!(change_seqs(&ch), [5, 6, 7]);
    assert_eq!(ch["entries"][2]["op"], "delete");
    assert_eq!(ch["entries"][2]["key"], "lww:c");
    assert!(ch["entries"][2].get("value").is_none());
    assert_eq!(unb64(ch["entries"][0]["value"].as_str().unwrap()), b"lx");
    let (_, ch) = call(
        &c,
        Method::GET,
        &node.url(&format!("/api/v1/{NS}/changes?since=0&limit=2")),
        None,
    )
    .await;
    assert_eq!(ch["entries"].as_array().unwrap().len(), 2);
    let (_, ch) = call(
        &c,
        Method::GET,
        &node.url(&format!("/api/v1/{NS}/changes?since=7")),
        None,
    )
    .await;
    assert_eq!(ch["entries"], json!([]));
    // Past the head (a subscriber that heard of seq 1000 from a node further ahead): an empty
    // page, and the namespace keeps working.
    let url = node.url(&format!("/api/v1/{NS}/changes?since=1000"));
    let (s, ch) = call(&c, Method::GET, &url, None).await;
    assert_eq!((s, ch["entries"].clone()), (200, json!([])));
    assert_eq!(put(&c, &node, NS, "after", b"x").await, 8);

    for (path, needle) in [
        (
            format!("/api/v1/{NS}/kv?limit=0"),
            "limit must be at least 1",
        ),
        (
            format!("/api/v1/{NS}/kv?limit=100000"),
            "limit must be at most",
        ),
        (format!("/api/v1/{NS}/kv?limit=ten"), "invalid query string"),
        (format!("/api/v1/{NS}/kv?prefx=a"), "invalid query string"),
        (format!("/api/v1/{NS}/changes"), "invalid query string"),
        (
            format!("/api/v1/{NS}/changes?since=-1"),
            "since must be 0 or more",
        ),
        (
            "/api/v1/nope/changes?since=0".to_string(),
            "unknown namespace",
        ),
    ] {
        let (s, j) = call(&c, Method::GET, &node.url(&path), None).await;
        let status = if needle == "unknown namespace" {
            404
        } else {
            400
        };
        assert_eq!(s, status, "{path}: {j}");
        assert!(j["error"].as_str().unwrap().contains(needle), "{path}: {j}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_does_not_hold_up_shutdown() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::primary(dir.path(), &["ns"]).await;
    let c = reqwest::Client::new();
    // 10 MB of values: the listing below answers ~14 MB, far more than socket buffers hold.
    let value = b64(&[b'v'; 1000]);
    for b in 0..20 {
        let items: Vec<_> = (0..500)
            .map(|i| json!({"key": format!("k{b:02}{i:03}"), "value": value}))
            .collect();
        let body = json!({"operation": "put", "items": items}).to_string();
        let (s, j) = call(
            &c,
            Method::POST,
            &node.url("/api/v1/ns/kv/batch"),
            Some(&body),
        )
        .await;
        assert_eq!(s, 200, "{j}");
    }
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(node.node.http_addr()).await.unwrap();
    conn.write_all(b"GET /api/v1/ns/kv?limit=10000 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    // The server is answering; from here on the client reads nothing more.
    let mut head = [0u8; 12];
    conn.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    tokio::time::timeout(std::time::Duration::from_secs(10), node.stop())
        .await
        .expect("shutdown waited on a client that stopped reading");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_below_a_pruned_log_are_gone_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::primary(dir.path(), &[NS]).await;
    let c = reqwest::Client::new();
    for i in 0..10 {
        put(&c, &node, NS, &format!("k{i}"), b"v").await;
    }
    // What retention does: drop the oldest entries (kv keeps their effect).
    let pruned = node
        .ns(NS)
        .prune(ferry::store::Prune {
            upto: 5,
            older_than_ms: None,
            max_rows: 1000,
        })
        .await
        .unwrap();
    assert_eq!(pruned.deleted, 5);

    // A client that last saw seq 3 would miss 4 and 5: it is told so, with what to do.
    let url = node.url(&format!("/api/v1/{NS}/changes?since=3"));
    let (status, body) = call(&c, Method::GET, &url, None).await;
    assert_eq!(status, 410, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("starts at seq 6"), "{error}");
    assert!(error.contains("head seq 10"), "{error}");
    // From the oldest entry on, the feed answers as before.
    let url = node.url(&format!("/api/v1/{NS}/changes?since=5"));
    let (status, body) = call(&c, Method::GET, &url, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(change_seqs(&body), [6, 7, 8, 9, 10]);
    node.stop().await;
}

/// The seqs of a `/changes` answer, in order.
fn change_seqs(body: &Value) -> Vec<i64> {
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect()
}

/// Sends `head` and then `chunks` with `Transfer-Encoding: chunked` (no Content-Length) over a
/// plain TCP connection, and returns the response's (status, JSON body).
async fn chunked_request(node: &TestNode, head: &str, chunks: &[&[u8]]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = node.base.strip_prefix("http://").unwrap();
    let mut req = format!(
        "{head} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in chunks {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(&req).await.unwrap();
    let mut resp = Vec::new();
    conn.read_to_end(&mut resp).await.unwrap();
    let text = String::from_utf8(resp).unwrap();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap();
    let status = headers.split(' ').nth(1).unwrap().parse().unwrap();
    let lower = headers.to_ascii_lowercase();
    assert!(lower.contains("content-length:"), "{headers}");
    assert!(
        lower.contains("content-type: application/json"),
        "{headers}"
    );
    (status, serde_json::from_str(body).unwrap())
}

/// `max_body_bytes` holds for bodies whose length is not announced: a chunked body over the
/// limit gets 413 with a JSON error and stores nothing, while one under it is taken. (Catches:
/// the limit checked only against Content-Length.)
#[tokio::test]
async fn a_chunked_body_over_the_limit_gets_413_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[http_config]\nmax_body_bytes = 1024\n",
        primary_config(dir.path(), &[NS])
    );
    let node = TestNode::start(&config, dir.path()).await;
    let put_k = format!("PUT /api/v1/{NS}/kv/k");

    // Under the limit, in two chunks: stored.
    let small = json!({"value": b64(b"small value")}).to_string();
    let (a, b) = small.as_bytes().split_at(10);
    let (s, j) = chunked_request(&node, &put_k, &[a, b]).await;
    assert_eq!((s, j["seq"].as_i64()), (200, Some(1)), "{j}");
    let before = (wal_rows(&node.db(NS)), kv_rows(&node.db(NS)));

    // About 2 KB in chunks of 500 bytes, none over the limit by itself.
    let big = json!({"value": b64(&[7u8; 1500])}).to_string();
    let chunks: Vec<&[u8]> = big.as_bytes().chunks(500).collect();
    // Without a query string (`http::fast`) and with one (warp's filter chain).
    for head in [put_k.clone(), format!("{put_k}?acks=0")] {
        let (s, j) = chunked_request(&node, &head, &chunks).await;
        assert_eq!(s, 413, "{head}: {j}");
        let msg = j["error"].as_str().unwrap();
        assert!(msg.contains("over the limit of 1024 bytes"), "{msg}");
        assert_eq!((wal_rows(&node.db(NS)), kv_rows(&node.db(NS))), before);
    }

    // The batch route reads its body the same way.
    let items: Vec<_> = (0..20)
        .map(|i| json!({"key": format!("b{i}"), "value": b64(&[1u8; 60])}))
        .collect();
    let batch = json!({"operation": "put", "items": items}).to_string();
    let chunks: Vec<&[u8]> = batch.as_bytes().chunks(300).collect();
    let head = format!("POST /api/v1/{NS}/kv/batch");
    let (s, j) = chunked_request(&node, &head, &chunks).await;
    assert_eq!(s, 413, "{j}");
    assert_eq!((wal_rows(&node.db(NS)), kv_rows(&node.db(NS))), before);
    node.stop().await;
}

/// A method a route does not take answers 405 with the API's JSON error, not a 500.
/// (Catches: the 405 rejection rendered as an internal error.)
#[tokio::test]
async fn a_wrong_method_gets_405_json() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::primary(dir.path(), &[NS]).await;
    let c = reqwest::Client::new();
    for (method, path) in [
        (Method::PATCH, format!("/api/v1/{NS}/kv/k")),
        (Method::POST, format!("/api/v1/{NS}/stats")),
        (Method::PUT, format!("/api/v1/{NS}/offset")),
    ] {
        let (s, j) = call(&c, method.clone(), &node.url(&path), None).await;
        assert_eq!(s, 405, "{method} {path}: {j}");
        let msg = j["error"].as_str().unwrap_or_default();
        assert!(msg.contains("method not allowed"), "{method} {path}: {j}");
    }
    node.stop().await;
}

/// Reads of two namespaces served by the same runtime thread each read their own file: GET
/// runs on the calling thread with a connection per namespace kept per thread. (Catches: the
/// thread's connection picked by the wrong namespace, e.g. `l.id != id` in `with_local`,
/// which answers one namespace's GET from another's file.)
#[tokio::test]
async fn reads_of_two_namespaces_on_one_thread_each_see_their_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::primary(dir.path(), &[NS, "other"]).await;
    let c = reqwest::Client::new();
    put(&c, &node, NS, "k", b"from-dc1").await;
    put(&c, &node, "other", "k", b"from-other").await;
    put(&c, &node, "other", "only-other", b"x").await;
    // Alternate, so each namespace is read after the other on the same (only) thread.
    for _ in 0..3 {
        assert_eq!(
            get_value(&c, &node, NS, "k").await,
            (200, b"from-dc1".to_vec())
        );
        assert_eq!(
            get_value(&c, &node, "other", "k").await,
            (200, b"from-other".to_vec())
        );
        assert_eq!(get_value(&c, &node, NS, "only-other").await.0, 404);
    }
    node.stop().await;
}

/// Every documented limit of a request accepts its maximum and refuses one more, with a 400
/// naming the limit: a key of 4096 bytes (in the path and in a batch), a page of 10,000, a
/// `?min_seq=` wait of 30,000 ms, an `?acks=` timeout of 60,000 ms. `?min_seq=` past the head
/// answers 504 once its wait is over. (Catches: each `>` of these limits as `>=`, and
/// `wait_for_seq` that does not wait.)
#[tokio::test]
async fn each_limit_accepts_its_maximum_and_refuses_one_more() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::primary(dir.path(), &[NS]).await;
    let c = reqwest::Client::new();
    let kv = |rest: &str| node.url(&format!("/api/v1/{NS}/kv{rest}"));
    let value = Some(r#"{"value":"YQ=="}"#);

    let longest = "k".repeat(4096);
    let (s, j) = call(&c, Method::PUT, &kv(&format!("/{longest}")), value).await;
    assert_eq!(s, 200, "a key of 4096 bytes: {j}");
    let batch = |key: &str| json!({"operation": "put", "items": [{"key": key, "value": "YQ=="}]});
    let (s, j) = call(
        &c,
        Method::POST,
        &kv("/batch"),
        Some(&batch(&"b".repeat(4096)).to_string()),
    )
    .await;
    assert_eq!(s, 200, "a batch key of 4096 bytes: {j}");
    let (s, j) = call(&c, Method::GET, &kv("?limit=10000"), None).await;
    assert_eq!(s, 200, "a page of 10000: {j}");
    assert_eq!(j["items"].as_array().unwrap().len(), 2, "{j}");
    let (s, j) = call(
        &c,
        Method::GET,
        &kv(&format!("/{longest}?min_seq=2&timeout_ms=30000")),
        None,
    )
    .await;
    assert_eq!((s, j["found"].clone()), (200, json!(true)), "{j}");
    let (s, j) = call(
        &c,
        Method::PUT,
        &kv("/acked?acks=0&timeout_ms=60000"),
        value,
    )
    .await;
    assert_eq!((s, j["seq"].clone()), (200, json!(3)), "{j}");
    let before = (wal_rows(&node.db(NS)), kv_rows(&node.db(NS)));
    assert_eq!(before.1.len(), 3);
    assert!(before.1.iter().any(|(k, _, _)| *k == longest));

    let too_long = "k".repeat(4097);
    let batch_too_long = batch(&"b".repeat(4097)).to_string();
    for (method, url, body, needle) in [
        (
            Method::PUT,
            kv(&format!("/{too_long}")),
            value,
            "key is 4097 bytes long; the limit is 4096",
        ),
        (
            Method::POST,
            kv("/batch"),
            Some(batch_too_long.as_str()),
            "items[0].key is 4097 bytes long",
        ),
        (
            Method::GET,
            kv("?limit=10001"),
            None,
            "limit must be at most 10000",
        ),
        (
            Method::GET,
            kv(&format!("/{longest}?min_seq=1&timeout_ms=30001")),
            None,
            "timeout_ms must be at most 30000",
        ),
        (
            Method::PUT,
            kv("/acked?acks=0&timeout_ms=60001"),
            value,
            "timeout_ms must be 1 to 60000, got 60001",
        ),
    ] {
        let (s, j) = call(&c, method.clone(), &url, body).await;
        let msg = j["error"].as_str().unwrap_or_default();
        assert_eq!(s, 400, "{method} {url}: {j}");
        assert!(
            msg.contains(needle),
            "{method} {url}: {msg:?} lacks {needle:?}"
        );
    }

    // A seq this node has not reached: the read waits its timeout_ms, then says so.
    let (s, j) = call(
        &c,
        Method::GET,
        &kv(&format!("/{longest}?min_seq=4&timeout_ms=1")),
        None,
    )
    .await;
    assert_eq!(s, 504, "{j}");
    let msg = j["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("applied up to seq 3; seq 4 did not arrive within 1 ms"),
        "{msg}"
    );
    assert_eq!((wal_rows(&node.db(NS)), kv_rows(&node.db(NS))), before);
    node.stop().await;
}

/// A request whose body fits a raised `max_body_bytes` but whose log entries would not fit
/// one replication message gets 413 naming the limit and what to do, and nothing is stored.
/// (Catches: the store's refusal answered 500.)
#[tokio::test]
async fn a_batch_too_large_to_replicate_gets_413_and_nothing_is_stored() {
    use ferry::store::{ENTRY_OVERHEAD_BYTES, MAX_REQUEST_BYTES};
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[http_config]\nmax_body_bytes = \"16MB\"\n",
        primary_config(dir.path(), &[NS])
    );
    let node = TestNode::start(&text, dir.path()).await;
    let c = reqwest::Client::new();
    put(&c, &node, NS, "kept", b"v").await;
    // ~11 bytes of body per key, 72 bytes of entry.
    let keys: Vec<String> = (0..MAX_REQUEST_BYTES / ENTRY_OVERHEAD_BYTES)
        .map(|i| format!("{i:08}"))
        .collect();
    let body = json!({"operation": "delete", "keys": keys}).to_string();
    assert!(body.len() < 16 << 20);
    let url = node.url(&format!("/api/v1/{NS}/kv/batch"));
    let (s, j) = call(&c, Method::POST, &url, Some(&body)).await;
    assert_eq!(s, 413, "{j}");
    let msg = j["error"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "over the {MAX_REQUEST_BYTES} one request may hold"
        )) && msg.contains("split it into several requests"),
        "{msg}"
    );
    assert_eq!(wal_rows(&node.db(NS)).len(), 1);
    assert_eq!(kv_rows(&node.db(NS)).len(), 1);
    node.stop().await;
}
