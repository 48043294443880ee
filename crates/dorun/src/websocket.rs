//! The front door's end of WebSockets: completing the upgrade a Worker answered with
//! `101` + `webSocket`, then pumping frames between the client and the socket registry.
//!
//! The socket lives here, not in JS: a hibernated object can be evicted while its clients
//! stay connected. Incoming messages become events for the socket's target (at most
//! [`IN_FLIGHT_PER_SOCKET`] unhandled at a time, then the socket stops reading and TCP pushes
//! back); outgoing ones are bounded by the registry's queue limit.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use dorun_runtime::sockets::{Outbound, SocketMessage, SocketRegistry, MAX_MESSAGE_BYTES};
use futures::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Messages of one socket handed to JS and not yet handled.
const IN_FLIGHT_PER_SOCKET: usize = 32;

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
                // Small buffers: a hibernated socket costs a few KiB, not tungstenite's
                // default 128 KiB read buffer. Writes go out as they are sent.
                let config = WebSocketConfig::default()
                    .read_buffer_size(4096)
                    .write_buffer_size(0)
                    .max_message_size(Some(MAX_MESSAGE_BYTES))
                    .max_frame_size(Some(MAX_MESSAGE_BYTES));
                let stream = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
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

fn disconnected() -> SocketMessage {
    SocketMessage::Close {
        code: 1006,
        reason: "WebSocket disconnected without sending Close frame.".into(),
        clean: false,
    }
}

async fn pump<S>(stream: WebSocketStream<S>, registry: Arc<SocketRegistry>, socket: u32)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(connection) = registry.connect(socket) else {
        return;
    };
    let mut outbound = connection.outbound;
    let queued = connection.queued;
    let (mut sink, mut incoming) = stream.split();
    let permits = Arc::new(Semaphore::new(IN_FLIGHT_PER_SOCKET));
    // The close event, delivered after every message before it was handled.
    let mut last: Option<SocketMessage> = None;
    loop {
        tokio::select! {
            frame = incoming.next() => {
                let message = match frame {
                    Some(Ok(Message::Text(text))) => {
                        let text = text.as_str();
                        if connection.hibernatable {
                            if let Some(reply) = registry.auto_response(socket, text) {
                                if sink.send(Message::Text(reply.into())).await.is_err() {
                                    registry.mark_closed(socket);
                                    last = Some(disconnected());
                                    break;
                                }
                                continue;
                            }
                        }
                        SocketMessage::Text(text.to_string())
                    }
                    Some(Ok(Message::Binary(bytes))) => SocketMessage::Binary(bytes.to_vec()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {
                        // tungstenite queued the pong; flush it.
                        let _ = sink.flush().await;
                        continue;
                    }
                    Some(Ok(Message::Close(frame))) => {
                        registry.mark_closed(socket);
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        // tungstenite answers the Close frame itself (flushed here).
                        let _ = sink.flush().await;
                        last = Some(SocketMessage::Close { code, reason, clean: true });
                        break;
                    }
                    Some(Err(error)) => {
                        tracing::debug!("websocket {socket}: {error}");
                        registry.mark_closed(socket);
                        last = Some(disconnected());
                        break;
                    }
                    None => {
                        registry.mark_closed(socket);
                        last = Some(disconnected());
                        break;
                    }
                };
                let Ok(permit) = permits.clone().acquire_owned().await else { break };
                match registry.deliver(socket, message) {
                    Some(done) => {
                        tokio::spawn(async move {
                            let _ = done.await;
                            drop(permit);
                        });
                    }
                    None => break,
                }
            }
            out = outbound.recv() => {
                let Some(out) = out else { break };
                let result = match out {
                    Outbound::Text(text) => {
                        queued.fetch_sub(text.len(), Ordering::AcqRel);
                        sink.send(Message::Text(text.into())).await
                    }
                    Outbound::Binary(bytes) => {
                        queued.fetch_sub(bytes.len(), Ordering::AcqRel);
                        sink.send(Message::Binary(bytes.into())).await
                    }
                    Outbound::Close(frame) => {
                        let frame = frame.map(|(code, reason)| CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        });
                        // Then wait for the client's Close frame (read by the other branch).
                        sink.send(Message::Close(frame)).await
                    }
                };
                if result.is_err() {
                    registry.mark_closed(socket);
                    last = Some(disconnected());
                    break;
                }
            }
        }
    }
    // Wait for the events already handed out before forgetting the socket, so a handler
    // that runs late still finds its tags and attachment.
    let _ = permits.acquire_many(IN_FLIGHT_PER_SOCKET as u32).await;
    if let Some(done) = last.and_then(|message| registry.deliver(socket, message)) {
        let _ = done.await;
    }
    registry.remove(socket);
}
