//! `dorun serve --inspect [ADDR]`: the Chrome DevTools endpoint. Lists one target per isolate
//! (`/json/list`, `/json/version`) and bridges a DevTools WebSocket (`/ws/<target>`) to that
//! isolate's V8 inspector (`dorun_runtime::devtools`). Open `chrome://inspect`, add the
//! address under "Configure...", and set breakpoints in the Worker or its objects.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use dorun_runtime::devtools;
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Response = http::Response<Full<Bytes>>;

/// Binds the DevTools endpoint and serves it in the background; prints its address.
pub async fn start(address: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {address} (--inspect): {e}"))?;
    let bound = listener.local_addr()?;
    tracing::info!("DevTools: chrome://inspect, target discovery on {bound}");
    println!("dorun: inspector on http://{bound}");
    tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        while let Ok((stream, _)) = listener.accept().await {
            let service =
                service_fn(
                    move |request| async move { Ok::<_, Infallible>(handle(request, bound)) },
                );
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            tokio::spawn(async move {
                let _ = connection.await;
            });
        }
    });
    Ok(())
}

fn json(value: serde_json::Value) -> Response {
    let mut response = http::Response::new(Full::new(Bytes::from(value.to_string())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    response
}

fn status(code: u16, text: &str) -> Response {
    let mut response = http::Response::new(Full::new(Bytes::from(text.to_string())));
    *response.status_mut() = http::StatusCode::from_u16(code).unwrap_or_default();
    response
}

fn handle(mut request: http::Request<hyper::body::Incoming>, bound: SocketAddr) -> Response {
    let path = request.uri().path().trim_end_matches('/').to_string();
    match path.as_str() {
        "/json/version" => json(serde_json::json!({
            "Browser": format!("dorun/{}", env!("CARGO_PKG_VERSION")),
            "Protocol-Version": "1.3",
        })),
        "/json" | "/json/list" => {
            let targets: Vec<serde_json::Value> = devtools::list()
                .into_iter()
                .map(|t| {
                    let ws = format!("{bound}/ws/{}", t.id);
                    serde_json::json!({
                        "id": t.id,
                        "title": t.title,
                        "type": "node",
                        "url": t.url,
                        "description": "dorun isolate",
                        "webSocketDebuggerUrl": format!("ws://{ws}"),
                        "devtoolsFrontendUrl": format!("devtools://devtools/bundled/js_app.html?experiments=true&v8only=true&ws={ws}"),
                    })
                })
                .collect();
            json(serde_json::Value::Array(targets))
        }
        _ => match path.strip_prefix("/ws/") {
            Some(id) => upgrade(&mut request, id.to_string()),
            None => status(404, "not found"),
        },
    }
}

/// Completes the WebSocket handshake and bridges it to a new inspector session.
fn upgrade(request: &mut http::Request<hyper::body::Incoming>, id: String) -> Response {
    let Some(key) = request
        .headers()
        .get(http::header::SEC_WEBSOCKET_KEY)
        .and_then(|k| k.to_str().ok())
        .map(str::to_string)
    else {
        return status(400, "a WebSocket upgrade is expected");
    };
    let Some((to_isolate, mut from_isolate)) = devtools::connect(&id) else {
        return status(404, "no such target (GET /json/list)");
    };
    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let stream =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let (mut sink, mut incoming) = stream.split();
        loop {
            tokio::select! {
                frame = incoming.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        if to_isolate.unbounded_send(text.to_string()).is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                },
                message = from_isolate.next() => match message {
                    Some(message) => {
                        if sink.send(Message::text(message.content)).await.is_err() {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut response = status(101, "");
    let headers = response.headers_mut();
    headers.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(value) = http::HeaderValue::from_str(&accept) {
        headers.insert(http::header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}
