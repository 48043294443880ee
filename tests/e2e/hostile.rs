//! Hostile input from the Worker's own code and from clients: SQL that never ends, timers
//! that never stop, SQL that tries to leave the sandbox, imports from outside the project,
//! memory outside the V8 heap, connections that never finish.

use std::time::Duration;

use crate::harness::{fixture, scratch_dir, Server};

fn hostile() -> std::path::PathBuf {
    fixture("hostile").join("wrangler.toml")
}

/// Runs `query` in object `name` through the fixture's `sql` route: `ok: <rows>` or
/// `error: <message>`.
async fn sql(server: &Server, name: &str, query: &str) -> String {
    server
        .get(&format!("/obj/{name}/sql?q={}", encode(query)))
        .await
        .text()
}

/// Percent-encodes a query parameter value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn sql_that_never_ends_stops_at_the_cpu_limit_and_the_thread_serves_again() {
    let server = Server::start(&hostile(), &["--threads", "1", "--cpu-limit-ms", "300"]);
    let reply = server.get("/obj/a/sql-forever").await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(reply.text().contains("CPU time limit"), "{}", reply.text());
    // The one thread is free again: the Worker and the same object answer.
    assert_eq!(server.get("/hello").await.text(), "hello");
    assert_eq!(server.get("/obj/a/count").await.text(), "0");
    assert!(server.wait_for_log("CPU limit").await);
}

#[tokio::test]
async fn transactions_and_pragmas_in_user_sql_are_refused_whatever_precedes_them() {
    let server = Server::start(&hostile(), &[]);
    for query in [
        "/**/BEGIN",
        "/* c */ COMMIT",
        "/**/SAVEPOINT s",
        "INSERT INTO t VALUES (1); /**/COMMIT",
    ] {
        let text = sql(&server, "tx", query).await;
        assert!(
            text.contains("state.storage.transaction()"),
            "{query}: {text}"
        );
    }
    // Writes still work after the refusals.
    assert_eq!(
        sql(&server, "tx", "INSERT INTO t VALUES (2)").await,
        "ok: []"
    );
    for query in [
        "PRAGMA writable_schema = ON",
        "PRAGMA journal_mode = DELETE",
        "PRAGMA page_size = 1024",
    ] {
        let text = sql(&server, "tx", query).await;
        assert!(text.contains("not authorized"), "{query}: {text}");
    }
    let text = sql(&server, "tx", "PRAGMA table_info(t)").await;
    assert!(text.contains("\"name\":\"x\""), "{text}");
    // Functions: Cloudflare's list (math included), not the build details.
    for query in ["SELECT sqlite_version()", "SELECT sqlite_source_id() AS v"] {
        let text = sql(&server, "tx", query).await;
        assert!(
            text.contains("not authorized to use function: sqlite_"),
            "{query}: {text}"
        );
    }
    let text = sql(
        &server,
        "tx",
        "SELECT floor(pi() * 100) AS p, json_extract('[7]', '$[0]') AS j",
    )
    .await;
    assert_eq!(text, r#"ok: [{"p":314,"j":7}]"#);
    // The file is intact: the object still reads its rows.
    let count: u32 = server.get("/obj/tx/count").await.text().parse().unwrap();
    assert!(count >= 1, "{count}");
}

#[tokio::test]
async fn sql_values_and_results_have_cloudflare_limits() {
    let server = Server::start(&hostile(), &[]);
    let text = sql(&server, "big", "SELECT length(randomblob(50000000)) AS n").await;
    assert!(text.contains("too big"), "{text}");
    let text = sql(
        &server,
        "big",
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 40) \
         SELECT randomblob(1900000) FROM c",
    )
    .await;
    assert!(text.contains("too large"), "{text}");
}

#[tokio::test]
async fn imports_reach_only_the_project_and_never_show_host_files() {
    let server = Server::start(&hostile(), &[]);
    let host_name = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let outside = scratch_dir("outside-import");
    std::fs::write(outside.join("leak.js"), "export const leaked = 1;").unwrap();
    let leak = outside.join("leak.js");
    for spec in [
        "file:///etc/hostname".to_string(),
        "/etc/hostname".to_string(),
        "../../../../../../../../../../etc/hostname".to_string(),
        format!("file://{}", leak.display()),
        leak.display().to_string(),
    ] {
        let text = server
            .get(&format!("/import?spec={}", encode(&spec)))
            .await
            .text();
        assert!(
            text.starts_with("error: ") && text.contains("only files of the Worker's project"),
            "{spec}: {text}"
        );
        assert!(!text.contains("leaked"), "{spec}: {text}");
        if !host_name.trim().is_empty() {
            assert!(!text.contains(host_name.trim()), "{spec}: {text}");
        }
    }
    // Files of the project still import.
    let text = server
        .get(&format!("/import?spec={}", encode("./extra.js")))
        .await
        .text();
    assert_eq!(text, "ok: inside");
    let _ = std::fs::remove_dir_all(outside);
}

