//! Calls that leave an isolate: RPC and `fetch` on Durable Object stubs, calls through
//! stubs of exported functions and `RpcTarget`s, and `ReadableStream`s passed along.
//!
//! Each call is an [`Event`] sent through the [`Router`]; the op resolves to a [`CallReply`]
//! that carries the answer itself (a serialized value or error, or a response head whose
//! body is a resource JS reads).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};

use deno_core::convert::{ByteString, Uint8Array};
use deno_core::{op2, JsBuffer, OpState, ResourceId, ToV8};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};

use crate::body::{body_resource, BoxError, RequestBody, RequestBodyResource, ResponseBody};
use crate::context::IsolateContext;
use crate::events::{header_list, tagged_to_v8};
use crate::mailbox::{Event, ObjectCall, ObjectEvent, Reply, RequestCf, WebSocketToken};
use crate::router::{RouteError, Router};

/// Why an outgoing call got no answer.
#[derive(Debug, thiserror::Error, deno_error::JsError)]
#[class(generic)]
pub enum CallError {
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("Durable Object reset while handling the call.")]
    ObjectReset,
    #[error("The RPC stub's target was reset while handling the call.")]
    TargetReset,
    #[class(type)]
    #[error("{0}")]
    BadRequest(String),
    #[error("this stream was already received")]
    StreamTaken,
    #[error(transparent)]
    Resource(#[from] deno_core::error::ResourceError),
}

/// The answer to an outgoing call: `{kind: "value" | "error", payload}` or
/// `{kind: "response", status, headers, bodyRid, webSocket}`.
pub enum CallReply {
    /// A V8-serialized return value.
    Value(Payload),
    /// A V8-serialized error, to rethrow.
    Thrown(Payload),
    /// An object's response to `stub.fetch()`.
    Response(ResponseHead),
}

tagged_to_v8!(CallReply, "kind", {
    Value => "value",
    Thrown => "error",
    Response => "response",
});

#[derive(ToV8)]
pub struct Payload {
    payload: Uint8Array,
}

#[derive(ToV8)]
pub struct ResponseHead {
    status: u16,
    /// The Response's status text (its own, or the status's standard one).
    status_text: String,
    headers: Vec<(ByteString, ByteString)>,
    body_rid: Option<u32>,
    /// The socket of a WebSocket (101) response.
    web_socket: Option<u32>,
}

/// The answer of a call; `lost` is the error for a call whose object or target was reset
/// (a reset answers every event in flight with a failure response).
fn call_reply(
    state: &Rc<RefCell<OpState>>,
    reply: Reply,
    expects_response: bool,
    lost: CallError,
) -> Result<CallReply, CallError> {
    Ok(match reply {
        Reply::Value(bytes) => CallReply::Value(Payload {
            payload: bytes.into(),
        }),
        Reply::Error(bytes) => CallReply::Thrown(Payload {
            payload: bytes.into(),
        }),
        Reply::Response(_) if !expects_response => return Err(lost),
        Reply::Response(response) => {
            let (parts, body) = response.into_parts();
            let body_rid = body_resource(state, body.boxed());
            CallReply::Response(ResponseHead {
                status: parts.status.as_u16(),
                status_text: parts
                    .extensions
                    .get::<crate::events::StatusText>()
                    .map(|t| t.0.clone())
                    .unwrap_or_else(|| {
                        parts
                            .status
                            .canonical_reason()
                            .unwrap_or_default()
                            .to_string()
                    }),
                headers: header_list(&parts.headers),
                body_rid,
                web_socket: parts.extensions.get::<WebSocketToken>().map(|t| t.0),
            })
        }
        // Only the alarm scheduler asks for alarm outcomes.
        Reply::Alarm(_) => return Err(lost),
    })
}

fn router(state: &Rc<RefCell<OpState>>) -> Arc<Router> {
    state.borrow().borrow::<Arc<Router>>().clone()
}

