//! Replication of the storage bindings' SQLite files (KV namespaces, D1 databases, queues,
//! workflows): every
//! commit, whichever code path made it (a grouped write, D1's `exec`, a KV read that drops
//! an expired key, the admin listener, a reset), is announced from SQLite's WAL hook, which
//! runs after each commit on the connection. Their TXIDs are counted by the replicator (a
//! binding file keeps no position row: a D1 database holds only the user's tables).
//!
//! Under `--durability replicated` the hook waits until the commit is in the store, so the
//! write's caller is answered only then (the file's other users wait meanwhile: the hook
//! runs while the caller holds the file's handle). The WAL is checkpointed from the hook
//! once it passes 4 MiB and every frame of it is in the store; SQLite's own checkpoints are
//! off (installing a WAL hook replaces the auto-checkpoint, and closing does not checkpoint).
//!
//! A file is `o/<directory>/<file stem>/...` in the store (`kv/<id>`, `d1/<name>`,
//! `queues/<name>`, `workflows/<name>`), so
//! `dorun restore` writes it back to the same place.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rusqlite::Connection;

use super::journal::ObjectKey;
use super::replicator::{Announcement, Done};
use super::Replication;

/// The directories (under the data directory) whose files are replicated this way.
pub const DIRECTORIES: [&str; 4] = ["kv", "d1", "queues", "workflows"];

/// Past this size a WAL that is wholly in the store is checkpointed.
const CHECKPOINT_BYTES: u64 = 4 << 20;

/// How long a commit waits for the store before its write fails.
const WAIT: Duration = Duration::from_secs(60);

static REPLICATION: OnceLock<Arc<Replication>> = OnceLock::new();

/// Turns replication of binding files on for this process (before any is opened).
pub fn enable(replication: Arc<Replication>) {
    let _ = REPLICATION.set(replication);
}

/// Whether binding files are replicated in this process.
pub fn enabled() -> bool {
    REPLICATION.get().is_some()
}

/// The directory of R2 buckets: each bucket is `r2/<bucket>/` with `index.sqlite`, whose
/// commits are replicated as `o/r2/<bucket>/...`, and `blobs/`, whose files go to the store
/// as they are written, as `r2/<bucket>/blobs/<name>` (see [`replicate_blob`]).
pub const R2: &str = "r2";

/// The store key of a binding file at `path` (`<dir>/<stem>.sqlite`, or an R2 bucket's
/// `r2/<bucket>/index.sqlite`), if it is one.
pub fn object_key(path: &Path) -> Option<ObjectKey> {
    if path.file_name()? == "index.sqlite" {
        let bucket = path.parent()?;
        if bucket.parent()?.file_name()? == R2 {
            return Some(ObjectKey {
                namespace: R2.to_string(),
                id: bucket.file_name()?.to_str()?.to_string(),
            });
        }
    }
    let directory = path.parent()?.file_name()?.to_str()?;
    let stem = path.file_name()?.to_str()?.strip_suffix(".sqlite")?;
    DIRECTORIES.contains(&directory).then(|| ObjectKey {
        namespace: directory.to_string(),
        id: stem.to_string(),
    })
}

/// Where a binding file of the store goes back to in a data directory.
pub fn restore_path(data_dir: &Path, object: &ObjectKey) -> Option<PathBuf> {
    if object.namespace == R2 {
        return Some(data_dir.join(R2).join(&object.id).join("index.sqlite"));
    }
    DIRECTORIES.contains(&object.namespace.as_str()).then(|| {
        data_dir
            .join(&object.namespace)
            .join(format!("{}.sqlite", object.id))
    })
}

/// Whether an object key names a binding file (not a Durable Object).
pub fn is_binding(object: &ObjectKey) -> bool {
    object.namespace == R2 || DIRECTORIES.contains(&object.namespace.as_str())
}

/// The store key of an R2 body.
pub fn blob_key(bucket: &str, blob: &str) -> String {
    format!("{R2}/{bucket}/blobs/{blob}")
}

/// Uploads an R2 body (`<bucket dir>/blobs/<blob>`, complete and synced) before the index
/// refers to it, and waits. Nothing without replication.
pub fn replicate_blob(bucket_dir: &Path, blob: &str) -> Result<(), String> {
    let Some(replication) = REPLICATION.get() else {
        return Ok(());
    };
    let bucket = bucket_dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    replication.replicator.put_file(
        &blob_key(&bucket, blob),
        &bucket_dir.join("blobs").join(blob),
    )
}

/// Installs the WAL hook on a binding file's connection when replication is on.
pub fn install(conn: &mut Connection, path: &Path) -> rusqlite::Result<()> {
    let (Some(replication), Some(object)) = (REPLICATION.get().cloned(), object_key(path)) else {
        return Ok(());
    };
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )?;
    let database = path.to_path_buf();
    let wal: PathBuf = crate::wal_path(path);
    let mut round = 0u64;
    conn.wal_hook(Some(move |log: &mut rusqlite::hooks::Wal, _pages| {
        let wal_end = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        let (sender, answer) = std::sync::mpsc::channel();
        let done: Done = Box::new(move |result| {
            let _ = sender.send(result);
        });
        replication.replicator.announce_all(vec![Announcement {
            object: object.clone(),
            database: database.clone(),
            wal_round: round,
            first_txid: 0,
            last_txid: 0,
            wal_end,
            done: Some(done),
            whole: false,
        }]);
        if replication.waits() {
            let result = answer
                .recv_timeout(WAIT)
                .unwrap_or_else(|_| Err("the store did not take the commit in time".into()));
            if let Err(why) = result {
                tracing::error!("{}: {why}", database.display());
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
                    Some(format!("replication: {why}")),
                ));
            }
        }
        if wal_end > CHECKPOINT_BYTES {
            if let Some(salts) = super::wal::header_salts(&wal) {
                if replication
                    .replicator
                    .uploaded_through(&wal, salts, wal_end)
                    && log
                        .checkpoint_v2(rusqlite::wal::CheckpointMode::TRUNCATE)
                        .is_ok()
                    && std::fs::metadata(&wal).is_ok_and(|m| m.len() == 0)
                {
                    // A new WAL: the replicator starts reading it from its header.
                    round += 1;
                }
            }
        }
        Ok(())
    }))
}
