//! Durable Object storage ops: each object's SQLite file (KV, SQL, transactions, its
//! alarm record) through `dorun-storage`, and the cache of open connections per isolate
//! thread.
//!
//! An object gets a handle when it first touches storage; the connection behind a handle
//! may be closed when the cache is full (only without a pending transaction) and is
//! reopened on next use, so memory stays bounded however many objects are resident.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use deno_core::{op2, v8, OpState};
use dorun_storage::replica::journal::ObjectKey;
use dorun_storage::replica::replicator::{Announcement, Done};
use dorun_storage::replica::Replication;
use dorun_storage::{
    wal_path, Closer, Durability, FlushRequest, Flusher, ListOptions, ObjectDatabase, SqlValue,
    StorageError,
};
use tokio::sync::oneshot;

use crate::alarms::{AlarmIndexError, AlarmScheduler};
use crate::namespaces::{IdError, ObjectConfig};

/// How many SQLite connections one isolate thread keeps open unless
/// [`size_connection_cache`] sized it from the open-file limit.
pub const MAX_OPEN_CONNECTIONS: usize = 256;

/// Files one open object holds: its database and its WAL (the WAL index is in memory,
/// see `ObjectDatabase::open`).
const FILES_PER_CONNECTION: u64 = 2;

/// How many idle objects' connections the process keeps open by default, all isolate
/// threads together (~70 KiB each, so ~210 MiB; `dorun serve --idle-connections`). Objects
/// used within the last second or so keep theirs open regardless, up to the open-file limit.
pub const IDLE_CONNECTIONS: usize = 3072;

static IDLE_CONNECTIONS_PER_THREAD: AtomicUsize = AtomicUsize::new(IDLE_CONNECTIONS);

/// What one `OpenDatabases::sweep_idle` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub trimmed: usize,
    pub closed: usize,
}

static CONNECTIONS_PER_THREAD: AtomicUsize = AtomicUsize::new(MAX_OPEN_CONNECTIONS);

/// Sizes each isolate thread's connection cache from the process's open-file limit,
/// keeping an eighth of it (at least 1024) for sockets, accepts and the runtime's own
/// files, and shares `idle` idle connections (see [`IDLE_CONNECTIONS`]) among the
/// threads. Returns the connections per thread.
pub fn size_connection_cache(open_file_limit: u64, threads: usize, idle: usize) -> usize {
    let reserve = (open_file_limit / 8).max(1024);
    let budget = open_file_limit.saturating_sub(reserve) / FILES_PER_CONNECTION;
    let per_thread = (budget / threads.max(1) as u64).max(16) as usize;
    CONNECTIONS_PER_THREAD.store(per_thread, Ordering::Relaxed);
    let idle = (idle / threads.max(1)).clamp(1, per_thread);
    IDLE_CONNECTIONS_PER_THREAD.store(idle, Ordering::Relaxed);
    per_thread
}

/// The idle connections an isolate thread keeps open (see [`IDLE_CONNECTIONS`]).
pub fn idle_connection_capacity() -> usize {
    IDLE_CONNECTIONS_PER_THREAD.load(Ordering::Relaxed)
}

/// The connections an isolate thread keeps open (see [`size_connection_cache`]).
pub fn connection_capacity() -> usize {
    CONNECTIONS_PER_THREAD.load(Ordering::Relaxed)
}

