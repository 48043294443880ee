//! Durable Objects on the Rust side: IDs, routing calls to the isolate thread an object is
//! pinned to, and each object's SQLite storage.
//!
//! IDs follow workerd's local derivation (`actor-id-impl.c++`) so they match workerd and
//! Miniflare byte for byte: `key = SHA-256(uniqueKey)`, a named id is
//! `a = HMAC(key, name)[..16]`, `id = a ‖ HMAC(key, a)[..16]`, in lowercase hex.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use deno_core::convert::ByteString;
use deno_core::{op2, v8, JsBuffer, OpState, ResourceId, ToV8};
use deno_error::JsErrorBox;
use dorun_storage::{Durability, ListOptions, ObjectDatabase, SqlValue};
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::alarms::{AlarmOutcome, AlarmScheduler};
use crate::body::{BoxError, RequestBody, ResponseBody};
use crate::extension::{IsolateContext, RequestBodyResource};

/// A Durable Object class this Worker can reach through a binding.
#[derive(Clone, Debug)]
pub struct ObjectNamespace {
    /// The binding name in `env`.
    pub binding: String,
    pub class_name: String,
    /// Stable key the IDs and the data directory derive from (`<worker>-<Class>`).
    pub unique_key: String,
    /// Created by `new_sqlite_classes` (SQL and sync KV APIs available).
    pub sqlite: bool,
    /// Set when the class lives in another worker served by the same process
    /// (`script_name`): calls go to that worker's isolate threads.
    pub foreign: Option<Arc<ForeignNamespace>>,
}

/// A namespace whose class another worker of this process implements.
#[derive(Debug)]
pub struct ForeignNamespace {
    /// The worker that owns the class.
    pub worker: String,
    /// The namespace's index in the owning worker's namespaces.
    pub index: u32,
    /// The owning worker's isolate threads, set once its pool has started.
    pub senders: OnceLock<Arc<Vec<mpsc::UnboundedSender<Event>>>>,
}

impl ObjectNamespace {
    fn id_key(&self) -> [u8; 32] {
        Sha256::digest(self.unique_key.as_bytes()).into()
    }

    fn mac(&self, head: &[u8; 16]) -> [u8; 16] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.id_key()).expect("any key");
        mac.update(head);
        let out = mac.finalize().into_bytes();
        out[..16].try_into().expect("16 bytes")
    }

    pub fn id_from_name(&self, name: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.id_key()).expect("any key");
        mac.update(name.as_bytes());
        let head: [u8; 16] = mac.finalize().into_bytes()[..16]
            .try_into()
            .expect("16 bytes");
        self.id_from_head(&head)
    }

    fn id_from_head(&self, head: &[u8; 16]) -> String {
        let tail = self.mac(head);
        let mut out = String::with_capacity(64);
        for byte in head.iter().chain(tail.iter()) {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }

    pub fn new_unique_id(&self) -> String {
        let head: [u8; 16] = rand::random();
        self.id_from_head(&head)
    }

    /// Validates a 64-hex id, with Cloudflare's error messages.
    pub fn check_id(&self, text: &str) -> Result<String, &'static str> {
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("Invalid Durable Object ID: must be 64 hex digits");
        }
        let lower = text.to_ascii_lowercase();
        let mut head = [0u8; 16];
        for (i, byte) in head.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&lower[i * 2..i * 2 + 2], 16).expect("hex");
        }
        if self.id_from_head(&head) != lower {
            return Err("Durable Object ID is not valid for this namespace.");
        }
        Ok(lower)
    }
}

/// Everything the Durable Objects layer needs, shared by all isolate threads of a Worker.
#[derive(Debug)]
pub struct ObjectConfig {
    pub namespaces: Vec<ObjectNamespace>,
    pub data_dir: PathBuf,
    pub durability: Durability,
}

/// An event for an isolate thread.
pub enum Event {
    /// A request from the front door for the Worker's fetch handler.
    Http {
        request: Box<http::Request<RequestBody>>,
        reply: oneshot::Sender<Reply>,
    },
    /// A call into a Durable Object pinned to this thread.
    Object(Box<ObjectEvent>),
    /// Something happened on a WebSocket accepted with `accept()` on this thread.
    Socket {
        socket: u32,
        message: crate::sockets::SocketMessage,
        reply: oneshot::Sender<Reply>,
    },
    /// A call through an RPC stub to a function or `RpcTarget` this isolate exported
    /// (passed as an argument or returned as a result). `method` is empty to call a function.
    Export {
        export: u32,
        method: String,
        get: bool,
        args: Vec<u8>,
        reply: oneshot::Sender<Reply>,
    },
    /// The last stub of an export is gone: forget it.
    Release { export: u32 },
    /// A stub of an export was passed on: one more holder.
    Retain { export: u32 },
    /// Stop taking events: the isolate finishes what it has and its thread exits.
    Shutdown,
}

