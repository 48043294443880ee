//! WebSockets held outside JS.
//!
//! The front door terminates every WebSocket (tokio-tungstenite) and keeps it here, in the
//! [`SocketRegistry`], with what the Hibernation API needs to outlive a JS object: tags,
//! the serialized attachment, the object's auto-response. JS holds only socket ids, so an
//! object whose sockets are all hibernatable can be evicted while they stay open; the next
//! message is routed to the object's thread like any other event and rebuilds it.
//!
//! A socket's *target* says where its events go: a hibernatable socket accepted with
//! `ctx.acceptWebSocket` goes to its object (an [`ObjectCall::Socket`] event, through the
//! input gate); one accepted with `ws.accept()` goes to the isolate thread that holds the
//! JS `WebSocket` ([`Event::Socket`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::context::IsolateContext;
use crate::mailbox::{Event, ObjectCall, ObjectEvent, Reply};
pub use crate::mailbox::{SocketMessage, WebSocketToken};
use crate::router::Router;

/// Cloudflare's limits (reference §1.13, §1.17).
pub const MAX_SOCKETS_PER_OBJECT: usize = 32_768;
pub const MAX_TAGS: usize = 10;
pub const MAX_TAG_LENGTH: usize = 256;
pub const MAX_ATTACHMENT_BYTES: usize = 16 * 1024;
pub const MAX_AUTO_RESPONSE_BYTES: usize = 2048;
/// Largest message the front door accepts from a client.
pub const MAX_MESSAGE_BYTES: usize = 32 << 20;
/// Outgoing bytes a socket may have queued for a client that does not read before the
/// socket is closed with 1008: a slow client cannot make the server's memory grow unbounded.
pub const MAX_QUEUED_BYTES: usize = 16 << 20;
/// Outgoing bytes all sockets of the process may have queued together.
pub const MAX_QUEUED_TOTAL_BYTES: usize = 512 << 20;

/// Bytes queued for clients across every socket.
static QUEUED_TOTAL: AtomicUsize = AtomicUsize::new(0);

/// The outgoing bytes queued for one socket's client, counted in the process total too.
/// What is still queued when the last holder drops it leaves the total with it.
#[derive(Default)]
pub struct QueueMeter {
    bytes: AtomicUsize,
}

impl QueueMeter {
    /// Adds `size` bytes; returns (bytes queued before, the process total after).
    fn add(&self, size: usize) -> (usize, usize) {
        let before = self.bytes.fetch_add(size, Ordering::AcqRel);
        let total = QUEUED_TOTAL.fetch_add(size, Ordering::AcqRel) + size;
        (before, total)
    }

    /// `size` bytes went out (or were taken back).
    pub fn sub(&self, size: usize) {
        self.bytes.fetch_sub(size, Ordering::AcqRel);
        QUEUED_TOTAL.fetch_sub(size, Ordering::AcqRel);
    }
}

impl Drop for QueueMeter {
    fn drop(&mut self) {
        QUEUED_TOTAL.fetch_sub(*self.bytes.get_mut(), Ordering::AcqRel);
    }
}

/// Why a socket operation failed, with Cloudflare's messages.
#[derive(Debug, thiserror::Error, deno_error::JsError)]
pub enum SocketError {
    #[class(generic)]
    #[error("only {MAX_SOCKETS_PER_OBJECT} websockets can be accepted on a single Durable Object instance")]
    TooManySockets,
    #[class(type)]
    #[error("Can't call WebSocket send() after close().")]
    SendAfterClose,
    #[class(type)]
    #[error("WebSocket send buffer is full: the client is not reading; the socket was closed.")]
    QueueFull,
    #[class(generic)]
    #[error("only hibernatable websockets can have tags.")]
    NotHibernatable,
    #[class(type)]
    #[error("This WebSocket is already connected to a client; it can be accepted only once.")]
    AlreadyConnected,
}

/// What the front door sends to a client.
#[derive(Debug)]
pub enum Outbound {
    Text(String),
    Binary(Vec<u8>),
    Close(Option<(u16, String)>),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// The worker whose namespace `namespace` indexes (one registry serves every worker of
    /// the process, so a socket can be answered by a class of another worker).
    pub worker: Arc<str>,
    pub namespace: u32,
    pub object_id: String,
}

