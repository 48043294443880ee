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
    /// R2 bodies downloaded.
    pub blobs: usize,
}

struct Target {
    file: std::fs::File,
    last_txid: u64,
    /// The generation of the last file applied (TXIDs restart with a new process's).
    generation: u64,
}

/// One generation's `g/` record.
#[derive(Debug)]
pub struct Generation {
    pub number: u64,
    pub session: String,
    /// When it began (ms since the epoch).
    pub ms: u64,
    /// Namespaces whose objects were deleted where it begins (an operator's reset).
    pub reset: Vec<String>,
}

/// The store's generations, oldest first.
pub async fn generations(store: &Store) -> Result<Vec<Generation>, StoreError> {
    let mut generations = Vec::new();
    for key in store::list(store, "g").await? {
        let Some(generation) = key
            .strip_prefix("g/")
            .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        else {
            continue;
        };
        let record = store::get(store, &key).await?;
        let value: serde_json::Value = serde_json::from_slice(&record)
            .map_err(|e| StoreError::Invalid(format!("{key}: {e}")))?;
        let session = value["session"]
            .as_str()
            .ok_or_else(|| StoreError::Invalid(format!("{key}: no session")))?;
        let reset = value["reset"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(|name| name.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        generations.push(Generation {
            number: generation,
            session: session.to_string(),
            ms: value["ms"].as_u64().unwrap_or(0),
            reset,
        });
    }
    generations.sort_by_key(|generation| generation.number);
    Ok(generations)
}

/// L1 files by epoch, then object: (min TXID, max TXID, key), in TXID order.
type L1Files = BTreeMap<u64, BTreeMap<ObjectKey, Vec<(u64, u64, String)>>>;

/// The L1 files in the store that the filter wants.
async fn l1_files(store: &Store, filter: &Filter) -> Result<L1Files, StoreError> {
    let mut files = L1Files::new();
    let prefix = match (&filter.namespace, &filter.object) {
        (Some(ns), Some(id)) => format!("o/{ns}/{id}"),
        (Some(ns), None) => format!("o/{ns}"),
        _ => "o".to_string(),
    };
    for key in store::list(store, &prefix).await? {
        let Some((object, epoch, min, max)) = super::replicator::parse_l1_key(&key) else {
            continue;
        };
        if !filter.wants(&object) {
            continue;
        }
        files
            .entry(epoch)
            .or_default()
            .entry(object)
            .or_default()
            .push((min, max, key.clone()));
    }
    for objects in files.values_mut() {
        for list in objects.values_mut() {
            // By the TXID each file reaches; a snapshot after the segments it covers (an
            // object shipped whole again restarts at TXID 1: `1-100` comes after `91-100`).
            list.sort_by_key(|(min, max, _)| (*max, std::cmp::Reverse(*min)));
        }
    }
    Ok(files)
}

/// For each object, the newest snapshot among its L1 files (generation, its max TXID):
/// nothing before it needs to be read.
fn newest_snapshots(files: &L1Files) -> HashMap<ObjectKey, (u64, u64)> {
    let mut newest: HashMap<ObjectKey, (u64, u64)> = HashMap::new();
    for (generation, objects) in files {
        for (object, list) in objects {
            for (min, max, _) in list {
                if *min == 1 {
                    let entry = newest.entry(object.clone()).or_insert((*generation, *max));
                    *entry = (*entry).max((*generation, *max));
                }
            }
        }
    }
    newest
}

/// Writes every wanted object as `<data_dir>/<namespace>/<id>.sqlite` (no WAL). Existing
/// files of those objects are replaced. Per generation: the reset it records (objects of
/// those namespaces restored so far are deleted), the objects' L1 files, then the session's
/// journal batches past its cursor.
pub async fn restore(
    store: &Store,
    data_dir: &Path,
    filter: &Filter,
) -> Result<Restored, StoreError> {
    let mut restored = Restored::default();
    let mut targets: HashMap<ObjectKey, Target> = HashMap::new();
    let mut l1 = l1_files(store, filter).await?;
    // Where each object's history may start (a point in time reads everything: the newest
    // snapshot may be later than it).
    let bases = if filter.until_ms.is_none() {
        newest_snapshots(&l1)
    } else {
        HashMap::new()
    };
    let before_base = |object: &ObjectKey, generation: u64, min: u64, max: u64| {
        bases.get(object).is_some_and(|&(base, snapshot)| {
            generation < base
                || (generation == base && (max < snapshot || (max == snapshot && min != 1)))
        })
    };
    let generations = generations(store).await?;
    if generations.is_empty() {
        // A mistyped URL or prefix: say so rather than restore nothing.
        return Err(StoreError::Invalid(
            "nothing was ever replicated there (no generation records under g/): check the \
             bucket and prefix"
                .into(),
        ));
    }
    let mut writer = Writer {
        data_dir,
        targets: &mut targets,
        restored: &mut restored,
    };
    'sessions: for Generation {
        number: generation,
        session,
        ms,
        reset,
    } in generations
    {
        if !reset.is_empty() {
            if filter.until_ms.is_some_and(|t| ms > t) {
                break; // the reset came after the point in time
            }
            writer.drop_namespaces(&reset)?;
        }
        let mut past_until = false;
        for (object, files) in l1.remove(&generation).unwrap_or_default() {
            for (min, max, key) in files {
                if before_base(&object, generation, min, max) {
                    continue;
                }
                let bytes = store::get(store, &key).await?;
                let file =
                    ltx::decode(&bytes).map_err(|e| StoreError::Invalid(format!("{key}: {e}")))?;
                if filter.until_ms.is_some_and(|t| file.header.timestamp > t) {
                    past_until = true;
                    break;
                }
                writer.apply(&object, &file, &key, generation)?;
            }
        }
        let keys = store::list(store, &format!("j/{session}")).await?;
        let numbered = |kind: &str| -> Vec<u64> {
            keys.iter()
                .filter_map(|key| {
                    let (head, hex) = key.rsplit_once('/')?;
                    (head.rsplit('/').next()? == kind).then_some(())?;
                    u64::from_str_radix(hex, 16).ok()
                })
                .collect()
        };
        // Batches up to the cursor are in L1 files (and may not have been deleted yet).
        let cursor = numbered("c").into_iter().max().unwrap_or(0);
        let seqs: Vec<u64> = numbered("b").into_iter().filter(|s| *s > cursor).collect();
        for (expected, seq) in (cursor + 1..).zip(seqs) {
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
            writer.restored.batches += 1;
            for entry in entries {
                if !filter.wants(&entry.object)
                    || bases
                        .get(&entry.object)
                        .is_some_and(|&(base, _)| generation < base)
                {
                    continue;
                }
                let slice = &bytes[entry.offset as usize..(entry.offset + entry.length) as usize];
                let file = ltx::decode(slice)
                    .map_err(|e| StoreError::Invalid(format!("{session} batch {seq}: {e}")))?;
                writer.apply(
                    &entry.object,
                    &file,
                    &format!("{session} batch {seq}"),
                    generation,
                )?;
            }
        }
        if past_until {
            break;
        }
    }
    for (object, target) in targets {
        target
            .file
            .sync_all()
            .map_err(|e| io(&object_path(data_dir, &object), e))?;
    }
    for object in restored.objects.keys() {
        if object.namespace == super::files::R2 {
            restored.blobs += restore_blobs(store, data_dir, &object.id).await?;
        }
    }
    Ok(restored)
}

/// Downloads the bodies a restored R2 bucket's index refers to (objects and parts).
async fn restore_blobs(store: &Store, data_dir: &Path, bucket: &str) -> Result<usize, StoreError> {
    let dir = data_dir.join(super::files::R2).join(bucket);
    let index = dir.join("index.sqlite");
    let blobs: Vec<String> = {
        let conn = rusqlite::Connection::open(&index)
            .map_err(|e| StoreError::Invalid(format!("{}: {e}", index.display())))?;
        let mut statement = conn
            .prepare("SELECT blob FROM objects WHERE blob != '' UNION SELECT blob FROM parts")
            .map_err(|e| StoreError::Invalid(format!("{}: {e}", index.display())))?;
        let rows = statement
            .query_map([], |row| row.get(0))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<String>>>())
            .map_err(|e| StoreError::Invalid(format!("{}: {e}", index.display())))?;
        rows
    };
    std::fs::create_dir_all(dir.join("blobs")).map_err(|e| io(&dir, e))?;
    for blob in &blobs {
        store::get_to_file(
            store,
            &super::files::blob_key(bucket, blob),
            &dir.join("blobs").join(blob),
        )
        .await?;
    }
    Ok(blobs.len())
}

