//! One process per base_dir: an exclusive advisory lock on `<base_dir>/LOCK`.
//!
//! Two nodes on one directory would both open every namespace file read-write and both take
//! the next seq: the second one's writes then fail ("UNIQUE constraint failed") or, worse,
//! their followers see two histories. The lock is `flock`-style (std's `File::try_lock`), so
//! the kernel drops it when the process dies, even on kill -9: a stale LOCK file never blocks
//! a restart. The holder writes its pid into the file so the refused node can name it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use super::StoreError;

/// The lock file's name inside base_dir.
pub const LOCK_FILE: &str = "LOCK";

/// A held lock on a base_dir; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock without waiting, or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, StoreError> {
        let path = dir.join(LOCK_FILE);
        let io = |e: std::io::Error| StoreError::Io {
            path: path.clone(),
            reason: e.to_string(),
        };
        // No truncate here: until the lock is ours, the content is the holder's pid.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("pid {pid}"),
                    Err(_) => "pid unknown".to_owned(),
                };
                return Err(StoreError::Locked {
                    dir: dir.to_owned(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        tracing::debug!(lock = %path.display(), "base_dir locked");
        Ok(DirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