#[derive(Clone, Debug)]
pub enum SocketTarget {
    /// A `WebSocket` accepted with `accept()` on isolate thread `thread`.
    Local { thread: usize },
    /// A hibernatable socket of an object.
    Object {
        key: ObjectKey,
        name: Option<String>,
    },
}

pub const OPEN: u32 = 1;
pub const CLOSING: u32 = 2;
pub const CLOSED: u32 = 3;

struct SocketEntry {
    target: SocketTarget,
    /// Reaches the isolate threads of the worker that handles the socket's events.
    router: Arc<Router>,
    tags: Vec<String>,
    attachment: Option<Vec<u8>>,
    outbound: mpsc::UnboundedSender<Outbound>,
    /// Taken by the front door when the client connects.
    outbound_rx: Option<mpsc::UnboundedReceiver<Outbound>>,
    queued: Arc<QueueMeter>,
    auto_response_at: Option<f64>,
    state: u32,
}

#[derive(Default)]
struct ObjectSockets {
    ids: BTreeSet<u32>,
    auto_response: Option<(String, String)>,
    event_timeout: Option<f64>,
}

#[derive(Default)]
struct Inner {
    next: u32,
    sockets: HashMap<u32, SocketEntry>,
    objects: HashMap<ObjectKey, ObjectSockets>,
}

/// Every WebSocket of the process, shared by the front door and all isolate threads.
#[derive(Default)]
pub struct SocketRegistry {
    inner: Mutex<Inner>,
}

/// The front door's side of a connected socket.
pub struct Connection {
    pub outbound: mpsc::UnboundedReceiver<Outbound>,
    pub queued: Arc<QueueMeter>,
    pub hibernatable: bool,
}

impl SocketRegistry {
    /// Registers a socket accepted in JS by the worker that `router` reaches.
    pub fn create(
        &self,
        target: SocketTarget,
        tags: Vec<String>,
        router: Arc<Router>,
    ) -> Result<u32, SocketError> {
        let mut inner = self.inner.lock().unwrap();
        if let SocketTarget::Object { key, .. } = &target {
            let count = inner.objects.get(key).map(|o| o.ids.len()).unwrap_or(0);
            if count >= MAX_SOCKETS_PER_OBJECT {
                return Err(SocketError::TooManySockets);
            }
        }
        let mut id = inner.next.wrapping_add(1).max(1);
        while inner.sockets.contains_key(&id) {
            id = id.wrapping_add(1).max(1);
        }
        inner.next = id;
        let (outbound, outbound_rx) = mpsc::unbounded_channel();
        if let SocketTarget::Object { key, .. } = &target {
            inner.objects.entry(key.clone()).or_default().ids.insert(id);
        }
        inner.sockets.insert(
            id,
            SocketEntry {
                target,
                router,
                tags,
                attachment: None,
                outbound,
                outbound_rx: Some(outbound_rx),
                queued: Arc::default(),
                auto_response_at: None,
                state: OPEN,
            },
        );
        Ok(id)
    }

    /// The front door takes a socket's outgoing queue when its client has connected.
    pub fn connect(&self, id: u32) -> Option<Connection> {
        let mut inner = self.inner.lock().unwrap();
        let entry = inner.sockets.get_mut(&id)?;
        Some(Connection {
            outbound: entry.outbound_rx.take()?,
            queued: entry.queued.clone(),
            hibernatable: matches!(entry.target, SocketTarget::Object { .. }),
        })
    }

