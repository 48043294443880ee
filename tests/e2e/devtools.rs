//! `dorun serve --inspect`: Chrome DevTools' target discovery and a CDP session on an
//! isolate: evaluate, then a breakpoint in the Worker's fetch handler that pauses a real
//! request until DevTools resumes it.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::admin::AdminClient;
use crate::harness::{fixture, scratch_dir, Server};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends a CDP request and returns its response; notifications seen meanwhile go to `seen`.
async fn call(ws: &mut Ws, id: u64, method: &str, params: Value, seen: &mut Vec<Value>) -> Value {
    let request = json!({"id": id, "method": method, "params": params});
    ws.send(Message::text(request.to_string())).await.unwrap();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a CDP answer within 20 s")
            .expect("open")
            .expect("a frame");
        let Message::Text(text) = message else {
            continue;
        };
        let value: Value = serde_json::from_str(text.as_str()).unwrap();
        if value["id"] == id {
            return value;
        }
        seen.push(value);
    }
}

async fn notification(ws: &mut Ws, method: &str, seen: &mut Vec<Value>) -> Value {
    if let Some(found) = seen.iter().find(|v| v["method"] == method) {
        return found.clone();
    }
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {method} within 20 s"))
            .expect("open")
            .expect("a frame");
        let Message::Text(text) = message else {
            continue;
        };
        let value: Value = serde_json::from_str(text.as_str()).unwrap();
        if value["method"] == method {
            return value;
        }
        seen.push(value);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn devtools_evaluates_and_pauses_a_request_at_a_breakpoint() {
    let data = scratch_dir("devtools");
    let server = Server::start(
        &fixture("admin").join("wrangler.toml"),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--inspect",
            "127.0.0.1:0",
            "--threads",
            "1",
        ],
    );
    let inspector = server
        .stdout_line("dorun: inspector on ")
        .expect("the inspector's address");
    let list = AdminClient {
        base: inspector.clone(),
        token: None,
    };
    let (status, targets) = list.call("GET", "/json/list", None).await;
    assert_eq!(status, 200);
    let targets = targets.as_array().unwrap().clone();
    assert_eq!(targets.len(), 1, "{targets:?}");
    assert!(targets[0]["url"].as_str().unwrap().ends_with("index.js"));
    let url = targets[0]["webSocketDebuggerUrl"].as_str().unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("DevTools socket");
    let mut seen = Vec::new();

    call(&mut ws, 1, "Runtime.enable", json!({}), &mut seen).await;
    let result = call(
        &mut ws,
        2,
        "Runtime.evaluate",
        json!({"expression": "40 + 2"}),
        &mut seen,
    )
    .await;
    assert_eq!(result["result"]["result"]["value"], 42, "{result}");

    call(&mut ws, 3, "Debugger.enable", json!({}), &mut seen).await;
    let source = std::fs::read_to_string(fixture("admin").join("index.js")).unwrap();
    let line = source
        .lines()
        .position(|l| l.contains("return new Response(`worker answered"))
        .expect("the line to break on");
    let breakpoint = call(
        &mut ws,
        4,
        "Debugger.setBreakpointByUrl",
        json!({"lineNumber": line, "urlRegex": "index\\.js$"}),
        &mut seen,
    )
    .await;
    assert!(
        breakpoint["result"]["breakpointId"].is_string(),
        "{breakpoint}"
    );

    let base = server.base.clone();
    let request = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let response = client
            .get(format!("{base}/paused").parse().unwrap())
            .await
            .unwrap();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap();
        String::from_utf8_lossy(&body.to_bytes()).into_owned()
    });
    let paused = notification(&mut ws, "Debugger.paused", &mut seen).await;
    assert_eq!(
        paused["params"]["callFrames"][0]["location"]["lineNumber"], line,
        "{paused}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!request.is_finished(), "the request went on while paused");
    call(&mut ws, 5, "Debugger.resume", json!({}), &mut seen).await;
    let body = tokio::time::timeout(Duration::from_secs(20), request)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, "worker answered /paused");
}