/// Why a storage op failed.
#[derive(Debug, thiserror::Error, deno_error::JsError)]
#[class(generic)]
pub enum StorageOpError {
    #[error("Durable Object storage is closed")]
    Closed,
    // The file's path is logged by the server, not shown to the Worker.
    #[error(
        "cannot open the Durable Object's storage: {}",
        without_path(source, path)
    )]
    Open { path: PathBuf, source: StorageError },
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[class(inherit)]
    #[error(transparent)]
    Id(#[from] IdError),
    #[error("cannot update the namespace's alarm index (see the server log)")]
    AlarmIndex(#[source] AlarmIndexError),
    #[class(range)]
    #[error("{0}")]
    TooLarge(&'static str),
    #[error("a commit could not be made durable: {0}")]
    Flush(String),
}

/// `error`'s text with the file's path (which SQLite puts in some messages) left out.
fn without_path(error: &StorageError, path: &std::path::Path) -> String {
    let text = error.to_string();
    let path = path.display().to_string();
    text.replace(&format!(": {path}"), "")
        .replace(&path, "the object's file")
}

impl From<AlarmIndexError> for StorageOpError {
    fn from(error: AlarmIndexError) -> Self {
        tracing::error!("{error}");
        StorageOpError::AlarmIndex(error)
    }
}

struct StorageEntry {
    path: PathBuf,
    namespace: u32,
    object_id: String,
    name: Option<String>,
    db: Option<ObjectDatabase>,
    last_used: u64,
    /// A newer handle of the same object took this one's connection: it is never reopened.
    superseded: bool,
    /// Its connection was trimmed (see `sweep_idle`) and not used since.
    trimmed: bool,
}

/// The storage of the objects on this isolate thread, by handle, with at most `capacity`
/// connections open (least recently used closed first).
pub struct OpenDatabases {
    next: u32,
    clock: u64,
    connected: usize,
    capacity: usize,
    durability: Durability,
    entries: HashMap<u32, StorageEntry>,
    /// The handle whose connection is open, by file.
    holders: HashMap<PathBuf, u32>,
    /// Open connections beyond this many are closed when idle (see `sweep_idle`).
    idle_capacity: usize,
    /// The clock at the last `sweep_idle`.
    trim_mark: u64,
    interrupt: Option<Arc<AtomicBool>>,
    /// Commits written but not yet durable, by ticket (see `op_dorun_storage_durable`).
    flushes: HashMap<u32, oneshot::Receiver<Result<(), String>>>,
    /// Commits written this turn, handed to the flusher together (see `take_flush`).
    unsent_flushes: Vec<FlushRequest>,
    next_flush: u32,
    /// `--replicate-to`: commits also go to the store (see `dorun_storage::replica`).
    replication: Option<Arc<Replication>>,
    /// By object file: the last TXID it committed in this process and how many times its
    /// WAL was checkpointed (replication only).
    positions: HashMap<PathBuf, Position>,
}

/// Where an object's file stands for replication.
#[derive(Clone, Copy, Debug, Default)]
struct Position {
    txid: u64,
    round: u64,
}

impl OpenDatabases {
    pub fn new(capacity: usize, durability: Durability) -> Self {
        Self {
            next: 0,
            clock: 0,
            connected: 0,
            capacity: capacity.max(1),
            durability,
            entries: HashMap::new(),
            holders: HashMap::new(),
            idle_capacity: capacity.max(1),
            trim_mark: 0,
            interrupt: None,
            flushes: HashMap::new(),
            unsent_flushes: Vec::new(),
            next_flush: 0,
            replication: None,
            positions: HashMap::new(),
        }
    }

    /// Replicates every commit (see `dorun_storage::replica`).
    pub fn replicate(mut self, replication: Option<Arc<Replication>>) -> Self {
        self.replication = replication;
        self
    }

    /// Keeps at most `count` idle connections open (see `sweep_idle`).
    pub fn keep_idle(mut self, count: usize) -> Self {
        self.idle_capacity = count.max(1);
        self
    }

    /// Every connection's statements stop while `flag` is set (the isolate's CPU limit).
    pub fn interrupt_when(mut self, flag: Arc<AtomicBool>) -> Self {
        self.interrupt = Some(flag);
        self
    }

    /// Registers an object's file and opens it (so a bad path or a corrupt file is
    /// reported at the first storage call). Returns its handle.
    pub fn insert(
        &mut self,
        path: PathBuf,
        namespace: u32,
        object_id: &str,
        name: Option<String>,
    ) -> Result<u32, StorageOpError> {
        self.next = self.next.wrapping_add(1).max(1);
        let handle = self.next;
        // An object's connection locks its file (see `ObjectDatabase::open`). An earlier
        // handle of the same object may still hold it: an evicted or reset instance whose
        // last commit is being made durable. The new handle takes that connection over
        // instead of opening the file a second time (which the lock would refuse).
        let taken = self.take_over(&path);
        let taken_db = taken.is_some();
        self.entries.insert(
            handle,
            StorageEntry {
                path: path.clone(),
                namespace,
                object_id: object_id.to_string(),
                name,
                db: taken,
                last_used: 0,
                superseded: false,
                trimmed: false,
            },
        );
        if taken_db {
            self.holders.insert(path, handle);
        }
        if let Err(error) = self.database(handle) {
            self.remove(handle);
            return Err(error);
        }
        Ok(handle)
    }

    /// The connection to `path` held by an earlier handle without a pending transaction,
    /// taken from it (that handle is closed from now on).
    fn take_over(&mut self, path: &std::path::Path) -> Option<ObjectDatabase> {
        let holder = *self.holders.get(path)?;
        let entry = self.entries.get_mut(&holder)?;
        if entry.db.as_ref().is_none_or(|db| db.in_transaction()) {
            return None;
        }
        entry.superseded = true;
        self.holders.remove(path);
        entry.db.take()
    }

    /// The open connection of `handle`, reopening it if the cache closed it.
    /// Replication: ships object `object_id`'s file whole to the store after its content
    /// was replaced outside the commit path (an import), by a commit of its position
    /// announced as a whole file. Not waited for: it reaches the store within the
    /// replication lag. Without replication, nothing.
    pub fn ship_whole(
        &mut self,
        path: &std::path::Path,
        object_id: &str,
    ) -> dorun_storage::Result<()> {
        let Some(replication) = &self.replication else {
            return Ok(());
        };
        let position = self.positions.entry(path.to_path_buf()).or_default();
        let txid = position.txid + 1;
        let mut db = open_database(path, self.durability, true, None)?;
        db.write_position(replication.replicator.epoch(), txid)?;
        db.commit()?;
        drop(db);
        position.txid = txid;
        let wal_end = std::fs::metadata(wal_path(path))
            .map(|m| m.len())
            .unwrap_or(0);
        replication.replicator.announce_all(vec![Announcement {
            object: store_key(path, object_id),
            database: path.to_path_buf(),
            wal_round: position.round,
            first_txid: txid,
            last_txid: txid,
            wal_end,
            done: None,
            whole: true,
        }]);
        Ok(())
    }

    pub fn database(&mut self, handle: u32) -> Result<&mut ObjectDatabase, StorageOpError> {
        self.clock += 1;
        let clock = self.clock;
        let needs_open = match self.entries.get(&handle) {
            None => return Err(StorageOpError::Closed),
            Some(entry) if entry.superseded => return Err(StorageOpError::Closed),
            Some(entry) => entry.db.is_none(),
        };
        if needs_open {
            if self.connected >= self.capacity {
                self.close_least_recently_used(handle);
            }
            let entry = self.entries.get_mut(&handle).expect("checked above");
            // Closed recently and still queued on the closer thread: taken back as it is.
            let db = match Closer::global().reclaim(&entry.path) {
                Some(db) => db,
                None => open_database(
                    &entry.path,
                    self.durability,
                    self.replication.is_some(),
                    self.interrupt.as_ref(),
                )
                    .map_err(|source| {
                        tracing::error!(file = %entry.path.display(), "cannot open object storage: {source}");
                        StorageOpError::Open {
                            path: entry.path.clone(),
                            source,
                        }
                    })?,
            };
            entry.db = Some(db);
            self.holders.insert(entry.path.clone(), handle);
            self.connected += 1;
        }
        let entry = self.entries.get_mut(&handle).expect("checked above");
        entry.last_used = clock;
        entry.trimmed = false;
        Ok(entry.db.as_mut().expect("opened above"))
    }

    /// Called about once a second (with the idle-eviction sweep). Connections unused since
    /// the previous call are idle: above [`idle_connection_capacity`] open connections, the
    /// least recently used idle ones are closed (on the closer thread; reopened on next
    /// use), and the other idle ones trimmed (page cache and prepared statements freed,
    /// rebuilt in microseconds when used again). An open connection costs ~70 KiB, half of
    /// it the WAL index, which only closing frees. Never touches a connection with a
    /// pending transaction.
    pub fn sweep_idle(&mut self) -> Swept {
        self.checkpoint_uploaded();
        let mark = self.trim_mark;
        self.trim_mark = self.clock;
        let mut idle: Vec<(u64, u32)> = self
            .entries
            .iter()
            .filter(|(_, entry)| {
                entry.last_used <= mark && entry.db.as_ref().is_some_and(|db| !db.in_transaction())
            })
            .map(|(handle, entry)| (entry.last_used, *handle))
            .collect();
        let mut swept = Swept::default();
        let excess = self
            .connected
            .saturating_sub(self.idle_capacity)
            .min(idle.len());
        if excess > 0 {
            idle.sort_unstable();
            for (_, handle) in idle.drain(..excess) {
                let Some(entry) = self.entries.get_mut(&handle) else {
                    continue;
                };
                if let Some(db) = entry.db.take() {
                    Closer::global().close(entry.path.clone(), db);
                    self.holders.remove(&entry.path);
                    self.connected -= 1;
                    swept.closed += 1;
                }
            }
        }
        for (_, handle) in idle {
            let Some(entry) = self.entries.get_mut(&handle) else {
                continue;
            };
            if entry.trimmed {
                continue;
            }
            if let Some(db) = entry.db.as_mut() {
                if let Err(error) = db.trim() {
                    tracing::debug!(file = %entry.path.display(), "cannot trim: {error}");
                }
                entry.trimmed = true;
                swept.trimmed += 1;
            }
        }
        swept
    }

    fn close_least_recently_used(&mut self, keep: u32) {
        let victim = self
            .entries
            .iter()
            .filter(|(handle, entry)| {
                **handle != keep && entry.db.as_ref().is_some_and(|db| !db.in_transaction())
            })
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(handle, _)| *handle);
        if let Some(victim) = victim {
            if let Some(entry) = self.entries.get_mut(&victim) {
                if let Some(db) = entry.db.take() {
                    Closer::global().close(entry.path.clone(), db);
                }
                self.holders.remove(&entry.path);
                self.connected -= 1;
            }
        }
    }

    /// Whether `handle`'s object has writes waiting for a commit.
    pub fn in_transaction(&self, handle: u32) -> bool {
        self.entries
            .get(&handle)
            .and_then(|entry| entry.db.as_ref())
            .is_some_and(|db| db.in_transaction())
    }

    /// How many connections are open now.
    pub fn connected(&self) -> usize {
        self.connected
    }

    /// How many idle objects the thread should evict before a new object may open its
    /// file: 0 below the cap, else a sixteenth of the cache, so evictions come in batches.
    pub fn over_capacity(&self) -> usize {
        if self.connected < self.capacity {
            0
        } else {
            (self.capacity / 16).max(1)
        }
    }

    /// Whether `handle`'s connection is open now (not closed by the cache).
    pub fn is_connected(&self, handle: u32) -> bool {
        self.entries
            .get(&handle)
            .is_some_and(|entry| entry.db.is_some())
    }

    /// Forgets `handle` and closes its connection on the closer thread.
    pub fn close(&mut self, handle: u32) {
        let Some(entry) = self.entries.get(&handle) else {
            return;
        };
        let path = entry.path.clone();
        if let Some(db) = self.remove(handle) {
            Closer::global().close(path, db);
        }
    }

    pub fn remove(&mut self, handle: u32) -> Option<ObjectDatabase> {
        let entry = self.entries.remove(&handle)?;
        if entry.db.is_some() {
            self.holders.remove(&entry.path);
            self.connected -= 1;
        }
        entry.db
    }

    /// Commits `handle`'s implicit transaction (see [`commit_written`](Self::commit_written))
    /// and, with `Durability::Full`, hands its WAL to the flusher. Returns the ticket to
    /// await with `op_dorun_storage_durable`, 0 when the commit is already as durable as
    /// the setting asks.
    pub fn commit(&mut self, handle: u32, alarms: &AlarmScheduler) -> Result<u32, StorageOpError> {
        let Some(written) = self.commit_written(handle, alarms)? else {
            return Ok(0);
        };
        let receiver = match written {
            Written::Replicated(receiver) => receiver,
            Written::Flush(wal) => {
                let (sender, receiver) = oneshot::channel();
                let written = std::time::Instant::now();
                self.unsent_flushes.push(FlushRequest::new(
                    wal,
                    Box::new(move |result| {
                        metrics::histogram!("dorun_storage_durable_seconds")
                            .record(written.elapsed().as_secs_f64());
                        let _ = sender.send(result);
                    }),
                ));
                receiver
            }
        };
        self.next_flush = self.next_flush.wrapping_add(1).max(1);
        self.flushes.insert(self.next_flush, receiver);
        Ok(self.next_flush)
    }

    /// The flush of a commit's ticket, once (see [`commit`](Self::commit)). Hands every
    /// commit written so far to the flusher first: the commits of one turn are all written
    /// before the first of them is awaited, so they go together.
    fn take_flush(&mut self, ticket: u32) -> Option<oneshot::Receiver<Result<(), String>>> {
        Flusher::global().flush_all(std::mem::take(&mut self.unsent_flushes));
        self.flushes.remove(&ticket)
    }

    /// Commits `handle`'s implicit transaction, keeping the alarm index and scheduler in
    /// step: a new alarm time reaches the index before the commit, a cleared one after it,
    /// so the index never misses an alarm the object has. Returns the WAL to flush when
    /// something was committed under `Durability::Full`.
    fn commit_written(
        &mut self,
        handle: u32,
        alarms: &AlarmScheduler,
    ) -> Result<Option<Written>, StorageOpError> {
        let Some(entry) = self.entries.get_mut(&handle) else {
            // Closed by the object, which committed then. (The cache only closes
            // connections without a pending transaction.)
            return Ok(None);
        };
        let Some(db) = entry.db.as_mut() else {
            return Ok(None);
        };
        let wrote = db.in_transaction();
        let change = db.pending_alarm_change()?;
        if let Some(Some(time)) = change {
            if let Err(error) = alarms.index_put(
                entry.namespace,
                &entry.object_id,
                entry.name.as_deref(),
                time,
            ) {
                let _ = db.rollback();
                return Err(error.into());
            }
        }
        let mut txid = 0;
        if let (Some(replication), true) = (&self.replication, wrote) {
            let position = self.positions.entry(entry.path.clone()).or_insert_with(|| {
                // A file shipped whole at start (`replica::baseline`) already holds TXID 1
                // of this generation: go on from there.
                let mut position = Position::default();
                if let Ok(Some((epoch, txid))) = db.position() {
                    if epoch == replication.replicator.epoch() {
                        position.txid = txid;
                    }
                }
                position
            });
            txid = position.txid + 1;
            if let Err(error) = db.write_position(replication.replicator.epoch(), txid) {
                let _ = db.rollback();
                return Err(error.into());
            }
        }
        let started = std::time::Instant::now();
        db.commit()?;
        metrics::histogram!("dorun_storage_commit_seconds").record(started.elapsed().as_secs_f64());
        if let Some(time) = change {
            if time.is_none() {
                if let Err(error) = alarms.index_delete(entry.namespace, &entry.object_id) {
                    // Harmless: a stale index entry fires, finds no alarm and is dropped.
                    tracing::warn!("{error}");
                }
            }
            alarms.update(
                entry.namespace,
                &entry.object_id,
                entry.name.as_deref(),
                time,
            );
        }
        if let (Some(replication), true) = (&self.replication, wrote) {
            let position = self.positions.entry(entry.path.clone()).or_default();
            position.txid = txid;
            let wal = wal_path(&entry.path);
            let wal_end = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
            let (done, receiver): (Option<Done>, _) = if replication.waits() {
                let (sender, receiver) = oneshot::channel();
                let written = std::time::Instant::now();
                let done: Done = Box::new(move |result| {
                    metrics::histogram!("dorun_storage_durable_seconds")
                        .record(written.elapsed().as_secs_f64());
                    let _ = sender.send(result);
                });
                (Some(done), Some(receiver))
            } else {
                (None, None)
            };
            replication.replicator.announce_all(vec![Announcement {
                object: store_key(&entry.path, &entry.object_id),
                database: entry.path.clone(),
                wal_round: position.round,
                first_txid: txid,
                last_txid: txid,
                wal_end,
                done,
                whole: false,
            }]);
            if let Some(receiver) = receiver {
                return Ok(Some(Written::Replicated(receiver)));
            }
        }
        let deferred = wrote && self.durability == Durability::Full;
        Ok(deferred.then(|| Written::Flush(wal_path(&entry.path))))
    }

    /// Replication: checkpoints the WALs over the size limit whose every frame is in the
    /// store (never one that is not: the WAL holds what the store may still need).
    fn checkpoint_uploaded(&mut self) {
        let Some(replication) = &self.replication else {
            return;
        };
        for entry in self.entries.values_mut() {
            let Some(db) = entry.db.as_mut() else {
                continue;
            };
            if db.in_transaction() {
                continue;
            }
            let wal = wal_path(&entry.path);
            let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
            if size < REPLICATED_WAL_LIMIT {
                continue;
            }
            let Some(salts) = dorun_storage::replica::wal::header_salts(&wal) else {
                continue;
            };
            if !replication.replicator.uploaded_through(&wal, salts, size) {
                continue;
            }
            let position = self.positions.entry(entry.path.clone()).or_default();
            match db.checkpoint() {
                Ok(()) => position.round += 1,
                Err(error) => {
                    tracing::warn!(file = %entry.path.display(), "cannot checkpoint: {error}")
                }
            }
        }
    }
}

/// What a commit left to wait for: the flusher's sync of its WAL, or (`--durability
/// replicated`) the store.
enum Written {
    Flush(PathBuf),
    Replicated(oneshot::Receiver<Result<(), String>>),
}

/// A replicated object's WAL is checkpointed past this size once all of it is in the store.
const REPLICATED_WAL_LIMIT: u64 = 4 << 20;

/// Opens an object's database; under `Durability::Full` its commits are made durable by
/// the flusher thread, not on the isolate thread.
/// An object's key in the replication store: its namespace directory's name and its id.
fn store_key(path: &std::path::Path, object_id: &str) -> ObjectKey {
    ObjectKey {
        namespace: path
            .parent()
            .and_then(|dir| dir.file_name())
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        id: object_id.to_string(),
    }
}

fn open_database(
    path: &std::path::Path,
    durability: Durability,
    replicated: bool,
    interrupt: Option<&Arc<AtomicBool>>,
) -> dorun_storage::Result<ObjectDatabase> {
    let mut db = ObjectDatabase::open(path, durability)?;
    if durability == Durability::Full {
        db.defer_sync()?;
    }
    if replicated {
        db.replicated()?;
    }
    if let Some(flag) = interrupt {
        db.interrupt_when(flag.clone())?;
    }
    Ok(db)
}

fn with_db<T>(
    state: &mut OpState,
    handle: u32,
    f: impl FnOnce(&mut ObjectDatabase) -> dorun_storage::Result<T>,
) -> Result<T, StorageOpError> {
    let db = state.borrow_mut::<OpenDatabases>().database(handle)?;
    Ok(f(db)?)
}

/// Opens the object's SQLite file; returns a handle for the other storage ops. Without
/// `create`, an object that never wrote anything gets `null` and no file.
#[op2]
pub fn op_dorun_storage_open(
    state: &mut OpState,
    #[smi] namespace: u32,
    #[string] object_id: &str,
    #[string] object_name: Option<String>,
    create: bool,
) -> Result<Option<u32>, StorageOpError> {
    let path = state
        .borrow::<Arc<ObjectConfig>>()
        .namespace_dir(namespace)?
        .join(format!("{object_id}.sqlite"));
    if !create && !path.exists() {
        return Ok(None);
    }
    let open = state.borrow_mut::<OpenDatabases>();
    open.insert(path, namespace, object_id, object_name)
        .map(Some)
}

/// How many idle objects to evict (least recently used first) before a new object
/// starts: nonzero when this thread's connection cache is full.
#[op2(fast)]
#[smi]
pub fn op_dorun_storage_pressure(state: &mut OpState) -> u32 {
    state.borrow::<OpenDatabases>().over_capacity() as u32
}

/// Gives back the memory of idle connections (see `OpenDatabases::sweep_idle`); the glue
/// calls it with its idle-eviction sweep.
#[op2(fast)]
pub fn op_dorun_storage_sweep_idle(state: &mut OpState) {
    state.borrow_mut::<OpenDatabases>().sweep_idle();
}

/// Commits pending writes and closes the file.
#[op2(fast)]
pub fn op_dorun_storage_close(
    state: &mut OpState,
    #[smi] handle: u32,
) -> Result<(), StorageOpError> {
    let alarms = state.borrow::<Arc<AlarmScheduler>>().clone();
    let open = state.borrow_mut::<OpenDatabases>();
    // Closing the connection (on the closer thread) checkpoints the WAL, which syncs it
    // first. Nothing waits for that: the object is idle, nothing of it is gated.
    let committed = open.commit_written(handle, &alarms);
    open.close(handle);
    committed.map(|_| ())
}

/// Drops uncommitted writes (object reset).
#[op2(fast)]
pub fn op_dorun_storage_rollback(
    state: &mut OpState,
    #[smi] handle: u32,
) -> Result<(), StorageOpError> {
    with_db(state, handle, |db| db.rollback())
}

/// Commits the implicit transaction after the current JS turn: the op yields once, so every
/// write made before the event loop turns again is part of this commit. Resolves once the
/// commit is written, with a ticket for `op_dorun_storage_durable` (0: nothing to wait for).
#[op2]
#[smi]
pub async fn op_dorun_storage_commit(
    state: Rc<RefCell<OpState>>,
    #[smi] handle: u32,
) -> Result<u32, StorageOpError> {
    tokio::task::yield_now().await;
    let mut state = state.borrow_mut();
    let alarms = state.borrow::<Arc<AlarmScheduler>>().clone();
    state.borrow_mut::<OpenDatabases>().commit(handle, &alarms)
}

/// Resolves when the commit of `ticket` is durable (the flusher thread synced its WAL).
#[op2]
pub async fn op_dorun_storage_durable(
    state: Rc<RefCell<OpState>>,
    #[smi] ticket: u32,
) -> Result<(), StorageOpError> {
    let flush = state
        .borrow_mut()
        .borrow_mut::<OpenDatabases>()
        .take_flush(ticket);
    match flush {
        None => Ok(()),
        Some(receiver) => match receiver.await {
            Ok(result) => result.map_err(StorageOpError::Flush),
            Err(_) => Err(StorageOpError::Flush("the flusher thread stopped".into())),
        },
    }
}

#[op2(fast)]
pub fn op_dorun_storage_savepoint(
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] name: &str,
) -> Result<(), StorageOpError> {
    with_db(state, handle, |db| db.savepoint(name))
}

