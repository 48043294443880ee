//! The admin API's view of the work that arrives without a request: queues (what each
//! holds, its consumer's state, a peek at its messages, purge), cron triggers (next run,
//! last result) and workflow instances (status, step history). Queue files are read through the process-wide handles the Workers use.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /api/queues` | each queue: counts, and its consumer (in flight, batches, last batch) |
//! | `GET /api/queues/{name}/messages?limit=` | its oldest messages (text and JSON bodies shown) |
//! | `POST /api/queues/{name}/purge` | deletes every stored message |
//! | `GET /api/crons` | each trigger: worker, pattern, next run, last run |
//! | `GET /api/workflows` | each workflow: instances by status, runs in progress |
//! | `GET /api/workflows/{name}/instances?limit=` | its newest instances |
//! | `GET /api/workflows/{name}/instances/{id}` | one instance and its steps |

use std::sync::Arc;

use dorun_runtime::queue_binding::{self, QueueHandle};
use dorun_storage::{QueueCounts, QueuedMessage};
use serde_json::{json, Value};

use super::{json, Admin, AdminResponse};

fn error(status: u16, message: impl std::fmt::Display) -> AdminResponse {
    json(status, &json!({ "error": message.to_string() }))
}

fn now_ms() -> i64 {
    dorun_runtime::clock::now_ms()
}

/// The queues with a file under the data directory, by name, with their handles.
fn queues(admin: &Admin) -> Vec<(String, Result<Arc<QueueHandle>, String>)> {
    let durability = admin
        .pools
        .first()
        .map(|pool| pool.spec().objects.durability)
        .unwrap_or_default();
    queue_binding::queue_files(&admin.data_dir)
        .into_iter()
        .map(|file| {
            let name = super::bindings::stem(&file);
            let handle =
                queue_binding::open(&admin.data_dir, &name, durability).map_err(|e| e.to_string());
            (name, handle)
        })
        .collect()
}

fn counts_json(counts: &QueueCounts) -> Value {
    json!({
        "depth": counts.depth,
        "ready": counts.ready,
        "delayed": counts.depth - counts.ready,
        "bytes": counts.bytes,
        "oldest": counts.oldest,
        "sent": counts.sent,
        "acked": counts.acked,
        "retried": counts.retried,
        "deadLettered": counts.dead_lettered,
        "dropped": counts.dropped,
    })
}

/// Every queue's counts and consumer, as `GET /api/queues` answers.
pub async fn queues_json(admin: &Admin) -> Result<Value, String> {
    let mut list = Vec::new();
    for (name, handle) in queues(admin) {
        let handle = handle?;
        let counts = tokio::task::spawn_blocking(move || handle.with(|db| db.counts(now_ms())))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let consumer = admin
            .consumers
            .iter()
            .find(|c| c.settings.queue == name)
            .map(|c| {
                json!({
                    "worker": c.worker,
                    "inFlight": c.in_flight(),
                    "batches": c.batches.load(std::sync::atomic::Ordering::Relaxed),
                    "last": *c.last.lock().unwrap_or_else(|p| p.into_inner()),
                    "maxBatchSize": c.settings.max_batch_size,
                    "maxBatchTimeoutMs": c.settings.max_batch_timeout.as_millis() as u64,
                    "maxRetries": c.settings.max_retries,
                    "deadLetterQueue": c.settings.dead_letter_queue,
                })
            });
        let mut entry = counts_json(&counts);
        entry["name"] = json!(name);
        entry["consumer"] = consumer.unwrap_or(Value::Null);
        list.push(entry);
    }
    Ok(Value::Array(list))
}

fn message_json(message: &QueuedMessage) -> Value {
    let shown = match message.content_type.as_str() {
        "text" | "json" => {
            let text = String::from_utf8_lossy(&message.body);
            Value::String(text.chars().take(1024).collect())
        }
        _ => Value::Null,
    };
    json!({
        "id": message.id,
        "timestamp": message.timestamp,
        "visibleAt": message.visible_at,
        "attempts": message.failed_attempts,
        "contentType": message.content_type,
        "bytes": message.body.len(),
        "body": shown,
    })
}

