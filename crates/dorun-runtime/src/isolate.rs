//! Isolate threads and the pool that spreads requests across them.
//!
//! Everything `!Send` (V8, the `JsRuntime`) lives on its own OS thread with a
//! current-thread tokio runtime. The rest of the server holds a [`WorkerPool`], which is
//! `Send + Sync`, and reaches a thread by queueing a request on its channel; the reply comes
//! back on a oneshot channel. If an isolate is terminated (CPU or heap limit) it is rebuilt
//! on the same thread, the requests it was serving get an error response, and queued ones
//! are served by the new isolate.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deno_core::{JsRuntime, PollEventLoopOptions, RuntimeOptions};
use tokio::sync::{mpsc, oneshot};
use url::Url;

use crate::alarms::AlarmScheduler;
use crate::body::{RequestBody, ResponseBody};
use crate::extension::{self, InFlight, IsolateContext};
use crate::loader::{ModuleGraph, WorkerModuleLoader, ENTRY_SPECIFIER};
use crate::objects::{Event, Reply};
use crate::sockets::SocketRegistry;
use crate::spec::WorkerSpec;
use crate::supervisor::{spawn_supervisor, IsolateWatch, Termination};

/// The Worker's code could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Code(String),
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

struct IsolateThread {
    join: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// N isolate threads running one Worker.
pub struct WorkerPool {
    spec: Arc<WorkerSpec>,
    threads: Vec<IsolateThread>,
    senders: Arc<Vec<mpsc::UnboundedSender<Event>>>,
    closed: std::sync::atomic::AtomicBool,
    next: AtomicUsize,
    alarms: Arc<AlarmScheduler>,
    sockets: Arc<SocketRegistry>,
}

/// What every isolate thread of a pool shares.
struct Shared {
    senders: Arc<Vec<mpsc::UnboundedSender<Event>>>,
    alarms: Arc<AlarmScheduler>,
    sockets: Arc<SocketRegistry>,
    thread_index: usize,
}

impl WorkerPool {
    /// Starts `threads` isolate threads and waits until each has loaded the Worker's modules.
    pub fn start(spec: WorkerSpec, threads: usize) -> Result<Self, StartupError> {
        Self::start_with_sockets(spec, threads, Arc::default())
    }

