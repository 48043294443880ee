//! R2 bindings (`r2_buckets`): `env.<binding>` is an `R2Bucket` (`js/16_r2.js`) whose ops
//! land here. Each bucket is `<data-dir>/r2/<bucket_name>/` (`dorun_storage::R2Bucket`),
//! opened once per process and shared by every worker that binds it. Bodies stream: a put
//! writes its chunks to a file as they come (hashing them on the way), a get reads its
//! range in chunks, so a 1 GiB object never sits in memory. File work runs on tokio's
//! blocking threads.
//!
//! Conditions, ranges and the API's messages are the JS side's; the ops store and find.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use deno_core::{op2, AsyncRefCell, AsyncResult, BufView, JsBuffer, OpState, RcRef, Resource};
use deno_error::JsErrorBox;
use dorun_storage::{Durability, R2Bucket, R2ObjectMeta, R2Part, R2Upload, StorageError};
use md5::Digest;

use crate::binding_files;

/// The directory of R2 buckets inside the data directory.
pub const R2_DIR: &str = "r2";

/// How much one read of a body returns at most.
const READ_CHUNK: usize = 64 << 10;
/// The most one read of a body resource returns (the front door asks for this much).
const NATIVE_CHUNK: usize = 1 << 20;

/// One `r2_buckets` entry: the name in `env` and the bucket it reaches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct R2Binding {
    pub binding: String,
    pub bucket: String,
}

/// The directory of bucket `name` under `data_dir` (its name as a file name).
pub fn bucket_dir(data_dir: &Path, name: &str) -> PathBuf {
    data_dir.join(R2_DIR).join(binding_files::file_name(name))
}

/// The bucket directories under `data_dir`.
pub fn bucket_dirs(data_dir: &Path) -> Vec<PathBuf> {
    binding_files::entries(&data_dir.join(R2_DIR), Path::is_dir)
}

/// What the R2 ops of an isolate need, and its open bodies.
pub struct R2Store {
    pub data_dir: PathBuf,
    pub durability: Durability,
    next: u32,
    writers: HashMap<u32, Writer>,
}

impl R2Store {
    pub fn new(data_dir: PathBuf, durability: Durability) -> Self {
        Self {
            data_dir,
            durability,
            next: 0,
            writers: HashMap::new(),
        }
    }

    fn id(&mut self) -> u32 {
        self.next = self.next.wrapping_add(1);
        self.next
    }
}

#[derive(Debug, thiserror::Error, deno_error::JsError)]
pub enum R2Error {
    #[class(generic)]
    #[error("{0}")]
    Message(String),
}

impl From<StorageError> for R2Error {
    fn from(error: StorageError) -> Self {
        tracing::error!("R2: {error}");
        R2Error::Message(format!(
            "We encountered an internal error. Please try again. ({error})"
        ))
    }
}

fn message(text: impl Into<String>) -> R2Error {
    R2Error::Message(text.into())
}

/// With `--replicate-to`, uploads a written body before the index refers to it.
fn replicate_body(dir: &Path, blob: &str) -> Result<(), R2Error> {
    dorun_storage::replica::files::replicate_blob(dir, blob).map_err(|why| {
        tracing::error!("R2: {why}");
        message("We encountered an internal error. Please try again.|10001")
    })
}

/// Buckets open in this process.
static OPEN: binding_files::Registry<R2Bucket> = binding_files::Registry::new();

/// Opens (once per process) the bucket at `dir`.
pub fn bucket(dir: &Path, durability: Durability) -> Result<Arc<Mutex<R2Bucket>>, StorageError> {
    OPEN.get_or_open(dir, |dir| R2Bucket::open(dir, durability))
}

/// Deletes every object of every bucket under `data_dir` (the admin's reset); how many.
pub fn reset_all(data_dir: &Path, durability: Durability) -> Result<u64, StorageError> {
    let mut deleted = 0;
    for dir in bucket_dirs(data_dir) {
        let bucket = bucket(&dir, durability)?;
        let bucket = bucket.lock().unwrap_or_else(|p| p.into_inner());
        for key in bucket.keys()? {
            bucket.delete(&key)?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

fn locate(state: &Rc<RefCell<OpState>>, name: &str) -> (PathBuf, Durability) {
    let state = state.borrow();
    let store = state.borrow::<R2Store>();
    (bucket_dir(&store.data_dir, name), store.durability)
}

/// Runs `f` on bucket `name`, on a blocking thread.
async fn with<T: Send + 'static>(
    state: &Rc<RefCell<OpState>>,
    name: &str,
    op: &'static str,
    f: impl FnOnce(&R2Bucket) -> Result<T, R2Error> + Send + 'static,
) -> Result<T, R2Error> {
    let (dir, durability) = locate(state, name);
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        let bucket = bucket(&dir, durability)?;
        let bucket = bucket.lock().unwrap_or_else(|p| p.into_inner());
        f(&bucket)
    })
    .await
    .map_err(|_| message("We encountered an internal error. Please try again."))?;
    binding_files::record("r2", op, started, result.is_ok());
    result
}