/// Reads until the server closes the connection; false if it is still open after `limit`.
async fn closed_by_server(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

fn address(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_string()
}

#[tokio::test]
async fn silent_slow_and_idle_connections_are_closed() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start(
        &hostile(),
        &["--header-timeout", "0.5", "--keep-alive-timeout", "0.5"],
    );
    let mut silent = tokio::net::TcpStream::connect(address(&server))
        .await
        .unwrap();
    // Slowloris: a header that never ends, one byte every 100 ms.
    let mut slow = tokio::net::TcpStream::connect(address(&server))
        .await
        .unwrap();
    slow.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let dribble = tokio::spawn(async move {
        for _ in 0..100 {
            if slow.write_all(b"a").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    });
    // A keep-alive connection that served one request, then says nothing.
    let mut idle = tokio::net::TcpStream::connect(address(&server))
        .await
        .unwrap();
    idle.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_by_server(&mut silent, Duration::from_secs(10)).await);
    assert!(closed_by_server(&mut idle, Duration::from_secs(10)).await);
    assert!(dribble.await.unwrap(), "the slow header was cut off");
    assert_eq!(server.get("/hello").await.text(), "hello");
}

#[tokio::test]
async fn at_the_connection_limit_idle_connections_make_room_for_new_clients() {
    let server = Server::start(&hostile(), &["--max-connections", "20"]);
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(
            tokio::net::TcpStream::connect(address(&server))
                .await
                .unwrap(),
        );
    }
    // A real client still gets an answer, and the oldest silent ones were closed for it.
    for _ in 0..5 {
        assert_eq!(server.get("/hello").await.text(), "hello");
    }
    let mut closed = 0;
    for stream in &mut held {
        if closed_by_server(stream, Duration::from_millis(200)).await {
            closed += 1;
        }
    }
    assert!(closed >= 21, "only {closed} of 40 closed");
}

#[tokio::test]
async fn an_http11_request_without_host_gets_400() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(&hostile(), &[]);
    let mut stream = tokio::net::TcpStream::connect(address(&server))
        .await
        .unwrap();
    stream
        .write_all(b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

/// An allocation refused: a RangeError the code caught, or the isolate reset for memory.
fn out_of_memory(status: &u16, text: &str) -> bool {
    (*status == 200 && text.starts_with("error: "))
        || (*status == 503 && text.contains("memory limit"))
}

#[tokio::test]
async fn array_buffers_and_wasm_memory_have_a_budget_per_isolate() {
    let server = Server::start(&hostile(), &["--threads", "1", "--heap-limit-mb", "64"]);
    // Past the budget the allocation fails; V8 then treats the isolate as out of memory,
    // and it is reset as on Cloudflare ("Worker exceeded memory limit.").
    let reply = server.get("/array-buffers?n=8&mb=32").await;
    assert!(
        out_of_memory(&reply.status, &reply.text()),
        "{}",
        reply.text()
    );
    // 4096 pages of 64 KiB: 256 MiB, four times the budget.
    let reply = server.get("/wasm-memory?n=2&pages=4096").await;
    assert!(
        out_of_memory(&reply.status, &reply.text()),
        "{}",
        reply.text()
    );
    assert!(server.peak_rss_bytes().unwrap() < 400 << 20);
    assert_eq!(server.get("/hello").await.text(), "hello");
    // Within the budget, buffers work.
    assert_eq!(server.get("/array-buffers?n=2&mb=8").await.text(), "ok: 2");
}

#[tokio::test]
async fn above_the_process_memory_limit_allocations_fail_and_rss_stays_bounded() {
    let server = Server::start(
        &hostile(),
        &[
            "--threads",
            "1",
            "--heap-limit-mb",
            "2048",
            "--memory-limit-mb",
            "300",
        ],
    );
    let reply = server.get("/array-buffers?n=40&mb=40").await;
    assert!(
        out_of_memory(&reply.status, &reply.text()),
        "{}",
        reply.text()
    );
    let peak = server.peak_rss_bytes().unwrap();
    assert!(peak < 700 << 20, "peak RSS {} MiB", peak >> 20);
}

/// Reads a tick counter until it stops changing; the settled value, or None if it never
/// settles within 20 s.
async fn settled_ticks(server: &Server, path: &str) -> Option<u64> {
    let mut last = None;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = server.get(path).await.json().as_u64();
        if now.is_some() && now == last {
            return now;
        }
        last = now;
    }
    None
}

