//! `dorun export` and `dorun import`: copies of objects' SQLite files, taken with SQLite's
//! online backup (a consistent snapshot of what is committed), optionally with a JSON dump
//! of every table; and their restore. Both work on a stopped server's data directory or
//! through a running server's admin listener: a running server holds each open object's
//! file locked, so its copy is taken on the object's own thread, through its connection;
//! an import evicts the object, restores it there and reschedules its alarm.
//!
//! An export directory holds `<namespace>/<object id>.sqlite` (and `.json` with `--json`)
//! plus `dorun-export.json`, the list of what it holds.
//!
//! KV namespaces, D1 databases and R2 buckets come along, under `kv/`, `d1/` and
//! `r2/<bucket>/` as in the data directory, unless `--namespace` narrows the selection to
//! objects. Their files are not held exclusively by a server, so with or without one they
//! are copied through the data directory: SQLite's online backup for each database (an R2
//! bucket's index), then the body files the copied index refers to (bodies are written
//! once and renamed into place, never changed). An import replaces each binding it
//! carries, whole; bindings it does not carry stay as they are.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use dorun_storage::{AlarmIndex, Durability, ObjectDatabase, SqlValue};
use serde_json::{json, Value};

use crate::admin::catalog::{is_object_id, object_files};
use crate::admin_client::AdminTarget;

/// Which objects, and which data directory.
#[derive(Debug, Args)]
pub struct Selection {
    /// The data directory [default: .dorun beside the wrangler config found from --config or
    /// the current directory].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The wrangler config whose data directory to use.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Only this namespace (its directory name, e.g. `my-worker-Counter`).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only this object (64 hex digits; needs --namespace).
    #[arg(long, requires = "namespace")]
    pub object: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub selection: Selection,
    /// Directory to write the export to (created).
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Also write a JSON dump of each object's tables (`<id>.json`).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub server: RunningServer,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A directory written by `dorun export`.
    pub from: PathBuf,
    #[command(flatten)]
    pub selection: Selection,
    #[command(flatten)]
    pub server: RunningServer,
}

/// A running server to go through instead of its data directory.
#[derive(Debug, Args)]
pub struct RunningServer {
    /// Go through a running server's admin listener (e.g. http://127.0.0.1:9000) instead of
    /// the data directory, which needs the server stopped.
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// The admin listener's token.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "DORUN_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
}

impl RunningServer {
    fn target(&self) -> Option<AdminTarget> {
        self.admin
            .as_deref()
            .map(|url| AdminTarget::new(url, self.admin_token.clone()))
    }
}

impl Selection {
    fn data_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(dir) = &self.data_dir {
            return Ok(dir.clone());
        }
        let start = match &self.config {
            Some(path) => path.clone(),
            None => std::env::current_dir()?,
        };
        let config = if start.is_file() {
            start
        } else {
            crate::config::find_config(&start).ok_or_else(|| {
                anyhow!(
                    "no wrangler config in {} or its parents: pass --data-dir",
                    start.display()
                )
            })?
        };
        Ok(config.parent().unwrap_or(Path::new(".")).join(".dorun"))
    }

    /// (namespace, object id, file) of every selected object in `root`.
    fn objects(&self, root: &Path) -> anyhow::Result<Vec<(String, String, PathBuf)>> {
        let entries = std::fs::read_dir(root).with_context(|| format!("{}", root.display()))?;
        let namespaces: Vec<String> = entries
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| !name.starts_with('.'))
            // The other bindings' files live beside the namespaces (kv/, d1/, r2/).
            .filter(|name| {
                name != dorun_runtime::kv_binding::KV_DIR
                    && name != dorun_runtime::d1_binding::D1_DIR
                    && name != dorun_runtime::r2_binding::R2_DIR
            })
            .collect();
        self.select(namespaces, &root.display().to_string(), |namespace| {
            Ok(object_files(&root.join(namespace))
                .into_iter()
                .map(|file| {
                    let path = root.join(namespace).join(format!("{}.sqlite", file.id));
                    (file.id, path)
                })
                .collect())
        })
    }

    /// (namespace, object id, -) of every selected object a running server lists.
    fn served_objects(
        &self,
        admin: &AdminTarget,
    ) -> anyhow::Result<Vec<(String, String, PathBuf)>> {
        self.select(admin.namespace_keys()?, &admin.base, |namespace| {
            Ok(admin
                .objects(namespace)?
                .iter()
                .filter_map(|object| object["id"].as_str())
                .map(|id| (id.to_string(), PathBuf::new()))
                .collect())
        })
    }

    /// The selected objects among `namespaces` (listed in `source`), each namespace's
    /// objects from `objects_of`, in order; a namespace or object asked for and not found
    /// is an error.
    fn select(
        &self,
        mut namespaces: Vec<String>,
        source: &str,
        objects_of: impl Fn(&str) -> anyhow::Result<Vec<(String, PathBuf)>>,
    ) -> anyhow::Result<Vec<(String, String, PathBuf)>> {
        if let Some(id) = &self.object {
            if !is_object_id(id) {
                bail!("--object {id}: an object id is 64 hex digits");
            }
        }
        namespaces.retain(|name| self.namespace.as_ref().is_none_or(|n| n == name));
        namespaces.sort();
        if let (Some(wanted), true) = (&self.namespace, namespaces.is_empty()) {
            bail!("no namespace '{wanted}' in {source}");
        }
        let mut out = Vec::new();
        for namespace in namespaces {
            for (id, path) in objects_of(&namespace)? {
                if self
                    .object
                    .as_ref()
                    .is_none_or(|wanted| wanted.eq_ignore_ascii_case(&id))
                {
                    out.push((namespace.clone(), id, path));
                }
            }
        }
        if out.is_empty() && self.object.is_some() {
            bail!("no such object in {source}");
        }
        Ok(out)
    }
}

