//! What an isolate needs to know about a Worker.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::namespaces::ObjectConfig;

/// How a file matched by a module rule is exposed to `import`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModuleRuleKind {
    /// Loaded as an ES module (JavaScript or TypeScript by extension).
    EsModule,
    /// `export default` of the file's text.
    Text,
    /// `export default` of the file's bytes as an `ArrayBuffer`.
    Data,
    /// `export default` of a compiled `WebAssembly.Module`.
    CompiledWasm,
}

/// Files whose path (relative to the entry module's directory) matches one of `globs`.
#[derive(Clone, Debug)]
pub struct ModuleRule {
    pub kind: ModuleRuleKind,
    pub globs: Vec<String>,
}

/// A Worker as the runtime sees it.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    /// The worker's name, used in logs and in `navigator.userAgent`-independent places.
    pub name: String,
    /// Absolute path of the entry module.
    pub main: PathBuf,
    /// The directory of the Worker's config file. Code may import files under it and under
    /// the entry module's directory, and packages from node_modules; nothing else.
    pub project_dir: PathBuf,
    /// Module rules in match order; the first matching rule wins.
    pub rules: Vec<ModuleRule>,
    /// `env` values that are not bindings: vars (strings or JSON values) and secrets.
    pub vars: serde_json::Map<String, serde_json::Value>,
    pub compatibility_date: Option<String>,
    pub compatibility_flags: Vec<String>,
    /// CPU time one event may use before its isolate is terminated.
    pub cpu_limit: Duration,
    /// V8 heap size above which the isolate is reset.
    pub heap_limit_bytes: usize,
    /// Durable Object namespaces, data directory and durability.
    pub objects: Arc<ObjectConfig>,
    /// How long an object with no events in flight stays in memory.
    pub object_idle_timeout: Duration,
    /// How failing alarm() handlers are retried.
    pub alarm_retry: crate::alarms::AlarmRetry,
    /// How long `blockConcurrencyWhile` may hold an object before it is reset (30 s).
    pub block_concurrency_timeout: Duration,
    /// The `request.cf` object of requests from the front door.
    pub cf: serde_json::Map<String, serde_json::Value>,
    /// An HTML request whose handler threw gets a page with the error (local development).
    pub error_pages: bool,
    /// `r2_buckets`: `env.<binding>` reaches R2 bucket `bucket`.
    pub r2_buckets: Vec<crate::r2_binding::R2Binding>,
    /// `d1_databases`: `env.<binding>` reaches D1 database `name`.
    pub d1_databases: Vec<crate::d1_binding::D1Binding>,
    /// `kv_namespaces`: `env.<binding>` reaches KV namespace `id`.
    pub kv_namespaces: Vec<crate::kv_binding::KvBinding>,
    /// `workflows`: `env.<binding>` creates and drives instances of a workflow.
    pub workflows: Vec<crate::workflow_binding::WorkflowBinding>,
    /// `queues.producers`: `env.<binding>` sends to a queue.
    pub queue_producers: Vec<crate::queue_binding::QueueProducer>,
    /// `services`: service bindings to workers of this process (linked once they start).
    pub services: Vec<Arc<crate::rpc::ServiceLink>>,
    /// `version_metadata`, rate limits and Cloudflare-only bindings (`js/17_local_bindings.js`).
    pub local_bindings: Vec<serde_json::Value>,
    /// How long the Cache API keeps a response that has no explicit lifetime.
    pub cache_ttl: crate::cache::TtlPolicy,
    /// Static assets; `env.<binding>` when the `assets` config names a binding.
    pub assets: Option<Arc<dorun_assets::Assets>>,
    /// Each isolate's V8 inspector is registered for Chrome DevTools (`--inspect`).
    pub inspect: bool,
}

impl WorkerSpec {
    /// Whether a compatibility flag is on: set explicitly, or implied by the compatibility
    /// date (`default_on`, as `YYYY-MM-DD`) unless its `disable` flag is set.
    pub fn compat_flag(&self, enable: &str, disable: &str, default_on: &str) -> bool {
        if self.compatibility_flags.iter().any(|f| f == enable) {
            return true;
        }
        if self.compatibility_flags.iter().any(|f| f == disable) {
            return false;
        }
        self.compatibility_date
            .as_deref()
            .is_some_and(|date| date >= default_on)
    }

    /// The directory module rule globs are relative to.
    pub fn base_dir(&self) -> PathBuf {
        self.main
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| PathBuf::from("."))
    }
}
