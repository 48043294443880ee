//! The worker assembly: wrangler configs -> runtime worker specs -> running pools, shared by
//! `dorun serve`, `dorun check` and anything that starts workers in process.
//!
//! It finds and loads each config (a Worker script may stand in for it), runs its `[build]`
//! command, applies Durable Object migrations, maps bindings (including `script_name`
//! bindings to another worker's class) to namespaces, opens static assets, and starts one
//! [`WorkerPool`] per worker.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dorun_assets::Assets;
use dorun_runtime::alarms::AlarmRetry;
use dorun_runtime::namespaces::{ForeignNamespace, ObjectConfig, ObjectNamespace};
use dorun_runtime::{StartupError, WorkerPool, WorkerSpec};
use dorun_storage::Durability;

use crate::build::BuildError;
use crate::config::{self, ConfigError, LoadOptions, UnsupportedBindings, WorkerConfig};
use crate::migrations::MigrationError;

/// How to run the workers, independent of the command line that set it.
#[derive(Clone, Debug)]
pub struct WorkerOptions {
    /// The `[env.<name>]` section to use.
    pub env: Option<String>,
    /// Env vars set on the command line; they override vars and secrets of the same name.
    pub vars: Vec<(String, String)>,
    pub unsupported_bindings: UnsupportedBindings,
    /// The Worker's entry, for a config without `main` (or instead of its `main`).
    pub script: Option<PathBuf>,
    /// CPU time per event before the isolate is terminated (else `limits.cpu_ms`, else 30 s).
    pub cpu_limit_ms: Option<u64>,
    pub heap_limit_mb: usize,
    /// Where Durable Object data lives (else `.dorun` beside the first config).
    pub data_dir: Option<PathBuf>,
    pub object_idle_timeout: Duration,
    pub durability: Durability,
    /// `--replicate-to`: the replicator every object commit is announced to.
    pub replication: Option<Arc<dorun_storage::replica::Replication>>,
    pub alarm_retry: AlarmRetry,
    pub block_concurrency_timeout: Duration,
    /// Fields of `request.cf` that replace the defaults.
    pub cf: serde_json::Map<String, serde_json::Value>,
    /// Whether an HTML request whose handler threw gets an error page (else a plain 500).
    pub error_pages: bool,
    /// How long the Cache API keeps a response that has no explicit lifetime.
    pub cache_ttl: dorun_runtime::cache::TtlPolicy,
    /// Register each isolate's V8 inspector for Chrome DevTools (no CPU limit then).
    pub inspect: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            env: None,
            vars: Vec::new(),
            unsupported_bindings: UnsupportedBindings::Error,
            script: None,
            cpu_limit_ms: None,
            heap_limit_mb: 512,
            data_dir: None,
            object_idle_timeout: Duration::from_secs(10),
            durability: Durability::Full,
            replication: None,
            alarm_retry: AlarmRetry::default(),
            block_concurrency_timeout: Duration::from_secs(30),
            cf: serde_json::Map::new(),
            error_pages: true,
            cache_ttl: Default::default(),
            inspect: false,
        }
    }
}

