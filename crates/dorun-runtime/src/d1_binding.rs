//! D1 bindings (`d1_databases`): `env.<binding>` is a `D1Database` (`js/15_d1.js`) whose
//! ops land here. Each database is one SQLite file, `<data-dir>/d1/<name>.sqlite`
//! (`dorun_storage::D1Database`), opened once per process and shared by every isolate
//! thread and worker that binds it. Queries run on tokio's blocking threads; each statement
//! stops at the Worker's CPU limit (as wall time on that thread).

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deno_core::{op2, OpState};

use crate::binding_files;
use dorun_storage::{
    d1_message as message, D1Database, D1Result, Durability, SqlValue, StorageError,
};

/// The directory of D1 database files inside the data directory.
pub const D1_DIR: &str = "d1";

/// One `d1_databases` entry: the name in `env` and the database it reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct D1Binding {
    pub binding: String,
    /// The database's file name (its `database_name`, else its id, else the binding).
    pub name: String,
}

/// The file of database `name` under `data_dir` (its name as a file name).
pub fn database_file(data_dir: &Path, name: &str) -> PathBuf {
    data_dir
        .join(D1_DIR)
        .join(format!("{}.sqlite", binding_files::file_name(name)))
}

/// What the D1 ops of an isolate need.
pub struct D1Store {
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// How long one statement may run.
    pub limit: Duration,
}

#[derive(Debug, thiserror::Error, deno_error::JsError)]
pub enum D1Error {
    /// SQLite's or the sandbox's message; the JS side wraps it as D1 does.
    #[class(generic)]
    #[error("{0}")]
    Sql(String),
    #[class(generic)]
    #[error("internal error")]
    Task,
}

/// Database files open in this process.
static OPEN: binding_files::Registry<D1Database> = binding_files::Registry::new();

/// Opens (once per process) the database at `path`.
pub fn database(
    path: &Path,
    durability: Durability,
) -> Result<Arc<Mutex<D1Database>>, StorageError> {
    OPEN.get_or_open(path, |path| D1Database::open(path, durability))
}

/// The database files under `data_dir`.
pub fn database_files(data_dir: &Path) -> Vec<PathBuf> {
    binding_files::entries(&data_dir.join(D1_DIR), binding_files::is_sqlite)
}

/// Deletes every row of every database under `data_dir` but the migrations' records (the
/// admin's reset: a test suite's schema stays); how many rows.
pub fn reset_all(data_dir: &Path, durability: Durability) -> Result<u64, StorageError> {
    let mut deleted = 0;
    for file in database_files(data_dir) {
        let database = database(&file, durability)?;
        let mut database = database.lock().unwrap_or_else(|p| p.into_inner());
        deleted += database.clear_rows(&["d1_migrations"])?;
    }
    Ok(deleted)
}

/// Runs `f` on database `name`, on a blocking thread.
async fn with<T: Send + 'static>(
    state: &Rc<RefCell<OpState>>,
    name: &str,
    op: &'static str,
    f: impl FnOnce(&mut D1Database, Duration) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, D1Error> {
    on_file(state, name, op, move |_, database, limit| {
        f(
            &mut database
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            limit,
        )
    })
    .await
}

/// Statements from many requests sharing commits, by database file.
static WRITES: binding_files::Groups<D1Database, Vec<D1Answer>> = binding_files::Groups::new();

/// Runs the batch `f` on database `name`, committed together with the batches other
/// requests run on it meanwhile (one fsync for all; each batch in its own savepoint).
async fn grouped(
    state: &Rc<RefCell<OpState>>,
    name: &str,
    op: &'static str,
    f: impl FnOnce(&mut D1Database, Duration) -> Result<Vec<D1Answer>, StorageError> + Send + 'static,
) -> Result<Vec<D1Answer>, D1Error> {
    on_file(state, name, op, move |path, database, limit| {
        WRITES.get(path).write(database, move |db| f(db, limit))
    })
    .await
}

/// Runs `f` with database `name`'s file and handle, on a blocking thread.
async fn on_file<T: Send + 'static>(
    state: &Rc<RefCell<OpState>>,
    name: &str,
    op: &'static str,
    f: impl FnOnce(&Path, &Mutex<D1Database>, Duration) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, D1Error> {
    let (path, durability, limit) = {
        let state = state.borrow();
        let store = state.borrow::<D1Store>();
        (
            database_file(&store.data_dir, name),
            store.durability,
            store.limit,
        )
    };
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        let database = database(&path, durability).map_err(|e| D1Error::Sql(message(&e)))?;
        f(&path, &database, limit).map_err(|e| D1Error::Sql(message(&e)))
    })
    .await
    .map_err(|_| D1Error::Task)?;
    binding_files::record("d1", op, started, result.is_ok());
    result
}

