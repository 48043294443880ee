//! The front door's end of WebSockets: completing the upgrade a Worker answered with
//! `101` + `webSocket`, then pumping frames between the client and the socket registry.
//!
//! The socket lives in Rust, not in JS: a hibernated object can be evicted while its clients
//! stay connected. The frame pump itself is [`dorun_runtime::sockets::pump`], shared with
//! outbound sockets.

use std::sync::Arc;

use dorun_runtime::sockets::{disconnected, pump, socket_config, SocketRegistry};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// What the front door keeps of an upgrade request until the Worker has answered.
pub struct UpgradeRequest {
    pub on_upgrade: OnUpgrade,
    pub key: String,
}

/// Takes the upgrade handle of a `GET` with `Upgrade: websocket`.
pub fn take_upgrade(request: &mut http::Request<hyper::body::Incoming>) -> Option<UpgradeRequest> {
    let headers = request.headers();
    let upgrade = headers
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade || request.method() != http::Method::GET {
        return None;
    }
    let key = headers
        .get(http::header::SEC_WEBSOCKET_KEY)?
        .to_str()
        .ok()?
        .to_string();
    Some(UpgradeRequest {
        on_upgrade: hyper::upgrade::on(request),
        key,
    })
}

/// Turns the Worker's 101 response into the handshake answer and connects the socket once
/// hyper hands over the connection.
pub fn accept<B>(
    registry: Arc<SocketRegistry>,
    socket: u32,
    upgrade: UpgradeRequest,
    mut response: http::Response<B>,
) -> http::Response<B> {
    let accept =
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(upgrade.key.as_bytes());
    let headers = response.headers_mut();
    headers.insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("Upgrade"),
    );
    headers.insert(
        http::header::SEC_WEBSOCKET_ACCEPT,
        http::HeaderValue::from_str(&accept).expect("base64 is a header value"),
    );
    headers.remove(http::header::CONTENT_LENGTH);
    tokio::spawn(async move {
        match upgrade.on_upgrade.await {
            Ok(upgraded) => {
                let stream = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(socket_config()),
                )
                .await;
                pump(stream, registry, socket).await;
            }
            Err(error) => {
                tracing::debug!("websocket upgrade failed: {error}");
                registry.mark_closed(socket);
                if let Some(done) = registry.deliver(socket, disconnected()) {
                    let _ = done.await;
                }
                registry.remove(socket);
            }
        }
    });
    response
}
