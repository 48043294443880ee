//! The `dorun` command line.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dorun_assets::Assets;
use dorun_runtime::namespaces::{ForeignNamespace, ObjectConfig, ObjectNamespace};
use dorun_runtime::{WorkerPool, WorkerSpec};
use dorun_storage::Durability;

use crate::config::{self, LoadOptions, UnsupportedBindings, WorkerConfig};
use crate::server::{self, ServerOptions};

/// Run Cloudflare Workers and Durable Objects from their wrangler config.
#[derive(Debug, Parser)]
#[command(name = "dorun", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr. Filter with RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a Worker over HTTP.
    Serve(ServeArgs),
    /// Load the config and every module, report all problems, and exit.
    Check(ConfigArgs),
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// wrangler.toml, wrangler.json or wrangler.jsonc (default: found in the current
    /// directory or a parent, in wrangler's order). Several: workers that bind to each
    /// other's Durable Object classes (`script_name`); the first one serves HTTP. A script
    /// (`src/index.ts`) instead: the Worker's entry, with the config found beside or above
    /// it (or defaults when there is none), as `wrangler dev <script>`.
    pub config: Vec<PathBuf>,
    /// The Worker's entry module; replaces the config's `main` (for a config without one).
    #[arg(long, value_name = "PATH")]
    pub script: Option<PathBuf>,
    /// The [env.<name>] section to use.
    #[arg(long, short = 'e')]
    pub env: Option<String>,
    /// Set an env var (repeatable); overrides vars and secrets of the same name.
    #[arg(long = "var", value_name = "KEY=VALUE", value_parser = config::parse_var)]
    pub vars: Vec<(String, String)>,
    /// Start even if the config has bindings dorun does not support (they are left out of env).
    #[arg(long)]
    pub allow_unsupported_bindings: bool,
    /// CPU time one request may use before its isolate is terminated [default: limits.cpu_ms or 30000].
    #[arg(long, value_name = "MS")]
    pub cpu_limit_ms: Option<u64>,
    /// V8 heap size per isolate above which the isolate is reset.
    #[arg(long, value_name = "MB", default_value_t = 512)]
    pub heap_limit_mb: usize,
    /// Where Durable Object data lives [default: .dorun beside the config file].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seconds an object with no events in flight stays in memory.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub object_idle_timeout: f64,
    /// When a commit counts as durable: full (fsync every commit; RPO 0), normal (survives a
    /// process crash; an OS crash or power loss can lose recent commits), off (no fsync).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Full)]
    pub durability: DurabilityArg,
    /// Delay before the first retry of a failed alarm() (doubles each retry, as on Cloudflare).
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub alarm_retry_start_ms: u64,
    /// Retries of a failing alarm() before it is given up.
    #[arg(long, value_name = "N", default_value_t = 6)]
    pub alarm_max_retries: u32,
    /// How long blockConcurrencyWhile() may hold an object before it is reset (tests).
    #[arg(long, value_name = "MS", default_value_t = 30_000, hide = true)]
    pub block_concurrency_timeout_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    Full,
    Normal,
    Off,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Port to listen on (0 picks a free one).
    #[arg(long, short = 'p', default_value_t = 8787)]
    pub port: u16,
    /// Address to listen on; 0.0.0.0 in containers.
    #[arg(long, default_value = "127.0.0.1")]
    pub ip: IpAddr,
    /// Isolate threads [default: one per core].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds shutdown waits for in-flight requests.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub drain_timeout: u64,
    /// Stop by itself after this many seconds (for tests and scripted runs).
    #[arg(long, value_name = "SECONDS", hide = true)]
    pub exit_after: Option<u64>,
}

