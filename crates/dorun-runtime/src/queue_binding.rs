//! Queues: `env.<binding>` of a `queues.producers` entry is a `Queue` (`js/18_queues.js`)
//! whose `send` / `sendBatch` land here. Each queue has one SQLite file,
//! `<data-dir>/queues/<queue>.sqlite` (`dorun_storage::QueueDatabase`), opened once per
//! process and shared by every worker that sends to or consumes from it. A send is answered
//! once its messages are committed (under `--durability full`, on disk); then the queue's
//! consumer (the `dorun` crate's `queues.rs`) is woken.
//!
//! The API's rules (content types, sizes, delays, Cloudflare's messages) are checked in JS
//! before the op is called; the op only stores.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use deno_core::{op2, JsBuffer, OpState};

use crate::binding_files;
use dorun_storage::{Durability, NewMessage, QueueDatabase, StorageError};

/// The directory of queue files inside the data directory.
pub const QUEUES_DIR: &str = "queues";

/// One `queues.producers` entry: the name in `env` and the queue it sends to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueProducer {
    pub binding: String,
    pub queue: String,
    /// `delivery_delay`: seconds a message waits before delivery unless `send` says.
    pub delivery_delay: Option<u32>,
}

/// The file of queue `name` under `data_dir`.
pub fn queue_file(data_dir: &Path, name: &str) -> PathBuf {
    data_dir
        .join(QUEUES_DIR)
        .join(format!("{}.sqlite", binding_files::file_name(name)))
}

/// The queue files under `data_dir`.
pub fn queue_files(data_dir: &Path) -> Vec<PathBuf> {
    binding_files::entries(&data_dir.join(QUEUES_DIR), binding_files::is_sqlite)
}

/// One queue's file as this process has it open: the database, its write group, and the
/// signal its consumer waits on.
pub struct QueueHandle {
    pub path: PathBuf,
    pub database: Mutex<QueueDatabase>,
    writes: dorun_storage::Group<QueueDatabase, ()>,
    /// Notified after every commit that adds messages.
    pub arrived: tokio::sync::Notify,
    /// (messages stored, bytes of their bodies), kept up to date by this process (counted
    /// from the file when it is opened).
    backlog: Mutex<(i64, i64)>,
    /// (messages, bytes) of them being delivered now.
    claimed: Mutex<(i64, i64)>,
}

/// What `send()` and `metrics()` report of a queue (`backlogCount`, `backlogBytes`,
/// `oldestMessageTimestamp`).
#[derive(Clone, Copy, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Backlog {
    pub backlog_count: i64,
    pub backlog_bytes: i64,
    pub oldest_message_timestamp: Option<i64>,
}

impl QueueHandle {
    /// Stores `messages` (all or none), committed with the other writes to this queue
    /// meanwhile, then wakes the consumer. Blocks: call it on a blocking thread.
    pub fn enqueue(&self, messages: Vec<NewMessage>) -> Result<(), StorageError> {
        let added = (
            messages.len() as i64,
            messages.iter().map(|m| m.body.len() as i64).sum::<i64>(),
        );
        self.writes
            .write(&self.database, move |db| db.enqueue(&messages))?;
        self.adjust(added.0, added.1);
        self.arrived.notify_one();
        Ok(())
    }

    fn adjust(&self, count: i64, bytes: i64) {
        let mut backlog = self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        backlog.0 = (backlog.0 + count).max(0);
        backlog.1 = (backlog.1 + bytes).max(0);
    }

    /// `messages` are being delivered: no longer counted as backlog until settled.
    pub fn claim(&self, messages: &[dorun_storage::QueuedMessage]) {
        let mut claimed = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        claimed.0 += messages.len() as i64;
        claimed.1 += messages.iter().map(|m| m.body.len() as i64).sum::<i64>();
    }

    /// (messages, bytes) the queue holds besides those being delivered, from memory (no
    /// wait for a commit in progress).
    pub fn backlog_counts(&self) -> (i64, i64) {
        let (stored, stored_bytes) = *self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        let (claimed, claimed_bytes) = *self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        (
            (stored - claimed).max(0),
            (stored_bytes - claimed_bytes).max(0),
        )
    }

    /// What the queue holds now, besides the messages being delivered.
    pub fn backlog(&self) -> Result<Backlog, StorageError> {
        let (stored, stored_bytes) = *self.backlog.lock().unwrap_or_else(|p| p.into_inner());
        let (claimed, claimed_bytes) = *self.claimed.lock().unwrap_or_else(|p| p.into_inner());
        let (count, bytes) = (
            (stored - claimed).max(0),
            (stored_bytes - claimed_bytes).max(0),
        );
        let oldest = if count > 0 {
            self.with(|db| db.first_timestamp())?
        } else {
            None
        };
        Ok(Backlog {
            backlog_count: count,
            backlog_bytes: bytes,
            oldest_message_timestamp: oldest,
        })
    }

