//! Closing object databases off the isolate threads. Closing a connection checkpoints its
//! WAL into the database file and syncs both (about a millisecond here); isolate threads
//! close connections by the thousand when objects go idle or are evicted, and doing it
//! inline stalled every other object on the thread meanwhile.
//!
//! A connection waits in a queue until the closer thread takes it. The file stays locked by
//! it until it is closed (see `ObjectDatabase::open`), so a thread about to open a file
//! first calls [`Closer::reclaim`]: it gets the queued connection back (nothing was closed,
//! nothing needs opening), or waits for a close in progress to finish. A connection whose
//! path now names another file (a reset moved the directory away) is never given back.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::ObjectDatabase;

/// The process's closer thread (see the module docs).
pub struct Closer {
    shared: Arc<Shared>,
}

struct Queued {
    db: ObjectDatabase,
    /// Device and inode of the file when it was queued.
    file: Option<(u64, u64)>,
}

#[derive(Default)]
struct State {
    order: VecDeque<PathBuf>,
    queued: HashMap<PathBuf, Queued>,
    closing: HashSet<PathBuf>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

static CLOSER: OnceLock<Closer> = OnceLock::new();

/// Connections waiting for the closer thread at most; past it callers close their own.
pub const MAX_QUEUED: usize = 128;

impl Closer {
    /// The closer, started on first use.
    pub fn global() -> &'static Closer {
        CLOSER.get_or_init(|| {
            let shared = Arc::new(Shared::default());
            let worker = shared.clone();
            std::thread::Builder::new()
                .name("dorun-close".to_string())
                .spawn(move || run(&worker))
                .expect("cannot start the closer thread");
            Closer { shared }
        })
    }

    /// Closes `db`, the connection to the file at `path`, on the closer thread, or here
    /// when [`MAX_QUEUED`] are already waiting (a queued connection still holds its files,
    /// which the open-file budget does not count).
    pub fn close(&self, path: PathBuf, db: ObjectDatabase) {
        let file = identity(&path);
        let mut state = self.shared.lock();
        if state.order.len() >= MAX_QUEUED && !state.queued.contains_key(&path) {
            drop(state);
            drop(db);
            return;
        }
        if let Some(earlier) = state.queued.insert(path.clone(), Queued { db, file }) {
            // Cannot happen (a path is reclaimed before it is opened again); close both.
            drop(state);
            drop(earlier);
            state = self.shared.lock();
        }
        state.order.push_back(path);
        self.shared.changed.notify_all();
    }

    /// Before opening the file at `path`: its connection if one is still queued for
    /// closing (taken back, open and usable), else `None` once no close of it is in
    /// progress (the file is unlocked).
    pub fn reclaim(&self, path: &Path) -> Option<ObjectDatabase> {
        let mut state = self.shared.lock();
        loop {
            if let Some(queued) = state.queued.remove(path) {
                state.order.retain(|p| p != path);
                if queued.file.is_some() && queued.file == identity(path) {
                    return Some(queued.db);
                }
                // The path names another file now: close that connection here.
                drop(state);
                drop(queued);
                return None;
            }
            if !state.closing.contains(path) {
                return None;
            }
            state = self
                .shared
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    /// Waits up to `timeout` for every queued connection to be closed (shutdown). True if
    /// none is left; without a closer (nothing was ever queued), true at once.
    pub fn drain(timeout: Duration) -> bool {
        let Some(closer) = CLOSER.get() else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        let mut state = closer.shared.lock();
        while !state.order.is_empty() || !state.closing.is_empty() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            state = closer
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        true
    }

    /// How many connections wait to be closed or are being closed.
    pub fn pending(&self) -> usize {
        let state = self.shared.lock();
        state.order.len() + state.closing.len()
    }
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn run(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        let Some(path) = state.order.pop_front() else {
            state = shared
                .changed
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            continue;
        };
        let Some(queued) = state.queued.remove(&path) else {
            continue;
        };
        state.closing.insert(path.clone());
        drop(state);
        drop(queued);
        state = shared.lock();
        state.closing.remove(&path);
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Durability;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dorun-close-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A closer whose queue nobody works off: what is queued stays queued.
    fn idle_closer() -> Closer {
        Closer {
            shared: Arc::new(Shared::default()),
        }
    }

    fn written(path: &Path, value: &[u8]) -> ObjectDatabase {
        let mut db = ObjectDatabase::open(path, Durability::Off).unwrap();
        db.kv_put("k", value).unwrap();
        db.commit().unwrap();
        db
    }

    #[test]
    fn a_queued_connection_is_taken_back_instead_of_reopening_the_file() {
        let dir = temp_dir("reclaim");
        let path = dir.join("a.sqlite");
        let closer = idle_closer();
        closer.close(path.clone(), written(&path, b"1"));
        assert_eq!(closer.pending(), 1);
        let mut db = closer.reclaim(&path).expect("queued, so given back");
        assert_eq!(db.kv_get("k").unwrap(), Some(b"1".to_vec()));
        assert_eq!(closer.pending(), 0);
        assert!(closer.reclaim(&path).is_none());
    }

    #[test]
    fn past_the_queue_bound_the_caller_closes_its_own_connection() {
        let dir = temp_dir("bound");
        let closer = idle_closer();
        for i in 0..MAX_QUEUED + 2 {
            let path = dir.join(format!("{i}.sqlite"));
            closer.close(path, written(&dir.join(format!("{i}.sqlite")), b"1"));
        }
        assert_eq!(closer.pending(), MAX_QUEUED);
        // The last two were closed at once: nothing to take back, and their files unlocked.
        let last = dir.join(format!("{}.sqlite", MAX_QUEUED + 1));
        assert!(closer.reclaim(&last).is_none());
        let mut db = ObjectDatabase::open(&last, Durability::Off).unwrap();
        assert_eq!(db.kv_get("k").unwrap(), Some(b"1".to_vec()));
        assert!(closer.reclaim(&dir.join("0.sqlite")).is_some(), "queued");
    }

    #[test]
    fn a_connection_to_a_file_moved_away_is_never_given_back() {
        let dir = temp_dir("moved");
        let path = dir.join("a.sqlite");
        let closer = idle_closer();
        closer.close(path.clone(), written(&path, b"old"));
        // A reset moves the directory away and the object starts over in a new one.
        std::fs::rename(&dir, dir.with_extension("trash")).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        drop(written(&path, b"new"));
        assert!(closer.reclaim(&path).is_none());
        assert_eq!(closer.pending(), 0, "closed by reclaim");
        let mut db = ObjectDatabase::open(&path, Durability::Off).unwrap();
        assert_eq!(db.kv_get("k").unwrap(), Some(b"new".to_vec()));
        let _ = std::fs::remove_dir_all(dir.with_extension("trash"));
    }

    #[test]
    fn the_closer_thread_closes_queued_connections_and_unlocks_their_files() {
        let dir = temp_dir("drain");
        let path = dir.join("a.sqlite");
        Closer::global().close(path.clone(), written(&path, b"1"));
        assert!(Closer::drain(Duration::from_secs(10)));
        assert!(Closer::global().reclaim(&path).is_none(), "closed");
        let mut db = ObjectDatabase::open(&path, Durability::Off).unwrap();
        assert_eq!(db.kv_get("k").unwrap(), Some(b"1".to_vec()));
    }
}