pub struct ObjectEvent {
    pub namespace: u32,
    pub object_id: String,
    pub object_name: Option<String>,
    pub call: ObjectCall,
    pub reply: oneshot::Sender<Reply>,
}

pub enum ObjectCall {
    Fetch(http::Request<RequestBody>),
    /// `get` reads a property instead of calling a method.
    Rpc {
        method: String,
        get: bool,
        args: Vec<u8>,
    },
    /// The object's alarm is due. `scheduled` is the stored time (ms since the epoch).
    Alarm {
        scheduled: i64,
        retries: u32,
    },
    /// Something happened on one of the object's hibernatable WebSockets.
    Socket {
        socket: u32,
        message: crate::sockets::SocketMessage,
    },
}

/// What an event produced.
pub enum Reply {
    Response(http::Response<ResponseBody>),
    /// A V8-serialized return value.
    Value(Vec<u8>),
    /// A V8-serialized error, rethrown at the caller.
    Error(Vec<u8>),
    /// How an alarm event went.
    Alarm(crate::alarms::AlarmOutcome),
}

/// The isolate thread an object lives on.
pub fn thread_for(object_id: &str, threads: usize) -> usize {
    let prefix = u32::from_str_radix(object_id.get(..8).unwrap_or("0"), 16).unwrap_or(0);
    prefix as usize % threads.max(1)
}

/// Sends an object event to the thread that owns the object.
pub fn route(context: &IsolateContext, mut event: ObjectEvent) -> Result<(), JsErrorBox> {
    let foreign = context
        .objects
        .namespaces
        .get(event.namespace as usize)
        .and_then(|n| n.foreign.clone());
    let senders = match &foreign {
        None => &context.senders,
        Some(foreign) => {
            event.namespace = foreign.index;
            foreign.senders.get().ok_or_else(|| {
                JsErrorBox::generic(format!("worker '{}' is not running", foreign.worker))
            })?
        }
    };
    let index = thread_for(&event.object_id, senders.len());
    senders[index]
        .send(Event::Object(Box::new(event)))
        .map_err(|_| JsErrorBox::generic("dorun is shutting down"))
}

fn namespace(state: &OpState, index: u32) -> Result<ObjectNamespace, JsErrorBox> {
    state
        .borrow::<IsolateContext>()
        .objects
        .namespaces
        .get(index as usize)
        .cloned()
        .ok_or_else(|| JsErrorBox::type_error("unknown Durable Object namespace"))
}

#[op2]
#[string]
pub fn op_dorun_id_from_name(
    state: &mut OpState,
    #[smi] namespace_index: u32,
    #[string] name: &str,
) -> Result<String, JsErrorBox> {
    Ok(namespace(state, namespace_index)?.id_from_name(name))
}

#[op2]
#[string]
pub fn op_dorun_new_unique_id(
    state: &mut OpState,
    #[smi] namespace_index: u32,
) -> Result<String, JsErrorBox> {
    Ok(namespace(state, namespace_index)?.new_unique_id())
}

#[op2]
#[string]
pub fn op_dorun_id_from_string(
    state: &mut OpState,
    #[smi] namespace_index: u32,
    #[string] text: &str,
) -> Result<String, JsErrorBox> {
    namespace(state, namespace_index)?
        .check_id(text)
        .map_err(JsErrorBox::type_error)
}

/// Replies that arrived for this isolate's outgoing calls, until JS picks them up.
#[derive(Default)]
pub struct ReplyTable {
    next: u32,
    replies: HashMap<u32, Reply>,
}

const REPLY_RESPONSE: u32 = 0;
const REPLY_VALUE: u32 = 1;
const REPLY_ERROR: u32 = 2;

fn store_reply(state: &Rc<RefCell<OpState>>, reply: Reply) -> u32 {
    let mut state = state.borrow_mut();
    let table = state.borrow_mut::<ReplyTable>();
    table.next = table.next.wrapping_add(1) & 0x3fff_ffff;
    let handle = table.next;
    let kind = match reply {
        Reply::Response(_) => REPLY_RESPONSE,
        Reply::Value(_) => REPLY_VALUE,
        Reply::Error(_) | Reply::Alarm(_) => REPLY_ERROR,
    };
    table.replies.insert(handle, reply);
    handle * 4 + kind
}

