//! Durable Objects end to end: RPC and fetch through stubs, storage and SQL, gates,
//! eviction, persistence across restarts and kill -9, migrations.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::harness::{fixture, scratch_dir, Server};

fn objects_config() -> std::path::PathBuf {
    fixture("objects").join("wrangler.toml")
}

fn start(data_dir: &std::path::Path, extra: &[&str]) -> Server {
    let mut args = vec!["--data-dir", data_dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&objects_config(), &args)
}

#[tokio::test]
async fn rpc_and_storage_persist_across_a_clean_restart() {
    let data = scratch_dir("objects-restart");
    let mut server = start(&data, &[]);
    for expected in 1..=3 {
        assert_eq!(
            server.post("/increment/alice", "").await.json(),
            json!(expected)
        );
    }
    assert_eq!(server.post("/increment/bob", "").await.json(), json!(1));
    assert!(server.terminate().success());
    let server = start(&data, &[]);
    assert_eq!(server.get("/value/alice").await.json(), json!(3));
    assert_eq!(server.get("/value/bob").await.json(), json!(1));
    assert_eq!(server.get("/value/carol").await.json(), json!(0));
    // One SQLite file per object under <data-dir>/<worker>-<Class>/<id>.sqlite.
    let files: Vec<_> = std::fs::read_dir(data.join("objects-Counter"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".sqlite"))
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
}

#[tokio::test]
async fn rpc_carries_structured_values_and_properties() {
    let data = scratch_dir("objects-types");
    let server = start(&data, &[]);
    let reply = server.get("/types/t").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    assert_eq!(
        reply.json(),
        json!({
            "date": true, "map": true, "set": true, "big": true, "buffer": true,
            "typed": true, "nested": true, "error": true, "answer": 42
        })
    );
}

#[tokio::test]
async fn errors_cross_rpc_with_name_message_and_remote() {
    let data = scratch_dir("objects-errors");
    let server = start(&data, &[]);
    let reply = server.get("/errors/e").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    let body = reply.json();
    let id = body["counterId"].clone();
    assert_eq!(id.as_str().unwrap().len(), 64);
    assert_eq!(
        body["type"],
        json!({"error": {"name": "TypeError", "message": "bad type", "remote": true, "durableObjectId": id}})
    );
    assert_eq!(
        body["range"],
        json!({"error": {"name": "RangeError", "message": "out of range", "remote": true, "durableObjectId": id}})
    );
    assert_eq!(
        body["missing"],
        json!({"error": {"name": "TypeError", "message": "The RPC receiver does not implement the method \"noSuchMethod\".", "remote": true, "durableObjectId": id}})
    );
    assert_eq!(
        body["reserved"]["error"]["message"],
        json!("'alarm' is a reserved method and cannot be called over RPC.")
    );
    assert_eq!(
        body["fetchThrows"],
        json!({"error": {"name": "Error", "message": "fetch failed inside", "remote": true, "durableObjectId": id}})
    );
    let no_rpc = body["noRpc"]["error"]["message"].as_str().unwrap();
    assert!(
        no_rpc.starts_with("The receiving Durable Object does not support RPC"),
        "{no_rpc}"
    );
    assert_eq!(body["noRpcFetch"], json!("no-rpc fetch ok"));
}

#[tokio::test]
async fn ids_are_deterministic_and_validated() {
    let data = scratch_dir("objects-ids");
    let server = start(&data, &[]);
    let body = server.get("/ids").await.json();
    assert_eq!(body["equal"], json!(true));
    assert_eq!(body["hex"].as_str().unwrap().len(), 64);
    assert_eq!(body["name"], json!("alpha"));
    assert_eq!(body["uniqueName"], json!(null));
    assert_eq!(body["parsedEqual"], json!(true));
    assert_eq!(body["parsedName"], json!(null));
    assert_eq!(
        body["problems"],
        json!([
            "TypeError: Invalid Durable Object ID: must be 64 hex digits",
            "TypeError: Durable Object ID is not valid for this namespace."
        ])
    );
    assert_eq!(body["stubKeys"], json!(["id", "name"]));
    assert_eq!(body["stubName"], json!("alpha"));
    assert!(body["otherNamespace"]["error"].is_object(), "{body}");
}

