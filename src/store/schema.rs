//! Opening a namespace file: connection PRAGMAs, migrations, and the checks that refuse a file
//! ferry did not write.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::StoreError;
use crate::config::Synchronous;
use crate::log::Seq;

/// Migrations in order; `PRAGMA user_version` records how many have been applied.
const MIGRATIONS: &[(&str, &str)] =
    &[("0001_init", include_str!("../../migrations/0001_init.sql"))];

/// Bytes the `-wal` file is truncated to after a checkpoint (`PRAGMA journal_size_limit`).
pub const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// What a namespace file says about itself once opened and checked.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub log_id: String,
    pub head_seq: Seq,
    pub head_crc: u32,
    pub base_seq: Seq,
    /// `meta.fenced_at_ms` is set: the namespace refuses writes.
    pub fenced: bool,
    pub created: bool,
}

/// How long a connection waits for another's lock before SQLite reports the file busy.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Per-connection settings. Set at every open, never inside migrations, because PRAGMAs like
/// `synchronous` are not persisted in the file.
fn configure(conn: &Connection, sync: Synchronous) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", sync.pragma())?;
    // After a checkpoint has copied the WAL into the file, cut the WAL back to this size: a
    // burst of writes (or a long-held snapshot read) must not leave a huge WAL file behind.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    Ok(())
}

/// Opens the read-write connection of a namespace, creating and initialising the file if it
/// does not exist. `new_log_id` is the id a freshly created file gets.
pub fn open_writer(
    path: &Path,
    namespace: &str,
    sync: Synchronous,
    new_log_id: fn() -> String,
) -> Result<(Connection, FileInfo), StoreError> {
    let existed = path.exists();
    let bad = |reason: String| StoreError::BadFile {
        path: path.to_owned(),
        reason,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
    )
    .map_err(|e| bad(format!("cannot open: {e}")))?;
    // The first statement that reads the header is where a non-SQLite file shows up.
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(|e| bad(format!("not a SQLite database ({e})")))?;
    if version > SCHEMA_VERSION {
        return Err(bad(format!(
            "schema version {version} is newer than this ferry understands ({SCHEMA_VERSION}); upgrade ferry"
        )));
    }
    if version == 0 {
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .map_err(|e| bad(format!("not a SQLite database ({e})")))?;
        if !tables.is_empty() {
            return Err(bad(format!(
                "not a ferry namespace file (no schema version, but it has tables: {}); move it away or point base_dir elsewhere",
                tables.join(", ")
            )));
        }
    }
    configure(&conn, sync).map_err(|e| bad(format!("cannot configure: {e}")))?;

    let created = version == 0;
    if version < SCHEMA_VERSION {
        migrate(&conn, version, created.then(|| (namespace, new_log_id())))
            .map_err(|e| bad(format!("cannot apply migrations: {e}")))?;
    }

    let meta = |name: &str| -> Result<Option<String>, StoreError> {
        conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| bad(format!("cannot read meta: {e}")))
    };
    let log_id = meta("log_id")?.ok_or_else(|| bad("meta.log_id is missing".into()))?;
    let (head_seq, head_crc) = head(&conn).map_err(|e| bad(format!("cannot read wal_log: {e}")))?;
    let (base_seq, _) = base(&conn).map_err(|e| bad(format!("cannot read meta: {e}")))?;
    let fenced = fenced_at_ms(&conn)
        .map_err(|e| bad(format!("cannot read meta: {e}")))?
        .is_some();
    if log_id.is_empty() && head_seq != 0 {
        return Err(bad("meta.log_id is empty but wal_log has entries".into()));
    }
    match meta("namespace")? {
        Some(n) if n == namespace => {}
        Some(n) => {
            return Err(bad(format!(
                "the file belongs to namespace {n:?}, not {namespace:?}"
            )));
        }
        None => return Err(bad("meta.namespace is missing".into())),
    }
    tracing::debug!(path = %path.display(), existed, "namespace file opened");
    Ok((
        conn,
        FileInfo {
            log_id,
            head_seq,
            head_crc,
            base_seq,
            fenced,
            created,
        },
    ))
}