/// The router of worker `worker` (this isolate's own when `None` or its own name): a stub
/// that came from another worker calls back through that worker's threads.
fn router_of(
    state: &Rc<RefCell<OpState>>,
    worker: Option<&str>,
) -> Result<Arc<Router>, RouteError> {
    let own = state
        .borrow()
        .borrow::<IsolateContext>()
        .worker_name
        .clone();
    match worker {
        Some(worker) if *worker != *own => crate::router::of_worker(worker),
        _ => Ok(router(state)),
    }
}

/// Calls an RPC method (or reads a property, `get`) on an object.
#[op2]
#[allow(clippy::too_many_arguments)]
pub async fn op_dorun_object_rpc(
    state: Rc<RefCell<OpState>>,
    #[string] worker: Option<String>,
    #[smi] namespace: u32,
    #[string] object_id: String,
    #[string] object_name: Option<String>,
    #[string] method: String,
    get: bool,
    #[buffer] args: JsBuffer,
) -> Result<CallReply, CallError> {
    let (reply, response) = oneshot::channel();
    router_of(&state, worker.as_deref())?.to_object(ObjectEvent {
        namespace,
        object_id,
        object_name,
        call: ObjectCall::Rpc {
            method,
            get,
            args: args.to_vec(),
        },
        reply,
    })?;
    let reply = response.await.map_err(|_| CallError::ObjectReset)?;
    call_reply(&state, reply, false, CallError::ObjectReset)
}

/// Which object a `stub.fetch()` is for: `worker` is set for a stub from another worker.
#[derive(serde::Deserialize)]
pub struct ObjectTarget {
    worker: Option<String>,
    namespace: u32,
    id: String,
    name: Option<String>,
}

/// The request a `fetch()` from JS sends on (to an object or through a service binding).
fn outgoing_request(
    state: &Rc<RefCell<OpState>>,
    method: &ByteString,
    url: &str,
    headers: &[(ByteString, ByteString)],
    body_rid: Option<ResourceId>,
    cf: Option<String>,
) -> Result<http::Request<RequestBody>, CallError> {
    let method =
        http::Method::from_bytes(method).map_err(|e| CallError::BadRequest(e.to_string()))?;
    let mut builder = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(&name[..], &value[..]);
    }
    let body: RequestBody = match body_rid {
        None => http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed(),
        Some(rid) => body_from_resource(&mut state.borrow_mut(), rid)?,
    };
    let mut request = builder
        .body(body)
        .map_err(|e| CallError::BadRequest(e.to_string()))?;
    if let Some(cf) = cf {
        request.extensions_mut().insert(RequestCf(cf));
    }
    Ok(request)
}

/// `stub.fetch()`: sends a request to an object.
#[op2]
pub async fn op_dorun_object_fetch(
    state: Rc<RefCell<OpState>>,
    #[serde] target: ObjectTarget,
    #[scoped] method: ByteString,
    #[string] url: String,
    #[scoped] headers: Vec<(ByteString, ByteString)>,
    #[smi] body_rid: Option<ResourceId>,
    #[string] cf: Option<String>,
) -> Result<CallReply, CallError> {
    let request = outgoing_request(&state, &method, &url, &headers, body_rid, cf)?;
    let (reply, response) = oneshot::channel();
    router_of(&state, target.worker.as_deref())?.to_object(ObjectEvent {
        namespace: target.namespace,
        object_id: target.id,
        object_name: target.name,
        call: ObjectCall::Fetch(request),
        reply,
    })?;
    let reply = response.await.map_err(|_| CallError::ObjectReset)?;
    call_reply(&state, reply, true, CallError::ObjectReset)
}

// --- service bindings ------------------------------------------------------------------------

