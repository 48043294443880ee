//! The protocol between the isolate thread and the JS glue: each event a thread hands to
//! JS is one [`IncomingEvent`] variant, named, with everything it carries (RPC arguments,
//! message bytes) inside it; each way JS answers is one op.
//!
//! JS awaits `op_dorun_next_event` in its serve loop and switches on `event.kind`
//! (`"http"`, `"objectFetch"`, `"objectRpc"`, `"objectAlarm"`, `"objectSocket"`,
//! `"localSocket"`, `"exportCall"`, `"exportRelease"`, `"exportRetain"`). An absent value is
//! always `null`. The answer to event `id`:
//! - a Response: `op_dorun_respond` (buffered body) or `op_dorun_respond_stream`;
//! - a failure shown as an HTTP status: `op_dorun_respond_failure`;
//! - an RPC value or error: `op_dorun_reply_value` / `op_dorun_reply_error`;
//! - an alarm's outcome: `op_dorun_alarm_done` / `op_dorun_alarm_retry` /
//!   `op_dorun_alarm_stale` (with the stored time) / `op_dorun_alarm_stale_none`.

use std::cell::RefCell;
use std::rc::Rc;

use bytes::Bytes;
use deno_core::convert::{ByteString, Uint8Array};
use deno_core::{op2, v8, JsBuffer, OpState, ResourceId, ToV8};
use deno_error::JsErrorBox;

use crate::body::{body_resource, RequestBody, ResponseBody};
use crate::context::{IsolateContext, Pending, Replay};
use crate::failure::Failure;
use crate::mailbox::{
    AdminCommand, AlarmOutcome, Event, ObjectCall, PendingReset, Reply, RequestCf, ResetHold,
    SocketMessage, WebSocketToken,
};

/// A request as JS receives it; the body (if any) is a resource read as a stream.
#[derive(ToV8)]
pub struct RequestHead {
    method: ByteString,
    url: String,
    headers: Vec<(ByteString, ByteString)>,
    body_rid: Option<u32>,
    /// `request.cf` as JSON, for a request an object gets through `stub.fetch()`.
    cf: Option<String>,
    /// How many Worker fetches deep this request is (see [`FETCH_DEPTH_HEADER`]).
    fetch_depth: u32,
}

/// The header on which a Worker's `fetch()` (and `stub.fetch()`) carries the depth of the
/// fetch chain to the request it reaches: `<depth>;<token>`. Only a value with this
/// process's token counts, so a client cannot spend a Worker's budget; the header is taken
/// off before the Worker sees the request.
pub const FETCH_DEPTH_HEADER: &str = "x-dorun-fetch-depth";

/// This process's token for [`FETCH_DEPTH_HEADER`].
pub fn fetch_depth_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| format!("{:016x}", rand::random::<u64>()))
}

/// Removes the depth header; the depth it carries if its token is this process's.
fn take_fetch_depth(headers: &mut http::HeaderMap) -> u32 {
    let Some(value) = headers.remove(FETCH_DEPTH_HEADER) else {
        return 0;
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(';'))
        .filter(|(_, token)| *token == fetch_depth_token())
        .and_then(|(depth, _)| depth.parse().ok())
        .unwrap_or(0)
}

/// The object an event is for.
#[derive(ToV8)]
pub struct ObjectTarget {
    namespace: u32,
    id: String,
    name: Option<String>,
}

/// Converts an enum whose variants each hold one struct into the struct's JS object with a
/// tag property naming the variant: the one place each kind's name is spelled.
macro_rules! tagged_to_v8 {
    ($ty:ident, $tag:literal, { $($variant:ident => $name:literal),* $(,)? }) => {
        impl<'a> deno_core::ToV8<'a> for $ty {
            type Error = deno_error::JsErrorBox;
            fn to_v8<'i>(
                self,
                scope: &mut deno_core::v8::PinScope<'a, 'i>,
            ) -> Result<deno_core::v8::Local<'a, deno_core::v8::Value>, Self::Error> {
                match self {
                    $($ty::$variant(body) => $crate::events::with_tag(scope, $tag, $name, body),)*
                }
            }
        }
    };
}
pub(crate) use tagged_to_v8;

