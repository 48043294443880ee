//! The pool of isolate threads that runs one Worker: [`WorkerPool`] is the `Send + Sync`
//! handle the front door holds. It starts the threads (each loads the Worker's modules
//! before the pool is ready), hands requests to them through the [`Router`], and stops them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::alarms::{AlarmIndexError, AlarmScheduler};
use crate::body::{RequestBody, ResponseBody};
use crate::failure::Failure;
use crate::isolate::{isolate_thread, ThreadShared};
use crate::loader::{LoadError, ModuleGraph};
use crate::mailbox::{AdminCommand, Event, Mailboxes, Reply};
use crate::router::{thread_for, Router};
use crate::sockets::SocketRegistry;
use crate::spec::WorkerSpec;
use crate::supervisor::{spawn_supervisor, IsolateWatch};

/// The Worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// Its modules failed to load or to evaluate.
    #[error("{0}")]
    Code(String),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    AlarmIndex(#[from] AlarmIndexError),
    #[error("cannot start isolate thread: {0}")]
    Thread(String),
}

/// A request could not be handed to an isolate.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("the worker is shutting down")]
    ShuttingDown,
    #[error("the isolate stopped before answering")]
    Dropped,
}

impl DispatchError {
    /// What the client is told.
    pub fn failure(&self) -> Failure {
        match self {
            DispatchError::ShuttingDown => Failure::ShuttingDown,
            DispatchError::Dropped => Failure::Dropped,
        }
    }
}

/// N isolate threads running one Worker.
pub struct WorkerPool {
    spec: Arc<WorkerSpec>,
    threads: Vec<Mutex<Option<std::thread::JoinHandle<()>>>>,
    router: Arc<Router>,
    closed: AtomicBool,
    next: AtomicUsize,
    /// Worker requests sent to each thread and not yet answered.
    outstanding: Vec<AtomicUsize>,
    alarms: Arc<AlarmScheduler>,
    sockets: Arc<SocketRegistry>,
}

impl WorkerPool {
    /// Starts `threads` isolate threads and waits until each has loaded the Worker's
    /// modules. `sockets` may be shared with other workers of the process (a socket accepted
    /// by one worker's class may reach a client through another's front door).
    pub fn start(
        spec: WorkerSpec,
        threads: usize,
        sockets: Arc<SocketRegistry>,
    ) -> Result<Self, StartupError> {
        let spec = Arc::new(spec);
        // Before the first isolate: V8's flags are fixed once it starts.
        crate::memory::limit_wasm_memory(spec.heap_limit_bytes);
        let graph = ModuleGraph::new(spec.clone())?;
        let threads = threads.max(1);
        let alarms = Arc::new(AlarmScheduler::load(
            spec.objects.clone(),
            spec.alarm_retry,
        )?);
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
        let router = Arc::new(Router::new(Arc::new(senders), spec.objects.clone()));
        crate::router::register(&spec.name, &router);
        let mut handles = Vec::with_capacity(threads);
        let mut watches = Vec::with_capacity(threads);
        let mut readies = Vec::with_capacity(threads);
        for (index, receiver) in receivers.into_iter().enumerate() {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let watch = IsolateWatch::new(spec.cpu_limit);
            watches.push(Arc::downgrade(&watch));
            let graph = graph.clone();
            let shared = ThreadShared {
                router: router.clone(),
                alarms: alarms.clone(),
                sockets: sockets.clone(),
                thread_index: index,
            };
            let join = std::thread::Builder::new()
                .name(format!("dorun-isolate-{index}"))
                .spawn(move || isolate_thread(graph, receiver, shared, watch, ready_tx))
                .map_err(|e| StartupError::Thread(e.to_string()))?;
            handles.push(Mutex::new(Some(join)));
            readies.push(ready_rx);
        }
        let pool = Self {
            spec,
            threads: handles,
            router,
            closed: AtomicBool::new(false),
            next: AtomicUsize::new(0),
            outstanding: (0..threads).map(|_| AtomicUsize::new(0)).collect(),
            alarms: alarms.clone(),
            sockets,
        };
        for ready in readies {
            match ready.recv() {
                Ok(Ok(())) => {}
                Ok(Err(message)) => {
                    pool.close();
                    return Err(StartupError::Code(message));
                }
                Err(_) => {
                    pool.close();
                    return Err(StartupError::Thread(
                        "isolate thread exited during startup".into(),
                    ));
                }
            }
        }
        spawn_supervisor(watches);
        alarms.spawn(pool.router.clone());
        Ok(pool)
    }