/// A service binding (`services = [{ binding, service }]`): the worker it reaches, whose
/// isolate threads' mailboxes are set once its pool has started (never, if that worker is
/// not served by this process).
#[derive(Debug)]
pub struct ServiceLink {
    pub binding: String,
    pub service: String,
    pub entrypoint: Option<String>,
    /// `props` (JSON text): the callee's `ctx.props`.
    pub props: Option<String>,
    pub mailboxes: OnceLock<crate::mailbox::Mailboxes>,
    /// The bound worker's static assets, which answer a `fetch()` they match before its
    /// Worker does (as a request from the front door).
    pub assets: OnceLock<Arc<dorun_assets::Assets>>,
    next: std::sync::atomic::AtomicUsize,
}

impl ServiceLink {
    pub fn new(
        binding: String,
        service: String,
        entrypoint: Option<String>,
        props: Option<String>,
    ) -> Self {
        Self {
            binding,
            service,
            entrypoint,
            props,
            mailboxes: OnceLock::new(),
            assets: OnceLock::new(),
            next: Default::default(),
        }
    }
}

/// The service bindings of this isolate's worker, by index (`env` order).
pub struct ServiceLinks(pub Vec<Arc<ServiceLink>>);

/// `env.<binding>.fetch()`: hands the request to the bound worker's fetch handler, on its
/// isolate threads in turn, as the front door would.
#[op2]
pub async fn op_dorun_service_fetch(
    state: Rc<RefCell<OpState>>,
    #[smi] index: u32,
    #[scoped] method: ByteString,
    #[string] url: String,
    #[scoped] headers: Vec<(ByteString, ByteString)>,
    #[smi] body_rid: Option<ResourceId>,
    #[string] cf: Option<String>,
) -> Result<CallReply, CallError> {
    let link = state
        .borrow()
        .borrow::<ServiceLinks>()
        .0
        .get(index as usize)
        .cloned()
        .ok_or_else(|| CallError::BadRequest("no such service binding".into()))?;
    let request = outgoing_request(&state, &method, &url, &headers, body_rid, cf)?;
    if let Some(assets) = link.assets.get() {
        let has_worker = link.mailboxes.get().is_some();
        let route = assets.route(
            request.method(),
            request.uri(),
            request.headers(),
            has_worker,
        );
        if route == dorun_assets::Route::Assets {
            let assets = assets.clone();
            let (parts, _) = request.into_parts();
            let answer = tokio::task::spawn_blocking(move || {
                assets.fetch(&parts.method, &parts.uri, &parts.headers)
            })
            .await
            .map_err(|_| CallError::BadRequest("the assets could not be read".into()))?;
            let mut response = http::Response::new(ResponseBody::full(answer.body));
            *response.status_mut() = answer.status;
            *response.headers_mut() = answer.headers;
            return call_reply(
                &state,
                Reply::Response(response),
                true,
                CallError::TargetReset,
            );
        }
    }
    let (reply, response) = oneshot::channel();
    link.send(Event::Http {
        request: Box::new(request),
        reply,
    })?;
    let reply = response.await.map_err(|_| CallError::TargetReset)?;
    call_reply(&state, reply, true, CallError::TargetReset)
}

impl ServiceLink {
    /// Hands `event` to the bound worker's isolate threads, in turn.
    fn send(&self, event: Event) -> Result<(), CallError> {
        let Some(mailboxes) = self.mailboxes.get() else {
            return Err(CallError::BadRequest(format!(
                "env.{}: the service binding's worker \"{}\" is not served by this dorun serve; \
                 add its wrangler config to the command (dorun serve a.toml b.toml)",
                self.binding, self.service
            )));
        };
        let threads = mailboxes.len().max(1);
        let thread = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % threads;
        mailboxes
            .get(thread)
            .ok_or(RouteError::NoSuchThread)?
            .send(event)
            .map_err(|_| RouteError::ShuttingDown)?;
        Ok(())
    }
}

