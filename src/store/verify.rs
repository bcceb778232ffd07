//! Checking a namespace file for damage: SQLite's own structure checks, the crc chain of the
//! log, and `kv` against the replay of the log.
//!
//! - [`verify_file`] / [`full`]: what `ferry verify FILE` runs. `PRAGMA integrity_check`; every
//!   retained `wal_log` entry (seqs dense, each crc equal to the chain recomputed from the one
//!   before it); `kv` equal to the replay of the retained log (every key the log touches holds
//!   the value, seq and ts_ms of its last put, or is absent after a delete; keys the log does not
//!   touch exist only when the log was pruned, and then with seq <= base_seq).
//! - [`quick`]: what a node runs when it opens a namespace. `PRAGMA quick_check` and the same
//!   checks restricted to the last [`QUICK_ENTRIES`] entries and the keys they touch, so it costs
//!   a few hundred row reads beyond SQLite's own pass.
//!
//! Where the chain starts: before seq 1 the previous crc is 0. A pruned log (or one installed
//! from a snapshot) records `base_seq` and `base_crc` in `meta`, the entry just before the oldest
//! retained one; its oldest entry must then be base_seq + 1 and chain from base_crc.
//!
//! Failed queries are findings, not errors: a damaged b-tree makes some reads fail, and the
//! report says which. Only failing to open the file at all is an error.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{Connection, OptionalExtension};

use super::StoreError;
use crate::log::{Entry, Op, Seq};

/// At most this many problems are listed; the rest are counted.
pub const MAX_PROBLEMS: usize = 50;

/// How many of the newest entries the open-time check verifies.
pub const QUICK_ENTRIES: i64 = 100;

/// What a check found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `wal_log` entries whose seq and crc were checked.
    pub entries: u64,
    /// First and last seq checked (0 when none).
    pub first_seq: Seq,
    pub last_seq: Seq,
    /// `meta.base_seq` / `meta.base_crc`, when the log was pruned or installed from a snapshot.
    pub base: Option<(Seq, u32)>,
    /// `kv` rows compared with the log.
    pub keys: u64,
    /// What is wrong, in the order found (at most [`MAX_PROBLEMS`]).
    pub problems: Vec<String>,
    /// Problems found beyond those listed.
    pub unlisted: u64,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, p: impl Into<String>) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(p.into());
        } else {
            self.unlisted += 1;
        }
    }

    /// One line: the first problem and how many more there are.
    pub fn summary(&self) -> String {
        match self.problems.first() {
            None => "ok".to_owned(),
            Some(first) => {
                let more = self.problems.len() as u64 - 1 + self.unlisted;
                if more == 0 {
                    first.clone()
                } else {
                    format!("{first} (and {more} more problems)")
                }
            }
        }
    }
}

/// Opens `path` read-only and runs [`full`]. Fails only when the file cannot be opened.
pub fn verify_file(path: &Path) -> Result<Report, StoreError> {
    if !path.is_file() {
        return Err(StoreError::BadFile {
            path: path.to_owned(),
            reason: "no such file".into(),
        });
    }
    let conn = super::schema::open_reader(path).map_err(|e| StoreError::BadFile {
        path: path.to_owned(),
        reason: format!("cannot open: {e}"),
    })?;
    Ok(full(&conn))
}

/// The offline check: see the module docs.
pub fn full(conn: &Connection) -> Report {
    let mut report = Report::default();
    // One read transaction: a node may be writing meanwhile.
    let tx = match conn.unchecked_transaction() {
        Ok(tx) => tx,
        Err(e) => {
            report.problem(format!("cannot start a read transaction: {e}"));
            return report;
        }
    };
    if !sqlite_check(&tx, "integrity_check", &mut report) {
        return report;
    }
    let Some(base) = read_base(&tx, &mut report) else {
        return report;
    };
    let mut touched = HashMap::new();
    if chain(&tx, None, base, Some(&mut touched), &mut report) {
        check_kv_full(&tx, base, &touched, &mut report);
    } else {
        report.problem("kv not compared with the log: the log could not be read in full");
    }
    report
}

