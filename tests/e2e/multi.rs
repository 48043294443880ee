//! Several workers in one process: a `script_name` binding reaches a class that another
//! worker (another config on the command line) implements.

use serde_json::json;

use crate::harness::{fixture, scratch_dir, Server};

#[tokio::test]
async fn script_name_bindings_reach_another_workers_class() {
    let data = scratch_dir("multi");
    let app = fixture("multi").join("app/wrangler.toml");
    let rooms = fixture("multi").join("rooms/wrangler.toml");
    let args = [
        "--data-dir",
        data.to_str().unwrap(),
        rooms.to_str().unwrap(),
    ];
    let mut server = Server::start(&app, &args);
    let reply = server.get("/join/lobby").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    assert_eq!(
        reply.json(),
        json!({"worker": "rooms", "room": "lobby", "members": 1})
    );
    assert_eq!(server.get("/join/lobby").await.json()["members"], json!(2));
    assert_eq!(
        server.get("/fetch/lobby").await.text(),
        "room lobby got /fetch/lobby"
    );
    // A WebSocket accepted by the other worker's class reaches the client through this
    // worker's front door.
    {
        use futures::{SinkExt, StreamExt};
        let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/fetch/lobby"))
            .await
            .unwrap();
        ws.send(tokio_tungstenite::tungstenite::Message::Text("hi".into()))
            .await
            .unwrap();
        let reply = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), "lobby in rooms: hi");
    }
    // A function passed to the other worker's class is called back in this worker.
    assert_eq!(
        server.get("/callback/lobby").await.json(),
        json!("called back")
    );
    // IDs derive from the owning worker's key (`rooms-Room`), so they match that worker's own.
    let id = server.get("/id/lobby").await.json();
    assert!(data
        .join("rooms-Room")
        .join(format!("{}.sqlite", id.as_str().unwrap()))
        .exists());
    assert!(server.terminate().success());
    let server = Server::start(&app, &args);
    assert_eq!(server.get("/join/lobby").await.json()["members"], json!(3));
    drop(server);
    // Without the other worker's config, the worker starts (as with wrangler dev) with a
    // warning, and the binding's first use fails naming the worker.
    let server = Server::start(&app, &["--data-dir", data.to_str().unwrap()]);
    assert!(
        server
            .logs()
            .contains("binding 'ROOMS' uses script_name 'rooms'"),
        "{}",
        server.logs()
    );
    let failed = server.get("/join/lobby").await;
    assert_eq!(failed.status, 500, "{}", failed.text());
    assert!(
        server
            .wait_for_log("worker 'rooms' is not served by this dorun serve")
            .await,
        "{}",
        server.logs()
    );
}