    pub fn spec(&self) -> &WorkerSpec {
        &self.spec
    }

    /// The isolate threads' queues (for workers that bind to this one's classes).
    pub fn mailboxes(&self) -> Mailboxes {
        self.router.mailboxes().clone()
    }

    /// The alarm scheduler of the worker's classes.
    pub fn alarms(&self) -> &Arc<AlarmScheduler> {
        &self.alarms
    }

    /// Runs an object's alarm now (see [`AlarmScheduler::run_now`]).
    pub async fn run_alarm_now(
        &self,
        namespace: u32,
        object_id: &str,
    ) -> Result<(i64, crate::mailbox::AlarmOutcome), crate::alarms::RunNowError> {
        self.alarms
            .run_now(&self.router, namespace, object_id)
            .await
    }

    /// The WebSockets the Worker's responses hand to the front door.
    pub fn sockets(&self) -> &Arc<SocketRegistry> {
        &self.sockets
    }

    /// Hands a request to the next isolate thread and waits for its response head.
    pub async fn dispatch(
        &self,
        request: http::Request<RequestBody>,
    ) -> Result<http::Response<ResponseBody>, DispatchError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(DispatchError::ShuttingDown);
        }
        let thread = self.least_busy_thread();
        let outstanding = &self.outstanding[thread];
        outstanding.fetch_add(1, Ordering::Relaxed);
        struct Answered<'a>(&'a AtomicUsize);
        impl Drop for Answered<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _answered = Answered(outstanding);
        let (reply, response) = oneshot::channel();
        self.router
            .to_thread(
                thread,
                Event::Http {
                    request: Box::new(request),
                    reply,
                },
            )
            .map_err(|_| DispatchError::ShuttingDown)?;
        match response.await.map_err(|_| DispatchError::Dropped)? {
            Reply::Response(response) => Ok(response),
            Reply::Value(_) | Reply::Error(_) | Reply::Alarm(_) => Err(DispatchError::Dropped),
        }
    }

    /// Worker requests handed to each isolate thread and not yet answered (its queue depth
    /// as the front door sees it; object events are not counted).
    pub fn outstanding(&self) -> Vec<usize> {
        self.outstanding
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect()
    }

    /// The thread with the fewest unanswered Worker requests (ties taken in turn), so a
    /// thread stuck in long-running code does not collect new requests.
    fn least_busy_thread(&self) -> usize {
        let threads = self.outstanding.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..threads)
            .map(|offset| (start + offset) % threads)
            .min_by_key(|&thread| self.outstanding[thread].load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Stops taking requests: each isolate finishes what it has, then its thread exits.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            self.alarms.stop();
            for thread in 0..self.router.threads() {
                let _ = self.router.to_thread(thread, Event::Shutdown);
            }
        }
    }

    /// Closes the pool and waits up to `timeout` for the isolate threads to finish and the
    /// closer thread to close what they left it. Returns false if some thread was still
    /// busy (pending waitUntil work, timers).
    pub fn join(&self, timeout: Duration) -> bool {
        self.close();
        let deadline = std::time::Instant::now() + timeout;
        for thread in &self.threads {
            let Some(handle) = thread.lock().unwrap().take() else {
                continue;
            };
            while !handle.is_finished() {
                if std::time::Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = handle.join();
        }
        // Connections of objects that went idle are closed (checkpointed) off the threads.
        dorun_storage::Closer::drain(deadline.saturating_duration_since(std::time::Instant::now()))
    }
}

// --- the admin listener's way in (the ops are in admin.rs) -----------------------------

impl WorkerPool {
    /// Sends `command` to isolate thread `thread` and returns its JSON answer.
    pub async fn admin(
        &self,
        thread: usize,
        command: AdminCommand,
    ) -> Result<serde_json::Value, DispatchError> {
        let (reply, answer) = oneshot::channel();
        self.router
            .to_thread(thread, Event::Admin { command, reply })
            .map_err(|_| DispatchError::ShuttingDown)?;
        match answer.await.map_err(|_| DispatchError::Dropped)? {
            Reply::Value(bytes) => {
                serde_json::from_slice(&bytes).map_err(|_| DispatchError::Dropped)
            }
            _ => Err(DispatchError::Dropped),
        }
    }

    /// The thread `object_id` is pinned to.
    pub fn thread_of(&self, object_id: &str) -> usize {
        thread_for(object_id, self.router.threads())
    }

    pub fn thread_count(&self) -> usize {
        self.router.threads()
    }
}
