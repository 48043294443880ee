//! The admin API's view of the other bindings' data: KV namespaces (list keys, read, write,
//! delete a value) and D1 databases (tables, SQL), and what a reset clears of them (every
//! KV key; every D1 row but the record of applied migrations, so a test suite's schema
//! stays). Everything works on the files under the data directory, through the same
//! process-wide connections the Workers use, on blocking threads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use dorun_runtime::{d1_binding, kv_binding, queue_binding, r2_binding};
use dorun_storage::{d1_message, Durability, KvEntry, StorageError};
use serde_json::{json, Value};

use super::{json, respond, Admin, AdminResponse};

fn error(status: u16, message: impl std::fmt::Display) -> AdminResponse {
    json(status, &json!({ "error": message.to_string() }))
}

fn durability(admin: &Admin) -> Durability {
    admin
        .pools
        .first()
        .map(|pool| pool.spec().objects.durability)
        .unwrap_or_default()
}

/// A file's stem: the namespace id or database name it was made from (percent-decoded).
pub(super) fn stem(file: &Path) -> String {
    percent_decode(
        file.file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default(),
    )
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal error: {e}"))?
}

/// Clears every KV key, every D1 row, every R2 object, every queued message and every
/// workflow instance; (keys, rows, objects, messages) deleted.
pub async fn reset(admin: &Admin) -> Result<(u64, u64, u64, u64), String> {
    let (data_dir, durability) = (admin.data_dir.clone(), durability(admin));
    blocking(move || {
        let keys = kv_binding::reset_all(&data_dir, durability).map_err(|e| e.to_string())?;
        let rows = d1_binding::reset_all(&data_dir, durability).map_err(|e| d1_message(&e))?;
        let objects = r2_binding::reset_all(&data_dir, durability).map_err(|e| e.to_string())?;
        let mut messages = 0;
        for file in queue_binding::queue_files(&data_dir) {
            let handle = queue_binding::open(&data_dir, &stem(&file), durability)
                .map_err(|e| e.to_string())?;
            messages += handle.purge().map_err(|e| e.to_string())?;
        }
        for file in dorun_runtime::workflow_binding::workflow_files(&data_dir) {
            let handle = dorun_runtime::workflow_binding::open(&data_dir, &stem(&file), durability)
                .map_err(|e| e.to_string())?;
            handle.with(|db| db.clear()).map_err(|e| e.to_string())?;
        }
        Ok((keys, rows, objects, messages))
    })
    .await
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub async fn kv_route(
    admin: &Admin,
    method: &http::Method,
    rest: &[&str],
    parts: &http::request::Parts,
    body: Bytes,
) -> AdminResponse {
    let (data_dir, durability) = (admin.data_dir.clone(), durability(admin));
    let get = method == http::Method::GET;
    match rest {
        [] if get => {
            let answer = blocking(move || {
                let mut list = Vec::new();
                for file in kv_binding::namespace_files(&data_dir) {
                    let database =
                        kv_binding::database(&file, durability).map_err(|e| e.to_string())?;
                    let keys = database
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .count(now_seconds())
                        .map_err(|e| e.to_string())?;
                    list.push(json!({"id": stem(&file), "file": file, "keys": keys}));
                }
                Ok(Value::Array(list))
            })
            .await;
            reply(answer)
        }
        [id, "keys"] if get => {
            let file = existing(kv_binding::namespace_file(&data_dir, id));
            let Some(file) = file else {
                return error(404, format!("no KV namespace '{id}'"));
            };
            let params = super::query_params(parts);
            let prefix = params.get("prefix").cloned().unwrap_or_default();
            let limit = params
                .get("limit")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(1000)
                .min(10_000);
            let answer = blocking(move || {
                let database = kv_binding::database(&file, durability).map_err(|e| e.to_string())?;
                let (keys, more) = database
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .list(&prefix, None, limit, now_seconds())
                    .map_err(|e| e.to_string())?;
                let keys: Vec<Value> = keys
                    .into_iter()
                    .map(|k| json!({"name": k.name, "expiration": k.expiration, "metadata": k.metadata.and_then(|m| serde_json::from_str::<Value>(&m).ok())}))
                    .collect();
                Ok(json!({"keys": keys, "complete": !more}))
            })
            .await;
            reply(answer)
        }
        [id, "values", key @ ..] if !key.is_empty() => {
            let key = percent_decode(&key.join("/"));
            let file = kv_binding::namespace_file(&data_dir, id);
            if method != http::Method::PUT && !file.is_file() {
                return error(404, format!("no KV namespace '{id}'"));
            }
            let method = method.clone();
            let result = blocking(move || {
                let database =
                    kv_binding::database(&file, durability).map_err(|e| e.to_string())?;
                let database = database.lock().unwrap_or_else(|p| p.into_inner());
                let outcome: Result<Option<Vec<u8>>, StorageError> = match method {
                    http::Method::GET => database
                        .get(&key, now_seconds())
                        .map(|e| e.map(|e| e.value)),
                    http::Method::PUT => database
                        .put(
                            &key,
                            &KvEntry {
                                value: body.to_vec(),
                                metadata: None,
                                expiration: None,
                            },
                        )
                        .map(|()| Some(Vec::new())),
                    http::Method::DELETE => database.delete(&key).map(|()| Some(Vec::new())),
                    _ => return Err("method".into()),
                };
                outcome.map_err(|e| e.to_string())
            })
            .await;
            match result {
                Ok(Some(value)) => respond(200, "application/octet-stream", value.into()),
                Ok(None) => error(404, "no such key"),
                Err(message) if message == "method" => error(405, "GET, PUT or DELETE"),
                Err(message) => error(500, message),
            }
        }
        _ => error(
            404,
            format!("no admin route {method} /api/kv/{}", rest.join("/")),
        ),
    }
}

pub async fn r2_route(
    admin: &Admin,
    method: &http::Method,
    rest: &[&str],
    parts: &http::request::Parts,
) -> AdminResponse {
    let (data_dir, durability) = (admin.data_dir.clone(), durability(admin));
    let get = method == http::Method::GET;
    match rest {
        [] if get => {
            let answer = blocking(move || {
                let mut list = Vec::new();
                for dir in r2_binding::bucket_dirs(&data_dir) {
                    let bucket = r2_binding::bucket(&dir, durability).map_err(|e| e.to_string())?;
                    let keys = bucket
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .keys()
                        .map_err(|e| e.to_string())?;
                    let name = percent_decode(
                        dir.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
                    );
                    list.push(json!({"name": name, "dir": dir, "objects": keys.len()}));
                }
                Ok(Value::Array(list))
            })
            .await;
            reply(answer)
        }
        [name, "objects"] if get => {
            let dir = r2_binding::bucket_dir(&data_dir, name);
            if !dir.is_dir() {
                return error(404, format!("no R2 bucket '{name}'"));
            }
            let prefix = query(parts, "prefix").unwrap_or_default();
            let answer = blocking(move || {
                let bucket = r2_binding::bucket(&dir, durability).map_err(|e| e.to_string())?;
                let page = bucket
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .list(&prefix, None, 10_000, None)
                    .map_err(|e| e.to_string())?;
                let objects: Vec<Value> = page
                    .objects
                    .into_iter()
                    .map(|o| json!({"key": o.key, "size": o.size, "etag": o.etag, "uploaded": o.uploaded}))
                    .collect();
                Ok(json!({"objects": objects, "complete": page.next.is_none()}))
            })
            .await;
            reply(answer)
        }
        [name, "objects", key @ ..]
            if !key.is_empty() && (get || method == http::Method::DELETE) =>
        {
            let dir = r2_binding::bucket_dir(&data_dir, name);
            if !dir.is_dir() {
                return error(404, format!("no R2 bucket '{name}'"));
            }
            let key = percent_decode(&key.join("/"));
            let delete = !get;
            let answer = blocking(move || {
                let bucket = r2_binding::bucket(&dir, durability).map_err(|e| e.to_string())?;
                let bucket = bucket.lock().unwrap_or_else(|p| p.into_inner());
                if delete {
                    bucket.delete(&key).map_err(|e| e.to_string())?;
                    return Ok(Some(Vec::new()));
                }
                match bucket.head(&key).map_err(|e| e.to_string())? {
                    None => Ok(None),
                    Some(object) => std::fs::read(bucket.blob_path(&object.blob))
                        .map(Some)
                        .map_err(|e| e.to_string()),
                }
            })
            .await;
            match answer {
                Ok(Some(body)) => respond(200, "application/octet-stream", body.into()),
                Ok(None) => error(404, "no such object"),
                Err(message) => error(500, message),
            }
        }
        _ => error(
            404,
            format!("no admin route {method} /api/r2/{}", rest.join("/")),
        ),
    }
}

fn query(parts: &http::request::Parts, name: &str) -> Option<String> {
    parts.uri.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    })
}

