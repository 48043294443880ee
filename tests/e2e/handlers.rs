//! Handler shapes and what happens around them: request details, waitUntil, exceptions,
//! CPU and heap limits, graceful shutdown.

use std::time::Duration;

use serde_json::json;

use crate::harness::{fixture, Server};

fn plain() -> std::path::PathBuf {
    fixture("handlers/plain").join("wrangler.toml")
}

#[tokio::test]
async fn request_url_is_what_the_client_asked_for_and_ip_is_the_peer() {
    let server = Server::start(&plain(), &[]);
    let reply = server
        .request(
            http::Method::PUT,
            "/request?q=1",
            &[("x-custom", "hi")],
            "x".into(),
        )
        .await;
    let body = reply.json();
    assert_eq!(body["url"], json!(format!("{}/request?q=1", server.base)));
    assert_eq!(body["method"], json!("PUT"));
    assert_eq!(body["ip"], json!("127.0.0.1"));
    assert_eq!(body["custom"], json!("hi"));
}

#[tokio::test]
async fn class_extending_worker_entrypoint_is_the_handler() {
    let server = Server::start(&fixture("handlers/entrypoint").join("wrangler.toml"), &[]);
    let body = server.get("/").await.json();
    assert_eq!(
        body,
        json!({"who": "class", "importedEnv": "class", "hasWaitUntil": true})
    );
}

#[tokio::test]
async fn wait_until_work_finishes_after_the_response() {
    // One isolate thread, so the follow-up request sees the same globals.
    let server = Server::start(&plain(), &["--threads", "1"]);
    assert_eq!(server.get("/wait-until?tag=a").await.text(), "scheduled");
    assert_eq!(
        server.get("/after-response").await.json(),
        json!([]),
        "not yet run"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(server.get("/after-response").await.json(), json!(["a"]));
}

#[tokio::test]
async fn exceptions_become_500s_and_the_server_keeps_serving() {
    let server = Server::start(&plain(), &[]);
    for path in ["/throw", "/reject", "/not-a-response"] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 500, "{path}");
        assert_eq!(server.get("/").await.text(), "ok", "after {path}");
    }
    // The log lines come before the responses, but stderr is read on another thread.
    assert!(server.wait_for_log("thrown on purpose").await);
    assert!(server.wait_for_log("rejected on purpose").await);
    assert!(server.wait_for_log("did not resolve to 'Response'").await);
    let logs = server.logs();
    assert!(
        logs.contains("plain/index.js:"),
        "stack names the source file: {logs}"
    );
}

#[tokio::test]
async fn runaway_cpu_is_terminated_and_the_isolate_reset() {
    let server = Server::start(&plain(), &["--threads", "1", "--cpu-limit-ms", "300"]);
    let reply = server.get("/spin").await;
    assert_eq!(reply.status, 503);
    assert!(reply.text().contains("CPU time limit"), "{}", reply.text());
    assert_eq!(server.get("/").await.text(), "ok", "a fresh isolate serves");
    assert!(server.logs().contains("CPU limit"));
}

#[tokio::test]
async fn heap_exhaustion_resets_the_isolate_not_the_server() {
    let server = Server::start(&plain(), &["--threads", "1", "--heap-limit-mb", "64"]);
    let reply = server.get("/allocate").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(reply.text().contains("memory limit"), "{}", reply.text());
    assert_eq!(server.get("/").await.text(), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let mut server = Server::start(&plain(), &[]);
    let url = format!("{}/slow?ms=700", server.base);
    let slow = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let response = client.get(url.parse().unwrap()).await.unwrap();
        let status = response.status().as_u16();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
        (
            status,
            String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        )
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = tokio::task::block_in_place(|| server.terminate());
    assert!(
        status.success(),
        "clean exit: {status:?}\n{}",
        server.logs()
    );
    let (code, body) = slow.await.unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, "slept 700"),
        "in-flight request completed"
    );
}

#[tokio::test]
async fn shutdown_finishes_wait_until_work_without_waiting_for_interval_timers() {
    let mut server = Server::start(&fixture("timers").join("wrangler.toml"), &[]);
    assert_eq!(server.get("/").await.text(), "ok");
    let started = std::time::Instant::now();
    assert!(server.terminate().success());
    let took = started.elapsed();
    assert!(
        server.logs().contains("waitUntil finished"),
        "{}",
        server.logs()
    );
    assert!(
        took < Duration::from_secs(4),
        "shutdown took {took:?} with an interval timer running"
    );
}