#[tokio::test]
async fn storage_api_behaves_like_cloudflare() {
    let data = scratch_dir("objects-storage");
    let server = start(&data, &[]);
    let reply = server.get("/storage/s").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    let body = reply.json();
    assert_eq!(body["single"], json!(1));
    assert_eq!(body.get("missing"), None, "undefined is dropped by JSON");
    assert_eq!(body["many"], json!([["a/1", 1], ["a/3", "three"]]));
    assert_eq!(body["prefix"], json!(["a/1", "a/2", "a/3"]));
    assert_eq!(body["reverseLimit"], json!(["c", "b"]));
    assert_eq!(body["startAfter"], json!(["a/2", "a/3"]));
    assert_eq!(body["date"], json!(5));
    assert_eq!(body["bigint"], json!("3"));
    assert_eq!(body["deleted"], json!(true));
    assert_eq!(body["deletedAgain"], json!(false));
    assert_eq!(body["deletedMany"], json!(2));
    assert_eq!(
        body["errors"],
        json!([
            "TypeError: put() called with undefined value.",
            "TypeError: List limit must be positive.",
            "TypeError: list() cannot be called with both start and startAfter values.",
            "RangeError: Maximum number of key value pairs is 128. 129 pairs were provided."
        ])
    );
    assert_eq!(body["syncKv"], json!({"ok": true}));
    assert_eq!(body["syncKvSeenAsync"], json!({"ok": true}));
    assert_eq!(body["transactionResult"], json!("committed"));
    assert_eq!(body["transactionError"], json!("abort txn"));
    assert_eq!(body["afterTransactions"], json!([1, null, null]));
    assert_eq!(body["transactionSyncError"], json!("sync abort"));
    assert_eq!(body["transactionSync"], json!(null));
    assert_eq!(body["afterSync"], json!([null, 2]));
    assert_eq!(body["afterDeleteAll"], json!(0));
}

#[tokio::test]
async fn sql_api_cursors_values_and_refusals() {
    let data = scratch_dir("objects-sql");
    let server = start(&data, &[]);
    let reply = server.get("/sql/q").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    let body = reply.json();
    assert_eq!(body["inserted"], json!([{"id": 1}, {"id": 2}]));
    assert_eq!(body["rowsWritten"], json!(2));
    assert_eq!(body["columnNames"], json!(["id", "name"]));
    assert_eq!(body["first"], json!({"id": 1, "name": "ada"}));
    assert_eq!(body["rest"], json!([{"id": 2, "name": "bob"}]));
    assert_eq!(body["raw"], json!([[1, "ada"], [2, "bob"]]));
    assert_eq!(body["one"], json!({"name": "ada"}));
    assert_eq!(body["blob"], json!([1, 2]));
    let errors: Vec<String> = serde_json::from_value(body["errors"].clone()).unwrap();
    assert_eq!(
        errors[0],
        "Expected exactly one result from SQL query, but got multiple results."
    );
    assert_eq!(
        errors[1],
        "Expected exactly one result from SQL query, but got no results."
    );
    assert!(
        errors[2].contains("_cf_KV") && errors[2].contains("prohibited"),
        "{}",
        errors[2]
    );
    assert!(
        errors[3]
            .starts_with("To execute a transaction, please use the state.storage.transaction()"),
        "{}",
        errors[3]
    );
    assert_eq!(
        errors[4],
        "Wrong number of parameter bindings for SQL query."
    );
    assert!(errors[5].contains("syntax error"), "{}", errors[5]);
    assert_eq!(body["databaseSize"], json!(true));
}

#[tokio::test]
async fn stub_fetch_streams_bodies_to_and_from_the_object() {
    let data = scratch_dir("objects-fetch");
    let server = start(&data, &[]);
    let payload: Vec<u8> = (0..2_000_000).map(|i| (i % 253) as u8).collect();
    let reply = server.post("/fetch-echo/named", payload.clone()).await;
    assert_eq!(reply.status, 201, "{}", server.logs());
    assert_eq!(reply.headers["x-object-name"], "named");
    assert!(
        reply.body == payload,
        "body differs after passing through the object"
    );
}

#[tokio::test]
async fn input_gate_holds_events_during_block_concurrency_while() {
    let data = scratch_dir("objects-gate");
    let server = start(&data, &[]);
    let reply = server.get("/gate/g").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    let body = reply.json();
    assert_eq!(
        body["ready"],
        json!(true),
        "no event before the constructor's critical section ends"
    );
    // Across a timer await the second call ran in between ...
    assert_eq!(
        body["fast"],
        json!(["start slow", "start fast", "end fast"])
    );
    // ... but not across blockConcurrencyWhile.
    let log: Vec<String> = serde_json::from_value(body["log"].clone()).unwrap();
    let critical_start = log.iter().position(|e| e == "start critical").unwrap();
    assert_eq!(log[critical_start + 1], "end critical", "{log:?}");
    assert_eq!(log[critical_start + 2], "start after", "{log:?}");
}