/// `env.<binding>.method(...)`: JS RPC to the bound worker's entrypoint (a fresh instance
/// per call, with the binding's `props`).
#[op2]
pub async fn op_dorun_service_call(
    state: Rc<RefCell<OpState>>,
    #[smi] index: u32,
    #[string] method: String,
    get: bool,
    #[buffer] args: JsBuffer,
) -> Result<CallReply, CallError> {
    let link = state
        .borrow()
        .borrow::<ServiceLinks>()
        .0
        .get(index as usize)
        .cloned()
        .ok_or_else(|| CallError::BadRequest("no such service binding".into()))?;
    let (reply, response) = oneshot::channel();
    link.send(Event::Entrypoint {
        entrypoint: link.entrypoint.clone().filter(|e| e != "default"),
        props: link.props.clone(),
        method,
        get,
        args: args.to_vec(),
        reply,
    })?;
    let reply = response.await.map_err(|_| CallError::TargetReset)?;
    call_reply(&state, reply, false, CallError::TargetReset)
}

// --- stubs of functions and RpcTargets -----------------------------------------------------

/// This isolate's thread, which owns the functions and `RpcTarget`s it exports.
#[op2(fast)]
#[smi]
pub fn op_dorun_thread_index(state: &mut OpState) -> u32 {
    state.borrow::<IsolateContext>().thread_index as u32
}

/// Calls an exported function (`method` null) or a method / property of an exported
/// `RpcTarget` on isolate thread `thread`.
#[op2]
pub async fn op_dorun_export_call(
    state: Rc<RefCell<OpState>>,
    #[string] worker: String,
    #[smi] thread: u32,
    #[smi] export: u32,
    #[string] method: Option<String>,
    get: bool,
    #[buffer] args: JsBuffer,
) -> Result<CallReply, CallError> {
    let (reply, response) = oneshot::channel();
    router_of(&state, Some(&worker))?.to_thread(
        thread as usize,
        Event::Export {
            export,
            method,
            get,
            args: args.to_vec(),
            reply,
        },
    )?;
    let reply = response.await.map_err(|_| CallError::TargetReset)?;
    call_reply(&state, reply, false, CallError::TargetReset)
}

/// Tells the thread that exported `export` that no stub of it is left.
#[op2(fast)]
pub fn op_dorun_export_release(
    state: &mut OpState,
    #[string] worker: &str,
    #[smi] thread: u32,
    #[smi] export: u32,
) {
    if let Some(router) = owner(state, worker) {
        let _ = router.to_thread(thread as usize, Event::Release { export });
    }
}

/// The router of `worker`, from a sync op.
fn owner(state: &OpState, worker: &str) -> Option<Arc<Router>> {
    if *state.borrow::<IsolateContext>().worker_name == *worker {
        return Some(state.borrow::<Arc<Router>>().clone());
    }
    crate::router::of_worker(worker).ok()
}

/// A stub of `export` was forwarded to another isolate: its owner counts one more holder.
#[op2(fast)]
pub fn op_dorun_export_retain(
    state: &mut OpState,
    #[string] worker: &str,
    #[smi] thread: u32,
    #[smi] export: u32,
) {
    if let Some(router) = owner(state, worker) {
        let _ = router.to_thread(thread as usize, Event::Retain { export });
    }
}

// --- ReadableStreams across RPC ----------------------------------------------------------

/// A JS stream (resource `rid`, from `resourceForReadableStream`) as a body that another
/// thread can read: chunks are copied through a 4-chunk channel as they are produced.
fn body_from_resource(state: &mut OpState, rid: ResourceId) -> Result<RequestBody, CallError> {
    let resource = state.resource_table.take_any(rid)?;
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
) -> Result<u32, CallError> {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let body = body_from_resource(state, rid)?;
    let token = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) & 0x3fff_ffff;
    streams_in_flight().lock().unwrap().insert(token, body);
    Ok(token)
}

/// Receives a stream sent across RPC: a resource for `readableStreamForRid`.
#[op2(fast)]
#[smi]
pub fn op_dorun_stream_import(state: &mut OpState, #[smi] token: u32) -> Result<u32, CallError> {
    let body = streams_in_flight()
        .lock()
        .unwrap()
        .remove(&token)
        .ok_or(CallError::StreamTaken)?;
    Ok(state.resource_table.add(RequestBodyResource::new(body)))
}
