//! `/metrics` in Prometheus's text format, rendered by `metrics-exporter-prometheus` (no
//! listener of its own): counters and histograms are recorded where things happen (the
//! front door, commits, alarms, isolate resets, object activations and evictions); gauges
//! that describe the current state (resident and hibernated objects, sockets, storage
//! bytes, scheduled alarms) are read when scraped.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Instant;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::catalog;
use super::{respond, text, Admin, AdminResponse};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Bucket bounds (seconds) for every histogram: requests, commits, alarm lag.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the process's metrics recorder (once; metrics are free no-ops without it).
pub fn install() {
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .expect("bucket list is not empty");
        let handle = match builder.install_recorder() {
            Ok(handle) => handle,
            Err(error) => {
                tracing::warn!("metrics recorder: {error}");
                PrometheusBuilder::new().build_recorder().handle()
            }
        };
        describe();
        handle
    });
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "dorun_requests_total",
        "HTTP requests answered by the front door"
    );
    describe_histogram!(
        "dorun_request_duration_seconds",
        Unit::Seconds,
        "Time to the response head"
    );
    describe_counter!(
        "dorun_object_activations_total",
        "Durable Object instances built"
    );
    describe_counter!(
        "dorun_object_evictions_total",
        "Idle Durable Object instances dropped"
    );
    describe_histogram!(
        "dorun_storage_commit_seconds",
        Unit::Seconds,
        "Writing a commit on the isolate thread (under --durability full its flush is counted in dorun_storage_durable_seconds)"
    );
    describe_histogram!(
        "dorun_storage_durable_seconds",
        Unit::Seconds,
        "From a commit written to its flush done (--durability full): how long what it gates waits for the disk"
    );
    describe_histogram!(
        "dorun_alarm_lag_seconds",
        Unit::Seconds,
        "How late alarms fire (first tries)"
    );
    describe_counter!(
        "dorun_alarm_retries_total",
        "Alarm retries after alarm() threw"
    );
    describe_counter!(
        "dorun_isolate_terminations_total",
        "Isolates terminated at the CPU or heap limit"
    );
    describe_counter!(
        "dorun_admin_resets_total",
        "Resets through the admin listener"
    );
    describe_gauge!("dorun_objects_resident", "Durable Objects in memory");
    describe_gauge!(
        "dorun_objects_hibernated",
        "Objects out of memory that hold hibernatable WebSockets"
    );
    describe_gauge!("dorun_objects_stored", "Durable Objects with a file");
    describe_gauge!(
        "dorun_storage_bytes",
        Unit::Bytes,
        "Bytes of object files (with WAL)"
    );
    describe_gauge!("dorun_websockets_open", "Open WebSockets");
    describe_gauge!("dorun_alarms_scheduled", "Alarms scheduled");
    describe_gauge!("dorun_queue_depth", "Messages stored in a queue");
    describe_gauge!(
        "dorun_queue_ready",
        "Messages of a queue whose delay has passed"
    );
    describe_gauge!(
        "dorun_queue_in_flight",
        "Messages of a queue being delivered"
    );
    describe_counter!(
        "dorun_queue_messages_total",
        "Delivered messages by outcome (acked, retried, dead_lettered, dropped)"
    );
    describe_histogram!(
        "dorun_queue_batch_seconds",
        Unit::Seconds,
        "Time a queue() batch took, settling included"
    );
    describe_gauge!(
        "dorun_isolate_queue_depth",
        "Worker requests handed to an isolate thread and not yet answered"
    );
}

/// A front-door request answered with `status`, `started` when it arrived.
pub fn record_request(worker: &str, status: http::StatusCode, started: Instant) {
    if HANDLE.get().is_none() {
        return;
    }
    let class = match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    let worker = worker.to_string();
    metrics::counter!("dorun_requests_total", "worker" => worker.clone(), "status" => class)
        .increment(1);
    metrics::histogram!("dorun_request_duration_seconds", "worker" => worker)
        .record(started.elapsed().as_secs_f64());
}

pub fn record_reset() {
    metrics::counter!("dorun_admin_resets_total").increment(1);
}

/// Sets the gauges that describe the current state.
async fn sample(admin: &Admin) {
    let (open, hibernatable) = admin.sockets.counts();
    metrics::gauge!("dorun_websockets_open", "kind" => "hibernatable").set(hibernatable as f64);
    metrics::gauge!("dorun_websockets_open", "kind" => "standard")
        .set((open - hibernatable) as f64);
    let with_sockets = admin.sockets.objects_with_sockets();
    let mut resident_by_pool = HashMap::new();
    for (index, pool) in admin.pools.iter().enumerate() {
        resident_by_pool.insert(index, catalog::resident(pool).await);
        let name = pool.spec().name.clone();
        metrics::gauge!("dorun_alarms_scheduled", "worker" => name.clone())
            .set(pool.alarms().scheduled().len() as f64);
        for (thread, depth) in pool.outstanding().into_iter().enumerate() {
            let labels = [("worker", name.clone()), ("thread", thread.to_string())];
            metrics::gauge!("dorun_isolate_queue_depth", &labels).set(depth as f64);
        }
    }
    for ns in catalog::namespaces(&admin.pools) {
        let labels = [("worker", ns.worker.clone()), ("class", ns.class.clone())];
        let files = catalog::object_files(&ns.dir);
        let pool = admin
            .pools
            .iter()
            .position(|p| std::sync::Arc::ptr_eq(p, &ns.pool));
        let resident = pool.and_then(|p| resident_by_pool.get(&p));
        let resident_here = resident
            .map(|r| r.keys().filter(|(i, _)| *i == ns.index).count())
            .unwrap_or(0);
        let hibernated = with_sockets
            .iter()
            .filter(|k| *k.worker == *ns.worker && k.namespace == ns.index)
            .filter(|k| {
                !resident.is_some_and(|r| r.contains_key(&(k.namespace, k.object_id.clone())))
            })
            .count();
        metrics::gauge!("dorun_objects_resident", &labels).set(resident_here as f64);
        metrics::gauge!("dorun_objects_hibernated", &labels).set(hibernated as f64);
        metrics::gauge!("dorun_objects_stored", &labels).set(files.len() as f64);
        let bytes: u64 = files.iter().map(|f| f.bytes).sum();
        metrics::gauge!("dorun_storage_bytes", &labels).set(bytes as f64);
    }
}

pub async fn render(admin: &Admin) -> AdminResponse {
    let Some(handle) = HANDLE.get() else {
        return text(503, "metrics are not enabled\n");
    };
    sample(admin).await;
    super::arrivals::sample(admin).await;
    respond(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        handle.render().into(),
    )
}
