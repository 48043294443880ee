//! Modules as wrangler's bundler resolves them: CommonJS files imported from ES modules, and
//! tsconfig.json `paths` / `baseUrl`.

use serde_json::json;

use crate::harness::{fixture, run_dorun, scratch_dir, Server};

#[tokio::test]
async fn commonjs_packages_and_files_import_as_a_bundle_would() {
    let server = Server::start(&fixture("commonjs").join("wrangler.toml"), &[]);
    let reply = server.get("/").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    let body = reply.json();
    // Default import is module.exports; named imports come from `exports.x =`.
    assert_eq!(body["legacyDefault"], json!(["VERSION", "greet"]));
    assert_eq!(body["greet"], json!("hello, cjs"));
    assert_eq!(body["VERSION"], json!("1.2.3"), "require of package.json");
    assert_eq!(body["shout"], json!("SUB!"), "a subpath file of a package");
    // `module.exports = { a, b }`.
    assert_eq!(body["literal"], json!({"a": "A", "b": "B"}));
    assert_eq!(body["a"], json!("A"));
    assert_eq!(body["b"], json!("B"));
    // `__esModule`: the default import is `exports.default`, as esbuild does.
    assert_eq!(body["interop"], json!("the default"));
    assert_eq!(body["named"], json!("named"));
    // `exports` conditions: `import` for ES modules, `require` for require().
    assert_eq!(body["dualImport"], json!("import condition"));
    assert_eq!(body["helper"], json!("helper subpath"));
    // `module.exports = function`.
    assert_eq!(body["add"], json!(5));
    assert_eq!(body["extra"], json!("extra"));
    // `module.exports = require("./impl")`: a namespace import sees the re-exported names.
    assert_eq!(
        body["reexported"],
        json!({"default": {"fromImpl": "re-exported", "other": 7}, "fromImpl": "re-exported", "other": 7})
    );
    // A name no static analysis finds is still importable when it exists at runtime.
    assert_eq!(body["hidden"], json!("found at runtime"));
    // require() of relative files, JSON, packages (one instance), the `require` condition.
    assert_eq!(
        body["requirer"],
        json!({
            "util": "util",
            "config": "json",
            "legacy": "hello, require",
            "dual": "require condition",
            "sameInstance": true,
        })
    );
    // A project .js file without ES module syntax is CommonJS.
    assert_eq!(body["double"], json!(42));
    let paths = &body["paths"];
    let dir = std::fs::canonicalize(fixture("commonjs").join("lib")).unwrap();
    assert_eq!(paths["dirname"], json!(dir.to_str().unwrap()));
    assert_eq!(
        paths["filename"],
        json!(dir.join("paths.cjs").to_str().unwrap())
    );
    assert_eq!(paths["moduleId"], paths["filename"]);
    assert_eq!(
        paths["resolved"],
        json!(dir.join("data.json").to_str().unwrap())
    );
    assert_eq!(paths["thisIsExports"], json!(true));
    assert_eq!(paths["sameObject"], json!(true));
    assert_eq!(paths["data"], json!({"answer": 42}));
    assert_eq!(
        paths["esm"],
        json!({"esModule": true, "value": "from esm", "default": "esm default"})
    );
    // A cycle: b sees a's exports as they were when a required b, as in Node.
    assert_eq!(
        body["cycle"],
        json!({
            "early": "a-early",
            "late": "a-late",
            "bSawOfA": {"early": "a-early", "late": null},
            "bLoaded": true,
        })
    );
}

#[tokio::test]
async fn require_failures_throw_at_call_time_naming_specifier_and_file() {
    let server = Server::start(&fixture("commonjs").join("wrangler.toml"), &[]);
    let reply = server.get("/errors").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    let body = reply.json();
    let failures = std::fs::canonicalize(fixture("commonjs").join("lib/failures.cjs")).unwrap();
    let failures = failures.to_str().unwrap();

    let missing = body["missing"]["message"].as_str().unwrap();
    assert!(missing.contains("'./does-not-exist'"), "{missing}");
    assert!(missing.contains(failures), "{missing}");
    assert_eq!(body["missing"]["code"], json!("MODULE_NOT_FOUND"));

    let dynamic = body["dynamic"]["message"].as_str().unwrap();
    assert!(dynamic.contains("'legacy-cjs'"), "{dynamic}");
    assert!(dynamic.contains(failures), "{dynamic}");
    assert!(dynamic.contains("string literal"), "{dynamic}");

    let builtin = body["builtin"]["message"].as_str().unwrap();
    assert!(builtin.contains("node:no-such-builtin"), "{builtin}");
    assert!(builtin.contains("not supported"), "{builtin}");

    // A try/catch around an optional dependency sees Node's error code.
    assert_eq!(body["optional"], json!("MODULE_NOT_FOUND"));
    // Stack traces keep the file's own line numbers.
    let stack = body["stack"].as_str().unwrap();
    assert!(stack.contains("failures.cjs:5:"), "{stack}");
}

#[tokio::test]
async fn tsconfig_paths_and_base_url_resolve_aliases() {
    let server = Server::start(&fixture("tsconfig-paths").join("wrangler.toml"), &[]);
    let reply = server.get("/").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    assert_eq!(
        reply.json(),
        json!({
            "middleware": "middleware via @/*",
            "VERSION": "1.0.0",
            "lib": "lib via an exact alias",
            "util": "util via baseUrl",
            "label": "paths",
        })
    );
}

#[test]
fn a_broken_tsconfig_is_reported_by_name() {
    let dir = scratch_dir("tsconfig");
    std::fs::write(
        dir.join("wrangler.toml"),
        "name = \"broken-tsconfig\"\nmain = \"index.ts\"\ncompatibility_date = \"2025-10-01\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("index.ts"),
        "export default { fetch() { return new Response(\"ok\"); } };\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("tsconfig.json"),
        "{ \"compilerOptions\": { \"paths\": ",
    )
    .unwrap();
    let config = dir.join("wrangler.toml");
    let (ok, stdout, stderr) = run_dorun(&["check", config.to_str().unwrap()], None);
    let output = format!("{stdout}{stderr}");
    assert!(!ok, "{output}");
    assert!(!output.contains("panicked"), "{output}");
    assert!(output.contains("tsconfig.json"), "{output}");
    let _ = std::fs::remove_dir_all(&dir);
}
