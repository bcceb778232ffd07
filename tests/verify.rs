//! `ferry verify FILE` on sound and damaged namespace files, through the real binary.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rusqlite::Connection;

const NS: &str = "ns";
/// Puts written by [`written_file`]: keys k0..k49, several times each, then some deletes.
const PUTS: i64 = 300;

/// A namespace file written by a real node and closed cleanly: 300 puts over 50 keys (300
/// bytes each, so the file has dozens of b-tree pages), then 5 deletes in one batch.
async fn written_file(dir: &Path) -> PathBuf {
    let node = TestNode::primary(dir, &[NS]).await;
    let c = reqwest::Client::new();
    for i in 0..PUTS {
        let value = format!("{i:0300}");
        put(&c, &node, NS, &format!("k{}", i % 50), value.as_bytes()).await;
    }
    let body = r#"{"operation":"delete","keys":["k1","k2","k3","k4","k5"]}"#;
    let (s, _) = call(
        &c,
        reqwest::Method::POST,
        &node.url(&format!("/api/v1/{NS}/kv/batch")),
        Some(body),
    )
    .await;
    assert_eq!(s, 200);
    let path = node.db(NS);
    node.stop().await;
    path
}

/// Copies everything in the `-wal` file into the database file and empties the WAL, so that
/// bytes changed in the database file are what SQLite reads. (A stopped node's connections
/// close on their own threads, and only the one that finds itself last deletes the `-wal`
/// file: that it is gone right after `stop` is not guaranteed, and once under load it was not.)
fn checkpoint_all(path: &Path) {
    let (busy, log, copied): (i64, i64, i64) = Connection::open(path)
        .unwrap()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(
        (busy, log, copied),
        (0, 0, 0),
        "the WAL is copied and empty"
    );
}

/// Runs `ferry verify` on `path`: (exit code, stdout + stderr).
fn verify(path: &Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["verify", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap(), text)
}

fn sql(path: &Path, statement: &str) {
    Connection::open(path)
        .unwrap()
        .execute_batch(statement)
        .unwrap();
}

#[tokio::test]
async fn a_sound_file_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_file(dir.path()).await;
    let (code, out) = verify(&path);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("OK") && out.contains(&format!("{} entries checked", PUTS + 5)),
        "{out}"
    );
    assert!(out.contains("45 keys checked"), "{out}");
    assert!(out.contains("(seq 1..=305)"), "{out}");
}

#[tokio::test]
async fn a_flipped_byte_in_a_logged_value_is_a_crc_mismatch_at_its_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_file(dir.path()).await;
    // An older put of k7 (seq 8): kv no longer holds it, so only the chain can tell.
    let conn = Connection::open(&path).unwrap();
    let mut value: Vec<u8> = conn
        .query_row("SELECT value FROM wal_log WHERE seq = 8", [], |r| r.get(0))
        .unwrap();
    value[100] ^= 0x01;
    conn.execute("UPDATE wal_log SET value = ?1 WHERE seq = 8", [value])
        .unwrap();
    drop(conn);
    let (code, out) = verify(&path);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("CORRUPT: 1 problem;"), "{out}");
    assert!(out.contains("seq 8: crc mismatch"), "{out}");
}

#[tokio::test]
async fn kv_out_of_step_with_the_log_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_file(dir.path()).await;
    sql(
        &path,
        "UPDATE kv SET value = X'00' WHERE key = 'k7';
         DELETE FROM kv WHERE key = 'k8';
         INSERT INTO kv (key, value, seq, ts_ms) VALUES ('k1', X'01', 2, 0), ('stray', X'01', 3, 0);
         UPDATE kv SET ts_ms = ts_ms + 1 WHERE key = 'k9';",
    );
    let (code, out) = verify(&path);
    assert_eq!(code, 1, "{out}");
    for needle in [
        r#"kv key "k7": the value differs from the one put at seq 258"#,
        r#"kv key "k8": missing, but the log put it at seq 259"#,
        r#"kv key "k1": present (seq 2), but the log deleted it at seq 301"#,
        r#"kv key "stray": present (seq 3), but the log never wrote it"#,
        r#"kv key "k9": ts_ms"#,
    ] {
        assert!(out.contains(needle), "{needle} not in:\n{out}");
    }
    assert!(out.contains("CORRUPT: 5 problems"), "{out}");
    // Every key is counted once, the missing one and the stray one included.
    assert!(out.contains("47 keys checked"), "{out}");
}

