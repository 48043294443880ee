//! Wrangler configuration, read the way wrangler reads it.
//!
//! A config file (`wrangler.json`, `wrangler.jsonc` or `wrangler.toml`) is parsed into a
//! generic JSON value first, so that every key can be checked against the table of keys
//! dorun knows: supported keys are read, deploy-only keys are ignored, binding kinds dorun
//! cannot serve are errors (or warnings with `--allow-unsupported-bindings`), and anything
//! else is a warning naming the key. `[env.<name>]` follows wrangler's inheritance rules:
//! top-level keys such as `main` are inherited, bindings and `vars` are not.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

mod assets;
mod exports;
mod local_bindings;
mod queues;
pub use queues::{QueueConsumer, QueueProducer};

pub use exports::{ClassExport, ExportState};

/// Config file names in the order wrangler looks for them.
pub const CONFIG_FILE_NAMES: [&str; 3] = ["wrangler.json", "wrangler.jsonc", "wrangler.toml"];

/// Keys that an `[env.<name>]` section inherits from the top level when it does not set them.
const INHERITABLE_KEYS: &[&str] = &[
    "name",
    "main",
    "compatibility_date",
    "compatibility_flags",
    "rules",
    "limits",
    "assets",
    "build",
];

/// Keys that are used only when deploying to Cloudflare; dorun accepts and ignores them.
const DEPLOY_ONLY_KEYS: &[&str] = &[
    "$schema",
    "account_id",
    "workers_dev",
    "preview_urls",
    "routes",
    "route",
    "observability",
    "logpush",
    "upload_source_maps",
    "keep_vars",
    "send_metrics",
    "minify",
    "no_bundle",
    "find_additional_modules",
    "base_dir",
    "preserve_file_names",
    "tsconfig",
    "placement",
    "usage_model",
    "node_compat",
    "define",
    "alias",
    "dev",
    "legacy_env",
    "site",
    "tail_consumers",
    "jsx_factory",
    "jsx_fragment",
    "first_party_worker",
    "logfwdr",
    "compliance_region",
];

/// Binding kinds Cloudflare offers that dorun does not serve.
/// (`wasm_modules`, `text_blobs` and `data_blobs` belong to the service-worker format, which
/// wrangler refuses for an ES module Worker too.)
const UNSUPPORTED_BINDING_KEYS: &[&str] = &[
    "wasm_modules",
    "text_blobs",
    "data_blobs",
    "unsafe_hello_world",
];

/// How `load` treats binding kinds dorun does not support.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnsupportedBindings {
    /// Refuse to start (the default): running code that expects a binding would fail later.
    #[default]
    Error,
    /// Start anyway and log a warning per key; the binding is absent from `env`.
    Warn,
}

/// What the command line adds to a config file.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// `--env <name>`: the `[env.<name>]` section to apply.
    pub env: Option<String>,
    /// `--var KEY=VALUE`, applied last.
    pub vars: Vec<(String, String)>,
    pub unsupported_bindings: UnsupportedBindings,
    /// The entry module given on the command line (absolute); replaces `main`.
    pub script: Option<PathBuf>,
}

pub use dorun_runtime::spec::{ModuleRule, ModuleRuleKind};

/// One `services` entry: `env.<binding>` reaches worker `service`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceBinding {
    pub binding: String,
    pub service: String,
    /// A named `WorkerEntrypoint` export (else the default export).
    pub entrypoint: Option<String>,
    /// `props` as JSON text: the callee's `ctx.props`.
    pub props: Option<String>,
}

/// One `durable_objects.bindings` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DurableObjectBinding {
    /// The name the Worker sees in `env`.
    pub name: String,
    pub class_name: String,
    /// Another worker's name when the class lives there.
    pub script_name: Option<String>,
}

/// One `[[migrations]]` entry, validated but applied by the Durable Objects layer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Migration {
    pub tag: String,
    pub new_classes: Vec<String>,
    pub new_sqlite_classes: Vec<String>,
    pub renamed_classes: Vec<(String, String)>,
    pub deleted_classes: Vec<String>,
    /// (from, from_script, to)
    pub transferred_classes: Vec<(String, String, String)>,
}

