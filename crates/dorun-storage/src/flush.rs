//! Durability off the isolate threads: with `Durability::Full`, a commit writes its WAL
//! frames without waiting for the disk (`synchronous=NORMAL`), and the process's flusher
//! threads make them durable. An isolate thread hands over the commits of one turn
//! together, and a free flusher thread takes every request queued so far as one batch:
//! one WAL is synced with `fdatasync`, several with one `syncfs` of their filesystem (on
//! this kind of disk it costs what one fdatasync does, where sixteen fdatasyncs cost
//! sixteen times that), so the commits of many objects that finish close together share
//! one flush, and a new batch does not wait for an earlier one.
//!
//! A WAL that no longer exists was checkpointed and removed (a reset, or a file written by
//! an older version); one that its connection truncated on close was checkpointed too. A
//! checkpoint syncs the WAL and the database first, so either is durable. The directory is
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

/// One commit's WAL to make durable, and whom to tell.
pub struct FlushRequest {
    wal: PathBuf,
    done: FlushDone,
}

impl FlushRequest {
    pub fn new(wal: PathBuf, done: FlushDone) -> Self {
        Self { wal, done }
    }
}

/// The process's flusher thread.
pub struct Flusher {
    requests: Sender<Vec<FlushRequest>>,
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
        self.flush_all(vec![FlushRequest { wal, done }]);
    }

    /// [`flush`](Self::flush) for several commits at once: an isolate thread hands over
    /// the commits of one turn together, so they share a sync (and one wake-up of a
    /// flusher thread) instead of being picked up one by one by whichever thread is free.
    pub fn flush_all(&self, requests: Vec<FlushRequest>) {
        if requests.is_empty() {
            return;
        }
        if let Err(SendError(requests)) = self.requests.send(requests) {
            for request in requests {
                (request.done)(Err("the flusher thread stopped".to_string()));
            }
        }
    }
}

/// Flusher threads: each takes every request queued when it becomes free, so a new batch
/// starts while earlier ones are still syncing instead of waiting for them.
const FLUSH_THREADS: usize = 3;

struct Shared {
    requests: Mutex<Receiver<Vec<FlushRequest>>>,
    /// WAL path -> inode of the WAL file whose directory entry is known durable.
    synced_entries: Mutex<HashMap<PathBuf, u64>>,
    gate: Option<PathBuf>,
}

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
            let mut batch = first;
            batch.extend(requests.try_iter().flatten());
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

/// Syncs every WAL in `wals`: one `syncfs` per filesystem when there are several (it costs
/// about what one fdatasync does, and covers the directory entries too), else an
/// fdatasync, and the directory of a WAL file not synced before.
fn sync_all(
    wals: &[PathBuf],
    synced_entries: &Mutex<HashMap<PathBuf, u64>>,
) -> HashMap<PathBuf, SyncResult> {
    #[cfg(target_os = "linux")]
    if wals.len() > 1 {
        return sync_filesystems(wals, synced_entries);
    }
    let mut results = HashMap::new();
    let mut synced_dirs: HashMap<PathBuf, SyncResult> = HashMap::new();
    for wal in wals {
        let known = |inode| {
            synced_entries
                .lock()
                .is_ok_and(|e| e.get(wal) == Some(&inode))
        };
        let result = match sync_data(wal) {
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
        results.insert(wal.clone(), result);
    }
    results
}

#[cfg(target_os = "linux")]
fn sync_filesystems(
    wals: &[PathBuf],
    synced_entries: &Mutex<HashMap<PathBuf, u64>>,
) -> HashMap<PathBuf, SyncResult> {
    let mut by_device: HashMap<u64, SyncResult> = HashMap::new();
    let mut results = HashMap::new();
    for wal in wals {
        let dir = wal.parent().unwrap_or(Path::new("."));
        let result = match std::fs::metadata(dir) {
            Ok(meta) => by_device
                .entry(meta.dev())
                .or_insert_with(|| {
                    File::open(dir)
                        .and_then(|d| rustix::fs::syncfs(&d).map_err(io::Error::from))
                        .map_err(|e| {
                            format!("cannot sync the filesystem of {}: {e}", dir.display())
                        })
                })
                .clone(),
            Err(error) => Err(format!("cannot sync {}: {error}", wal.display())),
        };
        if result.is_ok() {
            if let (Ok(meta), Ok(mut entries)) = (std::fs::metadata(wal), synced_entries.lock()) {
                entries.insert(wal.clone(), meta.ino());
            }
        }
        results.insert(wal.clone(), result);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Durability;

    #[test]
    fn a_flush_reports_each_commit_and_a_removed_wal_counts_as_synced() {
        let dir = std::env::temp_dir().join(format!("dorun-flush-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (done, results) = channel();
        let mut paths = Vec::new();
        let mut open = Vec::new();
        for name in ["a", "b"] {
            let path = dir.join(format!("{name}.sqlite"));
            let mut db = ObjectDatabase::open(&path, Durability::Full).unwrap();
            db.defer_sync().unwrap();
            db.begin_implicit().unwrap();
            db.kv_put("k", b"v").unwrap();
            db.commit().unwrap();
            assert!(wal_path(&path).exists());
            paths.push(wal_path(&path));
            open.push(db);
        }
        paths.push(dir.join("gone.sqlite-wal"));
        for wal in &paths {
            let done = done.clone();
            Flusher::global().flush(wal.clone(), Box::new(move |r| done.send(r).unwrap()));
        }
        for _ in &paths {
            let result = results.recv_timeout(Duration::from_secs(30)).unwrap();
            assert_eq!(result, Ok(()));
        }
        drop(open);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
