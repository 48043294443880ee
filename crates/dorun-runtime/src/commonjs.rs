//! CommonJS modules, run the way wrangler's bundler (esbuild) runs them in an ES module Worker.
//!
//! V8 only knows ES modules, so each CommonJS file becomes two of them:
//!
//! - its **registration module**, at the file's own URL (so stack traces name the file): the
//!   file's code wrapped in `function (exports, require, module, __filename, __dirname)`
//!   and handed to the `dorun:commonjs` runtime (`js/commonjs.js`) without running it. Every
//!   `require("literal")` in the file was found by parsing and resolved ahead of time; the
//!   registration module imports those targets (CommonJS targets as registration modules
//!   too, so nothing runs early) and passes a table `specifier -> target` along. `require()`
//!   is then synchronous: it runs a CommonJS target's function on first use (cycles see
//!   partial exports, as in Node) or returns an ES module's namespace.
//! - its **facade**, which ES modules importing the file get (`?dorun-esm-facade`): it runs
//!   the file and exports `module.exports` as `default` (`exports.default` when
//!   `__esModule` is set, as esbuild does) and named exports. The names are those the
//!   static analysis finds (deno_ast's port of cjs-module-lexer, re-exports followed) plus
//!   the names the importing module asks for, so `import { x } from "cjs"` works whenever
//!   `module.exports.x` exists at runtime, as in a bundle.
//!
//! The loader decides which files are CommonJS: `.cjs` and `.cts` files, and `.js` files
//! outside a `"type": "module"` package that contain no `import`/`export` declarations.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use deno_ast::swc::ast::{
    CallExpr, Callee, Expr, ImportSpecifier, Lit, MemberProp, ModuleDecl, ModuleItem,
};
use deno_ast::swc::ecma_visit::{noop_visit_type, Visit, VisitWith};
use deno_ast::{ParsedSource, ProgramRef};
use url::Url;

/// The specifier of the CommonJS runtime module.
pub const RUNTIME_SPECIFIER: &str = "dorun:commonjs";
/// The CommonJS runtime: module records and `require`.
pub const RUNTIME_SOURCE: &str = include_str!("js/commonjs.js");
/// Prefix of the internal imports of registration modules (`dorun-cjs:file:///…`).
pub const REGISTRATION_PREFIX: &str = "dorun-cjs:";
/// The query parameter that marks a facade URL; its values are the requested names.
const FACADE_QUERY: &str = "dorun-esm-facade";

/// A CommonJS file, parsed and analysed.
#[derive(Debug)]
pub struct CommonJsFile {
    /// The file's JavaScript (transpiled for `.cts`).
    pub code: String,
    /// Names the static analysis finds on `module.exports`.
    pub exports: Vec<String>,
    /// Specifiers whose exports this file re-exports (`module.exports = require("./x")`).
    pub reexports: Vec<String>,
    /// Specifiers of `require("literal")` calls, in source order, without duplicates.
    pub requires: Vec<String>,
    /// Specifiers of `require.resolve("literal")` calls.
    pub resolves: Vec<String>,
}

impl CommonJsFile {
    pub fn analyze(parsed: &ParsedSource, code: String) -> Self {
        let analysis = parsed.analyze_cjs();
        let mut calls = RequireCalls::default();
        match parsed.program_ref() {
            ProgramRef::Module(module) => module.visit_with(&mut calls),
            ProgramRef::Script(script) => script.visit_with(&mut calls),
        }
        Self {
            code,
            exports: analysis.exports,
            reexports: analysis.reexports,
            requires: calls.requires,
            resolves: calls.resolves,
        }
    }
}

#[derive(Default)]
struct RequireCalls {
    requires: Vec<String>,
    resolves: Vec<String>,
}

impl Visit for RequireCalls {
    noop_visit_type!();

    fn visit_call_expr(&mut self, call: &CallExpr) {
        if let Callee::Expr(callee) = &call.callee {
            let list = match &**callee {
                Expr::Ident(ident) if ident.sym == *"require" => Some(&mut self.requires),
                Expr::Member(member)
                    if member.obj.as_ident().is_some_and(|i| i.sym == *"require")
                        && matches!(&member.prop, MemberProp::Ident(p) if p.sym == *"resolve") =>
                {
                    Some(&mut self.resolves)
                }
                _ => None,
            };
            if let (Some(list), Some(specifier)) = (list, literal_argument(call)) {
                if !list.contains(&specifier) {
                    list.push(specifier);
                }
            }
        }
        call.visit_children_with(self);
    }
}

/// The first argument of a call when it is a string literal or a template without
/// substitutions.
fn literal_argument(call: &CallExpr) -> Option<String> {
    let argument = call.args.first().filter(|a| a.spread.is_none())?;
    match &*argument.expr {
        Expr::Lit(Lit::Str(text)) => text.value.as_str().map(str::to_string),
        Expr::Tpl(template) if template.exprs.is_empty() && template.quasis.len() == 1 => template
            .quasis[0]
            .cooked
            .as_ref()
            .and_then(|c| c.as_str())
            .map(str::to_string),
        _ => None,
    }
}