#[op2(fast)]
pub fn op_dorun_storage_release(
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] name: &str,
) -> Result<(), StorageOpError> {
    with_db(state, handle, |db| db.release(name))
}

#[op2(fast)]
pub fn op_dorun_storage_rollback_to(
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] name: &str,
) -> Result<(), StorageOpError> {
    with_db(state, handle, |db| db.rollback_to(name))
}

/// Sets the alarm (ms since the epoch) in the implicit transaction.
#[op2(fast)]
pub fn op_dorun_alarm_set(
    state: &mut OpState,
    #[smi] handle: u32,
    time: f64,
) -> Result<(), StorageOpError> {
    with_db(state, handle, |db| db.set_alarm(Some(time as i64)))
}

/// Clears the alarm in the implicit transaction.
#[op2(fast)]
pub fn op_dorun_alarm_delete(
    state: &mut OpState,
    #[smi] handle: u32,
) -> Result<(), StorageOpError> {
    with_db(state, handle, |db| db.set_alarm(None))
}

#[op2(fast)]
pub fn op_dorun_storage_in_transaction(state: &mut OpState, #[smi] handle: u32) -> bool {
    state.borrow::<OpenDatabases>().in_transaction(handle)
}

#[op2]
#[buffer]
pub fn op_dorun_kv_get(
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] key: &str,
) -> Result<Option<Vec<u8>>, StorageOpError> {
    with_db(state, handle, |db| db.kv_get(key))
}