/// A fully resolved Worker configuration.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// The config file this came from.
    pub path: PathBuf,
    /// The worker's name (`<name>-<env>` under `--env` unless the env names it).
    pub name: String,
    /// Absolute path of the entry module; `None` for an assets-only Worker.
    pub main: Option<PathBuf>,
    pub compatibility_date: Option<String>,
    pub compatibility_flags: Vec<String>,
    /// `vars`, then secrets, then `--var`: later sources win.
    pub vars: Map<String, Value>,
    /// Names of the entries in `vars` that came from `.dev.vars` / `.env`.
    pub secret_names: Vec<String>,
    /// User rules first, then wrangler's default rules that were not replaced.
    pub rules: Vec<ModuleRule>,
    pub durable_objects: Vec<DurableObjectBinding>,
    /// `d1_databases`: D1 bindings.
    pub d1_databases: Vec<D1DatabaseConfig>,
    /// `r2_buckets`: R2 bindings.
    pub r2_buckets: Vec<dorun_runtime::r2_binding::R2Binding>,
    /// `kv_namespaces`: Workers KV bindings.
    pub kv_namespaces: Vec<dorun_runtime::kv_binding::KvBinding>,
    /// `version_metadata`, rate limits and the Cloudflare-only bindings, each as the JSON
    /// object the isolate builds it from (config/local_bindings.rs).
    pub local_bindings: Vec<Value>,
    /// `services`: service bindings.
    pub services: Vec<ServiceBinding>,
    /// `workflows`: `env.<binding>` drives instances of a workflow.
    pub workflows: Vec<dorun_runtime::workflow_binding::WorkflowBinding>,
    /// `queues.producers`: `env.<binding>` sends to a queue.
    pub queue_producers: Vec<QueueProducer>,
    /// `queues.consumers`: the queues whose messages this worker's `queue()` receives.
    pub queue_consumers: Vec<QueueConsumer>,
    /// `triggers.crons`: cron patterns that fire `scheduled()` (checked: each parses).
    pub crons: Vec<String>,
    pub migrations: Vec<Migration>,
    /// The top-level `exports` block (declared Durable Object classes).
    pub exports: Vec<ClassExport>,
    /// `limits.cpu_ms`, if set.
    pub cpu_limit_ms: Option<u64>,
    /// The `assets` section: static files served by the front door and `env.<binding>`.
    pub assets: Option<dorun_assets::AssetsConfig>,
    /// Problems that do not stop startup.
    pub warnings: Vec<String>,
}

/// One `d1_databases` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct D1DatabaseConfig {
    /// The name the Worker sees in `env`.
    pub binding: String,
    /// The local file's name: `database_name`, else `database_id`, else the binding.
    pub name: String,
    /// Where the migrations are (`migrations_dir`, default `migrations` beside the config).
    pub migrations_dir: PathBuf,
    /// The table that records applied migrations (default `d1_migrations`).
    pub migrations_table: String,
}

/// Everything that is wrong with a config file, each problem naming the file.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for problem in &self.problems {
            if !first {
                writeln!(f)?;
            }
            first = false;
            write!(f, "{}: {}", self.path.display(), problem)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Finds the config file wrangler would use: in `dir` or the nearest parent, trying
