//! The `dorun` command line.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use dorun_runtime::alarms::AlarmRetry;
use dorun_storage::replica::baseline;
use dorun_storage::Durability;

use crate::client_ip::TrustedProxies;
use crate::config::{self, UnsupportedBindings};
use crate::connections::ConnectionLimits;
use crate::ephemeral::EphemeralDir;
use crate::server::{self, ServerOptions};
use crate::workers::{self, WorkerOptions, Workers};

/// Run Cloudflare Workers and Durable Objects from their wrangler config.
#[derive(Debug, Parser)]
#[command(name = "dorun", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr. Filter with RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Leave out the one line per request (console output and errors stay).
    #[arg(long, global = true)]
    pub no_request_log: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line per event.
    Text,
    /// One JSON object per line.
    Json,
    /// Several lines per event with its fields, for reading in a terminal.
    Pretty,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve a Worker over HTTP.
    Serve(Box<ServeArgs>),
    /// Load the config and every module, report all problems, and exit.
    Check(ConfigArgs),
    /// Copy objects' storage (SQLite online backup; safe while the server runs).
    Export(crate::backup::ExportArgs),
    /// Restore objects from an export (into a stopped server's data directory, or through
    /// a running server's admin listener with --admin).
    Import(crate::backup::ImportArgs),
    /// Rebuild Durable Objects' files from the store `serve --replicate-to` wrote.
    Restore(crate::restore::RestoreArgs),
    /// Look inside a running server through its admin listener: list, kv, sql, alarms.
    Inspect(crate::inspect::InspectArgs),
    /// D1 databases: execute SQL, list and apply migrations, export (as `wrangler d1 ...
    /// --local`).
    D1(crate::d1::D1Args),
    /// Exit 0 if the admin listener's /healthz answers 200 (a container HEALTHCHECK that
    /// needs no curl in the image).
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The admin listener [default: http://127.0.0.1:9000, or $DORUN_ADMIN_URL].
    #[arg(
        long,
        value_name = "URL",
        env = "DORUN_ADMIN_URL",
        default_value = "http://127.0.0.1:9000"
    )]
    pub admin: String,
    /// Ask /readyz (ready for traffic) instead of /healthz (alive).
    #[arg(long)]
    pub ready: bool,
}

fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<()> {
    let admin = crate::admin_client::AdminTarget::new(&args.admin, None);
    let path = if args.ready { "/readyz" } else { "/healthz" };
    admin.call("GET", path, Default::default())?;
    println!("ok: {}{path}", admin.base);
    Ok(())
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
    /// Object connections kept open for idle objects, all threads together (~70 KiB each);
    /// beyond it the least recently used idle ones are closed, reopened on next use.
    #[arg(long, value_name = "N", default_value_t = dorun_runtime::storage::IDLE_CONNECTIONS)]
    pub idle_connections: usize,
    /// When a commit counts as durable: full (fsync every commit; RPO 0; the default), normal
    /// (survives a process crash; an OS crash or power loss can lose recent commits), off (no
    /// fsync). With --replicate-to: replicated (the commit is in the store; the default) or
    /// async (fsync'd locally; the store follows).
    #[arg(long, value_enum)]
    pub durability: Option<DurabilityArg>,
    /// Delay before the first retry of a failed alarm() (doubles each retry, as on Cloudflare).
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub alarm_retry_start_ms: u64,
    /// Retries of a failing alarm() before it is given up.
    #[arg(long, value_name = "N", default_value_t = 6)]
    pub alarm_max_retries: u32,
    /// A field of `request.cf` (repeatable), e.g. `--cf country=DE --cf asn=3320`; the value
    /// is JSON if it parses as JSON, else a string.
    #[arg(long = "cf", value_name = "KEY=VALUE", value_parser = config::parse_var)]
    pub cf: Vec<(String, String)>,
    /// Answer a Worker's uncaught exception with a plain 500 even for browsers (production);
    /// by default an HTML request gets a page with the error and its stack.
    #[arg(long)]
    pub no_error_page: bool,
    /// Cache API: keep a response without Cache-Control max-age/s-maxage or Expires for
    /// Cloudflare's default edge TTL of its status (200: 2 h, 404: 3 min, ...). By default
    /// such a response is not stored (unless Last-Modified gives it a lifetime), as in
    /// `wrangler dev`.
    #[arg(long)]
    pub cache_edge_ttl: bool,
    /// How long blockConcurrencyWhile() may hold an object before it is reset (tests).
    #[arg(long, value_name = "MS", default_value_t = 30_000, hide = true)]
    pub block_concurrency_timeout_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    Full,
    Normal,
    Off,
    Replicated,
    Async,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Replicate every Durable Object commit to this store: s3://bucket/prefix (endpoint
    /// and credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_REGION; AWS_ALLOW_HTTP=true for a plain-HTTP endpoint) or file:///dir. See
    /// `dorun restore`.
    #[arg(long, value_name = "URL")]
    pub replicate_to: Option<String>,
    /// This node's name in the store's generation records (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node_id: Option<String>,
    /// With --replicate-to: how long an object's files in the store that a newer whole copy
    /// of it supersedes are kept (a restore --at a time within it still works).
    #[arg(long, value_name = "HOURS", default_value_t = 168)]
    pub replica_retention_hours: u64,
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
    /// A reverse proxy (address or CIDR range, repeatable) whose `CF-Connecting-IP` or
    /// `X-Forwarded-For` names the client; from any other peer the client is the peer.
    #[arg(long = "trust-proxy", value_name = "CIDR", value_parser = crate::client_ip::parse_cidr)]
    pub trust_proxy: Vec<ipnet::IpNet>,
    /// Reload the Worker when its files or config change (storage is kept).
    #[arg(long)]
    pub watch: bool,
    /// Expose each isolate's V8 inspector for Chrome DevTools (chrome://inspect) on ADDR;
    /// the CPU limit is off then.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9229")]
    pub inspect: Option<SocketAddr>,
    /// Keep all state (Durable Objects, alarms, cache) in a fresh temporary directory that
    /// is removed on exit (tests, demos); replaces --data-dir.
    #[arg(long, conflicts_with = "data_dir")]
    pub ephemeral: bool,
    /// Serve the admin listener (JSON API, /metrics, /healthz, web page) on this port
    /// (0 picks a free one); off unless given.
    #[arg(long, value_name = "PORT")]
    pub admin_port: Option<u16>,
    /// Address of the admin listener; anything but loopback requires --admin-token.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub admin_ip: IpAddr,
    /// Bearer token the admin listener requires (Authorization: Bearer <token>).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "DORUN_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// A host name (besides its IP addresses and localhost) the admin listener answers to,
    /// e.g. the name a reverse proxy or a container network gives it; `*` for any. Requests
    /// naming another host are refused (DNS rebinding).
    #[arg(long, value_name = "NAME")]
    pub admin_allow_host: Vec<String>,
    /// Resident memory of the whole process above which new requests get 503 and large
    /// ArrayBuffer allocations fail, until it is back under 90 % [default: no limit].
    #[arg(long, value_name = "MB")]
    pub memory_limit_mb: Option<u64>,
    /// Most client connections held at once [default: a sixteenth of the descriptor
    /// limit, at least 512]. At the
    /// limit the longest-idle connection is closed to admit a new one.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Seconds a new connection may take to send its first request's headers.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Seconds an idle keep-alive connection is kept between requests.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    pub keep_alive_timeout: f64,
    /// Stop by itself after this many seconds (for tests and scripted runs).
    #[arg(long, value_name = "SECONDS", hide = true)]
    pub exit_after: Option<u64>,
    /// Do not fire cron triggers on schedule (they still run through /__scheduled).
    #[arg(long)]
    pub no_crons: bool,
    /// Do not answer the dev endpoints /__scheduled and /cdn-cgi/handler/scheduled, which
    /// run scheduled() on demand as `wrangler dev --test-scheduled` does (production).
    #[arg(long)]
    pub no_dev_endpoints: bool,
}

/// Sets up tracing on stderr.
pub fn init_logging(cli: &Cli) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if cli.no_request_log {
        filter = filter.add_directive("dorun::request=off".parse().expect("a valid directive"));
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Text => builder.with_target(true).init(),
        LogFormat::Json => builder.json().init(),
        LogFormat::Pretty => builder.pretty().init(),
    }
}

pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Check(args) => check(args),
        Command::Export(args) => crate::backup::export(args),
        Command::Import(args) => crate::backup::import(args),
        Command::Restore(args) => crate::restore::run(args),
        Command::Inspect(args) => crate::inspect::run(args),
        Command::Healthcheck(args) => healthcheck(args),
        Command::D1(args) => crate::d1::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", with_causes(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error with the causes its own message does not already say ("restoring from URL:
/// <why>"); many messages name their source themselves, and `{:#}` would repeat it.
fn with_causes(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

impl ConfigArgs {
    /// The settings of the workers, as the library takes them.
    pub fn worker_options(&self) -> WorkerOptions {
        WorkerOptions {
            env: self.env.clone(),
            vars: self.vars.clone(),
            unsupported_bindings: if self.allow_unsupported_bindings {
                UnsupportedBindings::Warn
            } else {
                UnsupportedBindings::Error
            },
            script: self.script.clone(),
            cpu_limit_ms: self.cpu_limit_ms,
            heap_limit_mb: self.heap_limit_mb,
            data_dir: self.data_dir.clone(),
            object_idle_timeout: Duration::from_secs_f64(self.object_idle_timeout.max(0.01)),
            durability: match self.durability {
                None | Some(DurabilityArg::Full) => Durability::Full,
                Some(DurabilityArg::Normal) => Durability::Normal,
                Some(DurabilityArg::Off) => Durability::Off,
                // Replicated: the store is the durable copy, the local file needs no fsync
                // per commit. Async: fsync'd locally as `full`, the store follows.
                Some(DurabilityArg::Replicated) => Durability::Normal,
                Some(DurabilityArg::Async) => Durability::Full,
            },
            replication: None,
            alarm_retry: AlarmRetry {
                start: Duration::from_millis(self.alarm_retry_start_ms.max(1)),
                max_retries: self.alarm_max_retries,
            },
            block_concurrency_timeout: Duration::from_millis(
                self.block_concurrency_timeout_ms.max(1),
            ),
            cf: self
                .cf
                .iter()
                .map(|(key, value)| {
                    let value = serde_json::from_str(value)
                        .unwrap_or_else(|_| serde_json::Value::String(value.clone()));
                    (key.clone(), value)
                })
                .collect(),
            error_pages: !self.no_error_page,
            cache_ttl: if self.cache_edge_ttl {
                dorun_runtime::cache::TtlPolicy::EdgeDefaults
            } else {
                dorun_runtime::cache::TtlPolicy::Explicit
            },
            inspect: false,
        }
    }
}

fn check(args: ConfigArgs) -> anyhow::Result<()> {
    let options = args.worker_options();
    let configs = workers::load_configs(&args.config, &options)?;
    // Check the config against a scratch copy of the data directory's migration record, so
    // `check` never changes the data directory.
    let scratch = std::env::temp_dir().join(format!("dorun-check-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| anyhow!("{}: {e}", scratch.display()))?;
    let record = workers::data_dir(&configs[0], &options).join("dorun-migrations.json");
    if record.exists() {
        let _ = std::fs::copy(&record, scratch.join("dorun-migrations.json"));
    }
    let started = Workers::start(configs, &options, &scratch, 1);
    let _ = std::fs::remove_dir_all(&scratch);
    let workers = started?;
    workers.join(Duration::from_secs(5));
    for config in &workers.configs {
        println!(
            "ok: {} ({}) loads with {} warning(s)",
            config.name,
            config.path.display(),
            config.warnings.len()
        );
    }
    Ok(())
}

/// Sizes the isolate threads' SQLite connection caches from the open-file limit (which
/// `main` raised to the hard limit), so a large working set stays open. What it keeps in
/// reserve is the network's: the front door's connections and WebSockets.
fn size_connection_cache(threads: usize, idle: usize) {
    let limit = open_file_limit();
    let per_thread = dorun_runtime::storage::size_connection_cache(limit, threads, idle);
    tracing::info!(
        open_file_limit = limit,
        "up to {} open objects ({per_thread} per isolate thread), {} of them idle",
        per_thread * threads,
        dorun_runtime::storage::idle_connection_capacity() * threads
    );
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if args.watch {
        return crate::watch::run(&crate::watch::WatchTarget {
            configs: args.config.config.clone(),
            env: args.config.env.clone(),
            script: args.config.script.clone(),
            ephemeral: args.ephemeral,
            admin: args.admin_port.is_some(),
        });
    }
    let ephemeral = args.ephemeral.then(EphemeralDir::create).transpose()?;
    let mut options = args.config.worker_options();
    if let Some(dir) = &ephemeral {
        tracing::info!(
            "ephemeral state in {} (removed on exit)",
            dir.path().display()
        );
        options.data_dir = Some(dir.path().to_path_buf());
    }
    options.inspect = args.inspect.is_some();
    let replication = start_replication(&args, &mut options)?;
    let configs = workers::load_configs(&args.config.config, &options)?;
    let data_dir = workers::data_dir(&configs[0], &options);
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| anyhow!("cannot create data directory {}: {e}", data_dir.display()))?;
    check_writable(&data_dir)?;
    ship_baseline(&args, replication.as_deref(), &data_dir)?;
    let threads = args.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    if threads == 0 {
        bail!("--threads must be at least 1");
    }
    if let Some(limit) = args.memory_limit_mb {
        dorun_runtime::memory::watch_process_memory(limit.max(16) << 20);
    }
    let limits = connection_limits(&args)?;
    size_connection_cache(threads * configs.len(), args.config.idle_connections);
    let workers = Workers::start(configs, &options, &data_dir, threads)?;
    // The first worker serves HTTP; the others are reached through their classes.
    let pool = workers.pools[0].clone();
    let config = &workers.configs[0];
    let sockets = pool.as_ref().map(|pool| pool.sockets().clone());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("dorun-front")
        .build()
        .map_err(|e| anyhow!("cannot start the async runtime: {e}"))?;
    let address = SocketAddr::new(args.ip, args.port);
    let drain_timeout = Duration::from_secs(args.drain_timeout);
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|e| anyhow!("cannot listen on {address}: {e}"))?;
        let bound = listener
            .local_addr()
            .map_err(|e| anyhow!("cannot read the bound address: {e}"))?;
        let others: Vec<&str> = workers.configs[1..]
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        tracing::info!(
            worker = %config.name,
            also = %others.join(","),
            threads,
            data_dir = %data_dir.display(),
            "listening on http://{bound}"
        );
        // A machine-readable line for scripts and tests.
        println!("dorun: listening on http://{bound}");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let triggers = crate::crons::triggers(
            workers
                .configs
                .iter()
                .zip(&workers.pools)
                .map(|(config, pool)| (config.name.as_str(), config.crons.as_slice(), pool)),
        );
        let pairs: Vec<_> = workers.configs.iter().zip(&workers.pools).collect();
        let consumers = crate::queues::consumers(&pairs).map_err(|e| anyhow!(e))?;
        let engines = crate::workflows::engines(&pairs).map_err(|e| anyhow!(e))?;
        for engine in &engines {
            tokio::spawn(crate::workflows::run(engine.clone()));
        }
        let operated = crate::admin::Arrivals {
            triggers: triggers.iter().map(|(_, t)| t.clone()).collect(),
            consumers: consumers.clone(),
            engines: engines.clone(),
        };
        let admin = start_admin(
            &args,
            &workers,
            &data_dir,
            stopped,
            operated,
            replication.clone(),
        )
        .await?;
        if let Some(address) = args.inspect {
            crate::devtools::start(address).await?;
        }
        let exit_after = args.exit_after.map(Duration::from_secs);
        let shutdown = async move {
            match exit_after {
                Some(limit) => tokio::select! {
                    () = shutdown_signal() => {}
                    () = tokio::time::sleep(limit) => tracing::info!("--exit-after {limit:?} reached"),
                },
                None => shutdown_signal().await,
            }
            if let Some(admin) = admin {
                admin.ready.store(false, std::sync::atomic::Ordering::SeqCst);
            }
            let _ = stop.send(true);
        };
        let server_options = ServerOptions {
            drain_timeout,
            assets: workers.assets[0].clone(),
            name: config.name.clone(),
            trusted_proxies: TrustedProxies::new(args.trust_proxy.clone()),
            limits,
            dev_endpoints: !args.no_dev_endpoints,
        };
        if !triggers.is_empty() {
            if args.no_crons {
                tracing::info!(
                    triggers = triggers.len(),
                    "--no-crons: cron triggers fire only through /__scheduled"
                );
            } else {
                for (_, trigger) in &triggers {
                    tracing::info!(
                        worker = %trigger.worker,
                        cron = %trigger.pattern,
                        next = %trigger.next().map(|t| t.to_rfc3339()).unwrap_or_default(),
                        "cron trigger"
                    );
                }
                tokio::spawn(crate::crons::run(triggers));
            }
        }
        for consumer in &consumers {
            tracing::info!(
                worker = %consumer.worker,
                queue = %consumer.settings.queue,
                "queue consumer"
            );
            tokio::spawn(crate::queues::run(consumer.clone()));
        }
        server::run(listener, pool.clone(), shutdown, server_options).await;
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
        Ok::<(), anyhow::Error>(())
    })?;
    if !workers.join(Duration::from_secs(5)) {
        tracing::warn!("some isolate work (waitUntil, timers) was still running at exit");
    }
    if let Some(replication) = replication {
        // Every commit made so far goes to the store before the process ends.
        if !replication.replicator.wait_settled(Duration::from_secs(30)) {
            tracing::warn!("replication: commits not yet in the store at exit (after 30 s)");
        } else if replication.replicator.stopped().is_none() {
            // Everything is in the store: the next start into it ships nothing up front.
            let store = store_identity(args.replicate_to.as_deref().unwrap_or_default());
            let generation = replication.replicator.epoch();
            if let Err(error) = baseline::write_marker(&data_dir, &store, generation, true) {
                tracing::warn!("replication: cannot mark the data directory clean: {error}");
            }
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// `--replicate-to`: checks the store, takes this start's generation and starts the
/// replicator; settles `--durability` (replicated by default, or async).
fn start_replication(
    args: &ServeArgs,
    options: &mut WorkerOptions,
) -> anyhow::Result<Option<std::sync::Arc<dorun_storage::replica::Replication>>> {
    use dorun_storage::replica::{replicator, store, Replication};
    let durability = args.config.durability;
    let Some(url) = &args.replicate_to else {
        if let Some(mode @ (DurabilityArg::Replicated | DurabilityArg::Async)) = durability {
            bail!("--durability {mode:?} needs --replicate-to (where commits go)");
        }
        return Ok(None);
    };
    let wait = match durability {
        None | Some(DurabilityArg::Replicated) => {
            options.durability = Durability::Normal;
            true
        }
        Some(DurabilityArg::Async) => false,
        Some(other) => bail!(
            "--durability {other:?} does not go with --replicate-to: use replicated (commits \
             wait for the store) or async (commits wait for the local disk; the store follows)"
        ),
    };
    let node = args.node_id.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_string())
            .ok()
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "dorun".into())
    });
    if node.is_empty() || node.contains(['/', ' ']) {
        bail!("--node-id {node:?}: a name without '/' or spaces");
    }
    let store = store::open(url)?;
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let generation = setup
        .block_on(async {
            store::check_conditional_writes(&store).await?;
            store::next_generation(&store, &node).await
        })
        .map_err(|e| {
            anyhow!(
                "--replicate-to {url}: the store cannot be used (for s3://, check \
                 AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and \
                 that the bucket exists): {e}"
            )
        })?;
    let session = store::session_name(&node, generation);
    let mut replicator_options = replicator::Options::new(session.clone(), generation);
    let every = std::env::var("DORUN_TEST_GENERATION_CHECK_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map_or(Duration::from_secs(30), Duration::from_millis);
    replicator_options.generation_check = Some((generation, every));
    replicator_options.retention = Some(Duration::from_secs(args.replica_retention_hours * 3600));
    if let Some(ms) = std::env::var("DORUN_TEST_REPLICA_L1_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
    {
        replicator_options.l1_every = Duration::from_millis(ms);
    }
    let replicator = replicator::Replicator::start(store, replicator_options)?;
    tracing::info!(
        "replicating Durable Object commits to {url} (session {session}, durability {})",
        if wait { "replicated" } else { "async" }
    );
    let replication = std::sync::Arc::new(Replication {
        replicator,
        wait,
        async_bound: std::env::var("DORUN_TEST_REPLICA_ASYNC_BOUND_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(Duration::from_secs(10), Duration::from_millis),
        store: store_identity(url),
    });
    options.replication = Some(replication.clone());
    dorun_storage::replica::files::enable(replication.clone());
    Ok(Some(replication))
}

/// The store a data directory's marker names (the `--replicate-to` URL as given, without
/// a trailing slash).
fn store_identity(url: &str) -> String {
    url.trim_end_matches('/').to_string()
}

/// Before serving: ships whole what the data directory holds and the store may not
/// (`replica::baseline`), then marks the data directory as replicated into this store by
/// this generation. Without replication the mark goes: what this run writes is not in any
/// store.
fn ship_baseline(
    args: &ServeArgs,
    replication: Option<&dorun_storage::replica::Replication>,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let Some(replication) = replication else {
        return baseline::forget_marker(data_dir)
            .map_err(|e| anyhow!("{}: {e}", data_dir.join(baseline::MARKER).display()));
    };
    let store = store_identity(args.replicate_to.as_deref().unwrap_or_default());
    let generation = replication.replicator.epoch();
    let scope = baseline::scope(data_dir, &store, generation);
    let started = std::time::Instant::now();
    let shipped = baseline::ship(
        data_dir,
        &replication.replicator,
        scope,
        Duration::from_secs(600),
    )
    .map_err(|why| {
        anyhow!("--replicate-to {store}: shipping the data directory's objects: {why}")
    })?;
    if shipped > 0 {
        tracing::info!(
            "replication: shipped {shipped} objects whole to the store before serving ({scope:?}, {:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    baseline::write_marker(data_dir, &store, generation, false)
        .map_err(|e| anyhow!("{}: {e}", data_dir.join(baseline::MARKER).display()))
}

/// Binds and spawns the admin listener when `--admin-port` is given.
async fn start_admin(
    args: &ServeArgs,
    workers: &Workers,
    data_dir: &std::path::Path,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    arrivals: crate::admin::Arrivals,
    replication: Option<std::sync::Arc<dorun_storage::replica::Replication>>,
) -> anyhow::Result<Option<std::sync::Arc<crate::admin::Admin>>> {
    let Some(port) = args.admin_port else {
        return Ok(None);
    };
    let token = args.admin_token.clone().filter(|t| !t.is_empty());
    if !args.admin_ip.is_loopback() && token.is_none() {
        bail!(
            "--admin-ip {} is reachable from other machines: set --admin-token (or DORUN_ADMIN_TOKEN)",
            args.admin_ip
        );
    }
    let address = SocketAddr::new(args.admin_ip, port);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow!("cannot listen on {address} (--admin-port): {e}"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| anyhow!("cannot read the admin address: {e}"))?;
    crate::admin::metrics::install();
    let pools: Vec<_> = workers.pools.iter().flatten().cloned().collect();
    let sockets = pools
        .first()
        .map(|p| p.sockets().clone())
        .unwrap_or_default();
    let admin = std::sync::Arc::new(crate::admin::Admin {
        pools,
        data_dir: data_dir.to_path_buf(),
        token,
        sockets,
        ready: std::sync::atomic::AtomicBool::new(true),
        trust: crate::admin::guard::Trust::new(&args.admin_allow_host),
        triggers: arrivals.triggers,
        consumers: arrivals.consumers,
        engines: arrivals.engines,
        replication,
    });
    // What an earlier run's reset left to delete.
    let trash = data_dir.join(".trash");
    if trash.exists() {
        crate::admin::api::empty_trash_later(vec![trash]);
    }
    tracing::info!("admin listener on http://{bound}");
    println!("dorun: admin on http://{bound}");
    let stop = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    tokio::spawn(crate::admin::run(listener, admin.clone(), stop));
    Ok(Some(admin))
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
        () = crate::parent::parent_gone() => {}
    }
}

/// The process's open-file limit (soft; `main` raised it to the hard limit).
fn open_file_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(1024)
}

/// The front door's budget: `--max-connections`, or half of what the connection cache
/// leaves of the descriptor limit (see `ConnectionLimits::from_descriptor_limit`).
fn connection_limits(args: &ServeArgs) -> anyhow::Result<ConnectionLimits> {
    let seconds = |value: f64, flag: &str| {
        Duration::try_from_secs_f64(value)
            .map_err(|_| anyhow!("--{flag} must be a number of seconds, not {value}"))
    };
    let mut limits = ConnectionLimits::from_descriptor_limit(
        open_file_limit(),
        seconds(args.header_timeout, "header-timeout")?,
        seconds(args.keep_alive_timeout, "keep-alive-timeout")?,
    );
    if let Some(max) = args.max_connections {
        limits.max_connections = max.max(1);
    }
    Ok(limits)
}

/// Fails early, naming the directory and this process's user, when the data directory cannot
/// be written: typically a root-owned host directory mounted on a container's /data.
fn check_writable(data_dir: &Path) -> anyhow::Result<()> {
    let probe = data_dir.join(format!(".dorun-write-check-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // /proc/self belongs to the process's effective user and group (Linux).
            use std::os::unix::fs::MetadataExt;
            let (uid, gid) = std::fs::metadata("/proc/self")
                .map(|m| (m.uid().to_string(), m.gid().to_string()))
                .unwrap_or_else(|_| ("?".into(), "?".into()));
            bail!(
                "data directory {dir} is not writable by dorun's user (uid {uid}, gid {gid}): {e}. \
                 Give it to that user (on the host: chown -R {uid}:{gid} <the directory mounted \
                 there>), or with podman mount it with :U (-v <dir>:{dir}:U)",
                dir = data_dir.display()
            )
        }
        Err(e) => bail!("cannot write in data directory {}: {e}", data_dir.display()),
    }
}