    /// Like [`start`](Self::start), sharing a WebSocket registry with other workers of the
    /// process (a socket accepted by one worker's class may reach a client through another's
    /// front door).
    pub fn start_with_sockets(
        spec: WorkerSpec,
        threads: usize,
        sockets: Arc<SocketRegistry>,
    ) -> Result<Self, StartupError> {
        let spec = Arc::new(spec);
        let graph = ModuleGraph::new(spec.clone()).map_err(StartupError::Code)?;
        let threads = threads.max(1);
        let mut handles = Vec::with_capacity(threads);
        let mut watches = Vec::with_capacity(threads);
        let mut readies = Vec::with_capacity(threads);
        let alarms = Arc::new(
            AlarmScheduler::load(spec.objects.clone(), spec.alarm_retry)
                .map_err(StartupError::Code)?,
        );
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
        let senders = Arc::new(senders);
        for (index, receiver) in receivers.into_iter().enumerate() {
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let watch = IsolateWatch::new(spec.cpu_limit);
            watches.push(Arc::downgrade(&watch));
            let graph = graph.clone();
            let shared = Shared {
                senders: senders.clone(),
                alarms: alarms.clone(),
                sockets: sockets.clone(),
                thread_index: index,
            };
            let join = std::thread::Builder::new()
                .name(format!("dorun-isolate-{index}"))
                .spawn(move || isolate_thread(graph, receiver, shared, watch, ready_tx))
                .map_err(|e| StartupError::Thread(e.to_string()))?;
            handles.push(IsolateThread {
                join: Mutex::new(Some(join)),
            });
            readies.push(ready_rx);
        }
        let pool = Self {
            spec,
            threads: handles,
            senders,
            closed: std::sync::atomic::AtomicBool::new(false),
            next: AtomicUsize::new(0),
            alarms: alarms.clone(),
            sockets: sockets.clone(),
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
        alarms.spawn(pool.senders.clone());
        Ok(pool)
    }

    pub fn spec(&self) -> &WorkerSpec {
        &self.spec
    }

    /// The isolate threads' queues (for workers that bind to this one's classes).
    pub fn senders(&self) -> Arc<Vec<mpsc::UnboundedSender<Event>>> {
        self.senders.clone()
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
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.threads.len();
        let (reply, response) = oneshot::channel();
        self.senders[index]
            .send(Event::Http {
                request: Box::new(request),
                reply,
            })
            .map_err(|_| DispatchError::ShuttingDown)?;
        match response.await.map_err(|_| DispatchError::Dropped)? {
            Reply::Response(response) => Ok(response),
            Reply::Value(_) | Reply::Error(_) | Reply::Alarm(_) => Err(DispatchError::Dropped),
        }
    }

    /// Stops taking requests: each isolate finishes what it has, then its thread exits.
    pub fn close(&self) {
        if !self.closed.swap(true, Ordering::SeqCst) {
            self.alarms.stop();
            for sender in self.senders.iter() {
                let _ = sender.send(Event::Shutdown);
            }
        }
    }

    /// Closes the pool and waits up to `timeout` for the isolate threads to finish.
    /// Returns false if some thread was still busy (pending waitUntil work, timers).
    pub fn join(&self, timeout: Duration) -> bool {
        self.close();
        let deadline = std::time::Instant::now() + timeout;
        for thread in &self.threads {
            let Some(handle) = thread.join.lock().unwrap().take() else {
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
        true
    }
}

/// How one isolate's life ended.
enum IsolateExit {
    /// The queue closed and all work finished.
    Finished,
    /// Terminated from outside; the thread builds a new isolate.
    Reset(Termination),
    /// The Worker's code failed to load or evaluate.
    Failed(String),
}

fn isolate_thread(
    graph: Arc<ModuleGraph>,
    receiver: mpsc::UnboundedReceiver<Event>,
    shared: Shared,
    watch: Arc<IsolateWatch>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = ready.send(Err(format!("cannot build tokio runtime: {error}")));
            return;
        }
    };
    let queue = Rc::new(tokio::sync::Mutex::new(receiver));
    let in_flight: InFlight = Rc::default();
    let next_id = Rc::new(Cell::new(0));
    let mut ready = Some(ready);
    runtime.block_on(async {
        loop {
            let context = IsolateContext {
                worker_name: graph.spec().name.as_str().into(),
                graph: graph.clone(),
                env_json: runtime_config_json(graph.spec()).into(),
                queue: queue.clone(),
                in_flight: in_flight.clone(),
                next_id: next_id.clone(),
                event_args: Rc::default(),
                senders: shared.senders.clone(),
                objects: graph.spec().objects.clone(),
                alarms: shared.alarms.clone(),
                sockets: shared.sockets.clone(),
                thread_index: shared.thread_index,
                done: Rc::default(),
            };
            let exit = run_isolate(&graph, context, &watch, &mut ready).await;
            let (status, message) = match exit {
                IsolateExit::Finished => return,
                IsolateExit::Failed(message) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Err(message));
                        return;
                    }
                    tracing::error!(worker = %graph.spec().name, "isolate failed to restart: {message}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    (500, "Worker failed to restart")
                }
                IsolateExit::Reset(Termination::CpuLimit) => {
                    tracing::error!(worker = %graph.spec().name, limit_ms = graph.spec().cpu_limit.as_millis() as u64, "JS ran past the CPU limit; isolate terminated and reset");
                    (503, "Worker exceeded CPU time limit.")
                }
                IsolateExit::Reset(Termination::HeapLimit) => {
                    tracing::error!(worker = %graph.spec().name, "JS heap outgrew its limit; isolate reset");
                    (503, "Worker exceeded memory limit.")
                }
            };
            let failed: Vec<_> = in_flight.borrow_mut().drain().collect();
            for (_, reply) in failed {
                let mut response = http::Response::new(ResponseBody::full(message));
                *response.status_mut() = http::StatusCode::from_u16(status).expect("valid status");
                let _ = reply.send(Reply::Response(response));
            }
        }
    });
}

