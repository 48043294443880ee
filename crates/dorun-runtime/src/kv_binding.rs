//! Workers KV bindings (`kv_namespaces`): `env.<binding>` is a `KVNamespace` (`js/14_kv.js`)
//! whose ops land here. Each namespace id has one SQLite file, `<data-dir>/kv/<id>.sqlite`
//! (`dorun_storage::KvDatabase`), opened once per process and shared by every isolate
//! thread and worker that binds the id, as namespaces are shared on Cloudflare. Work runs on
//! tokio's blocking threads, never on the isolate thread.
//!
//! The API's rules (key and value limits, expiration checks, Cloudflare's messages) are
//! checked in JS before an op is called; the ops only store, find and list.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use deno_core::{op2, JsBuffer, OpState, ToJsBuffer};

use crate::binding_files;
use dorun_storage::{Durability, KvDatabase, KvEntry, StorageError};

/// The directory of KV namespace files inside the data directory.
pub const KV_DIR: &str = "kv";

/// One `kv_namespaces` entry: the name in `env` and the namespace it reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvBinding {
    pub binding: String,
    /// The namespace's id (`id`, else the binding's name, as `wrangler dev` keys it).
    pub id: String,
}

/// The file of namespace `id` under `data_dir` (its id as a file name).
pub fn namespace_file(data_dir: &Path, id: &str) -> PathBuf {
    data_dir
        .join(KV_DIR)
        .join(format!("{}.sqlite", binding_files::file_name(id)))
}

/// What the KV ops of an isolate need: where the files are and how durable a write is.
pub struct KvStore {
    pub data_dir: PathBuf,
    pub durability: Durability,
}

#[derive(Debug, thiserror::Error, deno_error::JsError)]
pub enum KvError {
    #[class(generic)]
    #[error("KV {operation} failed: {source}")]
    Storage {
        operation: &'static str,
        source: StorageError,
    },
    #[class(generic)]
    #[error("KV {0} failed: internal error")]
    Task(&'static str),
}

/// Namespace files open in this process.
static OPEN: binding_files::Registry<KvDatabase> = binding_files::Registry::new();

/// Opens (once per process) the namespace file at `path`.
pub fn database(
    path: &Path,
    durability: Durability,
) -> Result<Arc<Mutex<KvDatabase>>, StorageError> {
    OPEN.get_or_open(path, |path| KvDatabase::open(path, durability))
}

/// The namespace files under `data_dir`.
pub fn namespace_files(data_dir: &Path) -> Vec<PathBuf> {
    binding_files::entries(&data_dir.join(KV_DIR), binding_files::is_sqlite)
}

/// Deletes every key of every namespace under `data_dir` (the admin's reset); how many.
pub fn reset_all(data_dir: &Path, durability: Durability) -> Result<u64, StorageError> {
    let mut deleted = 0;
    for file in namespace_files(data_dir) {
        let database = database(&file, durability)?;
        let database = database.lock().unwrap_or_else(|p| p.into_inner());
        deleted += database.clear()?;
    }
    Ok(deleted)
}

/// Runs `f` on namespace `id`'s database, on a blocking thread.
async fn with<T: Send + 'static>(
    state: &Rc<RefCell<OpState>>,
    id: &str,
    operation: &'static str,
    f: impl FnOnce(&KvDatabase) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, KvError> {
    on_file(state, id, operation, move |_, database| {
        f(&database
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
    })
    .await
}

/// Writes sharing commits, by namespace file.
static WRITES: binding_files::Groups<KvDatabase, ()> = binding_files::Groups::new();

/// Runs the write `f` on namespace `id`'s database, committed together with the writes
/// other requests make to it meanwhile (one fsync for all).
async fn write(
    state: &Rc<RefCell<OpState>>,
    id: &str,
    operation: &'static str,
    f: impl FnOnce(&KvDatabase) -> Result<(), StorageError> + Send + 'static,
) -> Result<(), KvError> {
    on_file(state, id, operation, move |path, database| {
        WRITES.get(path).write(database, move |db| f(db))
    })
    .await
}

/// Runs `f` with namespace `id`'s file and database, on a blocking thread.
async fn on_file<T: Send + 'static>(
    state: &Rc<RefCell<OpState>>,
    id: &str,
    operation: &'static str,
    f: impl FnOnce(&Path, &Mutex<KvDatabase>) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, KvError> {
    let (path, durability) = {
        let state = state.borrow();
        let store = state.borrow::<KvStore>();
        (namespace_file(&store.data_dir, id), store.durability)
    };
    let file = path.clone();
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        let database = database(&path, durability)?;
        f(&path, &database)
    })
    .await
    .map_err(|_| KvError::Task(operation))?
    .map_err(|source| {
        tracing::error!(file = %file.display(), "KV {operation}: {source}");
        KvError::Storage { operation, source }
    });
    let op = match operation {
        "GET" => "get",
        "PUT" => "put",
        "DELETE" => "delete",
        _ => "list",
    };
    binding_files::record("kv", op, started, result.is_ok());
    result
}

