//! The ES module loader for a Worker's code.
//!
//! Resolution follows what wrangler's bundler (esbuild) does for Workers: relative imports
//! with or without an extension, bare specifiers from `node_modules` through package.json
//! `exports` with the conditions `workerd`, `worker`, `browser`, `import`, `default`, then
//! the `module` and `main` fields. The resolver is oxc_resolver, a maintained
//! implementation of Node/webpack resolution, rather than a hand-written one.
//!
//! Bare and non-relative specifiers also go through `compilerOptions.paths` and `baseUrl` of
//! the `tsconfig.json` (or `jsconfig.json`) nearest to the Worker's main module, as esbuild
//! applies them (not inside `node_modules`).
//!
//! Loading classifies each file: wrangler module rules first (Text, Data, CompiledWasm,
//! ESModule), then by extension (`.ts`/`.mts`/`.tsx` transpiled, `.json` as a default
//! export, `.js`/`.mjs` as is, `.cjs`/`.cts` and `.js` without ES module syntax outside a
//! `"type": "module"` package as CommonJS, see [`crate::commonjs`]). Every module is parsed
//! once (shared by all isolate threads) so syntax errors report `file:line:column`. An
//! import that cannot be resolved is reported with the importing file's `file:line:column`
//! and the specifier.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use deno_ast::MediaType;
use deno_core::error::ModuleLoaderError;
use deno_core::{
    ModuleLoadOptions, ModuleLoadReferrer, ModuleLoadResponse, ModuleLoader, ModuleResolveResponse,
    ModuleSource, ModuleSourceCode, ModuleSpecifier, ModuleType, RequestedModuleType,
    ResolutionKind,
};
use deno_error::JsErrorBox;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use url::Url;

use crate::commonjs::{self, CommonJsFile, RequireTarget};
use crate::node_compat;
use crate::scope::ImportScope;
use crate::spec::{ModuleRuleKind, WorkerSpec};
use crate::transpile::{self, Goal};

/// The specifier of the synthetic module that imports the Worker's entry module and hands
/// its namespace to the runtime glue.
pub const ENTRY_SPECIFIER: &str = "dorun:entry";
const UNRESOLVED_SCHEME: &str = "dorun-unresolved";

/// Conditions for package.json `exports`, in wrangler's order.
const EXPORT_CONDITIONS: &[&str] = &["workerd", "worker", "browser", "import", "default"];
/// The conditions for `require()`, as esbuild swaps `import` for `require`.
const REQUIRE_CONDITIONS: &[&str] = &["workerd", "worker", "browser", "require", "default"];

/// State shared by the loaders of every isolate of one Worker: resolution and parse results
/// are computed once.
pub struct ModuleGraph {
    spec: Arc<WorkerSpec>,
    base_dir: PathBuf,
    /// The files imports may reach.
    scope: ImportScope,
    rules: Vec<(ModuleRuleKind, GlobSet)>,
    resolver: oxc_resolver::Resolver,
    /// Resolves `require()` specifiers (the `require` condition, `main` before `module`).
    require_resolver: oxc_resolver::Resolver,
    prepared: Mutex<HashMap<Url, Prepared>>,
    /// Per ES module, the names it imports from each specifier (for CommonJS facades).
    imported_names: Mutex<HashMap<Url, HashMap<String, BTreeSet<String>>>>,
    /// Per directory, whether the nearest package.json says `"type": "module"`.
    package_types: Mutex<HashMap<PathBuf, bool>>,
    source_maps: Mutex<HashMap<String, Arc<[u8]>>>,
    /// Bytes of Data and CompiledWasm modules, read by `op_dorun_module_bytes`.
    module_bytes: Mutex<HashMap<String, bytes::Bytes>>,
}

/// The Worker's module rules are not usable.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("invalid module rule glob '{glob}': {source}")]
    RuleGlob {
        glob: String,
        source: globset::Error,
    },
    #[error("invalid module rule globs: {0}")]
    RuleSet(globset::Error),
    #[error("cannot read {}: {source}", path.display())]
    Tsconfig {
        path: PathBuf,
        source: oxc_resolver::ResolveError,
    },
}