/// The open-time check: see the module docs.
pub fn quick(conn: &Connection) -> Report {
    let mut report = Report::default();
    if !sqlite_check(conn, "quick_check", &mut report) {
        return report;
    }
    let Some(base) = read_base(conn, &mut report) else {
        return report;
    };
    let head: Option<Seq> = match conn.query_row("SELECT MAX(seq) FROM wal_log", [], |r| r.get(0)) {
        Ok(h) => h,
        Err(e) => {
            report.problem(format!("cannot read wal_log: {e}"));
            return report;
        }
    };
    let Some(head) = head else {
        return report;
    };
    // One entry more than checked: its crc is where the checked chain starts.
    let from = head - QUICK_ENTRIES;
    let mut touched = HashMap::new();
    if !chain(conn, Some(from), base, Some(&mut touched), &mut report) {
        return report;
    }
    for (key, last) in &touched {
        check_key(conn, key, *last, &mut report);
    }
    report
}

/// Runs `PRAGMA integrity_check` or `quick_check`; false when the file is not even readable
/// as a database (nothing else is worth trying then).
fn sqlite_check(conn: &Connection, pragma: &str, report: &mut Report) -> bool {
    let rows: rusqlite::Result<Vec<String>> = conn
        .prepare(&format!("PRAGMA {pragma}({MAX_PROBLEMS})"))
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect());
    match rows {
        Ok(rows) if rows == ["ok"] => true,
        Ok(rows) => {
            for r in rows {
                report.problem(format!("{pragma}: {r}"));
            }
            true
        }
        Err(e) => {
            report.problem(format!("{pragma}: cannot run: {e}"));
            e.sqlite_error_code() != Some(rusqlite::ErrorCode::NotADatabase)
        }
    }
}