/// Prints progress on stderr about once a second for long runs.
struct Progress {
    verb: &'static str,
    total: usize,
    last: Instant,
}

impl Progress {
    fn new(verb: &'static str, total: usize) -> Self {
        Self {
            verb,
            total,
            last: Instant::now(),
        }
    }

    fn tick(&mut self, done: usize) {
        if self.last.elapsed() >= Duration::from_secs(1) {
            eprintln!("{} {done}/{} objects", self.verb, self.total);
            self.last = Instant::now();
        }
    }
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let admin = args.server.target();
    let (source, objects) = match &admin {
        Some(admin) => (admin.base.clone(), args.selection.served_objects(admin)?),
        None => {
            let data_dir = args.selection.data_dir()?;
            let objects = args.selection.objects(&data_dir)?;
            (data_dir.display().to_string(), objects)
        }
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("{}", args.out.display()))?;
    let mut progress = Progress::new("exported", objects.len());
    let mut manifest = Vec::new();
    let mut bytes = 0;
    for (done, (namespace, id, file)) in objects.iter().enumerate() {
        let target = args.out.join(namespace).join(format!("{id}.sqlite"));
        match &admin {
            Some(admin) => {
                if !export_served(admin, namespace, id, &target)? {
                    continue; // it never stored anything
                }
            }
            None => dorun_storage::backup(file, &target).map_err(|e| match e {
                dorun_storage::StorageError::Busy(_) => anyhow!(
                    "{}: {e}: export through the admin listener (dorun export --admin URL)",
                    file.display()
                ),
                e => anyhow!("{}: {e}", file.display()),
            })?,
        }
        let size = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
        bytes += size;
        if args.json {
            let dump = dump_json(&target)?;
            let path = target.with_extension("json");
            std::fs::write(&path, serde_json::to_vec_pretty(&dump)?)
                .with_context(|| format!("{}", path.display()))?;
        }
        manifest.push(json!({"namespace": namespace, "id": id, "bytes": size}));
        progress.tick(done + 1);
    }
    let count = manifest.len();
    let bindings = if args.selection.namespace.is_some() {
        Vec::new()
    } else {
        match (args.selection.data_dir(), &admin) {
            (Ok(dir), _) if dir.is_dir() => export_bindings(&dir, &args.out)?,
            (Ok(_), None) => Vec::new(),
            (Err(error), None) => return Err(error),
            (_, Some(_)) => {
                eprintln!(
                    "KV, D1 and R2 data not exported: pass --data-dir (or --config) to \
                     reach the server's data directory"
                );
                Vec::new()
            }
        }
    };
    let binding_count = bindings.len();
    let manifest = json!({
        "format": "dorun-export/1",
        "source": source,
        "objects": manifest,
        "bindings": bindings,
    });
    std::fs::write(
        args.out.join("dorun-export.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    println!(
        "exported {count} objects ({bytes} bytes) and {binding_count} KV namespaces, D1 \
         databases and R2 buckets from {source} to {}",
        args.out.display()
    );
    Ok(())
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string()
}

/// Copies every KV namespace, D1 database and R2 bucket of `data_dir` into `out`.
fn export_bindings(data_dir: &Path, out: &Path) -> anyhow::Result<Vec<Value>> {
    use dorun_runtime::{d1_binding, kv_binding, r2_binding};
    let fail = |path: &Path, e: dorun_storage::StorageError| anyhow!("{}: {e}", path.display());
    let mut list = Vec::new();
    for (kind, dir, files) in [
        (
            "kv",
            kv_binding::KV_DIR,
            kv_binding::namespace_files(data_dir),
        ),
        (
            "d1",
            d1_binding::D1_DIR,
            d1_binding::database_files(data_dir),
        ),
    ] {
        for file in files {
            let target = out.join(dir).join(file_name(&file));
            dorun_storage::backup(&file, &target).map_err(|e| fail(&file, e))?;
            let bytes = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
            list.push(json!({"kind": kind, "file": file_stem(&file), "bytes": bytes}));
        }
    }
    for bucket in r2_binding::bucket_dirs(data_dir) {
        let name = file_name(&bucket);
        let target = out.join(r2_binding::R2_DIR).join(&name);
        let index = target.join("index.sqlite");
        let source = bucket.join("index.sqlite");
        if !source.is_file() {
            continue;
        }
        dorun_storage::backup(&source, &index).map_err(|e| fail(&source, e))?;
        std::fs::create_dir_all(target.join("blobs"))?;
        let mut bytes = 0;
        for blob in referenced_blobs(&index)? {
            let from = bucket.join("blobs").join(&blob);
            match std::fs::copy(&from, target.join("blobs").join(&blob)) {
                Ok(n) => bytes += n,
                // Deleted since the index was copied: its object is gone from the bucket.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    eprintln!("{}: deleted during the export, skipped", from.display())
                }
                Err(e) => return Err(anyhow!("{}: {e}", from.display())),
            }
        }
        list.push(json!({"kind": "r2", "file": name, "bytes": bytes}));
    }
    Ok(list)
}

