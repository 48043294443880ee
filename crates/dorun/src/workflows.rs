//! The Workflows engine: one task per workflow (by `name`) runs its instances on the worker
//! that exports the workflow's class. An instance runs when it is queued (created, resumed,
//! restarted), when its sleep or event deadline comes, when an event is sent to it, and
//! after a restart of the process if it was running: each run starts `run()` over and
//! replays the finished steps from the workflow's file (`js/19_workflows.js`). Instance
//! states live in that file only, so a run survives a restart in the middle of a sleep or
//! between steps.
//!
//! A run reaches the isolate as an internal request carrying the process's secret token
//! (`x-dorun-workflow`), which JS checks before it runs the instance.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dorun_runtime::workflow_binding::{self, WorkflowHandle};
use dorun_runtime::WorkerPool;
use http_body_util::BodyExt as _;

use crate::config::WorkerConfig;

/// One workflow and the worker that runs it.
pub struct Engine {
    pub name: String,
    pub class_name: String,
    pub worker: String,
    pool: Arc<WorkerPool>,
    pub handle: Arc<WorkflowHandle>,
    /// Instances with a run in progress.
    running: Mutex<HashSet<String>>,
}

impl Engine {
    pub fn running(&self) -> usize {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// The engines of the workflows the workers of one `dorun serve` declare: each runs on the
/// worker named by `script_name`, else on the worker that declares it. A workflow whose
/// class lives in a worker this process does not serve gets no engine (a warning): its
/// instances wait.
pub fn engines(
    workers: &[(&WorkerConfig, &Option<Arc<WorkerPool>>)],
) -> Result<Vec<Arc<Engine>>, String> {
    let mut out: Vec<Arc<Engine>> = Vec::new();
    for (config, _) in workers {
        for binding in &config.workflows {
            if out.iter().any(|e| e.name == binding.name) {
                continue;
            }
            let owner = binding.script_name.as_deref().unwrap_or(&config.name);
            let Some((owner_config, Some(pool))) = workers
                .iter()
                .find(|(c, _)| c.name == owner)
                .map(|(c, p)| (*c, (*p).clone()))
            else {
                tracing::warn!(
                    workflow = %binding.name,
                    "workflow binding env.{} runs class {} of worker \"{owner}\", which this \
                     dorun serve does not serve: its instances wait until it is",
                    binding.binding,
                    binding.class_name
                );
                continue;
            };
            let handle = workflow_binding::open(
                &pool.spec().objects.data_dir,
                &binding.name,
                pool.spec().objects.durability,
            )
            .map_err(|e| format!("workflow '{}': cannot open its file: {e}", binding.name))?;
            out.push(Arc::new(Engine {
                name: binding.name.clone(),
                class_name: binding.class_name.clone(),
                worker: owner_config.name.clone(),
                pool,
                handle,
                running: Mutex::new(HashSet::new()),
            }));
        }
    }
    Ok(out)
}

/// Runs `engine`'s instances as they become due, until the process ends (spawn it).
pub async fn run(engine: Arc<Engine>) {
    loop {
        let changed = engine.handle.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let now = dorun_runtime::clock::now_ms();
        let reader = engine.clone();
        let found = tokio::task::spawn_blocking(move || {
            reader.handle.with(|db| {
                Ok::<_, dorun_storage::StorageError>((db.runnable(now, 1000)?, db.next_wake(now)?))
            })
        })
        .await;
        let (due, next) = match found {
            Ok(Ok(found)) => found,
            Ok(Err(error)) => {
                tracing::error!(workflow = %engine.name, "cannot read the workflow's file: {error}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => return,
        };
        for id in due {
            let fresh = engine
                .running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id.clone());
            if fresh {
                let engine = engine.clone();
                tokio::spawn(async move {
                    start(&engine, &id).await;
                    engine
                        .running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id);
                    engine.handle.changed.notify_one();
                });
            }
        }
        match next {
            Some(at) => {
                let wait = Duration::from_millis((at - now).max(0) as u64);
                tokio::select! {
                    () = &mut changed => {}
                    () = tokio::time::sleep(wait) => {}
                }
            }
            None => changed.await,
        }
    }
}

/// One run of instance `id`, to its end or until it waits.
async fn start(engine: &Engine, id: &str) {
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri("http://dorun.internal/__workflow")
        .header(
            "x-dorun-workflow",
            dorun_runtime::events::fetch_depth_token(),
        )
        .header("x-dorun-workflow-name", engine.name.as_str())
        .header("x-dorun-workflow-class", engine.class_name.as_str())
        .header("x-dorun-workflow-instance", id)
        .body(dorun_runtime::body::empty_request_body());
    let Ok(request) = request else {
        tracing::error!(workflow = %engine.name, "instance id {id:?} cannot go in a header");
        return;
    };
    let outcome = match engine.pool.dispatch(request).await {
        Err(error) => Err(error.to_string()),
        Ok(response) => {
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            if status.is_success() {
                Ok(body)
            } else {
                Err(body)
            }
        }
    };
    match outcome {
        Ok(ended) => tracing::debug!(workflow = %engine.name, instance = id, "run ended: {ended}"),
        Err(error) => {
            // The isolate failed under the run (a limit, a reset): try again in a second
            // rather than at once.
            tracing::warn!(workflow = %engine.name, instance = id, "run failed: {error}");
            let handle = engine.handle.clone();
            let id = id.to_string();
            let _ = tokio::task::spawn_blocking(move || {
                let now = dorun_runtime::clock::now_ms();
                handle.with(|db| {
                    db.set_status(
                        &id,
                        &["running"],
                        "waiting",
                        Some(now + 1000),
                        None,
                        None,
                        now,
                    )
                })
            })
            .await;
        }
    }
}
