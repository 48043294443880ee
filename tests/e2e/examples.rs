//! The examples in examples/ work as their READMEs say.

use serde_json::json;

use crate::harness::{example, install_npm_dependencies, scratch_dir, Server};

#[tokio::test]
async fn hello_example_greets_and_echoes() {
    let server = Server::start(&example("hello").join("wrangler.toml"), &[]);
    assert_eq!(server.get("/").await.text(), "Hello from dorun!\n");
    assert_eq!(server.post("/echo", "ping").await.text(), "ping");
    assert_eq!(server.get("/nope").await.status, 404);
}

#[tokio::test]
async fn hono_typescript_example_runs_with_its_npm_dependency() {
    let dir = example("hono-ts");
    install_npm_dependencies(&dir);
    let server = Server::start(&dir.join("wrangler.jsonc"), &[]);
    assert_eq!(server.get("/").await.text(), "hono on dorun\n");
    let hello = server.get("/hello/ada").await;
    assert_eq!(
        hello.json(),
        json!({"hello": "ada", "app": "hono on dorun"})
    );
    let content_type = hello.headers.get("content-type").unwrap().to_str().unwrap();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let sum = server
        .request(
            http::Method::POST,
            "/sum",
            &[("content-type", "application/json")],
            "[1,2,3.5]".into(),
        )
        .await;
    assert_eq!(sum.json(), json!({"sum": 6.5}));
}

async fn exercise_counter(server: &Server) {
    assert_eq!(
        server.post("/card-1/increment", "").await.json(),
        json!({"value": 1})
    );
    assert_eq!(
        server.post("/card-1/increment", "").await.json(),
        json!({"value": 2})
    );
    assert_eq!(
        server.post("/card-1/decrement", "").await.json(),
        json!({"value": 1})
    );
    assert_eq!(
        server.get("/card-1/value").await.json(),
        json!({"value": 1})
    );
    assert_eq!(
        server.get("/card-2/value").await.json(),
        json!({"value": 0}),
        "counters are isolated"
    );
}

#[tokio::test]
async fn counter_example_plain_js() {
    let data = scratch_dir("counter-js");
    let config = example("counter/js").join("wrangler.toml");
    let mut server = Server::start(&config, &["--data-dir", data.to_str().unwrap()]);
    exercise_counter(&server).await;
    assert!(server.terminate().success());
    let server = Server::start(&config, &["--data-dir", data.to_str().unwrap()]);
    assert_eq!(
        server.get("/card-1/value").await.json(),
        json!({"value": 1}),
        "persisted"
    );
}

#[tokio::test]
async fn counter_example_hono_typescript() {
    let dir = example("counter/hono");
    install_npm_dependencies(&dir);
    let data = scratch_dir("counter-hono");
    let server = Server::start(
        &dir.join("wrangler.toml"),
        &["--data-dir", data.to_str().unwrap()],
    );
    exercise_counter(&server).await;
}

