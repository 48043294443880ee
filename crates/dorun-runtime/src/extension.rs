//! The `dorun` deno_core extension: every op the JS glue calls (defined in the module of
//! its concern), the glue itself (`js/`, numbered in load order), and the few ops that
//! belong to the Worker as a whole (console, runtime config, module bytes).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use deno_core::{op2, OpState};
use deno_error::JsErrorBox;

use crate::alarms::AlarmScheduler;
use crate::cache::CacheStore;
use crate::context::IsolateContext;
use crate::loader::ModuleGraph;
use crate::namespaces::ObjectConfig;
use crate::router::Router;
use crate::sockets::{ParkedSockets, SocketRegistry};
use crate::storage::{connection_capacity, idle_connection_capacity, OpenDatabases};
use crate::{
    admin, assets_binding, cache, d1_binding, events, kv_binding, local_bindings, namespaces,
    queue_binding, r2_binding, rpc, sockets, storage, workflow_binding,
};

/// What an isolate's ops share besides [`IsolateContext`]; each piece goes into the op
/// state on its own.
pub struct IsolateServices {
    pub context: IsolateContext,
    pub router: Arc<Router>,
    pub objects: Arc<ObjectConfig>,
    pub alarms: Arc<AlarmScheduler>,
    pub sockets: Arc<SocketRegistry>,
    pub graph: Arc<ModuleGraph>,
    /// Set when the isolate passes its CPU limit: SQL running then is interrupted.
    pub sql_interrupt: Arc<AtomicBool>,
}