/// `wrangler.json`, `wrangler.jsonc`, `wrangler.toml` in that order.
pub fn find_config(dir: &Path) -> Option<PathBuf> {
    let mut current = Some(dir);
    while let Some(candidate_dir) = current {
        for name in CONFIG_FILE_NAMES {
            let candidate = candidate_dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
        current = candidate_dir.parent();
    }
    None
}

/// Reads and validates a config file.
pub fn load(path: &Path, options: &LoadOptions) -> Result<WorkerConfig, ConfigError> {
    let fail = |problem: String| ConfigError {
        path: path.to_path_buf(),
        problems: vec![problem],
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let root = parse_document(path, &text).map_err(fail)?;
    let Value::Object(root) = root else {
        return Err(fail("the top level must be a table / object".into()));
    };
    load_table(path, &root, options)
}

/// The config of a Worker started from its script alone (`dorun serve src/index.ts` with no
/// wrangler file around): that `main`, today's compatibility date, `.dev.vars` beside the
/// script. `options.script` must be set.
pub fn load_default(script: &Path, options: &LoadOptions) -> Result<WorkerConfig, ConfigError> {
    let mut root = Map::new();
    root.insert(
        "main".into(),
        Value::String(script.to_string_lossy().into_owned()),
    );
    root.insert("compatibility_date".into(), Value::String(today_utc()));
    load_table(script, &root, options)
}

fn load_table(
    path: &Path,
    root: &Map<String, Value>,
    options: &LoadOptions,
) -> Result<WorkerConfig, ConfigError> {
    let mut reader = Reader {
        problems: Vec::new(),
        warnings: Vec::new(),
        unsupported_bindings: options.unsupported_bindings,
    };
    let config = reader.resolve(path, root, options);
    if reader.problems.is_empty() {
        let mut config = config.expect("a config is produced when there are no problems");
        config.warnings = reader.warnings;
        Ok(config)
    } else {
        Err(ConfigError {
            path: path.to_path_buf(),
            problems: reader.problems,
        })
    }
}

/// Parses TOML, JSON or JSONC (comments and trailing commas) by file extension.
pub(crate) fn parse_document(path: &Path, text: &str) -> Result<Value, String> {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match extension {
        "toml" => toml::from_str::<Value>(text).map_err(|e| format!("invalid TOML: {e}")),
        "json" | "jsonc" => {
            let options = jsonc_parser::ParseOptions {
                allow_comments: true,
                allow_trailing_commas: true,
                allow_loose_object_property_names: false,
                ..Default::default()
            };
            match jsonc_parser::parse_to_serde_value(text, &options) {
                Ok(Some(value)) => Ok(value),
                Ok(None) => Err("the file is empty".into()),
                Err(e) => Err(format!("invalid JSON: {e}")),
            }
        }
        other => Err(format!(
            "unknown config format '.{other}': expected wrangler.toml, wrangler.json or wrangler.jsonc"
        )),
    }
}

struct Reader {
    problems: Vec<String>,
    warnings: Vec<String>,
    unsupported_bindings: UnsupportedBindings,
}

impl Reader {
    fn resolve(
        &mut self,
        path: &Path,
        root: &Map<String, Value>,
        options: &LoadOptions,
    ) -> Option<WorkerConfig> {
        let base_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        self.check_keys(root, "", true);

        // The effective table: top level, or the env section with inherited keys filled in.
        let mut effective: Map<String, Value> = root.clone();
        effective.remove("env");
        let mut name_suffix = None;
        if let Some(env_name) = &options.env {
            let env_table = root
                .get("env")
                .and_then(Value::as_object)
                .and_then(|envs| envs.get(env_name));
            match env_table {
                None => {
                    let known: Vec<&String> = root
                        .get("env")
                        .and_then(Value::as_object)
                        .map(|envs| envs.keys().collect())
                        .unwrap_or_default();
                    self.problems.push(format!(
                        "--env {env_name}: no [env.{env_name}] section (environments defined: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        }
                    ));
                    return None;
                }
                Some(Value::Object(env_table)) => {
                    self.check_keys(env_table, &format!("env.{env_name}."), false);
                    // Non-inheritable keys come from the env section only.
                    effective.retain(|key, _| {
                        INHERITABLE_KEYS.contains(&key.as_str())
                            || DEPLOY_ONLY_KEYS.contains(&key.as_str())
                            || key == "migrations"
                    });
                    for (key, value) in env_table {
                        effective.insert(key.clone(), value.clone());
                    }
                    if !env_table.contains_key("name") {
                        name_suffix = Some(env_name.clone());
                    }
                }
                Some(_) => {
                    self.problems
                        .push(format!("env.{env_name} must be a table / object"));
                    return None;
                }
            }
        }

        let name = match effective.get("name") {
            Some(Value::String(name)) if !name.is_empty() => name.clone(),
            Some(_) => {
                self.problems
                    .push("key 'name' must be a non-empty string".into());
                String::new()
            }
            None => "worker".to_string(),
        };
        let name = match name_suffix {
            Some(env) => format!("{name}-{env}"),
            None => name,
        };

        let main = match (options.script.as_ref(), effective.get("main")) {
            (Some(script), _) => {
                if !script.is_file() {
                    self.problems.push(format!(
                        "the script {} given on the command line does not exist",
                        script.display()
                    ));
                }
                Some(script.clone())
            }
            (None, Some(Value::String(main))) => {
                let main = base_dir.join(main);
                if !main.is_file() {
                    self.problems.push(format!(
                        "key 'main': entry module {} does not exist",
                        main.display()
                    ));
                }
                Some(main)
            }
            (None, Some(_)) => {
                self.problems.push("key 'main' must be a string".into());
                None
            }
            // wrangler 1's `[build.upload]`: `main` relative to `dir` (default "dist").
            (None, None) if upload_main(&effective).is_some() => {
                let (dir, main) = upload_main(&effective).expect("checked");
                let main = base_dir.join(dir).join(main);
                if !main.is_file() {
                    self.problems.push(format!(
                        "key 'build.upload.main': entry module {} does not exist (is it built by [build] command?)",
                        main.display()
                    ));
                }
                Some(main)
            }
            (None, None) if effective.contains_key("assets") => None,
            (None, None) => {
                self.problems.push(
                    "key 'main' is missing: dorun needs the Worker's entry module (set main, pass the script: dorun serve <config> --script src/index.js, or configure `assets` to serve only static files)"
                        .into(),
                );
                None
            }
        };

        let compatibility_date = match effective.get("compatibility_date") {
            None => {
                self.warnings.push(
                    "no compatibility_date set; behaviour follows the newest date dorun knows"
                        .into(),
                );
                None
            }
            Some(Value::String(date)) if is_iso_date(date) => Some(date.clone()),
            Some(other) => {
                self.problems.push(format!(
                    "key 'compatibility_date' must be a date like \"2025-10-01\", got {other}"
                ));
                None
            }
        };
        let compatibility_flags = self.string_list(&effective, "compatibility_flags");

        let mut vars = Map::new();
        match effective.get("vars") {
            None => {}
            Some(Value::Object(table)) => vars.extend(table.clone()),
            Some(_) => self
                .problems
                .push("key 'vars' must be a table / object".into()),
        }
        let secrets = self.read_secrets(&base_dir, options.env.as_deref());
        let secret_names = secrets.keys().cloned().collect();
        for (key, value) in secrets {
            vars.insert(key, Value::String(value));
        }
        for (key, value) in &options.vars {
            vars.insert(key.clone(), Value::String(value.clone()));
        }

        let assets = self.read_assets(&effective, &base_dir, main.is_some());
        let rules = self.read_rules(&effective);
        let durable_objects = self.read_durable_objects(&effective);
        let kv_namespaces = self.read_kv_namespaces(&effective, &durable_objects, &vars);
        let d1_databases = self.read_d1_databases(&effective, &base_dir);
        let r2_buckets = self.read_r2_buckets(&effective);
        let mut local_bindings = self.read_local_bindings(&effective);
        // A Secrets Store secret's local value: .dev.vars / .env, else the environment.
        for item in &mut local_bindings {
            if item["kind"] == "secret" {
                let name = item["secretName"].as_str().unwrap_or_default().to_string();
                let value = match vars.get(&name) {
                    Some(Value::String(value)) => Some(value.clone()),
                    _ => std::env::var(&name).ok(),
                };
                item["value"] = value.map_or(Value::Null, Value::String);
            }
        }
        let crons = self.read_crons(&effective);
        let services = self.read_services(&effective);
        let (queue_producers, queue_consumers) = self.read_queues(&effective);
        let workflows = self.read_workflows(&effective);
        for producer in &queue_producers {
            if durable_objects.iter().any(|o| o.name == producer.binding)
                || kv_namespaces
                    .iter()
                    .any(|kv| kv.binding == producer.binding)
                || d1_databases.iter().any(|d1| d1.binding == producer.binding)
                || r2_buckets.iter().any(|r2| r2.binding == producer.binding)
                || vars.contains_key(&producer.binding)
            {
                self.problems.push(format!(
                    "queues.producers: binding '{}' is bound twice",
                    producer.binding
                ));
            }
        }
        for r2 in &r2_buckets {
            if durable_objects.iter().any(|o| o.name == r2.binding)
                || kv_namespaces.iter().any(|kv| kv.binding == r2.binding)
                || d1_databases.iter().any(|d1| d1.binding == r2.binding)
                || vars.contains_key(&r2.binding)
            {
                self.problems.push(format!(
                    "r2_buckets: binding '{}' is bound twice",
                    r2.binding
                ));
            }
        }
        for d1 in &d1_databases {
            if durable_objects.iter().any(|o| o.name == d1.binding)
                || kv_namespaces.iter().any(|kv| kv.binding == d1.binding)
                || vars.contains_key(&d1.binding)
            {
                self.problems.push(format!(
                    "d1_databases: binding '{}' is bound twice",
                    d1.binding
                ));
            }
        }
        let migrations = self.read_migrations(root);
        let exports = self.read_exports(root);
        self.check_bindings_against_migrations(&durable_objects, &migrations, &exports);

        let cpu_limit_ms = match effective.get("limits") {
            None => None,
            Some(Value::Object(limits)) => {
                for key in limits.keys() {
                    if key != "cpu_ms" {
                        self.warnings.push(format!(
                            "key 'limits.{key}' is not supported and is ignored"
                        ));
                    }
                }
                match limits.get("cpu_ms") {
                    None => None,
                    Some(value) => match value.as_u64() {
                        Some(ms) if ms > 0 => Some(ms),
                        _ => {
                            self.problems
                                .push("key 'limits.cpu_ms' must be a positive integer".into());
                            None
                        }
                    },
                }
            }
            Some(_) => {
                self.problems
                    .push("key 'limits' must be a table / object".into());
                None
            }
        };

        Some(WorkerConfig {
            path: path.to_path_buf(),
            name,
            main,
            vars,
            secret_names,
            rules,
            durable_objects,
            kv_namespaces,
            d1_databases,
            r2_buckets,
            local_bindings,
            services,
            queue_producers,
            queue_consumers,
            workflows,
            crons,
            migrations,
            exports,
            cpu_limit_ms,
            assets: assets.map(|mut assets| {
                let navigation = ["assets_navigation_prefers_asset_serving"];
                let off = ["assets_navigation_has_no_effect"];
                assets.navigation_prefers_assets = if compatibility_flags
                    .iter()
                    .any(|f| navigation.contains(&f.as_str()))
                {
                    true
                } else if compatibility_flags
                    .iter()
                    .any(|f| off.contains(&f.as_str()))
                {
                    false
                } else {
                    compatibility_date
                        .as_deref()
                        .is_none_or(|date| date >= "2025-04-01")
                };
                assets
            }),
            compatibility_date,
            compatibility_flags,
            warnings: Vec::new(),
        })
    }

    /// Sorts every key of a table into supported, ignored, unsupported or unknown.
    fn check_keys(&mut self, table: &Map<String, Value>, prefix: &str, top_level: bool) {
        const SUPPORTED: &[&str] = &[
            "name",
            "main",
            "compatibility_date",
            "compatibility_flags",
            "vars",
            "rules",
            "durable_objects",
            "kv_namespaces",
            "d1_databases",
            "r2_buckets",
            "limits",
            "assets",
            "build",
            "version_metadata",
            "ratelimits",
            "unsafe",
            "triggers",
            "services",
            "queues",
            "workflows",
            "analytics_engine_datasets",
            "send_email",
            "secrets_store_secrets",
        ];
        for key in table.keys() {
            let key = key.as_str();
            if SUPPORTED.contains(&key)
                || DEPLOY_ONLY_KEYS.contains(&key)
                || local_bindings::CLOUD_ONLY.iter().any(|(k, _)| *k == key)
            {
                continue;
            }
            if top_level && (key == "env" || key == "migrations" || key == "exports") {
                continue;
            }
            if key == "containers" {
                // The Durable Object classes run; their containers do not (they need
                // Cloudflare, or Docker under wrangler dev).
                if !binds_nothing(&table[key]) {
                    self.warnings.push(format!(
                        "key '{prefix}containers': dorun does not run containers; their Durable \
                         Object classes run, and starting a container fails"
                    ));
                }
                continue;
            }
            if !top_level && key == "migrations" {
                self.problems.push(format!(
                    "key '{prefix}migrations': migrations belong at the top level, not in an environment"
                ));
                continue;
            }
            if UNSUPPORTED_BINDING_KEYS.contains(&key) {
                // Generated configs (wrangler, @cloudflare/vite-plugin) write empty ones:
                // `"kv_namespaces": []`, `"triggers": {"crons": []}`,
                // `"queues": {"producers": [], "consumers": []}`. They bind nothing.
                if binds_nothing(&table[key]) {
                    continue;
                }
                let what = "dorun does not serve this binding kind yet";
                let message = format!("key '{prefix}{key}': {what}");
                match self.unsupported_bindings {
                    UnsupportedBindings::Error => self.problems.push(format!(
                        "{message}; remove it, or pass --allow-unsupported-bindings to start without it"
                    )),
                    UnsupportedBindings::Warn => {
                        self.warnings.push(format!("{message}; it is left out of env"))
                    }
                }
                continue;
            }
            self.warnings
                .push(format!("unknown key '{prefix}{key}' is ignored"));
        }
    }

    fn string_list(&mut self, table: &Map<String, Value>, key: &str) -> Vec<String> {
        match table.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for item in items {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => self
                            .problems
                            .push(format!("key '{key}' must list strings, found {other}")),
                    }
                }
                out
            }
            Some(_) => {
                self.problems
                    .push(format!("key '{key}' must be an array of strings"));
                Vec::new()
            }
        }
    }

    /// `.dev.vars` (or `.dev.vars.<env>`) beside the config; `.env` only when neither exists.
    fn read_secrets(&mut self, base_dir: &Path, env: Option<&str>) -> BTreeMap<String, String> {
        let mut candidates: Vec<PathBuf> = Vec::new();
        let dev_vars: Vec<PathBuf> = env
            .map(|e| base_dir.join(format!(".dev.vars.{e}")))
            .into_iter()
            .chain(std::iter::once(base_dir.join(".dev.vars")))
            .collect();
        if let Some(found) = dev_vars.into_iter().find(|p| p.is_file()) {
            candidates.push(found);
        } else {
            candidates.push(base_dir.join(".env"));
            if let Some(e) = env {
                candidates.push(base_dir.join(format!(".env.{e}")));
            }
        }
        let mut secrets = BTreeMap::new();
        for file in candidates.into_iter().filter(|p| p.is_file()) {
            match dotenvy::from_path_iter(&file) {
                Ok(iter) => {
                    for item in iter {
                        match item {
                            Ok((key, value)) => {
                                secrets.insert(key, value);
                            }
                            Err(e) => self
                                .problems
                                .push(format!("{}: cannot parse: {e}", file.display())),
                        }
                    }
                }
                Err(e) => self
                    .problems
                    .push(format!("{}: cannot read: {e}", file.display())),
            }
        }
        secrets
    }

    fn read_rules(&mut self, table: &Map<String, Value>) -> Vec<ModuleRule> {
        let mut rules = Vec::new();
        let mut replaced_defaults: Vec<ModuleRuleKind> = Vec::new();
        match table.get("rules") {
            None => {}
            Some(Value::Array(items)) => {
                for (index, item) in items.iter().enumerate() {
                    let Some(rule) = item.as_object() else {
                        self.problems
                            .push(format!("rules[{index}] must be a table / object"));
                        continue;
                    };
                    for key in rule.keys() {
                        if !["type", "globs", "fallthrough"].contains(&key.as_str()) {
                            self.warnings
                                .push(format!("unknown key 'rules[{index}].{key}' is ignored"));
                        }
                    }
                    let kind = match rule.get("type").and_then(Value::as_str) {
                        Some("ESModule") => ModuleRuleKind::EsModule,
                        Some("Text") => ModuleRuleKind::Text,
                        Some("Data") => ModuleRuleKind::Data,
                        Some("CompiledWasm") => ModuleRuleKind::CompiledWasm,
                        Some("CommonJS") => {
                            self.problems.push(format!(
                                "rules[{index}].type: CommonJS modules are not supported; use ES modules"
                            ));
                            continue;
                        }
                        Some(other) => {
                            self.problems.push(format!(
                                "rules[{index}].type: unknown module type '{other}' (expected ESModule, Text, Data or CompiledWasm)"
                            ));
                            continue;
                        }
                        None => {
                            self.problems
                                .push(format!("rules[{index}].type is missing"));
                            continue;
                        }
                    };
                    let globs = self.string_list(rule, "globs");
                    for glob in &globs {
                        if let Err(e) = globset::Glob::new(glob) {
                            self.problems
                                .push(format!("rules[{index}].globs: invalid glob '{glob}': {e}"));
                        }
                    }
                    let fallthrough = rule
                        .get("fallthrough")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    if !fallthrough {
                        replaced_defaults.push(kind);
                    }
                    rules.push(ModuleRule { kind, globs });
                }
            }
            Some(_) => self.problems.push("key 'rules' must be an array".into()),
        }
        for rule in default_rules() {
            if !replaced_defaults.contains(&rule.kind) {
                rules.push(rule);
            }
        }
        rules
    }

    fn read_durable_objects(&mut self, table: &Map<String, Value>) -> Vec<DurableObjectBinding> {
        let mut bindings: Vec<DurableObjectBinding> = Vec::new();
        let Some(section) = table.get("durable_objects") else {
            return bindings;
        };
        let Some(section) = section.as_object() else {
            self.problems
                .push("key 'durable_objects' must be a table / object".into());
            return bindings;
        };
        for key in section.keys() {
            if key != "bindings" {
                self.warnings
                    .push(format!("unknown key 'durable_objects.{key}' is ignored"));
            }
        }
        let Some(items) = section.get("bindings") else {
            return bindings;
        };
        let Some(items) = items.as_array() else {
            self.problems
                .push("key 'durable_objects.bindings' must be an array".into());
            return bindings;
        };
        for (index, item) in items.iter().enumerate() {
            let at = format!("durable_objects.bindings[{index}]");
            let Some(entry) = item.as_object() else {
                self.problems.push(format!("{at} must be a table / object"));
                continue;
            };
            for key in entry.keys() {
                if !["name", "class_name", "script_name", "environment"].contains(&key.as_str()) {
                    self.warnings
                        .push(format!("unknown key '{at}.{key}' is ignored"));
                }
            }
            let name = entry.get("name").and_then(Value::as_str);
            let class_name = entry.get("class_name").and_then(Value::as_str);
            let (Some(name), Some(class_name)) = (name, class_name) else {
                self.problems
                    .push(format!("{at} needs string keys 'name' and 'class_name'"));
                continue;
            };
            if !is_js_identifier(name) {
                self.problems.push(format!(
                    "{at}.name '{name}' is not a valid JavaScript identifier"
                ));
            }
            if bindings.iter().any(|b| b.name == name) {
                self.problems
                    .push(format!("{at}.name '{name}' is bound twice"));
            }
            let script_name = match entry.get("script_name") {
                None => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    self.problems
                        .push(format!("{at}.script_name must be a string"));
                    None
                }
            };
            bindings.push(DurableObjectBinding {
                name: name.to_string(),
                class_name: class_name.to_string(),
                script_name,
            });
        }
        bindings
    }

    /// `kv_namespaces = [{ binding, id, preview_id }]`. Locally a namespace is keyed by its
    /// `id`, or by the binding's name when it has none (as `wrangler dev` does).
    fn read_kv_namespaces(
        &mut self,
        table: &Map<String, Value>,
        objects: &[DurableObjectBinding],
        vars: &Map<String, Value>,
    ) -> Vec<dorun_runtime::kv_binding::KvBinding> {
        let mut bindings = Vec::new();
        let known = [
            "binding",
            "id",
            "preview_id",
            "remote",
            "experimental_remote",
        ];
        for (at, binding, entry) in self.binding_entries(table, "kv_namespaces", &known) {
            let id = match entry.get("id") {
                None => binding.clone(),
                Some(Value::String(id)) if !id.is_empty() => id.clone(),
                Some(_) => {
                    self.problems
                        .push(format!("{at}.id must be a non-empty string"));
                    continue;
                }
            };
            if entry.get("preview_id").is_some_and(|p| !p.is_string()) {
                self.problems
                    .push(format!("{at}.preview_id must be a string"));
            }
            if objects.iter().any(|o| o.name == binding) || vars.contains_key(&binding) {
                self.problems
                    .push(format!("{at}.binding '{binding}' is bound twice"));
            }
            bindings.push(dorun_runtime::kv_binding::KvBinding { binding, id });
        }
        bindings
    }

    /// `workflows = [{ binding, name, class_name, script_name }]`.
    fn read_workflows(
        &mut self,
        table: &Map<String, Value>,
    ) -> Vec<dorun_runtime::workflow_binding::WorkflowBinding> {
        let mut out = Vec::new();
        let known = [
            "binding",
            "name",
            "class_name",
            "script_name",
            "remote",
            "experimental_remote",
            "limits",
        ];
        for (at, binding, entry) in self.binding_entries(table, "workflows", &known) {
            let mut text = |key: &str, needed: bool| match entry.get(key) {
                Some(Value::String(value)) if !value.is_empty() => Some(value.clone()),
                None if !needed => None,
                _ => {
                    self.problems
                        .push(format!("{at}.{key} must be a non-empty string"));
                    None
                }
            };
            let (Some(name), Some(class_name)) = (text("name", true), text("class_name", true))
            else {
                continue;
            };
            let script_name = text("script_name", false);
            out.push(dorun_runtime::workflow_binding::WorkflowBinding {
                binding,
                name,
                class_name,
                script_name,
            });
        }
        out
    }

    /// The entries of a binding list (`<key> = [{ binding, ... }]`): each with its place in
    /// the config and its `binding`, which must be a JavaScript identifier used once in the
    /// list. Keys outside `known` are warned about.
    fn binding_entries<'a>(
        &mut self,
        table: &'a Map<String, Value>,
        key: &str,
        known: &[&str],
    ) -> Vec<(String, String, &'a Map<String, Value>)> {
        let mut entries: Vec<(String, String, &'a Map<String, Value>)> = Vec::new();
        let Some(items) = table.get(key) else {
            return entries;
        };
        let Some(items) = items.as_array() else {
            self.problems.push(format!("key '{key}' must be an array"));
            return entries;
        };
        for (index, item) in items.iter().enumerate() {
            let at = format!("{key}[{index}]");
            let Some(entry) = item.as_object() else {
                self.problems.push(format!("{at} must be a table / object"));
                continue;
            };
            for name in entry.keys() {
                if !known.contains(&name.as_str()) {
                    self.warnings
                        .push(format!("unknown key '{at}.{name}' is ignored"));
                }
            }
            let Some(binding) = entry.get("binding").and_then(Value::as_str) else {
                self.problems
                    .push(format!("{at} needs a string key 'binding'"));
                continue;
            };
            if !is_js_identifier(binding) {
                self.problems.push(format!(
                    "{at}.binding '{binding}' is not a valid JavaScript identifier"
                ));
            }
            if entries.iter().any(|(_, b, _)| b == binding) {
                self.problems
                    .push(format!("{at}.binding '{binding}' is bound twice"));
            }
            entries.push((at, binding.to_string(), entry));
        }
        entries
    }

    /// `r2_buckets = [{ binding, bucket_name, preview_bucket_name, jurisdiction }]`; locally
    /// a bucket is keyed by its `bucket_name` (else the binding's name).
    fn read_r2_buckets(
        &mut self,
        table: &Map<String, Value>,
    ) -> Vec<dorun_runtime::r2_binding::R2Binding> {
        let mut buckets = Vec::new();
        let known = [
            "binding",
            "bucket_name",
            "preview_bucket_name",
            "jurisdiction",
            "remote",
            "experimental_remote",
        ];
        for (at, binding, entry) in self.binding_entries(table, "r2_buckets", &known) {
            let bucket = match entry.get("bucket_name") {
                None => binding.clone(),
                Some(Value::String(name)) if !name.is_empty() => name.clone(),
                Some(_) => {
                    self.problems
                        .push(format!("{at}.bucket_name must be a non-empty string"));
                    continue;
                }
            };
            buckets.push(dorun_runtime::r2_binding::R2Binding { binding, bucket });
        }
        buckets
    }

    /// `d1_databases = [{ binding, database_name, database_id, migrations_dir,
    /// migrations_table }]`.
    fn read_d1_databases(
        &mut self,
        table: &Map<String, Value>,
        base_dir: &Path,
    ) -> Vec<D1DatabaseConfig> {
        let mut databases = Vec::new();
        let known = [
            "binding",
            "database_name",
            "database_id",
            "preview_database_id",
            "migrations_dir",
            "migrations_table",
            "database_internal_env",
            "remote",
            "experimental_remote",
        ];
        for (at, binding, entry) in self.binding_entries(table, "d1_databases", &known) {
            let mut text = |key: &str| match entry.get(key) {
                None => None,
                Some(Value::String(value)) if !value.is_empty() => Some(value.clone()),
                Some(_) => {
                    self.problems
                        .push(format!("{at}.{key} must be a non-empty string"));
                    None
                }
            };
            let name = text("database_name")
                .or_else(|| text("database_id"))
                .unwrap_or_else(|| binding.clone());
            let migrations_dir =
                base_dir.join(text("migrations_dir").unwrap_or("migrations".into()));
            let migrations_table = text("migrations_table").unwrap_or("d1_migrations".into());
            databases.push(D1DatabaseConfig {
                binding,
                name,
                migrations_dir,
                migrations_table,
            });
        }
        databases
    }

    fn read_migrations(&mut self, root: &Map<String, Value>) -> Vec<Migration> {
        let mut migrations: Vec<Migration> = Vec::new();
        let Some(items) = root.get("migrations") else {
            return migrations;
        };
        let Some(items) = items.as_array() else {
            self.problems
                .push("key 'migrations' must be an array".into());
            return migrations;
        };
        for (index, item) in items.iter().enumerate() {
            let at = format!("migrations[{index}]");
            let Some(entry) = item.as_object() else {
                self.problems.push(format!("{at} must be a table / object"));
                continue;
            };
            let mut migration = Migration::default();
            match entry.get("tag").and_then(Value::as_str) {
                Some(tag) if !tag.is_empty() => migration.tag = tag.to_string(),
                _ => {
                    self.problems
                        .push(format!("{at}.tag must be a non-empty string"));
                    continue;
                }
            }
            if migrations.iter().any(|m| m.tag == migration.tag) {
                self.problems
                    .push(format!("{at}.tag '{}' is used twice", migration.tag));
            }
            for (key, value) in entry {
                match key.as_str() {
                    "tag" => {}
                    "new_classes" | "new_sqlite_classes" | "deleted_classes" => {
                        let list = self.string_list(entry, key);
                        match key.as_str() {
                            "new_classes" => migration.new_classes = list,
                            "new_sqlite_classes" => migration.new_sqlite_classes = list,
                            _ => migration.deleted_classes = list,
                        }
                    }
                    "renamed_classes" | "transferred_classes" => {
                        let Some(list) = value.as_array() else {
                            self.problems.push(format!("{at}.{key} must be an array"));
                            continue;
                        };
                        for (i, pair) in list.iter().enumerate() {
                            let from = pair.get("from").and_then(Value::as_str);
                            let to = pair.get("to").and_then(Value::as_str);
                            let (Some(from), Some(to)) = (from, to) else {
                                self.problems.push(format!(
                                    "{at}.{key}[{i}] needs string keys 'from' and 'to'"
                                ));
                                continue;
                            };
                            if key == "renamed_classes" {
                                migration.renamed_classes.push((from.into(), to.into()));
                            } else {
                                let Some(script) = pair.get("from_script").and_then(Value::as_str)
                                else {
                                    self.problems.push(format!(
                                        "{at}.{key}[{i}] needs a string 'from_script'"
                                    ));
                                    continue;
                                };
                                migration.transferred_classes.push((
                                    from.into(),
                                    script.into(),
                                    to.into(),
                                ));
                            }
                        }
                    }
                    other => self
                        .warnings
                        .push(format!("unknown key '{at}.{other}' is ignored")),
                }
            }
            migrations.push(migration);
        }
        migrations
    }

    /// A binding to a class of this worker should name a class some migration created.
    fn check_bindings_against_migrations(
        &mut self,
        bindings: &[DurableObjectBinding],
        migrations: &[Migration],
        exports: &[ClassExport],
    ) {
        let mut live: Vec<String> = Vec::new();
        for export in exports {
            if matches!(export.state, ExportState::Live { .. }) {
                live.push(export.class.clone());
            }
        }
        for migration in migrations {
            live.extend(migration.new_classes.iter().cloned());
            live.extend(migration.new_sqlite_classes.iter().cloned());
            for (from, to) in &migration.renamed_classes {
                live.retain(|c| c != from);
                live.push(to.clone());
            }
            for (_, _, to) in &migration.transferred_classes {
                live.push(to.clone());
            }
            for deleted in &migration.deleted_classes {
                live.retain(|c| c != deleted);
            }
        }
        for binding in bindings.iter().filter(|b| b.script_name.is_none()) {
            if !live.contains(&binding.class_name) {
                let deleted = migrations
                    .iter()
                    .any(|m| m.deleted_classes.contains(&binding.class_name))
                    || exports.iter().any(|e| {
                        e.class == binding.class_name
                            && !matches!(e.state, ExportState::Live { .. })
                    });
                if deleted {
                    self.problems.push(format!(
                        "durable_objects binding '{}' names class '{}', which a migration deleted",
                        binding.name, binding.class_name
                    ));
                } else {
                    self.warnings.push(format!(
                        "durable_objects binding '{}': no migration creates class '{}' (Cloudflare would refuse to deploy this)",
                        binding.name, binding.class_name
                    ));
                }
            }
        }
    }
}

