//! The ES module loader for a Worker's code.
//!
//! Resolution follows what wrangler's bundler (esbuild) does for Workers: relative imports
//! with or without an extension, bare specifiers from `node_modules` through package.json
//! `exports` with the conditions `workerd`, `worker`, `browser`, `import`, `default`, then
//! the `module` and `main` fields. The resolver is oxc_resolver, a maintained
//! implementation of Node/webpack resolution, rather than a hand-written one.
//!
//! Loading classifies each file: wrangler module rules first (Text, Data, CompiledWasm,
//! ESModule), then by extension (`.ts`/`.mts`/`.tsx` transpiled, `.json` as a default
//! export, `.js`/`.mjs` as is). Every module is parsed once (shared by all isolate threads)
//! so syntax errors report `file:line:column`. An import that cannot be resolved is
//! reported with the importing file's `file:line:column` and the specifier.

use std::borrow::Cow;
use std::collections::HashMap;
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

use crate::node_compat;
use crate::spec::{ModuleRuleKind, WorkerSpec};
use crate::transpile;

/// The specifier of the synthetic module that imports the Worker's entry module and hands
/// its namespace to the runtime glue.
pub const ENTRY_SPECIFIER: &str = "dorun:entry";
const UNRESOLVED_SCHEME: &str = "dorun-unresolved";

/// Conditions for package.json `exports`, in wrangler's order.
const EXPORT_CONDITIONS: &[&str] = &["workerd", "worker", "browser", "import", "default"];

/// State shared by the loaders of every isolate of one Worker: resolution and parse results
/// are computed once.
pub struct ModuleGraph {
    spec: Arc<WorkerSpec>,
    base_dir: PathBuf,
    rules: Vec<(ModuleRuleKind, GlobSet)>,
    resolver: oxc_resolver::Resolver,
    prepared: Mutex<HashMap<Url, Prepared>>,
    source_maps: Mutex<HashMap<String, Arc<[u8]>>>,
    /// Bytes of Data and CompiledWasm modules, read by `op_dorun_module_bytes`.
    module_bytes: Mutex<HashMap<String, bytes::Bytes>>,
}

/// A module ready to hand to V8.
#[derive(Clone)]
enum Prepared {
    JavaScript(Arc<str>),
    Json(Arc<str>),
}

impl ModuleGraph {
    pub fn new(spec: Arc<WorkerSpec>) -> Result<Arc<Self>, String> {
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
                    .map_err(|e| format!("invalid module rule glob '{glob}': {e}"))?;
                set.add(glob);
            }
            rules.push((
                rule.kind,
                set.build()
                    .map_err(|e| format!("invalid module rule globs: {e}"))?,
            ));
        }
        let resolver = oxc_resolver::Resolver::new(oxc_resolver::ResolveOptions {
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
        Ok(Arc::new(Self {
            spec,
            base_dir,
            rules,
            resolver,
            prepared: Mutex::new(HashMap::new()),
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
        if specifier == "cloudflare:workers" || specifier == ENTRY_SPECIFIER {
            return Url::parse(specifier).map_err(|e| e.to_string());
        }
        if let Some(url) = node_compat::resolve_bare(specifier, &self.spec) {
            return Ok(url);
        }
        if let Ok(url) = Url::parse(specifier) {
            // Absolute URLs (file:, node:, https:, ...) are checked when loaded.
            return Ok(url);
        }
        let referrer_path = Url::parse(referrer)
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .ok_or_else(|| format!("cannot import \"{specifier}\" from {referrer}"))?;
        let dir = referrer_path.parent().unwrap_or(Path::new("/"));
        match self.resolver.resolve(dir, specifier) {
            Ok(resolution) => Url::from_file_path(resolution.path())
                .map_err(|_| format!("bad path {}", resolution.path().display())),
            Err(error) => {
                Err(node_compat::missing_bare_error(specifier).unwrap_or_else(|| error.to_string()))
            }
        }
    }

    /// Reads, classifies and (for TypeScript) transpiles a file, once per Worker.
    fn prepare(&self, url: &Url, path: &Path) -> Result<Prepared, String> {
        if let Some(prepared) = self.prepared.lock().unwrap().get(url) {
            return Ok(prepared.clone());
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
                        let out = transpile::typescript(url, source, media)?;
                        if let Some(map) = out.source_map {
                            self.source_maps
                                .lock()
                                .unwrap()
                                .insert(url.to_string(), map.into_bytes().into());
                        }
                        Prepared::JavaScript(out.code.into())
                    }
                    MediaType::JavaScript | MediaType::Mjs | MediaType::Unknown => {
                        transpile::check_javascript(url, &source)?;
                        Prepared::JavaScript(source.into())
                    }
                    MediaType::Cjs => {
                        return Err(format!(
                            "{display}: CommonJS modules are not supported; use an ES module"
                        ))
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

    fn entry_source(&self) -> Result<String, String> {
        let main = serde_json::to_string(self.main_url()?.as_str()).expect("strings serialize");
        Ok(format!(
            "{}import * as worker from {main};\nglobalThis[Symbol.for(\"dorun.start\")](worker);\n",
            node_compat::entry_prelude(&self.spec)
        ))
    }
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
                }
            }
            "node" => {
                let from_builtin = referrer.is_some_and(|r| r.specifier.scheme() == "node");
                node_compat::load(specifier, &self.graph.spec, from_builtin)
                    .map(|source| javascript(&source))
                    .map_err(|e| JsErrorBox::generic(format!("{}{e}", at())))
            }
            _ => Err(JsErrorBox::generic(format!(
                "{}cannot import \"{specifier}\": only local files, npm packages and cloudflare:workers can be imported",
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