fn random_hex() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}

/// An object as JS sees it (metadata as JSON text, parsed there).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectOut {
    key: String,
    version: String,
    size: f64,
    etag: String,
    uploaded: f64,
    http_metadata: String,
    custom_metadata: String,
    checksums: String,
}

impl From<R2ObjectMeta> for ObjectOut {
    fn from(meta: R2ObjectMeta) -> Self {
        Self {
            key: meta.key,
            version: meta.version,
            size: meta.size as f64,
            etag: meta.etag,
            uploaded: meta.uploaded as f64,
            http_metadata: meta.http_metadata,
            custom_metadata: meta.custom_metadata,
            checksums: meta.checksums,
        }
    }
}

#[op2]
#[serde]
pub async fn op_dorun_r2_head(
    state: Rc<RefCell<OpState>>,
    #[string] bucket: String,
    #[string] key: String,
) -> Result<Option<ObjectOut>, R2Error> {
    with(&state, &bucket, "head", move |b| {
        Ok(b.head(&key)?.map(ObjectOut::from))
    })
    .await
}

// --- writing a body -------------------------------------------------------------------------

/// A body being written: its file, its size so far and its digests.
struct Writer {
    bucket: String,
    blob: String,
    file: Option<File>,
    size: u64,
    md5: md5::Md5,
    sha1: Option<sha1::Sha1>,
    sha256: Option<sha2::Sha256>,
    sha384: Option<sha2::Sha384>,
    sha512: Option<sha2::Sha512>,
}

/// Starts a body for bucket `name`; `algorithm` is an extra checksum to compute (`sha1`,
/// `sha256`, `sha384`, `sha512`) or empty.
#[op2]
#[smi]
pub async fn op_dorun_r2_writer(
    state: Rc<RefCell<OpState>>,
    #[string] bucket: String,
    #[string] algorithm: String,
) -> Result<u32, R2Error> {
    let blob = random_hex();
    let file = {
        let blob = blob.clone();
        with(&state, &bucket, "put", move |b| Ok(b.create_blob(&blob)?)).await?
    };
    let writer = Writer {
        bucket,
        blob,
        file: Some(file),
        size: 0,
        md5: md5::Md5::new(),
        sha1: (algorithm == "sha1").then(sha1::Sha1::new),
        sha256: (algorithm == "sha256").then(sha2::Sha256::new),
        sha384: (algorithm == "sha384").then(sha2::Sha384::new),
        sha512: (algorithm == "sha512").then(sha2::Sha512::new),
    };
    let mut state = state.borrow_mut();
    let store = state.borrow_mut::<R2Store>();
    let id = store.id();
    store.writers.insert(id, writer);
    Ok(id)
}

fn take_writer(state: &Rc<RefCell<OpState>>, id: u32) -> Result<Writer, R2Error> {
    state
        .borrow_mut()
        .borrow_mut::<R2Store>()
        .writers
        .remove(&id)
        .ok_or_else(|| message("the body being written is gone"))
}

/// Appends a chunk to a body.
#[op2]
pub async fn op_dorun_r2_write(
    state: Rc<RefCell<OpState>>,
    #[smi] id: u32,
    #[buffer] chunk: JsBuffer,
) -> Result<(), R2Error> {
    let writer = take_writer(&state, id)?;
    let writer = append(writer, chunk.to_vec()).await?;
    state
        .borrow_mut()
        .borrow_mut::<R2Store>()
        .writers
        .insert(id, writer);
    Ok(())
}

