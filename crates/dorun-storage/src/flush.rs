//! Durability off the isolate threads: with `Durability::Full`, a commit writes its WAL
//! frames without waiting for the disk (`synchronous=NORMAL`), and the process's flusher
//! threads make them durable (`fdatasync` of the WAL). A free flusher thread takes every
//! request queued so far as one batch and syncs its WALs in parallel (ext4 folds concurrent
//! syncs into one journal commit), so the commits of many objects that finish close
//! together share one round of syncs, and a new batch does not wait for an earlier one.
//!
//! A WAL that no longer exists was checkpointed and removed when its connection closed;
//! a checkpoint syncs the WAL and the database first, so it is durable. The directory is
//! synced once for each new WAL file (its entry must survive a power loss too).
//!
//! For tests only: with `DORUN_TEST_FLUSH_GATE=<path>`, every flush waits until `<path>`
//! exists, so a test can hold commits written but not durable.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, SendError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::{ObjectDatabase, Result};

/// Told once the flush it waited for is done: `Err` carries the message of a failed sync.
pub type FlushDone = Box<dyn FnOnce(std::result::Result<(), String>) + Send>;

struct FlushRequest {
    wal: PathBuf,
    done: FlushDone,
}

/// The process's flusher thread.
pub struct Flusher {
    requests: Sender<FlushRequest>,
}

impl Flusher {
    /// The flusher, started on first use.
    pub fn global() -> &'static Flusher {
        static FLUSHER: OnceLock<Flusher> = OnceLock::new();
        FLUSHER.get_or_init(|| {
            let (sender, receiver) = channel();
            let shared = Arc::new(Shared {
                requests: Mutex::new(receiver),
                synced_entries: Mutex::new(HashMap::new()),
                gate: std::env::var_os("DORUN_TEST_FLUSH_GATE").map(PathBuf::from),
            });
            for i in 0..FLUSH_THREADS {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("dorun-flush-{i}"))
                    .spawn(move || run(&shared))
                    .expect("cannot start a flusher thread");
            }
            Flusher { requests: sender }
        })
    }

    /// Makes everything written to `wal` so far durable, then calls `done`.
    pub fn flush(&self, wal: PathBuf, done: FlushDone) {
        if let Err(SendError(request)) = self.requests.send(FlushRequest { wal, done }) {
            (request.done)(Err("the flusher thread stopped".to_string()));
        }
    }
}

/// Flusher threads: each takes every request queued when it becomes free, so a new batch
/// starts while earlier ones are still syncing instead of waiting for them.
const FLUSH_THREADS: usize = 3;

struct Shared {
    requests: Mutex<Receiver<FlushRequest>>,
    /// WAL path -> inode of the WAL file whose directory entry is known durable.
    synced_entries: Mutex<HashMap<PathBuf, u64>>,
    gate: Option<PathBuf>,
}

/// At most this many WALs of one batch are synced at once (ext4 folds concurrent syncs into one
/// journal commit, so a batch of many objects costs little more than one).
const SYNC_THREADS: usize = 8;

type SyncResult = std::result::Result<(), String>;

fn run(shared: &Shared) {
    loop {
        let batch = {
            let Ok(requests) = shared.requests.lock() else {
                return;
            };
            let Ok(first) = requests.recv() else {
                return;
            };
            let mut batch = vec![first];
            batch.extend(requests.try_iter());
            batch
        };
        if let Some(gate) = &shared.gate {
            while !gate.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let mut wals: Vec<PathBuf> = batch.iter().map(|r| r.wal.clone()).collect();
        wals.sort();
        wals.dedup();
        let results = sync_all(&wals, &shared.synced_entries);
        for request in batch {
            let result = results
                .get(&request.wal)
                .cloned()
                .unwrap_or_else(|| Err("not synced".to_string()));
            (request.done)(result);
        }
    }
}

/// Syncs every WAL in `wals` (several at once), then the directories of new WAL files.
fn sync_all(
    wals: &[PathBuf],
    synced_entries: &Mutex<HashMap<PathBuf, u64>>,
) -> HashMap<PathBuf, SyncResult> {
    let chunk = wals.len().div_ceil(SYNC_THREADS).max(1);
    let synced: Vec<(PathBuf, io::Result<Option<u64>>)> = if wals.len() == 1 {
        vec![(wals[0].clone(), sync_data(&wals[0]))]
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = wals
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|wal| (wal.clone(), sync_data(wal)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    };
    let mut results = HashMap::new();
    let mut synced_dirs: HashMap<PathBuf, SyncResult> = HashMap::new();
    for (wal, outcome) in synced {
        let known = |inode| {
            synced_entries
                .lock()
                .is_ok_and(|e| e.get(&wal) == Some(&inode))
        };
        let result = match outcome {
            Ok(Some(inode)) if !known(inode) => {
                let dir = wal.parent().unwrap_or(Path::new(".")).to_path_buf();
                let dir_result = synced_dirs
                    .entry(dir.clone())
                    .or_insert_with(|| sync_dir(&dir))
                    .clone();
                if let (Ok(()), Ok(mut entries)) = (&dir_result, synced_entries.lock()) {
                    entries.insert(wal.clone(), inode);
                }
                dir_result
            }
            Ok(_) => Ok(()),
            Err(error) => Err(format!("cannot sync {}: {error}", wal.display())),
        };
        results.insert(wal, result);
    }
    results
}

/// fdatasync of a WAL; its inode, or None if it is gone (checkpointed and removed when its
/// connection closed, which synced it first).
fn sync_data(wal: &Path) -> io::Result<Option<u64>> {
    let file = match File::open(wal) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    file.sync_data()?;
    Ok(Some(file.metadata()?.ino()))
}

fn sync_dir(dir: &Path) -> SyncResult {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync directory {}: {e}", dir.display()))
}

impl ObjectDatabase {
    /// For `Durability::Full` with a [`Flusher`]: commits return once their WAL frames are
    /// written (`synchronous=NORMAL`; checkpoints still sync), and the caller releases
    /// what a commit gates only after [`Flusher::flush`] of [`wal_path`] is done.
    pub fn defer_sync(&mut self) -> Result<()> {
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(())
    }
}

/// The WAL file of the database at `path`.
pub fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_os_string();
    wal.push("-wal");
    PathBuf::from(wal)
}