/// Sets up tracing on stderr.
pub fn init_logging(cli: &Cli) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => builder.with_target(true).init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Check(args) => check(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn locate_config(explicit: Option<&Path>) -> Result<PathBuf, String> {
    match explicit {
        Some(path) if path.is_dir() => config::find_config(path).ok_or_else(|| {
            format!(
                "no wrangler.json, wrangler.jsonc or wrangler.toml in {}",
                path.display()
            )
        }),
        Some(path) => Ok(path.to_path_buf()),
        None => {
            let cwd = std::env::current_dir().map_err(|e| format!("no current directory: {e}"))?;
            config::find_config(&cwd).ok_or_else(|| {
                format!(
                    "no wrangler.json, wrangler.jsonc or wrangler.toml in {} or its parents; pass the config file",
                    cwd.display()
                )
            })
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

fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::fs::canonicalize(path).map_err(|e| format!("{}: cannot open: {e}", path.display()))
}

fn load_config(path: Option<&Path>, args: &ConfigArgs) -> Result<WorkerConfig, String> {
    let mut options = LoadOptions {
        env: args.env.clone(),
        vars: args.vars.clone(),
        unsupported_bindings: if args.allow_unsupported_bindings {
            UnsupportedBindings::Warn
        } else {
            UnsupportedBindings::Error
        },
        script: args.script.as_deref().map(absolute).transpose()?,
    };
    // `dorun serve src/index.ts`: the script is the entry; the config beside or above it
    // (if any) supplies the rest.
    let path = match path {
        Some(script) if is_script(script) => {
            if options.script.is_some() {
                return Err(format!(
                    "{} and --script both name the Worker's entry; give one",
                    script.display()
                ));
            }
            let script = absolute(script)?;
            let found = script.parent().and_then(config::find_config);
            options.script = Some(script.clone());
            match found {
                Some(found) => found,
                None => {
                    let config =
                        config::load_default(&script, &options).map_err(|e| e.to_string())?;
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
    if let Some(build) = crate::build::read(&path, args.env.as_deref())? {
        crate::build::run(&build, &path)?;
    }
    let config = config::load(&path, &options).map_err(|e| e.to_string())?;
    for warning in &config.warnings {
        tracing::warn!("{}: {warning}", path.display());
    }
    Ok(config)
}

/// Every config named on the command line (or the one found), with distinct worker names.
fn load_configs(args: &ConfigArgs) -> Result<Vec<WorkerConfig>, String> {
    let configs = if args.config.is_empty() {
        vec![load_config(None, args)?]
    } else {
        args.config
            .iter()
            .map(|path| load_config(Some(path), args))
            .collect::<Result<Vec<_>, _>>()?
    };
    if args.script.is_some() && configs.len() > 1 {
        return Err("--script names the entry of one worker; serve one config with it".into());
    }
    if configs.len() > 1 {
        if let Some(config) = configs.iter().find(|c| c.main.is_none()) {
            return Err(format!(
                "{}: a config without 'main' (assets only) can only be served alone",
                config.path.display()
            ));
        }
    }
    for (index, config) in configs.iter().enumerate() {
        if let Some(other) = configs[..index].iter().find(|c| c.name == config.name) {
            return Err(format!(
                "{} and {} both define worker '{}'; each config served together needs its own name",
                other.path.display(),
                config.path.display(),
                config.name
            ));
        }
    }
    Ok(configs)
}

fn data_dir(config: &WorkerConfig, args: &ConfigArgs) -> PathBuf {
    args.data_dir.clone().unwrap_or_else(|| {
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
    args: &ConfigArgs,
    data_dir: &Path,
) -> Result<(Vec<ObjectConfig>, Vec<(Arc<ForeignNamespace>, usize)>), String> {
    let mut classes = Vec::with_capacity(configs.len());
    for config in configs {
        classes.push(crate::migrations::apply(data_dir, config)?);
    }
    // A class of worker `w`: its key and storage kind.
    let class_of = |w: usize,
                    binding_name: &str,
                    class_name: &str|
     -> Result<(String, bool), String> {
        let config = &configs[w];
        match classes[w].get(class_name) {
            Some(class) => Ok((class.unique_key.clone(), class.sqlite)),
            // Migrations exist but none leaves this class in the worker (never created, or
            // renamed, deleted or transferred away): refused, as Cloudflare refuses the deploy.
            None if !config.migrations.is_empty() => Err(format!(
                "{}: durable_objects binding '{binding_name}': Cannot create binding for class '{class_name}' because it is not currently configured to implement Durable Objects in worker '{}'. Did you forget to apply a Durable Object migration (new_sqlite_classes), or was the class renamed, deleted or transferred?",
                configs[w].path.display(),
                config.name
            )),
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
    let mut foreign_links = Vec::new();
    for (w, config) in configs.iter().enumerate() {
        for binding in &config.durable_objects {
            let Some(script) = binding.script_name.as_ref().filter(|s| *s != &config.name) else {
                continue;
            };
            let Some(owner) = configs.iter().position(|c| &c.name == script) else {
                return Err(format!(
                    "{}: durable_objects binding '{}' uses script_name '{script}', but no worker of that name is being served; name its config too: dorun serve {} <{script}'s wrangler file>",
                    config.path.display(),
                    binding.name,
                    config.path.display()
                ));
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
    let durability = match args.durability {
        DurabilityArg::Full => Durability::Full,
        DurabilityArg::Normal => Durability::Normal,
        DurabilityArg::Off => Durability::Off,
    };
    let objects = namespaces
        .into_iter()
        .map(|namespaces| ObjectConfig {
            namespaces,
            data_dir: data_dir.to_path_buf(),
            durability,
        })
        .collect();
    Ok((objects, foreign_links))
}

/// Opens each worker's assets directory (reads `_headers`, `_redirects`, `.assetsignore`).
fn open_assets(configs: &[WorkerConfig]) -> Result<Vec<Option<Arc<Assets>>>, String> {
    configs
        .iter()
        .map(|config| {
            let Some(assets) = &config.assets else {
                return Ok(None);
            };
            let assets = Assets::open(assets.clone())
                .map_err(|e| format!("{}: key 'assets': {e}", config.path.display()))?;
            for warning in &assets.warnings {
                tracing::warn!("{}: {warning}", assets.config().directory.display());
            }
            Ok(Some(Arc::new(assets)))
        })
        .collect()
}

/// Starts a pool per worker (none for an assets-only worker), then connects the workers
/// that use each other's classes.
fn start_pools(
    configs: &[WorkerConfig],
    assets: &[Option<Arc<Assets>>],
    args: &ConfigArgs,
    data_dir: &Path,
    threads: usize,
) -> Result<Vec<Option<Arc<WorkerPool>>>, String> {
    let (objects, links) = object_configs(configs, args, data_dir)?;
    let mut pools: Vec<Option<Arc<WorkerPool>>> = Vec::with_capacity(configs.len());
    // One registry: a socket accepted by one worker's class reaches its client through the
    // first worker's front door.
    let sockets = Arc::new(dorun_runtime::sockets::SocketRegistry::default());
    for ((config, objects), assets) in configs.iter().zip(objects).zip(assets) {
        let Some(spec) = worker_spec(config, args, objects, assets.clone()) else {
            pools.push(None);
            continue;
        };
        match WorkerPool::start(spec, threads, sockets.clone()) {
            Ok(pool) => pools.push(Some(Arc::new(pool))),
            Err(error) => {
                for pool in pools.iter().flatten() {
                    pool.close();
                }
                return Err(if configs.len() > 1 {
                    format!("worker '{}': {error}", config.name)
                } else {
                    error.to_string()
                });
            }
        }
    }
    for (foreign, owner) in links {
        if let Some(pool) = &pools[owner] {
            let _ = foreign.mailboxes.set(pool.mailboxes());
        }
    }
    Ok(pools)
}

/// The runtime's view of a worker; `None` for an assets-only worker (no script).
fn worker_spec(
    config: &WorkerConfig,
    args: &ConfigArgs,
    objects: ObjectConfig,
    assets: Option<Arc<Assets>>,
) -> Option<WorkerSpec> {
    let cpu_limit_ms = args.cpu_limit_ms.or(config.cpu_limit_ms).unwrap_or(30_000);
    Some(WorkerSpec {
        name: config.name.clone(),
        main: config.main.clone()?,
        rules: config.rules.clone(),
        vars: config.vars.clone(),
        compatibility_date: config.compatibility_date.clone(),
        compatibility_flags: config.compatibility_flags.clone(),
        cpu_limit: Duration::from_millis(cpu_limit_ms.max(1)),
        heap_limit_bytes: args.heap_limit_mb.max(16) * 1024 * 1024,
        objects: Arc::new(objects),
        object_idle_timeout: Duration::from_secs_f64(args.object_idle_timeout.max(0.01)),
        alarm_retry: dorun_runtime::alarms::AlarmRetry {
            start: Duration::from_millis(args.alarm_retry_start_ms.max(1)),
            max_retries: args.alarm_max_retries,
        },
        block_concurrency_timeout: Duration::from_millis(args.block_concurrency_timeout_ms.max(1)),
        assets,
    })
}

fn check(args: ConfigArgs) -> Result<(), String> {
    let configs = load_configs(&args)?;
    // Check the config against a scratch copy of the data directory's migration record, so
    // `check` never changes the data directory.
    let scratch = std::env::temp_dir().join(format!("dorun-check-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    let record = data_dir(&configs[0], &args).join("dorun-migrations.json");
    if record.exists() {
        let _ = std::fs::copy(&record, scratch.join("dorun-migrations.json"));
    }
    let assets = open_assets(&configs)?;
    let pools = start_pools(&configs, &assets, &args, &scratch, 1);
    let _ = std::fs::remove_dir_all(&scratch);
    for pool in pools?.into_iter().flatten() {
        pool.join(Duration::from_secs(5));
    }
    for config in &configs {
        println!(
            "ok: {} ({}) loads with {} warning(s)",
            config.name,
            config.path.display(),
            config.warnings.len()
        );
    }
    Ok(())
}

fn serve(args: ServeArgs) -> Result<(), String> {
    let configs = load_configs(&args.config)?;
    let data_dir = data_dir(&configs[0], &args.config);
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", data_dir.display()))?;
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    let assets = open_assets(&configs)?;
    let pools = start_pools(&configs, &assets, &args.config, &data_dir, threads)?;
    // The first worker serves HTTP; the others are reached through their classes.
    let pool = pools[0].clone();
    let config = &configs[0];
    let sockets = pool.as_ref().map(|pool| pool.sockets().clone());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dorun-front")
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let address = SocketAddr::new(args.ip, args.port);
    let drain_timeout = Duration::from_secs(args.drain_timeout);
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| format!("cannot listen on {address}: {e}"))?;
        let bound = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        let others: Vec<&str> = configs[1..].iter().map(|c| c.name.as_str()).collect();
        tracing::info!(
            worker = %config.name,
            also = %others.join(","),
            threads,
            data_dir = %data_dir.display(),
            "listening on http://{bound}"
        );
        // A machine-readable line for scripts and tests.
        println!("dorun: listening on http://{bound}");
        let exit_after = args.exit_after.map(Duration::from_secs);
        let shutdown = async move {
            match exit_after {
                Some(limit) => tokio::select! {
                    () = shutdown_signal() => {}
                    () = tokio::time::sleep(limit) => tracing::info!("--exit-after {limit:?} reached"),
                },
                None => shutdown_signal().await,
            }
        };
        let options = ServerOptions {
            drain_timeout,
            assets: assets[0].clone(),
            name: config.name.clone(),
        };
        server::run(listener, pool.clone(), shutdown, options).await;
        // Open WebSockets get a Close frame (1001) instead of a dropped connection.
        let Some(sockets) = sockets else {
            return Ok(());
        };
        let open = sockets.close_all(1001, "dorun is shutting down");
        if open > 0 {
            tracing::info!(sockets = open, "closing open WebSockets");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while !sockets.is_empty() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok::<(), String>(())
    })?;
    for pool in pools.iter().flatten() {
        pool.close();
    }
    for pool in pools.iter().flatten() {
        if !pool.join(Duration::from_secs(5)) {
            tracing::warn!("some isolate work (waitUntil, timers) was still running at exit");
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}