/// Writes `chunk` to the body's file (on a blocking thread) and hashes it.
async fn append(mut writer: Writer, chunk: Vec<u8>) -> Result<Writer, R2Error> {
    binding_files::record_bytes("r2", "in", chunk.len());
    tokio::task::spawn_blocking(move || -> Result<Writer, R2Error> {
        if let Some(file) = writer.file.as_mut() {
            file.write_all(&chunk)
                .map_err(|e| R2Error::from(StorageError::from(e)))?;
        }
        writer.size += chunk.len() as u64;
        writer.md5.update(&chunk);
        if let Some(h) = writer.sha1.as_mut() {
            h.update(&chunk);
        }
        if let Some(h) = writer.sha256.as_mut() {
            h.update(&chunk);
        }
        if let Some(h) = writer.sha384.as_mut() {
            h.update(&chunk);
        }
        if let Some(h) = writer.sha512.as_mut() {
            h.update(&chunk);
        }
        Ok(writer)
    })
    .await
    .map_err(|_| message("We encountered an internal error. Please try again."))?
}

/// Appends everything resource `rid` yields (a request body handed over untouched) to a
/// body, chunk by chunk, without the chunks passing through JS.
#[op2]
pub async fn op_dorun_r2_write_resource(
    state: Rc<RefCell<OpState>>,
    #[smi] id: u32,
    #[smi] rid: u32,
) -> Result<(), R2Error> {
    let resource = state
        .borrow_mut()
        .resource_table
        .take_any(rid)
        .map_err(|e| message(e.to_string()))?;
    let mut slot = Some(take_writer(&state, id)?);
    let outcome = loop {
        let chunk = match resource.clone().read(READ_CHUNK).await {
            Ok(chunk) => chunk,
            Err(error) => break Err(message(error.to_string())),
        };
        if chunk.is_empty() {
            break Ok(());
        }
        let Some(writer) = slot.take() else {
            break Err(message("the body being written is gone"));
        };
        match append(writer, chunk.to_vec()).await {
            Ok(writer) => slot = Some(writer),
            Err(error) => break Err(error),
        }
    };
    resource.close();
    // Back in its place, so the caller's discard (after an error) removes its file.
    if let Some(writer) = slot {
        state
            .borrow_mut()
            .borrow_mut::<R2Store>()
            .writers
            .insert(id, writer);
    }
    outcome
}

/// Drops a body that will not be committed.
#[op2(fast)]
pub fn op_dorun_r2_discard(state: &mut OpState, #[smi] id: u32) {
    let store = state.borrow_mut::<R2Store>();
    if let Some(writer) = store.writers.remove(&id) {
        let dir = bucket_dir(&store.data_dir, &writer.bucket);
        let _ = std::fs::remove_file(dir.join("blobs").join(&writer.blob));
    }
}

/// What a finished body is: its size and digests (hex).
struct Finished {
    size: u64,
    md5: Vec<u8>,
    checksums: serde_json::Map<String, serde_json::Value>,
}

/// Closes and syncs a body; its size and digests.
fn finish(
    sync: impl FnOnce(&mut File) -> Result<(), StorageError>,
    mut writer: Writer,
) -> Result<Finished, R2Error> {
    if let Some(mut file) = writer.file.take() {
        sync(&mut file)?;
    }
    let md5 = writer.md5.finalize().to_vec();
    let mut checksums = serde_json::Map::new();
    checksums.insert("md5".into(), hex(&md5).into());
    if let Some(h) = writer.sha1.take() {
        checksums.insert("sha1".into(), hex(&h.finalize()).into());
    }
    if let Some(h) = writer.sha256.take() {
        checksums.insert("sha256".into(), hex(&h.finalize()).into());
    }
    if let Some(h) = writer.sha384.take() {
        checksums.insert("sha384".into(), hex(&h.finalize()).into());
    }
    if let Some(h) = writer.sha512.take() {
        checksums.insert("sha512".into(), hex(&h.finalize()).into());
    }
    Ok(Finished {
        size: writer.size,
        md5,
        checksums,
    })
}

/// What `put` stores besides the body.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutOptions {
    key: String,
    /// JSON text.
    http_metadata: String,
    /// JSON text.
    custom_metadata: String,
    /// The checksum the caller gave (`"md5"`, hex), checked against the body.
    expected: Option<(String, String)>,
}