pub async fn queue_route(
    admin: &Admin,
    method: &http::Method,
    rest: &[&str],
    parts: &http::request::Parts,
) -> AdminResponse {
    let get = method == http::Method::GET;
    let post = method == http::Method::POST;
    match rest {
        [] if get => match queues_json(admin).await {
            Ok(list) => json(200, &list),
            Err(message) => error(500, message),
        },
        [name, op] if (*op == "messages" && get) || (*op == "purge" && post) => {
            let name = super::bindings::percent_decode(name);
            let Some(handle) = queues(admin)
                .into_iter()
                .find(|(n, _)| *n == name)
                .map(|(_, h)| h)
            else {
                return error(404, format!("no queue '{name}'"));
            };
            let handle = match handle {
                Ok(handle) => handle,
                Err(message) => return error(500, message),
            };
            let limit = super::query_params(parts)
                .get("limit")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(100)
                .min(1000);
            let purge = *op == "purge";
            let answer = tokio::task::spawn_blocking(move || {
                if purge {
                    let purged = handle.purge()?;
                    Ok(json!({ "purged": purged }))
                } else {
                    let messages = handle.with(|db| db.peek(limit))?;
                    Ok(Value::Array(messages.iter().map(message_json).collect()))
                }
            })
            .await;
            match answer {
                Ok(Ok(value)) => json(200, &value),
                Ok(Err::<_, dorun_storage::StorageError>(e)) => error(500, e),
                Err(e) => error(500, e),
            }
        }
        _ => error(
            404,
            format!("no admin route {method} /api/queues/{}", rest.join("/")),
        ),
    }
}

/// Every cron trigger, as `GET /api/crons` answers.
pub fn crons_json(admin: &Admin) -> Value {
    Value::Array(
        admin
            .triggers
            .iter()
            .map(|trigger| {
                json!({
                    "worker": trigger.worker,
                    "cron": trigger.pattern,
                    "next": trigger.next().map(|t| t.to_rfc3339()),
                    "last": *trigger.last.lock().unwrap_or_else(|p| p.into_inner()),
                })
            })
            .collect(),
    )
}

fn durability(admin: &Admin) -> dorun_storage::Durability {
    admin
        .pools
        .first()
        .map(|pool| pool.spec().objects.durability)
        .unwrap_or_default()
}

/// The workflows with a file under the data directory, by name, with their handles.
fn workflows(
    admin: &Admin,
) -> Vec<(
    String,
    Result<Arc<dorun_runtime::workflow_binding::WorkflowHandle>, String>,
)> {
    let durability = durability(admin);
    dorun_runtime::workflow_binding::workflow_files(&admin.data_dir)
        .into_iter()
        .map(|file| {
            let name = super::bindings::stem(&file);
            let handle = dorun_runtime::workflow_binding::open(&admin.data_dir, &name, durability)
                .map_err(|e| e.to_string());
            (name, handle)
        })
        .collect()
}

fn error_json(error: &Option<String>) -> Value {
    error
        .as_deref()
        .and_then(|e| serde_json::from_str(e).ok())
        .unwrap_or(Value::Null)
}

fn instance_json(instance: &dorun_storage::WorkflowInstance) -> Value {
    json!({
        "id": instance.id,
        "status": instance.status,
        "created": instance.created,
        "updated": instance.updated,
        "wakeAt": instance.wake_at,
        "error": error_json(&instance.error),
    })
}