async fn run_isolate(
    graph: &Arc<ModuleGraph>,
    context: IsolateContext,
    watch: &Arc<IsolateWatch>,
    ready: &mut Option<std::sync::mpsc::Sender<Result<(), String>>>,
) -> IsolateExit {
    let done = context.done.clone();
    let heap_limit = graph.spec().heap_limit_bytes;
    let runtime = JsRuntime::try_new(RuntimeOptions {
        module_loader: Some(Rc::new(WorkerModuleLoader::new(graph.clone()))),
        extensions: extensions(context),
        create_params: Some(deno_core::v8::CreateParams::default().heap_limits(0, heap_limit)),
        ..Default::default()
    });
    let mut runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            return IsolateExit::Failed(format!("cannot initialise the runtime: {error}"))
        }
    };
    runtime
        .op_state()
        .borrow_mut()
        .put(deno_permissions::PermissionsContainer::allow_all(Arc::new(
            deno_permissions::RuntimePermissionDescriptorParser::new(sys_traits::impls::RealSys),
        )));
    watch.attach(runtime.v8_isolate().thread_safe_handle());
    {
        let watch = watch.clone();
        runtime.add_near_heap_limit_callback(move |current, _initial| {
            watch.heap_limit_reached();
            // Room to unwind; the isolate is dropped right after.
            current * 2
        });
    }

    let entry = Url::parse(ENTRY_SPECIFIER).expect("valid entry specifier");
    watch.enter();
    let loaded = runtime.load_main_es_module(&entry).await;
    watch.leave();
    let module_id = match loaded {
        Ok(id) => id,
        Err(error) => return IsolateExit::Failed(describe_startup_error(&error.to_string())),
    };
    let evaluation = runtime.mod_evaluate(module_id);
    let evaluated = watched(
        watch,
        runtime.with_event_loop_future(Box::pin(evaluation), PollEventLoopOptions::default()),
    )
    .await;
    let evaluated = evaluated.unwrap_or(Ok(()));
    if evaluated.is_err() || watch.termination().is_some() {
        let error = evaluated.err().map(|e| e.to_string()).unwrap_or_default();
        if let Some(termination) = watch.termination() {
            return IsolateExit::Failed(match termination {
                Termination::CpuLimit => {
                    "the Worker's top-level code ran past the CPU limit".into()
                }
                Termination::HeapLimit => {
                    "the Worker's top-level code outgrew the heap limit".into()
                }
            });
        }
        return IsolateExit::Failed(describe_startup_error(&error));
    }
    if let Some(ready) = ready.take() {
        let _ = ready.send(Ok(()));
    }

    loop {
        let result = std::future::poll_fn(|cx| {
            watch.enter();
            let poll = runtime.poll_event_loop(cx, PollEventLoopOptions::default());
            watch.leave();
            // A terminated isolate may keep reporting Pending (deno_core treats a terminated
            // timer callback as "nothing ran"), so termination is checked on every poll.
            if watch.termination().is_some() || done.get() {
                return std::task::Poll::Ready(Ok(()));
            }
            poll
        })
        .await;
        if let Some(termination) = watch.termination() {
            return IsolateExit::Reset(termination);
        }
        match result {
            Ok(()) => return IsolateExit::Finished,
            Err(error) => {
                tracing::error!(worker = %graph.spec().name, "uncaught: {error}");
            }
        }
    }
}

/// Runs a future with the CPU watch marking it as JS time.
/// `None` if the isolate was terminated while the future was pending.
async fn watched<F: std::future::Future>(watch: &IsolateWatch, future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(|cx| {
        watch.enter();
        let poll = future.as_mut().poll(cx);
        watch.leave();
        if poll.is_pending() && watch.termination().is_some() {
            return std::task::Poll::Ready(None);
        }
        poll.map(Some)
    })
    .await
}

fn describe_startup_error(message: &str) -> String {
    message
        .strip_prefix("Error: ")
        .unwrap_or(message)
        .trim_end()
        .to_string()
}

/// What the JS glue needs at startup: vars, namespaces, object settings.
fn runtime_config_json(spec: &WorkerSpec) -> String {
    let namespaces: Vec<serde_json::Value> = spec
        .objects
        .namespaces
        .iter()
        .map(|n| {
            serde_json::json!({
                "binding": n.binding,
                "className": n.class_name,
                "sqlite": n.sqlite,
            })
        })
        .collect();
    serde_json::json!({
        "workerName": spec.name,
        "vars": spec.vars,
        "namespaces": namespaces,
        "idleTimeoutMs": spec.object_idle_timeout.as_millis() as u64,
        "alarmMaxRetries": spec.alarm_retry.max_retries,
        "blockConcurrencyTimeoutMs": spec.block_concurrency_timeout.as_millis() as u64,
        "deleteAllDeletesAlarm": spec.compat_flag("delete_all_deletes_alarm", "delete_all_preserves_alarm", "2026-02-24"),
    })
    .to_string()
}

/// The extensions of an isolate, in load order.
fn extensions(context: IsolateContext) -> Vec<deno_core::Extension> {
    vec![
        deno_webidl::deno_webidl::init(),
        deno_web::deno_web::init(
            Arc::new(deno_web::BlobStore::default()) as Arc<dyn deno_web::BlobStoreTrait>,
            None,
            false,
            Default::default(),
        ),
        deno_crypto::deno_crypto::init(None),
        deno_net::deno_net::init(None, None),
        deno_fetch::deno_fetch::init(deno_fetch::Options {
            user_agent: "dorun".to_string(),
            ..Default::default()
        }),
        extension::dorun::init(context),
        crate::node_compat::dorun_node::init(),
    ]
}
