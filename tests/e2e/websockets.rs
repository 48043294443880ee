//! WebSockets end to end with real clients (tokio-tungstenite) on 127.0.0.1: a chat room on
//! the Hibernation API, hibernation across eviction, auto-responses, standard accept()
//! sockets, close codes both ways, message order, a client that does not read, and 10,000
//! sockets on one object.

use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::harness::{fixture, scratch_dir, Server};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn start(extra: &[&str]) -> Server {
    let data = scratch_dir("websockets");
    let mut args = vec!["--data-dir".to_string(), data.to_str().unwrap().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&fixture("websockets").join("wrangler.toml"), &args)
}

async fn connect(server: &Server, path: &str) -> Ws {
    let url = server.ws_url(path);
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(&url),
    )
    .await
    {
        Ok(Ok((ws, _))) => ws,
        other => panic!("connect {url}: {other:?}\n{}", server.logs()),
    }
}

/// The next data or close message (pings and pongs skipped), within 5 s.
async fn next(ws: &mut Ws) -> Message {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(message))) => return message,
            other => panic!("no message: {other:?}"),
        }
    }
}

async fn text(ws: &mut Ws) -> String {
    match next(ws).await {
        Message::Text(text) => text.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap();
}

async fn who(ws: &mut Ws) -> Value {
    send(ws, "who").await;
    serde_json::from_str(&text(ws).await).unwrap()
}

fn close_of(message: Message) -> (u16, String) {
    match message {
        Message::Close(Some(frame)) => (u16::from(frame.code), frame.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn chat_room_broadcasts_among_clients_and_sees_them_leave() {
    let server = start(&[]);
    let mut alice = connect(&server, "/room/r1?user=alice").await;
    assert_eq!(text(&mut alice).await, "join alice");
    let mut bob = connect(&server, "/room/r1?user=bob").await;
    assert_eq!(text(&mut alice).await, "join bob");
    assert_eq!(text(&mut bob).await, "join bob");
    let mut carol = connect(&server, "/room/r1?user=carol").await;
    for ws in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(text(ws).await, "join carol");
    }
    // Messages of different sockets have no order between them: one at a time.
    send(&mut alice, "hello").await;
    for ws in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(text(ws).await, "alice: hello");
    }
    send(&mut bob, "hi alice").await;
    for ws in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(text(ws).await, "bob: hi alice");
    }
    // Binary frames arrive as ArrayBuffer and go back as bytes.
    carol
        .send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut carol).await,
        Message::Binary(vec![3u8, 2, 1].into())
    );
    let state = who(&mut bob).await;
    assert_eq!(
        state["tags"],
        json!(["bob", "room"]),
        "duplicate tags dropped"
    );
    assert_eq!(state["sockets"], json!(3));
    assert_eq!(state["mine"], json!(1));
    // The client closes with a code and reason; the object sees them, the others hear it.
    bob.send(Message::Close(Some(CloseFrame {
        code: CloseCode::from(4100),
        reason: "done".into(),
    })))
    .await
    .unwrap();
    assert_eq!(close_of(next(&mut bob).await).0, 4100);
    assert_eq!(text(&mut alice).await, "leave bob");
    assert_eq!(text(&mut carol).await, "leave bob");
    let stats = server.get("/room/r1/stats").await.json();
    assert_eq!(stats["sockets"], json!(2));
    assert_eq!(
        stats["lastClose"],
        json!({"user": "bob", "code": 4100, "reason": "done", "wasClean": true})
    );
    // Dropping a connection without a Close frame is seen as 1006.
    drop(carol);
    assert_eq!(text(&mut alice).await, "leave carol");
    let stats = server.get("/room/r1/stats").await.json();
    assert_eq!(stats["lastClose"]["code"], json!(1006));
    assert_eq!(stats["lastClose"]["wasClean"], json!(false));
    // The object closes with a code and reason; the client sees them.
    send(&mut alice, "close").await;
    assert_eq!(
        close_of(next(&mut alice).await),
        (4000, "bye alice".to_string())
    );
}

#[tokio::test]
async fn hibernated_sockets_survive_eviction_and_auto_responses_do_not_wake_the_object() {
    let server = start(&["--object-idle-timeout", "0.3"]);
    let mut alice = connect(&server, "/room/h?user=alice").await;
    assert_eq!(text(&mut alice).await, "join alice");
    let first = who(&mut alice).await;
    let built = first["constructed"].as_u64().unwrap();
    // Idle: the object is evicted while the socket stays open.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = who(&mut alice).await;
    assert_eq!(
        second["constructed"].as_u64().unwrap(),
        built + 1,
        "the next message rebuilt the object (constructor ran again)"
    );
    assert_eq!(second["user"], json!("alice"), "attachment survived");
    assert_eq!(second["tags"], json!(["alice", "room"]));
    assert_eq!(
        second["sockets"],
        json!(1),
        "getWebSockets() after the rebuild"
    );
    assert_eq!(second["autoResponded"], Value::Null);
    // Evicted again; auto-responses are answered without waking it.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..3 {
        send(&mut alice, "ping").await;
        assert_eq!(text(&mut alice).await, "pong");
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let third = who(&mut alice).await;
    assert_eq!(
        third["constructed"].as_u64().unwrap(),
        built + 2,
        "only the last message woke the object, not the pings"
    );
    assert_eq!(third["autoResponded"], json!(true));
}

