//! Workflows: `env.<binding>` of a `workflows` entry (`js/19_workflows.js`) creates and
//! drives instances, and a run of a `WorkflowEntrypoint` records its steps, here. Each
//! workflow (by `name`) has one SQLite file, `<data-dir>/workflows/<name>.sqlite`
//! (`dorun_storage::WorkflowDatabase`), opened once per process and shared by every worker
//! that binds it. The engine that runs instances is the `dorun` crate's `workflows.rs`; it
//! waits on each handle's `changed` signal.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use deno_core::{op2, JsBuffer, OpState, ToJsBuffer};

use crate::binding_files;
use dorun_storage::{Durability, StorageError, WorkflowDatabase, WorkflowStep};

/// The directory of workflow files inside the data directory.
pub const WORKFLOWS_DIR: &str = "workflows";

/// One `workflows` entry: the name in `env`, the workflow, and the class that runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowBinding {
    pub binding: String,
    pub name: String,
    pub class_name: String,
    /// The worker that exports the class, when not this one.
    pub script_name: Option<String>,
}

pub fn workflow_file(data_dir: &Path, name: &str) -> PathBuf {
    data_dir
        .join(WORKFLOWS_DIR)
        .join(format!("{}.sqlite", binding_files::file_name(name)))
}

pub fn workflow_files(data_dir: &Path) -> Vec<PathBuf> {
    binding_files::entries(&data_dir.join(WORKFLOWS_DIR), binding_files::is_sqlite)
}

/// One workflow's file as this process has it open.
pub struct WorkflowHandle {
    pub path: PathBuf,
    database: Mutex<WorkflowDatabase>,
    /// Notified when an instance may have become runnable (created, resumed, restarted,
    /// sent an event, finished a run).
    pub changed: tokio::sync::Notify,
}