/// `meta.base_seq` / `meta.base_crc`: `Some(None)` when the log was never pruned, `None` when
/// meta cannot be read (recorded as a problem).
fn read_base(conn: &Connection, report: &mut Report) -> Option<Option<(Seq, u32)>> {
    let get = |name: &str| -> rusqlite::Result<Option<String>> {
        conn.query_row(
            "SELECT CAST(value AS TEXT) FROM meta WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()
    };
    let (seq, crc) = match (get("base_seq"), get("base_crc")) {
        (Ok(s), Ok(c)) => (s, c),
        (Err(e), _) | (_, Err(e)) => {
            report.problem(format!("cannot read meta: {e}"));
            return None;
        }
    };
    let base = match (seq, crc) {
        (None, None) => None,
        (Some(s), Some(c)) => match (s.trim().parse::<Seq>(), c.trim().parse::<i64>()) {
            (Ok(s), Ok(c)) => Some((s, c as u32)),
            _ => {
                report.problem(format!(
                    "meta.base_seq {s:?} / meta.base_crc {c:?} are not numbers"
                ));
                return None;
            }
        },
        (s, c) => {
            report.problem(format!(
                "meta has only one of base_seq ({s:?}) and base_crc ({c:?})"
            ));
            return None;
        }
    };
    report.base = base;
    Some(base)
}

/// The last entry seen for a key: its seq and whether it was a put.
type Touched = HashMap<String, (Seq, bool)>;

/// Checks seqs and crcs of the entries with seq > `after` (all of them when `None`). The entry
/// at `after` itself only provides the starting crc. `touched` collects each key's last entry.
/// False when the log could not be read to its end.
fn chain(
    conn: &Connection,
    after: Option<Seq>,
    base: Option<(Seq, u32)>,
    mut touched: Option<&mut Touched>,
    report: &mut Report,
) -> bool {
    // Where the retained log must start, and the crc before it.
    let (start_seq, start_crc) = match base {
        Some((s, c)) => (s + 1, c),
        None => (1, 0),
    };
    // Either the previous (seq, crc) is known (the start of the log), or the first row read is
    // an anchor whose stored crc starts the chain.
    let (lower, mut prev, mut anchor) = match after {
        Some(a) if a >= start_seq => (a, None, Some(a)),
        _ => (Seq::MIN, Some((start_seq - 1, start_crc)), None),
    };
    let mut stmt = match conn.prepare(
        "SELECT seq, txn, op, key, value, ts_ms, crc FROM wal_log WHERE seq >= ?1 ORDER BY seq",
    ) {
        Ok(s) => s,
        Err(e) => {
            report.problem(format!("cannot read wal_log: {e}"));
            return false;
        }
    };
    let mut rows = match stmt.query([lower]) {
        Ok(r) => r,
        Err(e) => {
            report.problem(format!("cannot read wal_log: {e}"));
            return false;
        }
    };
    loop {
        let after_seq = prev.map_or(lower, |(p, _)| p);
        let row = match rows.next() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                report.problem(format!("cannot read wal_log after seq {after_seq}: {e}"));
                return false;
            }
        };
        let entry = match entry(row) {
            Ok(e) => e,
            Err(e) => {
                report.problem(format!("unreadable wal_log row after seq {after_seq}: {e}"));
                continue;
            }
        };
        if let Some(a) = anchor.take() {
            if entry.seq == a {
                prev = Some((entry.seq, entry.crc));
                continue;
            }
            report.problem(format!(
                "seq {}: expected seq {a} (seqs must be dense)",
                entry.seq
            ));
        }
        match prev {
            Some((p, _)) if entry.seq != p + 1 && report.entries == 0 && after.is_none() => report
                .problem(format!(
                    "seq {}: the log starts there, but {}",
                    entry.seq,
                    match base {
                        Some((s, _)) =>
                            format!("meta.base_seq is {s}, so it must start at {}", s + 1),
                        None => "it must start at seq 1 (meta has no base_seq)".to_owned(),
                    }
                )),
            Some((p, _)) if entry.seq != p + 1 => report.problem(format!(
                "seq {}: the log jumps there from seq {p} (seqs must be dense)",
                entry.seq
            )),
            Some((p, prev_crc)) => {
                let expected = entry.expected_crc(prev_crc);
                if expected != entry.crc {
                    report.problem(format!(
                        "seq {}: crc mismatch: stored {:#010x}, the chain from seq {p} gives {expected:#010x} (the entry was altered)",
                        entry.seq, entry.crc
                    ));
                }
            }
            None => {}
        }
        if report.entries == 0 {
            report.first_seq = entry.seq;
        }
        report.entries += 1;
        report.last_seq = entry.seq;
        if let Some(t) = touched.as_deref_mut() {
            t.insert(entry.key.clone(), (entry.seq, entry.op == Op::Put));
        }
        // A mismatch is reported once: the next entry chains from what is stored.
        prev = Some((entry.seq, entry.crc));
    }
    true
}

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let op: String = r.get(2)?;
    Ok(Entry {
        seq: r.get(0)?,
        txn: r.get(1)?,
        op: Op::parse(&op).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Text,
                format!("unknown op {op:?}").into(),
            )
        })?,
        key: r.get(3)?,
        value: r.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default(),
        ts_ms: r.get(5)?,
        crc: r.get::<_, i64>(6)? as u32,
    })
}

/// A `kv` row: value, seq, ts_ms.
type KvRow = (Vec<u8>, Seq, i64);

