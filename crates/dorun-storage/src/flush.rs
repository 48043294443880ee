//! Durability off the isolate threads: with `Durability::Full`, a commit writes its WAL
//! frames without waiting for the disk (`synchronous=NORMAL`), and the one flusher thread
//! of the process makes them durable (`fdatasync` of the WAL). Requests that arrive while a
//! flush is running are served by the next one together, so the commits of many objects
//! that finish close together share one round of syncs.
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
use std::sync::OnceLock;
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
            std::thread::Builder::new()
                .name("dorun-flush".into())
                .spawn(move || run(receiver))
                .expect("cannot start the flusher thread");
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

fn run(requests: Receiver<FlushRequest>) {
    let gate = std::env::var_os("DORUN_TEST_FLUSH_GATE").map(PathBuf::from);
    // WAL path -> inode of the WAL file whose directory entry is known durable.
    let mut synced_entries: HashMap<PathBuf, u64> = HashMap::new();
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        batch.extend(requests.try_iter());
        if let Some(gate) = &gate {
            while !gate.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let mut results: HashMap<PathBuf, std::result::Result<(), String>> = HashMap::new();
        for request in &batch {
            if !results.contains_key(&request.wal) {
                let result = sync_wal(&request.wal, &mut synced_entries)
                    .map_err(|e| format!("cannot sync {}: {e}", request.wal.display()));
                results.insert(request.wal.clone(), result);
            }
        }
        for request in batch {
            let result = results[&request.wal].clone();
            (request.done)(result);
        }
    }
}

fn sync_wal(wal: &Path, synced_entries: &mut HashMap<PathBuf, u64>) -> io::Result<()> {
    let file = match File::open(wal) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    file.sync_data()?;
    let inode = file.metadata()?.ino();
    if synced_entries.get(wal) != Some(&inode) {
        if let Some(dir) = wal.parent() {
            File::open(dir)?.sync_all()?;
        }
        synced_entries.insert(wal.to_path_buf(), inode);
    }
    Ok(())
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
