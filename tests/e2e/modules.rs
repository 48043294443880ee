//! Code loading: TypeScript, node_modules resolution, module rules.

use serde_json::json;

use crate::harness::{fixture, Server};

#[tokio::test]
async fn typescript_is_transpiled_with_extensionless_imports() {
    let server = Server::start(&fixture("typescript").join("wrangler.toml"), &[]);
    let body = server.get("/?name=ts").await.json();
    assert_eq!(
        body,
        json!({"text": "hello, ts", "length": 9, "color": "green"})
    );
}

#[tokio::test]
async fn typescript_decorators_run_as_tc39_decorators() {
    let server = Server::start(&fixture("typescript").join("wrangler.toml"), &[]);
    let reply = server.get("/decorated").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    assert_eq!(reply.json(), json!({"exposed": ["hello"], "hello": "hi"}));
}

#[tokio::test]
async fn typescript_exception_is_logged_at_the_typescript_line() {
    let server = Server::start(&fixture("typescript").join("wrangler.toml"), &[]);
    let reply = server.get("/throw").await;
    assert_eq!(reply.status, 500);
    assert!(
        server.wait_for_log("boom from TypeScript").await,
        "{}",
        server.logs()
    );
    let logs = server.logs();
    // `throw` is on line 6 of index.ts; the transpiled JS has it elsewhere.
    assert!(
        logs.contains("index.ts:6:"),
        "stack is mapped to the .ts source: {logs}"
    );
    assert_eq!(server.get("/").await.status, 200, "still serving");
}

#[tokio::test]
async fn bare_specifiers_resolve_through_exports_conditions_and_module_field() {
    let server = Server::start(&fixture("node-modules").join("wrangler.toml"), &[]);
    let body = server.get("/").await.json();
    assert_eq!(
        body,
        json!({
            "conditional": "workerd",
            "moduleField": "module",
            "feature": "feature-worker",
            "kit": "kit-browser",
        })
    );
}

#[tokio::test]
async fn module_rules_import_text_data_wasm_and_json() {
    let server = Server::start(&fixture("module-rules").join("wrangler.toml"), &[]);
    let body = server.get("/").await.json();
    assert_eq!(body["text"], json!("plain text file\n"));
    assert_eq!(
        body["notes"],
        json!("# Notes\nmarkdown via a custom rule\n")
    );
    assert_eq!(body["dataIsArrayBuffer"], json!(true));
    assert_eq!(body["data"], json!([0, 1, 2, 3, 254, 255]));
    assert_eq!(body["wasmIsModule"], json!(true));
    assert_eq!(body["sum"], json!(42));
    assert_eq!(body["config"], json!({"answer": 42, "list": ["a", "b"]}));
}
