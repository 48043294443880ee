//! The V8 side of dorun: the only crate that names deno_core and V8.
//!
//! # Layout
//! - [`spec`]: [`WorkerSpec`], everything an isolate needs to know about a Worker
//!   (entry module, module rules, env values), independent of wrangler's file formats.
//! - [`loader`]: the ES module loader: relative imports, node_modules resolution through
//!   package.json `exports` (with wrangler's conditions), TypeScript transpiling, JSON,
//!   module rules (Text, Data, CompiledWasm) and the built-in `cloudflare:workers` module.
//! - [`extension`]: the `dorun` deno_core extension: ops and the JS glue in `js/`, which
//!   installs the Web APIs from deno's ext crates as Workers globals and runs handlers.
//! - [`body`]: request and response bodies that cross between the front door and an isolate
//!   thread as streams, never whole in memory.
//! - [`isolate`]: isolate threads (a current-thread tokio runtime + one `JsRuntime` each) and
//!   [`WorkerPool`], the `Send` handle the front door uses to reach them.
//! - [`objects`]: Durable Objects: IDs, routing calls to the thread an object is pinned to,
//!   storage ops over `dorun-storage`.
//! - [`alarms`]: the alarm scheduler: per-namespace alarm indexes, firing due alarms on the
//!   owning isolate thread, retries with backoff.
//! - [`sockets`]: WebSockets held outside JS (the registry the front door and the
//!   Hibernation API share), so hibernated objects can be evicted with sockets open.
//! - [`supervisor`]: a thread that terminates JS running past its CPU limit.

pub mod alarms;
pub mod body;
pub mod extension;
pub mod isolate;
pub mod loader;
pub mod node_compat;
pub mod objects;
pub mod sockets;
pub mod spec;
pub mod supervisor;
mod transpile;

pub use body::{RequestBody, ResponseBody};
pub use isolate::{StartupError, WorkerPool};
pub use spec::{ModuleRule, ModuleRuleKind, WorkerSpec};
