//! The V8 inspector of each isolate, for Chrome DevTools (`dorun serve --inspect`): every
//! isolate thread registers its inspector's session sender here as a target; the DevTools
//! server (`crates/dorun/src/devtools.rs`) lists the targets and connects a WebSocket to one
//! by creating a session with a pair of channels. Messages are Chrome DevTools Protocol JSON.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use deno_core::futures::channel::mpsc::{self, UnboundedReceiver, UnboundedSender};
use deno_core::{
    InspectorMsg, InspectorSessionChannels, InspectorSessionKind, InspectorSessionProxy,
};

/// One isolate DevTools can attach to.
#[derive(Clone)]
pub struct Target {
    pub id: String,
    /// `<worker> (isolate N)`.
    pub title: String,
    /// The Worker's entry module.
    pub url: String,
    sessions: UnboundedSender<InspectorSessionProxy>,
}

fn targets() -> &'static Mutex<BTreeMap<String, Target>> {
    static TARGETS: OnceLock<Mutex<BTreeMap<String, Target>>> = OnceLock::new();
    TARGETS.get_or_init(Default::default)
}

/// Registers (or, after an isolate reset, replaces) the inspector of `worker`'s isolate
/// thread `thread`.
pub fn register(
    worker: &str,
    thread: usize,
    url: String,
    sessions: UnboundedSender<InspectorSessionProxy>,
) {
    let id = format!("{worker}-{thread}");
    let target = Target {
        id: id.clone(),
        title: format!("{worker} (isolate {thread})"),
        url,
        sessions,
    };
    targets().lock().unwrap().insert(id, target);
}

/// Every registered isolate.
pub fn list() -> Vec<Target> {
    targets().lock().unwrap().values().cloned().collect()
}

/// A new DevTools session on target `id`: send CDP requests on the first channel, read
/// responses and notifications from the second. `None` if there is no such target (or its
/// isolate is gone).
pub fn connect(id: &str) -> Option<(UnboundedSender<String>, UnboundedReceiver<InspectorMsg>)> {
    let target = targets().lock().unwrap().get(id).cloned()?;
    let (to_frontend, from_isolate) = mpsc::unbounded::<InspectorMsg>();
    let (to_isolate, from_frontend) = mpsc::unbounded::<String>();
    let proxy = InspectorSessionProxy {
        channels: InspectorSessionChannels::Regular {
            tx: to_frontend,
            rx: from_frontend,
        },
        kind: InspectorSessionKind::NonBlocking {
            wait_for_disconnect: false,
        },
    };
    target.sessions.unbounded_send(proxy).ok()?;
    Some((to_isolate, from_isolate))
}
