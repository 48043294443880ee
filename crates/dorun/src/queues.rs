//! Queue consumers (`queues.consumers`): one task per consumed queue delivers its stored
//! messages (`dorun_runtime::queue_binding`) to the consuming worker's `queue()` in batches,
//! and settles each message as the handler decided: acked messages are deleted, retried
//! ones wait `retry_delay` (or what `retry()` asked) and come back with one attempt more,
//! and a message out of retries moves to the dead-letter queue, or is dropped.
//!
//! A batch goes out when it is full (`max_batch_size`) or when its oldest ready message
//! has waited `max_batch_timeout`; up to `max_concurrency` batches are out at once. Which
//! messages are out is kept in memory only: after a crash or kill -9 they are delivered
//! again (at least once). A batch reaches the isolate as an internal request carrying the
//! process's secret token (`x-dorun-queue`), which JS checks before it calls `queue()`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dorun_runtime::queue_binding::{self, QueueHandle};
use dorun_runtime::WorkerPool;
use dorun_storage::{NewMessage, QueuedMessage, Settlement};
use http_body_util::BodyExt as _;

use crate::config::{QueueConsumer, WorkerConfig};

/// Header of the internal request that runs `queue()`; its value is the secret token.
pub const QUEUE_HEADER: &str = "x-dorun-queue";

/// Wall time a batch may take before it counts as failed (Cloudflare's limit for a consumer
/// invocation is 15 minutes).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// How the last batch of a consumer ended (the admin listener shows it).
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastBatch {
    /// When it was handed over (ms since the epoch).
    pub at: i64,
    pub messages: usize,
    pub acked: usize,
    pub retried: usize,
    pub dead_lettered: usize,
    pub dropped: usize,
    /// The handler's exception, if it threw.
    pub error: Option<String>,
    pub ms: f64,
}

/// One consumed queue.
pub struct Consumer {
    pub worker: String,
    pub settings: QueueConsumer,
    pool: Arc<WorkerPool>,
    pub handle: Arc<QueueHandle>,
    dead_letter: Option<Arc<QueueHandle>>,
    /// Messages (by `seq`) handed to the worker and not settled yet.
    in_flight: Mutex<HashSet<i64>>,
    pub batches: AtomicU64,
    pub last: Mutex<Option<LastBatch>>,
}