struct Writer<'a> {
    data_dir: &'a Path,
    targets: &'a mut HashMap<ObjectKey, Target>,
    restored: &'a mut Restored,
}

impl Writer<'_> {
    /// Deletes what was restored so far of the objects of `namespaces`.
    fn drop_namespaces(&mut self, namespaces: &[String]) -> Result<(), StoreError> {
        let gone: Vec<ObjectKey> = self
            .targets
            .keys()
            .filter(|object| namespaces.contains(&object.namespace))
            .cloned()
            .collect();
        for object in gone {
            self.targets.remove(&object);
            self.restored.objects.remove(&object);
            let path = object_path(self.data_dir, &object);
            std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
        }
        Ok(())
    }

    /// Applies one LTX file of `generation` to the object's restored file: a snapshot
    /// replaces it, a segment must start at most one past what is there (its pages are final
    /// images, so an overlap is harmless), and a file that reaches no further than what is
    /// there is skipped (L1 files written just before a crash also sit in the journal past
    /// the old cursor).
    fn apply(
        &mut self,
        object: &ObjectKey,
        file: &ltx::Ltx,
        source: &str,
        generation: u64,
    ) -> Result<(), StoreError> {
        let target = match self.targets.get_mut(object) {
            Some(target) => target,
            None => {
                let path = object_path(self.data_dir, object);
                std::fs::create_dir_all(path.parent().expect("a parent"))
                    .map_err(|e| io(&path, e))?;
                for stale in [
                    path.with_extension("sqlite-wal"),
                    path.with_extension("sqlite-shm"),
                ] {
                    let _ = std::fs::remove_file(stale);
                }
                let created = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
                self.targets.entry(object.clone()).or_insert(Target {
                    file: created,
                    last_txid: 0,
                    generation,
                })
            }
        };
        let applied = target.last_txid > 0;
        let header = &file.header;
        if applied
            && header.max_txid <= target.last_txid
            && (!header.is_snapshot() || target.generation == generation)
        {
            return Ok(()); // already there
        }
        target.generation = generation;
        if file.header.is_snapshot() {
            target
                .file
                .set_len(0)
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
        } else if file.header.min_txid > target.last_txid + 1 {
            return Err(StoreError::Invalid(format!(
                "{}/{}: the store's history has a gap (after TXID {} comes {}, in {source})",
                object.namespace, object.id, target.last_txid, file.header.min_txid
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
        target.last_txid = file.header.max_txid;
        self.restored.segments += 1;
        self.restored
            .objects
            .insert(object.clone(), file.header.max_txid);
        Ok(())
    }
}

pub fn object_path(data_dir: &Path, object: &ObjectKey) -> PathBuf {
    if let Some(path) = super::files::restore_path(data_dir, object) {
        return path;
    }
    data_dir
        .join(&object.namespace)
        .join(format!("{}.sqlite", object.id))
}

fn io(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Invalid(format!("{}: {error}", path.display()))
}