pub async fn d1_route(
    admin: &Admin,
    method: &http::Method,
    rest: &[&str],
    body: Bytes,
) -> AdminResponse {
    let (data_dir, durability) = (admin.data_dir.clone(), durability(admin));
    match rest {
        [] if method == http::Method::GET => {
            let answer = blocking(move || {
                let mut list = Vec::new();
                for file in d1_binding::database_files(&data_dir) {
                    let database =
                        d1_binding::database(&file, durability).map_err(|e| d1_message(&e))?;
                    let tables = database
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .tables()
                        .map_err(|e| d1_message(&e))?;
                    let tables: Vec<Value> = tables
                        .into_iter()
                        .map(|(name, rows)| json!({"name": name, "rows": rows}))
                        .collect();
                    list.push(json!({"name": stem(&file), "file": file, "tables": tables}));
                }
                Ok(Value::Array(list))
            })
            .await;
            reply(answer)
        }
        [name, "sql"] if method == http::Method::POST => {
            let Some(file) = existing(d1_binding::database_file(&data_dir, name)) else {
                return error(404, format!("no D1 database '{name}'"));
            };
            let query = match serde_json::from_slice::<Value>(&body) {
                Ok(value) => value["query"].as_str().map(str::to_string),
                Err(_) => None,
            };
            let Some(query) = query else {
                return error(400, "send {\"query\": \"SELECT ...\"}");
            };
            let answer = blocking(move || {
                let database = d1_binding::database(&file, durability).map_err(|e| d1_message(&e))?;
                let mut database = database.lock().unwrap_or_else(|p| p.into_inner());
                let results = database
                    .execute_script(&query, Duration::from_secs(30))
                    .map_err(|e| d1_message(&e))?;
                let last = results.last();
                Ok(json!({
                    "columns": last.map(|r| r.columns.clone()).unwrap_or_default(),
                    "rows": last.map(|r| r.rows.iter().map(|row| row.iter().map(crate::d1::value_json).collect::<Vec<_>>()).collect::<Vec<_>>()).unwrap_or_default(),
                    "changes": results.iter().map(|r| r.changes).sum::<u64>(),
                }))
            })
            .await;
            match answer {
                Ok(value) => json(200, &value),
                Err(message) => error(400, message),
            }
        }
        _ => error(
            404,
            format!("no admin route {method} /api/d1/{}", rest.join("/")),
        ),
    }
}

fn existing(file: PathBuf) -> Option<PathBuf> {
    file.is_file().then_some(file)
}

fn reply(answer: Result<Value, String>) -> AdminResponse {
    match answer {
        Ok(value) => json(200, &value),
        Err(message) => error(500, message),
    }
}

pub(super) fn percent_decode(text: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}