#[tokio::test]
async fn idle_objects_are_evicted_and_rebuilt_from_storage() {
    let data = scratch_dir("objects-evict");
    let server = start(&data, &["--object-idle-timeout", "0.3", "--threads", "1"]);
    assert_eq!(server.post("/increment/e", "").await.json(), json!(1));
    let first = server.get("/whoami/e").await.json();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = server.get("/whoami/e").await.json();
    assert_eq!(first["name"], json!("e"));
    assert_eq!(second["id"], first["id"]);
    assert!(
        second["construction"].as_u64() > first["construction"].as_u64(),
        "constructor ran again after eviction: {first} {second}"
    );
    assert_eq!(
        server.get("/value/e").await.json(),
        json!(1),
        "state rebuilt from storage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_write() {
    let data = scratch_dir("objects-kill9");
    let mut server = start(&data, &[]);
    let base = server.base.clone();
    let acknowledged: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let stop_at = Instant::now() + Duration::from_millis(1500);
    let mut clients = Vec::new();
    for client in 0..16 {
        let base = base.clone();
        let acknowledged = acknowledged.clone();
        clients.push(tokio::spawn(async move {
            let http =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            let name = format!("k{}", client % 4);
            while Instant::now() < stop_at + Duration::from_secs(5) {
                let request = http::Request::post(format!("{base}/increment/{name}"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                let Ok(Ok(response)) =
                    tokio::time::timeout(Duration::from_secs(5), http.request(request)).await
                else {
                    return;
                };
                let Ok(body) = http_body_util::BodyExt::collect(response.into_body()).await else {
                    return;
                };
                let Ok(value) = serde_json::from_slice::<u64>(&body.to_bytes()) else {
                    return;
                };
                let mut map = acknowledged.lock().unwrap();
                let entry = map.entry(name.clone()).or_insert(0);
                *entry = (*entry).max(value);
            }
        }));
    }
    tokio::time::sleep(stop_at - Instant::now()).await;
    tokio::task::block_in_place(|| server.kill9());
    for client in clients {
        let _ = client.await;
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert_eq!(
        acknowledged.len(),
        4,
        "every object got writes: {acknowledged:?}"
    );
    let server = start(&data, &[]);
    for (name, value) in acknowledged {
        let stored = server
            .get(&format!("/value/{name}"))
            .await
            .json()
            .as_u64()
            .unwrap();
        assert!(
            stored >= value,
            "{name}: a response reported {value} but after kill -9 the object holds {stored}"
        );
    }
}

#[tokio::test]
async fn functions_rpc_targets_streams_and_stubs_cross_rpc_with_pipelining() {
    let data = scratch_dir("objects-rpc-stubs");
    let server = start(&data, &[]);
    let reply = server.get("/rpc-stubs/p").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    assert_eq!(
        reply.json(),
        json!({
            "mapped": [10, 20, 30],
            "seen": [1, 2, 3],
            "first": 5,
            "second": 12,
            "label": "session s1",
            "pipelined": 1,
            "logged": 2,
            "lines": ["hello from p", "second line"],
            "other": "p-other",
            "added": 105,
            "missing": "TypeError: The RPC receiver does not implement the method \"nope\".",
            "counted": 64 * 65536,
            "numbers": "0\n1\n2\n3\n4\n",
        })
    );
}

#[tokio::test]
async fn block_concurrency_while_limits_nesting_and_times_out() {
    let data = scratch_dir("objects-bcw");
    let server = start(&data, &["--block-concurrency-timeout-ms", "500"]);
    let reply = server.get("/bcw/b?ms=3000").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    assert_eq!(
        reply.json(),
        json!({
            "nested10": "bottom",
            "nested70": "Error: blockConcurrencyWhile() calls are nested too deeply.",
            "stuck": "Error: A call to blockConcurrencyWhile() in a Durable Object waited for too long. The call was canceled and the Durable Object was reset.",
            "ready": true,
        })
    );
}

#[tokio::test]
async fn renamed_class_keeps_its_data_and_ids() {
    let data = scratch_dir("objects-rename");
    let mut server = start(&data, &[]);
    assert_eq!(server.post("/increment/r", "").await.json(), json!(1));
    assert_eq!(server.post("/increment/r", "").await.json(), json!(2));
    let id_before = server.get("/whoami/r").await.json()["id"].clone();
    assert!(server.terminate().success());
    let renamed = fixture("objects-renamed").join("wrangler.toml");
    let server = Server::start(&renamed, &["--data-dir", data.to_str().unwrap()]);
    let body = server.get("/value/r").await.json();
    assert_eq!(body["value"], json!(2), "data followed the renamed class");
    assert_eq!(body["id"], id_before, "ids follow the renamed class");
    assert!(
        !data.join("objects-Gated").exists()
            || std::fs::read_dir(data.join("objects-Gated")).is_err()
    );
    drop(server);
    // Going back to the old history conflicts with what the data directory recorded.
    let error = match Server::try_start(&objects_config(), &["--data-dir", data.to_str().unwrap()])
    {
        Ok(_) => panic!("a conflicting migration history must refuse to start"),
        Err(error) => error,
    };
    assert!(error.contains("migrations conflict"), "{error}");
    // A binding to the deleted class is refused, naming the binding and the class.
    let with_deleted = scratch_dir("objects-deleted-binding");
    let text = std::fs::read_to_string(&renamed)
        .unwrap()
        .replace(
            "main = \"index.js\"",
            &format!(
                "main = {:?}",
                fixture("objects-renamed").join("index.js").to_str().unwrap()
            ),
        )
        .replace(
            "[[durable_objects.bindings]]\nname = \"TALLY\"",
            "[[durable_objects.bindings]]\nname = \"GATED\"\nclass_name = \"Gated\"\n\n[[durable_objects.bindings]]\nname = \"TALLY\"",
        );
    std::fs::write(with_deleted.join("wrangler.toml"), text).unwrap();
    let error = match Server::try_start(
        &with_deleted.join("wrangler.toml"),
        &["--data-dir", data.to_str().unwrap()],
    ) {
        Ok(_) => panic!("a binding to a deleted class must refuse to start"),
        Err(error) => error,
    };
    assert!(
        error.contains("binding 'GATED'") && error.contains("'Gated'") && error.contains("deleted"),
        "{error}"
    );
}

#[tokio::test]
async fn kv_backed_classes_enforce_key_and_value_limits_and_have_no_sql() {
    let data = scratch_dir("objects-limits");
    let server = start(&data, &[]);
    let reply = server.get("/limits/l").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    let errors: Vec<String> = serde_json::from_value(reply.json()).unwrap();
    assert_eq!(
        errors[0],
        "RangeError: Keys cannot be larger than 2048 bytes. A key of size 2049 was provided."
    );
    assert!(
        errors[1].starts_with("RangeError: Values cannot be larger than 131072 bytes."),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].starts_with("Error: SQL is not enabled for this Durable Object class."),
        "{}",
        errors[2]
    );
}

fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_objects_stay_resident_with_small_memory_each() {
    let data = scratch_dir("objects-many");
    let server = Arc::new(start(&data, &["--object-idle-timeout", "600"]));
    const OBJECTS: usize = 3000;
    // Warm up both isolate threads before measuring.
    for i in 0..8 {
        server.post(&format!("/increment/warm{i}"), "").await;
    }
    let before = resident_bytes(server.pid());
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..OBJECTS).step_by(16) {
                let reply = server.post(&format!("/increment/many{i}"), "").await;
                assert_eq!(reply.json(), json!(1), "{}", reply.text());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let after = resident_bytes(server.pid());
    let per_object = after.saturating_sub(before) / OBJECTS as u64;
    println!("{OBJECTS} resident objects with open storage: {per_object} bytes each (RSS {before} -> {after})");
    assert!(
        per_object < 100 * 1024,
        "{per_object} bytes per resident object"
    );
    // All of them are still live and consistent.
    for i in (0..OBJECTS).step_by(499) {
        assert_eq!(
            server.get(&format!("/value/many{i}")).await.json(),
            json!(1)
        );
    }
}

#[tokio::test]
async fn objects_call_other_objects() {
    let data = scratch_dir("objects-chain");
    let server = start(&data, &[]);
    // Several names, so both same-thread and cross-thread calls happen.
    for name in ["a", "b", "c", "d"] {
        let reply = server.get(&format!("/chain/{name}")).await;
        assert_eq!(
            reply.json(),
            json!({"other": 10, "mine": 1}),
            "{}",
            server.logs()
        );
        assert_eq!(
            server.get(&format!("/value/{name}-other")).await.json(),
            json!(10)
        );
    }
}

/// An upstream that counts the requests it receives.
async fn start_counting_upstream() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use http_body_util::Full;
    use hyper::service::service_fn;
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_request: http::Request<hyper::body::Incoming>| {
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            bytes::Bytes::from("upstream reached"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{address}/upstream"), hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_after_a_write_that_fails_to_commit_is_never_sent() {
    let data = scratch_dir("objects-output-gate");
    let server = start(&data, &[]);
    let (upstream, hits) = start_counting_upstream().await;
    let reply = server
        .get(&format!("/violate-then-fetch/g?target={upstream}"))
        .await;
    let body = reply.json();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("FOREIGN KEY"),
        "the failed commit is the error: {body}\n{}",
        server.logs()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the fetch issued after the failed write must be discarded, not sent"
    );
    // The object was reset to its last good state and keeps serving.
    assert_eq!(server.post("/increment/g", "").await.json(), json!(1));
}
