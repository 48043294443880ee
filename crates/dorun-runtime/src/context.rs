//! What every op of an isolate may ask: which worker and thread this is, and the events it
//! has been handed but not yet answered. The other shared pieces each sit in the op state
//! on their own (`Arc<Router>`, `Arc<ObjectConfig>`, `Arc<AlarmScheduler>`,
//! `Arc<SocketRegistry>`, `Arc<ModuleGraph>`), so a module borrows only what it uses.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::mailbox::{Event, Reply};

/// Events handed to JS but not yet answered, by event id. Shared with the isolate thread so
/// that a reset can answer them.
pub type InFlight = Rc<RefCell<HashMap<u32, oneshot::Sender<Reply>>>>;

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
        self.in_flight.borrow_mut().remove(&id)
    }
}