    /// Queues a message for the client. Errors if the socket is closed or its queue is full.
    pub fn send(&self, id: u32, message: Outbound) -> Result<(), SocketError> {
        let mut inner = self.inner.lock().unwrap();
        let Some(entry) = inner.sockets.get_mut(&id) else {
            return Err(SocketError::SendAfterClose);
        };
        if entry.state != OPEN {
            return Err(SocketError::SendAfterClose);
        }
        let size = match &message {
            Outbound::Text(text) => text.len(),
            Outbound::Binary(bytes) => bytes.len(),
            Outbound::Close(_) => 0,
        };
        let (before, total) = entry.queued.add(size);
        // A socket whose client has read everything may always queue one message (up to
        // the 32 MiB message limit): a large send to a reading client is not "not reading".
        let too_much = (before > 0 && before + size > MAX_QUEUED_BYTES)
            || total > MAX_QUEUED_TOTAL_BYTES
            || (size >= 1 << 20 && crate::memory::over_memory_limit());
        if too_much {
            entry.queued.sub(size);
            entry.state = CLOSING;
            let _ = entry.outbound.send(Outbound::Close(Some((
                1008,
                "send buffer full: the client is not reading".into(),
            ))));
            return Err(SocketError::QueueFull);
        }
        let _ = entry.outbound.send(message);
        Ok(())
    }