/// `body` as a JS object, with `tag: name` added.
pub fn with_tag<'a, T: ToV8<'a, Error = JsErrorBox>>(
    scope: &mut v8::PinScope<'a, '_>,
    tag: &'static str,
    name: &'static str,
    body: T,
) -> Result<v8::Local<'a, v8::Value>, JsErrorBox> {
    let value = body.to_v8(scope)?;
    let object = v8::Local::<v8::Object>::try_from(value)
        .map_err(|_| JsErrorBox::type_error("a tagged value must be an object"))?;
    // Internalized, as the derived conversions make their keys: one string per name for the
    // isolate's life instead of two allocations per event.
    let internalized = |scope: &mut v8::PinScope<'a, '_>, text: &'static str| {
        v8::String::new_from_one_byte(scope, text.as_bytes(), v8::NewStringType::Internalized)
            .ok_or_else(|| JsErrorBox::generic("tag"))
    };
    let key = internalized(scope, tag)?;
    let name = internalized(scope, name)?;
    object.set(scope, key.into(), name.into());
    Ok(object.into())
}

/// What happened on a WebSocket: `{type: "message", data}` (a string or bytes),
/// `{type: "close", code, reason, clean}` or `{type: "error", message}`.
pub enum SocketEvent {
    Message(SocketMessageEvent),
    Close(SocketCloseEvent),
    Failed(SocketErrorEvent),
}

tagged_to_v8!(SocketEvent, "type", {
    Message => "message",
    Close => "close",
    Failed => "error",
});

#[derive(ToV8)]
pub struct SocketMessageEvent {
    data: SocketData,
}

#[derive(ToV8)]
pub struct SocketCloseEvent {
    code: u32,
    reason: String,
    clean: bool,
}

#[derive(ToV8)]
pub struct SocketErrorEvent {
    message: String,
}

/// A WebSocket message: text arrives as a string, binary as bytes.
pub enum SocketData {
    Text(String),
    Binary(Uint8Array),
}

impl<'a> ToV8<'a> for SocketData {
    type Error = JsErrorBox;
    fn to_v8<'i>(
        self,
        scope: &mut v8::PinScope<'a, 'i>,
    ) -> Result<v8::Local<'a, v8::Value>, Self::Error> {
        match self {
            SocketData::Text(text) => text.to_v8(scope).map_err(JsErrorBox::from_err),
            SocketData::Binary(bytes) => bytes.to_v8(scope),
        }
    }
}

impl From<SocketMessage> for SocketEvent {
    fn from(message: SocketMessage) -> Self {
        match message {
            SocketMessage::Text(text) => SocketEvent::Message(SocketMessageEvent {
                data: SocketData::Text(text),
            }),
            SocketMessage::Binary(bytes) => SocketEvent::Message(SocketMessageEvent {
                data: SocketData::Binary(bytes.into()),
            }),
            SocketMessage::Close {
                code,
                reason,
                clean,
            } => SocketEvent::Close(SocketCloseEvent {
                code: u32::from(code),
                reason,
                clean,
            }),
            SocketMessage::Error(message) => SocketEvent::Failed(SocketErrorEvent { message }),
        }
    }
}

/// An event for the JS glue, `{kind, ...}`. `id` names the event in its answer.
pub enum IncomingEvent {
    Http(HttpEvent),
    ObjectFetch(ObjectFetchEvent),
    ObjectRpc(ObjectRpcEvent),
    ObjectAlarm(ObjectAlarmEvent),
    ObjectSocket(ObjectSocketEvent),
    LocalSocket(LocalSocketEvent),
    ExportCall(ExportCallEvent),
    EntrypointCall(EntrypointCallEvent),
    ExportRelease(ExportEvent),
    ExportRetain(ExportEvent),
    Admin(AdminEvent),
}

tagged_to_v8!(IncomingEvent, "kind", {
    Http => "http",
    ObjectFetch => "objectFetch",
    ObjectRpc => "objectRpc",
    ObjectAlarm => "objectAlarm",
    ObjectSocket => "objectSocket",
    LocalSocket => "localSocket",
    ExportCall => "exportCall",
    EntrypointCall => "entrypointCall",
    ExportRelease => "exportRelease",
    ExportRetain => "exportRetain",
    Admin => "admin",
});

/// A request for the Worker's fetch handler.
#[derive(ToV8)]
pub struct HttpEvent {
    id: u32,
    request: RequestHead,
}

/// `stub.fetch()` to an object pinned to this thread.
#[derive(ToV8)]
pub struct ObjectFetchEvent {
    id: u32,
    object: ObjectTarget,
    request: RequestHead,
}

/// An RPC call (or property read, `get`) on an object; `args` are V8-serialized.
#[derive(ToV8)]
pub struct ObjectRpcEvent {
    id: u32,
    object: ObjectTarget,
    method: String,
    get: bool,
    args: Uint8Array,
}

/// The object's alarm is due (`scheduled`: ms since the epoch).
#[derive(ToV8)]
pub struct ObjectAlarmEvent {
    id: u32,
    object: ObjectTarget,
    scheduled: f64,
    retries: u32,
}

