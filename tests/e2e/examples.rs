//! The examples in examples/ work as their READMEs say.

use serde_json::json;

use crate::harness::{example, scratch_dir, Server};

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
    install_npm_dependencies(&dir);
    let server = Server::start(&dir.join("wrangler.jsonc"), &[]);
    assert_eq!(server.get("/").await.text(), "hono on dorun\n");
    let hello = server.get("/hello/ada").await;
    assert_eq!(
        hello.json(),
        json!({"hello": "ada", "app": "hono on dorun"})
    );
    let content_type = hello.headers.get("content-type").unwrap().to_str().unwrap();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let sum = server
        .request(
            http::Method::POST,
            "/sum",
            &[("content-type", "application/json")],
            "[1,2,3.5]".into(),
        )
        .await;
    assert_eq!(sum.json(), json!({"sum": 6.5}));
}

/// Runs the example's install step (`npm ci`) when its node_modules are missing.
fn install_npm_dependencies(dir: &std::path::Path) {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL.lock().unwrap();
    if dir.join("node_modules/.package-lock.json").exists() {
        return;
    }
    let status = std::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(dir)
        .status()
        .expect("npm is needed to install the example's dependencies");
    assert!(status.success(), "npm ci --prefix {} failed", dir.display());
}

async fn exercise_counter(server: &Server) {
    assert_eq!(
        server.post("/card-1/increment", "").await.json(),
        json!({"value": 1})
    );
    assert_eq!(
        server.post("/card-1/increment", "").await.json(),
        json!({"value": 2})
    );
    assert_eq!(
        server.post("/card-1/decrement", "").await.json(),
        json!({"value": 1})
    );
    assert_eq!(
        server.get("/card-1/value").await.json(),
        json!({"value": 1})
    );
    assert_eq!(
        server.get("/card-2/value").await.json(),
        json!({"value": 0}),
        "counters are isolated"
    );
}

#[tokio::test]
async fn counter_example_plain_js() {
    let data = scratch_dir("counter-js");
    let config = example("counter/js").join("wrangler.toml");
    let mut server = Server::start(&config, &["--data-dir", data.to_str().unwrap()]);
    exercise_counter(&server).await;
    assert!(server.terminate().success());
    let server = Server::start(&config, &["--data-dir", data.to_str().unwrap()]);
    assert_eq!(
        server.get("/card-1/value").await.json(),
        json!({"value": 1}),
        "persisted"
    );
}

#[tokio::test]
async fn counter_example_hono_typescript() {
    let dir = example("counter/hono");
    install_npm_dependencies(&dir);
    let data = scratch_dir("counter-hono");
    let server = Server::start(
        &dir.join("wrangler.toml"),
        &["--data-dir", data.to_str().unwrap()],
    );
    exercise_counter(&server).await;
}