#[op2(fast)]
pub fn op_dorun_kv_put(
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] key: &str,
    #[buffer] value: &[u8],
) -> Result<(), StorageOpError> {
    with_db(state, handle, |db| db.kv_put(key, value))
}

#[op2(fast)]
pub fn op_dorun_kv_delete(
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] key: &str,
) -> Result<bool, StorageOpError> {
    with_db(state, handle, |db| db.kv_delete(key))
}

#[derive(deno_core::FromV8)]
pub struct ListArgs {
    start: Option<String>,
    end: Option<String>,
    prefix: Option<String>,
    reverse: Option<bool>,
    limit: Option<u32>,
}

/// Lists entries as a flat array `[key, value, key, value, ...]`.
#[op2]
pub fn op_dorun_kv_list<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    state: &mut OpState,
    #[smi] handle: u32,
    #[scoped] args: ListArgs,
) -> Result<v8::Local<'s, v8::Array>, StorageOpError> {
    let options = ListOptions {
        start: args.start,
        end: args.end,
        prefix: args.prefix,
        reverse: args.reverse.unwrap_or(false),
        limit: args.limit.map(u64::from),
    };
    let entries = with_db(state, handle, |db| db.kv_list(&options))?;
    let mut values: Vec<v8::Local<'s, v8::Value>> = Vec::with_capacity(entries.len() * 2);
    for (key, value) in entries {
        let key =
            v8::String::new(scope, &key).ok_or_else(|| StorageOpError::TooLarge("key too long"))?;
        values.push(key.into());
        let length = value.len();
        let store = v8::ArrayBuffer::new_backing_store_from_vec(value).make_shared();
        let buffer = v8::ArrayBuffer::with_backing_store(scope, &store);
        let array = v8::Uint8Array::new(scope, buffer, 0, length)
            .ok_or_else(|| StorageOpError::TooLarge("value too large"))?;
        values.push(array.into());
    }
    Ok(v8::Array::new_with_elements(scope, &values))
}