    /// The JS side closes the socket.
    pub fn close(&self, id: u32, code: Option<u16>, reason: String) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(entry) = inner.sockets.get_mut(&id) {
            if entry.state == OPEN {
                entry.state = CLOSING;
                let _ = entry
                    .outbound
                    .send(Outbound::Close(code.map(|code| (code, reason))));
            }
        }
    }

    /// Closes every open socket with `code` (server shutdown: 1001 "going away").
    /// Returns how many were open.
    pub fn close_all(&self, code: u16, reason: &str) -> usize {
        let mut inner = self.inner.lock().unwrap();
        let mut closed = 0;
        for entry in inner.sockets.values_mut() {
            if entry.state == OPEN {
                entry.state = CLOSING;
                let _ = entry
                    .outbound
                    .send(Outbound::Close(Some((code, reason.to_string()))));
                closed += 1;
            }
        }
        closed
    }

    /// The client's side is gone (or both sides closed): forget the socket.
    pub fn remove(&self, id: u32) {
        let mut inner = self.inner.lock().unwrap();
        if let Some(entry) = inner.sockets.remove(&id) {
            if let SocketTarget::Object { key, .. } = entry.target {
                if let Some(object) = inner.objects.get_mut(&key) {
                    object.ids.remove(&id);
                    if object.ids.is_empty()
                        && object.auto_response.is_none()
                        && object.event_timeout.is_none()
                    {
                        inner.objects.remove(&key);
                    }
                }
            }
        }
    }

    /// The peer closed: the socket is no longer open for sends.
    pub fn mark_closed(&self, id: u32) {
        if let Some(entry) = self.inner.lock().unwrap().sockets.get_mut(&id) {
            entry.state = CLOSED;
        }
    }

    pub fn state(&self, id: u32) -> u32 {
        self.inner
            .lock()
            .unwrap()
            .sockets
            .get(&id)
            .map(|e| e.state)
            .unwrap_or(CLOSED)
    }

    /// Hands an event to the socket's target. The receiver resolves when JS handled it.
    pub fn deliver(&self, id: u32, message: SocketMessage) -> Option<oneshot::Receiver<Reply>> {
        let (target, router) = {
            let inner = self.inner.lock().unwrap();
            let entry = inner.sockets.get(&id)?;
            (entry.target.clone(), entry.router.clone())
        };
        let (reply, receiver) = oneshot::channel();
        let sent = match target {
            SocketTarget::Local { thread } => router.to_thread(
                thread,
                Event::Socket {
                    socket: id,
                    message,
                    reply,
                },
            ),
            SocketTarget::Object { key, name } => router.to_object(ObjectEvent {
                namespace: key.namespace,
                object_id: key.object_id,
                object_name: name,
                call: ObjectCall::Socket {
                    socket: id,
                    message,
                },
                reply,
            }),
        };
        sent.ok()?;
        Some(receiver)
    }

    /// If `text` is the object's auto-response request, records the time and returns the
    /// response to send without waking the object.
    pub fn auto_response(&self, id: u32, text: &str) -> Option<String> {
        let mut inner = self.inner.lock().unwrap();
        let inner = &mut *inner;
        let entry = inner.sockets.get_mut(&id)?;
        let SocketTarget::Object { key, .. } = &entry.target else {
            return None;
        };
        let (request, response) = inner.objects.get(key)?.auto_response.as_ref()?;
        if request != text {
            return None;
        }
        entry.auto_response_at = Some(crate::clock::now_ms() as f64);
        Some(response.clone())
    }

    /// The hibernatable sockets of an object, optionally only those with `tag`.
    pub fn object_sockets(&self, key: &ObjectKey, tag: Option<&str>) -> Vec<u32> {
        let inner = self.inner.lock().unwrap();
        let Some(object) = inner.objects.get(key) else {
            return Vec::new();
        };
        object
            .ids
            .iter()
            .copied()
            .filter(|id| {
                inner.sockets.get(id).is_some_and(|entry| {
                    entry.state != CLOSED
                        && tag.is_none_or(|tag| entry.tags.iter().any(|t| t == tag))
                })
            })
            .collect()
    }

    pub fn tags(&self, id: u32) -> Option<Vec<String>> {
        let inner = self.inner.lock().unwrap();
        let entry = inner.sockets.get(&id)?;
        matches!(entry.target, SocketTarget::Object { .. }).then(|| entry.tags.clone())
    }

    pub fn set_attachment(&self, id: u32, bytes: Option<Vec<u8>>) {
        if let Some(entry) = self.inner.lock().unwrap().sockets.get_mut(&id) {
            entry.attachment = bytes;
        }
    }

    pub fn attachment(&self, id: u32) -> Option<Vec<u8>> {
        self.inner
            .lock()
            .unwrap()
            .sockets
            .get(&id)
            .and_then(|e| e.attachment.clone())
    }

    pub fn auto_response_timestamp(&self, id: u32) -> Option<f64> {
        self.inner
            .lock()
            .unwrap()
            .sockets
            .get(&id)
            .and_then(|e| e.auto_response_at)
    }

    pub fn set_auto_response(&self, key: &ObjectKey, pair: Option<(String, String)>) {
        let mut inner = self.inner.lock().unwrap();
        inner.objects.entry(key.clone()).or_default().auto_response = pair;
    }

    pub fn get_auto_response(&self, key: &ObjectKey) -> Option<(String, String)> {
        let inner = self.inner.lock().unwrap();
        inner.objects.get(key)?.auto_response.clone()
    }

    pub fn set_event_timeout(&self, key: &ObjectKey, ms: Option<f64>) {
        let mut inner = self.inner.lock().unwrap();
        inner.objects.entry(key.clone()).or_default().event_timeout = ms;
    }

    pub fn event_timeout(&self, key: &ObjectKey) -> Option<f64> {
        let inner = self.inner.lock().unwrap();
        inner.objects.get(key)?.event_timeout
    }

    /// How many sockets are registered (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap().sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every socket with `code` and forgets them all at once (the admin's reset):
    /// no further event of these sockets reaches an object. Returns how many there were.
    pub fn reset(&self, code: u16, reason: &str) -> usize {
        let mut inner = self.inner.lock().unwrap();
        for entry in inner.sockets.values() {
            if entry.state == OPEN {
                let _ = entry
                    .outbound
                    .send(Outbound::Close(Some((code, reason.to_string()))));
            }
        }
        let count = inner.sockets.len();
        inner.sockets.clear();
        inner.objects.clear();
        count
    }

    /// Like [`reset`](Self::reset), for the objects of `worker`'s namespace `namespace`
    /// only: their hibernatable sockets closed with `code` and forgotten, with their
    /// auto-responses and event timeouts. (Their sockets accepted without hibernation are
    /// closed by the isolate thread that drops them.) Returns how many sockets were closed.
    pub fn reset_namespace(&self, worker: &str, namespace: u32, code: u16, reason: &str) -> usize {
        let of_namespace = |key: &ObjectKey| &*key.worker == worker && key.namespace == namespace;
        let mut inner = self.inner.lock().unwrap();
        let ids: Vec<u32> = inner
            .sockets
            .iter()
            .filter(|(_, entry)| {
                matches!(&entry.target, SocketTarget::Object { key, .. } if of_namespace(key))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some(entry) = inner.sockets.remove(id) {
                if entry.state == OPEN {
                    let _ = entry
                        .outbound
                        .send(Outbound::Close(Some((code, reason.to_string()))));
                }
            }
        }
        inner.objects.retain(|key, _| !of_namespace(key));
        ids.len()
    }

    /// The objects that hold hibernatable sockets: (worker, namespace index, object id).
    pub fn objects_with_sockets(&self) -> Vec<ObjectKey> {
        let inner = self.inner.lock().unwrap();
        inner
            .objects
            .iter()
            .filter(|(_, o)| !o.ids.is_empty())
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// (open sockets, of which hibernatable) for the metrics.
    pub fn counts(&self) -> (usize, usize) {
        let inner = self.inner.lock().unwrap();
        let hibernatable = inner
            .sockets
            .values()
            .filter(|e| matches!(e.target, SocketTarget::Object { .. }))
            .count();
        (inner.sockets.len(), hibernatable)
    }
}

/// Messages of one socket handed to JS and not yet handled.
pub const IN_FLIGHT_PER_SOCKET: usize = 32;

/// tungstenite settings for every socket: small buffers (a hibernated socket costs a few
/// KiB, not the default 128 KiB read buffer), writes go out as they are sent, messages up
/// to Cloudflare's 32 MiB.
pub fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// The close event of a connection that ended without a Close frame.
pub fn disconnected() -> SocketMessage {
    SocketMessage::Close {
        code: 1006,
        reason: "WebSocket disconnected without sending Close frame.".into(),
        clean: false,
    }
}

/// Pumps frames between a connected WebSocket and its registry entry until it closes:
/// incoming messages become events for the socket's target (at most [`IN_FLIGHT_PER_SOCKET`]
/// unhandled at a time, then reading stops and TCP pushes back), queued outgoing ones are
/// written. The last event (close) is delivered after every earlier one was handled.
pub async fn pump<S>(stream: WebSocketStream<S>, registry: Arc<SocketRegistry>, socket: u32)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(connection) = registry.connect(socket) else {
        return;
    };
    let mut outbound = connection.outbound;
    let queued = connection.queued;
    let (mut sink, mut incoming) = stream.split();
    // Events handed to the target and not yet handled. Their completions wake this task
    // (which the reply that usually comes with them wakes anyway), not a task of their own.
    let mut in_flight = FuturesUnordered::new();
    // The close event, delivered after every message before it was handled.
    let mut last: Option<SocketMessage> = None;
    loop {
        tokio::select! {
            Some(_) = in_flight.next(), if !in_flight.is_empty() => {}
            frame = incoming.next(), if in_flight.len() < IN_FLIGHT_PER_SOCKET => {
                let message = match frame {
                    Some(Ok(Message::Text(text))) => {
                        let text = text.as_str();
                        if connection.hibernatable {
                            if let Some(reply) = registry.auto_response(socket, text) {
                                if sink.send(Message::Text(reply.into())).await.is_err() {
                                    registry.mark_closed(socket);
                                    last = Some(disconnected());
                                    break;
                                }
                                continue;
                            }
                        }
                        SocketMessage::Text(text.to_string())
                    }
                    Some(Ok(Message::Binary(bytes))) => SocketMessage::Binary(bytes.to_vec()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                        // tungstenite queued the pong; flush it.
                        let _ = sink.flush().await;
                        continue;
                    }
                    Some(Ok(Message::Close(frame))) => {
                        registry.mark_closed(socket);
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        // tungstenite answers the Close frame itself (flushed here).
                        let _ = sink.flush().await;
                        last = Some(SocketMessage::Close { code, reason, clean: true });
                        break;
                    }
                    Some(Err(error)) => {
                        tracing::debug!("websocket {socket}: {error}");
                        if matches!(error, tokio_tungstenite::tungstenite::Error::Capacity(_)) {
                            // A message over the limit: say so with 1009, as Cloudflare does,
                            // instead of dropping the TCP connection.
                            let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                                code: 1009u16.into(),
                                reason: "message too big".into(),
                            };
                            let _ = sink.send(Message::Close(Some(frame))).await;
                        }
                        registry.mark_closed(socket);
                        last = Some(disconnected());
                        break;
                    }
                    None => {
                        registry.mark_closed(socket);
                        last = Some(disconnected());
                        break;
                    }
                };
                match registry.deliver(socket, message) {
                    Some(done) => in_flight.push(done),
                    None => break,
                }
            }
            out = outbound.recv() => {
                let Some(out) = out else { break };
                // Everything queued goes out in one write (pipelined clients, broadcasts).
                let mut result = sink.feed(outbound_message(out, &queued)).await;
                for _ in 1..OUTBOUND_BATCH {
                    let Ok(more) = outbound.try_recv() else { break };
                    if result.is_err() {
                        break;
                    }
                    result = sink.feed(outbound_message(more, &queued)).await;
                }
                if result.is_ok() {
                    result = sink.flush().await;
                }
                if result.is_err() {
                    registry.mark_closed(socket);
                    last = Some(disconnected());
                    break;
                }
            }
        }
    }
    // Wait for the events already handed out before forgetting the socket, so a handler
    // that runs late still finds its tags and attachment.
    while in_flight.next().await.is_some() {}
    if let Some(done) = last.and_then(|message| registry.deliver(socket, message)) {
        let _ = done.await;
    }
    registry.remove(socket);
}

