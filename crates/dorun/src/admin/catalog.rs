//! What the data directory holds, as the admin listener shows it: each worker's own
//! namespaces and, per namespace, the objects' files with their size and last activity,
//! merged with what the isolate threads report as resident and the alarm scheduler holds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use dorun_runtime::mailbox::AdminCommand;
use dorun_runtime::WorkerPool;
use serde_json::{json, Value};

/// One namespace of a worker (its own, not a `script_name` binding to another worker's).
#[derive(Clone)]
pub struct Namespace {
    pub pool: Arc<WorkerPool>,
    pub index: u32,
    pub key: String,
    pub worker: String,
    pub class: String,
    pub binding: String,
    pub sqlite: bool,
    pub dir: PathBuf,
}

/// Every namespace of the served workers.
pub fn namespaces(pools: &[Arc<WorkerPool>]) -> Vec<Namespace> {
    let mut out = Vec::new();
    for pool in pools {
        let spec = pool.spec();
        for (index, ns) in spec.objects.namespaces.iter().enumerate() {
            if ns.foreign.is_some() {
                continue;
            }
            out.push(Namespace {
                pool: pool.clone(),
                index: index as u32,
                key: ns.unique_key.clone(),
                worker: spec.name.clone(),
                class: ns.class_name.clone(),
                binding: ns.binding.clone(),
                sqlite: ns.sqlite,
                dir: spec.objects.data_dir.join(&ns.unique_key),
            });
        }
    }
    out
}

/// Whether `id` is an object id (64 hex digits), so it is safe in a file name.
pub fn is_object_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// An object's file on disk: bytes (with its WAL) and the last write (ms since the epoch).
pub struct ObjectFile {
    pub id: String,
    pub bytes: u64,
    pub modified_ms: Option<u64>,
}

fn modified_ms(meta: &std::fs::Metadata) -> Option<u64> {
    let time = meta.modified().ok()?;
    Some(time.duration_since(UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// The size and last write of object `id` in `dir`, if it has a file.
pub fn object_file(dir: &Path, id: &str) -> Option<ObjectFile> {
    let meta = std::fs::metadata(dir.join(format!("{id}.sqlite"))).ok()?;
    let mut bytes = meta.len();
    let mut modified = modified_ms(&meta);
    if let Ok(wal) = std::fs::metadata(dir.join(format!("{id}.sqlite-wal"))) {
        bytes += wal.len();
        modified = modified.max(modified_ms(&wal));
    }
    Some(ObjectFile {
        id: id.to_string(),
        bytes,
        modified_ms: modified,
    })
}

/// Every object with a file in `dir`.
pub fn object_files(dir: &Path) -> Vec<ObjectFile> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<ObjectFile> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let id = name.strip_suffix(".sqlite")?;
            is_object_id(id).then(|| object_file(dir, id)).flatten()
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// The objects resident in `pool`'s threads, by (namespace index, id).
pub async fn resident(pool: &WorkerPool) -> HashMap<(u32, String), Value> {
    let mut out = HashMap::new();
    for thread in 0..pool.thread_count() {
        let Ok(Value::Array(list)) = pool.admin(thread, AdminCommand::Resident).await else {
            continue;
        };
        for object in list {
            let ns = object["namespace"].as_u64().unwrap_or(u64::MAX) as u32;
            let id = object["id"].as_str().unwrap_or_default().to_string();
            out.insert((ns, id), object);
        }
    }
    out
}

/// The scheduled alarms of `pool`: (namespace index, id) -> (ms, retries).
pub fn alarms(pool: &WorkerPool) -> HashMap<(u32, String), (i64, u32)> {
    pool.alarms()
        .scheduled()
        .into_iter()
        .map(|(ns, id, at, retries)| ((ns, id), (at, retries)))
        .collect()
}

/// A namespace as the API lists it.
pub fn namespace_json(ns: &Namespace) -> Value {
    let files = object_files(&ns.dir);
    json!({
        "key": ns.key,
        "worker": ns.worker,
        "class": ns.class,
        "binding": ns.binding,
        "sqlite": ns.sqlite,
        "objects": files.len(),
        "bytes": files.iter().map(|f| f.bytes).sum::<u64>(),
    })
}

/// The objects of a namespace: every file, plus resident objects that have none yet.
pub async fn objects_json(ns: &Namespace) -> Value {
    let resident = resident(&ns.pool).await;
    let alarms = alarms(&ns.pool);
    let mut ids: Vec<String> = object_files(&ns.dir).into_iter().map(|f| f.id).collect();
    for (index, id) in resident.keys() {
        if *index == ns.index && !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    ids.sort();
    let list: Vec<Value> = ids
        .iter()
        .map(|id| object_json(ns, id, &resident, &alarms))
        .collect();
    Value::Array(list)
}

/// One object: size, last activity, resident or not, pending alarm.
pub fn object_json(
    ns: &Namespace,
    id: &str,
    resident: &HashMap<(u32, String), Value>,
    alarms: &HashMap<(u32, String), (i64, u32)>,
) -> Value {
    let key = (ns.index, id.to_string());
    let file = object_file(&ns.dir, id);
    let live = resident.get(&key);
    let last_active = live
        .and_then(|o| o["lastActive"].as_f64())
        .map(|ms| ms as u64)
        .max(file.as_ref().and_then(|f| f.modified_ms));
    let alarm = alarms.get(&key);
    json!({
        "id": id,
        "name": live.and_then(|o| o["name"].as_str()),
        "bytes": file.as_ref().map(|f| f.bytes).unwrap_or(0),
        "lastActivity": last_active,
        "resident": live.is_some(),
        "inFlight": live.and_then(|o| o["inFlight"].as_u64()).unwrap_or(0),
        "sockets": live.and_then(|o| o["sockets"].as_u64()).unwrap_or(0),
        "alarm": alarm.map(|a| a.0),
        "alarmRetries": alarm.map(|a| a.1),
    })
}