/// Commits a written body as object `key`; an error (nothing stored) if the expected
/// checksum does not match.
#[op2]
#[serde]
pub async fn op_dorun_r2_commit(
    state: Rc<RefCell<OpState>>,
    #[smi] id: u32,
    #[serde] options: PutOptions,
) -> Result<ObjectOut, R2Error> {
    let writer = take_writer(&state, id)?;
    let (dir, durability) = locate(&state, &writer.bucket);
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || -> Result<ObjectOut, R2Error> {
        let blob = writer.blob.clone();
        let drop_blob = |name: &str| {
            let _ = std::fs::remove_file(dir.join("blobs").join(name));
        };
        // The body is synced outside the bucket's lock, so concurrent puts sync in parallel.
        let finished = finish(
            |file| R2Bucket::sync_body(&dir, durability, file),
            writer,
        )
        .inspect_err(|_| drop_blob(&blob))?;
        if let Some((algorithm, given)) = &options.expected {
            let actual = finished.checksums.get(algorithm).and_then(|v| v.as_str()).unwrap_or("");
            if !actual.eq_ignore_ascii_case(given) {
                drop_blob(&blob);
                let name = algorithm.to_uppercase().replace("SHA", "SHA-");
                return Err(message(format!(
                    "The {name} checksum you specified did not match what we received.\nYou provided a {name} checksum with value: {given}\nActual {name} was: {actual}|10037"
                )));
            }
        }
        replicate_body(&dir, &blob).inspect_err(|_| drop_blob(&blob))?;
        let meta = R2ObjectMeta {
            key: options.key,
            version: random_hex(),
            size: finished.size,
            etag: hex(&finished.md5),
            uploaded: now_ms(),
            http_metadata: options.http_metadata,
            custom_metadata: options.custom_metadata,
            checksums: serde_json::Value::Object(finished.checksums).to_string(),
            blob: blob.clone(),
        };
        let out = ObjectOut::from(meta.clone());
        // Indexed together with the puts other requests make meanwhile: one commit for all.
        let indexed = bucket(&dir, durability).and_then(|handle| {
            INDEX_WRITES
                .get(&dir)
                .write(&handle, move |b| b.put_indexed(&meta))
        });
        match indexed {
            Ok(replaced) => {
                // The replaced body goes once the index no longer refers to it, durably.
                if let Some(old) = replaced {
                    drop_blob(&old);
                }
                Ok(out)
            }
            Err(error) => {
                drop_blob(&blob);
                Err(error.into())
            }
        }
    })
    .await
    .map_err(|_| message("We encountered an internal error. Please try again."))?;
    binding_files::record("r2", "put", started, result.is_ok());
    result
}

/// Index writes of puts sharing commits, by bucket.
static INDEX_WRITES: binding_files::Groups<R2Bucket, Option<String>> = binding_files::Groups::new();

// --- reading a body -------------------------------------------------------------------------

struct Reader {
    file: Option<File>,
    remaining: u64,
}

/// An object's body (or a range of it) read from its file as it is consumed. A resource:
/// JS reads it with `readableStreamForRid`, and a Response whose body is this stream,
/// untouched, hands the resource itself to the front door, which then reads the file
/// without a chunk ever entering V8.
pub struct R2BodyResource {
    reader: AsyncRefCell<Option<Reader>>,
}

impl R2BodyResource {
    /// The next chunk, at most `limit` bytes (and 1 MiB); empty at the end.
    pub async fn read_vec(self: Rc<Self>, limit: usize) -> Result<Vec<u8>, JsErrorBox> {
        let mut slot = RcRef::map(&self, |r| &r.reader).borrow_mut().await;
        let Some(mut reader) = slot.take() else {
            return Ok(Vec::new());
        };
        // JS reads ask for 64 KiB; the front door, sending a body untouched, for more.
        let limit = limit.clamp(1, NATIVE_CHUNK);
        let (reader, chunk) =
            tokio::task::spawn_blocking(move || -> std::io::Result<(Reader, Vec<u8>)> {
                let want = (limit as u64).min(reader.remaining) as usize;
                let mut chunk = vec![0; want];
                let mut filled = 0;
                if let Some(file) = reader.file.as_mut() {
                    while filled < want {
                        let n = file.read(&mut chunk[filled..])?;
                        if n == 0 {
                            break;
                        }
                        filled += n;
                    }
                }
                chunk.truncate(filled);
                reader.remaining -= filled as u64;
                Ok((reader, chunk))
            })
            .await
            .map_err(|_| {
                JsErrorBox::generic("We encountered an internal error. Please try again.")
            })?
            .map_err(|e| JsErrorBox::generic(format!("R2 body: {e}")))?;
        binding_files::record_bytes("r2", "out", chunk.len());
        if !chunk.is_empty() {
            *slot = Some(reader);
        }
        Ok(chunk)
    }
}