/// Outbound messages written to a socket before one flush.
const OUTBOUND_BATCH: usize = 64;

fn outbound_message(out: Outbound, queued: &QueueMeter) -> Message {
    match out {
        Outbound::Text(text) => {
            queued.sub(text.len());
            Message::Text(text.into())
        }
        Outbound::Binary(bytes) => {
            queued.sub(bytes.len());
            Message::Binary(bytes.into())
        }
        // Then the pump waits for the client's Close frame (read by the other branch).
        Outbound::Close(frame) => Message::Close(frame.map(|(code, reason)| CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        })),
    }
}

// --- ops ----------------------------------------------------------------------------------

use deno_core::{op2, JsBuffer, OpState};
use deno_error::JsErrorBox;

fn registry(state: &OpState) -> Arc<SocketRegistry> {
    state.borrow::<Arc<SocketRegistry>>().clone()
}

fn router(state: &OpState) -> Arc<Router> {
    state.borrow::<Arc<Router>>().clone()
}

/// `ws.accept()`: the socket's events come to this thread's JS `WebSocket`.
#[op2(fast)]
#[smi]
pub fn op_dorun_ws_accept_local(state: &mut OpState) -> Result<u32, SocketError> {
    let thread = state.borrow::<IsolateContext>().thread_index;
    registry(state).create(SocketTarget::Local { thread }, Vec::new(), router(state))
}

