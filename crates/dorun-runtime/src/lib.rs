//! The V8 side of dorun: the only crate that names deno_core and V8.
//!
//! # Layout, from the bottom up (a module imports only modules above it in this list)
//! - [`clock`], [`body`], [`mailbox`], [`failure`]: shared types — wall-clock time, bodies
//!   that cross threads as streams, the events and replies of an isolate thread's mailbox,
//!   and the failures a client sees as an HTTP status.
//! - [`namespaces`]: Durable Object namespaces and workerd-compatible IDs.
//! - [`router`]: the one way to reach the thread that owns an object (or a given thread).
//! - [`context`]: what every op of an isolate may ask (worker, thread, events in flight).
//! - One module per concern, each with its ops: [`events`] (the named protocol between the
//!   thread and the JS glue), [`rpc`] (calls through stubs, streams), [`alarms`] (the
//!   scheduler and the per-namespace index), [`storage`] (each object's SQLite file and the
//!   connection cache), [`sockets`] (WebSockets held outside JS), [`assets_binding`]
//!   (`env.ASSETS`, answered by `dorun-assets`), [`cache`] (the Cache API, `caches`),
//!   [`binding_files`] (what KV, D1 and R2 share about their files), [`kv_binding`] (`kv_namespaces`: Workers KV, one SQLite file per namespace),
//!   [`d1_binding`] (`d1_databases`: one plain SQLite file per database), [`r2_binding`]
//!   (`r2_buckets`: body files and a SQLite index per bucket).
//! - [`spec`], [`loader`] (+ `transpile`, `commonjs`, `scope`), [`supervisor`]: the Worker as the
//!   runtime sees it, its modules (ES modules and CommonJS, only from the project), the
//!   CPU-limit watchdog.
//! - [`devtools`]: each isolate's V8 inspector as a Chrome DevTools target (`--inspect`).
//! - [`embedded`]: the extensions' JS embedded in the binary (see `build.rs`).
//! - [`extension`]: the deno_core extension (ops + the JS glue in `js/`).
//! - [`isolate`]: one isolate thread; [`pool`]: [`WorkerPool`], the threads of one Worker.

pub mod admin;
pub mod alarms;
pub mod assets_binding;
pub mod binding_files;
pub mod body;
pub mod cache;
pub mod clock;
mod commonjs;
pub mod context;
pub mod d1_binding;
pub mod devtools;
pub mod embedded;
pub mod events;
pub mod extension;
pub mod failure;
pub mod isolate;
pub mod kv_binding;
pub mod loader;
pub mod local_bindings;
pub mod mailbox;
pub mod memory;
pub mod namespaces;
pub mod node_compat;
pub mod pool;
pub mod queue_binding;
pub mod r2_binding;
pub mod router;
pub mod rpc;
mod scope;
pub mod sockets;
pub mod spec;
pub mod storage;
pub mod supervisor;
mod transpile;
pub mod workflow_binding;

pub use body::{RequestBody, ResponseBody};
pub use failure::Failure;
pub use pool::{DispatchError, StartupError, WorkerPool};
pub use spec::{ModuleRule, ModuleRuleKind, WorkerSpec};

#[cfg(test)]
mod gates_tests;