fn object_name(name: String) -> Option<String> {
    if name.is_empty() {
        None
    } else {
        Some(name)
    }
}

/// Calls an RPC method (or reads a property) on an object. Resolves to a reply handle:
/// `handle * 4 + kind`, kind 1 = value, 2 = error; read it with `op_dorun_reply_payload`.
#[op2]
pub async fn op_dorun_object_rpc(
    state: Rc<RefCell<OpState>>,
    #[smi] namespace_index: u32,
    #[string] object_id: String,
    #[string] object_name_or_empty: String,
    #[string] method: String,
    get: bool,
    #[buffer] args: JsBuffer,
) -> Result<u32, JsErrorBox> {
    let (reply, response) = oneshot::channel();
    {
        let state = state.borrow();
        let context = state.borrow::<IsolateContext>();
        route(
            context,
            ObjectEvent {
                namespace: namespace_index,
                object_id,
                object_name: object_name(object_name_or_empty),
                call: ObjectCall::Rpc {
                    method,
                    get,
                    args: args.to_vec(),
                },
                reply,
            },
        )?;
    }
    let reply = response
        .await
        .map_err(|_| JsErrorBox::generic("Durable Object reset while handling the call."))?;
    Ok(store_reply(&state, reply))
}

/// `stub.fetch()`: sends a request to an object; resolves to a reply handle like
/// `op_dorun_object_rpc` (kind 0 = response, 2 = error).
#[op2]
#[allow(clippy::too_many_arguments)]
pub async fn op_dorun_object_fetch(
    state: Rc<RefCell<OpState>>,
    #[smi] namespace_index: u32,
    #[string] object_id: String,
    #[string] object_name_or_empty: String,
    #[scoped] method: ByteString,
    #[string] url: String,
    #[scoped] headers: Vec<(ByteString, ByteString)>,
    #[smi] body_rid: Option<ResourceId>,
) -> Result<u32, JsErrorBox> {
    let mut builder = http::Request::builder()
        .method(
            http::Method::from_bytes(&method).map_err(|e| JsErrorBox::type_error(e.to_string()))?,
        )
        .uri(url.as_str());
    for (name, value) in &headers {
        builder = builder.header(&name[..], &value[..]);
    }
    let body: RequestBody = match body_rid {
        None => http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
        Some(rid) => body_from_resource(&mut state.borrow_mut(), rid)?,
    };
    let request = builder
        .body(body)
        .map_err(|e| JsErrorBox::type_error(e.to_string()))?;
    let (reply, response) = oneshot::channel();
    {
        let state = state.borrow();
        let context = state.borrow::<IsolateContext>();
        route(
            context,
            ObjectEvent {
                namespace: namespace_index,
                object_id,
                object_name: object_name(object_name_or_empty),
                call: ObjectCall::Fetch(request),
                reply,
            },
        )?;
    }
    let reply = response
        .await
        .map_err(|_| JsErrorBox::generic("Durable Object reset while handling the request."))?;
    Ok(store_reply(&state, reply))
}

#[derive(ToV8)]
pub struct ResponseHead {
    status: u16,
    headers: Vec<(ByteString, ByteString)>,
    body_rid: Option<u32>,
    /// The socket of a WebSocket (101) response.
    web_socket: Option<u32>,
}

/// The response of a `Reply::Response`; its body becomes a resource JS reads.
#[op2]
pub fn op_dorun_reply_response(
    state: &mut OpState,
    #[smi] handle: u32,
) -> Result<ResponseHead, JsErrorBox> {
    let Some(Reply::Response(response)) = state.borrow_mut::<ReplyTable>().replies.remove(&handle)
    else {
        return Err(JsErrorBox::generic("no response for this handle"));
    };
    let (parts, body) = response.into_parts();
    let web_socket = parts
        .extensions
        .get::<crate::sockets::WebSocketToken>()
        .map(|token| token.0);
    let headers = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                ByteString::from(n.as_str().as_bytes()),
                ByteString::from(v.as_bytes()),
            )
        })
        .collect();
    let body_rid = if http_body::Body::is_end_stream(&body) {
        None
    } else {
        Some(
            state
                .resource_table
                .add(RequestBodyResource::new(body.boxed())),
        )
    };
    Ok(ResponseHead {
        status: parts.status.as_u16(),
        headers,
        body_rid,
        web_socket,
    })
}

#[op2]
#[buffer]
pub fn op_dorun_reply_payload(
    state: &mut OpState,
    #[smi] handle: u32,
) -> Result<Vec<u8>, JsErrorBox> {
    match state.borrow_mut::<ReplyTable>().replies.remove(&handle) {
        Some(Reply::Value(bytes)) | Some(Reply::Error(bytes)) => Ok(bytes),
        _ => Err(JsErrorBox::generic("no payload for this handle")),
    }
}