/// The names an ES module imports from each specifier (`import { a, b as c }`, `export { a }
/// from`, `import d from` as `default`). Type-only imports are left out.
pub fn imported_names(parsed: &ParsedSource) -> HashMap<String, BTreeSet<String>> {
    let mut names: HashMap<String, BTreeSet<String>> = HashMap::new();
    let ProgramRef::Module(module) = parsed.program_ref() else {
        return names;
    };
    for item in &module.body {
        let ModuleItem::ModuleDecl(declaration) = item else {
            continue;
        };
        match declaration {
            ModuleDecl::Import(import) if !import.type_only => {
                let Some(source) = import.src.value.as_str() else {
                    continue;
                };
                let entry = names.entry(source.to_string()).or_default();
                for specifier in &import.specifiers {
                    match specifier {
                        ImportSpecifier::Named(named) if !named.is_type_only => {
                            let name = match &named.imported {
                                Some(imported) => imported.atom().to_string(),
                                None => named.local.sym.to_string(),
                            };
                            entry.insert(name);
                        }
                        ImportSpecifier::Default(_) => {
                            entry.insert("default".to_string());
                        }
                        _ => {}
                    }
                }
            }
            ModuleDecl::ExportNamed(export) if !export.type_only => {
                let Some(source) = export.src.as_ref().and_then(|s| s.value.as_str()) else {
                    continue;
                };
                let entry = names.entry(source.to_string()).or_default();
                for specifier in &export.specifiers {
                    if let deno_ast::swc::ast::ExportSpecifier::Named(named) = specifier {
                        if !named.is_type_only {
                            entry.insert(named.orig.atom().to_string());
                        }
                    }
                }
            }
            _ => {}
        }
    }
    names
}

/// What a `require(specifier)` in a CommonJS file reaches, decided when the file loads.
#[derive(Debug)]
pub enum RequireTarget {
    /// Another CommonJS file: runs on first `require`.
    CommonJs { url: Url, path: PathBuf },
    /// An ES module: `require` returns its namespace (with `__esModule`, as esbuild does).
    EsModule { url: Url, path: PathBuf },
    /// JSON, Text, Data or CompiledWasm: `require` returns the value.
    Value { url: Url, path: PathBuf },
    /// A Node.js built-in module that can be imported (`node:…`).
    Builtin { specifier: String },
    /// Only `require.resolve` uses it: the path.
    Path { path: PathBuf },
    /// Cannot be required; `require` throws with this reason.
    Missing { reason: String },
}

fn literal(text: &str) -> String {
    serde_json::to_string(text).expect("strings serialize")
}

fn path_literal(path: &Path) -> String {
    literal(&path.to_string_lossy())
}

/// The registration module of a CommonJS file. Everything before the file's code is on its
/// first line, so line numbers in stack traces stay the file's own.
pub fn registration_source(
    url: &Url,
    path: &Path,
    file: &CommonJsFile,
    targets: &[(String, RequireTarget)],
) -> String {
    let mut head = format!(
        "import {{ define as __dorun_define }} from {};",
        literal(RUNTIME_SPECIFIER)
    );
    let mut table = Vec::new();
    for (index, (specifier, target)) in targets.iter().enumerate() {
        let entry = match target {
            RequireTarget::CommonJs { url, path } => {
                head.push_str(&format!(
                    " import {};",
                    literal(&format!("{REGISTRATION_PREFIX}{url}"))
                ));
                format!(
                    "{{ kind: \"commonjs\", url: {}, path: {} }}",
                    literal(url.as_str()),
                    path_literal(path)
                )
            }
            RequireTarget::EsModule { url, path } | RequireTarget::Value { url, path } => {
                head.push_str(&format!(
                    " import * as __dorun_required_{index} from {};",
                    literal(url.as_str())
                ));
                let kind = if matches!(target, RequireTarget::Value { .. }) {
                    "value"
                } else {
                    "module"
                };
                format!(
                    "{{ kind: \"{kind}\", namespace: __dorun_required_{index}, path: {} }}",
                    path_literal(path)
                )
            }
            RequireTarget::Builtin { specifier: builtin } => {
                head.push_str(&format!(
                    " import * as __dorun_required_{index} from {};",
                    literal(builtin)
                ));
                format!(
                    "{{ kind: \"builtin\", namespace: __dorun_required_{index}, path: {} }}",
                    literal(specifier)
                )
            }
            RequireTarget::Path { path } => {
                format!("{{ kind: \"path\", path: {} }}", path_literal(path))
            }
            RequireTarget::Missing { reason } => {
                format!("{{ kind: \"missing\", reason: {} }}", literal(reason))
            }
        };
        table.push(format!("{}: {entry}", literal(specifier)));
    }
    let mut code = file.code.strip_prefix('\u{feff}').unwrap_or(&file.code);
    let hashbang = code.starts_with("#!");
    if hashbang {
        code = &code[2..];
    }
    format!(
        "{head} __dorun_define({}, {}, {{ {} }}, function (exports, require, module, __filename, __dirname) {{{}{code}\n}});\n",
        literal(url.as_str()),
        path_literal(path),
        table.join(", "),
        if hashbang { "//" } else { "" },
    )
}