fn object_key(state: &OpState, namespace: u32, object_id: String) -> ObjectKey {
    ObjectKey {
        worker: state.borrow::<IsolateContext>().worker_name.clone(),
        namespace,
        object_id,
    }
}

/// `ctx.acceptWebSocket(ws, tags)`: the socket's events go to the object.
#[op2]
#[smi]
pub fn op_dorun_ws_accept_object(
    state: &mut OpState,
    #[smi] namespace: u32,
    #[string] object_id: String,
    #[string] name: Option<String>,
    #[serde] tags: Vec<String>,
) -> Result<u32, SocketError> {
    let target = SocketTarget::Object {
        key: object_key(state, namespace, object_id),
        name,
    };
    registry(state).create(target, tags, router(state))
}

#[op2(fast)]
pub fn op_dorun_ws_send_text(
    state: &mut OpState,
    #[smi] id: u32,
    #[string] text: String,
) -> Result<(), SocketError> {
    registry(state).send(id, Outbound::Text(text))
}

#[op2(fast)]
pub fn op_dorun_ws_send_binary(
    state: &mut OpState,
    #[smi] id: u32,
    #[buffer] bytes: &[u8],
) -> Result<(), SocketError> {
    registry(state).send(id, Outbound::Binary(bytes.to_vec()))
}

/// Closes with `code` (if any) and `reason`.
#[op2]
pub fn op_dorun_ws_close(
    state: &mut OpState,
    #[smi] id: u32,
    #[smi] code: Option<u32>,
    #[string] reason: String,
) {
    let code = code.and_then(|code| u16::try_from(code).ok());
    registry(state).close(id, code, reason);
}

#[op2(fast)]
#[smi]
pub fn op_dorun_ws_state(state: &mut OpState, #[smi] id: u32) -> u32 {
    registry(state).state(id)
}