#[tokio::test]
async fn a_broken_btree_page_fails_integrity_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_file(dir.path()).await;
    checkpoint_all(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    let page = 4096;
    let pages = bytes.len() / page;
    assert!(pages > 20, "{pages} pages");
    // The header of a b-tree page in the middle of the file.
    let at = (pages / 2) * page;
    bytes[at..at + 64].fill(0xff);
    std::fs::write(&path, bytes).unwrap();
    let (code, out) = verify(&path);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("integrity_check: "), "{out}");
}

/// Damage SQLite reports as findings rather than as a failed query (here the header's count
/// of free pages) is listed too. (Catches: `integrity_check`'s rows taken as "ok" whatever
/// they say: the b-tree test above passes anyway, its damage failing the query itself.)
#[tokio::test]
async fn integrity_check_findings_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_file(dir.path()).await;
    checkpoint_all(&path);
    let mut bytes = std::fs::read(&path).unwrap();
    // Bytes 36..40 of the database header: the number of pages on the freelist.
    let free = u32::from_be_bytes(bytes[36..40].try_into().unwrap());
    bytes[36..40].copy_from_slice(&(free + 3).to_be_bytes());
    std::fs::write(&path, bytes).unwrap();
    let (code, out) = verify(&path);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("CORRUPT: 1 problem; "), "{out}");
    assert!(
        out.contains("integrity_check: ") && out.to_lowercase().contains("freelist: size is"),
        "{out}"
    );
}

#[tokio::test]
async fn a_pruned_log_chains_from_meta_base_crc() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_file(dir.path()).await;
    // What pruning leaves: entries up to 100 gone, the last of them recorded in meta.
    let crc: i64 = Connection::open(&path)
        .unwrap()
        .query_row("SELECT crc FROM wal_log WHERE seq = 100", [], |r| r.get(0))
        .unwrap();
    sql(
        &path,
        &format!(
            "DELETE FROM wal_log WHERE seq <= 100;
             INSERT INTO meta (name, value) VALUES ('base_seq', '100'), ('base_crc', '{crc}');
             INSERT INTO kv (key, value, seq, ts_ms) VALUES ('old', X'01', 100, 0);"
        ),
    );
    // A key last written at base_seq (its entry pruned) is fine, and counted.
    let (code, out) = verify(&path);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("base_seq 100"), "{out}");
    assert!(out.contains("46 keys checked"), "{out}");

    // A base_crc that does not chain into the oldest retained entry is found...
    sql(
        &path,
        "UPDATE meta SET value = '12345' WHERE name = 'base_crc'",
    );
    let (code, out) = verify(&path);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("seq 101: crc mismatch"), "{out}");
    // ...and so is a kv row newer than base_seq that the retained log does not explain.
    sql(
        &path,
        &format!(
            "UPDATE meta SET value = '{crc}' WHERE name = 'base_crc';
             INSERT INTO kv (key, value, seq, ts_ms) VALUES ('ghost', X'01', 150, 0);"
        ),
    );
    let (code, out) = verify(&path);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(r#"kv key "ghost": seq 150 is after meta.base_seq 100"#),
        "{out}"
    );
}

#[tokio::test]
async fn a_gap_in_the_log_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_file(dir.path()).await;
    sql(&path, "DELETE FROM wal_log WHERE seq IN (1, 50)");
    let (code, out) = verify(&path);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("seq 51: the log jumps there from seq 49"),
        "{out}"
    );
    // A log that lost its first entries is told apart from one with a hole.
    assert!(
        out.contains(
            "seq 2: the log starts there, but it must start at seq 1 (meta has no base_seq)"
        ),
        "{out}"
    );
}

/// A file that is not a database at all is one problem, said as SQLite says it, and the
/// checks that would only fail again after it are not run. (Catches: going on after
/// `integrity_check` cannot read the file, which lists a "cannot read" line for every table.)
#[test]
fn a_file_that_is_not_a_database_is_one_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ns.db");
    std::fs::write(&path, "not a database, ".repeat(512)).unwrap();
    let (code, out) = verify(&path);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("CORRUPT: 1 problem;")
            && out.contains("integrity_check: cannot run: file is not a database"),
        "{out}"
    );
}

#[test]
fn a_missing_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out) = verify(&dir.path().join("nope.db"));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("nope.db") && out.contains("no such file"),
        "{out}"
    );
}

