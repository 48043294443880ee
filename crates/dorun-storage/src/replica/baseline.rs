//! What a data directory holds that the store may not: objects written while dorun ran
//! without `--replicate-to` (or with another store), imported, or committed under `async`
//! and not uploaded before a crash. Untouched, such an object would never reach the store
//! (only commits are shipped), and a restore would lose it or bring back an older state.
//!
//! So each start decides, from a marker the data directory keeps, which objects to ship whole
//! before serving:
//! - **all of them** when the marker is missing (the first start with replication, or a
//!   start after one without it, or an offline import), names another store, or names a
//!   generation that is not the one just before this start's (another process wrote the
//!   store since);
//! - **those whose WAL holds frames** after a start that did not end cleanly: everything else
//!   was checkpointed, which only happens once every frame is in the store;
//! - **none** after a clean stop (every commit settled) into the same store.
//!
//! An object is shipped by a commit of its position (`_cf_METADATA` key 2: this generation,
//! TXID 1) announced like any commit: its first announcement in a generation uploads the
//! whole file (a snapshot), and the isolate threads go on from TXID 2 (they read the position
//! back when they first commit to the file).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::journal::ObjectKey;
use super::replicator::{Announcement, Done, Replicator};
use crate::{Durability, ObjectDatabase};

/// The marker's file name in the data directory.
pub const MARKER: &str = ".dorun-replica.json";

/// Which objects a start ships whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    All,
    WithWal,
    Nothing,
}

/// What the marker says of the last start with replication: `(store, generation, clean)`.
fn read_marker(data_dir: &Path) -> Option<(String, u64, bool)> {
    let text = std::fs::read_to_string(data_dir.join(MARKER)).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((
        value["store"].as_str()?.to_string(),
        value["generation"].as_u64()?,
        value["clean"].as_bool()?,
    ))
}

/// Writes the marker (synced, then renamed into place).
pub fn write_marker(
    data_dir: &Path,
    store: &str,
    generation: u64,
    clean: bool,
) -> std::io::Result<()> {
    use std::io::Write;
    let text = serde_json::json!({ "store": store, "generation": generation, "clean": clean });
    let temporary = data_dir.join(format!("{MARKER}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(text.to_string().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, data_dir.join(MARKER))?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// Forgets what the marker says: the data directory changed outside replication (served
/// without `--replicate-to`, or imported into), so the next start with it ships everything.
pub fn forget_marker(data_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(data_dir.join(MARKER)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Which objects this start (of `generation`, into `store`) must ship whole.
pub fn scope(data_dir: &Path, store: &str, generation: u64) -> Scope {
    match read_marker(data_dir) {
        Some((marked, last, clean)) if marked == store && last + 1 == generation => {
            if clean {
                Scope::Nothing
            } else {
                Scope::WithWal
            }
        }
        _ => Scope::All,
    }
}

/// The object files of a data directory, `<dir>/<namespace>/<64 hex>.sqlite`, and the
/// binding files replicated beside them (`files::DIRECTORIES`).
fn object_files(data_dir: &Path) -> std::io::Result<Vec<(ObjectKey, PathBuf)>> {
    let mut files = Vec::new();
    for namespace in std::fs::read_dir(data_dir)?.flatten() {
        if !namespace.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = namespace.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        if name == super::files::R2 {
            // r2/<bucket>/index.sqlite
            for bucket in std::fs::read_dir(namespace.path())?.flatten() {
                let index = bucket.path().join("index.sqlite");
                if index.exists() {
                    files.push((
                        ObjectKey {
                            namespace: name.clone(),
                            id: bucket.file_name().to_string_lossy().into_owned(),
                        },
                        index,
                    ));
                }
            }
            continue;
        }
        let Ok(entries) = std::fs::read_dir(namespace.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = file.strip_suffix(".sqlite") else {
                continue;
            };
            if super::files::DIRECTORIES.contains(&name.as_str())
                || (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                files.push((
                    ObjectKey {
                        namespace: name.clone(),
                        id: id.to_string(),
                    },
                    entry.path(),
                ));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// How many objects are in flight at once (each is read whole into memory to be shipped).
const CHUNK: usize = 128;

/// Ships the objects `scope` names and waits until they are in the store, `CHUNK` at a
/// time. Returns how many were shipped.
pub fn ship(
    data_dir: &Path,
    replicator: &Replicator,
    scope: Scope,
    timeout: Duration,
) -> Result<usize, String> {
    if scope == Scope::Nothing || !data_dir.exists() {
        return Ok(0);
    }
    let files = object_files(data_dir).map_err(|e| format!("{}: {e}", data_dir.display()))?;
    let deadline = std::time::Instant::now() + timeout;
    let mut shipped = 0;
    let mut chosen = files.into_iter().filter(|(_, path)| {
        scope == Scope::All || std::fs::metadata(crate::wal_path(path)).is_ok_and(|m| m.len() > 0)
    });
    loop {
        let chunk: Vec<_> = chosen.by_ref().take(CHUNK).collect();
        if chunk.is_empty() {
            return Ok(shipped);
        }
        let (sender, results) = std::sync::mpsc::channel::<Result<(), String>>();
        let count = chunk.len();
        for (object, path) in chunk {
            let announcement = commit_position(replicator, object, path, sender.clone())?;
            replicator.announce_all(vec![announcement]);
        }
        for _ in 0..count {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match results.recv_timeout(left) {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return Err(why),
                Err(_) => {
                    return Err(format!(
                        "the store did not take the data directory's objects within {} s \
                         ({shipped} shipped)",
                        timeout.as_secs()
                    ))
                }
            }
        }
        shipped += count;
    }
}

/// Commits the object's position (this generation, TXID 1) and returns its announcement;
/// a binding file is announced whole as it is (it keeps no position, its TXIDs are counted
/// by the replicator).
fn commit_position(
    replicator: &Replicator,
    object: ObjectKey,
    path: PathBuf,
    sender: std::sync::mpsc::Sender<Result<(), String>>,
) -> Result<Announcement, String> {
    let done: Done = Box::new(move |result| {
        let _ = sender.send(result);
    });
    if super::files::is_binding(&object) {
        if object.namespace == super::files::R2 {
            // Its bodies first: the index refers to them.
            let blobs = path.with_file_name("blobs");
            for blob in std::fs::read_dir(&blobs).into_iter().flatten().flatten() {
                let name = blob.file_name().to_string_lossy().into_owned();
                replicator.put_file(&super::files::blob_key(&object.id, &name), &blob.path())?;
            }
        }
        let wal_end = std::fs::metadata(crate::wal_path(&path))
            .map(|m| m.len())
            .unwrap_or(0);
        return Ok(Announcement {
            object,
            database: path,
            wal_round: 0,
            first_txid: 0,
            last_txid: 0,
            wal_end,
            done: Some(done),
            whole: true,
        });
    }
    let mut db = ObjectDatabase::open(&path, Durability::Normal)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    db.replicated()
        .and_then(|()| db.write_position(replicator.epoch(), 1))
        .and_then(|()| db.commit())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    drop(db);
    let wal_end = std::fs::metadata(crate::wal_path(&path))
        .map(|m| m.len())
        .unwrap_or(0);
    Ok(Announcement {
        object,
        database: path,
        wal_round: 0,
        first_txid: 1,
        last_txid: 1,
        wal_end,
        done: Some(done),
        whole: false,
    })
}
