//! The `dorun` deno_core extension: the ops the JS glue calls, and the glue itself.
//!
//! Request flow inside an isolate: the glue's serve loop awaits `op_dorun_next_request`,
//! which yields requests the front door queued for this thread; it builds a `Request`
//! (body streamed from a [`RequestBodyResource`]), calls the Worker's handler and answers
//! with `op_dorun_respond` (a buffered body) or `op_dorun_respond_stream` (a stream,
//! copied chunk by chunk into the front door's bounded channel).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use deno_core::convert::ByteString;
use deno_core::{
    op2, AsyncRefCell, AsyncResult, BufView, CancelHandle, JsBuffer, OpState, RcRef, Resource,
    ResourceId, ToV8,
};
use deno_error::JsErrorBox;
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};

use crate::body::{RequestBody, ResponseBody};
use crate::loader::ModuleGraph;
use crate::objects::{self, Event, ObjectCall, ObjectConfig, Reply};

deno_core::extension!(
    dorun,
    deps = [deno_webidl, deno_web, deno_crypto, deno_net, deno_fetch],
    ops = [
        op_dorun_next_event,
        op_dorun_event_args,
        op_dorun_respond,
        op_dorun_respond_stream,
        op_dorun_log,
        op_dorun_env,
        op_dorun_module_bytes,
        op_dorun_done,
        objects::op_dorun_id_from_name,
        objects::op_dorun_new_unique_id,
        objects::op_dorun_id_from_string,
        objects::op_dorun_object_rpc,
        objects::op_dorun_object_fetch,
        objects::op_dorun_reply_response,
        objects::op_dorun_reply_payload,
        objects::op_dorun_reply_value,
        objects::op_dorun_storage_open,
        objects::op_dorun_storage_close,
        objects::op_dorun_storage_rollback,
        objects::op_dorun_storage_commit,
        objects::op_dorun_storage_in_transaction,
        objects::op_dorun_storage_savepoint,
        objects::op_dorun_kv_get,
        objects::op_dorun_kv_put,
        objects::op_dorun_kv_delete,
        objects::op_dorun_kv_list,
        objects::op_dorun_kv_delete_all,
        objects::op_dorun_alarm_get,
        objects::op_dorun_alarm_set,
        objects::op_dorun_alarm_done,
        crate::sockets::op_dorun_ws_accept_local,
        crate::sockets::op_dorun_ws_accept_object,
        crate::sockets::op_dorun_ws_send_text,
        crate::sockets::op_dorun_ws_send_binary,
        crate::sockets::op_dorun_ws_close,
        crate::sockets::op_dorun_ws_state,
        crate::sockets::op_dorun_ws_object_sockets,
        crate::sockets::op_dorun_ws_tags,
        crate::sockets::op_dorun_ws_set_attachment,
        crate::sockets::op_dorun_ws_attachment,
        crate::sockets::op_dorun_ws_set_auto_response,
        crate::sockets::op_dorun_ws_auto_response,
        crate::sockets::op_dorun_ws_auto_response_timestamp,
        crate::sockets::op_dorun_ws_set_event_timeout,
        crate::sockets::op_dorun_ws_event_timeout,
        crate::sockets::op_dorun_ws_connect,
        objects::op_dorun_thread_index,
        objects::op_dorun_export_call,
        objects::op_dorun_export_release,
        objects::op_dorun_export_retain,
        objects::op_dorun_stream_export,
        objects::op_dorun_stream_import,
        crate::sockets::op_dorun_ws_start,
        objects::op_dorun_sql_exec,
        objects::op_dorun_sql_database_size,
    ],
    esm_entry_point = "ext:dorun/01_worker.js",
    esm = [
        dir "src/js",
        "async_context.js",
        "00_globals.js",
        "01_worker.js",
        "02_objects.js",
        "03_websockets.js",
    ],
    options = {
        context: IsolateContext,
    },
    state = |state, options| {
        state.put(options.context);
        state.put(objects::ReplyTable::default());
        state.put(objects::OpenDatabases::default());
        state.put(crate::sockets::ParkedSockets::default());
    },
);

/// Events handed to JS but not yet answered, by id. Shared with the isolate thread so that
/// a reset can answer them with an error.
pub type InFlight = Rc<RefCell<HashMap<u32, oneshot::Sender<Reply>>>>;