/// Why the workers could not be assembled.
#[derive(Debug, thiserror::Error)]
pub enum AssemblyError {
    #[error("no wrangler.json, wrangler.jsonc or wrangler.toml in {}", .0.display())]
    NoConfigIn(PathBuf),
    #[error("no wrangler.json, wrangler.jsonc or wrangler.toml in {} or its parents; pass the config file", .0.display())]
    NoConfigAbove(PathBuf),
    #[error("no current directory: {0}")]
    NoCurrentDir(std::io::Error),
    #[error("{}: cannot open: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} and --script both name the Worker's entry; give one", .0.display())]
    ScriptTwice(PathBuf),
    #[error("--script names the entry of one worker; serve one config with it")]
    ScriptWithSeveral,
    #[error("{}: a config without 'main' (assets only) can only be served alone", .0.display())]
    AssetsOnlyNotAlone(PathBuf),
    #[error("{} and {} both define worker '{name}'; each config served together needs its own name", first.display(), second.display())]
    DuplicateName {
        first: PathBuf,
        second: PathBuf,
        name: String,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Migration(#[from] MigrationError),
    #[error("{}: durable_objects binding '{binding}': Cannot create binding for class '{class}' because it is not currently configured to implement Durable Objects in worker '{worker}'. Did you forget to apply a Durable Object migration (new_sqlite_classes), or was the class renamed, deleted or transferred?", config.display())]
    ClassNotConfigured {
        config: PathBuf,
        binding: String,
        class: String,
        worker: String,
    },
    #[error("{}: key 'assets': {message}", config.display())]
    Assets { config: PathBuf, message: String },
    /// A worker's code failed to start (named when several workers are served).
    #[error("{}{source}", worker.as_ref().map(|w| format!("worker '{w}': ")).unwrap_or_default())]
    Startup {
        worker: Option<String>,
        source: Box<StartupError>,
    },
}

fn locate_config(explicit: Option<&Path>) -> Result<PathBuf, AssemblyError> {
    match explicit {
        Some(path) if path.is_dir() => {
            config::find_config(path).ok_or_else(|| AssemblyError::NoConfigIn(path.into()))
        }
        Some(path) => Ok(path.to_path_buf()),
        None => {
            let cwd = std::env::current_dir().map_err(AssemblyError::NoCurrentDir)?;
            config::find_config(&cwd).ok_or(AssemblyError::NoConfigAbove(cwd))
        }
    }
}

/// Extensions of a Worker script named where a config is expected.
const SCRIPT_EXTENSIONS: &[&str] = &["js", "mjs", "cjs", "jsx", "ts", "mts", "cts", "tsx"];

fn is_script(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| SCRIPT_EXTENSIONS.contains(&e))
}

fn absolute(path: &Path) -> Result<PathBuf, AssemblyError> {
    std::fs::canonicalize(path).map_err(|source| AssemblyError::Open {
        path: path.to_path_buf(),
        source,
    })
}

fn load_config(
    path: Option<&Path>,
    options: &WorkerOptions,
) -> Result<WorkerConfig, AssemblyError> {
    let mut load = LoadOptions {
        env: options.env.clone(),
        vars: options.vars.clone(),
        unsupported_bindings: options.unsupported_bindings,
        script: options.script.as_deref().map(absolute).transpose()?,
    };
    // `dorun serve src/index.ts`: the script is the entry; the config beside or above it
    // (if any) supplies the rest.
    let path = match path {
        Some(script) if is_script(script) => {
            if load.script.is_some() {
                return Err(AssemblyError::ScriptTwice(script.to_path_buf()));
            }
            let script = absolute(script)?;
            let found = script.parent().and_then(config::find_config);
            load.script = Some(script.clone());
            match found {
                Some(found) => found,
                None => {
                    let config = config::load_default(&script, &load)?;
                    tracing::info!(
                        "no wrangler config beside or above {}; using main = that script, compatibility_date = {}",
                        script.display(),
                        config.compatibility_date.as_deref().unwrap_or("")
                    );
                    return Ok(config);
                }
            }
        }
        other => locate_config(other)?,
    };
    let path = absolute(&path)?;
    // [build] runs first: it may produce `main` or the assets.
    if let Some(build) = crate::build::read(&path, options.env.as_deref())? {
        crate::build::run(&build, &path)?;
    }
    let config = config::load(&path, &load)?;
    for warning in &config.warnings {
        tracing::warn!("{}: {warning}", path.display());
    }
    Ok(config)
}

/// Every config named (or the one found from the current directory), with distinct worker
/// names. A path may also be a Worker script (`dorun serve src/index.ts`).
pub fn load_configs(
    paths: &[PathBuf],
    options: &WorkerOptions,
) -> Result<Vec<WorkerConfig>, AssemblyError> {
    let configs = if paths.is_empty() {
        vec![load_config(None, options)?]
    } else {
        paths
            .iter()
            .map(|path| load_config(Some(path), options))
            .collect::<Result<Vec<_>, _>>()?
    };
    if options.script.is_some() && configs.len() > 1 {
        return Err(AssemblyError::ScriptWithSeveral);
    }
    if configs.len() > 1 {
        if let Some(config) = configs.iter().find(|c| c.main.is_none()) {
            return Err(AssemblyError::AssetsOnlyNotAlone(config.path.clone()));
        }
    }
    for (index, config) in configs.iter().enumerate() {
        if let Some(other) = configs[..index].iter().find(|c| c.name == config.name) {
            return Err(AssemblyError::DuplicateName {
                first: other.path.clone(),
                second: config.path.clone(),
                name: config.name.clone(),
            });
        }
    }
    Ok(configs)
}

/// Where the workers' data lives: `--data-dir`, else `.dorun` beside the first config.
pub fn data_dir(config: &WorkerConfig, options: &WorkerOptions) -> PathBuf {
    options.data_dir.clone().unwrap_or_else(|| {
        config
            .path
            .parent()
            .unwrap_or(Path::new("."))
            .join(".dorun")
    })
}

/// Applies every worker's migrations and maps each binding to its namespace. A binding with
/// `script_name` reaches a class of another worker served by this process; that worker gets
/// a namespace for the class (without a binding of its own if it had none). Returns the
/// object config of each worker, and the foreign namespaces with the index of the worker
/// whose isolate threads they must be connected to once it runs.
#[allow(clippy::type_complexity)]
fn object_configs(
    configs: &[WorkerConfig],
    options: &WorkerOptions,
    data_dir: &Path,
) -> Result<(Vec<ObjectConfig>, Vec<(Arc<ForeignNamespace>, usize)>), AssemblyError> {
    let mut classes = Vec::with_capacity(configs.len());
    for config in configs {
        classes.push(crate::migrations::apply(data_dir, config)?);
    }
    // A class of worker `w`: its key and storage kind.
    let class_of =
        |w: usize, binding_name: &str, class_name: &str| -> Result<(String, bool), AssemblyError> {
            let config = &configs[w];
            match classes[w].get(class_name) {
                Some(class) => Ok((class.unique_key.clone(), class.sqlite)),
                // Migrations exist but none leaves this class in the worker (never created, or
                // renamed, deleted or transferred away): refused, as Cloudflare refuses the deploy.
                None if !config.migrations.is_empty() || !config.exports.is_empty() => {
                    Err(AssemblyError::ClassNotConfigured {
                        config: config.path.clone(),
                        binding: binding_name.to_string(),
                        class: class_name.to_string(),
                        worker: config.name.clone(),
                    })
                }
                // No migrations at all: serve it like `wrangler dev` does, KV-backed.
                None => Ok((format!("{}-{class_name}", config.name), false)),
            }
        };
    let mut namespaces: Vec<Vec<ObjectNamespace>> = vec![Vec::new(); configs.len()];
    for (w, config) in configs.iter().enumerate() {
        for binding in &config.durable_objects {
            if binding
                .script_name
                .as_ref()
                .is_some_and(|s| s != &config.name)
            {
                continue;
            }
            let (unique_key, sqlite) = class_of(w, &binding.name, &binding.class_name)?;
            namespaces[w].push(ObjectNamespace {
                binding: binding.name.clone(),
                class_name: binding.class_name.clone(),
                unique_key,
                sqlite,
                foreign: None,
            });
        }
    }
    // Every class the worker's migrations or exports define gets a namespace, bound or not:
    // `ctx.exports.<Class>` reaches it.
    for (w, classes) in classes.iter().enumerate() {
        for (class_name, class) in classes {
            if !namespaces[w].iter().any(|n| &n.class_name == class_name) {
                namespaces[w].push(ObjectNamespace {
                    binding: String::new(),
                    class_name: class_name.clone(),
                    unique_key: class.unique_key.clone(),
                    sqlite: class.sqlite,
                    foreign: None,
                });
            }
        }
    }
    let mut foreign_links = Vec::new();
    for (w, config) in configs.iter().enumerate() {
        for binding in &config.durable_objects {
            let Some(script) = binding.script_name.as_ref().filter(|s| *s != &config.name) else {
                continue;
            };
            let Some(owner) = configs.iter().position(|c| &c.name == script) else {
                // As `wrangler dev` does: the worker starts, and the binding's first use
                // fails naming the worker that is not served.
                tracing::warn!(
                    "{}: durable_objects binding '{}' uses script_name '{script}', which this \
                     dorun serve does not serve: its first use throws (add that worker's config \
                     to the command: dorun serve {} <{script}'s wrangler file>)",
                    config.path.display(),
                    binding.name,
                    config.path.display()
                );
                namespaces[w].push(ObjectNamespace {
                    binding: binding.name.clone(),
                    class_name: binding.class_name.clone(),
                    unique_key: format!("{script}-{}", binding.class_name),
                    sqlite: true,
                    foreign: Some(Arc::new(ForeignNamespace {
                        worker: script.clone(),
                        index: 0,
                        mailboxes: Default::default(),
                    })),
                });
                continue;
            };
            let (unique_key, sqlite) = class_of(owner, &binding.name, &binding.class_name)?;
            let index = match namespaces[owner]
                .iter()
                .position(|n| n.class_name == binding.class_name && n.foreign.is_none())
            {
                Some(index) => index,
                None => {
                    namespaces[owner].push(ObjectNamespace {
                        binding: String::new(),
                        class_name: binding.class_name.clone(),
                        unique_key: unique_key.clone(),
                        sqlite,
                        foreign: None,
                    });
                    namespaces[owner].len() - 1
                }
            };
            let foreign = Arc::new(ForeignNamespace {
                worker: script.clone(),
                index: index as u32,
                mailboxes: Default::default(),
            });
            foreign_links.push((foreign.clone(), owner));
            namespaces[w].push(ObjectNamespace {
                binding: binding.name.clone(),
                class_name: binding.class_name.clone(),
                unique_key,
                sqlite,
                foreign: Some(foreign),
            });
        }
    }
    let durability = options.durability;
    let objects = namespaces
        .into_iter()
        .map(|namespaces| ObjectConfig {
            namespaces,
            data_dir: data_dir.to_path_buf(),
            durability,
            replication: options.replication.clone(),
        })
        .collect();
    Ok((objects, foreign_links))
}

/// Opens each worker's assets directory (reads `_headers`, `_redirects`, `.assetsignore`).
fn open_assets(configs: &[WorkerConfig]) -> Result<Vec<Option<Arc<Assets>>>, AssemblyError> {
    configs
        .iter()
        .map(|config| {
            let Some(assets) = &config.assets else {
                return Ok(None);
            };
            let assets = Assets::open(assets.clone()).map_err(|message| AssemblyError::Assets {
                config: config.path.clone(),
                message,
            })?;
            for warning in &assets.warnings {
                tracing::warn!("{}: {warning}", assets.config().directory.display());
            }
            Ok(Some(Arc::new(assets)))
        })
        .collect()
}

/// The running workers of one `dorun serve` (or `check`): one pool per worker with a script,
/// and each worker's static assets.
pub struct Workers {
    pub configs: Vec<WorkerConfig>,
    pub pools: Vec<Option<Arc<WorkerPool>>>,
    pub assets: Vec<Option<Arc<Assets>>>,
}

impl Workers {
    /// Applies migrations, opens the assets, starts a pool per worker (none for an
    /// assets-only worker), then connects the workers that use each other's classes.
    pub fn start(
        configs: Vec<WorkerConfig>,
        options: &WorkerOptions,
        data_dir: &Path,
        threads: usize,
    ) -> Result<Self, AssemblyError> {
        let assets = open_assets(&configs)?;
        let pools = start_pools(&configs, &assets, options, data_dir, threads)?;
        Ok(Self {
            configs,
            pools,
            assets,
        })
    }