/// The body files an R2 index (a copy of `index.sqlite`) refers to.
fn referenced_blobs(index: &Path) -> anyhow::Result<Vec<String>> {
    let conn =
        rusqlite::Connection::open_with_flags(index, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut statement = conn.prepare("SELECT blob FROM objects UNION SELECT blob FROM parts")?;
    let blobs = statement
        .query_map([], |row| row.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(blobs
        .into_iter()
        // Only plain file names: the copy never reaches outside blobs/.
        .filter(|b| !b.is_empty() && !b.contains(['/', '\\']) && b != "." && b != "..")
        .collect())
}

/// Restores the KV namespaces, D1 databases and R2 buckets an export holds into
/// `data_dir`; how many.
fn import_bindings(from: &Path, data_dir: &Path) -> anyhow::Result<usize> {
    use dorun_runtime::{d1_binding, kv_binding, r2_binding};
    let fail = |path: &Path, e: dorun_storage::StorageError| anyhow!("{}: {e}", path.display());
    let mut count = 0;
    for dir in [kv_binding::KV_DIR, d1_binding::D1_DIR] {
        let files = dorun_runtime::binding_files::entries(
            &from.join(dir),
            dorun_runtime::binding_files::is_sqlite,
        );
        for file in files {
            let target = data_dir.join(dir).join(file_name(&file));
            dorun_storage::restore_shared(&file, &target).map_err(|e| fail(&target, e))?;
            count += 1;
        }
    }
    for bucket in
        dorun_runtime::binding_files::entries(&from.join(r2_binding::R2_DIR), Path::is_dir)
    {
        let index = bucket.join("index.sqlite");
        if !index.is_file() {
            continue;
        }
        let target = data_dir.join(r2_binding::R2_DIR).join(file_name(&bucket));
        std::fs::create_dir_all(target.join("blobs"))?;
        // Bodies first, synced, then the index that refers to them: a crash in between
        // leaves only unreferenced files, which the bucket removes when it next opens.
        for blob in referenced_blobs(&index)? {
            let to = target.join("blobs").join(&blob);
            std::fs::copy(bucket.join("blobs").join(&blob), &to)
                .with_context(|| format!("{}", to.display()))?;
            std::fs::File::open(&to)?.sync_all()?;
        }
        std::fs::File::open(target.join("blobs"))?.sync_all()?;
        let live = target.join("index.sqlite");
        dorun_storage::restore_shared(&index, &live).map_err(|e| fail(&live, e))?;
        count += 1;
    }
    Ok(count)
}

/// Writes a running server's copy of one object to `target`; false if it has no storage.
/// A copy is refused while the object holds a transaction open: tried again a few times.
fn export_served(
    admin: &AdminTarget,
    namespace: &str,
    id: &str,
    target: &Path,
) -> anyhow::Result<bool> {
    let path = format!("/api/objects/{namespace}/{id}/export");
    let mut tries = 0;
    let bytes = loop {
        match admin.send_status("GET", &path, Default::default())? {
            (200, bytes) => break bytes,
            (404, _) => return Ok(false),
            (503, _) if tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (status, bytes) => bail!(
                "GET {}{path}: {status}: {}",
                admin.base,
                crate::admin_client::error_message(&bytes)
            ),
        }
    };
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("{}", dir.display()))?;
    }
    let partial = target.with_extension("sqlite.partial");
    std::fs::write(&partial, &bytes).with_context(|| format!("{}", partial.display()))?;
    std::fs::rename(&partial, target).with_context(|| format!("{}", target.display()))?;
    Ok(true)
}

