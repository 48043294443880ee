//! The admin JSON API. Every route answers JSON; errors are `{"error": "..."}` with a
//! 4xx/5xx status.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /api/namespaces` | each namespace: worker, class, binding, objects, bytes |
//! | `GET /api/namespaces/{ns}/objects` | its objects: bytes, last activity, resident, alarm |
//! | `GET /api/namespaces/{ns}/id?name=` | the id `idFromName(name)` gives in that namespace |
//! | `GET /api/objects/{ns}/{id}` | one object |
//! | `GET /api/objects/{ns}/{id}/kv?prefix=&start=&limit=` | its KV entries, values decoded |
//! | `POST /api/objects/{ns}/{id}/sql` `{"query": "..."}` | SQL on it (KV table readable) |
//! | `GET`/`DELETE /api/objects/{ns}/{id}/alarm` | its alarm; delete it |
//! | `POST /api/objects/{ns}/{id}/alarm/run` | run its alarm now (answers once `alarm()` returned) |
//! | `POST /api/objects/{ns}/{id}/evict` | drop it from memory (writes committed) |
//! | `POST /api/objects/{ns}/{id}/import` (body: a SQLite file) | replace its storage |
//! | `GET /api/objects/{ns}/{id}/export` | a consistent copy of its SQLite file (the body) |
//! | `GET /api/kv` | KV namespaces: id and live keys |
//! | `GET /api/kv/{id}/keys?prefix=&limit=` | a namespace's keys |
//! | `GET`/`PUT`/`DELETE /api/kv/{id}/values/{key}` | one value (the body, raw) |
//! | `GET /api/d1` | D1 databases: name, tables and their rows |
//! | `POST /api/d1/{name}/sql` `{"query": "..."}` | SQL on a database, in one transaction |
//! | `GET /api/r2`, `GET /api/r2/{bucket}/objects?prefix=` | R2 buckets; a bucket's objects |
//! | `GET`/`DELETE /api/r2/{bucket}/objects/{key}` | download or delete one object |
//! | `GET /api/queues`, `GET /api/queues/{name}/messages`, `POST /api/queues/{name}/purge` | queues (`arrivals.rs`) |
//! | `GET /api/crons` | cron triggers: next run, last run |
//! | `GET /api/replication` | `--replicate-to`: store, durability, generation, lag, pending commits, batches, bytes, why it stopped |
//! | `GET /api/workflows`, `GET /api/workflows/{name}/instances[/{id}]` | workflows, instances, steps |
//! | `POST /api/namespaces/{ns}/reset` | that namespace's objects, alarms and sockets gone |
//! | `POST /api/reset` | every object, alarm and socket gone; KV keys, D1 rows, R2 objects and queued messages too |

use std::time::Instant;

use bytes::Bytes;
use dorun_runtime::mailbox::{AdminCommand, ResetHold};
use serde_json::{json, Value};

use super::catalog::{self, Namespace};
use super::{json, Admin, AdminResponse};

fn error(status: u16, message: impl std::fmt::Display) -> AdminResponse {
    json(status, &json!({ "error": message.to_string() }))
}