/// Every workflow's instances by status and its engine, as `GET /api/workflows` answers.
pub async fn workflows_json(admin: &Admin) -> Result<Value, String> {
    let mut list = Vec::new();
    for (name, handle) in workflows(admin) {
        let handle = handle?;
        let counts = tokio::task::spawn_blocking(move || handle.with(|db| db.counts()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let engine = admin.engines.iter().find(|e| e.name == name);
        let by_status: serde_json::Map<String, Value> =
            counts.into_iter().map(|(s, n)| (s, json!(n))).collect();
        list.push(json!({
            "name": name,
            "instances": by_status,
            "worker": engine.map(|e| e.worker.clone()),
            "className": engine.map(|e| e.class_name.clone()),
            "runsInProgress": engine.map_or(0, |e| e.running()),
        }));
    }
    Ok(Value::Array(list))
}

pub async fn workflow_route(
    admin: &Admin,
    method: &http::Method,
    rest: &[&str],
    parts: &http::request::Parts,
) -> AdminResponse {
    if method != http::Method::GET {
        return error(405, "GET only");
    }
    let find = |name: &str| {
        workflows(admin)
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, h)| h)
    };
    let answer: Result<Value, String> = match rest {
        [] => workflows_json(admin).await,
        [name, "instances"] => {
            let name = super::bindings::percent_decode(name);
            let Some(handle) = find(&name) else {
                return error(404, format!("no workflow '{name}'"));
            };
            let handle = match handle {
                Ok(handle) => handle,
                Err(message) => return error(500, message),
            };
            let limit = super::query_params(parts)
                .get("limit")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(100)
                .min(1000);
            tokio::task::spawn_blocking(move || handle.with(|db| db.list(limit)))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map(|list| Value::Array(list.iter().map(instance_json).collect()))
        }
        [name, "instances", id] => {
            let (name, id) = (
                super::bindings::percent_decode(name),
                super::bindings::percent_decode(id),
            );
            let Some(handle) = find(&name) else {
                return error(404, format!("no workflow '{name}'"));
            };
            let handle = match handle {
                Ok(handle) => handle,
                Err(message) => return error(500, message),
            };
            let found = tokio::task::spawn_blocking(move || {
                handle.with(|db| {
                    Ok::<_, dorun_storage::StorageError>((db.instance(&id)?, db.steps(&id)?))
                })
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
            match found {
                Ok((Some(instance), steps)) => {
                    let mut value = instance_json(&instance);
                    value["steps"] = Value::Array(
                        steps
                            .iter()
                            .map(|s| {
                                json!({
                                    "key": s.key,
                                    "attempts": s.attempts,
                                    "done": s.done,
                                    "until": s.until,
                                    "error": error_json(&s.error),
                                })
                            })
                            .collect(),
                    );
                    Ok(value)
                }
                Ok((None, _)) => return error(404, "no such instance"),
                Err(message) => Err(message),
            }
        }
        _ => {
            return error(
                404,
                format!("no admin route {method} /api/workflows/{}", rest.join("/")),
            )
        }
    };
    match answer {
        Ok(value) => json(200, &value),
        Err(message) => error(500, message),
    }
}

/// Sets the queue gauges for `/metrics`: depth, ready and in flight, by queue.
pub async fn sample(admin: &Admin) {
    for (name, handle) in queues(admin) {
        let Ok(handle) = handle else { continue };
        let counts =
            tokio::task::spawn_blocking(move || handle.with(|db| db.counts(now_ms()))).await;
        let Ok(Ok(counts)) = counts else { continue };
        let labels = [("queue", name.clone())];
        metrics::gauge!("dorun_queue_depth", &labels).set(counts.depth as f64);
        metrics::gauge!("dorun_queue_ready", &labels).set(counts.ready as f64);
        let in_flight = admin
            .consumers
            .iter()
            .find(|c| c.settings.queue == name)
            .map_or(0, |c| c.in_flight());
        metrics::gauge!("dorun_queue_in_flight", &labels).set(in_flight as f64);
    }
    for (name, handle) in workflows(admin) {
        let Ok(handle) = handle else { continue };
        let counts = tokio::task::spawn_blocking(move || handle.with(|db| db.counts())).await;
        let Ok(Ok(counts)) = counts else { continue };
        for status in [
            "queued",
            "running",
            "waiting",
            "paused",
            "complete",
            "errored",
            "terminated",
        ] {
            let n = counts
                .iter()
                .find(|(s, _)| s == status)
                .map_or(0, |(_, n)| *n);
            let labels = [("workflow", name.clone()), ("status", status.to_string())];
            metrics::gauge!("dorun_workflow_instances", &labels).set(n as f64);
        }
    }
}