/// An event on one of the object's hibernatable WebSockets.
#[derive(ToV8)]
pub struct ObjectSocketEvent {
    id: u32,
    object: ObjectTarget,
    socket: u32,
    event: SocketEvent,
}

/// An event on a WebSocket accepted with `accept()` on this thread.
#[derive(ToV8)]
pub struct LocalSocketEvent {
    id: u32,
    socket: u32,
    event: SocketEvent,
}

/// A call through a stub to a function (`method` null) or `RpcTarget` this isolate exported.
#[derive(ToV8)]
pub struct ExportCallEvent {
    id: u32,
    export: u32,
    method: Option<String>,
    get: bool,
    args: Uint8Array,
}

/// A JS RPC call through a service binding (`entrypointCall`).
#[derive(ToV8)]
pub struct EntrypointCallEvent {
    id: u32,
    entrypoint: Option<String>,
    props: Option<String>,
    method: String,
    get: bool,
    args: Uint8Array,
}

/// The last stub of an export is gone (`exportRelease`), or one was passed on
/// (`exportRetain`: one more holder).
#[derive(ToV8)]
pub struct ExportEvent {
    export: u32,
}

/// An operator's request (admin listener): `action` is `resident`, `evict`, `reset` or
/// `object`; the answer is `op_dorun_reply_value` with UTF-8 JSON.
#[derive(ToV8)]
pub struct AdminEvent {
    id: u32,
    action: String,
    namespace: Option<u32>,
    object_id: Option<String>,
    request: Option<String>,
}

impl AdminEvent {
    /// The event for `command`, and a reset's hold for the op state.
    fn new(id: u32, command: AdminCommand) -> (Self, Option<ResetHold>) {
        let mut hold = None;
        let (action, namespace, object_id, request) = match command {
            AdminCommand::Resident => ("resident", None, None, None),
            AdminCommand::Reset(reset) => {
                let namespace = reset.namespace;
                hold = Some(reset);
                ("reset", namespace, None, None)
            }
            AdminCommand::Evict {
                namespace,
                object_id,
            } => ("evict", Some(namespace), Some(object_id), None),
            AdminCommand::Object {
                namespace,
                object_id,
                request,
            } => ("object", Some(namespace), Some(object_id), Some(request)),
        };
        let event = Self {
            id,
            action: action.to_string(),
            namespace,
            object_id,
            request,
        };
        (event, hold)
    }
}

fn request_head(state: &Rc<RefCell<OpState>>, request: http::Request<RequestBody>) -> RequestHead {
    let (mut parts, body) = request.into_parts();
    let fetch_depth = take_fetch_depth(&mut parts.headers);
    let body_rid = body_resource(state, body);
    let cf = parts.extensions.get::<RequestCf>().map(|cf| cf.0.clone());
    RequestHead {
        cf,
        method: ByteString::from(parts.method.as_str().as_bytes()),
        url: parts.uri.to_string(),
        headers: header_list(&parts.headers),
        body_rid,
        fetch_depth,
    }
}

pub fn header_list(headers: &http::HeaderMap) -> Vec<(ByteString, ByteString)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                ByteString::from(name.as_str().as_bytes()),
                ByteString::from(value.as_bytes()),
            )
        })
        .collect()
}

/// The object's code starts running for event `id` (its constructor or its handler).
#[op2(fast)]
pub fn op_dorun_event_entered(state: &mut OpState, #[smi] id: u32) {
    state.borrow::<IsolateContext>().entered(id);
}