/// A node opening a file whose newest entries were altered marks that namespace corrupt:
/// `/stats` says why, its reads and writes fail naming the file, other namespaces serve.
#[tokio::test]
async fn a_node_marks_a_namespace_with_an_altered_recent_entry_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_file(dir.path()).await;
    let conn = Connection::open(&path).unwrap();
    let mut value: Vec<u8> = conn
        .query_row("SELECT value FROM wal_log WHERE seq = 290", [], |r| {
            r.get(0)
        })
        .unwrap();
    value[0] ^= 0x01;
    conn.execute("UPDATE wal_log SET value = ?1 WHERE seq = 290", [value])
        .unwrap();
    drop(conn);

    let node = TestNode::primary(dir.path(), &[NS, "other"]).await;
    let c = reqwest::Client::new();
    let st = stats(&c, &node, NS).await;
    assert_eq!(st["corrupt"], true, "{st}");
    let reason = st["corrupt_reason"].as_str().unwrap();
    assert!(reason.contains("seq 290: crc mismatch"), "{reason}");
    assert_eq!(st["head_seq"], PUTS + 5);

    let file = path.display().to_string();
    for (method, body) in [
        (reqwest::Method::GET, None),
        (reqwest::Method::PUT, Some(r#"{"value":"eA=="}"#)),
    ] {
        let (s, j) = call(&c, method, &node.url(&format!("/api/v1/{NS}/kv/k0")), body).await;
        assert_eq!(s, 500, "{j}");
        let err = j["error"].as_str().unwrap();
        assert!(err.contains(&file) && err.contains("corrupt"), "{err}");
    }
    assert_eq!(stats(&c, &node, "other").await["corrupt"], false);
    assert_eq!(put(&c, &node, "other", "k", b"v").await, 1);
    node.stop().await;
}

/// The open-time check compares `kv` with the newest entries too, not only their crc chain:
/// a node opening a file whose `kv` row for a recently written key was altered, its log
/// intact, marks that namespace corrupt and says which key. (Catches: the keys of the
/// recent entries checked only when their chain is broken.)
#[tokio::test]
async fn a_node_marks_a_namespace_whose_kv_disagrees_with_a_recent_entry_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let path = written_file(dir.path()).await;
    // k7 was last put at seq 258, within the newest QUICK_ENTRIES of 305.
    sql(&path, "UPDATE kv SET value = X'00' WHERE key = 'k7';");
    let node = TestNode::primary(dir.path(), &[NS]).await;
    let c = reqwest::Client::new();
    let st = stats(&c, &node, NS).await;
    assert_eq!(st["corrupt"], true, "{st}");
    let reason = st["corrupt_reason"].as_str().unwrap();
    assert!(
        reason.contains(r#"kv key "k7": the value differs from the one put at seq 258"#),
        "{reason}"
    );
    node.stop().await;
}

/// When SQLite cannot even count a damaged namespace's keys, `/stats` still answers: corrupt,
/// why, and the head the node knows, so an operator sees how far the file got.
#[tokio::test]
async fn stats_of_a_namespace_sqlite_cannot_count_still_report_its_head() {
    use std::io::{Seek, SeekFrom, Write};
    let dir = tempfile::tempdir().unwrap();
    let path = written_file(dir.path()).await;
    checkpoint_all(&path);
    let conn = Connection::open(&path).unwrap();
    let page: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    // The roots of both b-trees of `kv` (the table and its key index), so that no plan can
    // count it; `wal_log` and `meta`, which the node reads at open, stay whole.
    let roots: Vec<i64> = conn
        .prepare("SELECT rootpage FROM sqlite_master WHERE tbl_name = 'kv'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(roots.len(), 2, "{roots:?}");
    drop(conn);
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    for root in roots {
        file.seek(SeekFrom::Start(((root - 1) * page) as u64))
            .unwrap();
        file.write_all(&vec![0xA5; page as usize]).unwrap();
    }
    drop(file);

    let node = TestNode::primary(dir.path(), &[NS]).await;
    let c = reqwest::Client::new();
    let (status, st) = call(
        &c,
        reqwest::Method::GET,
        &node.url(&format!("/api/v1/{NS}/stats")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{st}");
    assert_eq!(st["corrupt"], true, "{st}");
    assert!(
        st["corrupt_reason"].as_str().is_some_and(|r| !r.is_empty()),
        "{st}"
    );
    assert_eq!(st["head_seq"], PUTS + 5, "{st}");
    node.stop().await;
}