pub async fn route(admin: &Admin, parts: &http::request::Parts, body: Bytes) -> AdminResponse {
    let path = parts.uri.path().trim_end_matches('/');
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let method = &parts.method;
    let get = method == http::Method::GET;
    let post = method == http::Method::POST;
    match segments.as_slice() {
        ["api", "namespaces"] if get => {
            let list: Vec<Value> = namespaces(admin)
                .iter()
                .map(catalog::namespace_json)
                .collect();
            json(200, &Value::Array(list))
        }
        ["api", "namespaces", ns, "objects"] if get => match namespace(admin, ns) {
            Some(ns) => json(200, &catalog::objects_json(&ns).await),
            None => unknown_namespace(ns),
        },
        ["api", "namespaces", ns, "id"] if get => match namespace(admin, ns) {
            Some(ns) => id_from_name(&ns, parts),
            None => unknown_namespace(ns),
        },
        ["api", "namespaces", ns, "reset"] if post => match namespace(admin, ns) {
            Some(ns) => reset_namespace(admin, &ns).await,
            None => unknown_namespace(ns),
        },
        ["api", "reset"] if post => reset(admin).await,
        ["api", "kv", rest @ ..] => {
            super::bindings::kv_route(admin, method, rest, parts, body).await
        }
        ["api", "d1", rest @ ..] => super::bindings::d1_route(admin, method, rest, body).await,
        ["api", "r2", rest @ ..] => super::bindings::r2_route(admin, method, rest, parts).await,
        ["api", "queues", rest @ ..] => {
            super::arrivals::queue_route(admin, method, rest, parts).await
        }
        ["api", "crons"] if get => json(200, &super::arrivals::crons_json(admin)),
        ["api", "replication"] if get => json(
            200,
            &admin
                .replication
                .as_ref()
                .map_or_else(|| json!({ "enabled": false }), |r| r.status_json()),
        ),
        ["api", "workflows", rest @ ..] => {
            super::arrivals::workflow_route(admin, method, rest, parts).await
        }
        ["api", "objects", ns, id, rest @ ..] => {
            let Some(ns) = namespace(admin, ns) else {
                return unknown_namespace(ns);
            };
            if !catalog::is_object_id(id) {
                return error(400, format!("'{id}' is not an object id (64 hex digits)"));
            }
            let id = id.to_ascii_lowercase();
            object_route(&ns, &id, method, rest, parts, body).await
        }
        ["api", ..] => error(404, format!("no admin route {method} {path}")),
        _ => error(404, format!("not found: {path}")),
    }
}

async fn object_route(
    ns: &Namespace,
    id: &str,
    method: &http::Method,
    rest: &[&str],
    parts: &http::request::Parts,
    body: Bytes,
) -> AdminResponse {
    let get = method == http::Method::GET;
    let post = method == http::Method::POST;
    match rest {
        [] if get => {
            let resident = catalog::resident(&ns.pool).await;
            let alarms = catalog::alarms(&ns.pool);
            json(200, &catalog::object_json(ns, id, &resident, &alarms))
        }
        ["kv"] if get => {
            let params = super::query_params(parts);
            let limit = params.get("limit").and_then(|l| l.parse::<u32>().ok());
            let request = json!({
                "op": "kv",
                "prefix": params.get("prefix"),
                "start": params.get("start"),
                "limit": limit.unwrap_or(1000),
            });
            object_request(ns, id, request).await
        }
        ["sql"] if post => {
            let query = match serde_json::from_slice::<Value>(&body) {
                Ok(value) => value["query"].as_str().map(str::to_string),
                Err(_) => String::from_utf8(body.to_vec()).ok(),
            };
            let Some(query) = query else {
                return error(400, "send {\"query\": \"SELECT ...\"}");
            };
            object_request(ns, id, json!({"op": "sql", "query": query})).await
        }
        ["alarm"] if get => object_request(ns, id, json!({"op": "alarm"})).await,
        ["alarm"] if method == http::Method::DELETE => {
            object_request(ns, id, json!({"op": "deleteAlarm"})).await
        }
        ["alarm", "run"] if post => run_alarm(ns, id).await,
        ["evict"] if post => {
            let command = AdminCommand::Evict {
                namespace: ns.index,
                object_id: id.to_string(),
            };
            match ns.pool.admin(ns.pool.thread_of(id), command).await {
                Ok(value) => json(200, &value),
                Err(e) => error(503, e),
            }
        }
        ["import"] if post => import(ns, id, body).await,
        ["export"] if get => export(ns, id).await,
        _ => error(404, format!("no admin route {method} {}", parts.uri.path())),
    }
}