    /// Applies how a batch of `claimed` (messages, bytes) ended; `freed` is what it removes
    /// from the queue.
    pub fn settle(
        &self,
        settlement: dorun_storage::Settlement,
        claimed: (i64, i64),
        freed: (i64, i64),
    ) -> Result<(), StorageError> {
        let result = self.write(move |db| db.settle(&settlement));
        {
            let mut held = self.claimed.lock().unwrap_or_else(|p| p.into_inner());
            held.0 = (held.0 - claimed.0).max(0);
            held.1 = (held.1 - claimed.1).max(0);
        }
        result?;
        self.adjust(-freed.0, -freed.1);
        Ok(())
    }

    /// Deletes every stored message; how many.
    pub fn purge(&self) -> Result<u64, StorageError> {
        let purged = self.with(|db| db.purge())?;
        *self.backlog.lock().unwrap_or_else(|p| p.into_inner()) = (0, 0);
        Ok(purged)
    }

    /// Runs `f` on the database as one write of the group. Blocks.
    pub fn write(
        &self,
        f: impl FnOnce(&QueueDatabase) -> Result<(), StorageError> + Send + 'static,
    ) -> Result<(), StorageError> {
        self.writes.write(&self.database, move |db| f(db))
    }

    /// Runs `f` on the database (a read, or a write of its own). Blocks.
    pub fn with<T>(&self, f: impl FnOnce(&QueueDatabase) -> T) -> T {
        f(&self.database.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

static OPEN: binding_files::Handles<QueueHandle> = binding_files::Handles::new();

/// Opens (once per process) queue `name` under `data_dir`.
pub fn open(
    data_dir: &Path,
    name: &str,
    durability: Durability,
) -> Result<Arc<QueueHandle>, StorageError> {
    OPEN.get_or_open(&queue_file(data_dir, name), |path| {
        let database = QueueDatabase::open(path, durability)?;
        let backlog = database.backlog()?;
        Ok(QueueHandle {
            database: Mutex::new(database),
            path: path.to_path_buf(),
            writes: Default::default(),
            arrived: tokio::sync::Notify::new(),
            backlog: Mutex::new(backlog),
            claimed: Mutex::new((0, 0)),
        })
    })
}

/// What the queue ops of an isolate need: where the files are and how durable a write is.
pub struct QueueStore {
    pub data_dir: PathBuf,
    pub durability: Durability,
}

#[derive(Debug, thiserror::Error, deno_error::JsError)]
pub enum QueueError {
    #[class(generic)]
    #[error("Queue {operation} failed: {source}")]
    Storage {
        operation: &'static str,
        source: StorageError,
    },
    #[class(generic)]
    #[error("Queue {0} failed: internal error")]
    Task(&'static str),
}

/// One message as `send` / `sendBatch` hand it over (checked and serialised by JS).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutgoingMessage {
    id: String,
    body: JsBuffer,
    content_type: String,
    /// Seconds before it may be delivered.
    delay_seconds: u32,
}

/// Stores `messages` on queue `queue`; resolves once they are committed, to what the
/// queue held before them (as Miniflare's broker answers).
#[op2]
#[serde]
pub async fn op_dorun_queue_send(
    state: Rc<RefCell<OpState>>,
    #[string] queue: String,
    #[serde] messages: Vec<OutgoingMessage>,
    #[string] operation: String,
) -> Result<Backlog, QueueError> {
    let operation = if operation == "sendBatch" {
        "sendBatch"
    } else {
        "send"
    };
    let (data_dir, durability) = {
        let state = state.borrow();
        let store = state.borrow::<QueueStore>();
        (store.data_dir.clone(), store.durability)
    };
    let now = crate::clock::now_ms();
    let bytes: usize = messages.iter().map(|m| m.body.len()).sum();
    let messages: Vec<NewMessage> = messages
        .into_iter()
        .map(|m| NewMessage {
            id: m.id,
            body: m.body.to_vec(),
            content_type: m.content_type,
            timestamp: now,
            visible_at: now + i64::from(m.delay_seconds) * 1000,
        })
        .collect();
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        let handle = open(&data_dir, &queue, durability)?;
        // From memory: a send does not wait on the file for its answer's metrics (the
        // oldest message's time, which needs the file, is left out, as it may be).
        let (count, bytes) = handle.backlog_counts();
        handle.enqueue(messages)?;
        Ok(Backlog {
            backlog_count: count,
            backlog_bytes: bytes,
            oldest_message_timestamp: None,
        })
    })
    .await
    .map_err(|_| QueueError::Task(operation))?
    .map_err(|source| {
        tracing::error!("Queue {operation}: {source}");
        QueueError::Storage { operation, source }
    });
    binding_files::record("queue", "send", started, result.is_ok());
    if result.is_ok() {
        binding_files::record_bytes("queue", "in", bytes);
    }
    result
}

/// `env.<binding>.metrics()`: what queue `queue` holds.
#[op2]
#[serde]
pub async fn op_dorun_queue_metrics(
    state: Rc<RefCell<OpState>>,
    #[string] queue: String,
) -> Result<Backlog, QueueError> {
    let (data_dir, durability) = {
        let state = state.borrow();
        let store = state.borrow::<QueueStore>();
        (store.data_dir.clone(), store.durability)
    };
    tokio::task::spawn_blocking(move || open(&data_dir, &queue, durability)?.backlog())
        .await
        .map_err(|_| QueueError::Task("metrics"))?
        .map_err(|source| QueueError::Storage {
            operation: "metrics",
            source,
        })
}