deno_core::extension!(
    dorun,
    deps = [deno_webidl, deno_web, deno_crypto, deno_net, deno_fetch],
    ops = [
        // the Worker
        op_dorun_log,
        op_dorun_runtime_config,
        op_dorun_module_bytes,
        op_dorun_done,
        op_dorun_started,
        op_dorun_md5,
        // events in, answers out (events.rs)
        events::op_dorun_next_event,
        events::op_dorun_event_entered,
        events::op_dorun_respond,
        events::op_dorun_respond_stream,
        events::op_dorun_respond_failure,
        events::op_dorun_reply_value,
        events::op_dorun_reply_error,
        events::op_dorun_alarm_done,
        events::op_dorun_alarm_retry,
        events::op_dorun_alarm_stale,
        events::op_dorun_alarm_stale_none,
        // IDs (namespaces.rs)
        namespaces::op_dorun_id_from_name,
        namespaces::op_dorun_new_unique_id,
        namespaces::op_dorun_id_from_string,
        // outgoing calls (rpc.rs)
        rpc::op_dorun_object_rpc,
        rpc::op_dorun_object_fetch,
        rpc::op_dorun_thread_index,
        rpc::op_dorun_export_call,
        rpc::op_dorun_export_release,
        rpc::op_dorun_export_retain,
        rpc::op_dorun_stream_export,
        rpc::op_dorun_stream_import,
        // storage (storage.rs)
        storage::op_dorun_storage_open,
        storage::op_dorun_storage_close,
        storage::op_dorun_storage_pressure,
        storage::op_dorun_storage_sweep_idle,
        storage::op_dorun_storage_rollback,
        storage::op_dorun_storage_commit,
        storage::op_dorun_storage_durable,
        storage::op_dorun_storage_in_transaction,
        storage::op_dorun_storage_savepoint,
        storage::op_dorun_storage_release,
        storage::op_dorun_storage_rollback_to,
        storage::op_dorun_kv_get,
        storage::op_dorun_kv_put,
        storage::op_dorun_kv_delete,
        storage::op_dorun_kv_list,
        storage::op_dorun_kv_delete_all,
        storage::op_dorun_alarm_get,
        storage::op_dorun_alarm_set,
        storage::op_dorun_alarm_delete,
        storage::op_dorun_sql_exec,
        storage::op_dorun_sql_database_size,
        // WebSockets (sockets.rs)
        sockets::op_dorun_ws_accept_local,
        sockets::op_dorun_ws_accept_object,
        sockets::op_dorun_ws_send_text,
        sockets::op_dorun_ws_send_binary,
        sockets::op_dorun_ws_close,
        sockets::op_dorun_ws_state,
        sockets::op_dorun_ws_object_sockets,
        sockets::op_dorun_ws_tags,
        sockets::op_dorun_ws_set_attachment,
        sockets::op_dorun_ws_attachment,
        sockets::op_dorun_ws_set_auto_response,
        sockets::op_dorun_ws_auto_response,
        sockets::op_dorun_ws_auto_response_timestamp,
        sockets::op_dorun_ws_set_event_timeout,
        sockets::op_dorun_ws_event_timeout,
        sockets::op_dorun_ws_connect,
        sockets::op_dorun_ws_start,
        sockets::op_dorun_ws_accept_remote,
        // the assets binding (assets_binding.rs)
        assets_binding::op_dorun_assets_fetch,
        // KV namespaces (kv_binding.rs)
        kv_binding::op_dorun_kvns_get,
        local_bindings::op_dorun_ratelimit,
        local_bindings::op_dorun_email_write,
        rpc::op_dorun_service_fetch,
        rpc::op_dorun_service_call,
        kv_binding::op_dorun_kvns_put,
        kv_binding::op_dorun_kvns_delete,
        kv_binding::op_dorun_kvns_list,
        // Queues (queue_binding.rs)
        queue_binding::op_dorun_queue_send,
        queue_binding::op_dorun_queue_metrics,
        // Workflows (workflow_binding.rs)
        workflow_binding::op_dorun_workflow_create,
        workflow_binding::op_dorun_workflow_get,
        workflow_binding::op_dorun_workflow_transition,
        workflow_binding::op_dorun_workflow_event,
        workflow_binding::op_dorun_workflow_step,
        workflow_binding::op_dorun_workflow_put_step,
        workflow_binding::op_dorun_workflow_take_event,
        // D1 databases (d1_binding.rs)
        d1_binding::op_dorun_d1_batch,
        d1_binding::op_dorun_d1_exec,
        // R2 buckets (r2_binding.rs)
        r2_binding::op_dorun_r2_head,
        r2_binding::op_dorun_r2_writer,
        r2_binding::op_dorun_r2_write,
        r2_binding::op_dorun_r2_write_resource,
        r2_binding::op_dorun_r2_discard,
        r2_binding::op_dorun_r2_commit,
        r2_binding::op_dorun_r2_open,
        r2_binding::op_dorun_r2_delete,
        r2_binding::op_dorun_r2_list,
        r2_binding::op_dorun_r2_create_upload,
        r2_binding::op_dorun_r2_commit_part,
        r2_binding::op_dorun_r2_complete,
        r2_binding::op_dorun_r2_abort,
        // the Cache API (cache.rs)
        cache::op_dorun_cache_check,
        cache::op_dorun_cache_put,
        cache::op_dorun_cache_match,
        cache::op_dorun_cache_delete,
        // the admin listener
        admin::op_dorun_admin_sql,
        admin::op_dorun_admin_hold,
        admin::op_dorun_object_metric,
        admin::op_dorun_admin_restore,
        admin::op_dorun_admin_snapshot,
        admin::op_dorun_admin_discard,
    ],
    esm_entry_point = "ext:dorun/99_worker.js",
    esm = [
        dir "src/js",
        "00_runtime.js",
        "01_globals.js",
        "02_ids.js",
        "03_websockets.js",
        "04_hibernation.js",
        "05_http.js",
        "06_rpc.js",
        "07_gates.js",
        "08_storage.js",
        "09_alarms.js",
        "10_objects.js",
        "11_assets.js",
        "12_cache.js",
        "13_admin.js",
        "14_kv.js",
        "15_d1.js",
        "16_r2.js",
        "17_local_bindings.js",
        "18_queues.js",
        "19_workflows.js",
        "20_sockets.js",
        "99_worker.js",
    ],
    options = {
        services: IsolateServices,
    },
    state = |state, options| {
        let services = options.services;
        state.put(
            OpenDatabases::new(connection_capacity(), services.objects.durability)
                .keep_idle(idle_connection_capacity())
                .interrupt_when(services.sql_interrupt)
                .replicate(services.objects.replication.clone()),
        );
        state.put(services.context);
        state.put(services.router);
        state.put(CacheStore::new(
            services.objects.data_dir.join("cache.sqlite"),
            services.graph.spec().cache_ttl,
        ));
        state.put(d1_binding::D1Store {
            data_dir: services.objects.data_dir.clone(),
            durability: services.objects.durability,
            limit: services.graph.spec().cpu_limit,
        });
        state.put(r2_binding::R2Store::new(
            services.objects.data_dir.clone(),
            services.objects.durability,
        ));
        state.put(rpc::ServiceLinks(services.graph.spec().services.clone()));
        state.put(local_bindings::Outbox(services.objects.data_dir.join("email")));
        state.put(workflow_binding::WorkflowStore {
            data_dir: services.objects.data_dir.clone(),
            durability: services.objects.durability,
        });
        state.put(queue_binding::QueueStore {
            data_dir: services.objects.data_dir.clone(),
            durability: services.objects.durability,
        });
        state.put(kv_binding::KvStore {
            data_dir: services.objects.data_dir.clone(),
            durability: services.objects.durability,
        });
        state.put(services.objects);
        state.put(services.alarms);
        state.put(services.sockets);
        if let Some(assets) = services.graph.spec().assets.clone() {
            state.put(assets);
        }
        state.put(services.graph);
        state.put(ParkedSockets::default());
    },
);