/// A module ready to hand to V8.
#[derive(Clone)]
enum Prepared {
    JavaScript(Arc<str>),
    Json(Arc<str>),
    /// A CommonJS file: its registration module is generated when it loads.
    CommonJs(Arc<CommonJsFile>),
}

impl ModuleGraph {
    pub fn new(spec: Arc<WorkerSpec>) -> Result<Arc<Self>, LoadError> {
        let base_dir = spec.base_dir();
        let mut rules = Vec::new();
        for rule in &spec.rules {
            let mut set = GlobSetBuilder::new();
            for glob in &rule.globs {
                // wrangler writes `**/*.wasm?module`; the query is not part of the path.
                let pattern = glob.split('?').next().unwrap_or(glob);
                let glob = GlobBuilder::new(pattern)
                    .literal_separator(true)
                    .build()
                    .map_err(|source| LoadError::RuleGlob {
                        glob: glob.clone(),
                        source,
                    })?;
                set.add(glob);
            }
            rules.push((rule.kind, set.build().map_err(LoadError::RuleSet)?));
        }
        let tsconfig = find_tsconfig(&spec.main);
        let resolver = oxc_resolver::Resolver::new(oxc_resolver::ResolveOptions {
            tsconfig: tsconfig.clone().map(|config_file| {
                oxc_resolver::TsconfigDiscovery::Manual(oxc_resolver::TsconfigOptions {
                    config_file,
                    references: oxc_resolver::TsconfigReferences::Disabled,
                })
            }),
            condition_names: EXPORT_CONDITIONS.iter().map(|s| s.to_string()).collect(),
            main_fields: vec!["module".into(), "main".into()],
            extensions: [".ts", ".tsx", ".mts", ".js", ".mjs", ".jsx", ".json"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            extension_alias: vec![(
                ".js".into(),
                vec![".js".into(), ".ts".into(), ".tsx".into()],
            )],
            ..Default::default()
        });
        let mut resolver = resolver;
        if let Some(tsconfig) = &tsconfig {
            if let Err(source) = resolver.resolve_tsconfig(tsconfig) {
                let error = LoadError::Tsconfig {
                    path: tsconfig.clone(),
                    source,
                };
                // A broken tsconfig of the project is for the user to fix; an `extends` to a
                // file that is not there (a monorepo example copied out of its repository)
                // is a warning, as esbuild makes it, and imports resolve without its paths.
                if !matches!(
                    &error,
                    LoadError::Tsconfig {
                        source: oxc_resolver::ResolveError::TsconfigNotFound(_),
                        ..
                    }
                ) {
                    return Err(error);
                }
                tracing::warn!("{error}; its compilerOptions.paths and baseUrl are not used");
                resolver = resolver.clone_with_options(oxc_resolver::ResolveOptions {
                    tsconfig: None,
                    ..resolver.options().clone()
                });
            }
        }
        let require_resolver = resolver.clone_with_options(oxc_resolver::ResolveOptions {
            condition_names: REQUIRE_CONDITIONS.iter().map(|s| s.to_string()).collect(),
            main_fields: vec!["main".into(), "module".into()],
            ..resolver.options().clone()
        });
        let scope = ImportScope::for_project(&spec.project_dir, &base_dir);
        Ok(Arc::new(Self {
            spec,
            base_dir,
            scope,
            rules,
            resolver,
            require_resolver,
            prepared: Mutex::new(HashMap::new()),
            imported_names: Mutex::new(HashMap::new()),
            package_types: Mutex::new(HashMap::new()),
            source_maps: Mutex::new(HashMap::new()),
            module_bytes: Mutex::new(HashMap::new()),
        }))
    }

    pub fn spec(&self) -> &Arc<WorkerSpec> {
        &self.spec
    }

    /// The URL of the Worker's entry module.
    pub fn main_url(&self) -> Result<Url, String> {
        let main = std::fs::canonicalize(&self.spec.main)
            .map_err(|e| format!("cannot open entry module {}: {e}", self.spec.main.display()))?;
        Url::from_file_path(&main).map_err(|_| format!("bad path {}", main.display()))
    }

    /// Bytes registered for a Data or CompiledWasm module.
    pub fn module_bytes(&self, url: &str) -> Option<bytes::Bytes> {
        self.module_bytes.lock().unwrap().get(url).cloned()
    }

    fn rule_for(&self, path: &Path) -> Option<ModuleRuleKind> {
        let relative = path.strip_prefix(&self.base_dir).unwrap_or(path);
        self.rules
            .iter()
            .find(|(_, set)| set.is_match(relative))
            .map(|(kind, _)| *kind)
    }

    fn resolve(&self, specifier: &str, referrer: &str) -> Result<Url, String> {
        if specifier == "cloudflare:workers"
            || specifier == "cloudflare:workflows"
            || specifier == "cloudflare:sockets"
            || specifier == "cloudflare:email"
            || specifier == ENTRY_SPECIFIER
            || specifier == commonjs::RUNTIME_SPECIFIER
        {
            return Url::parse(specifier).map_err(|e| e.to_string());
        }
        if let Some(registration) = specifier.strip_prefix(commonjs::REGISTRATION_PREFIX) {
            return Url::parse(registration).map_err(|e| e.to_string());
        }
        // `buffer` as `node:buffer`, when the compatibility flags say so.
        if let Some(url) = node_compat::resolve_bare(specifier, &self.spec) {
            return Ok(url);
        }
        let url = match Url::parse(specifier) {
            Ok(url) if url.scheme() == "file" => url,
            // Other absolute URLs (node:, https:, ...) are checked when loaded.
            Ok(url) => return Ok(url),
            Err(_) => {
                let referrer_path = Url::parse(referrer)
                    .ok()
                    .and_then(|u| u.to_file_path().ok())
                    .ok_or_else(|| format!("cannot import \"{specifier}\" from {referrer}"))?;
                let dir = referrer_path.parent().unwrap_or(Path::new("/"));
                match self.resolver.resolve(dir, specifier) {
                    Ok(resolution) => {
                        if is_bare(specifier) {
                            self.scope.allow_package_of(resolution.path());
                        }
                        Url::from_file_path(resolution.path())
                            .map_err(|_| format!("bad path {}", resolution.path().display()))?
                    }
                    Err(error) => {
                        return Err(node_compat::missing_bare_error(specifier)
                            .unwrap_or_else(|| error.to_string()))
                    }
                }
            }
        };
        Ok(self.facade_if_commonjs(url, specifier, referrer))
    }

    /// ES modules import a CommonJS file through its facade, which exports the names the
    /// importing module asks for besides those the analysis finds.
    fn facade_if_commonjs(&self, url: Url, specifier: &str, referrer: &str) -> Url {
        let Ok(path) = url.to_file_path() else {
            return url;
        };
        // A file that fails to prepare is reported when it loads.
        if !matches!(self.prepare(&url, &path), Ok(Prepared::CommonJs(_))) {
            return url;
        }
        let names = Url::parse(referrer)
            .ok()
            .and_then(|referrer| {
                let imported = self.imported_names.lock().unwrap();
                imported.get(&referrer)?.get(specifier).cloned()
            })
            .unwrap_or_default();
        commonjs::facade_url(&url, &names)
    }

    /// Where a `require(specifier)` in the file at `from` leads, as a path.
    fn resolve_require(&self, specifier: &str, from: &Path) -> Result<PathBuf, String> {
        let dir = from.parent().unwrap_or(Path::new("/"));
        self.require_resolver
            .resolve(dir, specifier)
            .map(|resolution| {
                if is_bare(specifier) {
                    self.scope.allow_package_of(resolution.path());
                }
                resolution.into_path_buf()
            })
            .map_err(|error| match error {
                oxc_resolver::ResolveError::NotFound(_) => "no such file or package".to_string(),
                error => error.to_string(),
            })
    }

    /// What a `require(specifier)` in the file at `from` reaches.
    fn require_target(&self, specifier: &str, from: &Path) -> RequireTarget {
        let builtin = specifier.strip_prefix("node:").or_else(|| {
            nodejs_built_in_modules::BUILTINS
                .binary_search(&specifier)
                .ok()
                .map(|_| specifier)
        });
        let unsupported = |name: &str| RequireTarget::Missing {
            reason: format!("the Node.js built-in module \"{name}\" is not supported by dorun"),
        };
        if let Some(name) = builtin {
            if node_compat::provides(name, &self.spec) {
                return RequireTarget::Builtin {
                    specifier: format!("node:{name}"),
                };
            }
            if specifier.starts_with("node:") {
                return unsupported(name);
            }
            // Else a package of that name (a polyfill) may be installed.
        }
        let path = match self.resolve_require(specifier, from) {
            Ok(path) => path,
            Err(_) if builtin.is_some() => return unsupported(specifier),
            Err(reason) => return RequireTarget::Missing { reason },
        };
        let Ok(url) = Url::from_file_path(&path) else {
            return RequireTarget::Missing {
                reason: format!("bad path {}", path.display()),
            };
        };
        match self.prepare(&url, &path) {
            Ok(Prepared::CommonJs(_)) => RequireTarget::CommonJs { url, path },
            Ok(Prepared::Json(_)) => RequireTarget::Value { url, path },
            Ok(Prepared::JavaScript(_)) => match self.rule_for(&path) {
                Some(
                    ModuleRuleKind::Text | ModuleRuleKind::Data | ModuleRuleKind::CompiledWasm,
                ) => RequireTarget::Value { url, path },
                Some(ModuleRuleKind::EsModule) | None => RequireTarget::EsModule { url, path },
            },
            // Node reports a broken file when it is required; so does dorun.
            Err(reason) => RequireTarget::Missing { reason },
        }
    }

    /// The registration module of a CommonJS file, with its `require` table.
    fn registration_source(&self, url: &Url, path: &Path, file: &CommonJsFile) -> String {
        let mut targets: Vec<(String, RequireTarget)> = file
            .requires
            .iter()
            .map(|specifier| (specifier.clone(), self.require_target(specifier, path)))
            .collect();
        for specifier in &file.resolves {
            if !file.requires.contains(specifier) {
                let target = match self.resolve_require(specifier, path) {
                    Ok(path) => RequireTarget::Path { path },
                    Err(reason) => RequireTarget::Missing { reason },
                };
                targets.push((specifier.clone(), target));
            }
        }
        commonjs::registration_source(url, path, file, &targets)
    }

    /// The facade ES modules import a CommonJS file through.
    fn facade_source(&self, url: &Url, requested: BTreeSet<String>) -> Result<String, String> {
        let path = url
            .to_file_path()
            .map_err(|_| format!("bad file URL {url}"))?;
        self.prepare(url, &path)?;
        let mut names = requested;
        self.collect_commonjs_exports(url, &mut names, &mut HashSet::new());
        Ok(commonjs::facade_source(url, &names))
    }

    /// The statically known export names of a CommonJS file, following re-exports.
    fn collect_commonjs_exports(
        &self,
        url: &Url,
        names: &mut BTreeSet<String>,
        seen: &mut HashSet<Url>,
    ) {
        if !seen.insert(url.clone()) {
            return;
        }
        let Ok(path) = url.to_file_path() else {
            return;
        };
        let Ok(Prepared::CommonJs(file)) = self.prepare(url, &path) else {
            return;
        };
        names.extend(file.exports.iter().cloned());
        for specifier in &file.reexports {
            if let RequireTarget::CommonJs { url, .. } = self.require_target(specifier, &path) {
                self.collect_commonjs_exports(&url, names, seen);
            }
        }
    }

    /// Whether the nearest package.json above `path` says `"type": "module"`.
    fn in_module_package(&self, path: &Path) -> bool {
        let Some(dir) = path.parent() else {
            return false;
        };
        if let Some(known) = self.package_types.lock().unwrap().get(dir) {
            return *known;
        }
        let manifest = dir.join("package.json");
        let is_module = if manifest.is_file() {
            std::fs::read_to_string(&manifest)
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .is_some_and(|json| json.get("type").and_then(|t| t.as_str()) == Some("module"))
        } else {
            self.in_module_package(dir)
        };
        self.package_types
            .lock()
            .unwrap()
            .insert(dir.to_path_buf(), is_module);
        is_module
    }

    /// Reads, classifies and (for TypeScript) transpiles a file, once per Worker.
    fn prepare(&self, url: &Url, path: &Path) -> Result<Prepared, String> {
        if let Some(prepared) = self.prepared.lock().unwrap().get(url) {
            return Ok(prepared.clone());
        }
        if !self.scope.permits(path) {
            return Err(format!(
                "cannot import \"{url}\": only files of the Worker's project and its node_modules can be imported"
            ));
        }
        let display = path.display();
        let prepared = match self.rule_for(path) {
            Some(ModuleRuleKind::Text) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {display}: {e}"))?;
                let literal = serde_json::to_string(&text).expect("strings serialize");
                Prepared::JavaScript(format!("export default {literal};\n").into())
            }
            Some(kind @ (ModuleRuleKind::Data | ModuleRuleKind::CompiledWasm)) => {
                let bytes =
                    std::fs::read(path).map_err(|e| format!("cannot read {display}: {e}"))?;
                if kind == ModuleRuleKind::CompiledWasm && !bytes.starts_with(b"\0asm") {
                    return Err(format!(
                        "{display}: matched a CompiledWasm rule but is not a WebAssembly module"
                    ));
                }
                self.module_bytes
                    .lock()
                    .unwrap()
                    .insert(url.to_string(), bytes.into());
                let literal = serde_json::to_string(url.as_str()).expect("strings serialize");
                let source = if kind == ModuleRuleKind::Data {
                    format!("export default globalThis[Symbol.for(\"dorun.moduleBytes\")]({literal});\n")
                } else {
                    format!(
                        "export default new WebAssembly.Module(globalThis[Symbol.for(\"dorun.moduleBytes\")]({literal}));\n"
                    )
                };
                Prepared::JavaScript(source.into())
            }
            Some(ModuleRuleKind::EsModule) | None => {
                let source = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {display}: {e}"))?;
                match MediaType::from_path(path) {
                    MediaType::Json => {
                        // Validate now so the error names the file.
                        serde_json::from_str::<serde_json::Value>(&source).map_err(|e| {
                            format!("{display}:{}:{}: invalid JSON: {e}", e.line(), e.column())
                        })?;
                        Prepared::Json(source.into())
                    }
                    media @ (MediaType::TypeScript
                    | MediaType::Mts
                    | MediaType::Cts
                    | MediaType::Tsx
                    | MediaType::Jsx) => {
                        let (goal, commonjs) = if media == MediaType::Cts {
                            (Goal::Detect, true)
                        } else {
                            (Goal::Module, false)
                        };
                        let parsed = transpile::parse(url, source, media, goal)?;
                        let analysis = if commonjs {
                            Some(CommonJsFile::analyze(&parsed, String::new()))
                        } else {
                            self.remember_imports(url, &parsed);
                            None
                        };
                        let out = transpile::emit(parsed)?;
                        if let Some(map) = out.source_map {
                            self.source_maps
                                .lock()
                                .unwrap()
                                .insert(url.to_string(), map.into_bytes().into());
                        }
                        match analysis {
                            Some(file) => Prepared::CommonJs(Arc::new(CommonJsFile {
                                code: out.code,
                                ..file
                            })),
                            None => Prepared::JavaScript(out.code.into()),
                        }
                    }
                    media @ (MediaType::JavaScript
                    | MediaType::Mjs
                    | MediaType::Cjs
                    | MediaType::Unknown) => {
                        let goal = match media {
                            MediaType::Mjs => Goal::Module,
                            MediaType::Cjs => Goal::Script,
                            _ if self.in_module_package(path) => Goal::Module,
                            _ => Goal::Detect,
                        };
                        let parsed = transpile::parse(url, source, media, goal)?;
                        if goal == Goal::Script
                            || goal == Goal::Detect && parsed.compute_is_script()
                        {
                            let code = parsed.text().to_string();
                            Prepared::CommonJs(Arc::new(CommonJsFile::analyze(&parsed, code)))
                        } else {
                            self.remember_imports(url, &parsed);
                            Prepared::JavaScript(parsed.text().clone())
                        }
                    }
                    other => {
                        return Err(format!(
                            "{display}: cannot import a {other} file; add a module rule for it"
                        ))
                    }
                }
            }
        };
        self.prepared
            .lock()
            .unwrap()
            .insert(url.clone(), prepared.clone());
        Ok(prepared)
    }