#[op2(fast)]
pub fn op_dorun_kv_delete_all(
    state: &mut OpState,
    #[smi] handle: u32,
    keep_alarm: bool,
) -> Result<(), StorageOpError> {
    with_db(state, handle, |db| db.delete_all(keep_alarm))
}

/// The stored alarm (ms since the epoch) or null.
#[op2]
pub fn op_dorun_alarm_get(
    state: &mut OpState,
    #[smi] handle: u32,
) -> Result<Option<f64>, StorageOpError> {
    with_db(state, handle, |db| db.alarm()).map(|t| t.map(|t| t as f64))
}

#[op2(fast)]
pub fn op_dorun_sql_database_size(
    state: &mut OpState,
    #[smi] handle: u32,
) -> Result<f64, StorageOpError> {
    with_db(state, handle, |db| db.database_size()).map(|n| n as f64)
}

/// Runs user SQL. Returns `[columnNames, rows, rowsRead, rowsWritten]`; rows are arrays.
#[op2]
pub fn op_dorun_sql_exec<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] query: &str,
    bindings: v8::Local<'s, v8::Value>,
) -> Result<v8::Local<'s, v8::Array>, StorageOpError> {
    use deno_core::v8;
    let mut values = Vec::new();
    if let Ok(array) = v8::Local::<v8::Array>::try_from(bindings) {
        for index in 0..array.length() {
            let value = array
                .get_index(scope, index)
                .unwrap_or_else(|| v8::undefined(scope).into());
            values.push(to_sql_value(scope, value)?);
        }
    }
    let result = with_db(state, handle, |db| db.sql_exec(query, &values))?;
    let columns: Vec<v8::Local<v8::Value>> = result
        .columns
        .iter()
        .map(|c| v8::String::new(scope, c).expect("column name").into())
        .collect();
    let columns = v8::Array::new_with_elements(scope, &columns);
    let mut rows = Vec::with_capacity(result.rows.len());
    for row in &result.rows {
        let mut cells = Vec::with_capacity(row.len());
        for cell in row {
            let value: v8::Local<v8::Value> = match cell {
                SqlValue::Null => v8::null(scope).into(),
                SqlValue::Integer(i) => v8::Number::new(scope, *i as f64).into(),
                SqlValue::Real(f) => v8::Number::new(scope, *f).into(),
                SqlValue::Text(s) => v8::String::new(scope, s)
                    .ok_or_else(|| StorageOpError::TooLarge("string too long"))?
                    .into(),
                SqlValue::Blob(b) => {
                    let store =
                        v8::ArrayBuffer::new_backing_store_from_vec(b.clone()).make_shared();
                    v8::ArrayBuffer::with_backing_store(scope, &store).into()
                }
            };
            cells.push(value);
        }
        rows.push(v8::Array::new_with_elements(scope, &cells).into());
    }
    let rows = v8::Array::new_with_elements(scope, &rows);
    let read = v8::Number::new(scope, result.rows_read as f64);
    let written = v8::Number::new(scope, result.rows_written as f64);
    Ok(v8::Array::new_with_elements(
        scope,
        &[columns.into(), rows.into(), read.into(), written.into()],
    ))
}

