//! Rebuilding objects' files from the store: every generation's journal in order, each batch
//! in seq order up to the first hole or fence (a batch after a hole was never acknowledged,
//! and may depend on the missing one), each object's segments applied in TXID order with no
//! gap allowed.
//!
//! This reads journals only; snapshots, per-object L1 files and point-in-time come later
//! (ARCHITECTURE.md, "`dorun restore`").

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::journal::{self, ObjectKey, Stored};
use super::ltx;
use super::store::{self, Store, StoreError};

/// Which objects to restore.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub namespace: Option<String>,
    pub object: Option<String>,
    /// Point in time (ms since the epoch): only batches cut at or before it.
    pub until_ms: Option<u64>,
}

impl Filter {
    fn wants(&self, object: &ObjectKey) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|ns| *ns == object.namespace)
            && self.object.as_ref().is_none_or(|id| *id == object.id)
    }
}

/// What a restore wrote.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Last TXID of each object restored.
    pub objects: BTreeMap<ObjectKey, u64>,
    pub batches: usize,
    pub segments: usize,
}

struct Target {
    file: std::fs::File,
    last_txid: u64,
}

/// The sessions of the store's generations, oldest first.
pub async fn sessions(store: &Store) -> Result<Vec<String>, StoreError> {
    let mut sessions = Vec::new();
    for key in store::list(store, "g").await? {
        let record = store::get(store, &key).await?;
        let value: serde_json::Value = serde_json::from_slice(&record)
            .map_err(|e| StoreError::Invalid(format!("{key}: {e}")))?;
        let session = value["session"]
            .as_str()
            .ok_or_else(|| StoreError::Invalid(format!("{key}: no session")))?;
        sessions.push(session.to_string());
    }
    Ok(sessions)
}

/// Writes every wanted object as `<data_dir>/<namespace>/<id>.sqlite` (no WAL). Existing
/// files of those objects are replaced.
pub async fn restore(
    store: &Store,
    data_dir: &Path,
    filter: &Filter,
) -> Result<Restored, StoreError> {
    let mut restored = Restored::default();
    let mut targets: HashMap<ObjectKey, Target> = HashMap::new();
    'sessions: for session in sessions(store).await? {
        let prefix = format!("j/{session}/b");
        let seqs: Vec<u64> = store::list(store, &prefix)
            .await?
            .iter()
            .filter_map(|key| key.rsplit('/').next())
            .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
            .collect();
        for (expected, seq) in (1..).zip(seqs) {
            if seq != expected {
                break; // a hole: nothing after it was acknowledged
            }
            let bytes = store::get(store, &journal::batch_key(&session, seq)).await?;
            let entries = match journal::decode(&bytes)
                .map_err(|e| StoreError::Invalid(format!("{session} batch {seq}: {e}")))?
            {
                Stored::Fence => break,
                Stored::Batch(info, _) if filter.until_ms.is_some_and(|t| info.created_ms > t) => {
                    // Batches are cut in time order, and later sessions start later.
                    break 'sessions;
                }
                Stored::Batch(_, entries) => entries,
            };
            restored.batches += 1;
            for entry in entries {
                if !filter.wants(&entry.object) {
                    continue;
                }
                let slice = &bytes[entry.offset as usize..(entry.offset + entry.length) as usize];
                let file = ltx::decode(slice)
                    .map_err(|e| StoreError::Invalid(format!("{session} batch {seq}: {e}")))?;
                let target = match targets.get_mut(&entry.object) {
                    Some(target) => target,
                    None => {
                        let path = object_path(data_dir, &entry.object);
                        std::fs::create_dir_all(path.parent().expect("a parent"))
                            .map_err(|e| io(&path, e))?;
                        for stale in [
                            path.with_extension("sqlite-wal"),
                            path.with_extension("sqlite-shm"),
                        ] {
                            let _ = std::fs::remove_file(stale);
                        }
                        let file = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
                        targets
                            .entry(entry.object.clone())
                            .or_insert(Target { file, last_txid: 0 })
                    }
                };
                if file.header.is_snapshot() {
                    // The whole database: it replaces whatever came before.
                    target
                        .file
                        .set_len(0)
                        .map_err(|e| StoreError::Invalid(e.to_string()))?;
                } else if entry.min_txid != target.last_txid + 1 {
                    return Err(StoreError::Invalid(format!(
                        "{}/{}: the store's history has a gap (after TXID {} comes {}, in {session} batch {seq})",
                        entry.object.namespace, entry.object.id, target.last_txid, entry.min_txid
                    )));
                }
                let size = u64::from(file.header.page_size);
                for (pgno, page) in &file.pages {
                    target
                        .file
                        .write_all_at(page, (u64::from(*pgno) - 1) * size)
                        .map_err(|e| StoreError::Invalid(e.to_string()))?;
                }
                target
                    .file
                    .set_len(u64::from(file.header.commit) * size)
                    .map_err(|e| StoreError::Invalid(e.to_string()))?;
                target.last_txid = entry.max_txid;
                restored.segments += 1;
                restored
                    .objects
                    .insert(entry.object.clone(), entry.max_txid);
            }
        }
    }
    for (object, target) in targets {
        target
            .file
            .sync_all()
            .map_err(|e| io(&object_path(data_dir, &object), e))?;
    }
    Ok(restored)
}

pub fn object_path(data_dir: &Path, object: &ObjectKey) -> PathBuf {
    data_dir
        .join(&object.namespace)
        .join(format!("{}.sqlite", object.id))
}

fn io(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Invalid(format!("{}: {error}", path.display()))
}
