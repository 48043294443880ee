//! An isolate thread: a current-thread tokio runtime and one `JsRuntime` with the Worker's
//! modules, draining the thread's mailbox through the JS glue's serve loop.
//!
//! Everything `!Send` (V8, the `JsRuntime`) lives on its own OS thread. If an isolate is
//! terminated (CPU or heap limit) it is rebuilt on the same thread, the events it was
//! serving are answered with a failure, and queued ones are served by the new isolate.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use deno_core::{JsRuntime, PollEventLoopOptions, RuntimeOptions};
use tokio::sync::mpsc;
use url::Url;

use crate::alarms::AlarmScheduler;
use crate::context::{InFlight, IsolateContext, Replays};
use crate::extension::{self, IsolateServices};
use crate::failure::Failure;
use crate::loader::{ModuleGraph, WorkerModuleLoader, ENTRY_SPECIFIER};
use crate::mailbox::{Event, Reply};
use crate::router::Router;
use crate::sockets::{self, SocketRegistry};
use crate::spec::WorkerSpec;
use crate::supervisor::{IsolateWatch, Termination};

/// What every isolate thread of a pool shares.
pub struct ThreadShared {
    pub router: Arc<Router>,
    pub alarms: Arc<AlarmScheduler>,
    pub sockets: Arc<SocketRegistry>,
    pub thread_index: usize,
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

pub fn isolate_thread(
    graph: Arc<ModuleGraph>,
    receiver: mpsc::UnboundedReceiver<Event>,
    shared: ThreadShared,
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
    let replays: Replays = Rc::default();
    let next_id = Rc::new(Cell::new(0));
    let mut ready = Some(ready);
    runtime.block_on(async {
        loop {
            let services = IsolateServices {
                context: IsolateContext {
                    worker_name: graph.spec().name.as_str().into(),
                    thread_index: shared.thread_index,
                    runtime_config: runtime_config_json(graph.spec()).into(),
                    queue: queue.clone(),
                    in_flight: in_flight.clone(),
                    replays: replays.clone(),
                    next_id: next_id.clone(),
                    started: Rc::default(),
                    done: Rc::default(),
                },
                router: shared.router.clone(),
                objects: graph.spec().objects.clone(),
                alarms: shared.alarms.clone(),
                sockets: shared.sockets.clone(),
                graph: graph.clone(),
                sql_interrupt: watch.cpu_limit_flag(),
            };
            let exit = run_isolate(&graph, services, &watch, &mut ready).await;
            let failure = match exit {
                IsolateExit::Finished => return,
                IsolateExit::Failed(message) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Err(message));
                        return;
                    }
                    tracing::error!(worker = %graph.spec().name, "isolate failed to restart: {message}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Failure::RestartFailed
                }
                IsolateExit::Reset(Termination::CpuLimit) => {
                    metrics::counter!("dorun_isolate_terminations_total", "worker" => graph.spec().name.clone(), "reason" => "cpu").increment(1);
                    tracing::error!(worker = %graph.spec().name, limit_ms = graph.spec().cpu_limit.as_millis() as u64, "JS ran past the CPU limit; isolate terminated and reset");
                    Failure::CpuLimit
                }
                IsolateExit::Reset(Termination::HeapLimit) => {
                    metrics::counter!("dorun_isolate_terminations_total", "worker" => graph.spec().name.clone(), "reason" => "heap").increment(1);
                    tracing::error!(worker = %graph.spec().name, "JS heap outgrew its limit; isolate reset");
                    Failure::HeapLimit
                }
            };
            // The old isolate's memory goes back to the system, not only to malloc.
            crate::memory::release_freed_memory();
            // Calls still waiting behind an object's input gate never reached its code: the
            // new isolate gets them again, in their order. The rest fail.
            let mut pending: Vec<_> = in_flight.borrow_mut().drain().collect();
            pending.sort_by_key(|(id, _)| *id);
            let mut replayed = 0;
            for (_, pending) in pending {
                match pending.replay {
                    Some(replay) => {
                        replays
                            .borrow_mut()
                            .push_back(replay.into_event(pending.reply));
                        replayed += 1;
                    }
                    None => {
                        let _ = pending.reply.send(Reply::Response(failure.response()));
                    }
                }
            }
            if replayed > 0 {
                tracing::info!(worker = %graph.spec().name, replayed, "calls that had not reached their object are delivered again");
            }
        }
    });
}