/// Per-isolate state the ops use.
#[derive(Clone)]
pub struct IsolateContext {
    pub worker_name: Arc<str>,
    pub graph: Arc<ModuleGraph>,
    /// JSON text of the non-binding `env` values.
    pub env_json: Arc<str>,
    pub queue: Rc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>>,
    pub in_flight: InFlight,
    pub next_id: Rc<std::cell::Cell<u32>>,
    /// RPC arguments of events handed to JS, until it takes them.
    pub event_args: Rc<RefCell<HashMap<u32, Vec<u8>>>>,
    /// Every isolate thread's queue, for routing calls to the thread an object lives on.
    pub senders: Arc<Vec<mpsc::UnboundedSender<Event>>>,
    pub objects: Arc<ObjectConfig>,
    pub alarms: Arc<crate::alarms::AlarmScheduler>,
    pub sockets: Arc<crate::sockets::SocketRegistry>,
    /// Which isolate thread this is.
    pub thread_index: usize,
    /// Set by the glue once it has finished after a shutdown: the isolate stops even if
    /// user timers (setInterval) would keep its event loop alive.
    pub done: Rc<std::cell::Cell<bool>>,
}

#[derive(ToV8)]
pub struct IncomingEvent {
    /// 0 = HTTP request for the Worker, 1 = fetch to an object, 2 = RPC to an object,
    /// 3 = an object's alarm, 4 = an object's hibernatable WebSocket event, 5 = an event of a
    /// WebSocket accepted with `accept()` on this thread, 6 = a call to an exported function
    /// or `RpcTarget`, 7 = an export released, 8 = an export retained.
    kind: u32,
    id: u32,
    method: Option<ByteString>,
    url: Option<String>,
    headers: Option<Vec<(ByteString, ByteString)>>,
    body_rid: Option<u32>,
    namespace: Option<u32>,
    object_id: Option<String>,
    object_name: Option<String>,
    rpc_method: Option<String>,
    rpc_get: Option<bool>,
    alarm_scheduled: Option<f64>,
    alarm_retries: Option<u32>,
    socket: Option<u32>,
    export_id: Option<u32>,
    /// 0 text, 1 binary (bytes via `op_dorun_event_args`), 2 close, 3 error.
    socket_event: Option<u32>,
    socket_text: Option<String>,
    close_code: Option<u32>,
    close_clean: Option<bool>,
}

impl IncomingEvent {
    fn empty(kind: u32, id: u32) -> Self {
        Self {
            kind,
            id,
            method: None,
            url: None,
            headers: None,
            body_rid: None,
            namespace: None,
            object_id: None,
            object_name: None,
            rpc_method: None,
            rpc_get: None,
            alarm_scheduled: None,
            alarm_retries: None,
            socket: None,
            export_id: None,
            socket_event: None,
            socket_text: None,
            close_code: None,
            close_clean: None,
        }
    }

    fn with_socket(
        mut self,
        context: &EventContext,
        socket: u32,
        message: crate::sockets::SocketMessage,
    ) -> Self {
        use crate::sockets::SocketMessage;
        self.socket = Some(socket);
        match message {
            SocketMessage::Text(text) => {
                self.socket_event = Some(0);
                self.socket_text = Some(text);
            }
            SocketMessage::Binary(bytes) => {
                self.socket_event = Some(1);
                context.event_args.borrow_mut().insert(self.id, bytes);
            }
            SocketMessage::Close {
                code,
                reason,
                clean,
            } => {
                self.socket_event = Some(2);
                self.close_code = Some(u32::from(code));
                self.socket_text = Some(reason);
                self.close_clean = Some(clean);
            }
            SocketMessage::Error(message) => {
                self.socket_event = Some(3);
                self.socket_text = Some(message);
            }
        }
        self
    }

    fn with_request(
        mut self,
        state: &Rc<RefCell<OpState>>,
        request: http::Request<RequestBody>,
    ) -> Self {
        let (parts, body) = request.into_parts();
        self.body_rid = if http_body::Body::is_end_stream(&body) {
            None
        } else {
            Some(
                state
                    .borrow_mut()
                    .resource_table
                    .add(RequestBodyResource::new(body)),
            )
        };
        self.headers = Some(
            parts
                .headers
                .iter()
                .map(|(name, value)| {
                    (
                        ByteString::from(name.as_str().as_bytes()),
                        ByteString::from(value.as_bytes()),
                    )
                })
                .collect(),
        );
        self.method = Some(ByteString::from(parts.method.as_str().as_bytes()));
        self.url = Some(parts.uri.to_string());
        self
    }
}

/// The glue finished after a shutdown (waitUntil work settled, storage closed).
#[op2(fast)]
pub fn op_dorun_done(state: &mut OpState) {
    state.borrow::<IsolateContext>().done.set(true);
}

/// The parts of the isolate's context an incoming event needs.
struct EventContext {
    in_flight: InFlight,
    event_args: Rc<RefCell<HashMap<u32, Vec<u8>>>>,
}

