//! TypeScript to JavaScript, by deno_ast (swc): types are stripped, nothing is checked.
//! deno_ast is the transpiler deno itself ships, kept current with TypeScript syntax.

use deno_ast::{
    EmitOptions, MediaType, ParseParams, ParsedSource, SourceMapOption, TranspileModuleOptions,
    TranspileOptions,
};
use url::Url;

/// JavaScript emitted for a TypeScript module, with its source map back to the original.
pub struct Transpiled {
    pub code: String,
    pub source_map: Option<String>,
}

/// How to parse a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// An ES module.
    Module,
    /// A script (CommonJS): `import`/`export` are syntax errors.
    Script,
    /// Either; [`ParsedSource::compute_is_script`] says which it was.
    Detect,
}

/// Parses `source`. Errors carry `file:line:column`.
pub fn parse(
    specifier: &Url,
    source: String,
    media_type: MediaType,
    goal: Goal,
) -> Result<ParsedSource, String> {
    let params = ParseParams {
        specifier: specifier.clone(),
        text: source.into(),
        media_type,
        capture_tokens: false,
        scope_analysis: false,
        maybe_syntax: None,
    };
    match goal {
        Goal::Module => deno_ast::parse_module(params),
        Goal::Script => deno_ast::parse_script(params),
        Goal::Detect => deno_ast::parse_program(params),
    }
    .map_err(|diagnostic| describe_parse_error(specifier, &diagnostic))
}

/// Transpiles a parsed TypeScript (or JSX) file.
pub fn emit(parsed: ParsedSource) -> Result<Transpiled, String> {
    let specifier = parsed.specifier().clone();
    let emitted = parsed
        .transpile(
            &TranspileOptions {
                // Workers code uses TC39 decorators (the Agents SDK's `@callable()`), which V8
                // does not run yet: lowered as esbuild lowers them for wrangler. Default JSX.
                decorators: deno_ast::DecoratorsTranspileOption::Ecma,
                ..Default::default()
            },
            &TranspileModuleOptions::default(),
            &EmitOptions {
                source_map: SourceMapOption::Separate,
                inline_sources: true,
                ..Default::default()
            },
        )
        .map_err(|e| format!("{}: cannot transpile: {e}", display_path(&specifier)))?
        .into_source();
    Ok(Transpiled {
        code: emitted.text,
        source_map: emitted.source_map,
    })
}

fn describe_parse_error(specifier: &Url, diagnostic: &deno_ast::ParseDiagnostic) -> String {
    let position = diagnostic.display_position();
    format!(
        "{}:{}:{}: SyntaxError: {}",
        display_path(specifier),
        position.line_number,
        position.column_number,
        diagnostic.kind().msg()
    )
}

/// A file URL as a path, anything else as is.
pub fn display_path(specifier: &Url) -> String {
    specifier
        .to_file_path()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| specifier.to_string())
}