/// The URL ES modules import a CommonJS file by, asking for `names`.
pub fn facade_url(url: &Url, names: &BTreeSet<String>) -> Url {
    let mut facade = url.clone();
    {
        let mut query = facade.query_pairs_mut();
        query.append_key_only(FACADE_QUERY);
        for name in names {
            query.append_pair(FACADE_QUERY, name);
        }
    }
    facade
}

/// For a facade URL: the CommonJS file's URL and the names asked for.
pub fn parse_facade_url(url: &Url) -> Option<(Url, BTreeSet<String>)> {
    let mut marked = false;
    let mut names = BTreeSet::new();
    for (key, value) in url.query_pairs() {
        if key != FACADE_QUERY {
            return None;
        }
        marked = true;
        if !value.is_empty() {
            names.insert(value.into_owned());
        }
    }
    if !marked {
        return None;
    }
    let mut file = url.clone();
    file.set_query(None);
    Some((file, names))
}

/// The facade module: runs the file and exports what ES modules see of it.
pub fn facade_source(url: &Url, names: &BTreeSet<String>) -> String {
    let mut source = format!(
        "import {{ load as __dorun_load }} from {};\nimport {};\nconst __dorun_exports = __dorun_load({});\nexport default __dorun_exports != null && __dorun_exports.__esModule ? __dorun_exports.default : __dorun_exports;\n",
        literal(RUNTIME_SPECIFIER),
        literal(&format!("{REGISTRATION_PREFIX}{url}")),
        literal(url.as_str()),
    );
    for (index, name) in names.iter().filter(|n| *n != "default").enumerate() {
        source.push_str(&format!(
            "const __dorun_{index} = __dorun_exports?.[{name}];\nexport {{ __dorun_{index} as {name} }};\n",
            name = literal(name)
        ));
    }
    source
}

#[cfg(test)]
mod tests {
    use super::*;
    use deno_ast::{MediaType, ParseParams};

    fn parse(source: &str, media_type: MediaType) -> ParsedSource {
        deno_ast::parse_program(ParseParams {
            specifier: Url::parse("file:///x.js").unwrap(),
            text: source.into(),
            media_type,
            capture_tokens: false,
            scope_analysis: false,
            maybe_syntax: None,
        })
        .unwrap()
    }

    #[test]
    fn require_calls_with_literals_are_found_once_each() {
        let parsed = parse(
            "const a = require('./a'); if (x) require(`b`); require('./a'); require(name); const p = require.resolve('./c');",
            MediaType::JavaScript,
        );
        let file = CommonJsFile::analyze(&parsed, String::new());
        assert_eq!(file.requires, vec!["./a", "b"]);
        assert_eq!(file.resolves, vec!["./c"]);
    }

    #[test]
    fn exports_and_reexports_come_from_the_cjs_analysis() {
        let parsed = parse(
            "exports.a = 1; module.exports.b = 2; Object.defineProperty(exports, 'c', { value: 3 });",
            MediaType::JavaScript,
        );
        let file = CommonJsFile::analyze(&parsed, String::new());
        assert_eq!(file.exports, vec!["a", "b", "c"]);
        let parsed = parse(
            "module.exports = require('./other');",
            MediaType::JavaScript,
        );
        assert_eq!(
            CommonJsFile::analyze(&parsed, String::new()).reexports,
            vec!["./other"]
        );
    }

    #[test]
    fn imported_names_skip_types_and_namespaces() {
        let parsed = parse(
            "import d, { a, b as c, type T } from 'p'; import * as ns from 'q'; export { e } from 'p'; import type { U } from 'r';",
            MediaType::TypeScript,
        );
        let names = imported_names(&parsed);
        let p: Vec<_> = names["p"].iter().map(String::as_str).collect();
        assert_eq!(p, vec!["a", "b", "default", "e"]);
        assert!(names["q"].is_empty());
        assert!(!names.contains_key("r"));
    }

    #[test]
    fn facade_urls_round_trip_their_names() {
        let url = Url::parse("file:///p/index.js").unwrap();
        let names: BTreeSet<String> = ["a".to_string(), "b c".to_string()].into();
        let facade = facade_url(&url, &names);
        assert_eq!(parse_facade_url(&facade), Some((url.clone(), names)));
        assert_eq!(parse_facade_url(&url), None);
        let empty = facade_url(&url, &BTreeSet::new());
        assert_eq!(parse_facade_url(&empty), Some((url, BTreeSet::new())));
    }
}
