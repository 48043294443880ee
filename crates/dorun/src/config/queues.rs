//! `queues = { producers = [{ binding, queue, delivery_delay }], consumers = [{ queue,
//! max_batch_size, max_batch_timeout, max_retries, dead_letter_queue, max_concurrency,
//! retry_delay }] }`, checked against Cloudflare's limits. Unset consumer settings take
//! `wrangler dev`'s defaults (batches of 5, 1 s, 2 retries), which differ from the
//! production defaults Cloudflare documents (10, 5 s, 3).

use std::time::Duration;

use super::*;

pub use dorun_runtime::queue_binding::QueueProducer;

/// `wrangler dev`'s defaults (Miniflare's queue broker).
pub const DEFAULT_BATCH_SIZE: usize = 5;
pub const DEFAULT_BATCH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_RETRIES: u32 = 2;

/// One `queues.consumers` entry: this worker's `queue()` receives the queue's messages.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueConsumer {
    pub queue: String,
    /// Messages in a batch, at most (1–100).
    pub max_batch_size: usize,
    /// How long a batch waits to fill up (0–60 s).
    pub max_batch_timeout: Duration,
    /// Deliveries after the first before a message is dead-lettered or dropped (0–100).
    pub max_retries: u32,
    pub dead_letter_queue: Option<String>,
    /// Batches delivered at once (1–250); unset: four per isolate thread.
    pub max_concurrency: Option<usize>,
    /// Seconds before a retried message is delivered again, unless `retry()` says.
    pub retry_delay: u32,
    /// `type = "http_pull"`: pulled over Cloudflare's HTTP API, which dorun does not serve;
    /// the messages stay stored.
    pub pull: bool,
}

impl Reader {
    /// (producers, consumers) of `queues`.
    pub(super) fn read_queues(
        &mut self,
        table: &Map<String, Value>,
    ) -> (Vec<QueueProducer>, Vec<QueueConsumer>) {
        let (mut producers, mut consumers) = (Vec::new(), Vec::new());
        let Some(queues) = table.get("queues") else {
            return (producers, consumers);
        };
        let Some(queues) = queues.as_object() else {
            self.problems
                .push("key 'queues' must be a table / object".into());
            return (producers, consumers);
        };
        for key in queues.keys() {
            if key != "producers" && key != "consumers" {
                self.warnings
                    .push(format!("unknown key 'queues.{key}' is ignored"));
            }
        }
        let known = [
            "binding",
            "queue",
            "delivery_delay",
            "remote",
            "experimental_remote",
        ];
        for (at, binding, entry) in self.binding_entries(queues, "producers", &known) {
            let at = format!("queues.{at}");
            let Some(queue) = self.queue_name(&at, entry) else {
                continue;
            };
            let delivery_delay = self.whole_number(&at, entry, "delivery_delay", 0.0, 86_400.0);
            producers.push(QueueProducer {
                binding,
                queue,
                delivery_delay: delivery_delay.map(|d| d as u32),
            });
        }
        let Some(items) = queues.get("consumers") else {
            return (producers, consumers);
        };
        let Some(items) = items.as_array() else {
            self.problems
                .push("key 'queues.consumers' must be an array".into());
            return (producers, consumers);
        };
        let known = [
            "queue",
            "type",
            "max_batch_size",
            "max_batch_timeout",
            "max_retries",
            "dead_letter_queue",
            "max_concurrency",
            "retry_delay",
            "visibility_timeout_ms",
        ];
        for (index, item) in items.iter().enumerate() {
            let at = format!("queues.consumers[{index}]");
            let Some(entry) = item.as_object() else {
                self.problems.push(format!("{at} must be a table / object"));
                continue;
            };
            for name in entry.keys() {
                if !known.contains(&name.as_str()) {
                    self.warnings
                        .push(format!("unknown key '{at}.{name}' is ignored"));
                }
            }
            let Some(queue) = self.queue_name(&at, entry) else {
                continue;
            };
            if consumers.iter().any(|c: &QueueConsumer| c.queue == queue) {
                self.problems.push(format!(
                    "{at}: queue '{queue}' has a consumer already (a queue has one consumer)"
                ));
                continue;
            }
            let pull = match entry.get("type").and_then(Value::as_str) {
                None | Some("worker") => false,
                Some("http_pull") => true,
                Some(other) => {
                    self.problems.push(format!(
                        "{at}.type must be \"worker\" or \"http_pull\", found \"{other}\""
                    ));
                    false
                }
            };
            let timeout = match entry.get("max_batch_timeout") {
                None => DEFAULT_BATCH_TIMEOUT,
                Some(value) => match value.as_f64() {
                    Some(s) if (0.0..=60.0).contains(&s) => Duration::from_secs_f64(s),
                    _ => {
                        self.problems.push(format!(
                            "{at}.max_batch_timeout must be a number of seconds from 0 to 60"
                        ));
                        DEFAULT_BATCH_TIMEOUT
                    }
                },
            };
            let dead_letter_queue = match entry.get("dead_letter_queue") {
                None => None,
                Some(Value::String(name)) if !name.is_empty() && *name != queue => {
                    Some(name.clone())
                }
                Some(_) => {
                    self.problems
                        .push(format!("{at}.dead_letter_queue must name another queue"));
                    None
                }
            };
            consumers.push(QueueConsumer {
                max_batch_size: self
                    .whole_number(&at, entry, "max_batch_size", 1.0, 100.0)
                    .map_or(DEFAULT_BATCH_SIZE, |n| n as usize),
                max_batch_timeout: timeout,
                max_retries: self
                    .whole_number(&at, entry, "max_retries", 0.0, 100.0)
                    .map_or(DEFAULT_RETRIES, |n| n as u32),
                dead_letter_queue,
                max_concurrency: self
                    .whole_number(&at, entry, "max_concurrency", 1.0, 250.0)
                    .map(|n| n as usize),
                retry_delay: self
                    .whole_number(&at, entry, "retry_delay", 0.0, 86_400.0)
                    .map_or(0, |n| n as u32),
                pull,
                queue,
            });
        }
        (producers, consumers)
    }

    fn queue_name(&mut self, at: &str, entry: &Map<String, Value>) -> Option<String> {
        match entry.get("queue") {
            Some(Value::String(name)) if !name.is_empty() => Some(name.clone()),
            _ => {
                self.problems
                    .push(format!("{at} needs a non-empty string key 'queue'"));
                None
            }
        }
    }

    /// `entry.key` as a whole number from `min` to `max`, if set (a problem otherwise).
    fn whole_number(
        &mut self,
        at: &str,
        entry: &Map<String, Value>,
        key: &str,
        min: f64,
        max: f64,
    ) -> Option<u64> {
        let value = entry.get(key)?;
        match value.as_f64() {
            Some(n) if n.fract() == 0.0 && (min..=max).contains(&n) => Some(n as u64),
            _ => {
                self.problems.push(format!(
                    "{at}.{key} must be a whole number from {min} to {max}, found {value}"
                ));
                None
            }
        }
    }
}
