//! What every op of an isolate may ask: which worker and thread this is, and the events it
//! has been handed but not yet answered. The other shared pieces each sit in the op state
//! on their own (`Arc<Router>`, `Arc<ObjectConfig>`, `Arc<AlarmScheduler>`,
//! `Arc<SocketRegistry>`, `Arc<ModuleGraph>`), so a module borrows only what it uses.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::mailbox::{Event, ObjectCall, ObjectEvent, Reply};

/// An event handed to JS and not yet answered.
pub struct Pending {
    pub reply: oneshot::Sender<Reply>,
    /// For an object call: a copy to deliver again if the isolate is reset before the
    /// object's code saw the call (it was waiting behind the input gate). Dropped once the
    /// glue reports the call entered the object's code.
    pub replay: Option<Box<Replay>>,
}

/// An object call as it can be delivered again.
pub struct Replay {
    pub namespace: u32,
    pub object_id: String,
    pub object_name: Option<String>,
    pub call: ObjectCall,
}

impl Replay {
    /// The call again, answered on `reply`.
    pub fn into_event(self, reply: oneshot::Sender<Reply>) -> Event {
        Event::Object(Box::new(ObjectEvent {
            namespace: self.namespace,
            object_id: self.object_id,
            object_name: self.object_name,
            call: self.call,
            reply,
        }))
    }
}

/// Events handed to JS but not yet answered, by event id. Shared with the isolate thread so
/// that a reset can answer them (or deliver them again).
pub type InFlight = Rc<RefCell<HashMap<u32, Pending>>>;

/// Events to deliver again after a reset, before anything newer from the queue.
pub type Replays = Rc<RefCell<VecDeque<Event>>>;

/// Per-isolate state the ops use.
#[derive(Clone)]
pub struct IsolateContext {
    pub worker_name: Arc<str>,
    /// Which isolate thread of the worker this is.
    pub thread_index: usize,
    /// JSON text of what the JS glue needs at startup (vars, namespaces, settings).
    pub runtime_config: Arc<str>,
    /// This thread's mailbox.
    pub queue: Rc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Event>>>,
    pub in_flight: InFlight,
    pub replays: Replays,
    pub next_id: Rc<Cell<u32>>,
    /// Set by the glue when the Worker's modules have loaded and its serve loop starts.
    pub started: Rc<Cell<bool>>,
    /// Set by the glue once it has finished after a shutdown: the isolate stops even if
    /// user timers (setInterval) would keep its event loop alive.
    pub done: Rc<Cell<bool>>,
}

impl IsolateContext {
    /// Takes the reply channel of event `id` (once).
    pub fn take_reply(&self, id: u32) -> Option<oneshot::Sender<Reply>> {
        self.in_flight
            .borrow_mut()
            .remove(&id)
            .map(|pending| pending.reply)
    }

    /// The object's code is running for event `id`: a reset now fails it, not replays it.
    pub fn entered(&self, id: u32) {
        if let Some(pending) = self.in_flight.borrow_mut().get_mut(&id) {
            pending.replay = None;
        }
    }
}