/// Compares one key's `kv` row with its last log entry (at `last.0`; a put when `last.1`).
fn check_key(conn: &Connection, key: &str, last: (Seq, bool), report: &mut Report) {
    let row: rusqlite::Result<Option<KvRow>> = conn
        .query_row(
            "SELECT value, seq, ts_ms FROM kv WHERE key = ?1",
            [key],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional();
    match row {
        Ok(row) => compare(conn, key, last, row, report),
        Err(e) => report.problem(format!("kv key {key:?}: cannot read: {e}")),
    }
}

fn compare(
    conn: &Connection,
    key: &str,
    (seq, is_put): (Seq, bool),
    row: Option<KvRow>,
    report: &mut Report,
) {
    report.keys += 1;
    match (row, is_put) {
        (None, false) => {}
        (Some((_, s, _)), false) => report.problem(format!(
            "kv key {key:?}: present (seq {s}), but the log deleted it at seq {seq}"
        )),
        (None, true) => report.problem(format!(
            "kv key {key:?}: missing, but the log put it at seq {seq}"
        )),
        (Some((value, s, ts)), true) => {
            let logged: rusqlite::Result<(Option<Vec<u8>>, i64)> = conn.query_row(
                "SELECT value, ts_ms FROM wal_log WHERE seq = ?1",
                [seq],
                |r| Ok((r.get(0)?, r.get(1)?)),
            );
            match logged {
                Err(e) => report.problem(format!("seq {seq}: cannot read: {e}")),
                Ok((v, t)) => {
                    if s != seq {
                        report.problem(format!(
                            "kv key {key:?}: seq {s}, but its last put is at seq {seq}"
                        ));
                    } else if v.unwrap_or_default() != value {
                        report.problem(format!(
                            "kv key {key:?}: the value differs from the one put at seq {seq}"
                        ));
                    } else if t != ts {
                        report.problem(format!(
                            "kv key {key:?}: ts_ms {ts}, but the put at seq {seq} has {t}"
                        ));
                    }
                }
            }
        }
    }
}

/// Every `kv` row against the replay; then the keys the log put that `kv` lacks.
fn check_kv_full(
    conn: &Connection,
    base: Option<(Seq, u32)>,
    touched: &Touched,
    report: &mut Report,
) {
    let mut stmt = match conn.prepare("SELECT key, value, seq, ts_ms FROM kv ORDER BY key") {
        Ok(s) => s,
        Err(e) => return report.problem(format!("cannot read kv: {e}")),
    };
    let mut rows = match stmt.query([]) {
        Ok(r) => r,
        Err(e) => return report.problem(format!("cannot read kv: {e}")),
    };
    let mut seen = 0usize;
    loop {
        let row = match rows.next() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => return report.problem(format!("cannot read kv: {e}")),
        };
        let read = || -> rusqlite::Result<(String, KvRow)> {
            Ok((row.get(0)?, (row.get(1)?, row.get(2)?, row.get(3)?)))
        };
        let (key, kv) = match read() {
            Ok(r) => r,
            Err(e) => {
                report.problem(format!("unreadable kv row: {e}"));
                continue;
            }
        };
        match touched.get(&key) {
            Some(last) => {
                seen += usize::from(last.1);
                compare(conn, &key, *last, Some(kv), report);
            }
            None => {
                report.keys += 1;
                match base {
                    None => report.problem(format!(
                        "kv key {key:?}: present (seq {}), but the log never wrote it",
                        kv.1
                    )),
                    Some((b, _)) if kv.1 > b => report.problem(format!(
                        "kv key {key:?}: seq {} is after meta.base_seq {b}, but the retained log does not write it",
                        kv.1
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    drop(rows);
    let puts = touched.values().filter(|(_, put)| *put).count();
    if seen < puts {
        // Some keys the log put are missing from kv: name them.
        for (key, (seq, _)) in touched.iter().filter(|(_, (_, put))| *put) {
            let present = conn
                .query_row("SELECT 1 FROM kv WHERE key = ?1", [key], |_| Ok(()))
                .optional();
            match present {
                Ok(Some(())) => {}
                Ok(None) => {
                    report.keys += 1;
                    report.problem(format!(
                        "kv key {key:?}: missing, but the log put it at seq {seq}"
                    ));
                }
                Err(e) => report.problem(format!("kv key {key:?}: cannot read: {e}")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_counts_unlisted_problems() {
        let mut r = Report::default();
        assert_eq!(r.summary(), "ok");
        for i in 0..MAX_PROBLEMS + 3 {
            r.problem(format!("p{i}"));
        }
        assert_eq!(r.problems.len(), MAX_PROBLEMS);
        assert_eq!(
            r.summary(),
            format!("p0 (and {} more problems)", MAX_PROBLEMS + 2)
        );
    }
}
