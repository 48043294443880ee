//! Durability off the isolate threads: with `Durability::Full`, a commit writes its WAL
//! frames without waiting for the disk (`synchronous=NORMAL`), and the process's flusher
//! makes them durable. An isolate thread hands over the commits of one turn together.
//!
//! The flusher syncs only dorun's own files: each WAL with its own `fdatasync`, issued
//! from a pool of threads so that the syncs of many objects run at once (the filesystem
//! folds concurrent syncs into few journal commits). A whole-filesystem `syncfs` would be
//! cheaper on a quiet disk, but it writes back every dirty page of the filesystem, so every
//! commit would wait for whatever another process (a backup, a log shipper, dorun's own
//! exports) has written: measured in benches/durability.sh.
//!
//! Requests for the same WAL that queue up while no sync of it has started share one sync;
//! a request that arrives while its WAL is being synced waits for a sync that starts after
//! it (a sync already under way may have started before the commit's frames were written).
//! The commits of many objects that finish close together are synced together, and a new
//! commit never waits for an earlier, unrelated sync to finish.
//!
//! A WAL that no longer exists was checkpointed and removed (a reset, or a file written by
//! an older version); one that its connection truncated on close was checkpointed too. A
//! checkpoint syncs the WAL and the database first, so either is durable. The directory is
//! synced once for each new WAL file (its entry must survive a power loss too).
//!
//! For tests only: with `DORUN_TEST_FLUSH_GATE=<path>`, every flush waits until `<path>`
//! exists, so a test can hold commits written but not durable.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
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

/// The process's flusher: a queue of WALs to sync and the threads that sync them.
pub struct Flusher {
    shared: Arc<Shared>,
}

/// Sync threads: up to this many WALs are synced at once. A thread blocked in `fdatasync`
/// costs no CPU; more of them let the filesystem merge more syncs into one journal commit.
const SYNC_THREADS: usize = 16;

impl Flusher {
    /// The flusher, started on first use.
    pub fn global() -> &'static Flusher {
        static FLUSHER: OnceLock<Flusher> = OnceLock::new();
        FLUSHER.get_or_init(|| {
            let shared = Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                queued: Condvar::new(),
                synced_entries: Mutex::new(HashMap::new()),
                gate: std::env::var_os("DORUN_TEST_FLUSH_GATE").map(PathBuf::from),
            });
            for i in 0..SYNC_THREADS {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("dorun-flush-{i}"))
                    .spawn(move || run(&shared))
                    .expect("cannot start a flusher thread");
            }
            Flusher { shared }
        })
    }

    /// Makes everything written to `wal` so far durable, then calls `done`.
    pub fn flush(&self, wal: PathBuf, done: FlushDone) {
        self.flush_all(vec![FlushRequest { wal, done }]);
    }

    /// [`flush`](Self::flush) for several commits at once: an isolate thread hands over
    /// the commits of one turn together (one lock of the queue, one wake-up per WAL).
    pub fn flush_all(&self, requests: Vec<FlushRequest>) {
        if requests.is_empty() {
            return;
        }
        let mut new_wals = 0;
        {
            let mut guard = match self.shared.queue.lock() {
                Ok(queue) => queue,
                Err(poisoned) => poisoned.into_inner(),
            };
            let queue = &mut *guard;
            for request in requests {
                let waiting = queue.waiting.entry(request.wal.clone()).or_default();
                if waiting.is_empty() {
                    new_wals += 1;
                    queue.order.push_back(request.wal);
                }
                waiting.push(request.done);
            }
        }
        for _ in 0..new_wals.min(SYNC_THREADS) {
            self.shared.queued.notify_one();
        }
    }
}

/// WALs waiting for a sync that has not started, in the order they were first asked for.
#[derive(Default)]
struct Queue {
    order: VecDeque<PathBuf>,
    waiting: HashMap<PathBuf, Vec<FlushDone>>,
}

struct Shared {
    queue: Mutex<Queue>,
    queued: Condvar,
    /// WAL path -> inode of the WAL file whose directory entry is known durable.
    synced_entries: Mutex<HashMap<PathBuf, u64>>,
    gate: Option<PathBuf>,
}

type SyncResult = std::result::Result<(), String>;

fn run(shared: &Shared) {
    loop {
        let (wal, waiting) = {
            let Ok(mut queue) = shared.queue.lock() else {
                return;
            };
            loop {
                if let Some(wal) = queue.order.pop_front() {
                    let waiting = queue.waiting.remove(&wal).unwrap_or_default();
                    break (wal, waiting);
                }
                queue = match shared.queued.wait(queue) {
                    Ok(queue) => queue,
                    Err(_) => return,
                };
            }
        };
        if let Some(gate) = &shared.gate {
            while !gate.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let result = sync_wal(&wal, &shared.synced_entries);
        for done in waiting {
            done(result.clone());
        }
    }
}

/// fdatasync of one WAL, and of its directory when the file is new (not synced before).
fn sync_wal(wal: &Path, synced_entries: &Mutex<HashMap<PathBuf, u64>>) -> SyncResult {
    let known = |inode| {
        synced_entries
            .lock()
            .is_ok_and(|e| e.get(wal) == Some(&inode))
    };
    match sync_data(wal) {
        Ok(Some(inode)) if !known(inode) => {
            let dir = wal.parent().unwrap_or(Path::new("."));
            sync_dir(dir)?;
            if let Ok(mut entries) = synced_entries.lock() {
                entries.insert(wal.to_path_buf(), inode);
            }
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(error) => Err(format!("cannot sync {}: {error}", wal.display())),
    }
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
    use std::sync::mpsc::channel;

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