/// wrangler's default module rules.
/// `build.upload.dir` (default `dist`) and `build.upload.main`, if the config names them.
fn upload_main(table: &Map<String, Value>) -> Option<(String, String)> {
    let upload = table.get("build")?.get("upload")?;
    let main = upload.get("main")?.as_str()?;
    let dir = upload.get("dir").and_then(Value::as_str).unwrap_or("dist");
    Some((dir.to_string(), main.trim_start_matches("./").to_string()))
}

fn default_rules() -> Vec<ModuleRule> {
    let rule = |kind, globs: &[&str]| ModuleRule {
        kind,
        globs: globs.iter().map(|g| g.to_string()).collect(),
    };
    vec![
        rule(ModuleRuleKind::Text, &["**/*.txt", "**/*.html", "**/*.sql"]),
        rule(ModuleRuleKind::Data, &["**/*.bin"]),
        rule(
            ModuleRuleKind::CompiledWasm,
            &["**/*.wasm", "**/*.wasm?module"],
        ),
    ]
}

/// Today's date in UTC as `YYYY-MM-DD`.
pub fn today_utc() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

fn is_iso_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

fn is_js_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

/// Parses a `--var KEY=VALUE` argument.
pub fn parse_var(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("expected KEY=VALUE, got '{arg}'")),
    }
}

/// Whether a binding key's value declares nothing: an empty list, or a table of such.
fn binds_nothing(value: &Value) -> bool {
    match value {
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.values().all(binds_nothing),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
