//! Workers KV (`kv_namespaces`): the API against what wrangler dev answers
//! (tests/fixtures/kv-reference), data that survives restarts and kill -9, one namespace
//! shared by a Worker, its objects and another worker binding the same id, files a person
//! can open, and `--ephemeral`.

use std::time::Duration;

use serde_json::json;

use crate::harness::{fixture, scratch_dir, Server};

fn app() -> std::path::PathBuf {
    fixture("kv").join("app/wrangler.toml")
}

fn reader() -> String {
    fixture("kv")
        .join("reader/wrangler.toml")
        .to_str()
        .unwrap()
        .to_string()
}

fn start(data: &std::path::Path) -> Server {
    let reader = reader();
    Server::start(&app(), &["--data-dir", data.to_str().unwrap(), &reader])
}

#[tokio::test]
async fn values_persist_in_a_file_per_namespace_and_are_shared_by_id() {
    let data = scratch_dir("kv-persist");
    let mut server = start(&data);
    assert_eq!(
        server.get("/put?key=greeting&value=hello").await.text(),
        "stored"
    );
    assert_eq!(
        server
            .get("/put?ns=local&key=greeting&value=local")
            .await
            .text(),
        "stored"
    );
    // A large value streamed in, byte for byte.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let reply = server
        .request(http::Method::PUT, "/put?key=big", &[], big.clone().into())
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(server.get("/get?key=big").await.body.to_vec(), big);
    // Namespaces are separate; a Durable Object and another worker see the same one.
    assert_eq!(server.get("/get?key=greeting").await.text(), "hello");
    assert_eq!(
        server.get("/get?ns=local&key=greeting").await.text(),
        "local"
    );
    assert_eq!(server.get("/count?name=a").await.text(), "1");
    assert_eq!(server.get("/count?name=a").await.text(), "2");
    assert_eq!(
        server.get("/other-worker?key=count:a").await.text(),
        "2",
        "{}",
        server.logs()
    );
    // The other worker binds the same D1 database and R2 bucket by name: it sees the
    // app's writes.
    assert_eq!(
        server.get("/d1put?key=k1&value=from-d1").await.text(),
        "stored"
    );
    assert_eq!(
        server.get("/r2put?key=k2&value=from-r2").await.text(),
        "stored"
    );
    assert_eq!(
        server.get("/other-worker?from=d1&key=k1").await.text(),
        "from-d1"
    );
    assert_eq!(
        server.get("/other-worker?from=r2&key=k2").await.text(),
        "from-r2"
    );
    let listed = server.get("/list?prefix=count:").await.json();
    assert_eq!(
        listed,
        json!({"keys": [{"name": "count:a"}], "list_complete": true, "cacheStatus": null})
    );
    // One SQLite file per namespace, readable with plain SQL.
    let file = data.join("kv/0f2ac74b498b48028cb68387c421e279.sqlite");
    assert!(file.is_file(), "{}", file.display());
    assert!(data.join("kv/LOCAL.sqlite").is_file());
    server.terminate();
    let connection = rusqlite::Connection::open(&file).unwrap();
    let value: Vec<u8> = connection
        .query_row("SELECT value FROM kv WHERE key = 'greeting'", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(value, b"hello");
    let metadata: String = connection
        .query_row("SELECT metadata FROM kv WHERE key = 'big'", [], |row| {
            row.get(0)
        })
        .unwrap();
    assert_eq!(metadata, r#"{"via":"stream"}"#);
    drop(connection);
    // After a restart everything is there; a delete sticks.
    let server = start(&data);
    assert_eq!(server.get("/get?key=greeting").await.text(), "hello");
    assert_eq!(server.get("/get?key=big").await.body.len(), big.len());
    assert_eq!(server.get("/delete?key=greeting").await.text(), "deleted");
    assert_eq!(server.get("/get?key=greeting").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_put() {
    let data = scratch_dir("kv-kill9");
    let mut server = start(&data);
    let acknowledged = crate::harness::write_until_kill9(
        &mut server,
        8,
        Duration::from_millis(1500),
        |base, w, n| crate::harness::get_request(format!("{base}/put?key=w{w}&value={n}")),
    )
    .await;
    let acknowledged: Vec<(String, u64)> = acknowledged
        .iter()
        .enumerate()
        .map(|(w, ns)| (format!("w{w}"), *ns.last().unwrap()))
        .collect();
    let server = start(&data);
    for (key, value) in acknowledged {
        let stored: u64 = server
            .get(&format!("/get?key={key}"))
            .await
            .text()
            .parse()
            .unwrap();
        assert!(
            stored >= value,
            "{key}: a put of {value} was acknowledged but after kill -9 the value is {stored}"
        );
    }
}

#[tokio::test]
async fn ephemeral_namespaces_start_empty_and_leave_nothing_behind() {
    let reader = reader();
    let server = Server::start(&app(), &["--ephemeral", &reader]);
    assert_eq!(server.get("/put?key=x&value=1").await.text(), "stored");
    assert_eq!(server.get("/get?key=x").await.text(), "1");
    drop(server);
    let server = Server::start(&app(), &["--ephemeral", &reader]);
    assert_eq!(server.get("/get?key=x").await.status, 404);
}

/// Steps where dorun differs on purpose, and why (the README says so too).
const DELIBERATE: &[(&str, &str)] = &[(
    "bulk.get.non-string-keys",
    "get([123, \"b1\"]) reads key \"123\" (keys are strings); Miniflare drops the number",
)];

/// The same worker on dorun answers every step of tests/fixtures/kv-reference as
/// wrangler dev 4.86.0 did, except the [`DELIBERATE`] differences.
#[tokio::test]
async fn the_api_answers_as_wrangler_dev_does() {
    crate::reference::assert_matches_wrangler_dev("kv-reference", DELIBERATE).await;
}