    fn remember_imports(&self, url: &Url, parsed: &deno_ast::ParsedSource) {
        let names = commonjs::imported_names(parsed);
        self.imported_names
            .lock()
            .unwrap()
            .insert(url.clone(), names);
    }

    fn entry_source(&self) -> Result<String, String> {
        let main = serde_json::to_string(self.main_url()?.as_str()).expect("strings serialize");
        Ok(format!(
            "{}import * as worker from {main};\nglobalThis[Symbol.for(\"dorun.start\")](worker);\n",
            node_compat::entry_prelude(&self.spec)
        ))
    }
}

/// The `tsconfig.json` (or `jsconfig.json`) nearest to the Worker's main module.
/// A package name (or a tsconfig path alias), not a relative or absolute path.
fn is_bare(specifier: &str) -> bool {
    !(specifier.starts_with('.') || specifier.starts_with('/') || specifier.contains(':'))
}

fn find_tsconfig(main: &Path) -> Option<PathBuf> {
    main.ancestors().skip(1).find_map(|dir| {
        ["tsconfig.json", "jsconfig.json"]
            .iter()
            .map(|name| dir.join(name))
            .find(|path| path.is_file())
    })
}

/// The `cloudflare:workers` module: a facade over what the runtime glue installed.
const CLOUDFLARE_WORKERS_SOURCE: &str = r#"
const m = globalThis[Symbol.for("dorun.cloudflare:workers")];
export const DurableObject = m.DurableObject;
export const WorkerEntrypoint = m.WorkerEntrypoint;
export const WorkflowEntrypoint = m.WorkflowEntrypoint;
export const RpcTarget = m.RpcTarget;
export const RpcStub = m.RpcStub;
export const env = m.env;
export const waitUntil = m.waitUntil;
export const exports = m.exports;
"#;