/// Waits for the next event for this isolate; `None` when the pool is shutting down.
#[op2]
pub async fn op_dorun_next_event(state: Rc<RefCell<OpState>>) -> Option<IncomingEvent> {
    let (queue, next_id, context) = {
        let state = state.borrow();
        let context = state.borrow::<IsolateContext>();
        (
            context.queue.clone(),
            context.next_id.clone(),
            EventContext {
                in_flight: context.in_flight.clone(),
                event_args: context.event_args.clone(),
            },
        )
    };
    let event = queue.lock().await.recv().await?;
    let id = next_id.get().wrapping_add(1);
    next_id.set(id);
    match event {
        Event::Http { request, reply } => {
            context.in_flight.borrow_mut().insert(id, reply);
            Some(IncomingEvent::empty(0, id).with_request(&state, *request))
        }
        Event::Object(event) => {
            let event = *event;
            context.in_flight.borrow_mut().insert(id, event.reply);
            let mut incoming = match event.call {
                ObjectCall::Fetch(request) => {
                    IncomingEvent::empty(1, id).with_request(&state, request)
                }
                ObjectCall::Rpc { method, get, args } => {
                    context.event_args.borrow_mut().insert(id, args);
                    let mut incoming = IncomingEvent::empty(2, id);
                    incoming.rpc_method = Some(method);
                    incoming.rpc_get = Some(get);
                    incoming
                }
                ObjectCall::Socket { socket, message } => {
                    IncomingEvent::empty(4, id).with_socket(&context, socket, message)
                }
                ObjectCall::Alarm { scheduled, retries } => {
                    let mut incoming = IncomingEvent::empty(3, id);
                    incoming.alarm_scheduled = Some(scheduled as f64);
                    incoming.alarm_retries = Some(retries);
                    incoming
                }
            };
            incoming.namespace = Some(event.namespace);
            incoming.object_id = Some(event.object_id);
            incoming.object_name = event.object_name;
            Some(incoming)
        }
        Event::Socket {
            socket,
            message,
            reply,
        } => {
            context.in_flight.borrow_mut().insert(id, reply);
            Some(IncomingEvent::empty(5, id).with_socket(&context, socket, message))
        }
        Event::Export {
            export,
            method,
            get,
            args,
            reply,
        } => {
            context.in_flight.borrow_mut().insert(id, reply);
            context.event_args.borrow_mut().insert(id, args);
            let mut incoming = IncomingEvent::empty(6, id);
            incoming.export_id = Some(export);
            incoming.rpc_method = Some(method);
            incoming.rpc_get = Some(get);
            Some(incoming)
        }
        Event::Release { export } => {
            let mut incoming = IncomingEvent::empty(7, id);
            incoming.export_id = Some(export);
            Some(incoming)
        }
        Event::Retain { export } => {
            let mut incoming = IncomingEvent::empty(8, id);
            incoming.export_id = Some(export);
            Some(incoming)
        }
        Event::Shutdown => None,
    }
}

/// The serialized arguments of RPC event `id`.
#[op2]
#[buffer]
pub fn op_dorun_event_args(state: &mut OpState, #[smi] id: u32) -> Vec<u8> {
    state
        .borrow::<IsolateContext>()
        .event_args
        .borrow_mut()
        .remove(&id)
        .unwrap_or_default()
}