/// Seconds since the epoch.
fn now_seconds() -> i64 {
    crate::clock::now_ms().div_euclid(1000)
}

/// What `get` found of one key.
#[derive(serde::Serialize)]
pub struct KvFound {
    value: ToJsBuffer,
    metadata: Option<String>,
}

/// The entries of `keys` (null for a missing or expired one), in order.
#[op2]
#[serde]
pub async fn op_dorun_kvns_get(
    state: Rc<RefCell<OpState>>,
    #[string] id: String,
    #[serde] keys: Vec<String>,
) -> Result<Vec<Option<KvFound>>, KvError> {
    let found = with(&state, &id, "GET", move |db| {
        let now = now_seconds();
        keys.iter()
            .map(|key| db.get(key, now))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    let bytes: usize = found.iter().flatten().map(|e| e.value.len()).sum();
    binding_files::record_bytes("kv", "out", bytes);
    Ok(found
        .into_iter()
        .map(|entry| {
            entry.map(|entry| KvFound {
                value: entry.value.into(),
                metadata: entry.metadata,
            })
        })
        .collect())
}

/// What `put` stores besides the value.
#[derive(serde::Deserialize)]
pub struct KvPutOptions {
    /// Seconds since the epoch.
    expiration: Option<f64>,
    /// JSON text.
    metadata: Option<String>,
}

/// Stores `key`.
#[op2]
pub async fn op_dorun_kvns_put(
    state: Rc<RefCell<OpState>>,
    #[string] id: String,
    #[string] key: String,
    #[buffer] value: JsBuffer,
    #[serde] options: KvPutOptions,
) -> Result<(), KvError> {
    binding_files::record_bytes("kv", "in", value.len());
    let entry = KvEntry {
        value: value.to_vec(),
        metadata: options.metadata,
        expiration: options.expiration.map(|at| at.floor() as i64),
    };
    write(&state, &id, "PUT", move |db| db.put(&key, &entry)).await
}

#[op2]
pub async fn op_dorun_kvns_delete(
    state: Rc<RefCell<OpState>>,
    #[string] id: String,
    #[string] key: String,
) -> Result<(), KvError> {
    write(&state, &id, "DELETE", move |db| db.delete(&key)).await
}

/// One page of `list`: the keys and the last key's name when more follow (the JS side
/// turns it into an opaque cursor).
#[derive(serde::Serialize)]
pub struct KvPage {
    keys: Vec<KvListed>,
    more: bool,
}

#[derive(serde::Serialize)]
pub struct KvListed {
    name: String,
    expiration: Option<i64>,
    metadata: Option<String>,
}

/// Which page `list` asks for: keys with `prefix` after the key `after`, up to `limit`.
#[derive(serde::Deserialize)]
pub struct KvListOptions {
    prefix: String,
    after: Option<String>,
    limit: u32,
}

#[op2]
#[serde]
pub async fn op_dorun_kvns_list(
    state: Rc<RefCell<OpState>>,
    #[string] id: String,
    #[serde] options: KvListOptions,
) -> Result<KvPage, KvError> {
    let (keys, more) = with(&state, &id, "LIST", move |db| {
        db.list(
            &options.prefix,
            options.after.as_deref(),
            options.limit as usize,
            now_seconds(),
        )
    })
    .await?;
    Ok(KvPage {
        keys: keys
            .into_iter()
            .map(|key| KvListed {
                name: key.name,
                expiration: key.expiration,
                metadata: key.metadata,
            })
            .collect(),
        more,
    })
}
