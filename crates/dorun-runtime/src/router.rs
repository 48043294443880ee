//! The router: the one way to reach the isolate thread that owns an object, or a given
//! thread of a worker. The front door, stubs, alarms and WebSockets all send through it.
//!
//! An object is pinned to a thread by its id (the first four bytes, modulo the number of
//! threads), so every event for it lands on the same isolate. A namespace whose class lives
//! in another worker of the process (`script_name`) is routed to that worker's threads, with
//! the namespace index the owner knows it by.

use std::sync::Arc;

use crate::mailbox::{Event, Mailboxes, ObjectEvent};
use crate::namespaces::ObjectConfig;

/// Why an event could not be queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error, deno_error::JsError)]
#[class(generic)]
pub enum RouteError {
    #[error("dorun is shutting down")]
    ShuttingDown,
    #[error("worker '{0}' is not served by this dorun serve: add its wrangler config to the command (dorun serve a.toml b.toml)")]
    WorkerNotRunning(String),
    #[error("no such isolate thread")]
    NoSuchThread,
}

/// Routes events to one worker's isolate threads (and, for `script_name` namespaces, to the
/// owning worker's).
pub struct Router {
    mailboxes: Mailboxes,
    objects: Arc<ObjectConfig>,
}

/// The thread an object lives on, among `threads`.
/// The router of every worker this process serves, by name: calls through stubs that came
/// from another worker (functions, `RpcTarget`s, Durable Object stubs) go back through it.
static WORKERS: std::sync::OnceLock<
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Weak<Router>>>,
> = std::sync::OnceLock::new();

/// Makes `router` the one of worker `name` (a restarted worker replaces its old one).
pub fn register(name: &str, router: &Arc<Router>) {
    WORKERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.to_string(), Arc::downgrade(router));
}

/// The router of worker `name`, if it runs.
pub fn of_worker(name: &str) -> Result<Arc<Router>, RouteError> {
    WORKERS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .and_then(std::sync::Weak::upgrade)
        .ok_or_else(|| RouteError::WorkerNotRunning(name.to_string()))
}

pub fn thread_for(object_id: &str, threads: usize) -> usize {
    let prefix = u32::from_str_radix(object_id.get(..8).unwrap_or("0"), 16).unwrap_or(0);
    prefix as usize % threads.max(1)
}

impl Router {
    pub fn new(mailboxes: Mailboxes, objects: Arc<ObjectConfig>) -> Self {
        Self { mailboxes, objects }
    }

    /// This worker's isolate threads.
    pub fn mailboxes(&self) -> &Mailboxes {
        &self.mailboxes
    }

    pub fn threads(&self) -> usize {
        self.mailboxes.len()
    }

    /// Queues an event for the thread that owns `event`'s object.
    pub fn to_object(&self, mut event: ObjectEvent) -> Result<(), RouteError> {
        let foreign = self
            .objects
            .namespaces
            .get(event.namespace as usize)
            .and_then(|n| n.foreign.as_ref());
        let mailboxes = match foreign {
            None => &self.mailboxes,
            Some(foreign) => {
                event.namespace = foreign.index;
                foreign
                    .mailboxes
                    .get()
                    .ok_or_else(|| RouteError::WorkerNotRunning(foreign.worker.clone()))?
            }
        };
        let thread = thread_for(&event.object_id, mailboxes.len());
        mailboxes[thread]
            .send(Event::Object(Box::new(event)))
            .map_err(|_| RouteError::ShuttingDown)
    }

    /// Queues an event for thread `thread` of this worker.
    pub fn to_thread(&self, thread: usize, event: Event) -> Result<(), RouteError> {
        self.mailboxes
            .get(thread)
            .ok_or(RouteError::NoSuchThread)?
            .send(event)
            .map_err(|_| RouteError::ShuttingDown)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::OnceLock;

    use dorun_storage::Durability;
    use tokio::sync::{mpsc, oneshot};

    use super::*;
    use crate::mailbox::ObjectCall;
    use crate::namespaces::{ForeignNamespace, ObjectNamespace};

    fn namespace(key: &str, foreign: Option<Arc<ForeignNamespace>>) -> ObjectNamespace {
        ObjectNamespace {
            binding: "NS".into(),
            class_name: "Class".into(),
            unique_key: key.into(),
            sqlite: true,
            foreign,
        }
    }

    fn queues(n: usize) -> (Mailboxes, Vec<mpsc::UnboundedReceiver<Event>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..n).map(|_| mpsc::unbounded_channel()).unzip();
        (Arc::new(senders), receivers)
    }