#[tokio::test]
async fn standard_websockets_in_a_worker_and_an_object() {
    let server = start(&[]);
    let mut echo = connect(&server, "/echo").await;
    send(&mut echo, "one").await;
    assert_eq!(text(&mut echo).await, "one");
    echo.send(Message::Binary(vec![9u8; 1000].into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut echo).await,
        Message::Binary(vec![9u8; 1000].into())
    );
    send(&mut echo, "bye").await;
    assert_eq!(
        close_of(next(&mut echo).await),
        (4002, "bye from worker".to_string())
    );

    let mut std = connect(&server, "/std/s1").await;
    send(&mut std, "two").await;
    assert_eq!(text(&mut std).await, "echo two");
    std.close(Some(CloseFrame {
        code: CloseCode::from(4005),
        reason: "client done".into(),
    }))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let report = loop {
        let report = server.get("/std/s1/report").await.json();
        if !report["closed"].is_null() || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        report["closed"],
        json!({"code": 4005, "reason": "client done", "clean": true})
    );
    let mut std = connect(&server, "/std/s2").await;
    send(&mut std, "bye").await;
    assert_eq!(
        close_of(next(&mut std).await),
        (4001, "bye from object".to_string())
    );
}

#[tokio::test]
async fn messages_on_one_socket_reach_the_handler_in_order() {
    let server = start(&[]);
    let mut ws = connect(&server, "/many/order").await;
    for i in 0..500 {
        send(&mut ws, &i.to_string()).await;
    }
    for i in 0..500 {
        assert_eq!(text(&mut ws).await, format!("ack {i}"));
    }
}

#[tokio::test]
async fn a_socket_has_at_most_32_messages_in_flight_then_reading_waits() {
    let server = start(&[]);
    let mut ws = connect(&server, "/many/stall").await;
    for _ in 0..100 {
        send(&mut ws, "stall").await;
    }
    let stalled = || async { server.get("/many/stall/stalled").await.json() };
    let deadline = Instant::now() + Duration::from_secs(10);
    while stalled().await != json!(32) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The handlers never finish by themselves: no 33rd message is read meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stalled().await, json!(32), "{}", server.logs());
    server.get("/many/stall/release").await;
    for _ in 0..100 {
        assert_eq!(text(&mut ws).await, "ack stall");
    }
    assert_eq!(stalled().await, json!(0));
}