fn sql_json(value: &SqlValue) -> Value {
    match value {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(n) => (*n).into(),
        SqlValue::Real(x) => (*x).into(),
        SqlValue::Text(text) => text.clone().into(),
        SqlValue::Blob(bytes) => {
            json!({"blob": bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()})
        }
    }
}

/// Every table of the copy at `path` as `{table: {columns, rows}}`. KV values (table
/// `_cf_KV`) are V8-serialized and appear as blobs.
fn dump_json(path: &Path) -> anyhow::Result<Value> {
    let fail = |e: dorun_storage::StorageError| anyhow!("{}: {e}", path.display());
    let mut db = ObjectDatabase::open(path, Durability::Off).map_err(fail)?;
    let tables = db
        .admin_exec("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .map_err(fail)?;
    let mut out = serde_json::Map::new();
    for row in tables.rows {
        let Some(SqlValue::Text(name)) = row.first() else {
            continue;
        };
        let quoted = name.replace('"', "\"\"");
        let result = db
            .admin_exec(&format!("SELECT * FROM \"{quoted}\""))
            .map_err(fail)?;
        let rows: Vec<Value> = result
            .rows
            .iter()
            .map(|row| row.iter().map(sql_json).collect())
            .collect();
        out.insert(
            name.clone(),
            json!({"columns": result.columns, "rows": rows}),
        );
    }
    Ok(Value::Object(out))
}

pub fn import(args: ImportArgs) -> anyhow::Result<()> {
    let objects = args.selection.objects(&args.from)?;
    let mut progress = Progress::new("imported", objects.len());
    let admin = args.server.target();
    let data_dir = match admin {
        Some(_) => None,
        None => Some(args.selection.data_dir()?),
    };
    for (done, (namespace, id, source)) in objects.iter().enumerate() {
        match (&admin, &data_dir) {
            (Some(admin), _) => {
                let body =
                    std::fs::read(source).with_context(|| format!("{}", source.display()))?;
                admin.call(
                    "POST",
                    &format!("/api/objects/{namespace}/{id}/import"),
                    body.into(),
                )?;
            }
            (None, Some(data_dir)) => restore_offline(data_dir, namespace, id, source)?,
            (None, None) => unreachable!("a data directory without --admin"),
        }
        progress.tick(done + 1);
    }
    if let Some(dir) = &data_dir {
        // Changed outside replication: the next `serve --replicate-to` ships every object.
        dorun_storage::replica::baseline::forget_marker(dir)
            .with_context(|| format!("{}", dir.display()))?;
    }
    let into = match (&admin, &data_dir) {
        (Some(admin), _) => admin.base.clone(),
        (None, Some(dir)) => dir.display().to_string(),
        (None, None) => String::new(),
    };
    let carries_bindings = [
        dorun_runtime::kv_binding::KV_DIR,
        dorun_runtime::d1_binding::D1_DIR,
        dorun_runtime::r2_binding::R2_DIR,
    ]
    .iter()
    .any(|dir| args.from.join(dir).is_dir());
    let bindings = if args.selection.namespace.is_some() || !carries_bindings {
        0
    } else {
        match args.selection.data_dir() {
            Ok(dir) => import_bindings(&args.from, &dir)?,
            Err(_) => {
                eprintln!(
                    "KV, D1 and R2 data not imported: pass --data-dir (or --config) to \
                     reach the server's data directory"
                );
                0
            }
        }
    };
    println!(
        "imported {} objects and {bindings} KV namespaces, D1 databases and R2 buckets into {into}",
        objects.len()
    );
    Ok(())
}

/// Restores one object into a data directory no server is using, with its alarm indexed.
fn restore_offline(
    data_dir: &Path,
    namespace: &str,
    id: &str,
    source: &Path,
) -> anyhow::Result<()> {
    let dir = data_dir.join(namespace);
    let target = dir.join(format!("{id}.sqlite"));
    let fail = |e: dorun_storage::StorageError| anyhow!("{}: {e}", target.display());
    dorun_storage::restore(source, &target).map_err(fail)?;
    let alarm = ObjectDatabase::open(&target, Durability::Full)
        .and_then(|db| db.alarm())
        .map_err(fail)?;
    let index = AlarmIndex::open(&dir.join("metadata.sqlite"), Durability::Full).map_err(fail)?;
    match alarm {
        Some(time) => index.put(id, time, None),
        None => index.delete(id),
    }
    .map_err(fail)
}