async fn run_isolate(
    graph: &Arc<ModuleGraph>,
    services: IsolateServices,
    watch: &Arc<IsolateWatch>,
    ready: &mut Option<std::sync::mpsc::Sender<Result<(), String>>>,
) -> IsolateExit {
    let done = services.context.done.clone();
    let started = services.context.started.clone();
    let thread_index = services.context.thread_index;
    let heap_limit = graph.spec().heap_limit_bytes;
    let runtime = JsRuntime::try_new(RuntimeOptions {
        module_loader: Some(Rc::new(WorkerModuleLoader::new(graph.clone()))),
        extensions: extensions(services),
        create_params: Some(
            deno_core::v8::CreateParams::default()
                .heap_limits(0, heap_limit)
                .array_buffer_allocator(crate::memory::budgeted_allocator(heap_limit)),
        ),
        inspector: graph.spec().inspect,
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
    if graph.spec().inspect {
        let url = Url::from_file_path(&graph.spec().main)
            .map(String::from)
            .unwrap_or_default();
        let sessions = runtime.inspector().get_session_sender();
        crate::devtools::register(&graph.spec().name, thread_index, url, sessions);
    }
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
    // Evaluating runs the module's code at once, before the returned future is polled: the
    // serve loop starts there, and on a restart it may run queued events right away, so
    // this is JS time like any poll.
    watch.enter();
    let evaluation = runtime.mod_evaluate(module_id);
    watch.leave();
    let evaluated = watched(
        watch,
        runtime.with_event_loop_future(Box::pin(evaluation), PollEventLoopOptions::default()),
    )
    .await;
    let evaluated = evaluated.unwrap_or(Ok(()));
    if evaluated.is_err() || watch.termination().is_some() {
        let error = evaluated.err().map(|e| e.to_string()).unwrap_or_default();
        if let Some(termination) = watch.termination() {
            if started.get() {
                // The serve loop had begun: an event ran past the limit, not the Worker's
                // top-level code. Its isolate is reset like any other.
                return IsolateExit::Reset(termination);
            }
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
    if !started.get() {
        // The main module threw while it loaded (a top-level throw rejects the module's
        // evaluation): the error comes out of the event loop. Startup fails with it.
        let error = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(
                match runtime.poll_event_loop(cx, PollEventLoopOptions::default()) {
                    std::task::Poll::Ready(Err(error)) => Some(error.to_string()),
                    _ => None,
                },
            )
        })
        .await;
        return IsolateExit::Failed(describe_startup_error(
            &error.unwrap_or_else(|| "the Worker's main module did not finish loading".into()),
        ));
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

/// What the JS glue needs at startup: vars, namespaces, object settings, socket limits.
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
                "foreign": n.foreign.is_some(),
            })
        })
        .collect();
    serde_json::json!({
        "workerName": spec.name,
        "vars": spec.vars,
        "namespaces": namespaces,
        "assetsBinding": spec.assets.as_ref().and_then(|a| a.config().binding.clone()),
        "r2Buckets": spec
            .r2_buckets
            .iter()
            .map(|r2| serde_json::json!({"binding": r2.binding, "bucket": r2.bucket}))
            .collect::<Vec<_>>(),
        "d1Databases": spec
            .d1_databases
            .iter()
            .map(|d1| serde_json::json!({"binding": d1.binding, "name": d1.name}))
            .collect::<Vec<_>>(),
        "kvNamespaces": spec
            .kv_namespaces
            .iter()
            .map(|kv| serde_json::json!({"binding": kv.binding, "id": kv.id}))
            .collect::<Vec<_>>(),
        "localBindings": spec.local_bindings,
        "workflows": spec
            .workflows
            .iter()
            .map(|w| serde_json::json!({"binding": w.binding, "name": w.name}))
            .collect::<Vec<_>>(),
        "queueProducers": spec
            .queue_producers
            .iter()
            .map(|q| serde_json::json!({"binding": q.binding, "queue": q.queue, "deliveryDelay": q.delivery_delay}))
            .collect::<Vec<_>>(),
        "services": spec
            .services
            .iter()
            .map(|s| serde_json::json!({"binding": s.binding, "service": s.service, "entrypoint": s.entrypoint, "props": s.props}))
            .collect::<Vec<_>>(),
        "versionMetadata": crate::local_bindings::version_metadata(),
        "cf": spec.cf,
        "errorPages": spec.error_pages,
        "idleTimeoutMs": spec.object_idle_timeout.as_millis() as u64,
        "cpuLimitMs": spec.cpu_limit.as_millis() as u64,
        "fetchDepthHeader": crate::events::FETCH_DEPTH_HEADER,
        "fetchDepthToken": crate::events::fetch_depth_token(),
        "alarmMaxRetries": spec.alarm_retry.max_retries,
        "blockConcurrencyTimeoutMs": spec.block_concurrency_timeout.as_millis() as u64,
        "queuesJsonMessages": spec.compat_flag("queues_json_messages", "no_queues_json_messages", "2024-03-18"),
        "deleteAllDeletesAlarm": spec.compat_flag("delete_all_deletes_alarm", "delete_all_preserves_alarm", "2026-02-24"),
        "socketLimits": {
            "maxTags": sockets::MAX_TAGS,
            "maxTagLength": sockets::MAX_TAG_LENGTH,
            "maxAttachmentBytes": sockets::MAX_ATTACHMENT_BYTES,
            "maxAutoResponseBytes": sockets::MAX_AUTO_RESPONSE_BYTES,
        },
    })
    .to_string()
}

/// The extensions of an isolate, in load order.
fn extensions(services: IsolateServices) -> Vec<deno_core::Extension> {
    let extensions = vec![
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
        extension::dorun::init(services),
        crate::node_compat::dorun_node::init(),
    ];
    // Their JS from the binary, not from the build machine's disk.
    extensions.into_iter().map(crate::embedded::embed).collect()
}