#[tokio::test]
async fn a_client_that_does_not_read_is_cut_off_not_buffered_forever() {
    let server = start(&[]);
    let mut ws = connect(&server, "/std/flood").await;
    let before = server.rss_bytes().unwrap();
    send(&mut ws, "flood").await;
    // Not reading: the object sends 64 MiB; the server must stop queueing and close.
    let deadline = Instant::now() + Duration::from_secs(10);
    let report = loop {
        let report = server.get("/std/flood/report").await.json();
        if !report["flood"].is_null() || Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let flood = report["flood"].as_str().unwrap_or_default().to_string();
    assert!(
        flood.contains("send buffer is full"),
        "send() failed once the queue was full: {report}"
    );
    let growth = server.rss_bytes().unwrap().saturating_sub(before);
    assert!(
        growth < 48 << 20,
        "memory grew by {} MiB for a client that does not read",
        growth >> 20
    );
    // Reading now drains what was queued, then the close frame.
    let mut received = 0usize;
    let code = loop {
        match next(&mut ws).await {
            Message::Text(text) => received += text.len(),
            Message::Close(frame) => break frame.map(|f| u16::from(f.code)),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, Some(1008));
    assert!(
        received < 32 << 20,
        "received {received} bytes before the close"
    );
}

#[tokio::test]
async fn hibernation_api_limits_and_errors_match_cloudflare() {
    let server = start(&[]);
    let limits = server.get("/room/limits/limits").await.json();
    assert_eq!(
        limits,
        json!({
            "tooManyTags": "Error: a Hibernatable WebSocket cannot have more than 10 tags",
            "longTag": format!("Error: \"{}\" is longer than the max tag length (256 characters).", "x".repeat(257)),
            "acceptThenHibernate": "Error: Cannot call `acceptWebSocket()` if the WebSocket was already accepted via `accept()`",
            "hibernateThenAccept": "TypeError: Can't accept() WebSocket after enabling hibernation.",
            "bigAttachment": "Error: A WebSocket 'attachment' cannot be larger than 16384 bytes.'attachment' was 17006 bytes.",
            "bigAutoResponse": "RangeError: Request cannot be larger than 2048 bytes. A request of size 2049 was provided.",
            "tagsOfStandard": "Error: only hibernatable websockets can have tags.",
            "sendBeforeAccept": "TypeError: You must call one of accept() or state.acceptWebSocket() on this WebSocket before sending messages.",
            "eventTimeout": "Error: Event timeout should not exceed 604800000 ms.",
            "autoResponse": ["ping", "pong"],
        })
    );
    // A plain GET to a WebSocket route is the object's own 426.
    assert_eq!(server.get("/room/limits").await.status, 426);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sockets_on_one_object() {
    const SOCKETS: usize = 10_000;
    // Each socket is one descriptor here and one in the server.
    let _ = rlimit::increase_nofile_limit(65_536);
    let server = start(&[]);
    let idle_rss = server.rss_bytes().unwrap();
    let url = server.ws_url("/many/crowd");
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(SOCKETS);
    let mut pending = futures::stream::iter(0..SOCKETS)
        .map(|_| {
            let url = url.clone();
            async move {
                tokio_tungstenite::connect_async(&url)
                    .await
                    .map(|(ws, _)| ws)
            }
        })
        .buffer_unordered(200);
    while let Some(result) = pending.next().await {
        sockets.push(result.unwrap_or_else(|e| panic!("connect #{}: {e}", sockets.len())));
    }
    let connected_in = started.elapsed();
    assert_eq!(
        server.get("/many/crowd/count").await.json(),
        json!(SOCKETS),
        "the object holds every socket"
    );
    let held_rss = server.rss_bytes().unwrap();
    // Every socket is answered.
    let started = Instant::now();
    let answered = futures::stream::iter(sockets.iter_mut().enumerate())
        .map(|(i, ws)| async move {
            ws.send(Message::Text(format!("m{i}").into()))
                .await
                .unwrap();
            match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => text.as_str() == format!("ack m{i}"),
                _ => false,
            }
        })
        .buffer_unordered(500)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    assert_eq!(answered, SOCKETS);
    eprintln!(
        "10,000 sockets: connected in {:.1}s, answered in {:.1}s, server RSS {} MiB -> {} MiB ({} bytes per socket)",
        connected_in.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        idle_rss >> 20,
        held_rss >> 20,
        (held_rss.saturating_sub(idle_rss)) / SOCKETS as u64
    );
}

#[tokio::test]
async fn outbound_websockets_from_a_worker() {
    let server = start(&[]);
    let echo = server.ws_url("/echo");
    let reply = server.get(&format!("/outbound/x?target={echo}")).await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    assert_eq!(
        reply.json(),
        json!({
            "got": ["hello", [1, 2, 3]],
            "code": 1000,
            "reason": "done",
            "states": [0, 1],
            "url": echo,
        })
    );
    let http_echo = format!("{}/echo", server.base);
    let reply = server
        .get(&format!("/outbound-fetch/x?target={http_echo}"))
        .await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    assert_eq!(reply.json(), json!({"status": 101, "got": "via fetch"}));
    // Nothing listens on port 9 of loopback: an error event, then close 1006.
    let reply = server
        .get("/outbound/x?target=ws://127.0.0.1:9/")
        .await
        .json();
    assert_eq!(reply["code"], json!(1006), "{reply}");
    assert!(
        reply["got"][0]
            .as_str()
            .unwrap()
            .starts_with("error: WebSocket connection"),
        "{reply}"
    );
}

#[tokio::test]
async fn shutdown_closes_open_websockets_with_1001() {
    let mut server = start(&[]);
    let mut room = connect(&server, "/room/bye?user=u").await;
    assert_eq!(text(&mut room).await, "join u");
    let mut echo = connect(&server, "/echo").await;
    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (server, status)
    });
    for ws in [&mut room, &mut echo] {
        let (code, reason) = close_of(next(ws).await);
        assert_eq!(code, 1001);
        assert_eq!(reason, "dorun is shutting down");
    }
    let (_server, status) = status.await.unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn a_message_over_the_limit_is_closed_with_1009() {
    let server = start(&[]);
    let mut ws = connect(&server, "/many/big").await;
    let big = "x".repeat((32 << 20) + 1);
    // The server may close before the whole message is written.
    let _ = ws.send(Message::Text(big.into())).await;
    let (code, _) = close_of(next(&mut ws).await);
    assert_eq!(code, 1009);
}