    /// Stops every pool and waits up to `timeout` for each; false if work was still running.
    pub fn join(&self, timeout: Duration) -> bool {
        for pool in self.pools.iter().flatten() {
            pool.close();
        }
        let mut finished = true;
        for pool in self.pools.iter().flatten() {
            finished &= pool.join(timeout);
        }
        finished
    }
}

/// Starts a pool per worker (none for an assets-only worker), then connects the workers
/// that use each other's classes.
fn start_pools(
    configs: &[WorkerConfig],
    assets: &[Option<Arc<Assets>>],
    options: &WorkerOptions,
    data_dir: &Path,
    threads: usize,
) -> Result<Vec<Option<Arc<WorkerPool>>>, AssemblyError> {
    let (objects, links) = object_configs(configs, options, data_dir)?;
    let mut pools: Vec<Option<Arc<WorkerPool>>> = Vec::with_capacity(configs.len());
    // One registry: a socket accepted by one worker's class reaches its client through the
    // first worker's front door.
    let sockets = Arc::new(dorun_runtime::sockets::SocketRegistry::default());
    let mut service_links = Vec::new();
    for ((config, objects), assets) in configs.iter().zip(objects).zip(assets) {
        let Some(spec) = worker_spec(config, options, objects, assets.clone()) else {
            pools.push(None);
            continue;
        };
        service_links.push(spec.services.clone());
        match WorkerPool::start(spec, threads, sockets.clone()) {
            Ok(pool) => pools.push(Some(Arc::new(pool))),
            Err(error) => {
                for pool in pools.iter().flatten() {
                    pool.close();
                }
                return Err(AssemblyError::Startup {
                    worker: (configs.len() > 1).then(|| config.name.clone()),
                    source: Box::new(error),
                });
            }
        }
    }
    for (foreign, owner) in links {
        if let Some(pool) = &pools[owner] {
            let _ = foreign.mailboxes.set(pool.mailboxes());
        }
    }
    // Service bindings reach the worker they name, if this process serves it: its assets,
    // then its Worker.
    for link in service_links.iter().flatten() {
        let index = configs.iter().position(|c| c.name == link.service);
        if let Some(served) = index.and_then(|i| assets[i].clone()) {
            let _ = link.assets.set(served);
        }
        let target = index.and_then(|i| pools[i].as_ref());
        match target {
            Some(pool) => {
                let _ = link.mailboxes.set(pool.mailboxes());
            }
            None if link.assets.get().is_some() => {}
            None => tracing::warn!(
                "service binding env.{} names worker \"{}\", which this dorun serve does not \
                 serve: its first use throws (add that worker's config to the command)",
                link.binding,
                link.service
            ),
        }
    }
    Ok(pools)
}

/// The runtime's view of a worker; `None` for an assets-only worker (no script).
fn worker_spec(
    config: &WorkerConfig,
    options: &WorkerOptions,
    objects: ObjectConfig,
    assets: Option<Arc<Assets>>,
) -> Option<WorkerSpec> {
    let cpu_limit_ms = options
        .cpu_limit_ms
        .or(config.cpu_limit_ms)
        .unwrap_or(30_000);
    Some(WorkerSpec {
        name: config.name.clone(),
        main: config.main.clone()?,
        project_dir: config
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        rules: config.rules.clone(),
        vars: config.vars.clone(),
        compatibility_date: config.compatibility_date.clone(),
        compatibility_flags: config.compatibility_flags.clone(),
        // A paused debugger must not count as a runaway script.
        cpu_limit: if options.inspect {
            Duration::from_secs(365 * 24 * 3600)
        } else {
            Duration::from_millis(cpu_limit_ms.max(1))
        },
        heap_limit_bytes: options.heap_limit_mb.max(16) * 1024 * 1024,
        objects: Arc::new(objects),
        object_idle_timeout: options.object_idle_timeout,
        alarm_retry: options.alarm_retry,
        block_concurrency_timeout: options.block_concurrency_timeout,
        cf: request_cf(&options.cf),
        error_pages: options.error_pages,
        cache_ttl: options.cache_ttl,
        kv_namespaces: config.kv_namespaces.clone(),
        local_bindings: config.local_bindings.clone(),
        queue_producers: config.queue_producers.clone(),
        workflows: config.workflows.clone(),
        services: config
            .services
            .iter()
            .map(|s| {
                Arc::new(dorun_runtime::rpc::ServiceLink::new(
                    s.binding.clone(),
                    s.service.clone(),
                    s.entrypoint.clone(),
                    s.props.clone(),
                ))
            })
            .collect(),
        r2_buckets: config.r2_buckets.clone(),
        d1_databases: config
            .d1_databases
            .iter()
            .map(|d1| dorun_runtime::d1_binding::D1Binding {
                binding: d1.binding.clone(),
                name: d1.name.clone(),
            })
            .collect(),
        assets,
        inspect: options.inspect,
    })
}

/// The `request.cf` a Worker sees: a plausible object as `wrangler dev` gives when it cannot
/// reach Cloudflare (a location, an ASN, the TLS of an edge), with `overrides` on top.
pub fn request_cf(
    overrides: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut cf = serde_json::json!({
        "asn": 13335,
        "asOrganization": "Cloudflare, Inc.",
        "colo": "SFO",
        "country": "US",
        "continent": "NA",
        "city": "San Francisco",
        "region": "California",
        "regionCode": "CA",
        "postalCode": "94107",
        "metroCode": "807",
        "latitude": "37.78044",
        "longitude": "-122.39055",
        "timezone": "America/Los_Angeles",
        "isEUCountry": false,
        "httpProtocol": "HTTP/1.1",
        "tlsVersion": "TLSv1.3",
        "tlsCipher": "AEAD-AES128-GCM-SHA256",
        "clientTcpRtt": 1,
        "edgeRequestKeepAliveStatus": 1,
        "requestPriority": "",
        "verifiedBotCategory": "",
    });
    let map = cf.as_object_mut().expect("an object");
    for (key, value) in overrides {
        map.insert(key.clone(), value.clone());
    }
    map.clone()
}