    fn alarm(namespace: u32, object_id: &str) -> ObjectEvent {
        ObjectEvent {
            namespace,
            object_id: object_id.into(),
            object_name: None,
            call: ObjectCall::Alarm {
                scheduled: 0,
                retries: 0,
            },
            reply: oneshot::channel().0,
        }
    }

    fn received(receiver: &mut mpsc::UnboundedReceiver<Event>) -> Option<(u32, String)> {
        match receiver.try_recv().ok()? {
            Event::Object(event) => Some((event.namespace, event.object_id)),
            _ => None,
        }
    }

    #[test]
    fn objects_spread_over_threads_by_id() {
        assert_eq!(thread_for("00000003ffff", 2), 1);
        assert_eq!(thread_for("00000004ffff", 2), 0);
        assert_eq!(thread_for("ffffffff", 1), 0);
        assert_eq!(thread_for("not hex", 3), 0);
    }

    #[test]
    fn an_object_always_reaches_the_thread_its_id_names() {
        let (mailboxes, mut receivers) = queues(3);
        let config = Arc::new(ObjectConfig {
            namespaces: vec![namespace("w-A", None)],
            data_dir: PathBuf::new(),
            durability: Durability::Full,
            replication: None,
        });
        let router = Router::new(mailboxes, config);
        for id in ["00000005aa", "00000005bb", "0000000700"] {
            router.to_object(alarm(0, id)).unwrap();
        }
        // 5 % 3 = 2 (twice, in order), 7 % 3 = 1.
        assert_eq!(received(&mut receivers[2]), Some((0, "00000005aa".into())));
        assert_eq!(received(&mut receivers[2]), Some((0, "00000005bb".into())));
        assert_eq!(received(&mut receivers[1]), Some((0, "0000000700".into())));
        assert!(receivers[0].try_recv().is_err());
    }

    #[test]
    fn a_foreign_namespace_goes_to_its_owner_with_the_owners_index() {
        let (own, mut own_receivers) = queues(1);
        let (theirs, mut their_receivers) = queues(2);
        let foreign = Arc::new(ForeignNamespace {
            worker: "other".into(),
            index: 4,
            mailboxes: OnceLock::new(),
        });
        let config = Arc::new(ObjectConfig {
            namespaces: vec![
                namespace("w-A", None),
                namespace("other-B", Some(foreign.clone())),
            ],
            data_dir: PathBuf::new(),
            durability: Durability::Full,
            replication: None,
        });
        let router = Router::new(own, config);
        assert_eq!(
            router.to_object(alarm(1, "00000001")),
            Err(RouteError::WorkerNotRunning("other".into()))
        );
        foreign.mailboxes.set(theirs).unwrap();
        router.to_object(alarm(1, "00000001")).unwrap();
        assert_eq!(
            received(&mut their_receivers[1]),
            Some((4, "00000001".into()))
        );
        assert!(own_receivers[0].try_recv().is_err());
    }

    #[test]
    fn a_closed_thread_is_shutting_down_and_a_missing_one_is_an_error() {
        let (mailboxes, receivers) = queues(1);
        let config = Arc::new(ObjectConfig {
            namespaces: vec![namespace("w-A", None)],
            data_dir: PathBuf::new(),
            durability: Durability::Full,
            replication: None,
        });
        let router = Router::new(mailboxes, config);
        assert_eq!(
            router.to_thread(3, Event::Shutdown),
            Err(RouteError::NoSuchThread)
        );
        drop(receivers);
        assert_eq!(
            router.to_object(alarm(0, "00")),
            Err(RouteError::ShuttingDown)
        );
    }
}