/// Answers an object RPC event with a serialized value or error.
#[op2(fast)]
pub fn op_dorun_reply_value(
    state: &mut OpState,
    #[smi] id: u32,
    is_error: bool,
    #[buffer] payload: &[u8],
) {
    let sender = state
        .borrow::<IsolateContext>()
        .in_flight
        .borrow_mut()
        .remove(&id);
    if let Some(sender) = sender {
        let payload = payload.to_vec();
        let _ = sender.send(if is_error {
            Reply::Error(payload)
        } else {
            Reply::Value(payload)
        });
    }
}

// --- storage ------------------------------------------------------------------------------

/// How many SQLite connections one isolate thread keeps open. Resident objects beyond this
/// keep their handle; their connection is closed (when no transaction is pending) and
/// reopened on next use, so memory stays bounded however many objects are resident.
const MAX_OPEN_CONNECTIONS: usize = 256;

struct StorageEntry {
    path: PathBuf,
    namespace: u32,
    object_id: String,
    name: Option<String>,
    db: Option<ObjectDatabase>,
    last_used: u64,
}

/// The storage of the objects on this isolate thread, by handle.
#[derive(Default)]
pub struct OpenDatabases {
    next: u32,
    clock: u64,
    connected: usize,
    entries: HashMap<u32, StorageEntry>,
}

impl OpenDatabases {
    fn database(
        &mut self,
        handle: u32,
        durability: Durability,
    ) -> Result<&mut ObjectDatabase, JsErrorBox> {
        self.clock += 1;
        let clock = self.clock;
        let needs_open = match self.entries.get(&handle) {
            None => return Err(JsErrorBox::generic("Durable Object storage is closed")),
            Some(entry) => entry.db.is_none(),
        };
        if needs_open {
            if self.connected >= MAX_OPEN_CONNECTIONS {
                self.close_least_recently_used(handle);
            }
            let entry = self.entries.get_mut(&handle).expect("checked above");
            let db = ObjectDatabase::open(&entry.path, durability).map_err(|e| {
                JsErrorBox::generic(format!(
                    "cannot open Durable Object storage {}: {e}",
                    entry.path.display()
                ))
            })?;
            entry.db = Some(db);
            self.connected += 1;
        }
        let entry = self.entries.get_mut(&handle).expect("checked above");
        entry.last_used = clock;
        Ok(entry.db.as_mut().expect("opened above"))
    }

    fn close_least_recently_used(&mut self, keep: u32) {
        let victim = self
            .entries
            .iter()
            .filter(|(handle, entry)| {
                **handle != keep && entry.db.as_ref().is_some_and(|db| !db.in_transaction())
            })
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(handle, _)| *handle);
        if let Some(victim) = victim {
            if let Some(entry) = self.entries.get_mut(&victim) {
                entry.db = None;
                self.connected -= 1;
            }
        }
    }

    fn remove(&mut self, handle: u32) -> Option<ObjectDatabase> {
        let entry = self.entries.remove(&handle)?;
        if entry.db.is_some() {
            self.connected -= 1;
        }
        entry.db
    }
}

fn storage_error(error: dorun_storage::StorageError) -> JsErrorBox {
    JsErrorBox::generic(error.to_string())
}

fn with_db<T>(
    state: &mut OpState,
    handle: u32,
    f: impl FnOnce(&mut ObjectDatabase) -> dorun_storage::Result<T>,
) -> Result<T, JsErrorBox> {
    let durability = state.borrow::<IsolateContext>().objects.durability;
    let db = state
        .borrow_mut::<OpenDatabases>()
        .database(handle, durability)?;
    f(db).map_err(storage_error)
}

/// Opens the object's SQLite file; returns a handle for the other storage ops. Without
/// `create`, an object that never wrote anything gets handle 0 and no file.
#[op2(fast)]
#[smi]
pub fn op_dorun_storage_open(
    state: &mut OpState,
    #[smi] namespace_index: u32,
    #[string] object_id: &str,
    #[string] object_name_or_empty: &str,
    create: bool,
) -> Result<u32, JsErrorBox> {
    let namespace = namespace(state, namespace_index)?;
    let objects = state.borrow::<IsolateContext>().objects.clone();
    let path = objects
        .data_dir
        .join(&namespace.unique_key)
        .join(format!("{object_id}.sqlite"));
    if !create && !path.exists() {
        return Ok(0);
    }
    let open = state.borrow_mut::<OpenDatabases>();
    open.next = open.next.wrapping_add(1).max(1);
    let handle = open.next;
    open.entries.insert(
        handle,
        StorageEntry {
            path,
            namespace: namespace_index,
            object_id: object_id.to_string(),
            name: object_name(object_name_or_empty.to_string()),
            db: None,
            last_used: 0,
        },
    );
    // Open now, so a bad path or a corrupt file is reported at the first storage call.
    if let Err(error) = open.database(handle, objects.durability) {
        open.remove(handle);
        return Err(error);
    }
    Ok(handle)
}