impl Resource for R2BodyResource {
    fn name(&self) -> std::borrow::Cow<'_, str> {
        "dorunR2Body".into()
    }

    fn read(self: Rc<Self>, limit: usize) -> AsyncResult<BufView> {
        Box::pin(async move { self.read_vec(limit).await.map(BufView::from) })
    }
}

/// Opens the body of `key` (if it is still the object `version`) at `offset` for `length`
/// bytes; the rid of an [`R2BodyResource`], or null if the object changed or is gone.
#[op2]
pub async fn op_dorun_r2_open(
    state: Rc<RefCell<OpState>>,
    #[string] bucket: String,
    #[string] key: String,
    #[string] version: String,
    #[number] offset: u64,
    #[number] length: u64,
) -> Result<Option<u32>, R2Error> {
    let file = with(&state, &bucket, "get", move |b| {
        let Some(meta) = b.head(&key)? else {
            return Ok(None);
        };
        if meta.version != version {
            return Ok(None);
        }
        let mut file = File::open(b.blob_path(&meta.blob)).map_err(StorageError::from)?;
        file.seek(SeekFrom::Start(offset))
            .map_err(StorageError::from)?;
        Ok(Some(file))
    })
    .await?;
    let Some(file) = file else {
        return Ok(None);
    };
    let resource = R2BodyResource {
        reader: AsyncRefCell::new(Some(Reader {
            file: Some(file),
            remaining: length,
        })),
    };
    Ok(Some(state.borrow_mut().resource_table.add(resource)))
}

// --- delete and list -----------------------------------------------------------------------

#[op2]
pub async fn op_dorun_r2_delete(
    state: Rc<RefCell<OpState>>,
    #[string] bucket: String,
    #[serde] keys: Vec<String>,
) -> Result<(), R2Error> {
    with(&state, &bucket, "delete", move |b| {
        for key in keys {
            b.delete(&key)?;
        }
        Ok(())
    })
    .await
}

#[derive(serde::Deserialize)]
pub struct ListOptions {
    prefix: String,
    after: Option<String>,
    limit: u32,
    delimiter: Option<String>,
}

#[derive(serde::Serialize)]
pub struct ListOut {
    objects: Vec<ObjectOut>,
    prefixes: Vec<String>,
    next: Option<String>,
}

#[op2]
#[serde]
pub async fn op_dorun_r2_list(
    state: Rc<RefCell<OpState>>,
    #[string] bucket: String,
    #[serde] options: ListOptions,
) -> Result<ListOut, R2Error> {
    with(&state, &bucket, "list", move |b| {
        let page = b.list(
            &options.prefix,
            options.after.as_deref(),
            options.limit as usize,
            options.delimiter.as_deref(),
        )?;
        Ok(ListOut {
            objects: page.objects.into_iter().map(ObjectOut::from).collect(),
            prefixes: page.prefixes,
            next: page.next,
        })
    })
    .await
}

// --- multipart uploads ---------------------------------------------------------------------

#[op2]
#[string]
pub async fn op_dorun_r2_create_upload(
    state: Rc<RefCell<OpState>>,
    #[string] bucket: String,
    #[string] key: String,
    #[string] http_metadata: String,
    #[string] custom_metadata: String,
) -> Result<String, R2Error> {
    with(&state, &bucket, "createMultipartUpload", move |b| {
        let upload_id = random_hex();
        b.create_upload(
            &upload_id,
            &R2Upload {
                key,
                http_metadata,
                custom_metadata,
            },
        )?;
        Ok(upload_id)
    })
    .await
}

