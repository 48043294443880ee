//! The examples in examples/ work as their READMEs say.

use serde_json::json;

use crate::harness::{example, Server};

#[tokio::test]
async fn hello_example_greets_and_echoes() {
    let server = Server::start(&example("hello").join("wrangler.toml"), &[]);
    assert_eq!(server.get("/").await.text(), "Hello from dorun!\n");
    assert_eq!(server.post("/echo", "ping").await.text(), "ping");
    assert_eq!(server.get("/nope").await.status, 404);
}

#[tokio::test]
async fn hono_typescript_example_runs_with_its_npm_dependency() {
    let dir = example("hono-ts");
    assert!(
        dir.join("node_modules/hono/package.json").exists(),
        "run `npm ci --prefix examples/hono-ts` first (the README and .ci/run do)"
    );
    let server = Server::start(&dir.join("wrangler.jsonc"), &[]);
    assert_eq!(server.get("/").await.text(), "hono on dorun\n");
    assert_eq!(
        server.get("/hello/ada").await.json(),
        json!({"hello": "ada", "app": "hono on dorun"})
    );
    let sum = server
        .request(http::Method::POST, "/sum", &[("content-type", "application/json")], "[1,2,3.5]".into())
        .await;
    assert_eq!(sum.json(), json!({"sum": 6.5}));
}