fn to_sql_value(
    scope: &mut v8::PinScope<'_, '_>,
    value: v8::Local<'_, v8::Value>,
) -> Result<SqlValue, StorageOpError> {
    use deno_core::v8;
    if value.is_null_or_undefined() {
        return Ok(SqlValue::Null);
    }
    if value.is_number() {
        let number = value.number_value(scope).unwrap_or(0.0);
        if number.fract() == 0.0 && number.abs() < 9.007_199_254_740_992e15 {
            return Ok(SqlValue::Integer(number as i64));
        }
        return Ok(SqlValue::Real(number));
    }
    if value.is_big_int() {
        let big = v8::Local::<v8::BigInt>::try_from(value).expect("bigint");
        return Ok(SqlValue::Integer(big.i64_value().0));
    }
    if let Ok(view) = v8::Local::<v8::ArrayBufferView>::try_from(value) {
        let mut bytes = vec![0u8; view.byte_length()];
        view.copy_contents(&mut bytes);
        return Ok(SqlValue::Blob(bytes));
    }
    if let Ok(buffer) = v8::Local::<v8::ArrayBuffer>::try_from(value) {
        let length = buffer.byte_length();
        let mut bytes = vec![0u8; length];
        if let Some(view) = v8::Uint8Array::new(scope, buffer, 0, length) {
            view.copy_contents(&mut bytes);
        }
        return Ok(SqlValue::Blob(bytes));
    }
    let text = value
        .to_string(scope)
        .map(|s| s.to_rust_string_lossy(scope))
        .unwrap_or_default();
    Ok(SqlValue::Text(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dorun-lru-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn open_three(dir: &std::path::Path, cache: &mut OpenDatabases) -> Vec<u32> {
        (0..3)
            .map(|i| {
                cache
                    .insert(dir.join(format!("{i}.sqlite")), 0, &format!("{i}"), None)
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn the_least_recently_used_connection_is_closed_first() {
        let dir = temp_dir("order");
        let mut cache = OpenDatabases::new(2, Durability::Off);
        let handles = open_three(&dir, &mut cache);
        // Opening the third closed the first; touching the second makes the third the
        // oldest, so reopening the first closes the third.
        assert_eq!(cache.connected(), 2);
        assert!(!cache.is_connected(handles[0]));
        cache.database(handles[1]).unwrap();
        cache.database(handles[0]).unwrap();
        assert!(cache.is_connected(handles[0]));
        assert!(cache.is_connected(handles[1]));
        assert!(!cache.is_connected(handles[2]));
        assert_eq!(cache.connected(), 2);
    }

    #[test]
    fn a_connection_with_a_pending_transaction_is_never_closed() {
        let dir = temp_dir("txn");
        let mut cache = OpenDatabases::new(1, Durability::Off);
        let first = cache.insert(dir.join("a.sqlite"), 0, "a", None).unwrap();
        cache.database(first).unwrap().kv_put("k", b"v").unwrap();
        assert!(cache.in_transaction(first));
        let second = cache.insert(dir.join("b.sqlite"), 0, "b", None).unwrap();
        // Over capacity rather than losing the uncommitted write.
        assert!(cache.is_connected(first));
        assert!(cache.is_connected(second));
        assert_eq!(
            cache.database(first).unwrap().kv_get("k").unwrap(),
            Some(b"v".to_vec())
        );
    }

    #[test]
    fn a_second_handle_of_an_object_takes_over_the_connection_that_locks_its_file() {
        let dir = temp_dir("takeover");
        let mut cache = OpenDatabases::new(8, Durability::Off);
        let path = dir.join("a.sqlite");
        let old = cache.insert(path.clone(), 0, "a", None).unwrap();
        {
            let db = cache.database(old).unwrap();
            db.kv_put("k", b"1").unwrap();
            db.commit().unwrap();
        }
        // Without the takeover the second open would find the file locked.
        let new = cache.insert(path.clone(), 0, "a", None).unwrap();
        assert_eq!(cache.connected(), 1);
        assert_eq!(
            cache.database(new).unwrap().kv_get("k").unwrap(),
            Some(b"1".to_vec())
        );
        assert!(matches!(cache.database(old), Err(StorageOpError::Closed)));
        // The old instance's close leaves the new one's connection alone.
        cache.remove(old);
        assert!(cache.is_connected(new));
        cache.database(new).unwrap().kv_put("k", b"2").unwrap();
        cache.database(new).unwrap().commit().unwrap();
        cache.remove(new);
        assert_eq!(cache.connected(), 0);
        let again = cache.insert(path, 0, "a", None).unwrap();
        assert_eq!(
            cache.database(again).unwrap().kv_get("k").unwrap(),
            Some(b"2".to_vec())
        );
    }

    #[test]
    fn idle_connections_beyond_the_idle_capacity_are_closed_the_others_trimmed() {
        let dir = temp_dir("sweep");
        let mut cache = OpenDatabases::new(8, Durability::Off).keep_idle(2);
        let h = open_three(&dir, &mut cache);
        let swept = |trimmed, closed| Swept { trimmed, closed };
        // Used since the last sweep (there was none): nothing is idle yet.
        assert_eq!(cache.sweep_idle(), swept(0, 0));
        cache.database(h[0]).unwrap().kv_put("k", b"v").unwrap();
        // h[1] and h[2] idle, one connection too many: the least recently used one is
        // closed, the other trimmed.
        assert_eq!(cache.sweep_idle(), swept(1, 1));
        assert!(!cache.is_connected(h[1]));
        assert!(cache.is_connected(h[2]));
        // h[0] has a pending transaction: never idle however long it waits.
        assert_eq!(cache.sweep_idle(), swept(0, 0), "h[2] already trimmed");
        assert_eq!(cache.sweep_idle(), swept(0, 0));
        assert!(cache.is_connected(h[0]));
        cache.database(h[0]).unwrap().commit().unwrap();
        // A closed connection reopens on next use.
        assert_eq!(cache.database(h[1]).unwrap().kv_get("k").unwrap(), None);
        assert_eq!(cache.connected(), 3);
        // Three open again, h[2] the only idle one: closed.
        assert_eq!(cache.sweep_idle(), swept(0, 1));
        assert!(!cache.is_connected(h[2]));
        assert_eq!(
            cache.database(h[0]).unwrap().kv_get("k").unwrap(),
            Some(b"v".to_vec())
        );
        // At or under the idle capacity nothing is closed: idle ones are trimmed once.
        assert_eq!(cache.connected(), 2);
        assert_eq!(
            cache.sweep_idle(),
            swept(1, 0),
            "h[1], reopened, is idle again"
        );
        assert_eq!(cache.sweep_idle(), swept(1, 0), "h[0]");
        assert_eq!(cache.sweep_idle(), swept(0, 0));
        assert_eq!(cache.connected(), 2);
    }

    #[test]
    fn a_reopened_connection_sees_committed_data_and_removed_handles_are_closed() {
        let dir = temp_dir("reopen");
        let mut cache = OpenDatabases::new(1, Durability::Off);
        let first = cache.insert(dir.join("a.sqlite"), 0, "a", None).unwrap();
        {
            let db = cache.database(first).unwrap();
            db.kv_put("k", b"1").unwrap();
            db.commit().unwrap();
        }
        let second = cache.insert(dir.join("b.sqlite"), 0, "b", None).unwrap();
        assert!(!cache.is_connected(first));
        assert_eq!(
            cache.database(first).unwrap().kv_get("k").unwrap(),
            Some(b"1".to_vec())
        );
        assert!(!cache.is_connected(second));
        cache.remove(first);
        assert_eq!(cache.connected(), 0);
        assert!(matches!(cache.database(first), Err(StorageOpError::Closed)));
    }
}
