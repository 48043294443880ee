//! The replicator: takes announcements of committed transactions, captures them from the
//! objects' WALs, packs the segments of all objects into journal batches and uploads them,
//! and settles each announcement once its batch *and every earlier batch* are in the store
//! (ARCHITECTURE.md, "Group upload: the session journal").
//!
//! It runs on its own thread (`dorun-replica`) with a current-thread tokio runtime, since
//! `object_store` is async. A batch is cut as soon as fewer than `max_inflight` uploads run
//! and something is pending, so batches grow with load by themselves. A failed upload is
//! retried with the same seq and bytes, holding back the settlement of every later batch;
//! a batch key that already exists with other bytes means another process fenced this
//! session's journal: replication stops and every waiting commit fails.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::journal::{self, BatchInfo, ObjectKey};
use super::ltx;
use super::store::{self, Store};
use super::wal::{self, Committed, Cursor};

/// Called once an announced commit is in the store (or can never be).
pub type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Commits of one object that are in its WAL and not yet announced.
pub struct Announcement {
    pub object: ObjectKey,
    /// The object's database file (its WAL is beside it).
    pub database: PathBuf,
    /// Counts the checkpoints of this WAL made by its owner (each restarts the WAL).
    pub wal_round: u64,
    pub first_txid: u64,
    pub last_txid: u64,
    /// The WAL's size right after the last of these commits.
    pub wal_end: u64,
    pub done: Option<Done>,
    /// Ship the whole file (a snapshot), not only these commits: its content was replaced
    /// outside the commit path (an import).
    pub whole: bool,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub session: String,
    pub epoch: u64,
    pub max_inflight: usize,
    pub max_batch_bytes: usize,
    /// One process per store: this process's generation, checked this often against the
    /// store's newest (a newer one means another process writes there: replication stops).
    pub generation_check: Option<(u64, Duration)>,
    /// How often settled segments are rewritten into per-object L1 files, after which the
    /// journal batches they came from are deleted.
    pub l1_every: Duration,
    /// A file is shipped whole again once the segments shipped since its last snapshot
    /// pass four times its size, and at least this many bytes: a restore then reads at most
    /// about five times an object's size past its newest snapshot.
    pub resnapshot_min_bytes: u64,
    /// How long per-object files made useless by a newer snapshot are kept (so a restore
    /// `--at` a time within it still works); `None` keeps everything.
    pub retention: Option<Duration>,
}

