//! `ferry backup`: a consistent namespace file written from a running node's `Snapshot`
//! stream (primary or replica, local or remote). The file is what the node itself would hold
//! after bootstrapping from that snapshot: `kv` at one seq, an empty log whose base is that
//! seq (`meta.base_seq`/`base_crc`), and the upstream's `log_id`. Restore = put it in place as
//! `<base_dir>/<namespace>.db` and start the node.

use std::path::Path;
use std::time::Duration;

use super::bootstrap::{Fetched, fetch};
use super::client::{Security, Upstream};
use super::follower::End;
use super::pb::PositionRequest;
use crate::config::Synchronous;
use crate::store::schema;
use crate::store::snapshot::{self, Staging};

/// How many broken streams a backup resumes from before it gives up.
const MAX_RESUMES: u32 = 20;

/// What a finished backup holds.
#[derive(Debug, Clone)]
pub struct Backup {
    pub log_id: String,
    pub seq: i64,
    pub keys: i64,
}

/// Why the first request failed: the node's own answer, or, when the connection failed
/// before the node answered (a TLS listener hangs up on plaintext, and on a client without
/// the certificate it asks for), the cause and the options such a node needs.
fn first_request_failed(upstream: &str, security: &Security, s: &tonic::Status) -> String {
    use std::error::Error;
    let Some(transport) = s.source() else {
        return format!("{upstream}: {}", s.message());
    };
    let lacks = security.lacks(
        "; a node serving gRPC over TLS needs --ca",
        "; a node that asks for client certificates needs --cert and --key",
    );
    format!(
        "{upstream}: the connection failed before the node answered ({}){}",
        super::follower::cause(transport),
        lacks.unwrap_or_default()
    )
}

/// Writes namespace `namespace` of the node at `upstream` (`host:port` of its gRPC listener)
/// to a new file `out`, reporting progress through `progress(rows, bytes)`.
pub async fn backup(
    upstream: &str,
    namespace: &str,
    out: &Path,
    progress: &mut (dyn FnMut(i64, i64) + Send),
) -> Result<Backup, String> {
    backup_with(upstream, &Security::default(), namespace, out, progress).await
}

/// [`backup`] from a node reached with `security` (TLS, client certificate, replication
/// token).
pub async fn backup_with(
    upstream: &str,
    security: &Security,
    namespace: &str,
    out: &Path,
    progress: &mut (dyn FnMut(i64, i64) + Send),
) -> Result<Backup, String> {
    if out.exists() {
        return Err(format!(
            "{} already exists; choose a new file (a backup never overwrites)",
            out.display()
        ));
    }
    let mut client = Upstream::new(upstream, "backup", security)?
        .connect()
        .await?;
    let pos = client
        .position(PositionRequest {
            namespace: namespace.to_owned(),
            probe_seq: 0,
            ..Default::default()
        })
        .await
        .map_err(|s| first_request_failed(upstream, security, &s))?
        .into_inner();
    if !super::is_log_id(&pos.log_id) {
        return Err(format!(
            "{upstream} has no log for {namespace:?} yet (a replica that never met its upstream)"
        ));
    }
    let staging_path = snapshot::staging_path(out);
    snapshot::remove_files(&staging_path);
    let mut staging = Staging::open(&staging_path).map_err(|e| e.to_string())?;
    let mut resumes = 0;
    loop {
        let end = fetch(
            &mut client,
            namespace,
            &pos.log_id,
            &mut staging,
            &mut |event| {
                if let Fetched::Rows(p) = event {
                    progress(p.rows, p.bytes);
                }
            },
        )
        .await;
        match end {
            End::Again => break,
            End::Retry(why) if resumes < MAX_RESUMES => {
                resumes += 1;
                eprintln!("backup: {why}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            End::Retry(why) | End::Fatal(why) | End::Refused(why) => {
                staging.remove();
                return Err(why);
            }
            End::Shutdown => unreachable!("a backup has no shutdown signal"),
        }
    }
    let out = out.to_owned();
    let ns = namespace.to_owned();
    let log_id = pos.log_id.clone();
    tokio::task::spawn_blocking(move || {
        let minted = || String::new();
        let result = schema::open_writer(&out, &ns, Synchronous::Full, minted)
            .map_err(|e| e.to_string())
            .and_then(|(conn, _)| {
                snapshot::install(&conn, staging.path()).map_err(|e| e.to_string())
            });
        staging.remove();
        match result {
            Ok(installed) => Ok(Backup {
                log_id,
                seq: installed.head.0,
                keys: installed.keys,
            }),
            Err(e) => {
                snapshot::remove_files(&out);
                Err(e)
            }
        }
    })
    .await
    .map_err(|e| e.to_string())?
}