/// Applies the migrations after `from` in one transaction; when creating, also writes the
/// file's identity in that same transaction so a file never exists without it.
fn migrate(conn: &Connection, from: i64, identity: Option<(&str, String)>) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    for (_, sql) in &MIGRATIONS[from as usize..] {
        tx.execute_batch(sql)?;
    }
    if let Some((namespace, log_id)) = identity {
        tx.execute(
            "INSERT INTO meta (name, value) VALUES ('log_id', ?1), ('namespace', ?2)",
            params![log_id, namespace],
        )?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()
}

/// The last entry's seq and crc. With no entries: the base (the entry just before the oldest
/// retained one, see [`base`]); (0, 0) for a log that never had any.
pub fn head(conn: &Connection) -> rusqlite::Result<(Seq, u32)> {
    let last = conn
        .query_row(
            "SELECT seq, crc FROM wal_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u32)),
        )
        .optional()?;
    match last {
        Some(h) => Ok(h),
        None => base(conn),
    }
}

/// `meta.base_seq` and `meta.base_crc`: the seq and crc of the entry just before the oldest
/// one retained in `wal_log`, written when entries are pruned or a snapshot is installed.
/// (0, 0) when the log was never pruned: it starts at seq 1, chained from crc 0.
pub fn base(conn: &Connection) -> rusqlite::Result<(Seq, u32)> {
    let get = |name: &str| -> rusqlite::Result<i64> {
        conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
            .query_row([name], |r| r.get::<_, String>(0))
            .optional()
            .map(|v| v.and_then(|v| v.parse().ok()).unwrap_or(0))
    };
    Ok((get("base_seq")?, get("base_crc")? as u32))
}

/// `meta.prev_log_id` and `meta.fork_seq`: where this log was forked from by a promotion
/// (`None` when it never was).
pub fn lineage(conn: &Connection) -> rusqlite::Result<Option<super::Lineage>> {
    let get = |name: &str| -> rusqlite::Result<Option<String>> {
        conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
            .query_row([name], |r| r.get::<_, String>(0))
            .optional()
    };
    let prev_log_id = get("prev_log_id")?.and_then(crate::log::LogId::from_meta);
    Ok(match (prev_log_id, get("fork_seq")?) {
        (Some(prev_log_id), Some(fork)) => Some(super::Lineage {
            prev_log_id,
            fork_seq: fork.parse().unwrap_or(0),
        }),
        _ => None,
    })
}

/// One `meta` value, if present.
pub fn meta(conn: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
        .query_row([name], |r| r.get::<_, String>(0))
        .optional()
}

/// When this namespace was fenced (`meta.fenced_at_ms`): it refuses writes.
pub fn fenced_at_ms(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = 'fenced_at_ms'")?
        .query_row([], |r| r.get::<_, String>(0))
        .optional()
        .map(|v| v.and_then(|v| v.parse().ok()))
}

/// When this namespace was promoted from a replica to a primary (`meta.promoted_at_ms`).
pub fn promoted_at_ms(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = 'promoted_at_ms'")?
        .query_row([], |r| r.get::<_, String>(0))
        .optional()
        .map(|v| v.and_then(|v| v.parse().ok()))
}

/// Records the base (see [`base`]); part of the caller's transaction.
pub fn set_base(conn: &Connection, seq: Seq, crc: u32) -> rusqlite::Result<()> {
    set_meta(conn, "base_seq", &seq.to_string())?;
    set_meta(conn, "base_crc", &crc.to_string())
}

/// Writes one `meta` row; part of the caller's transaction.
pub fn set_meta(conn: &Connection, name: &str, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![name, value])?;
    Ok(())
}

/// Opens a read-only connection to an existing, already checked namespace file.
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

/// A fresh random log id: 128 bits, hex (the text of [`crate::log::LogId::mint`]).
pub fn mint_log_id() -> String {
    crate::log::LogId::mint().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_cleanly_to_an_empty_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns.db");
        let (conn, info) = open_writer(&path, "ns", Synchronous::Full, mint_log_id).unwrap();
        assert!(info.created);
        assert_eq!(info.head_seq, 0);
        assert_eq!(info.log_id.len(), 32);
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        drop(conn);
        // Reopening keeps the identity: log_id is minted once.
        let (_, again) = open_writer(&path, "ns", Synchronous::Full, String::new).unwrap();
        assert!(!again.created);
        assert_eq!(again.log_id, info.log_id);
    }
}