impl Options {
    pub fn new(session: String, epoch: u64) -> Self {
        Self {
            session,
            epoch,
            max_inflight: 4,
            max_batch_bytes: 8 << 20,
            generation_check: None,
            l1_every: Duration::from_secs(10),
            resnapshot_min_bytes: 1 << 20,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

pub struct Replicator {
    shared: Arc<Shared>,
    /// The replica thread's runtime and the store, for whole files uploaded beside the
    /// journal (R2 bodies).
    runtime: tokio::runtime::Handle,
    store: Store,
}

#[derive(Default)]
struct State {
    incoming: Vec<Announcement>,
    /// By WAL: the round and offset up to which every frame is in the store.
    uploaded: HashMap<PathBuf, ((u32, u32), u64)>,
    announced: u64,
    settled: u64,
    stopped: Option<String>,
    shutdown: bool,
    batches: u64,
    bytes: u64,
    /// A request to move on to a new generation (see [`Replicator::begin_generation`]).
    switch: Option<Switch>,
    /// Since when the oldest commit not yet in the store has waited: announced and not
    /// captured yet (`incoming_since`), or captured and not settled (`pending_since`).
    incoming_since: Option<Instant>,
    pending_since: Option<Instant>,
}

/// A new generation asked for by a reset of namespaces: its `g/` record names them, so a
/// restore drops what it rebuilt of them before applying anything of that generation.
struct Switch {
    reset: Vec<String>,
    reply: std::sync::mpsc::Sender<Result<u64, String>>,
}

struct Shared {
    state: Mutex<State>,
    wake: tokio::sync::Notify,
    changed: Condvar,
    /// The epoch (generation) new commits are filed under.
    epoch: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What the replicator has done so far (for metrics and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    pub announced: u64,
    pub settled: u64,
    pub batches: u64,
    pub bytes: u64,
}

impl Replicator {
    pub fn start(store: Store, options: Options) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: tokio::sync::Notify::new(),
            changed: Condvar::new(),
            epoch: std::sync::atomic::AtomicU64::new(options.epoch),
        });
        let worker = shared.clone();
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let for_thread = store.clone();
        std::thread::Builder::new()
            .name("dorun-replica".into())
            .spawn(move || run(for_thread, options, worker, handle_tx))?;
        let runtime = handle_rx.recv().map_err(|_| {
            std::io::Error::other(
                shared
                    .lock()
                    .stopped
                    .clone()
                    .unwrap_or_else(|| "the replica thread did not start".into()),
            )
        })?;
        Ok(Self {
            shared,
            runtime,
            store,
        })
    }

    /// Uploads the file at `path` as `key` (outside the journal: an R2 body, which is
    /// written once and never changed), and waits for it.
    pub fn put_file(&self, key: &str, path: &Path) -> Result<(), String> {
        let (done, answer) = std::sync::mpsc::channel();
        let (store, key_owned, path_owned) =
            (self.store.clone(), key.to_string(), path.to_path_buf());
        self.runtime.spawn(async move {
            let _ = done.send(store::put_file(&store, &key_owned, &path_owned).await);
        });
        match answer.recv() {
            Ok(result) => result.map_err(|e| format!("uploading {key}: {e}")),
            Err(_) => Err(format!("uploading {key}: the replica thread is gone")),
        }
    }

    /// Hands commits to the replicator (in commit order per object).
    pub fn announce_all(&self, announcements: Vec<Announcement>) {
        if announcements.is_empty() {
            return;
        }
        let mut state = self.shared.lock();
        if let Some(why) = state.stopped.clone() {
            state.announced += announcements.len() as u64;
            state.settled += announcements.len() as u64;
            drop(state);
            for announcement in announcements {
                if let Some(done) = announcement.done {
                    done(Err(why.clone()));
                }
            }
            self.shared.changed.notify_all();
            return;
        }
        state.announced += announcements.len() as u64;
        if state.incoming.is_empty() {
            state.incoming_since = Some(Instant::now());
        }
        state.incoming.extend(announcements);
        drop(state);
        self.shared.wake.notify_one();
    }

    /// Whether every frame of `wal` up to `end` is in the store, so its owner may checkpoint
    /// it. `salts` (from the WAL's header) name which WAL: a checkpoint or a new file makes
    /// new ones.
    pub fn uploaded_through(&self, wal: &Path, salts: (u32, u32), end: u64) -> bool {
        self.shared
            .lock()
            .uploaded
            .get(wal)
            .is_some_and(|&(s, offset)| s == salts && offset >= end)
    }

    /// How long the oldest commit not yet in the store has waited (zero when there is
    /// none). `--durability async` makes commits wait once this passes its bound.
    pub fn lag(&self) -> Duration {
        lag_of(&self.shared.lock())
    }

    /// Whether an `async` commit must wait for the store: replication stopped, or it lags
    /// past `bound` (one look at the state, made for every commit).
    pub fn behind(&self, bound: Duration) -> bool {
        let state = self.shared.lock();
        state.stopped.is_some() || lag_of(&state) > bound
    }

    /// The epoch (generation) that new commits are filed under.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records in the store that the objects of `reset` (namespace directory names) are
    /// gone, before their files are: every commit announced so far is uploaded in the
    /// current generation's journal, then a new generation is taken whose `g/` record names
    /// the namespaces, and later commits go to its journal. A restore replays generations
    /// in order and drops those namespaces' objects where that generation begins, so a
    /// reset object never comes back. The caller holds the objects' threads (no commit of
    /// theirs can follow); commits of other objects go on in the new generation. Returns
    /// the new generation.
    pub fn begin_generation(&self, reset: Vec<String>, timeout: Duration) -> Result<u64, String> {
        let (reply, answer) = std::sync::mpsc::channel();
        {
            let mut state = self.shared.lock();
            if let Some(why) = &state.stopped {
                return Err(why.clone());
            }
            if state.switch.is_some() {
                return Err("another reset is being recorded".into());
            }
            state.switch = Some(Switch { reset, reply });
        }
        self.shared.wake.notify_one();
        match answer.recv_timeout(timeout) {
            Ok(result) => result,
            Err(_) => Err(format!(
                "the store did not take the reset within {} s",
                timeout.as_secs()
            )),
        }
    }

    /// Forgets a WAL (its object was reset or its file removed).
    pub fn forget(&self, wal: &Path) {
        self.shared.lock().uploaded.remove(wal);
    }

    /// Waits until every announcement so far is settled; false on timeout.
    pub fn wait_settled(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            if state.settled >= state.announced {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    pub fn progress(&self) -> Progress {
        let state = self.shared.lock();
        Progress {
            announced: state.announced,
            settled: state.settled,
            batches: state.batches,
            bytes: state.bytes,
        }
    }

    /// Why replication stopped, if it did.
    pub fn stopped(&self) -> Option<String> {
        self.shared.lock().stopped.clone()
    }
}

fn lag_of(state: &State) -> Duration {
    [state.incoming_since, state.pending_since]
        .into_iter()
        .flatten()
        .min()
        .map_or(Duration::ZERO, |since| since.elapsed())
}

impl Drop for Replicator {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_one();
    }
}

/// Commits of one object captured and waiting for a batch.
struct Forming {
    page_size: u32,
    /// Every page of the database (TXIDs 1..=last), not only what the commits changed.
    snapshot: bool,
    first_txid: u64,
    last_txid: u64,
    transactions: Vec<Committed>,
    dones: Vec<Done>,
    announcements: u64,
    /// (WAL, its salts, offset) reached by these commits.
    reached: (PathBuf, (u32, u32), u64),
    /// When the first of these commits was captured.
    since: Instant,
}

/// A batch cut and being uploaded (or uploaded and waiting for an earlier one).
struct Cut {
    dones: Vec<Done>,
    reached: Vec<(PathBuf, (u32, u32), u64)>,
    count: u64,
    uploaded: bool,
    /// Its segments (object, epoch, TXIDs, LTX), for the L1 files once it is settled.
    segments: Vec<(ObjectKey, u64, u64, u64, Vec<u8>)>,
    /// When its oldest commit was captured.
    since: Instant,
}

/// Settled segments not yet in L1 files, by object, in TXID order.
type Spool = BTreeMap<ObjectKey, Vec<(u64, u64, Vec<u8>)>>;

fn run(
    store: Store,
    options: Options,
    shared: Arc<Shared>,
    handle: std::sync::mpsc::Sender<tokio::runtime::Handle>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => {
            let _ = handle.send(runtime.handle().clone());
            runtime
        }
        Err(error) => {
            stop(
                &shared,
                format!("replication could not start: {error}"),
                Vec::new(),
            );
            return;
        }
    };
    runtime.block_on(Worker::new(store, options, shared).run());
}

struct Worker {
    store: Store,
    options: Options,
    shared: Arc<Shared>,
    /// By database file: its checkpoint round, its inode, and where capture stopped. A file
    /// seen for the first time (or a new file at the same path) is shipped whole first.
    cursors: HashMap<PathBuf, (u64, Option<u64>, Cursor)>,
    /// The last TXID given to a file whose announcements leave the counting to us
    /// (`first_txid == 0`: binding files, see `files.rs`).
    counted: HashMap<PathBuf, u64>,
    /// Bytes of segments shipped per file since its last snapshot.
    since_snapshot: HashMap<PathBuf, u64>,
    forming: BTreeMap<ObjectKey, Forming>,
    cuts: BTreeMap<u64, Cut>,
    next_seq: u64,
    uploads: tokio::task::JoinSet<(u64, Result<(), String>)>,
    spool: Spool,
    /// The last settled batch whose segments are in `spool` (or in L1 files).
    spooled_through: u64,
    compaction: Option<tokio::task::JoinHandle<Result<(), (String, Spool)>>>,
    /// A new generation waiting for the current one's journal to drain (no announcement is
    /// taken meanwhile, so it cannot starve).
    switching: Option<Switch>,
}

impl Worker {
    fn new(store: Store, options: Options, shared: Arc<Shared>) -> Self {
        Self {
            store,
            options,
            shared,
            cursors: HashMap::new(),
            counted: HashMap::new(),
            since_snapshot: HashMap::new(),
            forming: BTreeMap::new(),
            cuts: BTreeMap::new(),
            next_seq: 1,
            uploads: tokio::task::JoinSet::new(),
            spool: Spool::new(),
            spooled_through: 0,
            compaction: None,
            switching: None,
        }
    }

