//! The admin API's view of the work that arrives without a request: queues (what each
//! holds, its consumer's state, a peek at its messages, purge) and cron triggers (next run,
//! last result). Queue files are read through the process-wide handles the Workers use.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /api/queues` | each queue: counts, and its consumer (in flight, batches, last batch) |
//! | `GET /api/queues/{name}/messages?limit=` | its oldest messages (text and JSON bodies shown) |
//! | `POST /api/queues/{name}/purge` | deletes every stored message |
//! | `GET /api/crons` | each trigger: worker, pattern, next run, last run |

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
            let limit = super::api::query_params(parts)
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
}
