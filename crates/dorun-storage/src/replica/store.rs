//! The store behind `--replicate-to`: an `object_store` (Apache Arrow's S3 client, which
//! signs, retries and maps `If-None-Match` conflicts for us) over `s3://bucket/prefix`
//! (endpoint and credentials from the standard AWS environment variables), a local
//! directory (`file:///path`), or memory (`memory:`, for tests).

use std::sync::Arc;

use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

pub type Store = Arc<dyn ObjectStore>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("--replicate-to {0}: {1}")]
    Url(String, String),
    #[error("{0}")]
    Store(#[from] object_store::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Opens the store a `--replicate-to` URL names.
pub fn open(url: &str) -> Result<Store, StoreError> {
    let bad = |why: &str| StoreError::Url(url.to_string(), why.to_string());
    if url == "memory:" {
        return Ok(Arc::new(object_store::memory::InMemory::new()));
    }
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(bad("a file:// URL needs an absolute path (file:///dir)"));
        }
        std::fs::create_dir_all(path).map_err(|e| bad(&e.to_string()))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(path)
            .map_err(|e| bad(&e.to_string()))?;
        return Ok(Arc::new(store));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket (s3://bucket/prefix)"));
        }
        let s3 = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            return Ok(Arc::new(s3));
        }
        return Ok(Arc::new(object_store::prefix::PrefixStore::new(
            s3,
            StorePath::from(prefix),
        )));
    }
    Err(bad("use s3://bucket/prefix or file:///dir"))
}

/// Creates `key` unless it exists (`If-None-Match: *`): `Ok(false)` when it did.
pub async fn create(store: &Store, key: &str, bytes: Vec<u8>) -> Result<bool, StoreError> {
    let options = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match store
        .put_opts(&StorePath::from(key), PutPayload::from(bytes), options)
        .await
    {
        Ok(_) => Ok(true),
        Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
        Err(error) => Err(error.into()),
    }
}

pub async fn get(store: &Store, key: &str) -> Result<Vec<u8>, StoreError> {
    let result = store.get(&StorePath::from(key)).await?;
    Ok(result.bytes().await?.to_vec())
}

/// The keys under `prefix` with their age (from the store's last-modified time).
pub async fn list_with_age(
    store: &Store,
    prefix: &str,
) -> Result<Vec<(String, std::time::Duration)>, StoreError> {
    use futures::TryStreamExt;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let keys: Vec<(String, std::time::Duration)> = store
        .list(Some(&StorePath::from(prefix)))
        .map_ok(|meta| {
            let age = (now - meta.last_modified.timestamp_millis()).max(0) as u64;
            (
                decoded(&meta.location),
                std::time::Duration::from_millis(age),
            )
        })
        .try_collect()
        .await?;
    Ok(keys)
}

/// Uploads the file at `path` as `key` (an R2 body): in one PUT up to 16 MiB, else as a
/// multipart upload read from disk 8 MiB at a time (memory stays flat for any size).
pub async fn put_file(store: &Store, key: &str, path: &std::path::Path) -> Result<(), StoreError> {
    use std::io::Read;
    const ONE_PUT: u64 = 16 << 20;
    const CHUNK: usize = 8 << 20;
    let io = |e: std::io::Error| StoreError::Invalid(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let location = StorePath::from(key);
    if size <= ONE_PUT {
        let mut bytes = Vec::with_capacity(size as usize);
        file.read_to_end(&mut bytes).map_err(io)?;
        store.put(&location, PutPayload::from(bytes)).await?;
        return Ok(());
    }
    let upload = store.put_multipart(&location).await?;
    let mut writer = object_store::WriteMultipart::new_with_chunk_size(upload, CHUNK);
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let read = file.read(&mut buffer).map_err(io)?;
        if read == 0 {
            break;
        }
        writer.wait_for_capacity(2).await?;
        writer.write(&buffer[..read]);
    }
    writer.finish().await?;
    Ok(())
}

/// Downloads `key` into a new file at `path`, streamed.
pub async fn get_to_file(
    store: &Store,
    key: &str,
    path: &std::path::Path,
) -> Result<(), StoreError> {
    use futures::StreamExt;
    use std::io::Write;
    let io = |e: std::io::Error| StoreError::Invalid(format!("{}: {e}", path.display()));
    let mut stream = store.get(&StorePath::from(key)).await?.into_stream();
    let mut file = std::fs::File::create(path).map_err(io)?;
    while let Some(chunk) = stream.next().await {
        file.write_all(&chunk?).map_err(io)?;
    }
    file.sync_all().map_err(io)
}

pub async fn delete(store: &Store, key: &str) -> Result<(), StoreError> {
    store.delete(&StorePath::from(key)).await?;
    Ok(())
}

/// A listed location as the key it was written under: object_store percent-encodes
/// characters it does not allow in a path (`%` among them) when a key is written, and
/// lists the encoded form.
fn decoded(location: &StorePath) -> String {
    percent_encoding::percent_decode_str(location.as_ref())
        .decode_utf8_lossy()
        .into_owned()
}

/// The keys under `prefix` (recursively), sorted.
pub async fn list(store: &Store, prefix: &str) -> Result<Vec<String>, StoreError> {
    use futures::TryStreamExt;
    let mut keys: Vec<String> = store
        .list(Some(&StorePath::from(prefix)))
        .map_ok(|meta| decoded(&meta.location))
        .try_collect()
        .await?;
    keys.sort();
    Ok(keys)
}

/// Refuses a store that accepts a second create of the same key (it ignores
/// `If-None-Match`, which fencing rests on).
pub async fn check_conditional_writes(store: &Store) -> Result<(), StoreError> {
    create(store, "format", br#"{"format": 1}"#.to_vec()).await?;
    if create(store, "format", br#"{"format": 1}"#.to_vec()).await? {
        return Err(StoreError::Invalid(
            "the store accepted a second create of the same key: it ignores If-None-Match, \
             which replication needs (use AWS S3, Cloudflare R2, MinIO, SeaweedFS)"
                .into(),
        ));
    }
    Ok(())
}

/// Takes the next generation number (one per start of `dorun serve --replicate-to`):
/// creates `g/<n as 16 hex>` one past the greatest, listing again when another process got
/// there first.
pub async fn next_generation(store: &Store, node: &str) -> Result<u64, StoreError> {
    take_generation(store, node, &[]).await
}

/// Takes the next generation; its record names `reset`, the namespaces whose objects were
/// deleted where it begins (empty for a start).
pub async fn take_generation(
    store: &Store,
    node: &str,
    reset: &[String],
) -> Result<u64, StoreError> {
    loop {
        let last = list(store, "g")
            .await?
            .iter()
            .filter_map(|key| key.strip_prefix("g/"))
            .filter_map(|hex| u64::from_str_radix(hex, 16).ok())
            .max()
            .unwrap_or(0);
        let generation = last + 1;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut record = serde_json::json!({
            "session": session_name(node, generation),
            "node": node,
            "ms": now,
        });
        if !reset.is_empty() {
            record["reset"] = serde_json::json!(reset);
        }
        if create(
            store,
            &format!("g/{generation:016x}"),
            record.to_string().into_bytes(),
        )
        .await?
        {
            return Ok(generation);
        }
    }
}

/// The session name of a one-node generation.
pub fn session_name(node: &str, generation: u64) -> String {
    format!("{node}.g{generation:016x}")
}