#[op2]
#[serde]
pub fn op_dorun_ws_object_sockets(
    state: &mut OpState,
    #[smi] namespace: u32,
    #[string] object_id: String,
    #[string] tag: Option<String>,
) -> Vec<u32> {
    let key = object_key(state, namespace, object_id);
    registry(state).object_sockets(&key, tag.as_deref())
}

#[op2]
#[serde]
pub fn op_dorun_ws_tags(state: &mut OpState, #[smi] id: u32) -> Result<Vec<String>, SocketError> {
    registry(state).tags(id).ok_or(SocketError::NotHibernatable)
}

#[op2]
pub fn op_dorun_ws_set_attachment(
    state: &mut OpState,
    #[smi] id: u32,
    #[buffer] bytes: Option<JsBuffer>,
) {
    registry(state).set_attachment(id, bytes.map(|b| b.to_vec()));
}

#[op2]
#[buffer]
pub fn op_dorun_ws_attachment(state: &mut OpState, #[smi] id: u32) -> Option<Vec<u8>> {
    registry(state).attachment(id)
}

#[op2]
pub fn op_dorun_ws_set_auto_response(
    state: &mut OpState,
    #[smi] namespace: u32,
    #[string] object_id: String,
    #[string] request: Option<String>,
    #[string] response: Option<String>,
) {
    let key = object_key(state, namespace, object_id);
    registry(state).set_auto_response(&key, request.zip(response));
}

#[op2]
#[serde]
pub fn op_dorun_ws_auto_response(
    state: &mut OpState,
    #[smi] namespace: u32,
    #[string] object_id: String,
) -> Option<(String, String)> {
    let key = object_key(state, namespace, object_id);
    registry(state).get_auto_response(&key)
}

#[op2]
pub fn op_dorun_ws_auto_response_timestamp(state: &mut OpState, #[smi] id: u32) -> Option<f64> {
    registry(state).auto_response_timestamp(id)
}

/// Sets (0: unsets) the object's hibernatable event timeout.
#[op2(fast)]
pub fn op_dorun_ws_set_event_timeout(
    state: &mut OpState,
    #[smi] namespace: u32,
    #[string] object_id: String,
    ms: f64,
) {
    let key = object_key(state, namespace, object_id);
    registry(state).set_event_timeout(&key, (ms > 0.0).then_some(ms));
}

#[op2]
pub fn op_dorun_ws_event_timeout(
    state: &mut OpState,
    #[smi] namespace: u32,
    #[string] object_id: String,
) -> Option<f64> {
    let key = object_key(state, namespace, object_id);
    registry(state).event_timeout(&key)
}

// --- outbound sockets -----------------------------------------------------------------------

type ClientStream = WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Outbound sockets connected but not started: their frames are pumped only once JS has a
/// `WebSocket` listening (`op_dorun_ws_start`), so no event arrives before there is a handler.
#[derive(Default)]
pub struct ParkedSockets(HashMap<u32, ClientStream>);

fn tls_connector() -> Result<tokio_tungstenite::Connector, JsErrorBox> {
    let config = deno_tls::create_client_config(deno_tls::TlsClientConfigOptions {
        root_cert_store: Some(deno_tls::create_default_root_cert_store()),
        ca_certs: Vec::new(),
        unsafely_ignore_certificate_errors: None,
        unsafely_disable_hostname_verification: false,
        cert_chain_and_key: deno_tls::TlsKeys::Null,
        socket_use: deno_tls::SocketUse::Http1Only,
    })
    .map_err(|e| JsErrorBox::generic(format!("TLS setup failed: {e}")))?;
    Ok(tokio_tungstenite::Connector::Rustls(Arc::new(config)))
}