/// The id `idFromName(name)` gives in the namespace.
fn id_from_name(ns: &Namespace, parts: &http::request::Parts) -> AdminResponse {
    let params = super::query_params(parts);
    let Some(name) = params.get("name") else {
        return error(400, "send ?name=<the object's name>");
    };
    match ns.pool.spec().objects.namespace(ns.index) {
        Ok(namespace) => json(
            200,
            &json!({ "name": name, "id": namespace.id_from_name(name) }),
        ),
        Err(e) => error(500, e),
    }
}

/// Runs the object's alarm now and answers once its `alarm()` has returned (or thrown:
/// then it is retried later, as a failed alarm is).
async fn run_alarm(ns: &Namespace, id: &str) -> AdminResponse {
    use dorun_runtime::alarms::RunNowError;
    use dorun_runtime::mailbox::AlarmOutcome;
    match ns.pool.run_alarm_now(ns.index, id).await {
        Ok((scheduled, outcome)) => {
            let (outcome, next) = match outcome {
                AlarmOutcome::Done => ("done", None),
                AlarmOutcome::Retry => ("retry", None),
                AlarmOutcome::Stale(next) => ("stale", next),
            };
            json(
                200,
                &json!({ "ran": true, "scheduled": scheduled, "outcome": outcome, "next": next }),
            )
        }
        Err(RunNowError::NoAlarm) => json(200, &json!({ "ran": false, "reason": "no alarm" })),
        Err(e @ RunNowError::Running) => error(409, e),
        Err(e @ RunNowError::ShuttingDown) => error(503, e),
    }
}

/// Replaces the object's storage with the SQLite file in `body` (see `dorun import`).
async fn import(ns: &Namespace, id: &str, body: Bytes) -> AdminResponse {
    if !body.starts_with(b"SQLite format 3\0") {
        return error(400, "the body is not a SQLite database file");
    }
    let temp = scratch_file(ns, "import");
    if let Err(e) = std::fs::write(&temp, &body) {
        return error(500, format!("{}: {e}", temp.display()));
    }
    let request = json!({"op": "restore", "source": temp.to_string_lossy()});
    let response = object_request(ns, id, request).await;
    let _ = std::fs::remove_file(&temp);
    response
}

/// A consistent copy of the object's SQLite file, taken on its thread (see `dorun export`).
async fn export(ns: &Namespace, id: &str) -> AdminResponse {
    let target = scratch_file(ns, "export");
    let request = json!({"op": "snapshot", "target": target.to_string_lossy()});
    let response = object_request(ns, id, request).await;
    if !response.status().is_success() {
        let _ = std::fs::remove_file(&target);
        return response;
    }
    let read = std::fs::read(&target);
    let _ = std::fs::remove_file(&target);
    match read {
        Ok(bytes) => super::respond(200, "application/vnd.sqlite3", Bytes::from(bytes)),
        Err(e) => error(500, format!("{}: {e}", target.display())),
    }
}

/// A file name beside the namespace's directory, unique in this process.
fn scratch_file(ns: &Namespace, what: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ns.dir
        .with_file_name(format!(".{what}-{}-{n}.sqlite", std::process::id()))
}

/// Runs a storage request on the object's thread.
async fn object_request(ns: &Namespace, id: &str, request: Value) -> AdminResponse {
    let command = AdminCommand::Object {
        namespace: ns.index,
        object_id: id.to_string(),
        request: request.to_string(),
    };
    match ns.pool.admin(ns.pool.thread_of(id), command).await {
        Ok(value) => match value.get("error") {
            Some(message) => {
                let status = value["status"].as_u64().unwrap_or(400) as u16;
                error(status, message.as_str().unwrap_or("failed"))
            }
            None => json(200, &value),
        },
        Err(e) => error(503, e),
    }
}

fn namespaces(admin: &Admin) -> Vec<Namespace> {
    catalog::namespaces(&admin.pools)
}

fn namespace(admin: &Admin, key: &str) -> Option<Namespace> {
    namespaces(admin).into_iter().find(|ns| ns.key == key)
}

fn unknown_namespace(key: &str) -> AdminResponse {
    error(
        404,
        format!("no namespace '{key}' (GET /api/namespaces lists them)"),
    )
}