/// Commits pending writes and closes the file.
#[op2(fast)]
pub fn op_dorun_storage_close(state: &mut OpState, #[smi] handle: u32) -> Result<(), JsErrorBox> {
    let alarms = state.borrow::<IsolateContext>().alarms.clone();
    let open = state.borrow_mut::<OpenDatabases>();
    if let Some(entry) = open.entries.get_mut(&handle) {
        commit_entry(entry, &alarms)?;
    }
    open.remove(handle);
    Ok(())
}

/// Commits an object's implicit transaction, keeping the alarm index and scheduler in step:
/// a new alarm time reaches the index before the commit, a cleared one after it, so the
/// index never misses an alarm the object has.
fn commit_entry(entry: &mut StorageEntry, alarms: &AlarmScheduler) -> Result<(), JsErrorBox> {
    let Some(db) = entry.db.as_mut() else {
        return Ok(());
    };
    let change = db.pending_alarm_change().map_err(storage_error)?;
    if let Some(Some(time)) = change {
        if let Err(error) = alarms.index_put(
            entry.namespace,
            &entry.object_id,
            entry.name.as_deref(),
            time,
        ) {
            let _ = db.rollback();
            return Err(JsErrorBox::generic(error));
        }
    }
    db.commit().map_err(storage_error)?;
    if let Some(time) = change {
        if time.is_none() {
            if let Err(error) = alarms.index_delete(entry.namespace, &entry.object_id) {
                // Harmless: a stale index entry fires, finds no alarm and is dropped.
                tracing::warn!("{error}");
            }
        }
        alarms.update(
            entry.namespace,
            &entry.object_id,
            entry.name.as_deref(),
            time,
        );
    }
    Ok(())
}

/// Drops uncommitted writes (object reset).
#[op2(fast)]
pub fn op_dorun_storage_rollback(
    state: &mut OpState,
    #[smi] handle: u32,
) -> Result<(), JsErrorBox> {
    with_db(state, handle, |db| db.rollback())
}

/// Commits the implicit transaction after the current JS turn: the op yields once, so every
/// write made before the event loop turns again is part of this commit.
#[op2]
pub async fn op_dorun_storage_commit(
    state: Rc<RefCell<OpState>>,
    #[smi] handle: u32,
) -> Result<(), JsErrorBox> {
    tokio::task::yield_now().await;
    let mut state = state.borrow_mut();
    let alarms = state.borrow::<IsolateContext>().alarms.clone();
    let open = state.borrow_mut::<OpenDatabases>();
    match open.entries.get_mut(&handle) {
        Some(entry) => commit_entry(entry, &alarms),
        // Closed by the object, which committed then. (The connection cap only closes
        // connections without a pending transaction.)
        None => Ok(()),
    }
}

/// Whether the object has writes waiting for a commit.
#[op2(fast)]
pub fn op_dorun_storage_in_transaction(state: &mut OpState, #[smi] handle: u32) -> bool {
    state
        .borrow::<OpenDatabases>()
        .entries
        .get(&handle)
        .and_then(|entry| entry.db.as_ref())
        .is_some_and(|db| db.in_transaction())
}

#[op2]
#[buffer]
pub fn op_dorun_kv_get(
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] key: &str,
) -> Result<Option<Vec<u8>>, JsErrorBox> {
    with_db(state, handle, |db| db.kv_get(key))
}

#[op2(fast)]
pub fn op_dorun_kv_put(
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] key: &str,
    #[buffer] value: &[u8],
) -> Result<(), JsErrorBox> {
    with_db(state, handle, |db| db.kv_put(key, value))
}

#[op2(fast)]
pub fn op_dorun_kv_delete(
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] key: &str,
) -> Result<bool, JsErrorBox> {
    with_db(state, handle, |db| db.kv_delete(key))
}

#[derive(deno_core::FromV8)]
pub struct ListArgs {
    start: Option<String>,
    end: Option<String>,
    prefix: Option<String>,
    reverse: Option<bool>,
    limit: Option<u32>,
}