/// Waits for the next event for this isolate; `null` when the pool is shutting down.
#[op2]
pub async fn op_dorun_next_event(state: Rc<RefCell<OpState>>) -> Option<IncomingEvent> {
    let context = state.borrow().borrow::<IsolateContext>().clone();
    let replayed = context.replays.borrow_mut().pop_front();
    let event = match replayed {
        Some(event) => event,
        None => context.queue.lock().await.recv().await?,
    };
    let id = context.next_id.get().wrapping_add(1);
    context.next_id.set(id);
    let expect_reply = |reply| {
        context.in_flight.borrow_mut().insert(
            id,
            Pending {
                reply,
                replay: None,
            },
        );
    };
    Some(match event {
        Event::Http { request, reply } => {
            expect_reply(reply);
            IncomingEvent::Http(HttpEvent {
                id,
                request: request_head(&state, *request),
            })
        }
        Event::Object(event) => {
            let event = *event;
            let replay = event.call.replay_copy().map(|call| {
                Box::new(Replay {
                    namespace: event.namespace,
                    object_id: event.object_id.clone(),
                    object_name: event.object_name.clone(),
                    call,
                })
            });
            context.in_flight.borrow_mut().insert(
                id,
                Pending {
                    reply: event.reply,
                    replay,
                },
            );
            let object = ObjectTarget {
                namespace: event.namespace,
                id: event.object_id,
                name: event.object_name,
            };
            match event.call {
                ObjectCall::Fetch(request) => IncomingEvent::ObjectFetch(ObjectFetchEvent {
                    id,
                    object,
                    request: request_head(&state, request),
                }),
                ObjectCall::Rpc { method, get, args } => IncomingEvent::ObjectRpc(ObjectRpcEvent {
                    id,
                    object,
                    method,
                    get,
                    args: args.into(),
                }),
                ObjectCall::Alarm { scheduled, retries } => {
                    IncomingEvent::ObjectAlarm(ObjectAlarmEvent {
                        id,
                        object,
                        scheduled: scheduled as f64,
                        retries,
                    })
                }
                ObjectCall::Socket { socket, message } => {
                    IncomingEvent::ObjectSocket(ObjectSocketEvent {
                        id,
                        object,
                        socket,
                        event: message.into(),
                    })
                }
            }
        }
        Event::Socket {
            socket,
            message,
            reply,
        } => {
            expect_reply(reply);
            IncomingEvent::LocalSocket(LocalSocketEvent {
                id,
                socket,
                event: message.into(),
            })
        }
        Event::Export {
            export,
            method,
            get,
            args,
            reply,
        } => {
            expect_reply(reply);
            IncomingEvent::ExportCall(ExportCallEvent {
                id,
                export,
                method,
                get,
                args: args.into(),
            })
        }
        Event::Entrypoint {
            entrypoint,
            props,
            method,
            get,
            args,
            reply,
        } => {
            expect_reply(reply);
            IncomingEvent::EntrypointCall(EntrypointCallEvent {
                id,
                entrypoint,
                props,
                method,
                get,
                args: args.into(),
            })
        }
        Event::Release { export } => IncomingEvent::ExportRelease(ExportEvent { export }),
        Event::Retain { export } => IncomingEvent::ExportRetain(ExportEvent { export }),
        Event::Admin { command, reply } => {
            expect_reply(reply);
            let (event, hold) = AdminEvent::new(id, command);
            if hold.is_some() {
                state.borrow_mut().put(PendingReset(hold));
            }
            IncomingEvent::Admin(event)
        }
        Event::Shutdown => return None,
    })
}

/// A Response's own status text (`new Response(body, {statusText})`), when it is not its
/// status's standard one: the front door sends it as the reason phrase, and it crosses a
/// service binding or an object's `fetch()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusText(pub String);

pub fn response_head(
    status: u16,
    headers: Vec<(ByteString, ByteString)>,
    body: ResponseBody,
) -> Result<http::Response<ResponseBody>, JsErrorBox> {
    response_head_with_text(status, None, headers, body)
}

/// [`response_head`] with the Response's status text.
pub fn response_head_with_text(
    status: u16,
    status_text: Option<String>,
    headers: Vec<(ByteString, ByteString)>,
    body: ResponseBody,
) -> Result<http::Response<ResponseBody>, JsErrorBox> {
    let mut response = http::Response::new(body);
    *response.status_mut() = http::StatusCode::from_u16(status)
        .map_err(|_| JsErrorBox::range_error(format!("invalid status code {status}")))?;
    if let Some(text) = status_text
        .filter(|t| !t.is_empty() && Some(t.as_str()) != response.status().canonical_reason())
    {
        response.extensions_mut().insert(StatusText(text));
    }
    let map = response.headers_mut();
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(&name)
            .map_err(|e| JsErrorBox::type_error(e.to_string()))?;
        let value = http::HeaderValue::from_bytes(&value)
            .map_err(|e| JsErrorBox::type_error(e.to_string()))?;
        map.append(name, value);
    }
    Ok(response)
}

fn answer(state: &OpState, id: u32, reply: Reply) {
    if let Some(sender) = state.borrow::<IsolateContext>().take_reply(id) {
        // The caller may have gone away; nothing to do then.
        let _ = sender.send(reply);
    }
}