/// How long a reset waits for every isolate thread to drop its objects.
const RESET_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why an operator's reset closes a WebSocket (with code 1012).
const RESET_REASON: &str = "dorun was reset by an operator";

/// Every alarm, socket and object gone. Sockets are closed and forgotten first (none of
/// their events recreates an object); then every isolate thread drops its objects and is
/// held at a barrier while the alarms are forgotten and each namespace directory is renamed
/// into `<data-dir>/.trash` (one rename per namespace, however many objects: the files are
/// deleted by a background thread); then the threads are released.
pub async fn reset(admin: &Admin) -> AdminResponse {
    let started = Instant::now();
    let sockets = admin.sockets.reset(1012, RESET_REASON);
    let dropped = match drop_objects(admin, None).await {
        Ok(dropped) => dropped,
        Err(response) => return response,
    };
    super::metrics::record_reset();
    let (kv_keys, d1_rows, r2_objects, queue_messages) = match super::bindings::reset(admin).await {
        Ok(counts) => counts,
        Err(message) => return error(500, message),
    };
    json(
        200,
        &json!({
            "objects": dropped.objects,
            "resident": dropped.resident,
            "alarms": dropped.alarms,
            "sockets": sockets,
            "kvKeys": kv_keys,
            "d1Rows": d1_rows,
            "r2Objects": r2_objects,
            "queueMessages": queue_messages,
            "heldMs": round_ms(dropped.held_ms),
            "ms": round_ms(started.elapsed().as_secs_f64() * 1000.0),
        }),
    )
}

/// The objects of one namespace gone, with their alarms and WebSockets (hibernatable ones
/// through the registry, the others closed by the thread that drops their object); the
/// rest of the data directory and the storage bindings untouched. Only the owning worker's
/// threads are held.
async fn reset_namespace(admin: &Admin, ns: &Namespace) -> AdminResponse {
    let started = Instant::now();
    let hibernatable = admin
        .sockets
        .reset_namespace(&ns.worker, ns.index, 1012, RESET_REASON);
    let dropped = match drop_objects(admin, Some(ns)).await {
        Ok(dropped) => dropped,
        Err(response) => return response,
    };
    super::metrics::record_reset();
    json(
        200,
        &json!({
            "namespace": ns.key,
            "objects": dropped.objects,
            "resident": dropped.resident,
            "alarms": dropped.alarms,
            "sockets": hibernatable as u64 + dropped.sockets,
            "heldMs": round_ms(dropped.held_ms),
            "ms": round_ms(started.elapsed().as_secs_f64() * 1000.0),
        }),
    )
}

fn round_ms(ms: f64) -> f64 {
    (ms * 100.0).round() / 100.0
}

/// What [`drop_objects`] dropped.
struct Dropped {
    /// Objects with a file.
    objects: usize,
    /// Objects that were in memory.
    resident: u32,
    alarms: usize,
    /// WebSockets closed by the isolate threads (a namespace's reset).
    sockets: u64,
    held_ms: f64,
}