/// The `cloudflare:workflows` module: `NonRetryableError`.
const CLOUDFLARE_WORKFLOWS_SOURCE: &str = r#"
const m = globalThis[Symbol.for("dorun.cloudflare:workflows")];
export const NonRetryableError = m.NonRetryableError;
"#;

/// The `cloudflare:sockets` module: `connect()` (js/20_sockets.js).
const CLOUDFLARE_SOCKETS_SOURCE: &str = r#"
const m = globalThis[Symbol.for("dorun.cloudflare:sockets")];
export const connect = m.connect;
"#;

/// The `cloudflare:email` module: `EmailMessage`, what email handlers and `send_email`
/// bindings exchange. dorun has no email routing; the class exists so code that imports it
/// loads.
const CLOUDFLARE_EMAIL_SOURCE: &str = r#"
export class EmailMessage {
  constructor(from, to, raw) {
    this.from = from;
    this.to = to;
    this.raw = raw;
  }
}
"#;

/// One isolate's view of a [`ModuleGraph`].
pub struct WorkerModuleLoader {
    graph: Arc<ModuleGraph>,
}

impl WorkerModuleLoader {
    pub fn new(graph: Arc<ModuleGraph>) -> Self {
        Self { graph }
    }

    fn load_sync(
        &self,
        specifier: &ModuleSpecifier,
        referrer: Option<&ModuleLoadReferrer>,
        requested: &RequestedModuleType,
    ) -> Result<ModuleSource, ModuleLoaderError> {
        let at = || {
            referrer
                .map(|r| {
                    format!(
                        "{}:{}:{}: ",
                        transpile::display_path(&r.specifier),
                        r.line_number,
                        r.column_number
                    )
                })
                .unwrap_or_default()
        };
        let javascript = |code: &str| {
            ModuleSource::new(
                ModuleType::JavaScript,
                ModuleSourceCode::String(code.to_string().into()),
                specifier,
                None,
            )
        };
        match specifier.scheme() {
            "cloudflare" if specifier.as_str() == "cloudflare:workers" => {
                Ok(javascript(CLOUDFLARE_WORKERS_SOURCE))
            }
            "cloudflare" if specifier.as_str() == "cloudflare:workflows" => {
                Ok(javascript(CLOUDFLARE_WORKFLOWS_SOURCE))
            }
            "cloudflare" if specifier.as_str() == "cloudflare:sockets" => {
                Ok(javascript(CLOUDFLARE_SOCKETS_SOURCE))
            }
            "cloudflare" if specifier.as_str() == "cloudflare:email" => {
                Ok(javascript(CLOUDFLARE_EMAIL_SOURCE))
            }
            "dorun" if specifier.as_str() == commonjs::RUNTIME_SPECIFIER => {
                Ok(javascript(commonjs::RUNTIME_SOURCE))
            }
            "dorun" if specifier.as_str() == ENTRY_SPECIFIER => self
                .graph
                .entry_source()
                .map(|s| javascript(&s))
                .map_err(JsErrorBox::generic),
            UNRESOLVED_SCHEME => {
                let query: HashMap<String, String> =
                    specifier.query_pairs().into_owned().collect();
                Err(JsErrorBox::generic(format!(
                    "{}cannot resolve import \"{}\": {}",
                    at(),
                    query.get("specifier").map(String::as_str).unwrap_or("?"),
                    query.get("reason").map(String::as_str).unwrap_or("not found"),
                )))
            }
            "file" if commonjs::parse_facade_url(specifier).is_some() => {
                let (file, names) = commonjs::parse_facade_url(specifier).expect("checked");
                self.graph
                    .facade_source(&file, names)
                    .map(|source| javascript(&source))
                    .map_err(|e| JsErrorBox::generic(format!("{}{e}", at())))
            }
            "file" => {
                let path = specifier
                    .to_file_path()
                    .map_err(|_| JsErrorBox::generic(format!("bad file URL {specifier}")))?;
                let prepared = self.graph.prepare(specifier, &path).map_err(|e| {
                    let importer = at();
                    let importer = importer.trim_end_matches(": ");
                    if importer.is_empty() {
                        JsErrorBox::generic(e)
                    } else {
                        JsErrorBox::generic(format!("{e}\n    (imported at {importer})"))
                    }
                })?;
                match (prepared, requested) {
                    (Prepared::Json(text), RequestedModuleType::Json) => Ok(ModuleSource::new(
                        ModuleType::Json,
                        ModuleSourceCode::String(text.to_string().into()),
                        specifier,
                        None,
                    )),
                    // Bundlers let `import data from "./x.json"` work without attributes.
                    (Prepared::Json(text), _) => Ok(javascript(&format!("export default {text};\n"))),
                    (Prepared::JavaScript(code), _) => Ok(javascript(&code)),
                    (Prepared::CommonJs(file), _) => Ok(javascript(
                        &self.graph.registration_source(specifier, &path, &file),
                    )),
                }
            }
            "node" => {
                let from_builtin = referrer.is_some_and(|r| r.specifier.scheme() == "node");
                node_compat::load(specifier, &self.graph.spec, from_builtin)
                    .map(|source| javascript(&source))
                    .map_err(|e| JsErrorBox::generic(format!("{}{e}", at())))
            }
            _ => Err(JsErrorBox::generic(format!(
                "{}cannot import \"{specifier}\": only local files, npm packages, node: built-ins, cloudflare:workers, cloudflare:workflows, cloudflare:sockets and cloudflare:email can be imported",
                at()
            ))),
        }
    }
}