#[tokio::test]
async fn chat_example_rooms_broadcast_and_replay_history() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    async fn next_json(
        ws: &mut tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
    ) -> serde_json::Value {
        loop {
            let message = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
                .await
                .expect("a message within 5 s")
                .expect("socket open")
                .expect("no error");
            if let Message::Text(text) = message {
                return serde_json::from_str(text.as_str()).unwrap();
            }
        }
    }

    let data = scratch_dir("example-chat");
    let server = Server::start(
        &example("chat").join("wrangler.toml"),
        &["--data-dir", data.to_str().unwrap()],
    );
    assert!(server
        .get("/")
        .await
        .text()
        .contains("<title>dorun chat</title>"));
    let url = |name: &str| server.ws_url(&format!("/api/room/lobby/websocket?name={name}"));
    let (mut ada, _) = tokio_tungstenite::connect_async(url("ada")).await.unwrap();
    assert_eq!(next_json(&mut ada).await, json!({"history": []}));
    assert_eq!(
        next_json(&mut ada).await,
        json!({"joined": "ada", "online": ["ada"]})
    );
    let (mut bo, _) = tokio_tungstenite::connect_async(url("bo")).await.unwrap();
    assert_eq!(next_json(&mut bo).await, json!({"history": []}));
    for ws in [&mut ada, &mut bo] {
        assert_eq!(
            next_json(ws).await,
            json!({"joined": "bo", "online": ["ada", "bo"]})
        );
    }
    ada.send(Message::Text(r#"{"message":"hi bo"}"#.into()))
        .await
        .unwrap();
    for ws in [&mut ada, &mut bo] {
        let said = next_json(ws).await;
        assert_eq!(said["name"], json!("ada"));
        assert_eq!(said["message"], json!("hi bo"));
    }
    bo.close(None).await.unwrap();
    assert_eq!(
        next_json(&mut ada).await,
        json!({"quit": "bo", "online": ["ada"]})
    );
    // A newcomer gets the history.
    let (mut cy, _) = tokio_tungstenite::connect_async(url("cy")).await.unwrap();
    let history = next_json(&mut cy).await;
    assert_eq!(history["history"][0]["message"], json!("hi bo"));
    let stored = server.get("/api/room/lobby/history").await.json();
    assert_eq!(stored.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn alarms_example_flushes_a_batch_when_its_alarm_fires() {
    let data = scratch_dir("example-alarms");
    let server = Server::start(
        &example("alarms").join("wrangler.toml"),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--var",
            "FLUSH_AFTER_MS=400",
        ],
    );
    let first = server.post("/queue/orders", "first").await.json();
    let second = server.post("/queue/orders", "second").await.json();
    assert_eq!(first["pending"], json!(1));
    assert_eq!(second["pending"], json!(2));
    assert_eq!(first["flushAt"], second["flushAt"], "one alarm per batch");
    assert_eq!(
        server.get("/queue/orders").await.json()["batches"],
        json!([])
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let status = loop {
        let status = server.get("/queue/orders").await.json();
        if status["pending"] == json!(0) || std::time::Instant::now() > deadline {
            break status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(status["flushAt"], serde_json::Value::Null, "{status}");
    assert_eq!(status["batches"][0]["items"], json!(["first", "second"]));
    assert_eq!(status["batches"][0]["scheduledTime"], first["flushAt"]);
}

/// The next text message of a WebSocket as JSON (10 s at most).
async fn next_json(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> serde_json::Value {
    use futures::StreamExt;
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket is open")
            .expect("a frame");
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).unwrap();
        }
    }
}

#[tokio::test]
async fn dots_example_serves_its_page_and_rooms_share_dots() {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let data = scratch_dir("dots");
    let server = Server::start(
        &example("dots").join("wrangler.jsonc"),
        &["--data-dir", data.to_str().unwrap()],
    );
    // The single-page app: its files, and the same page for a room's URL.
    let page = server.get("/").await;
    assert_eq!(page.status, 200, "{}", server.logs());
    assert!(page.text().contains("<title>Dots</title>"));
    let navigate = [("accept", "text/html"), ("sec-fetch-mode", "navigate")];
    let room_page = server
        .request(
            http::Method::GET,
            "/room/demo",
            &navigate,
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(room_page.status, 200);
    assert_eq!(room_page.text(), page.text());
    assert!(server.get("/app.js").await.text().contains("new WebSocket"));
    assert_eq!(server.get("/api/nope").await.status, 404);

    let connect = |path: &'static str| {
        let url = server.ws_url(path);
        async move { tokio_tungstenite::connect_async(&url).await.unwrap().0 }
    };
    let mut ada = connect("/api/room/demo/ws").await;
    let welcome = next_json(&mut ada).await;
    assert_eq!(welcome["type"], json!("welcome"));
    let ada_id = welcome["player"].as_str().unwrap().to_string();
    assert_eq!(ada_id.len(), 16, "8 bytes of SHA-256 in hex: {ada_id}");
    assert!(ada_id.bytes().all(|b| b.is_ascii_hexdigit()));
    let mut bob = connect("/api/room/demo/ws").await;
    assert_eq!(next_json(&mut bob).await["type"], json!("welcome"));

    ada.send(Message::Text(r#"{"x":0.25,"y":0.5}"#.into()))
        .await
        .unwrap();
    for ws in [&mut ada, &mut bob] {
        let moved = next_json(ws).await;
        assert_eq!(
            (&moved["type"], &moved["player"], &moved["x"]),
            (&json!("move"), &json!(ada_id), &json!(0.25))
        );
    }
    let state = server.get("/api/room/demo/state").await.json();
    assert_eq!(state[0]["player"], json!(ada_id));
    assert_eq!(state[0]["y"], json!(0.5));
    // Another room is separate.
    let other = server.get("/api/room/elsewhere/state").await.json();
    assert_eq!(other, json!([]));
    ada.close(None).await.unwrap();
    let left = next_json(&mut bob).await;
    assert_eq!(
        (&left["type"], &left["player"]),
        (&json!("leave"), &json!(ada_id))
    );
}

/// examples/guestbook: migrations applied from the command line, D1 entries, the KV cache,
/// an R2 avatar, the Durable Object's limit; the admin listener shows the KV namespace and
/// the D1 tables, and a reset clears the data but keeps the schema.
#[tokio::test]
async fn guestbook_example_uses_d1_kv_r2_and_an_object() {
    let config = example("guestbook").join("wrangler.toml");
    let data = scratch_dir("guestbook");
    let (ok, _, stderr) = crate::harness::run_dorun(
        &[
            "d1",
            "migrations",
            "apply",
            "DB",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{stderr}");
    let server = Server::start(
        &config,
        &["--data-dir", data.to_str().unwrap(), "--admin-port", "0"],
    );
    let sign = |name: &'static str, message: &'static str| {
        let server = &server;
        async move {
            server
                .request(
                    http::Method::POST,
                    "/sign",
                    &[("content-type", "application/json")],
                    json!({"name": name, "message": message}).to_string().into(),
                )
                .await
        }
    };
    let first = sign("ada", "hello").await;
    assert_eq!(
        (first.status, first.json()),
        (201, json!({"id": 1})),
        "{}",
        server.logs()
    );
    let listed = server.get("/entries").await.json();
    assert_eq!(listed["cache"], "miss");
    assert_eq!(listed["entries"][0]["message"], "hello");
    assert_eq!(server.get("/entries").await.json()["cache"], "hit");
    for _ in 0..2 {
        assert_eq!(sign("ada", "again").await.status, 201);
    }
    assert_eq!(sign("ada", "too often").await.status, 429);
    assert_eq!(
        sign("grace", "hi").await.status,
        201,
        "the limit is per visitor"
    );
    let long: &'static str = Box::leak("x".repeat(300).into_boxed_str());
    assert_eq!(sign("lin", long).await.status, 422);
    assert_eq!(
        server.get("/entries").await.json()["entries"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    let admin = crate::admin::AdminClient::of(&server, None);
    let databases = admin.ok("GET", "/api/d1", None).await;
    assert_eq!(databases[0]["name"], "guestbook", "{databases}");
    let tables = &databases[0]["tables"];
    assert!(
        tables
            .as_array()
            .unwrap()
            .contains(&json!({"name": "entries", "rows": 4})),
        "{tables}"
    );
    let rows = admin
        .ok(
            "POST",
            "/api/d1/guestbook/sql",
            Some(json!({"query": "SELECT name FROM entries ORDER BY id LIMIT 1"})),
        )
        .await;
    assert_eq!(rows["rows"], json!([["ada"]]));
    let namespaces = admin.ok("GET", "/api/kv", None).await;
    assert_eq!(
        namespaces,
        json!([{"id": "guestbook-cache", "file": data.join("kv/guestbook-cache.sqlite"), "keys": 1}])
    );
    let keys = admin.ok("GET", "/api/kv/guestbook-cache/keys", None).await;
    assert_eq!(keys["keys"][0]["name"], "entries:latest");
    let (status, value) = admin
        .raw("GET", "/api/kv/guestbook-cache/values/entries:latest", None)
        .await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&value).contains("grace"));

    // An avatar in R2, streamed in and out with its content type; If-None-Match works.
    let png: Vec<u8> = (0..50_000u32).map(|i| (i % 256) as u8).collect();
    let put = server
        .request(
            http::Method::PUT,
            "/avatar/ada",
            &[("content-type", "image/png")],
            png.clone().into(),
        )
        .await;
    assert_eq!(put.status, 201, "{}", put.text());
    let got = server.get("/avatar/ada").await;
    assert_eq!(got.body.to_vec(), png);
    assert_eq!(got.headers["content-type"], "image/png");
    let etag = got.headers["etag"].to_str().unwrap().to_string();
    let again = server
        .request(
            http::Method::GET,
            "/avatar/ada",
            &[("if-none-match", &etag)],
            Default::default(),
        )
        .await;
    assert_eq!(again.status, 304);

    // The admin listener lists the bucket, downloads the avatar, and could delete it.
    let buckets = admin.ok("GET", "/api/r2", None).await;
    assert_eq!(buckets[0]["name"], "guestbook-avatars", "{buckets}");
    assert_eq!(buckets[0]["objects"], 1);
    let objects = admin
        .ok("GET", "/api/r2/guestbook-avatars/objects", None)
        .await;
    assert_eq!(objects["objects"][0]["key"], "ada", "{objects}");
    let (status, body) = admin
        .raw("GET", "/api/r2/guestbook-avatars/objects/ada", None)
        .await;
    assert_eq!((status, body.to_vec()), (200, png.clone()));

    // Every binding's operations are in the metrics.
    let (status, metrics) = admin.raw("GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let metrics = String::from_utf8_lossy(&metrics);
    for needle in [
        r#"dorun_binding_operations_total{kind="d1",op="batch",outcome="ok"}"#,
        r#"dorun_binding_operations_total{kind="kv",op="get",outcome="ok"}"#,
        r#"dorun_binding_operations_total{kind="r2",op="put",outcome="ok"}"#,
        r#"dorun_binding_bytes_total{kind="r2",direction="in"}"#,
        "dorun_binding_operation_seconds",
    ] {
        assert!(metrics.contains(needle), "{needle} not in\n{metrics}");
    }

    // A reset between tests: objects, KV keys, R2 objects and D1 rows go; the tables stay.
    let reset = admin.ok("POST", "/api/reset", None).await;
    assert_eq!(
        (
            reset["kvKeys"].clone(),
            reset["d1Rows"].clone(),
            reset["r2Objects"].clone()
        ),
        (json!(1), json!(4), json!(1)),
        "{reset}"
    );
    let listed = server.get("/entries").await.json();
    assert_eq!(listed["entries"], json!([]), "{listed}");
    assert_eq!(
        sign("ada", "after the reset").await.status,
        201,
        "the limiter was reset"
    );
    assert_eq!(server.get("/avatar/ada").await.status, 404);
}

#[tokio::test]
async fn orders_example_prices_queued_orders_through_a_service_and_reports_by_cron() {
    let dir = example("orders");
    let data = scratch_dir("orders-example");
    let pricing = dir.join("pricing/wrangler.toml");
    let args = [
        pricing.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--no-crons",
    ];
    let server = Server::start(&dir.join("api/wrangler.toml"), &args);
    let order = json!({"id": "o1", "items": [{"sku": "tea", "qty": 2}, {"sku": "cake", "qty": 1}]});
    let placed = server.post("/orders", order.to_string()).await;
    assert_eq!(placed.status, 202, "{}\n{}", placed.text(), server.logs());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let priced = loop {
        let got = server.get("/orders/o1").await.json();
        if got["status"] == "priced" || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    assert_eq!(priced["total"], 1150, "{priced}\n{}", server.logs());
    assert_eq!(priced["currency"], "EUR");
    let ran = server.get("/__scheduled?cron=*+*+*+*+*").await;
    assert_eq!(ran.status, 200, "{}", ran.text());
    let report = server.get("/report").await.json();
    assert_eq!(
        (report["priced"].clone(), report["revenue"].clone()),
        (json!(1), json!(1150))
    );
}