/// Answers event `id` with a buffered body; `web_socket` is the socket of a 101 response.
#[op2]
pub fn op_dorun_respond(
    state: &mut OpState,
    #[smi] id: u32,
    #[smi] status: u16,
    #[string] status_text: Option<String>,
    #[scoped] headers: Vec<(ByteString, ByteString)>,
    #[buffer] body: Option<JsBuffer>,
    #[smi] web_socket: Option<u32>,
) -> Result<(), JsErrorBox> {
    let body = match body {
        Some(bytes) if !bytes.is_empty() => ResponseBody::full(Bytes::copy_from_slice(&bytes)),
        _ => ResponseBody::Empty,
    };
    let mut response = response_head_with_text(status, status_text, headers, body)?;
    if let Some(socket) = web_socket {
        response.extensions_mut().insert(WebSocketToken(socket));
    }
    answer(state, id, Reply::Response(response));
    Ok(())
}

/// Answers event `id` with the Worker's code having failed (an uncaught exception).
#[op2(fast)]
pub fn op_dorun_respond_failure(state: &mut OpState, #[smi] id: u32) {
    answer(state, id, Reply::Response(Failure::Exception.response()));
}

/// Answers event `id` with the stream behind resource `rid`, copying chunk by chunk.
/// Resolves when the body is fully sent or the client went away.
#[op2]
pub async fn op_dorun_respond_stream(
    state: Rc<RefCell<OpState>>,
    #[smi] id: u32,
    #[smi] status: u16,
    #[string] status_text: Option<String>,
    #[scoped] headers: Vec<(ByteString, ByteString)>,
    #[smi] rid: ResourceId,
) -> Result<(), JsErrorBox> {
    // An R2 object's body is read into buffers handed on as they are (no copy).
    let r2 = state
        .borrow_mut()
        .resource_table
        .take::<crate::r2_binding::R2BodyResource>(rid)
        .ok();
    let resource = match &r2 {
        Some(r2) => r2.clone() as Rc<dyn deno_core::Resource>,
        None => state
            .borrow_mut()
            .resource_table
            .take_any(rid)
            .map_err(JsErrorBox::from_err)?,
    };
    let (tx, body) = ResponseBody::channel();
    let response = match response_head_with_text(status, status_text, headers, body) {
        Ok(response) => response,
        Err(error) => {
            resource.close();
            return Err(error);
        }
    };
    let sender = state.borrow().borrow::<IsolateContext>().take_reply(id);
    let Some(sender) = sender else {
        resource.close();
        return Ok(());
    };
    if sender.send(Reply::Response(response)).is_err() {
        resource.close();
        return Ok(());
    }
    loop {
        // Up to 1 MiB a read: a file-backed body (R2) comes in few large chunks; a stream
        // JS writes gives what it has.
        let chunk = match &r2 {
            Some(r2) => r2.clone().read_vec(1 << 20).await.map(Bytes::from),
            None => resource
                .clone()
                .read(1 << 20)
                .await
                .map(|chunk| Bytes::copy_from_slice(&chunk)),
        };
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(error) => {
                let _ = tx.send(Err(error.to_string().into())).await;
                break;
            }
        };
        if chunk.is_empty() {
            break;
        }
        if tx.send(Ok(chunk)).await.is_err() {
            break;
        }
    }
    resource.close();
    Ok(())
}

/// Answers an RPC, export or socket event with a V8-serialized value.
#[op2(fast)]
pub fn op_dorun_reply_value(state: &mut OpState, #[smi] id: u32, #[buffer] payload: &[u8]) {
    answer(state, id, Reply::Value(payload.to_vec()));
}

/// Answers an object or export event with a V8-serialized error, rethrown at the caller.
#[op2(fast)]
pub fn op_dorun_reply_error(state: &mut OpState, #[smi] id: u32, #[buffer] payload: &[u8]) {
    answer(state, id, Reply::Error(payload.to_vec()));
}

/// The alarm ran (or was given up): the object's storage says what comes next.
#[op2(fast)]
pub fn op_dorun_alarm_done(state: &mut OpState, #[smi] id: u32) {
    answer(state, id, Reply::Alarm(AlarmOutcome::Done));
}

/// alarm() threw: the scheduler retries it after a backoff.
#[op2(fast)]
pub fn op_dorun_alarm_retry(state: &mut OpState, #[smi] id: u32) {
    answer(state, id, Reply::Alarm(AlarmOutcome::Retry));
}

/// The object's own record differs from what fired: it has no alarm.
#[op2(fast)]
pub fn op_dorun_alarm_stale_none(state: &mut OpState, #[smi] id: u32) {
    answer(state, id, Reply::Alarm(AlarmOutcome::Stale(None)));
}

/// The object's own record differs from what fired: its real alarm is at `stored`.
#[op2(fast)]
pub fn op_dorun_alarm_stale(state: &mut OpState, #[smi] id: u32, stored: f64) {
    answer(
        state,
        id,
        Reply::Alarm(AlarmOutcome::Stale(Some(stored as i64))),
    );
}