impl ModuleLoader for WorkerModuleLoader {
    fn resolve(
        &self,
        specifier: &str,
        referrer: &str,
        _kind: ResolutionKind,
    ) -> ModuleResolveResponse {
        match self.graph.resolve(specifier, referrer) {
            Ok(url) => Ok(url),
            // Defer the error to `load`, which knows the importing line and column.
            Err(reason) => {
                let mut url = Url::parse(&format!("{UNRESOLVED_SCHEME}:///")).expect("valid");
                url.query_pairs_mut()
                    .append_pair("specifier", specifier)
                    .append_pair("referrer", referrer)
                    .append_pair("reason", &reason);
                Ok(url)
            }
        }
    }

    fn load(
        &self,
        specifier: &ModuleSpecifier,
        referrer: Option<&ModuleLoadReferrer>,
        options: ModuleLoadOptions,
    ) -> ModuleLoadResponse {
        ModuleLoadResponse::Sync(self.load_sync(
            specifier,
            referrer,
            &options.requested_module_type,
        ))
    }

    fn get_source_map(&self, file_name: &str) -> Option<Cow<'_, [u8]>> {
        self.graph
            .source_maps
            .lock()
            .unwrap()
            .get(file_name)
            .map(|map| Cow::Owned(map.to_vec()))
    }
}