/// MD5 of `data`: workerd's `crypto.subtle.digest("MD5", ...)` (and node's), which the Web
/// Crypto standard (and deno) leave out.
#[op2]
#[buffer]
pub fn op_dorun_md5(#[buffer] data: &[u8]) -> Vec<u8> {
    use md5::Digest;
    md5::Md5::digest(data).to_vec()
}

/// The Worker's modules loaded and its serve loop starts.
#[op2(fast)]
pub fn op_dorun_started(state: &mut OpState) {
    state.borrow::<IsolateContext>().started.set(true);
}

/// The glue finished after a shutdown (waitUntil work settled, storage closed).
#[op2(fast)]
pub fn op_dorun_done(state: &mut OpState) {
    state.borrow::<IsolateContext>().done.set(true);
}

/// console.* output, routed to tracing and tagged with the worker's name and, for code of
/// a Durable Object, its class and id (empty strings otherwise).
#[op2(fast)]
pub fn op_dorun_log(
    state: &mut OpState,
    #[smi] level: i32,
    #[string] message: &str,
    #[string] class: &str,
    #[string] object: &str,
) {
    let worker = &*state.borrow::<IsolateContext>().worker_name;
    let message = message.strip_suffix('\n').unwrap_or(message);
    let message = without_terminal_styles(message);
    let class = (!class.is_empty()).then_some(class);
    let object = (!object.is_empty()).then_some(object);
    match level {
        0 => tracing::debug!(target: "dorun::console", worker, class, object, "{message}"),
        1 => tracing::info!(target: "dorun::console", worker, class, object, "{message}"),
        2 => tracing::warn!(target: "dorun::console", worker, class, object, "{message}"),
        _ => tracing::error!(target: "dorun::console", worker, class, object, "{message}"),
    }
}

/// What the glue needs at startup, as JSON: vars, namespaces, settings, limits.
#[op2]
#[string]
pub fn op_dorun_runtime_config(state: &mut OpState) -> String {
    state.borrow::<IsolateContext>().runtime_config.to_string()
}

/// The bytes of a Data or CompiledWasm module.
#[op2]
#[buffer]
pub fn op_dorun_module_bytes(
    state: &mut OpState,
    #[string] url: &str,
) -> Result<Vec<u8>, JsErrorBox> {
    state
        .borrow::<Arc<ModuleGraph>>()
        .module_bytes(url)
        .map(|b| b.to_vec())
        .ok_or_else(|| JsErrorBox::generic(format!("no module bytes for {url}")))
}

/// `message` without ANSI escape sequences (colours and cursor moves, as loggers like Hono's
/// write them for a terminal). The log formatter would print them escaped (`\x1b[32m`),
/// which reads as noise, and a log line is no place for terminal control.
fn without_terminal_styles(message: &str) -> std::borrow::Cow<'_, str> {
    if !message.contains('\x1b') {
        return std::borrow::Cow::Borrowed(message);
    }
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // CSI: ESC [ parameters/intermediates, then one final byte in @..~.
        if chars.next_if_eq(&'[').is_some() {
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            // Two-character escapes (ESC followed by one character).
            chars.next();
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::without_terminal_styles;

    #[test]
    fn console_messages_lose_terminal_styles_only() {
        assert_eq!(
            without_terminal_styles("\x1b[32m200\x1b[0m GET /x \x1b[1;31mslow\x1b[m"),
            "200 GET /x slow"
        );
        assert_eq!(without_terminal_styles("plain [32m"), "plain [32m");
        assert_eq!(without_terminal_styles("a\x1bcb\x1b"), "ab");
        assert_eq!(
            without_terminal_styles("\u{e9}\x1b[2K\u{e9}"),
            "\u{e9}\u{e9}"
        );
    }
}
