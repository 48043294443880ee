//! `dorun restore`: rebuilds Durable Objects' files from the store `dorun serve
//! --replicate-to` wrote (see `dorun_storage::replica`), then their namespaces' alarm
//! indexes, so that the next `dorun serve` on the directory schedules their alarms.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dorun_storage::replica::{restore, store};
use dorun_storage::{AlarmIndex, Durability, ObjectDatabase};

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The store: s3://bucket/prefix (AWS_* environment as for serve) or file:///dir.
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The data directory to write into (a stopped server's; restored objects' files are
    /// replaced, nothing else is touched).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Only this namespace (its directory name, e.g. `my-worker-Counter`).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Only this object (64 hex digits; needs --namespace).
    #[arg(long, requires = "namespace")]
    pub object: Option<String>,
    /// The state as of this time (RFC 3339, e.g. 2026-12-07T10:00:00Z, or milliseconds
    /// since the epoch): what was in the store then (to the upload).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub at: Option<u64>,
}

fn parse_time(text: &str) -> Result<u64, String> {
    if let Ok(ms) = text.parse::<u64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|time| time.timestamp_millis().max(0) as u64)
        .map_err(|e| format!("'{text}' is not an RFC 3339 time nor milliseconds: {e}"))
}

pub fn run(args: RestoreArgs) -> anyhow::Result<()> {
    let store = store::open(&args.from)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let filter = restore::Filter {
        namespace: args.namespace.clone(),
        object: args.object.clone(),
        until_ms: args.at,
    };
    let restored = runtime
        .block_on(restore::restore(&store, &args.data_dir, &filter))
        .with_context(|| format!("restoring from {}", args.from))?;
    // Written outside replication: the next `serve --replicate-to` ships every object.
    dorun_storage::replica::baseline::forget_marker(&args.data_dir)
        .with_context(|| format!("{}", args.data_dir.display()))?;
    let mut alarms = 0;
    for object in restored.objects.keys() {
        if dorun_storage::replica::files::is_binding(object) {
            continue; // a binding's file (KV, D1, R2, queue, workflow): no alarm
        }
        let path = restore::object_path(&args.data_dir, object);
        let db = ObjectDatabase::open(&path, Durability::Full)
            .with_context(|| format!("{}: not a database after restore", path.display()))?;
        if let Some(time) = db.alarm()? {
            let index = args
                .data_dir
                .join(&object.namespace)
                .join("metadata.sqlite");
            AlarmIndex::open(&index, Durability::Full)?.put(&object.id, time, None)?;
            alarms += 1;
        }
    }
    let files = restored
        .objects
        .keys()
        .filter(|o| dorun_storage::replica::files::is_binding(o))
        .count();
    println!(
        "restored {} objects, {files} binding files (KV, D1, R2, queues, workflows) and {} R2 bodies ({} segments from {} batches; {alarms} with an alarm) into {}",
        restored.objects.len() - files,
        restored.blobs,
        restored.segments,
        restored.batches,
        args.data_dir.display()
    );
    Ok(())
}