impl Consumer {
    /// Messages being delivered now.
    pub fn in_flight(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// The consumers of the workers of one `dorun serve` that have a script, each queue's file
/// opened.
pub fn consumers(
    workers: &[(&WorkerConfig, &Option<Arc<WorkerPool>>)],
) -> Result<Vec<Arc<Consumer>>, String> {
    let mut out = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (config, pool) in workers {
        let Some(pool) = pool else { continue };
        let data_dir = &pool.spec().objects.data_dir;
        let durability = pool.spec().objects.durability;
        let open = |name: &str| {
            queue_binding::open(data_dir, name, durability)
                .map_err(|e| format!("queue '{name}': cannot open its file: {e}"))
        };
        for settings in &config.queue_consumers {
            if seen.contains(&settings.queue.as_str()) {
                return Err(format!(
                    "queue '{}' has two consumers ({} among them); a queue has one",
                    settings.queue, config.name
                ));
            }
            seen.push(&settings.queue);
            let handle = open(&settings.queue)?;
            if settings.pull {
                tracing::warn!(
                    queue = %settings.queue,
                    "an http_pull consumer is pulled over Cloudflare's API, which dorun does not \
                     serve: the queue's messages stay stored (dorun inspect / the admin page show them)"
                );
                continue;
            }
            let dead_letter = match &settings.dead_letter_queue {
                Some(name) => Some(open(name)?),
                None => None,
            };
            out.push(Arc::new(Consumer {
                worker: config.name.clone(),
                settings: settings.clone(),
                pool: pool.clone(),
                handle,
                dead_letter,
                in_flight: Mutex::new(HashSet::new()),
                batches: AtomicU64::new(0),
                last: Mutex::new(None),
            }));
        }
    }
    // A queue sent to but consumed by no worker of this process keeps its messages.
    for (config, _) in workers {
        for producer in &config.queue_producers {
            if !seen.contains(&producer.queue.as_str()) {
                tracing::warn!(
                    queue = %producer.queue,
                    binding = %producer.binding,
                    "no worker of this dorun serve consumes this queue: its messages are kept \
                     until one does"
                );
                seen.push(&producer.queue);
            }
        }
    }
    Ok(out)
}

fn now_ms() -> i64 {
    dorun_runtime::clock::now_ms()
}

/// Delivers `consumer`'s messages until the process ends (spawn it).
pub async fn run(consumer: Arc<Consumer>) {
    let settings = &consumer.settings;
    // Unset, as Cloudflare scales consumers up: a few batches per isolate thread.
    let concurrency = settings
        .max_concurrency
        .unwrap_or_else(|| 4 * consumer.pool.thread_count())
        .max(1);
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
    // When the batch being gathered saw its first ready message.
    let mut window: Option<tokio::time::Instant> = None;
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let batch = loop {
            // Registered before the read: a send committed after it wakes us.
            let arrived = consumer.handle.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let now = now_ms();
            let reader = consumer.clone();
            let read = tokio::task::spawn_blocking(move || {
                let in_flight = reader
                    .in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                reader.handle.with(|db| {
                    let ready = db.ready(
                        now,
                        reader.settings.max_batch_size,
                        &|seq| in_flight.contains(&seq),
                        in_flight.len(),
                    )?;
                    let next = db.next_visible(now)?;
                    Ok::<_, dorun_storage::StorageError>((ready, next))
                })
            })
            .await;
            let (ready, next) = match read {
                Ok(Ok(found)) => found,
                Ok(Err(error)) => {
                    tracing::error!(queue = %settings.queue, "cannot read the queue: {error}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(_) => return,
            };
            let started = tokio::time::Instant::now();
            if !ready.is_empty() {
                let opened = *window.get_or_insert(started);
                if ready.len() >= settings.max_batch_size
                    || started >= opened + settings.max_batch_timeout
                {
                    window = None;
                    break ready;
                }
            }
            let mut wake = window.map(|opened| opened + settings.max_batch_timeout);
            if let Some(next) = next {
                let at = started + Duration::from_millis((next - now).max(0) as u64);
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            match wake {
                Some(at) => {
                    tokio::select! {
                        () = &mut arrived => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => arrived.await,
            }
        };
        {
            let mut in_flight = consumer.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            in_flight.extend(batch.iter().map(|m| m.seq));
        }
        consumer.handle.claim(&batch);
        let consumer = consumer.clone();
        tokio::spawn(async move {
            deliver(&consumer, batch).await;
            drop(permit);
        });
    }
}

/// What `queue()` decided (JSON from `js/18_queues.js`'s `outcomeOf`).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Outcome {
    ok: bool,
    error: Option<String>,
    ack_all: bool,
    retry_all: bool,
    retry_all_delay: Option<u32>,
    acks: Vec<String>,
    retries: Vec<Retry>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Retry {
    id: String,
    delay_seconds: Option<u32>,
}

/// The request body of a batch: a little-endian u32 length, that much JSON, then the bodies.
fn encode(queue: &str, batch: &[QueuedMessage], backlog: (i64, i64)) -> Vec<u8> {
    let messages: Vec<serde_json::Value> = batch
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id,
                "timestamp": m.timestamp,
                "attempts": m.failed_attempts + 1,
                "contentType": m.content_type,
                "length": m.body.len(),
            })
        })
        .collect();
    // `batch.metadata.metrics`: what the queue holds besides this batch.
    // The batch is claimed already: the counts leave it out.
    let (count, bytes) = backlog;
    let metrics = serde_json::json!({ "backlogCount": count, "backlogBytes": bytes });
    let head = serde_json::json!({
        "queue": queue,
        "metadata": { "metrics": metrics },
        "messages": messages,
    })
    .to_string();
    let bodies: usize = batch.iter().map(|m| m.body.len()).sum();
    let mut out = Vec::with_capacity(4 + head.len() + bodies);
    out.extend_from_slice(&(head.len() as u32).to_le_bytes());
    out.extend_from_slice(head.as_bytes());
    for m in batch {
        out.extend_from_slice(&m.body);
    }
    out
}

/// Hands `batch` to the worker's `queue()` and waits for what it decided.
async fn call(consumer: &Consumer, batch: &[QueuedMessage]) -> Outcome {
    let failed = |error: String| Outcome {
        error: Some(error),
        ..Default::default()
    };
    let body = encode(
        &consumer.settings.queue,
        batch,
        consumer.handle.backlog_counts(),
    );
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri("http://dorun.internal/__queue")
        .header(QUEUE_HEADER, dorun_runtime::events::fetch_depth_token())
        .body(
            http_body_util::Full::new(bytes::Bytes::from(body))
                .map_err(|never| match never {})
                .boxed(),
        );
    let request = match request {
        Ok(request) => request,
        Err(error) => return failed(error.to_string()),
    };
    let answer = async {
        let response = consumer
            .pool
            .dispatch(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice::<Outcome>(&body).map_err(|e| e.to_string())
    };
    match tokio::time::timeout(DELIVERY_TIMEOUT, answer).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => failed(error),
        Err(_) => failed(format!(
            "queue() did not finish within {} minutes",
            DELIVERY_TIMEOUT.as_secs() / 60
        )),
    }
}

/// Delivers one batch and settles its messages.
async fn deliver(consumer: &Arc<Consumer>, batch: Vec<QueuedMessage>) {
    let settings = &consumer.settings;
    let handed = now_ms();
    let started = std::time::Instant::now();
    let outcome = call(consumer, &batch).await;
    if let Some(error) = &outcome.error {
        tracing::warn!(queue = %settings.queue, worker = %consumer.worker, "queue() failed: {error}");
    }
    let now = now_ms();
    let acks: HashSet<&str> = outcome.acks.iter().map(String::as_str).collect();
    let mut settlement = Settlement::default();
    let mut dead = Vec::new();
    for message in &batch {
        // The handler's first word on a message wins (JS ignores a later contrary one): an
        // explicit retry() came before any ackAll(); an explicit ack() holds even if the
        // handler throws, as Cloudflare documents.
        let explicit = outcome.retries.iter().find(|r| r.id == message.id);
        let retry = if let Some(retry) = explicit {
            Some(retry.delay_seconds)
        } else if acks.contains(message.id.as_str()) || outcome.ack_all {
            None
        } else if outcome.retry_all || !outcome.ok {
            Some(None)
        } else {
            None
        };
        let Some(delay) = retry else {
            settlement.acked.push(message.seq);
            continue;
        };
        // This delivery failed; another is allowed while fewer than max_retries failed before.
        if message.failed_attempts < i64::from(settings.max_retries) {
            let delay = delay
                .or(outcome.retry_all_delay)
                .unwrap_or(settings.retry_delay);
            settlement
                .retried
                .push((message.seq, now + i64::from(delay) * 1000));
            continue;
        }
        let attempts = settings.max_retries + 1;
        if consumer.dead_letter.is_some() {
            tracing::warn!(
                queue = %settings.queue,
                "moving message \"{}\" to dead letter queue \"{}\" after {attempts} failed attempt(s)",
                message.id,
                settings.dead_letter_queue.as_deref().unwrap_or_default()
            );
            settlement.dead_lettered.push(message.seq);
            dead.push(NewMessage {
                id: message.id.clone(),
                body: message.body.clone(),
                content_type: message.content_type.clone(),
                timestamp: message.timestamp,
                visible_at: now,
            });
        } else {
            tracing::warn!(
                queue = %settings.queue,
                "dropped message \"{}\" after {attempts} failed attempt(s)",
                message.id
            );
            settlement.dropped.push(message.seq);
        }
    }
    let claimed = batch
        .iter()
        .fold((0i64, 0i64), |(n, b), m| (n + 1, b + m.body.len() as i64));
    // Acked, dead-lettered and dropped messages leave the queue.
    let freed = batch
        .iter()
        .filter(|m| !settlement.retried.iter().any(|(seq, _)| *seq == m.seq))
        .fold((0i64, 0i64), |(n, b), m| (n + 1, b + m.body.len() as i64));
    let last = LastBatch {
        at: handed,
        messages: batch.len(),
        acked: settlement.acked.len(),
        retried: settlement.retried.len(),
        dead_lettered: settlement.dead_lettered.len(),
        dropped: settlement.dropped.len(),
        error: outcome.error.clone(),
        ms: (started.elapsed().as_secs_f64() * 100_000.0).round() / 100.0,
    };
    tracing::info!(
        worker = %consumer.worker,
        "QUEUE {} {}/{} ({} ms)",
        settings.queue,
        last.acked,
        last.messages,
        last.ms
    );
    metrics::counter!("dorun_queue_messages_total", "queue" => settings.queue.clone(), "outcome" => "acked")
        .increment(last.acked as u64);
    metrics::counter!("dorun_queue_messages_total", "queue" => settings.queue.clone(), "outcome" => "retried")
        .increment(last.retried as u64);
    metrics::counter!("dorun_queue_messages_total", "queue" => settings.queue.clone(), "outcome" => "dead_lettered")
        .increment(last.dead_lettered as u64);
    metrics::counter!("dorun_queue_messages_total", "queue" => settings.queue.clone(), "outcome" => "dropped")
        .increment(last.dropped as u64);
    metrics::histogram!("dorun_queue_batch_seconds", "queue" => settings.queue.clone())
        .record(started.elapsed().as_secs_f64());
    let settled = {
        let consumer = consumer.clone();
        tokio::task::spawn_blocking(move || {
            // Into the dead-letter queue first: a crash in between delivers a message twice,
            // never loses it.
            if let Some(dead_letter) = &consumer.dead_letter {
                if !dead.is_empty() {
                    dead_letter.enqueue(dead)?;
                }
            }
            consumer.handle.settle(settlement, claimed, freed)
        })
        .await
    };
    match settled {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!(
            queue = %settings.queue,
            "cannot settle a batch (its messages will be delivered again): {error}"
        ),
        Err(_) => tracing::error!(queue = %settings.queue, "cannot settle a batch"),
    }
    {
        let mut in_flight = consumer.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        for message in &batch {
            in_flight.remove(&message.seq);
        }
    }
    consumer.batches.fetch_add(1, Ordering::Relaxed);
    *consumer.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(last);
    // Retried messages may be ready again, and a slot is free.
    consumer.handle.arrived.notify_one();
}
