//! Workers APIs real apps use that dorun lacked (issue 12, point 5).

use serde_json::json;

use crate::harness::{fixture, scratch_dir, Server};

fn start() -> Server {
    let data = scratch_dir("api-gaps");
    Server::start(
        &fixture("api-gaps").join("wrangler.toml"),
        &["--data-dir", data.to_str().unwrap()],
    )
}

#[tokio::test]
async fn request_response_and_headers_cross_rpc_with_their_bodies() {
    let server = start();
    let reply = server.get("/rpc").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    let body = reply.json();
    assert_eq!(
        body["described"],
        json!({
            "isRequest": true,
            "method": "POST",
            "url": "https://example.com/path?q=1",
            "header": "hello",
            "body": "request body",
        })
    );
    assert_eq!(
        body["response"],
        json!({
            "isResponse": true,
            "status": 207,
            "statusText": "Multi",
            "header": "object",
            "body": "from the object",
        })
    );
    assert_eq!(
        body["headers"],
        json!({"isHeaders": true, "entries": [["x-added", "yes"], ["x-one", "1"]]})
    );
    assert_eq!(body["streamed"], json!("abc"));
}

#[tokio::test]
async fn websocket_has_workerds_ready_state_constants() {
    let server = start();
    let reply = server.get("/ready-states").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    assert_eq!(
        reply.json(),
        json!({"static": [0, 1, 2, 3], "instance": [1, 1, 3]})
    );
}

#[tokio::test]
async fn byob_read_at_least_fills_the_minimum() {
    let server = start();
    let reply = server.get("/read-at-least").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    assert_eq!(
        reply.json(),
        json!({"first": [1, 2, 3, 4, 5, 6], "second": [7], "done": true})
    );
}
