//! The mailbox of an isolate thread: the events other threads send it and the replies it
//! sends back. Every way into an isolate (the front door, stubs, alarms, sockets, exported
//! functions) is one [`Event`] on the owning thread's queue; the answer comes back on the
//! event's oneshot channel as a [`Reply`].

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::body::{RequestBody, ResponseBody};

/// The queues of one worker's isolate threads, by thread index.
pub type Mailboxes = Arc<Vec<mpsc::UnboundedSender<Event>>>;

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
        message: SocketMessage,
        reply: oneshot::Sender<Reply>,
    },
    /// A call through an RPC stub to a function or `RpcTarget` this isolate exported
    /// (passed as an argument or returned as a result). `method` is `None` to call a function.
    Export {
        export: u32,
        method: Option<String>,
        get: bool,
        args: Vec<u8>,
        reply: oneshot::Sender<Reply>,
    },
    /// A JS RPC call through a service binding: `method` of a new instance of the worker's
    /// `entrypoint` class (the default export when `None`), whose `ctx.props` are `props`
    /// (JSON text).
    Entrypoint {
        entrypoint: Option<String>,
        props: Option<String>,
        method: String,
        get: bool,
        args: Vec<u8>,
        reply: oneshot::Sender<Reply>,
    },
    /// The last stub of an export is gone: forget it.
    Release { export: u32 },
    /// A stub of an export was passed on: one more holder.
    Retain { export: u32 },
    /// An operator's request from the admin listener (see [`AdminCommand`]); answered with
    /// a `Reply::Value` holding UTF-8 JSON.
    Admin {
        command: AdminCommand,
        reply: oneshot::Sender<Reply>,
    },
    /// Stop taking events: the isolate finishes what it has and its thread exits.
    Shutdown,
}

/// What the admin listener asks of an isolate thread. Object commands go to the thread the
/// object is pinned to, so they never race the object's own events.
#[derive(Debug)]
pub enum AdminCommand {
    /// The objects resident on this thread.
    Resident,
    /// Drops one object from memory after committing what it wrote.
    Evict { namespace: u32, object_id: String },
    /// Drops every object of this thread (uncommitted writes discarded), then holds the
    /// thread (see [`ResetHold`]) while the admin listener moves the data away.
    Reset(ResetHold),
    /// Reads or changes one object's storage; `request` is JSON:
    /// `{"op": "kv" | "sql" | "alarm" | "deleteAlarm", ...}`.
    Object {
        namespace: u32,
        object_id: String,
        request: String,
    },
}

/// A call into one Durable Object.
pub struct ObjectEvent {
    /// The namespace's index in the worker that owns the class.
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
        message: SocketMessage,
    },
}

impl ObjectCall {
    /// A copy to deliver again if the isolate is reset before the object's code saw this
    /// call; `None` for a request whose body is a stream (it cannot be read twice).
    pub fn replay_copy(&self) -> Option<ObjectCall> {
        Some(match self {
            ObjectCall::Fetch(request) => {
                if !http_body::Body::is_end_stream(request.body()) {
                    return None;
                }
                let mut copy = http::Request::new(crate::body::empty_request_body());
                *copy.method_mut() = request.method().clone();
                *copy.uri_mut() = request.uri().clone();
                *copy.version_mut() = request.version();
                *copy.headers_mut() = request.headers().clone();
                *copy.extensions_mut() = request.extensions().clone();
                ObjectCall::Fetch(copy)
            }
            ObjectCall::Rpc { method, get, args } => ObjectCall::Rpc {
                method: method.clone(),
                get: *get,
                args: args.clone(),
            },
            ObjectCall::Alarm { scheduled, retries } => ObjectCall::Alarm {
                scheduled: *scheduled,
                retries: *retries,
            },
            ObjectCall::Socket { socket, message } => ObjectCall::Socket {
                socket: *socket,
                message: message.clone(),
            },
        })
    }
}

/// The two halves of a reset's barrier: the thread reports on `dropped` (how many objects it
/// dropped) once its objects are gone, then blocks until `release` (or a timeout), so no
/// object is recreated while the namespace directories are moved away.
#[derive(Debug)]
pub struct ResetHold {
    pub dropped: std::sync::mpsc::Sender<u32>,
    pub release: std::sync::mpsc::Receiver<()>,
    /// Only the objects of this namespace (an index of the pool the reset goes to) are
    /// dropped; every object when `None`.
    pub namespace: Option<u32>,
}

/// The hold of the reset this thread is running (op state).
#[derive(Default)]
pub struct PendingReset(pub Option<ResetHold>);

/// What an event produced.
pub enum Reply {
    Response(http::Response<ResponseBody>),
    /// A V8-serialized return value.
    Value(Vec<u8>),
    /// A V8-serialized error, rethrown at the caller.
    Error(Vec<u8>),
    /// How an alarm event went.
    Alarm(AlarmOutcome),
}

/// What running an alarm event came to, reported by the JS glue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlarmOutcome {
    /// Ran (or gave up); the object's storage says what is scheduled next.
    Done,
    /// alarm() threw: retry the same scheduled time after a backoff.
    Retry,
    /// The object's own record differs from what fired (a stale index entry): the real
    /// alarm time, if any.
    Stale(Option<i64>),
}

/// What happened on a WebSocket, for the code that handles its events.
#[derive(Clone, Debug)]
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

/// Marks a 101 response whose WebSocket the front door should connect to socket `0`.
#[derive(Clone, Copy, Debug)]
pub struct WebSocketToken(pub u32);

/// The `request.cf` of a request passed to `stub.fetch()`, as JSON, carried in the request's
/// extensions so the object sees the same `request.cf`.
#[derive(Clone, Debug)]
pub struct RequestCf(pub String);