/// Lists entries as a flat array `[key, value, key, value, ...]`.
#[op2]
pub fn op_dorun_kv_list<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    state: &mut OpState,
    #[smi] handle: u32,
    #[scoped] args: ListArgs,
) -> Result<v8::Local<'s, v8::Array>, JsErrorBox> {
    let options = ListOptions {
        start: args.start,
        end: args.end,
        prefix: args.prefix,
        reverse: args.reverse.unwrap_or(false),
        limit: args.limit.map(u64::from),
    };
    let entries = with_db(state, handle, |db| db.kv_list(&options))?;
    let mut values: Vec<v8::Local<'s, v8::Value>> = Vec::with_capacity(entries.len() * 2);
    for (key, value) in entries {
        let key =
            v8::String::new(scope, &key).ok_or_else(|| JsErrorBox::generic("key too long"))?;
        values.push(key.into());
        let length = value.len();
        let store = v8::ArrayBuffer::new_backing_store_from_vec(value).make_shared();
        let buffer = v8::ArrayBuffer::with_backing_store(scope, &store);
        let array = v8::Uint8Array::new(scope, buffer, 0, length)
            .ok_or_else(|| JsErrorBox::generic("value too large"))?;
        values.push(array.into());
    }
    Ok(v8::Array::new_with_elements(scope, &values))
}

#[op2(fast)]
pub fn op_dorun_kv_delete_all(
    state: &mut OpState,
    #[smi] handle: u32,
    keep_alarm: bool,
) -> Result<(), JsErrorBox> {
    with_db(state, handle, |db| db.delete_all(keep_alarm))
}

/// The stored alarm (ms since the epoch) or null.
#[op2]
pub fn op_dorun_alarm_get(
    state: &mut OpState,
    #[smi] handle: u32,
) -> Result<Option<f64>, JsErrorBox> {
    with_db(state, handle, |db| db.alarm()).map(|t| t.map(|t| t as f64))
}

/// Sets (or with a negative time, clears) the alarm in the implicit transaction.
#[op2(fast)]
pub fn op_dorun_alarm_set(
    state: &mut OpState,
    #[smi] handle: u32,
    time: f64,
) -> Result<(), JsErrorBox> {
    let time = (time >= 0.0).then_some(time as i64);
    with_db(state, handle, |db| db.set_alarm(time))
}

/// Reports how alarm event `id` went: 0 done, 1 retry, 2 stale (`time` is the stored alarm,
/// negative for none).
#[op2(fast)]
pub fn op_dorun_alarm_done(state: &mut OpState, #[smi] id: u32, #[smi] outcome: u32, time: f64) {
    let sender = state
        .borrow::<IsolateContext>()
        .in_flight
        .borrow_mut()
        .remove(&id);
    let outcome = match outcome {
        0 => AlarmOutcome::Done,
        1 => AlarmOutcome::Retry,
        _ => AlarmOutcome::Stale((time >= 0.0).then_some(time as i64)),
    };
    if let Some(sender) = sender {
        let _ = sender.send(Reply::Alarm(outcome));
    }
}

#[op2(fast)]
pub fn op_dorun_storage_savepoint(
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] name: &str,
    #[smi] action: u32,
) -> Result<(), JsErrorBox> {
    with_db(state, handle, |db| match action {
        0 => db.savepoint(name),
        1 => db.release(name),
        _ => db.rollback_to(name),
    })
}

#[op2(fast)]
pub fn op_dorun_sql_database_size(
    state: &mut OpState,
    #[smi] handle: u32,
) -> Result<f64, JsErrorBox> {
    with_db(state, handle, |db| db.database_size()).map(|n| n as f64)
}