/// Drops the objects (of `only`, or all), holds their threads at a barrier while their
/// alarms are forgotten and their namespace directories moved into the trash, then
/// releases them.
async fn drop_objects(admin: &Admin, only: Option<&Namespace>) -> Result<Dropped, AdminResponse> {
    let started = Instant::now();
    let pools = match only {
        Some(ns) => vec![ns.pool.clone()],
        None => admin.pools.clone(),
    };
    let (mut tasks, mut dropped, mut releases) = (Vec::new(), Vec::new(), Vec::new());
    for pool in &pools {
        for thread in 0..pool.thread_count() {
            let (dropped_tx, dropped_rx) = std::sync::mpsc::channel();
            let (release_tx, release_rx) = std::sync::mpsc::channel();
            let hold = ResetHold {
                dropped: dropped_tx,
                release: release_rx,
                namespace: only.map(|ns| ns.index),
            };
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                pool.admin(thread, AdminCommand::Reset(hold)).await
            }));
            dropped.push(dropped_rx);
            releases.push(release_tx);
        }
    }
    let counts = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + RESET_WAIT;
        dropped
            .iter()
            .map(|rx| {
                rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                    .ok()
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    let held = counts.iter().all(Option::is_some);
    let held_ms = started.elapsed().as_secs_f64() * 1000.0;
    let recorded = match (&admin.replication, held) {
        (Some(replication), true) => record_reset(admin, replication, only).await,
        _ => Ok(()),
    };
    let (alarms, objects) = match (held && recorded.is_ok(), only) {
        (false, _) => (0, 0),
        (true, Some(ns)) => (
            ns.pool.alarms().clear_namespace(ns.index),
            move_away(admin, only),
        ),
        (true, None) => {
            let alarms: usize = pools.iter().map(|p| p.alarms().clear()).sum();
            (alarms, move_away(admin, None))
        }
    };
    for release in releases {
        let _ = release.send(());
    }
    let mut sockets = 0;
    for task in tasks {
        if let Ok(Ok(value)) = task.await {
            sockets += value["sockets"].as_u64().unwrap_or(0);
        }
    }
    if !held {
        return Err(error(
            503,
            "an isolate thread did not answer the reset within 10 s (busy?); nothing was deleted",
        ));
    }
    if let Err(why) = recorded {
        return Err(error(
            503,
            format!("the reset could not be recorded in the replication store ({why}); nothing was deleted"),
        ));
    }
    Ok(Dropped {
        objects,
        resident: counts.into_iter().flatten().sum(),
        alarms,
        sockets,
        held_ms,
    })
}

/// With `--replicate-to`, tells the store that the namespaces' objects are gone before
/// their files go (a new generation naming them), so a restore does not bring them back.
async fn record_reset(
    admin: &Admin,
    replication: &std::sync::Arc<dorun_storage::replica::Replication>,
    only: Option<&Namespace>,
) -> Result<(), String> {
    let names: Vec<String> = namespaces(admin)
        .into_iter()
        .filter(|ns| only.is_none_or(|only| only.key == ns.key))
        .filter_map(|ns| Some(ns.dir.file_name()?.to_string_lossy().into_owned()))
        .collect();
    let replication = replication.clone();
    tokio::task::spawn_blocking(move || {
        replication
            .replicator
            .begin_generation(names, std::time::Duration::from_secs(5))
    })
    .await
    .map_err(|e| e.to_string())?
    .map(|_| ())
}

/// Renames every namespace directory (or `only`'s) into `<data-dir>/.trash` and deletes it
/// there in the background. Returns how many objects they held.
fn move_away(admin: &Admin, only: Option<&Namespace>) -> usize {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let trash = admin.data_dir.join(".trash");
    let mut objects = 0;
    let mut moved = Vec::new();
    for ns in namespaces(admin) {
        if only.is_some_and(|only| only.key != ns.key) {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&ns.dir) else {
            continue;
        };
        objects += entries
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".sqlite"))
                    .is_some_and(catalog::is_object_id)
            })
            .count();
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let target = trash.join(format!("{}-{}-{n}", ns.key, std::process::id()));
        let _ = std::fs::create_dir_all(&trash);
        match std::fs::rename(&ns.dir, &target) {
            Ok(()) => moved.push(target),
            Err(error) => tracing::warn!("reset: cannot move {}: {error}", ns.dir.display()),
        }
    }
    empty_trash_later(moved);
    objects
}

/// Deletes `dirs` on a background thread.
pub fn empty_trash_later(dirs: Vec<std::path::PathBuf>) {
    if dirs.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("dorun-trash".into())
        .spawn(move || {
            for dir in dirs {
                if let Err(error) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!("cannot delete {}: {error}", dir.display());
                }
            }
        });
    if let Err(error) = spawned {
        tracing::warn!("cannot start the trash thread: {error}");
    }
}