fn response_head(
    status: u16,
    headers: Vec<(ByteString, ByteString)>,
    body: ResponseBody,
) -> Result<http::Response<ResponseBody>, JsErrorBox> {
    let mut response = http::Response::new(body);
    *response.status_mut() = http::StatusCode::from_u16(status)
        .map_err(|_| JsErrorBox::range_error(format!("invalid status code {status}")))?;
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

fn take_reply(state: &OpState, id: u32) -> Option<oneshot::Sender<Reply>> {
    state
        .borrow::<IsolateContext>()
        .in_flight
        .borrow_mut()
        .remove(&id)
}

/// Answers request `id` with a buffered body.
#[op2]
pub fn op_dorun_respond(
    state: &mut OpState,
    #[smi] id: u32,
    #[smi] status: u16,
    #[scoped] headers: Vec<(ByteString, ByteString)>,
    #[buffer] body: Option<JsBuffer>,
    #[smi] websocket: u32,
) -> Result<(), JsErrorBox> {
    let body = match body {
        Some(bytes) if !bytes.is_empty() => ResponseBody::full(Bytes::copy_from_slice(&bytes)),
        _ => ResponseBody::Empty,
    };
    let mut response = response_head(status, headers, body)?;
    if websocket != 0 {
        response
            .extensions_mut()
            .insert(crate::sockets::WebSocketToken(websocket));
    }
    if let Some(reply) = take_reply(state, id) {
        // The client may have gone away; nothing to do then.
        let _ = reply.send(Reply::Response(response));
    }
    Ok(())
}

/// Answers request `id` with the stream behind resource `rid`, copying chunk by chunk.
/// Resolves when the body is fully sent or the client went away.
#[op2]
pub async fn op_dorun_respond_stream(
    state: Rc<RefCell<OpState>>,
    #[smi] id: u32,
    #[smi] status: u16,
    #[scoped] headers: Vec<(ByteString, ByteString)>,
    #[smi] rid: ResourceId,
) -> Result<(), JsErrorBox> {
    let resource = state
        .borrow_mut()
        .resource_table
        .take_any(rid)
        .map_err(JsErrorBox::from_err)?;
    let (tx, body) = ResponseBody::channel();
    let response = match response_head(status, headers, body) {
        Ok(response) => response,
        Err(error) => {
            resource.close();
            return Err(error);
        }
    };
    let Some(reply) = take_reply(&state.borrow(), id) else {
        resource.close();
        return Ok(());
    };
    if reply.send(Reply::Response(response)).is_err() {
        resource.close();
        return Ok(());
    }
    loop {
        let chunk = match resource.clone().read(64 * 1024).await {
            Ok(chunk) => chunk,
            Err(error) => {
                let _ = tx.send(Err(error.to_string().into())).await;
                break;
            }
        };
        if chunk.is_empty() {
            break;
        }
        if tx.send(Ok(Bytes::copy_from_slice(&chunk))).await.is_err() {
            break;
        }
    }
    resource.close();
    Ok(())
}

/// console.* output, routed to tracing and tagged with the worker's name.
#[op2(fast)]
pub fn op_dorun_log(state: &mut OpState, #[smi] level: i32, #[string] message: &str) {
    let worker = &*state.borrow::<IsolateContext>().worker_name;
    let message = message.strip_suffix('\n').unwrap_or(message);
    match level {
        0 => tracing::debug!(target: "dorun::console", worker, "{message}"),
        1 => tracing::info!(target: "dorun::console", worker, "{message}"),
        2 => tracing::warn!(target: "dorun::console", worker, "{message}"),
        _ => tracing::error!(target: "dorun::console", worker, "{message}"),
    }
}

#[op2]
#[string]
pub fn op_dorun_env(state: &mut OpState) -> String {
    state.borrow::<IsolateContext>().env_json.to_string()
}

/// The bytes of a Data or CompiledWasm module.
#[op2]
#[buffer]
pub fn op_dorun_module_bytes(
    state: &mut OpState,
    #[string] url: &str,
) -> Result<Vec<u8>, JsErrorBox> {
    state
        .borrow::<IsolateContext>()
        .graph
        .module_bytes(url)
        .map(|b| b.to_vec())
        .ok_or_else(|| JsErrorBox::generic(format!("no module bytes for {url}")))
}

/// A body from another thread (a request, or a response from an object) as a deno
/// resource, read by `readableStreamForRid`.
pub struct RequestBodyResource {
    body: AsyncRefCell<RequestBody>,
    /// Part of a frame larger than the reader asked for.
    leftover: RefCell<Option<Bytes>>,
    cancel: CancelHandle,
}

impl RequestBodyResource {
    pub fn new(body: RequestBody) -> Self {
        Self {
            body: AsyncRefCell::new(body),
            leftover: RefCell::new(None),
            cancel: CancelHandle::default(),
        }
    }

    async fn read_chunk(self: Rc<Self>, limit: usize) -> Result<BufView, JsErrorBox> {
        let limit = limit.max(1);
        let leftover = self.leftover.borrow_mut().take();
        if let Some(mut rest) = leftover {
            if rest.len() > limit {
                let head = rest.split_to(limit);
                *self.leftover.borrow_mut() = Some(rest);
                return Ok(BufView::from(head.to_vec()));
            }
            return Ok(BufView::from(rest.to_vec()));
        }
        let mut body = RcRef::map(&self, |r| &r.body).borrow_mut().await;
        let cancel = RcRef::map(&self, |r| &r.cancel);
        loop {
            let frame = deno_core::CancelFuture::or_cancel(body.frame(), cancel.clone())
                .await
                .map_err(|_| JsErrorBox::generic("request body read cancelled"))?;
            match frame {
                None => return Ok(BufView::empty()),
                Some(Err(error)) => {
                    return Err(JsErrorBox::generic(format!("request body: {error}")))
                }
                Some(Ok(frame)) => {
                    let Ok(mut data) = frame.into_data() else {
                        continue; // trailers
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if data.len() > limit {
                        let head = data.split_to(limit);
                        *self.leftover.borrow_mut() = Some(data);
                        return Ok(BufView::from(head.to_vec()));
                    }
                    return Ok(BufView::from(data.to_vec()));
                }
            }
        }
    }
}

impl Resource for RequestBodyResource {
    fn name(&self) -> std::borrow::Cow<'_, str> {
        "dorunRequestBody".into()
    }

    fn read(self: Rc<Self>, limit: usize) -> AsyncResult<BufView> {
        Box::pin(self.read_chunk(limit))
    }

    fn close(self: Rc<Self>) {
        self.cancel.cancel();
    }
}
