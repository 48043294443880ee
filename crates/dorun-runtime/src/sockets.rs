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
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::objects::{thread_for, Event, ObjectCall, ObjectEvent, Reply};

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

/// What the front door sends to a client.
#[derive(Debug)]
pub enum Outbound {
    Text(String),
    Binary(Vec<u8>),
    Close(Option<(u16, String)>),
}

/// What happened on a socket, for its target.
#[derive(Debug)]
pub enum SocketMessage {
    Text(String),
    Binary(Vec<u8>),
    /// The peer closed (`clean`: with a Close frame; else code 1006).
    Close {
        code: u16,
        reason: String,
        clean: bool,
    },
    Error(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
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
    tags: Vec<String>,
    attachment: Option<Vec<u8>>,
    outbound: mpsc::UnboundedSender<Outbound>,
    /// Taken by the front door when the client connects.
    outbound_rx: Option<mpsc::UnboundedReceiver<Outbound>>,
    queued: Arc<AtomicUsize>,
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

/// Every WebSocket of a Worker, shared by the front door and the isolate threads.
#[derive(Default)]
pub struct SocketRegistry {
    inner: Mutex<Inner>,
    senders: OnceLock<Arc<Vec<mpsc::UnboundedSender<Event>>>>,
}

/// The front door's side of a connected socket.
pub struct Connection {
    pub outbound: mpsc::UnboundedReceiver<Outbound>,
    pub queued: Arc<AtomicUsize>,
    pub hibernatable: bool,
}

impl SocketRegistry {
    pub fn set_senders(&self, senders: Arc<Vec<mpsc::UnboundedSender<Event>>>) {
        let _ = self.senders.set(senders);
    }

    /// Registers a socket accepted in JS; returns its id.
    pub fn create(&self, target: SocketTarget, tags: Vec<String>) -> Result<u32, String> {
        let mut inner = self.inner.lock().unwrap();
        if let SocketTarget::Object { key, .. } = &target {
            let count = inner.objects.get(key).map(|o| o.ids.len()).unwrap_or(0);
            if count >= MAX_SOCKETS_PER_OBJECT {
                return Err(format!(
                    "only {MAX_SOCKETS_PER_OBJECT} websockets can be accepted on a single Durable Object instance"
                ));
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
    pub fn send(&self, id: u32, message: Outbound) -> Result<(), &'static str> {
        let mut inner = self.inner.lock().unwrap();
        let Some(entry) = inner.sockets.get_mut(&id) else {
            return Err("Can't call WebSocket send() after close().");
        };
        if entry.state != OPEN {
            return Err("Can't call WebSocket send() after close().");
        }
        let size = match &message {
            Outbound::Text(text) => text.len(),
            Outbound::Binary(bytes) => bytes.len(),
            Outbound::Close(_) => 0,
        };
        let queued = entry.queued.fetch_add(size, Ordering::AcqRel) + size;
        if queued > MAX_QUEUED_BYTES {
            entry.state = CLOSING;
            let _ = entry.outbound.send(Outbound::Close(Some((
                1008,
                "send buffer full: the client is not reading".into(),
            ))));
            return Err(
                "WebSocket send buffer is full: the client is not reading; the socket was closed.",
            );
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
        let target = self.inner.lock().unwrap().sockets.get(&id)?.target.clone();
        let senders = self.senders.get()?;
        let (reply, receiver) = oneshot::channel();
        let sent = match target {
            SocketTarget::Local { thread } => senders.get(thread)?.send(Event::Socket {
                socket: id,
                message,
                reply,
            }),
            SocketTarget::Object { key, name } => {
                let thread = thread_for(&key.object_id, senders.len());
                senders[thread].send(Event::Object(Box::new(ObjectEvent {
                    namespace: key.namespace,
                    object_id: key.object_id,
                    object_name: name,
                    call: ObjectCall::Socket {
                        socket: id,
                        message,
                    },
                    reply,
                })))
            }
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
        entry.auto_response_at = Some(crate::alarms::now_ms() as f64);
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
}

/// Marks a 101 response whose WebSocket the front door should connect to socket `0`.
#[derive(Clone, Copy, Debug)]
pub struct WebSocketToken(pub u32);

// --- ops ----------------------------------------------------------------------------------

use deno_core::{op2, JsBuffer, OpState};
use deno_error::JsErrorBox;

use crate::extension::IsolateContext;

fn registry(state: &OpState) -> Arc<SocketRegistry> {
    state.borrow::<IsolateContext>().sockets.clone()
}

/// `ws.accept()`: the socket's events come to this thread's JS `WebSocket`.
#[op2(fast)]
#[smi]
pub fn op_dorun_ws_accept_local(state: &mut OpState) -> Result<u32, JsErrorBox> {
    let thread = state.borrow::<IsolateContext>().thread_index;
    registry(state)
        .create(SocketTarget::Local { thread }, Vec::new())
        .map_err(JsErrorBox::generic)
}

/// `ctx.acceptWebSocket(ws, tags)`: the socket's events go to the object.
#[op2]
#[smi]
pub fn op_dorun_ws_accept_object(
    state: &mut OpState,
    #[smi] namespace: u32,
    #[string] object_id: String,
    #[string] name: String,
    #[serde] tags: Vec<String>,
) -> Result<u32, JsErrorBox> {
    let target = SocketTarget::Object {
        key: ObjectKey {
            namespace,
            object_id,
        },
        name: (!name.is_empty()).then_some(name),
    };
    registry(state)
        .create(target, tags)
        .map_err(JsErrorBox::generic)
}

#[op2(fast)]
pub fn op_dorun_ws_send_text(
    state: &mut OpState,
    #[smi] id: u32,
    #[string] text: String,
) -> Result<(), JsErrorBox> {
    registry(state)
        .send(id, Outbound::Text(text))
        .map_err(JsErrorBox::type_error)
}

#[op2(fast)]
pub fn op_dorun_ws_send_binary(
    state: &mut OpState,
    #[smi] id: u32,
    #[buffer] bytes: &[u8],
) -> Result<(), JsErrorBox> {
    registry(state)
        .send(id, Outbound::Binary(bytes.to_vec()))
        .map_err(JsErrorBox::type_error)
}

/// Closes with `code` (negative: no code) and `reason`.
#[op2(fast)]
pub fn op_dorun_ws_close(state: &mut OpState, #[smi] id: u32, code: i32, #[string] reason: String) {
    let code = u16::try_from(code).ok();
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
    let key = ObjectKey {
        namespace,
        object_id,
    };
    registry(state).object_sockets(&key, tag.as_deref())
}

#[op2]
#[serde]
pub fn op_dorun_ws_tags(state: &mut OpState, #[smi] id: u32) -> Result<Vec<String>, JsErrorBox> {
    registry(state)
        .tags(id)
        .ok_or_else(|| JsErrorBox::generic("only hibernatable websockets can have tags."))
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
    let key = ObjectKey {
        namespace,
        object_id,
    };
    registry(state).set_auto_response(&key, request.zip(response));
}

#[op2]
#[serde]
pub fn op_dorun_ws_auto_response(
    state: &mut OpState,
    #[smi] namespace: u32,
    #[string] object_id: String,
) -> Option<(String, String)> {
    let key = ObjectKey {
        namespace,
        object_id,
    };
    registry(state).get_auto_response(&key)
}

#[op2]
pub fn op_dorun_ws_auto_response_timestamp(state: &mut OpState, #[smi] id: u32) -> Option<f64> {
    registry(state).auto_response_timestamp(id)
}

/// Sets (negative: unsets) the object's hibernatable event timeout.
#[op2(fast)]
pub fn op_dorun_ws_set_event_timeout(
    state: &mut OpState,
    #[smi] namespace: u32,
    #[string] object_id: String,
    ms: f64,
) {
    let key = ObjectKey {
        namespace,
        object_id,
    };
    registry(state).set_event_timeout(&key, (ms > 0.0).then_some(ms));
}

#[op2]
pub fn op_dorun_ws_event_timeout(
    state: &mut OpState,
    #[smi] namespace: u32,
    #[string] object_id: String,
) -> Option<f64> {
    let key = ObjectKey {
        namespace,
        object_id,
    };
    registry(state).event_timeout(&key)
}