    async fn run(mut self) {
        let mut l1_tick = tokio::time::interval(self.options.l1_every);
        l1_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        l1_tick.tick().await;
        let mut generation_check = self.options.generation_check.map(|(generation, every)| {
            let mut interval = tokio::time::interval(every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            (generation, interval)
        });
        loop {
            let (incoming, shutdown) = {
                let mut state = self.shared.lock();
                if state.stopped.is_some() {
                    if let Some(switch) = self.switching.take().or(state.switch.take()) {
                        let _ = switch
                            .reply
                            .send(Err(state.stopped.clone().unwrap_or_default()));
                    }
                    return;
                }
                if self.switching.is_some() {
                    (Vec::new(), state.shutdown)
                } else {
                    // Announcements made before the request are this generation's.
                    let incoming = std::mem::take(&mut state.incoming);
                    self.switching = state.switch.take();
                    // Captured right below: from here on they count as pending.
                    state.pending_since = match (self.oldest_pending(), state.incoming_since) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    state.incoming_since = None;
                    (incoming, state.shutdown)
                }
            };
            for announcement in incoming {
                self.capture(announcement);
            }
            while self.uploads.len() < self.options.max_inflight && !self.forming.is_empty() {
                self.cut();
            }
            {
                let oldest = self.oldest_pending();
                let mut state = self.shared.lock();
                state.pending_since = oldest;
                let lag = [state.incoming_since, oldest]
                    .into_iter()
                    .flatten()
                    .min()
                    .map_or(0.0, |since| since.elapsed().as_secs_f64());
                metrics::gauge!("dorun_replica_lag_seconds").set(lag);
            }
            if self.switching.is_some() && self.forming.is_empty() && self.uploads.is_empty() {
                let switch = self.switching.take().expect("checked");
                let result = self.next_generation(&switch.reset).await;
                if let (Ok(generation), Some((checked, _))) = (&result, generation_check.as_mut()) {
                    *checked = *generation;
                }
                let _ = switch.reply.send(result);
                continue;
            }
            if shutdown && self.forming.is_empty() && self.uploads.is_empty() {
                return;
            }
            let check = async {
                match generation_check.as_mut() {
                    Some((generation, interval)) => {
                        interval.tick().await;
                        Some(*generation)
                    }
                    None => std::future::pending().await,
                }
            };
            let can_compact = self.compaction.is_none() && !self.spool.is_empty();
            let compaction = async {
                match self.compaction.as_mut() {
                    Some(handle) => Some(handle.await),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.shared.wake.notified() => {}
                _ = l1_tick.tick(), if can_compact => {
                    self.compact();
                }
                Some(done) = compaction => {
                    self.compaction = None;
                    match done {
                        Ok(Ok(())) => {}
                        Ok(Err((why, spool))) => {
                            tracing::warn!("replication: writing L1 files failed (retried): {why}");
                            // Back in front of what settled since: the cursor must never
                            // pass a segment that is in no L1 file.
                            for (object, mut segments) in spool {
                                let later = self.spool.remove(&object).unwrap_or_default();
                                segments.extend(later);
                                self.spool.insert(object, segments);
                            }
                        }
                        Err(error) => tracing::error!("replication: L1 task failed: {error}"),
                    }
                }
                Some(generation) = check => {
                    if let Some(why) = newer_generation(&self.store, generation).await {
                        let pending = self.take_all_dones();
                        stop(&self.shared, why, pending);
                        return;
                    }
                }
                Some(joined) = self.uploads.join_next(), if !self.uploads.is_empty() => {
                    let (seq, result) = match joined {
                        Ok(outcome) => outcome,
                        Err(error) => (0, Err(format!("upload task failed: {error}"))),
                    };
                    match result {
                        Ok(()) => self.uploaded(seq),
                        Err(why) => {
                            let pending = self.take_all_dones();
                            stop(&self.shared, why, pending);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// When the oldest captured commit that is not settled yet was captured.
    fn oldest_pending(&self) -> Option<Instant> {
        let forming = self.forming.values().map(|f| f.since);
        let cuts = self.cuts.values().map(|c| c.since);
        forming.chain(cuts).min()
    }

    /// Moves on to a new generation whose record names the reset namespaces. The current
    /// journal has drained; its settled segments not yet in L1 files stay in its batches
    /// (a restore reads a journal past its cursor), so the spool starts empty.
    async fn next_generation(&mut self, reset: &[String]) -> Result<u64, String> {
        if let Some(compaction) = self.compaction.take() {
            if let Ok(Err((why, _))) = compaction.await {
                tracing::warn!("replication: writing L1 files failed (left in the journal): {why}");
            }
        }
        let node = self
            .options
            .session
            .rsplit_once(".g")
            .map_or(self.options.session.as_str(), |(node, _)| node)
            .to_string();
        let generation = store::take_generation(&self.store, &node, reset)
            .await
            .map_err(|e| format!("cannot take a new generation in the store: {e}"))?;
        tracing::info!(
            "replication: generation {generation} begins (reset of {})",
            reset.join(", ")
        );
        self.options.session = store::session_name(&node, generation);
        self.options.epoch = generation;
        self.shared
            .epoch
            .store(generation, std::sync::atomic::Ordering::Release);
        self.next_seq = 1;
        self.spool.clear();
        self.spooled_through = 0;
        Ok(generation)
    }

    /// Reads an announcement's commits out of its WAL into the object's forming segment.
    /// The first time a file is seen in this session it is shipped whole (a snapshot of its
    /// state after these commits), so the store never depends on what earlier processes
    /// uploaded or failed to.
    fn capture(&mut self, announcement: Announcement) {
        let Announcement {
            object,
            database,
            wal_round,
            first_txid,
            last_txid,
            wal_end,
            done,
            whole,
        } = announcement;
        let wal = crate::wal_path(&database);
        let inode = std::fs::metadata(&database).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.ino()
        });
        let known = !whole
            && self
                .cursors
                .get(&database)
                .is_some_and(|(_, seen, _)| *seen == inode);
        let counting = first_txid == 0;
        if !known {
            self.cursors.remove(&database);
            let last_txid = if counting {
                // Shipped whole again: the count goes on (a snapshot covers 1..=last).
                let last = self.counted.get(&database).map_or(1, |count| count + 1);
                self.counted.insert(database.clone(), last);
                last
            } else {
                last_txid
            };
            self.since_snapshot.insert(database.clone(), 0);
            let mut cursor = Cursor::new();
            let snapshot = match snapshot(&database, &wal, wal_end, &mut cursor) {
                Ok(snapshot) => snapshot,
                Err(why) => {
                    self.fail(done, &object, why);
                    return;
                }
            };
            let offset = cursor.offset();
            let salts = cursor.salts().unwrap_or_default();
            self.cursors.insert(database, (wal_round, inode, cursor));
            let previous = self.forming.remove(&object);
            let mut dones: Vec<Done> = Vec::new();
            let mut announcements = 1;
            let mut since = Instant::now();
            if let Some(previous) = previous {
                dones.extend(previous.dones);
                announcements += previous.announcements;
                since = previous.since;
            }
            dones.extend(done);
            self.forming.insert(
                object,
                Forming {
                    page_size: snapshot.0,
                    snapshot: true,
                    first_txid: 1,
                    last_txid,
                    transactions: vec![snapshot.1],
                    dones,
                    announcements,
                    since,
                    reached: (wal, salts, offset),
                },
            );
            return;
        }
        let entry = self.cursors.get_mut(&database).expect("known");
        if entry.0 != wal_round {
            *entry = (wal_round, inode, Cursor::new());
        }
        let expected = last_txid + 1 - first_txid;
        let captured = match entry.2.capture_file(&wal, wal_end) {
            Ok(captured) => captured,
            Err(error) => {
                self.cursors.remove(&database);
                self.fail(done, &object, format!("{error}"));
                return;
            }
        };
        let offset = entry.2.offset();
        let salts = entry.2.salts().unwrap_or_default();
        let shipped: u64 = captured
            .transactions
            .iter()
            .map(|t| t.pages.len() as u64 * u64::from(captured.page_size))
            .sum();
        let since = self.since_snapshot.entry(database.clone()).or_insert(0);
        *since += shipped;
        // The file's size is looked at only once the floor is passed (not on every commit).
        if *since > self.options.resnapshot_min_bytes
            && *since > 4 * std::fs::metadata(&database).map_or(0, |m| m.len())
        {
            // The next announcement ships the file whole (this one still goes as segments).
            *since = 0;
            self.cursors.remove(&database);
        }
        let (first_txid, last_txid, expected) = if counting {
            let count = captured.transactions.len() as u64;
            if count == 0 {
                // Its frames came with an earlier announcement: settled with them.
                self.settle_with_earlier(&object, done);
                return;
            }
            let last = self.counted.get(&database).copied().unwrap_or(0);
            self.counted.insert(database.clone(), last + count);
            (last + 1, last + count, count)
        } else {
            (first_txid, last_txid, expected)
        };
        if captured.transactions.len() as u64 != expected {
            // The WAL does not hold what was announced: ship the file whole next time.
            self.cursors.remove(&database);
            let why = format!(
                "its WAL holds {} new commits where {expected} were announced",
                captured.transactions.len()
            );
            self.fail(done, &object, why);
            return;
        }
        match self.forming.get_mut(&object) {
            Some(forming) if forming.last_txid + 1 == first_txid => {
                forming.last_txid = last_txid;
                forming.transactions.extend(captured.transactions);
                forming.dones.extend(done);
                forming.announcements += 1;
                forming.reached = (wal, salts, offset);
            }
            Some(forming) => {
                let why = format!("commit {first_txid} announced after {}", forming.last_txid);
                self.cursors.remove(&database);
                self.fail(done, &object, why);
            }
            None => {
                self.forming.insert(
                    object,
                    Forming {
                        page_size: captured.page_size,
                        snapshot: false,
                        first_txid,
                        last_txid,
                        transactions: captured.transactions,
                        dones: done.into_iter().collect(),
                        announcements: 1,
                        reached: (wal, salts, offset),
                        since: Instant::now(),
                    },
                );
            }
        }
    }

    /// An announcement whose commits were all captured earlier: its `done` goes with those
    /// commits (still forming, or in the last batch cut), or is called now when they are
    /// already settled.
    fn settle_with_earlier(&mut self, object: &ObjectKey, done: Option<Done>) {
        if let Some(forming) = self.forming.get_mut(object) {
            forming.dones.extend(done);
            forming.announcements += 1;
        } else if let Some(mut last) = self.cuts.last_entry() {
            last.get_mut().dones.extend(done);
            last.get_mut().count += 1;
        } else {
            if let Some(done) = done {
                done(Ok(()));
            }
            self.settle(1);
        }
    }

    fn fail(&self, done: Option<Done>, object: &ObjectKey, why: String) {
        let message = format!(
            "replication of {}/{} failed: {why}",
            object.namespace, object.id
        );
        tracing::error!("{message}");
        if let Some(done) = done {
            done(Err(message));
        }
        self.settle(1);
    }

    fn settle(&self, announcements: u64) {
        self.shared.lock().settled += announcements;
        self.shared.changed.notify_all();
    }

    /// Packs forming segments (up to the batch size) into the next batch and starts its
    /// upload.
    fn cut(&mut self) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut segments = Vec::new();
        let mut dones = Vec::new();
        let mut reached = Vec::new();
        let mut count = 0u64;
        let mut size = 0usize;
        let mut since = Instant::now();
        while size < self.options.max_batch_bytes {
            let Some((object, forming)) = self.forming.pop_first() else {
                break;
            };
            since = since.min(forming.since);
            let encoded = encode_segment(&forming, now_ms);
            match encoded {
                Ok(bytes) => {
                    size += bytes.len();
                    count += forming.announcements;
                    reached.push(forming.reached.clone());
                    dones.extend(forming.dones);
                    segments.push((
                        object,
                        self.options.epoch,
                        forming.first_txid,
                        forming.last_txid,
                        bytes,
                    ));
                }
                Err(error) => {
                    let why = format!(
                        "replication of {}/{} failed: {error}",
                        object.namespace, object.id
                    );
                    tracing::error!("{why}");
                    for done in forming.dones {
                        done(Err(why.clone()));
                    }
                    self.settle(forming.announcements);
                }
            }
        }
        if segments.is_empty() {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let info = BatchInfo {
            seq,
            created_ms: now_ms,
            session: self.options.session.clone(),
        };
        let bytes = journal::encode(&info, &segments);
        let kept = segments;
        {
            let mut state = self.shared.lock();
            state.batches += 1;
            state.bytes += bytes.len() as u64;
        }
        metrics::counter!("dorun_replica_batches_total").increment(1);
        metrics::counter!("dorun_replica_bytes_total").increment(bytes.len() as u64);
        metrics::histogram!("dorun_replica_batch_commits").record(count as f64);
        self.cuts.insert(
            seq,
            Cut {
                dones,
                reached,
                count,
                uploaded: false,
                segments: kept,
                since,
            },
        );
        let key = journal::batch_key(&self.options.session, seq);
        let store = self.store.clone();
        let started = Instant::now();
        self.uploads.spawn(async move {
            let result = upload(&store, &key, bytes).await;
            metrics::histogram!("dorun_replica_upload_seconds")
                .record(started.elapsed().as_secs_f64());
            (seq, result)
        });
    }

    /// Marks a batch uploaded and settles every batch of the uploaded prefix.
    fn uploaded(&mut self, seq: u64) {
        if let Some(cut) = self.cuts.get_mut(&seq) {
            cut.uploaded = true;
        }
        let mut settled = Vec::new();
        while let Some(entry) = self.cuts.first_entry() {
            if !entry.get().uploaded {
                break;
            }
            settled.push(entry.remove());
        }
        if settled.is_empty() {
            return;
        }
        for cut in &mut settled {
            for (object, _, min, max, ltx) in std::mem::take(&mut cut.segments) {
                self.spool.entry(object).or_default().push((min, max, ltx));
            }
        }
        // Every batch before the first one still uploading is settled.
        let settled_through = self
            .cuts
            .keys()
            .next()
            .map_or(self.next_seq - 1, |first| first - 1);
        self.spooled_through = self.spooled_through.max(settled_through);
        {
            let mut state = self.shared.lock();
            metrics::gauge!("dorun_replica_pending_commits")
                .set((state.announced - state.settled) as f64);
            for cut in &settled {
                state.settled += cut.count;
                for (wal, salts, offset) in &cut.reached {
                    state.uploaded.insert(wal.clone(), (*salts, *offset));
                }
            }
        }
        for cut in settled {
            for done in cut.dones {
                done(Ok(()));
            }
        }
        self.shared.changed.notify_all();
    }

    /// Starts writing the spooled segments as per-object L1 files; once all are in the store,
    /// a cursor says the journal up to `spooled_through` is covered and those batches go.
    fn compact(&mut self) {
        let spool = std::mem::take(&mut self.spool);
        let through = self.spooled_through;
        let store = self.store.clone();
        let session = self.options.session.clone();
        let epoch = self.options.epoch;
        let retention = self.options.retention;
        self.compaction = Some(tokio::spawn(async move {
            match write_l1(&store, &session, epoch, &spool, through, retention).await {
                Ok(()) => Ok(()),
                Err(why) => Err((why, spool)),
            }
        }));
    }

    fn take_all_dones(&mut self) -> Vec<Done> {
        let mut dones = Vec::new();
        for (_, forming) in std::mem::take(&mut self.forming) {
            dones.extend(forming.dones);
        }
        for (_, cut) in std::mem::take(&mut self.cuts) {
            dones.extend(cut.dones);
        }
        dones
    }
}

/// The key of an object's L1 file.
pub fn l1_key(object: &ObjectKey, epoch: u64, min: u64, max: u64) -> String {
    format!(
        "o/{}/{}/e/{epoch:016x}/l1/{min:016x}-{max:016x}.ltx",
        object.namespace, object.id
    )
}

/// An L1 file's key read back: (object, epoch, min TXID, max TXID).
pub fn parse_l1_key(key: &str) -> Option<(ObjectKey, u64, u64, u64)> {
    let parts: Vec<&str> = key.split('/').collect();
    let ["o", ns, id, "e", epoch, "l1", name] = parts[..] else {
        return None;
    };
    let (min, max) = name.strip_suffix(".ltx")?.split_once('-')?;
    let object = ObjectKey {
        namespace: ns.to_string(),
        id: id.to_string(),
    };
    Some((
        object,
        u64::from_str_radix(epoch, 16).ok()?,
        u64::from_str_radix(min, 16).ok()?,
        u64::from_str_radix(max, 16).ok()?,
    ))
}

/// Merges consecutive LTX segments of one object into one file (a snapshot among them
/// starts over from it). Returns (min TXID, max TXID, bytes).
pub fn merge_segments(segments: &[(u64, u64, Vec<u8>)]) -> Result<(u64, u64, Vec<u8>), String> {
    let mut pages: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut header: Option<ltx::Header> = None;
    for (_, _, bytes) in segments {
        let file = ltx::decode(bytes).map_err(|e| e.to_string())?;
        match header.as_mut() {
            Some(merged) if !file.header.is_snapshot() => {
                if file.header.min_txid != merged.max_txid + 1 {
                    return Err(format!(
                        "segments not consecutive: {} after {}",
                        file.header.min_txid, merged.max_txid
                    ));
                }
                merged.max_txid = file.header.max_txid;
                merged.commit = file.header.commit;
                merged.timestamp = file.header.timestamp;
            }
            _ => {
                pages.clear();
                header = Some(file.header.clone());
            }
        }
        pages.extend(file.pages);
    }
    let header = header.ok_or("no segments")?;
    pages.retain(|pgno, _| *pgno <= header.commit);
    let checksum = if header.is_snapshot() {
        ltx::pages_checksum(&pages)
    } else {
        0
    };
    let bytes = ltx::encode(&header, &pages, checksum).map_err(|e| e.to_string())?;
    Ok((header.min_txid, header.max_txid, bytes))
}

/// Writes each object's spooled segments as one L1 file, then the cursor, then deletes the
/// batches (and older cursors) it covers.
async fn write_l1(
    store: &Store,
    session: &str,
    epoch: u64,
    spool: &Spool,
    through: u64,
    retention: Option<Duration>,
) -> Result<(), String> {
    for (object, segments) in spool {
        let (min, max, bytes) = merge_segments(segments)?;
        let key = l1_key(object, epoch, min, max);
        if !store::create(store, &key, bytes.clone())
            .await
            .map_err(|e| e.to_string())?
            && store::get(store, &key).await.map_err(|e| e.to_string())? != bytes
        {
            return Err(format!("{key} exists with other contents"));
        }
        if let (1, Some(retention)) = (min, retention) {
            prune(store, object, epoch, max, retention).await;
        }
    }
    let cursor = format!("j/{session}/c/{through:016x}");
    store::create(store, &cursor, Vec::new())
        .await
        .map_err(|e| e.to_string())?;
    metrics::counter!("dorun_replica_l1_files_total").increment(spool.len() as u64);
    for key in store::list(store, &format!("j/{session}"))
        .await
        .map_err(|e| e.to_string())?
    {
        let Some((kind, hex)) = key.rsplit_once('/').and_then(|(head, hex)| {
            Some((head.rsplit('/').next()?, u64::from_str_radix(hex, 16).ok()?))
        }) else {
            continue;
        };
        let covered = match kind {
            "b" => hex <= through,
            "c" => hex < through,
            _ => false,
        };
        if covered {
            let _ = store::delete(store, &key).await;
        }
    }
    Ok(())
}

/// After a new snapshot of `object` (epoch `epoch`, TXIDs 1..=`max`): deletes its L1 files
/// that a restore no longer reads (earlier epochs, and earlier files of this one) once they
/// are older than `retention`. Failures only leave files behind.
async fn prune(store: &Store, object: &ObjectKey, epoch: u64, max: u64, retention: Duration) {
    let prefix = format!("o/{}/{}/e", object.namespace, object.id);
    let Ok(keys) = store::list_with_age(store, &prefix).await else {
        return;
    };
    let mut deleted = 0u64;
    for (key, age) in keys {
        if age < retention {
            continue;
        }
        let Some((_, file_epoch, file_min, file_max)) = parse_l1_key(&key) else {
            continue;
        };
        let superseded = file_epoch < epoch
            || (file_epoch == epoch && (file_max < max || (file_max == max && file_min != 1)));
        if superseded && store::delete(store, &key).await.is_ok() {
            deleted += 1;
        }
    }
    metrics::counter!("dorun_replica_pruned_files_total").increment(deleted);
}

/// Why this process must stop writing: a newer generation in the store (another process
/// started on the same store). A store that cannot be listed right now is not a reason.
async fn newer_generation(store: &Store, mine: u64) -> Option<String> {
    let keys = store::list(store, "g").await.ok()?;
    let newest = keys
        .iter()
        .filter_map(|key| key.strip_prefix("g/"))
        .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
        .max()?;
    (newest > mine).then(|| {
        format!(
            "replication stopped: another process started on the same store (generation \
             {newest}; this one is {mine}); one dorun per --replicate-to prefix"
        )
    })
}

fn encode_segment(forming: &Forming, now_ms: u64) -> Result<Vec<u8>, ltx::LtxError> {
    let mut merged = wal::merge(&forming.transactions)
        .ok_or_else(|| ltx::LtxError::Invalid("no commits".into()))?;
    let mut header = ltx::Header {
        flags: ltx::NO_CHECKSUM,
        page_size: forming.page_size,
        commit: merged.db_pages,
        min_txid: forming.first_txid,
        max_txid: forming.last_txid,
        timestamp: now_ms,
        ..ltx::Header::default()
    };
    let mut checksum = 0;
    if forming.snapshot {
        merged.pages.remove(&ltx::lock_pgno(forming.page_size));
        header.flags = 0;
        header.min_txid = 1;
        checksum = ltx::pages_checksum(&merged.pages);
    }
    ltx::encode(&header, &merged.pages, checksum)
}

/// The whole database after the commits in its WAL up to `wal_end`: the main file's pages
/// with the WAL's committed frames over them. `cursor` ends after the last commit.
fn snapshot(
    database: &Path,
    wal: &Path,
    wal_end: u64,
    cursor: &mut Cursor,
) -> Result<(u32, Committed), String> {
    // No WAL at all (a binding file closed cleanly by another process, e.g. `dorun d1
    // migrations apply`): everything is in the main file.
    let captured = if wal_end == 0 && !wal.exists() {
        wal::Captured::default()
    } else {
        cursor
            .capture_file(wal, wal_end)
            .map_err(|e| e.to_string())?
    };
    let image = std::fs::read(database).map_err(|e| format!("{}: {e}", database.display()))?;
    let (page_size, db_pages) = match captured.transactions.last() {
        Some(last) => (captured.page_size, last.db_pages),
        // Everything is in the main file (a binding file shipped whole at start): its
        // header says the page size (bytes 16-17, 1 for 65536) and the page count (28-31).
        None if image.len() >= 100 => {
            let size = u32::from(u16::from_be_bytes([image[16], image[17]]));
            let size = if size == 1 { 65536 } else { size };
            let pages = u32::from_be_bytes([image[28], image[29], image[30], image[31]]);
            (size, pages)
        }
        None => return Err("its WAL holds no commit and its file no header".into()),
    };
    let mut pages: BTreeMap<u32, Vec<u8>> = image
        .chunks_exact(page_size as usize)
        .enumerate()
        .map(|(i, page)| (i as u32 + 1, page.to_vec()))
        .collect();
    for transaction in &captured.transactions {
        for (pgno, page) in &transaction.pages {
            pages.insert(*pgno, page.clone());
        }
    }
    pages.retain(|pgno, _| *pgno <= db_pages);
    let lock = ltx::lock_pgno(page_size);
    let missing = (1..=db_pages).find(|p| *p != lock && !pages.contains_key(p));
    if let Some(pgno) = missing {
        return Err(format!("page {pgno} is neither in the file nor in its WAL"));
    }
    Ok((page_size, Committed { pages, db_pages }))
}

/// Creates the batch's key, retrying failures with backoff (same bytes). A key that exists
/// with the same bytes is an earlier attempt that succeeded; with other bytes, a fence.
async fn upload(store: &Store, key: &str, bytes: Vec<u8>) -> Result<(), String> {
    // Tests make the store slow, so that what waits for it and what does not differ.
    if let Some(ms) = std::env::var("DORUN_TEST_REPLICA_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let mut delay = Duration::from_millis(100);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        match store::create(store, key, bytes.clone()).await {
            Ok(true) => return Ok(()),
            Ok(false) => {
                return match store::get(store, key).await {
                    Ok(existing) if existing == bytes => Ok(()),
                    Ok(_) => Err(format!(
                        "replication stopped: {key} was written by someone else (this \
                         process's journal was fenced: another process took over the store)"
                    )),
                    Err(error) => Err(format!("replication stopped: reading {key}: {error}")),
                };
            }
            Err(error) => {
                if attempts == 1 || attempts.is_multiple_of(20) {
                    tracing::warn!(
                        "replication: uploading {key} failed (attempt {attempts}, retrying): \
                         {error}"
                    );
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn stop(shared: &Shared, why: String, dones: Vec<Done>) {
    tracing::error!("{why}");
    metrics::gauge!("dorun_replica_stopped").set(1.0);
    {
        let mut state = shared.lock();
        state.stopped = Some(why.clone());
        let incoming = std::mem::take(&mut state.incoming);
        state.settled = state.announced;
        drop(state);
        for announcement in incoming {
            if let Some(done) = announcement.done {
                done(Err(why.clone()));
            }
        }
    }
    for done in dones {
        done(Err(why.clone()));
    }
    shared.changed.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::restore::{self, Filter};
    use rusqlite::Connection;
    use std::sync::mpsc;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("dorun-replicator-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A directory store under `dir/store`.
    fn file_store(dir: &Path) -> Store {
        store::open(&format!("file://{}", dir.join("store").display())).unwrap()
    }

    struct Object {
        key: ObjectKey,
        path: PathBuf,
        conn: Connection,
        txid: u64,
    }

    impl Object {
        fn open(data_dir: &Path, n: u32) -> Self {
            let key = ObjectKey {
                namespace: "app-Counter".into(),
                id: format!("{n:064x}"),
            };
            let path = restore::object_path(data_dir, &key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL;
                 PRAGMA wal_autocheckpoint=0; PRAGMA synchronous=NORMAL;",
            )
            .unwrap();
            Self {
                key,
                path,
                conn,
                txid: 0,
            }
        }

        /// One committed transaction, announced the way the isolate thread will.
        fn write(&mut self, sql: &str, done: Option<Done>) -> Announcement {
            self.conn.execute_batch(sql).unwrap();
            self.txid += 1;
            let wal = self.path.with_extension("sqlite-wal");
            let wal_end = std::fs::metadata(&wal).unwrap().len();
            Announcement {
                object: self.key.clone(),
                database: self.path.clone(),
                wal_round: 0,
                first_txid: self.txid,
                last_txid: self.txid,
                wal_end,
                done,
                whole: false,
            }
        }

        fn image(&self) -> Vec<u8> {
            self.conn
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
            std::fs::read(&self.path).unwrap()
        }
    }

    /// The options of a replicator that took the store's next generation (node "test").
    fn new_generation(runtime: &tokio::runtime::Runtime, store: &Store) -> Options {
        let generation = runtime
            .block_on(store::next_generation(store, "test"))
            .unwrap();
        Options::new(store::session_name("test", generation), generation)
    }

    fn settle_channel() -> (Done, mpsc::Receiver<Result<(), String>>) {
        let (sender, receiver) = mpsc::channel();
        (
            Box::new(move |result| {
                let _ = sender.send(result);
            }),
            receiver,
        )
    }

    #[test]
    fn many_objects_commits_reach_the_store_in_few_batches_and_restore_byte_for_byte() {
        let dir = temp_dir("restore");
        let store = file_store(&dir);
        let runtime = runtime();
        runtime
            .block_on(store::check_conditional_writes(&store))
            .unwrap();
        let generation = runtime
            .block_on(store::next_generation(&store, "test"))
            .unwrap();
        assert_eq!(generation, 1);
        let replicator = Replicator::start(
            store.clone(),
            Options::new(store::session_name("test", generation), generation),
        )
        .unwrap();
        let data = dir.join("data");
        let mut objects: Vec<Object> = (0..20).map(|n| Object::open(&data, n)).collect();
        let mut receivers = Vec::new();
        for round in 0..10 {
            let mut announcements = Vec::new();
            for object in &mut objects {
                let (done, receiver) = settle_channel();
                receivers.push(receiver);
                let sql = if round == 0 {
                    "CREATE TABLE kv(k TEXT PRIMARY KEY, v BLOB)".to_string()
                } else {
                    format!(
                        "INSERT OR REPLACE INTO kv VALUES ('k{}', zeroblob({}))",
                        round % 4,
                        100 * round
                    )
                };
                announcements.push(object.write(&sql, Some(done)));
            }
            replicator.announce_all(announcements);
        }
        for receiver in receivers {
            receiver
                .recv_timeout(Duration::from_secs(20))
                .expect("settled")
                .expect("uploaded");
        }
        let progress = replicator.progress();
        assert_eq!((progress.announced, progress.settled), (200, 200));
        assert!(progress.batches < 200, "one batch per commit: {progress:?}");
        for object in &objects {
            let end = std::fs::metadata(object.path.with_extension("sqlite-wal"))
                .unwrap()
                .len();
            let wal = object.path.with_extension("sqlite-wal");
            let salts = wal::header_salts(&wal).unwrap();
            assert!(replicator.uploaded_through(&wal, salts, end));
            assert!(!replicator.uploaded_through(&wal, (salts.0 ^ 1, salts.1), end));
        }
        let restored_dir = dir.join("restored");
        let restored = runtime
            .block_on(restore::restore(&store, &restored_dir, &Filter::default()))
            .unwrap();
        assert_eq!(restored.objects.len(), 20);
        for object in &objects {
            assert_eq!(restored.objects[&object.key], 10);
            let restored_image =
                std::fs::read(restore::object_path(&restored_dir, &object.key)).unwrap();
            assert!(
                restored_image == object.image(),
                "object {} differs",
                object.key.id
            );
        }
        // The restored file is a database SQLite opens, with the data.
        let conn = Connection::open(restore::object_path(&restored_dir, &objects[3].key)).unwrap();
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM kv", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 4);
        // One object alone.
        let only = runtime
            .block_on(restore::restore(
                &store,
                &dir.join("one"),
                &Filter {
                    namespace: Some("app-Counter".into()),
                    object: Some(objects[5].key.id.clone()),
                    until_ms: None,
                },
            ))
            .unwrap();
        assert_eq!(only.objects.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_fenced_journal_stops_replication_and_fails_waiting_commits() {
        let dir = temp_dir("fence");
        let store = file_store(&dir);
        let runtime = runtime();
        runtime
            .block_on(store::create(
                &store,
                "g/0000000000000001",
                br#"{"session": "s"}"#.to_vec(),
            ))
            .unwrap();
        // Another process fenced this session's journal at seq 1 before it wrote anything.
        runtime
            .block_on(store::create(
                &store,
                &journal::batch_key("s", 1),
                journal::FENCE.to_vec(),
            ))
            .unwrap();
        let replicator = Replicator::start(store.clone(), Options::new("s".into(), 1)).unwrap();
        let mut object = Object::open(&dir.join("data"), 1);
        let (done, receiver) = settle_channel();
        replicator.announce_all(vec![object.write("CREATE TABLE t(a)", Some(done))]);
        let result = receiver.recv_timeout(Duration::from_secs(20)).unwrap();
        assert!(result.unwrap_err().contains("fenced"));
        assert!(replicator.stopped().is_some());
        // Later commits fail at once.
        let (done, receiver) = settle_channel();
        replicator.announce_all(vec![object.write("INSERT INTO t VALUES (1)", Some(done))]);
        assert!(receiver
            .recv_timeout(Duration::from_secs(5))
            .unwrap()
            .is_err());
        // A restore stops at the fence: nothing of this session is in it.
        let restored = runtime
            .block_on(restore::restore(
                &store,
                &dir.join("restored"),
                &Filter::default(),
            ))
            .unwrap();
        assert!(restored.objects.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn conditional_creates_hold_on_the_stores_used() {
        // The start-up check creates `format` twice and wants the second refused; a store
        // that honours If-None-Match passes it on every start.
        let store = store::open("memory:").unwrap();
        let runtime = runtime();
        runtime
            .block_on(store::check_conditional_writes(&store))
            .unwrap();
        runtime
            .block_on(store::check_conditional_writes(&store))
            .unwrap();
        assert!(!runtime
            .block_on(store::create(&store, "format", b"x".to_vec()))
            .unwrap());
    }

    #[test]
    fn a_restore_stops_at_a_hole_in_the_journal() {
        let dir = temp_dir("hole");
        let store = file_store(&dir);
        let runtime = runtime();
        let generation = runtime
            .block_on(store::next_generation(&store, "test"))
            .unwrap();
        let session = store::session_name("test", generation);
        let replicator =
            Replicator::start(store.clone(), Options::new(session.clone(), generation)).unwrap();
        let mut object = Object::open(&dir.join("data"), 1);
        // One batch per commit: each is settled before the next is announced.
        for sql in [
            "CREATE TABLE t(a)",
            "INSERT INTO t VALUES (1)",
            "INSERT INTO t VALUES (2)",
        ] {
            replicator.announce_all(vec![object.write(sql, None)]);
            assert!(replicator.wait_settled(Duration::from_secs(20)));
        }
        assert_eq!(replicator.progress().batches, 3);
        let restored = runtime
            .block_on(restore::restore(
                &store,
                &dir.join("all"),
                &Filter::default(),
            ))
            .unwrap();
        assert_eq!(restored.objects[&object.key], 3);
        // Batch 2 missing (it never landed): batch 3 is not applied either.
        std::fs::remove_file(dir.join("store").join(journal::batch_key(&session, 2))).unwrap();
        let restored = runtime
            .block_on(restore::restore(
                &store,
                &dir.join("hole"),
                &Filter::default(),
            ))
            .unwrap();
        assert_eq!(restored.objects[&object.key], 1);
        assert_eq!(restored.batches, 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_written_before_replication_began_is_shipped_whole_first() {
        let dir = temp_dir("existing");
        let store = file_store(&dir);
        let runtime = runtime();
        let mut object = Object::open(&dir.join("data"), 9);
        object
            .conn
            .execute_batch(
                "CREATE TABLE t(a); INSERT INTO t SELECT value FROM generate_series(1, 2000);
                 PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .unwrap_or_else(|_| {
                // No generate_series in this SQLite: a recursive CTE instead.
                object
                    .conn
                    .execute_batch(
                        "CREATE TABLE IF NOT EXISTS t(a);
                         WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 2000)
                         INSERT INTO t SELECT x FROM n; PRAGMA wal_checkpoint(TRUNCATE);",
                    )
                    .unwrap()
            });
        let replicator = Replicator::start(store.clone(), Options::new("s".into(), 1)).unwrap();
        runtime
            .block_on(store::create(
                &store,
                "g/0000000000000001",
                br#"{"session": "s"}"#.to_vec(),
            ))
            .unwrap();
        replicator.announce_all(vec![object.write("INSERT INTO t VALUES (0)", None)]);
        replicator.announce_all(vec![object.write("DELETE FROM t WHERE a < 10", None)]);
        assert!(replicator.wait_settled(Duration::from_secs(20)));
        let restored = runtime
            .block_on(restore::restore(
                &store,
                &dir.join("restored"),
                &Filter::default(),
            ))
            .unwrap();
        assert_eq!(restored.objects[&object.key], 2);
        let image =
            std::fs::read(restore::object_path(&dir.join("restored"), &object.key)).unwrap();
        assert!(image == object.image());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn settled_segments_move_into_l1_files_and_the_journal_behind_them_goes() {
        let dir = temp_dir("l1");
        let store = file_store(&dir);
        let runtime = runtime();
        let mut options = new_generation(&runtime, &store);
        let session = options.session.clone();
        options.l1_every = Duration::from_millis(100);
        let replicator = Replicator::start(store.clone(), options).unwrap();
        let data = dir.join("data");
        let mut objects: Vec<Object> = (0..3).map(|n| Object::open(&data, n)).collect();
        for round in 0..12 {
            let announcements = objects
                .iter_mut()
                .map(|object| {
                    let sql = if round == 0 {
                        "CREATE TABLE kv(k TEXT PRIMARY KEY, v BLOB)".to_string()
                    } else {
                        format!(
                            "INSERT OR REPLACE INTO kv VALUES ('k{round}', zeroblob({}))",
                            50 * round
                        )
                    };
                    object.write(&sql, None)
                })
                .collect();
            replicator.announce_all(announcements);
            assert!(replicator.wait_settled(Duration::from_secs(20)));
            std::thread::sleep(Duration::from_millis(40));
        }
        // Wait for a compaction that covers every batch.
        let journal = dir.join("store/j").join(&session);
        let deadline = Instant::now() + Duration::from_secs(10);
        let batches = || {
            std::fs::read_dir(journal.join("b"))
                .map(|d| d.count())
                .unwrap_or(0)
        };
        while batches() > 0 {
            assert!(Instant::now() < deadline, "{} batches left", batches());
            std::thread::sleep(Duration::from_millis(50));
        }
        let cursors: Vec<_> = std::fs::read_dir(journal.join("c"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(cursors.len(), 1, "older cursors are deleted");
        let l1 = runtime.block_on(store::list(&store, "o")).unwrap();
        assert!(l1.len() >= 3, "{l1:?}");
        assert!(l1.iter().all(|key| key.contains("/l1/")));
        // One more commit stays in the journal (past the cursor): a restore reads both.
        replicator.announce_all(vec![objects[1].write("DELETE FROM kv WHERE k = 'k3'", None)]);
        assert!(replicator.wait_settled(Duration::from_secs(20)));
        let restored_dir = dir.join("restored");
        let restored = runtime
            .block_on(restore::restore(&store, &restored_dir, &Filter::default()))
            .unwrap();
        assert_eq!(restored.objects[&objects[1].key], 13);
        for object in &objects {
            let image = std::fs::read(restore::object_path(&restored_dir, &object.key)).unwrap();
            assert!(image == object.image(), "object {} differs", object.key.id);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A table, then 60 rewrites of its 7 rows, pausing now and then so L1 files are cut.
    fn write_sixty_one_commits(replicator: &Replicator, object: &mut Object) {
        replicator.announce_all(vec![
            object.write("CREATE TABLE t(k INTEGER PRIMARY KEY, v)", None)
        ]);
        for n in 0..60 {
            let sql = format!("INSERT OR REPLACE INTO t VALUES ({}, zeroblob(300))", n % 7);
            replicator.announce_all(vec![object.write(&sql, None)]);
            assert!(replicator.wait_settled(Duration::from_secs(20)));
            if n % 10 == 0 {
                std::thread::sleep(Duration::from_millis(80));
            }
        }
    }

    #[test]
    fn objects_are_shipped_whole_again_and_a_restore_starts_at_the_newest_snapshot() {
        let dir = temp_dir("resnapshot");
        let store = file_store(&dir);
        let runtime = runtime();
        let mut options = new_generation(&runtime, &store);
        options.l1_every = Duration::from_millis(50);
        options.resnapshot_min_bytes = 1;
        let replicator = Replicator::start(store.clone(), options).unwrap();
        let mut object = Object::open(&dir.join("data"), 4);
        write_sixty_one_commits(&replicator, &mut object);
        std::thread::sleep(Duration::from_millis(200));
        let keys = runtime.block_on(store::list(&store, "o")).unwrap();
        let snapshots = keys
            .iter()
            .filter(|key| key.contains("/l1/0000000000000001-"))
            .count();
        assert!(
            snapshots >= 3,
            "the object was shipped whole again: {keys:?}"
        );
        let restored_dir = dir.join("restored");
        let restored = runtime
            .block_on(restore::restore(&store, &restored_dir, &Filter::default()))
            .unwrap();
        assert_eq!(restored.objects[&object.key], 61);
        let l1_files = keys.iter().filter(|key| key.contains("/l1/")).count();
        assert!(
            restored.segments * 2 <= l1_files,
            "the restore starts at the newest snapshot: {} files applied of {l1_files}",
            restored.segments
        );
        let image = std::fs::read(restore::object_path(&restored_dir, &object.key)).unwrap();
        assert!(image == object.image(), "the restored object differs");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn files_a_newer_snapshot_supersedes_go_after_the_retention() {
        let dir = temp_dir("retention");
        let store = file_store(&dir);
        let runtime = runtime();
        let mut options = new_generation(&runtime, &store);
        options.l1_every = Duration::from_millis(50);
        options.resnapshot_min_bytes = 1;
        options.retention = Some(Duration::ZERO);
        let replicator = Replicator::start(store.clone(), options).unwrap();
        let mut object = Object::open(&dir.join("data"), 5);
        write_sixty_one_commits(&replicator, &mut object);
        std::thread::sleep(Duration::from_millis(300));
        let keys = runtime.block_on(store::list(&store, "o")).unwrap();
        let snapshots = keys
            .iter()
            .filter(|key| key.contains("/l1/0000000000000001-"))
            .count();
        assert_eq!(snapshots, 1, "only the newest snapshot is kept: {keys:?}");
        let restored_dir = dir.join("restored");
        let restored = runtime
            .block_on(restore::restore(&store, &restored_dir, &Filter::default()))
            .unwrap();
        assert_eq!(restored.objects[&object.key], 61);
        let image = std::fs::read(restore::object_path(&restored_dir, &object.key)).unwrap();
        assert!(image == object.image(), "the restored object differs");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn merged_segments_start_over_at_a_snapshot_and_refuse_gaps() {
        let page = |b: u8| vec![b; 512];
        let segment = |min: u64, max: u64, pages: &[(u32, u8)], commit: u32| {
            let snapshot = min == 1;
            let header = ltx::Header {
                flags: if snapshot { 0 } else { ltx::NO_CHECKSUM },
                page_size: 512,
                commit,
                min_txid: min,
                max_txid: max,
                ..ltx::Header::default()
            };
            let pages: BTreeMap<u32, Vec<u8>> = pages.iter().map(|(p, b)| (*p, page(*b))).collect();
            let sum = if snapshot {
                ltx::pages_checksum(&pages)
            } else {
                0
            };
            (min, max, ltx::encode(&header, &pages, sum).unwrap())
        };
        let (min, max, bytes) = merge_segments(&[
            segment(1, 1, &[(1, 1), (2, 1)], 2),
            segment(2, 3, &[(2, 2), (3, 2)], 3),
        ])
        .unwrap();
        assert_eq!((min, max), (1, 3));
        let merged = ltx::decode(&bytes).unwrap();
        assert!(merged.header.is_snapshot());
        assert_eq!(merged.pages.len(), 3);
        assert_eq!(merged.pages[&2], page(2));
        assert!(
            merge_segments(&[segment(2, 3, &[(1, 1)], 1), segment(5, 5, &[(1, 2)], 1)]).is_err()
        );
        // A snapshot later in the window replaces what came before it.
        let (min, max, _) =
            merge_segments(&[segment(2, 3, &[(1, 1)], 1), segment(1, 9, &[(1, 7)], 1)]).unwrap();
        assert_eq!((min, max), (1, 9));
    }
}