/// A value bound to a statement, as the JS side sends it.
#[derive(serde::Deserialize)]
#[serde(untagged)]
pub enum D1Param {
    Null(()),
    Number(f64),
    Text(String),
    /// Byte values (numbers are cut to a byte, as D1 stores them).
    Blob(Vec<f64>),
}

impl D1Param {
    fn value(self) -> SqlValue {
        match self {
            D1Param::Null(()) => SqlValue::Null,
            // Every number is bound as a REAL, as D1 binds them; NaN and the infinities
            // as NULL.
            D1Param::Number(n) if n.is_finite() => SqlValue::Real(n),
            D1Param::Number(_) => SqlValue::Null,
            D1Param::Text(text) => SqlValue::Text(text),
            D1Param::Blob(bytes) => {
                SqlValue::Blob(bytes.into_iter().map(|b| b as i64 as u8).collect())
            }
        }
    }
}

#[derive(serde::Deserialize)]
pub struct D1Statement {
    sql: String,
    params: Vec<D1Param>,
}

/// A value of a result row: blobs as arrays of bytes, as D1 answers them.
#[derive(serde::Serialize)]
#[serde(untagged)]
pub enum D1Value {
    Null(Option<()>),
    Integer(i64),
    Real(f64),
    Text(String),
    /// Bytes as numbers (a `Vec<u8>` would reach JS as a string).
    Blob(Vec<u16>),
}

impl From<SqlValue> for D1Value {
    fn from(value: SqlValue) -> Self {
        match value {
            SqlValue::Null => D1Value::Null(None),
            // JS numbers, as D1 answers them (no BigInt): large integers lose precision.
            SqlValue::Integer(n) if n.unsigned_abs() > (1 << 53) => D1Value::Real(n as f64),
            SqlValue::Integer(n) => D1Value::Integer(n),
            SqlValue::Real(n) => D1Value::Real(n),
            SqlValue::Text(text) => D1Value::Text(text),
            SqlValue::Blob(bytes) => D1Value::Blob(bytes.into_iter().map(u16::from).collect()),
        }
    }
}

/// One statement's answer: its rows and D1's `meta` counters.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct D1Answer {
    columns: Vec<String>,
    rows: Vec<Vec<D1Value>>,
    changes: u64,
    last_row_id: i64,
    rows_read: u64,
    rows_written: u64,
    changed_schema: bool,
    size_after: u64,
    duration: f64,
    /// The database's history position after this batch (a session's bookmark).
    position: f64,
}

fn answer(result: D1Result, size_after: u64, duration: f64, position: u64) -> D1Answer {
    D1Answer {
        columns: result.columns,
        rows: result
            .rows
            .into_iter()
            .map(|row| row.into_iter().map(D1Value::from).collect())
            .collect(),
        changes: result.changes,
        last_row_id: result.last_row_id,
        rows_read: result.rows_read,
        rows_written: result.rows_written,
        changed_schema: result.changed_schema,
        size_after,
        duration,
        position: position as f64,
    }
}

/// Runs `statements` in one transaction; one answer per statement.
#[op2]
#[serde]
pub async fn op_dorun_d1_batch(
    state: Rc<RefCell<OpState>>,
    #[string] name: String,
    #[serde] statements: Vec<D1Statement>,
) -> Result<Vec<D1Answer>, D1Error> {
    let statements: Vec<(String, Vec<SqlValue>)> = statements
        .into_iter()
        .map(|s| (s.sql, s.params.into_iter().map(D1Param::value).collect()))
        .collect();
    grouped(&state, &name, "batch", move |db, limit| {
        let started = Instant::now();
        let results = db.batch(&statements, limit)?;
        let duration = started.elapsed().as_secs_f64() * 1000.0;
        let size = db.size()?;
        let position = db.position();
        Ok(results
            .into_iter()
            .map(|result| answer(result, size, duration, position))
            .collect())
    })
    .await
}

/// What `exec` answers: how many statements ran and how long they took (ms).
#[derive(serde::Serialize)]
pub struct D1ExecAnswer {
    count: usize,
    duration: f64,
}

#[op2]
#[serde]
pub async fn op_dorun_d1_exec(
    state: Rc<RefCell<OpState>>,
    #[string] name: String,
    #[string] sql: String,
) -> Result<D1ExecAnswer, D1Error> {
    with(&state, &name, "exec", move |db, limit| {
        let started = Instant::now();
        let count = db.exec(&sql, limit)?;
        Ok(D1ExecAnswer {
            count,
            duration: started.elapsed().as_secs_f64() * 1000.0,
        })
    })
    .await
}