#[tokio::test]
async fn timers_that_burn_cpu_are_stopped_at_the_limit_for_objects_and_workers() {
    let server = Server::start(&hostile(), &["--threads", "1", "--cpu-limit-ms", "500"]);
    assert_eq!(
        server.get("/obj/i/burn-interval?ms=100").await.text(),
        "started"
    );
    assert_eq!(server.get("/burn-interval?ms=100").await.text(), "started");
    let object_ticks = settled_ticks(&server, "/object-ticks?name=i").await;
    let worker_ticks = settled_ticks(&server, "/ticks").await;
    // About 500 ms of 100 ms ticks each, then nothing.
    assert!(matches!(object_ticks, Some(4..=12)), "{object_ticks:?}");
    assert!(matches!(worker_ticks, Some(4..=12)), "{worker_ticks:?}");
    assert!(
        server.wait_for_log("exceeded its CPU time limit").await,
        "{}",
        server.logs()
    );
    assert!(
        server
            .wait_for_log("Timers of the Worker used more than")
            .await
    );
    assert_eq!(server.get("/hello").await.text(), "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_requests_go_to_the_thread_that_is_not_stuck() {
    let server = Server::start(&hostile(), &["--threads", "2", "--cpu-limit-ms", "20000"]);
    let url = format!("{}/spin?ms=6000", server.base);
    let spinning = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        client.get(url.parse().unwrap()).await.map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Round robin would queue every other request behind the 6 s spin.
    for _ in 0..10 {
        let reply = tokio::time::timeout(Duration::from_secs(3), server.get("/hello")).await;
        assert_eq!(reply.expect("answered by the free thread").text(), "hello");
    }
    assert_eq!(spinning.await.unwrap().unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_delivers_again_the_calls_that_had_not_reached_their_object() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start(&hostile(), &["--threads", "1", "--cpu-limit-ms", "500"]);
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/obj/g/ws"))
        .await
        .unwrap();
    let base = server.base.clone();
    let culprit = tokio::spawn(async move {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let url = format!("{base}/obj/g/hold-then-spin");
        client.get(url.parse().unwrap()).await.map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    // These wait behind the culprit's blockConcurrencyWhile when the isolate is reset; the
    // new isolate gets them (the socket is held outside JS and survives the reset).
    for i in 0..3 {
        ws.send(Message::Text(format!("m{i}").into()))
            .await
            .unwrap();
    }
    assert_eq!(culprit.await.unwrap().unwrap(), 503);
    for i in 0..3 {
        let reply = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a reply")
            .unwrap()
            .unwrap();
        assert_eq!(reply, Message::Text(format!("echo m{i}").into()));
    }
    assert!(server.wait_for_log("delivered again").await);
}

#[tokio::test]
async fn storage_failures_reach_clients_without_server_paths() {
    let data = scratch_dir("hostile-paths");
    let server = Server::start(&hostile(), &["--data-dir", data.to_str().unwrap()]);
    let id = server.get("/id?name=broken").await.text();
    // A directory where the object's SQLite file should be: it cannot be opened.
    std::fs::create_dir_all(data.join("hostile-Abuse").join(format!("{id}.sqlite"))).unwrap();
    let reply = server
        .request(
            http::Method::GET,
            "/obj/broken/count",
            &[("accept", "text/html")],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, 500);
    let page = reply.text();
    assert!(page.contains("storage"), "{page}");
    assert!(!page.contains(data.to_str().unwrap()), "{page}");
    assert!(!page.contains(&id), "{page}");
    // The operator's log has the file.
    assert!(server.wait_for_log(&format!("{id}.sqlite")).await);
    let _ = std::fs::remove_dir_all(data);
}

#[tokio::test]
async fn a_worker_fetching_itself_in_a_loop_is_stopped_at_the_depth_limit() {
    let server = Server::start(&hostile(), &[]);
    assert_eq!(server.get("/self-fetch?depth=10").await.text(), "bottom");
    let reply = server.get("/self-fetch?depth=300").await;
    assert_eq!(reply.status, 500, "{}", reply.text());
    assert!(server.wait_for_log("Subrequest depth limit exceeded").await);
    assert_eq!(server.get("/hello").await.text(), "hello");
    // A client cannot spend the Worker's depth budget, and the Worker never sees the header.
    for forged in ["16", "16;0000000000000000", "99;x"] {
        let reply = server
            .request(
                http::Method::GET,
                "/self-fetch?depth=5",
                &[("x-dorun-fetch-depth", forged)],
                bytes::Bytes::new(),
            )
            .await;
        assert_eq!(reply.text(), "bottom", "{forged}");
    }
}

#[tokio::test]
async fn one_large_send_to_a_reading_client_goes_through() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let server = Server::start(&hostile(), &[]);
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(
        server.ws_url("/obj/big/ws"),
        Some(config),
        false,
    )
    .await
    .unwrap();
    ws.send(Message::Text("big".into())).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("a reply")
        .unwrap()
        .unwrap();
    // 17 MiB: more than the 16 MiB a client that does not read may have queued.
    assert_eq!(reply.len(), 17 << 20);
}
