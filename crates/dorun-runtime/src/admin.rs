//! The admin listener's way into an isolate thread: `WorkerPool::admin` (pool.rs) sends an
//! `AdminCommand` to a thread and waits for its JSON answer; the ops here are what the
//! glue (`13_admin.js`) needs beyond the storage ops: operator SQL (reserved tables
//! readable), a reset's barrier, restoring an imported file, lifecycle metrics.
//!
//! Everything that touches a resident object runs on the object's own thread, between its
//! JS turns, through the object's own connection: no second writer, no stale instance.

use std::sync::Arc;

use deno_core::{op2, OpState};
use dorun_storage::SqlValue;

use crate::context::IsolateContext;
use crate::mailbox::PendingReset;
use crate::namespaces::ObjectConfig;
use crate::storage::{OpenDatabases, StorageOpError};

fn sql_value_json(value: SqlValue) -> serde_json::Value {
    match value {
        SqlValue::Null => serde_json::Value::Null,
        SqlValue::Integer(n) => n.into(),
        SqlValue::Real(x) => x.into(),
        SqlValue::Text(text) => text.into(),
        SqlValue::Blob(bytes) => {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            serde_json::json!({ "blob": hex })
        }
    }
}

/// Runs operator SQL on storage handle `handle`: `{columns, rows, rowsRead, rowsWritten}`
/// (a BLOB is `{"blob": "<hex>"}`). Writes join the object's implicit transaction; the
/// caller commits.
#[op2]
#[string]
pub fn op_dorun_admin_sql(
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] query: &str,
) -> Result<String, StorageOpError> {
    let db = state.borrow_mut::<OpenDatabases>().database(handle)?;
    let result = db.admin_exec(query)?;
    let rows: Vec<serde_json::Value> = result
        .rows
        .into_iter()
        .map(|row| row.into_iter().map(sql_value_json).collect())
        .collect();
    Ok(serde_json::json!({
        "columns": result.columns,
        "rows": rows,
        "rowsRead": result.rows_read,
        "rowsWritten": result.rows_written,
    })
    .to_string())
}

/// How long a thread waits, in a reset, for the admin listener to release it.
const RESET_HOLD: std::time::Duration = std::time::Duration::from_secs(10);

/// A reset's barrier, called by the glue once this thread's objects are dropped: reports
/// `dropped`, then blocks the thread until the admin listener has moved the data away (no
/// event runs meanwhile, so no object is recreated in a directory about to move). Returns
/// false if the release did not come in time.
#[op2(fast)]
pub fn op_dorun_admin_hold(state: &mut OpState, #[smi] dropped: u32) -> bool {
    let Some(hold) = state.try_take::<PendingReset>().and_then(|p| p.0) else {
        return false;
    };
    // Closing hundreds of connections takes a while even when it writes nothing: done on
    // another thread.
    if let Some(Discarded(connections)) = state.try_take::<Discarded>() {
        let _ = std::thread::Builder::new()
            .name("dorun-discard".into())
            .spawn(move || drop(connections));
    }
    if hold.dropped.send(dropped).is_err() {
        return false;
    }
    hold.release.recv_timeout(RESET_HOLD).is_ok()
}

/// Connections of objects dropped by a reset, to be closed off the isolate thread.
struct Discarded(Vec<dorun_storage::ObjectDatabase>);

/// Counts an object lifecycle event for the metrics: `activation` (an instance was built)
/// or `eviction` (an idle instance was dropped).
#[op2(fast)]
pub fn op_dorun_object_metric(state: &mut OpState, #[string] event: &str) {
    let worker = state.borrow::<IsolateContext>().worker_name.to_string();
    match event {
        "activation" => {
            metrics::counter!("dorun_object_activations_total", "worker" => worker).increment(1)
        }
        _ => metrics::counter!("dorun_object_evictions_total", "worker" => worker).increment(1),
    }
}

/// Replaces object `object_id`'s content with the SQLite file at `source` (SQLite's backup
/// API, so the file stays valid for any connection) and brings its alarm into the index
/// and the scheduler. The glue has evicted the object first. Returns the restored alarm.
#[op2]
pub fn op_dorun_admin_restore(
    state: &mut OpState,
    #[smi] namespace: u32,
    #[string] object_id: &str,
    #[string] source: &str,
) -> Result<Option<f64>, StorageOpError> {
    let objects = state.borrow::<Arc<ObjectConfig>>().clone();
    let alarms = state.borrow::<Arc<crate::alarms::AlarmScheduler>>().clone();
    let path = objects
        .namespace_dir(namespace)?
        .join(format!("{object_id}.sqlite"));
    let open_error = |source| StorageOpError::Open {
        path: path.clone(),
        source,
    };
    // The evicted object's connection may still wait on the closer thread, locking the
    // file: take it back and close it here rather than wait for the lock.
    drop(dorun_storage::Closer::global().reclaim(&path));
    dorun_storage::restore(std::path::Path::new(source), &path).map_err(open_error)?;
    state
        .borrow_mut::<crate::storage::OpenDatabases>()
        .ship_whole(&path, object_id)
        .map_err(open_error)?;
    let alarm = dorun_storage::ObjectDatabase::open(&path, objects.durability)
        .and_then(|db| db.alarm())
        .map_err(open_error)?;
    match alarm {
        Some(time) => alarms.index_put(namespace, object_id, None, time)?,
        None => alarms.index_delete(namespace, object_id)?,
    }
    alarms.update(namespace, object_id, None, alarm);
    Ok(alarm.map(|t| t as f64))
}

/// Writes a consistent copy of storage handle `handle`'s committed content to `target`
/// (an export), through the object's own connection: the file is locked by it.
#[op2(fast)]
pub fn op_dorun_admin_snapshot(
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] target: &str,
) -> Result<(), StorageOpError> {
    let db = state.borrow_mut::<OpenDatabases>().database(handle)?;
    db.snapshot(std::path::Path::new(target))?;
    Ok(())
}

/// Closes storage handle `handle` without a checkpoint or fsync, dropping uncommitted writes:
/// the object's files are deleted next (the admin's reset).
#[op2(fast)]
pub fn op_dorun_admin_discard(state: &mut OpState, #[smi] handle: u32) {
    if let Some(db) = state.borrow_mut::<OpenDatabases>().remove(handle) {
        let db = db.discard();
        match state.try_borrow_mut::<Discarded>() {
            Some(discarded) => discarded.0.push(db),
            None => state.put(Discarded(vec![db])),
        }
    }
}
