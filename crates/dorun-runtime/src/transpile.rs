//! TypeScript to JavaScript, by deno_ast (swc): types are stripped, nothing is checked.
//! deno_ast is the transpiler deno itself ships, kept current with TypeScript syntax.

use deno_ast::{
    EmitOptions, MediaType, ParseParams, SourceMapOption, TranspileModuleOptions, TranspileOptions,
};
use url::Url;

/// JavaScript emitted for a TypeScript module, with its source map back to the original.
pub struct Transpiled {
    pub code: String,
    pub source_map: Option<String>,
}

/// Parses and transpiles `source`. Errors carry `file:line:column`.
pub fn typescript(
    specifier: &Url,
    source: String,
    media_type: MediaType,
) -> Result<Transpiled, String> {
    let parsed = deno_ast::parse_module(ParseParams {
        specifier: specifier.clone(),
        text: source.into(),
        media_type,
        capture_tokens: false,
        scope_analysis: false,
        maybe_syntax: None,
    })
    .map_err(|diagnostic| describe_parse_error(specifier, &diagnostic))?;
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
        .map_err(|e| format!("{}: cannot transpile: {e}", display_path(specifier)))?
        .into_source();
    Ok(Transpiled {
        code: emitted.text,
        source_map: emitted.source_map,
    })
}

/// Checks JavaScript syntax with the same parser, so errors read the same as for TypeScript.
pub fn check_javascript(specifier: &Url, source: &str) -> Result<(), String> {
    deno_ast::parse_module(ParseParams {
        specifier: specifier.clone(),
        text: source.into(),
        media_type: MediaType::JavaScript,
        capture_tokens: false,
        scope_analysis: false,
        maybe_syntax: None,
    })
    .map(|_| ())
    .map_err(|diagnostic| describe_parse_error(specifier, &diagnostic))
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