/// Connects to a `ws://` or `wss://` URL (`new WebSocket(url)`, or `fetch` with
/// `Upgrade: websocket`). Resolves to `[id, protocol]` once the handshake is done.
#[op2]
#[serde]
pub async fn op_dorun_ws_connect(
    state: std::rc::Rc<std::cell::RefCell<OpState>>,
    #[string] url: String,
    #[serde] headers: Vec<(String, String)>,
) -> Result<(u32, String), JsErrorBox> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| JsErrorBox::new("SyntaxError", format!("Invalid WebSocket URL {url}: {e}")))?;
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if matches!(
            lower.as_str(),
            "upgrade"
                | "connection"
                | "host"
                | "sec-websocket-key"
                | "sec-websocket-version"
                | "sec-websocket-extensions"
                | "content-length"
        ) {
            continue;
        }
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| JsErrorBox::type_error(e.to_string()))?;
        let value = http::HeaderValue::from_str(&value)
            .map_err(|e| JsErrorBox::type_error(e.to_string()))?;
        request.headers_mut().append(name, value);
    }
    let connector = if request.uri().scheme_str() == Some("wss") {
        Some(tls_connector()?)
    } else {
        None
    };
    let (stream, response) = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(socket_config()),
        false,
        connector,
    )
    .await
    .map_err(|e| JsErrorBox::generic(format!("WebSocket connection to {url} failed: {e}")))?;
    let protocol = response
        .headers()
        .get(http::header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut state = state.borrow_mut();
    let thread = state.borrow::<IsolateContext>().thread_index;
    let id = registry(&state)
        .create(SocketTarget::Local { thread }, Vec::new(), router(&state))
        .map_err(JsErrorBox::from_err)?;
    state.borrow_mut::<ParkedSockets>().0.insert(id, stream);
    Ok((id, protocol))
}

/// `accept()` of a client end whose server end lives elsewhere (an object returned it
/// through `stub.fetch()`): the calling isolate becomes that socket's client. Returns the id
/// of a new socket on this thread whose events are what the server end sends; what JS sends
/// on it reaches the server end as incoming messages.
#[op2(fast)]
#[smi]
pub fn op_dorun_ws_accept_remote(
    state: &mut OpState,
    #[smi] remote: u32,
) -> Result<u32, SocketError> {
    let registry = registry(state);
    let thread = state.borrow::<IsolateContext>().thread_index;
    let server = registry
        .connect(remote)
        .ok_or(SocketError::AlreadyConnected)?;
    let local = registry.create(SocketTarget::Local { thread }, Vec::new(), router(state))?;
    let client = registry.connect(local).expect("a socket just created");
    tokio::spawn(relay(registry, (remote, server), (local, client)));
    Ok(local)
}

/// Carries messages between two sockets of the registry, both ends in isolates: what one
/// sends is delivered to the other as an incoming message. A close from either side is
/// delivered to both (as a client would answer it) and ends the relay.
async fn relay(
    registry: Arc<SocketRegistry>,
    (a, mut a_out): (u32, Connection),
    (b, mut b_out): (u32, Connection),
) {
    let forward = |from: &Connection, to: u32, message: Outbound| -> bool {
        let message = match message {
            Outbound::Text(text) => {
                from.queued.sub(text.len());
                SocketMessage::Text(text)
            }
            Outbound::Binary(bytes) => {
                from.queued.sub(bytes.len());
                SocketMessage::Binary(bytes)
            }
            Outbound::Close(frame) => {
                let (code, reason) = frame.unwrap_or((1005, String::new()));
                for id in [a, b] {
                    registry.mark_closed(id);
                    registry.deliver(
                        id,
                        SocketMessage::Close {
                            code,
                            reason: reason.clone(),
                            clean: true,
                        },
                    );
                }
                return false;
            }
        };
        registry.deliver(to, message).is_some()
    };
    loop {
        let open = tokio::select! {
            message = a_out.outbound.recv() => match message {
                Some(message) => forward(&a_out, b, message),
                None => false,
            },
            message = b_out.outbound.recv() => match message {
                Some(message) => forward(&b_out, a, message),
                None => false,
            },
        };
        if !open {
            break;
        }
    }
    registry.remove(a);
    registry.remove(b);
}

/// Starts pumping a connected outbound socket's frames.
#[op2(fast)]
pub fn op_dorun_ws_start(state: &mut OpState, #[smi] id: u32) {
    if let Some(stream) = state.borrow_mut::<ParkedSockets>().0.remove(&id) {
        let registry = registry(state);
        tokio::spawn(pump(stream, registry, id));
    }
}