/// Runs user SQL. Returns `[columnNames, rows, rowsRead, rowsWritten]`; rows are arrays.
#[op2]
pub fn op_dorun_sql_exec<'s>(
    scope: &mut v8::PinScope<'s, '_>,
    state: &mut OpState,
    #[smi] handle: u32,
    #[string] query: &str,
    bindings: v8::Local<'s, v8::Value>,
) -> Result<v8::Local<'s, v8::Array>, JsErrorBox> {
    use deno_core::v8;
    let mut values = Vec::new();
    if let Ok(array) = v8::Local::<v8::Array>::try_from(bindings) {
        for index in 0..array.length() {
            let value = array
                .get_index(scope, index)
                .unwrap_or_else(|| v8::undefined(scope).into());
            values.push(to_sql_value(scope, value)?);
        }
    }
    let result = with_db(state, handle, |db| db.sql_exec(query, &values))?;
    let columns: Vec<v8::Local<v8::Value>> = result
        .columns
        .iter()
        .map(|c| v8::String::new(scope, c).expect("column name").into())
        .collect();
    let columns = v8::Array::new_with_elements(scope, &columns);
    let mut rows = Vec::with_capacity(result.rows.len());
    for row in &result.rows {
        let mut cells = Vec::with_capacity(row.len());
        for cell in row {
            let value: v8::Local<v8::Value> = match cell {
                SqlValue::Null => v8::null(scope).into(),
                SqlValue::Integer(i) => v8::Number::new(scope, *i as f64).into(),
                SqlValue::Real(f) => v8::Number::new(scope, *f).into(),
                SqlValue::Text(s) => v8::String::new(scope, s)
                    .ok_or_else(|| JsErrorBox::generic("string too long"))?
                    .into(),
                SqlValue::Blob(b) => {
                    let store =
                        v8::ArrayBuffer::new_backing_store_from_vec(b.clone()).make_shared();
                    v8::ArrayBuffer::with_backing_store(scope, &store).into()
                }
            };
            cells.push(value);
        }
        rows.push(v8::Array::new_with_elements(scope, &cells).into());
    }
    let rows = v8::Array::new_with_elements(scope, &rows);
    let read = v8::Number::new(scope, result.rows_read as f64);
    let written = v8::Number::new(scope, result.rows_written as f64);
    Ok(v8::Array::new_with_elements(
        scope,
        &[columns.into(), rows.into(), read.into(), written.into()],
    ))
}

