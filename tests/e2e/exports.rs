//! The declarative `exports` block and `ctx.exports` (issue 12, point 5).

use serde_json::json;

use crate::harness::{fixture, run_dorun, scratch_dir, Server};

/// A copy of the fixture whose config declares `exports`.
fn project(tag: &str, exports: serde_json::Value) -> std::path::PathBuf {
    let dir = scratch_dir(tag);
    std::fs::copy(fixture("exports").join("index.js"), dir.join("index.js")).unwrap();
    let config = json!({
        "name": "exports",
        "main": "index.js",
        "compatibility_date": "2026-01-01",
        "exports": exports,
    });
    let path = dir.join("wrangler.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

#[tokio::test]
async fn exported_classes_get_storage_and_ctx_exports_reaches_them() {
    let data = scratch_dir("exports-ctx");
    let server = Server::start(
        &fixture("exports").join("wrangler.jsonc"),
        &["--data-dir", data.to_str().unwrap()],
    );
    let reply = server.get("/count").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    assert_eq!(reply.json(), json!({"count": 1, "sql": 42}));
    assert_eq!(server.get("/count").await.json()["count"], json!(2));
    let greet = server.get("/greet").await.json();
    assert_eq!(greet["greeting"], json!("Hello, World!"));
    assert_eq!(greet["fetched"], json!("greeter saw /path"));
    assert_eq!(greet["keys"], json!(["Counter", "Greeter"]));
    assert!(
        !server.logs().contains("unknown key 'exports'"),
        "{}",
        server.logs()
    );
}

#[tokio::test]
async fn a_renamed_export_keeps_its_data_and_a_deleted_one_loses_it() {
    let data = scratch_dir("exports-data");
    let data = data.to_str().unwrap();
    let first = project(
        "exports-v1",
        json!({"Counter": {"type": "durable-object", "storage": "sqlite"}}),
    );
    {
        let server = Server::start(&first, &["--data-dir", data]);
        assert_eq!(server.get("/count").await.json()["count"], json!(1));
    }
    let renamed = project(
        "exports-v2",
        json!({
            "Counter": {"type": "durable-object", "state": "renamed", "renamed_to": "Renamed"},
            "Renamed": {"type": "durable-object", "storage": "sqlite"},
        }),
    );
    {
        let server = Server::start(&renamed, &["--data-dir", data]);
        let reply = server.get("/count?class=Renamed").await;
        assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
        assert_eq!(
            reply.json()["count"],
            json!(2),
            "the data moved with the rename"
        );
    }
    let deleted = project(
        "exports-v3",
        json!({
            "Renamed": {"type": "durable-object", "state": "deleted"},
            "Counter": {"type": "durable-object", "storage": "sqlite"},
        }),
    );
    let server = Server::start(&deleted, &["--data-dir", data]);
    assert_eq!(
        server.get("/count").await.json()["count"],
        json!(1),
        "a fresh class"
    );
}

#[test]
fn a_bad_exports_block_is_refused_naming_the_key() {
    let bad = project(
        "exports-bad",
        json!({"Counter": {"type": "durable-object", "storage": "postgres"}}),
    );
    let (ok, _stdout, stderr) = run_dorun(&["check", bad.to_str().unwrap()], None);
    assert!(!ok, "{stderr}");
    assert!(stderr.contains("exports.Counter.storage"), "{stderr}");
}