/// Commits a written body as part `number` of an upload; the part's etag.
#[op2]
#[string]
pub async fn op_dorun_r2_commit_part(
    state: Rc<RefCell<OpState>>,
    #[smi] id: u32,
    #[string] key: String,
    #[string] upload_id: String,
    #[smi] number: u32,
) -> Result<String, R2Error> {
    let writer = take_writer(&state, id)?;
    let name = writer.bucket.clone();
    with(&state, &name, "uploadPart", move |bucket| {
        let blob = writer.blob.clone();
        if bucket.upload(&upload_id, &key)?.is_none() {
            let _ = std::fs::remove_file(bucket.blob_path(&blob));
            return Err(message(
                "The specified multipart upload does not exist.|10024",
            ));
        }
        let finished = finish(|file| bucket.sync_blob(file), writer)?;
        replicate_body(bucket.dir(), &blob).inspect_err(|_| {
            let _ = std::fs::remove_file(bucket.blob_path(&blob));
        })?;
        let etag = random_hex();
        bucket.put_part(
            &upload_id,
            &R2Part {
                number,
                etag: etag.clone(),
                size: finished.size,
                md5: finished.md5,
                blob,
            },
        )?;
        Ok(etag)
    })
    .await
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompletePart {
    part_number: u32,
    etag: String,
}

/// Joins the named parts into object `key`. Every part but the last must have the same
/// size (at least 5 MiB), the last no more than that.
#[op2]
#[serde]
pub async fn op_dorun_r2_complete(
    state: Rc<RefCell<OpState>>,
    #[string] bucket: String,
    #[string] key: String,
    #[string] upload_id: String,
    #[serde] wanted: Vec<CompletePart>,
) -> Result<ObjectOut, R2Error> {
    const MIN_PART: u64 = 5 << 20;
    with(&state, &bucket, "completeMultipartUpload", move |b| {
        let Some(upload) = b.upload(&upload_id, &key)? else {
            return Err(message(match b.upload_known(&upload_id)? {
                Some(_) => "The specified multipart upload does not exist.|10024",
                None => "We encountered an internal error. Please try again.|10001",
            }));
        };
        let parts = b.parts(&upload_id)?;
        let mut chosen: Vec<&R2Part> = Vec::with_capacity(wanted.len());
        for want in &wanted {
            if chosen.iter().any(|p| p.number == want.part_number) {
                return Err(message("We encountered an internal error. Please try again.|10001"));
            }
            match parts.iter().find(|p| p.number == want.part_number && p.etag == want.etag) {
                Some(part) => chosen.push(part),
                None => {
                    return Err(message(
                        "One or more of the specified parts could not be found.|10025",
                    ))
                }
            }
        }
        // Sizes are checked in the order the parts were given; the body is joined in part
        // number order.
        if let Some((last, rest)) = chosen.split_last() {
            if let Some(first) = rest.first() {
                if first.size < MIN_PART {
                    return Err(message(
                        "Your proposed upload is smaller than the minimum allowed object size.|10011",
                    ));
                }
                if rest.iter().any(|p| p.size != first.size) || last.size > first.size {
                    return Err(message("There was a problem with the multipart upload.|10048"));
                }
            }
        }
        chosen.sort_by_key(|p| p.number);
        // One body made of the parts, in order.
        let blob = random_hex();
        let mut file = b.create_blob(&blob)?;
        let mut size = 0u64;
        let mut md5s = Vec::with_capacity(chosen.len() * 16);
        for part in &chosen {
            let mut source = File::open(b.blob_path(&part.blob)).map_err(StorageError::from)?;
            size += std::io::copy(&mut source, &mut file).map_err(StorageError::from)?;
            md5s.extend_from_slice(&part.md5);
        }
        b.sync_blob(&mut file)?;
        replicate_body(b.dir(), &blob).inspect_err(|_| {
            let _ = std::fs::remove_file(b.blob_path(&blob));
        })?;
        let etag = format!("{}-{}", hex(&md5::Md5::digest(&md5s)), chosen.len());
        let meta = R2ObjectMeta {
            key: key.clone(),
            version: random_hex(),
            size,
            etag,
            uploaded: now_ms(),
            http_metadata: upload.http_metadata,
            custom_metadata: upload.custom_metadata,
            checksums: "{}".into(),
            blob,
        };
        b.put(&meta)?;
        b.finish_upload(&upload_id, 1, &[])?;
        Ok(ObjectOut::from(meta))
    })
    .await
}

#[op2]
pub async fn op_dorun_r2_abort(
    state: Rc<RefCell<OpState>>,
    #[string] bucket: String,
    #[string] key: String,
    #[string] upload_id: String,
) -> Result<(), R2Error> {
    with(&state, &bucket, "abortMultipartUpload", move |b| {
        if b.upload(&upload_id, &key)?.is_none() && b.upload_known(&upload_id)?.is_none() {
            return Err(message(
                "We encountered an internal error. Please try again.|10001",
            ));
        }
        b.finish_upload(&upload_id, 2, &[])?;
        Ok(())
    })
    .await
}