fn to_sql_value(
    scope: &mut v8::PinScope<'_, '_>,
    value: v8::Local<'_, v8::Value>,
) -> Result<SqlValue, JsErrorBox> {
    use deno_core::v8;
    if value.is_null_or_undefined() {
        return Ok(SqlValue::Null);
    }
    if value.is_number() {
        let number = value.number_value(scope).unwrap_or(0.0);
        if number.fract() == 0.0 && number.abs() < 9.007_199_254_740_992e15 {
            return Ok(SqlValue::Integer(number as i64));
        }
        return Ok(SqlValue::Real(number));
    }
    if value.is_big_int() {
        let big = v8::Local::<v8::BigInt>::try_from(value).expect("bigint");
        return Ok(SqlValue::Integer(big.i64_value().0));
    }
    if let Ok(view) = v8::Local::<v8::ArrayBufferView>::try_from(value) {
        let mut bytes = vec![0u8; view.byte_length()];
        view.copy_contents(&mut bytes);
        return Ok(SqlValue::Blob(bytes));
    }
    if let Ok(buffer) = v8::Local::<v8::ArrayBuffer>::try_from(value) {
        let length = buffer.byte_length();
        let mut bytes = vec![0u8; length];
        if let Some(view) = v8::Uint8Array::new(scope, buffer, 0, length) {
            view.copy_contents(&mut bytes);
        }
        return Ok(SqlValue::Blob(bytes));
    }
    let text = value
        .to_string(scope)
        .map(|s| s.to_rust_string_lossy(scope))
        .unwrap_or_default();
    Ok(SqlValue::Text(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(unique_key: &str) -> ObjectNamespace {
        ObjectNamespace {
            binding: "NS".into(),
            class_name: "Class".into(),
            unique_key: unique_key.into(),
            sqlite: true,
            foreign: None,
        }
    }

    #[test]
    fn id_from_name_matches_workerd_test_vectors() {
        let ns = namespace("mykey");
        assert_eq!(
            ns.id_from_name("http://foo/"),
            "59002eb8cf872e541722977a258a12d6a93bbe8192b502e1c0cb250aa91af234"
        );
        assert_eq!(
            ns.id_from_name("http://foo/bar"),
            "02b496f65dd35cbac90e3e72dc5a398ee93926ea4a3821e26677082d2e6f9b79"
        );
    }

    #[test]
    fn unique_ids_validate_only_in_their_namespace() {
        let ns = namespace("a");
        let id = ns.new_unique_id();
        assert_eq!(ns.check_id(&id.to_uppercase()), Ok(id.clone()));
        assert_eq!(
            namespace("b").check_id(&id),
            Err("Durable Object ID is not valid for this namespace.")
        );
        assert_eq!(
            ns.check_id("abc"),
            Err("Invalid Durable Object ID: must be 64 hex digits")
        );
    }

    #[test]
    fn objects_spread_over_threads_by_id() {
        assert_eq!(thread_for("00000003ffff", 2), 1);
        assert_eq!(thread_for("00000004ffff", 2), 0);
        assert_eq!(thread_for("ffffffff", 1), 0);
    }
}

// --- RPC stubs of functions and RpcTargets ------------------------------------------------

/// This isolate's thread, which owns the functions and `RpcTarget`s it exports.
#[op2(fast)]
#[smi]
pub fn op_dorun_thread_index(state: &mut OpState) -> u32 {
    state.borrow::<IsolateContext>().thread_index as u32
}

/// Calls an exported function (`method` empty) or a method / property of an exported
/// `RpcTarget` on isolate thread `thread`. Resolves to a reply handle like
/// `op_dorun_object_rpc`.
#[op2]
pub async fn op_dorun_export_call(
    state: Rc<RefCell<OpState>>,
    #[smi] thread: u32,
    #[smi] export: u32,
    #[string] method: String,
    get: bool,
    #[buffer] args: JsBuffer,
) -> Result<u32, JsErrorBox> {
    let (reply, response) = oneshot::channel();
    {
        let state = state.borrow();
        let context = state.borrow::<IsolateContext>();
        context
            .senders
            .get(thread as usize)
            .ok_or_else(|| JsErrorBox::generic("no such isolate thread"))?
            .send(Event::Export {
                export,
                method,
                get,
                args: args.to_vec(),
                reply,
            })
            .map_err(|_| JsErrorBox::generic("dorun is shutting down"))?;
    }
    let reply = response.await.map_err(|_| {
        JsErrorBox::generic("The RPC stub's target was reset while handling the call.")
    })?;
    Ok(store_reply(&state, reply))
}

/// Tells the thread that exported `export` that no stub of it is left.
#[op2(fast)]
pub fn op_dorun_export_release(state: &mut OpState, #[smi] thread: u32, #[smi] export: u32) {
    if let Some(sender) = state
        .borrow::<IsolateContext>()
        .senders
        .get(thread as usize)
    {
        let _ = sender.send(Event::Release { export });
    }
}

/// A stub of `export` was forwarded to another isolate: its owner counts one more holder.
#[op2(fast)]
pub fn op_dorun_export_retain(state: &mut OpState, #[smi] thread: u32, #[smi] export: u32) {
    if let Some(sender) = state
        .borrow::<IsolateContext>()
        .senders
        .get(thread as usize)
    {
        let _ = sender.send(Event::Retain { export });
    }
}

// --- ReadableStreams across RPC ----------------------------------------------------------

/// A JS stream (resource `rid`, from `resourceForReadableStream`) as a body that another
/// thread can read: chunks are copied through a 4-chunk channel as they are produced.
fn body_from_resource(state: &mut OpState, rid: ResourceId) -> Result<RequestBody, JsErrorBox> {
    let resource = state
        .resource_table
        .take_any(rid)
        .map_err(JsErrorBox::from_err)?;
    let (tx, rx) = mpsc::channel::<Result<bytes::Bytes, BoxError>>(4);
    deno_core::unsync::spawn(async move {
        loop {
            match resource.clone().read(64 * 1024).await {
                Ok(chunk) if chunk.is_empty() => break,
                Ok(chunk) => {
                    if tx
                        .send(Ok(bytes::Bytes::copy_from_slice(&chunk)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(error) => {
                    let _ = tx.send(Err(error.to_string().into())).await;
                    break;
                }
            }
        }
        resource.close();
    });
    Ok(ResponseBody::Channel(rx).boxed())
}

/// Streams in flight between isolates (RPC arguments and results), by token. Process-wide:
/// any isolate of any worker may receive one.
fn streams_in_flight() -> &'static std::sync::Mutex<HashMap<u32, RequestBody>> {
    static STREAMS: OnceLock<std::sync::Mutex<HashMap<u32, RequestBody>>> = OnceLock::new();
    STREAMS.get_or_init(Default::default)
}

/// Sends a JS stream across RPC: returns the token the receiving side redeems.
#[op2(fast)]
#[smi]
pub fn op_dorun_stream_export(
    state: &mut OpState,
    #[smi] rid: ResourceId,
) -> Result<u32, JsErrorBox> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let body = body_from_resource(state, rid)?;
    let token = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0x3fff_ffff;
    streams_in_flight().lock().unwrap().insert(token, body);
    Ok(token)
}

/// Receives a stream sent across RPC: a resource for `readableStreamForRid`.
#[op2(fast)]
#[smi]
pub fn op_dorun_stream_import(state: &mut OpState, #[smi] token: u32) -> Result<u32, JsErrorBox> {
    let body = streams_in_flight()
        .lock()
        .unwrap()
        .remove(&token)
        .ok_or_else(|| JsErrorBox::generic("this stream was already received"))?;
    Ok(state.resource_table.add(RequestBodyResource::new(body)))
}