impl WorkflowHandle {
    /// Runs `f` on the database. Blocks: call it on a blocking thread.
    pub fn with<T>(&self, f: impl FnOnce(&WorkflowDatabase) -> T) -> T {
        f(&self.database.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

static OPEN: binding_files::Handles<WorkflowHandle> = binding_files::Handles::new();

/// Opens (once per process) workflow `name` under `data_dir`.
pub fn open(
    data_dir: &Path,
    name: &str,
    durability: Durability,
) -> Result<Arc<WorkflowHandle>, StorageError> {
    OPEN.get_or_open(&workflow_file(data_dir, name), |path| {
        Ok(WorkflowHandle {
            database: Mutex::new(WorkflowDatabase::open(path, durability)?),
            path: path.to_path_buf(),
            changed: tokio::sync::Notify::new(),
        })
    })
}

/// What the workflow ops of an isolate need.
pub struct WorkflowStore {
    pub data_dir: PathBuf,
    pub durability: Durability,
}

#[derive(Debug, thiserror::Error, deno_error::JsError)]
pub enum WorkflowError {
    #[class(generic)]
    #[error("Workflow storage failed: {0}")]
    Storage(#[from] StorageError),
    #[class(generic)]
    #[error("Workflow storage failed: internal error")]
    Task,
}

/// Runs `f` on workflow `workflow`'s database on a blocking thread; notifies the engine
/// afterwards when `notify`.
async fn on<T: Send + 'static>(
    state: &Rc<RefCell<OpState>>,
    workflow: String,
    notify: bool,
    f: impl FnOnce(&WorkflowDatabase) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, WorkflowError> {
    let (data_dir, durability) = {
        let state = state.borrow();
        let store = state.borrow::<WorkflowStore>();
        (store.data_dir.clone(), store.durability)
    };
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        let handle = open(&data_dir, &workflow, durability)?;
        let result = handle.with(f);
        if notify && result.is_ok() {
            handle.changed.notify_one();
        }
        result
    })
    .await
    .map_err(|_| WorkflowError::Task)?;
    binding_files::record("workflow", "op", started, result.is_ok());
    Ok(result?)
}

fn now() -> i64 {
    crate::clock::now_ms()
}

/// Stores a new instance; false if its id exists.
#[op2]
pub async fn op_dorun_workflow_create(
    state: Rc<RefCell<OpState>>,
    #[string] workflow: String,
    #[string] id: String,
    #[buffer] params: JsBuffer,
) -> Result<bool, WorkflowError> {
    let params = params.to_vec();
    on(&state, workflow, true, move |db| {
        db.create(&id, &params, now())
    })
    .await
}

/// An instance as `status()` shows it.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    status: String,
    params: ToJsBuffer,
    created: i64,
    output: Option<ToJsBuffer>,
    error: Option<String>,
    /// What each finished `do` and `waitForEvent` step gave, in order (`null`: undefined).
    step_outputs: Vec<Option<ToJsBuffer>>,
}

#[op2]
#[serde]
pub async fn op_dorun_workflow_get(
    state: Rc<RefCell<OpState>>,
    #[string] workflow: String,
    #[string] id: String,
) -> Result<Option<InstanceView>, WorkflowError> {
    let found = on(&state, workflow, false, move |db| {
        let Some(instance) = db.instance(&id)? else {
            return Ok(None);
        };
        let outputs = db
            .steps(&id)?
            .into_iter()
            .filter(|s| s.done && s.error.is_none() && !s.key.starts_with("sleep:"))
            .map(|s| s.result)
            .collect::<Vec<_>>();
        Ok(Some((instance, outputs)))
    })
    .await?;
    Ok(found.map(|(i, outputs)| InstanceView {
        status: i.status,
        params: i.params.into(),
        created: i.created,
        output: i.output.map(Into::into),
        error: i.error,
        step_outputs: outputs.into_iter().map(|o| o.map(Into::into)).collect(),
    }))
}

/// A change of an instance's status (with what it waits for, or its error).
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Change {
    from: Vec<String>,
    to: String,
    wake_at: Option<f64>,
    error: Option<String>,
}

/// Moves an instance from one of `from` (any when empty) to `to`; whether it moved.
/// `restart` forgets its steps first.
#[op2]
pub async fn op_dorun_workflow_transition(
    state: Rc<RefCell<OpState>>,
    #[string] workflow: String,
    #[string] id: String,
    #[serde] change: Change,
    #[buffer] output: Option<JsBuffer>,
) -> Result<bool, WorkflowError> {
    let output = output.map(|o| o.to_vec());
    let Change {
        from,
        to,
        wake_at,
        error,
    } = change;
    on(&state, workflow, true, move |db| {
        if to == "restart" {
            return db.restart(&id, now());
        }
        if to == "resume" {
            return db.resume(&id, now());
        }
        let from: Vec<&str> = from.iter().map(String::as_str).collect();
        db.set_status(
            &id,
            &from,
            &to,
            wake_at.map(|w| w as i64),
            output.as_deref(),
            error.as_deref(),
            now(),
        )
    })
    .await
}

#[op2]
pub async fn op_dorun_workflow_event(
    state: Rc<RefCell<OpState>>,
    #[string] workflow: String,
    #[string] id: String,
    #[string] kind: String,
    #[buffer] payload: JsBuffer,
) -> Result<(), WorkflowError> {
    let payload = payload.to_vec();
    on(&state, workflow, true, move |db| {
        db.add_event(&id, &kind, &payload, now())
    })
    .await
}

/// A step as a run replays it.
#[derive(serde::Serialize)]
pub struct StepView {
    attempts: i64,
    done: bool,
    result: Option<ToJsBuffer>,
    error: Option<String>,
    until: Option<i64>,
}

#[op2]
#[serde]
pub async fn op_dorun_workflow_step(
    state: Rc<RefCell<OpState>>,
    #[string] workflow: String,
    #[string] id: String,
    #[string] key: String,
) -> Result<Option<StepView>, WorkflowError> {
    let step = on(&state, workflow, false, move |db| db.step(&id, &key)).await?;
    Ok(step.map(|s| StepView {
        attempts: s.attempts,
        done: s.done,
        result: s.result.map(Into::into),
        error: s.error,
        until: s.until,
    }))
}

/// A step to store.
#[derive(serde::Deserialize)]
pub struct StepIn {
    key: String,
    attempts: i64,
    done: bool,
    result: Option<JsBuffer>,
    error: Option<String>,
    until: Option<f64>,
}

#[op2]
pub async fn op_dorun_workflow_put_step(
    state: Rc<RefCell<OpState>>,
    #[string] workflow: String,
    #[string] id: String,
    #[serde] step: StepIn,
) -> Result<(), WorkflowError> {
    let step = WorkflowStep {
        key: step.key,
        attempts: step.attempts,
        done: step.done,
        result: step.result.map(|r| r.to_vec()),
        error: step.error,
        until: step.until.map(|u| u as i64),
    };
    on(&state, workflow, false, move |db| db.put_step(&id, &step)).await
}

/// An event a `waitForEvent` step took.
#[derive(serde::Serialize)]
pub struct EventView {
    payload: ToJsBuffer,
    timestamp: i64,
}

#[op2]
#[serde]
pub async fn op_dorun_workflow_take_event(
    state: Rc<RefCell<OpState>>,
    #[string] workflow: String,
    #[string] id: String,
    #[string] kind: String,
    #[string] key: String,
) -> Result<Option<EventView>, WorkflowError> {
    let taken = on(&state, workflow, false, move |db| {
        db.take_event(&id, &kind, &key)
    })
    .await?;
    Ok(taken.map(|(payload, timestamp)| EventView {
        payload: payload.into(),
        timestamp,
    }))
}
