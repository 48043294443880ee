//! Bindings served without a store of their own and bindings that exist only on Cloudflare
//! (tests/fixtures/local-bindings): Analytics Engine takes data points and drops them;
//! `send_email` writes messages to an outbox; Secrets Store values come from the
//! environment; the
//! Worker starts with a warning per Cloudflare-only
//! binding, whose first use throws an Error naming it; `version_metadata`, rate limits
//! (`ratelimits` and the `unsafe.bindings` form) and Hyperdrive's `localConnectionString`
//! work.

use serde_json::json;

use crate::harness::{fixture, Server};

#[tokio::test]
async fn cloud_only_bindings_start_and_fail_clearly_on_first_use() {
    let server = Server::start(&fixture("local-bindings").join("wrangler.toml"), &[]);
    let logs = server.logs();
    for (key, binding) in [
        ("ai", "AI"),
        ("vectorize[0]", "VECTORS"),
        ("browser", "BROWSER"),
    ] {
        assert!(
            logs.contains(&format!("{key}: env.{binding} ("))
                && logs.contains("exists only on Cloudflare"),
            "no startup warning for {binding}:\n{logs}"
        );
    }
    let kinds = server.get_json_ok("/kinds", &[]).await;
    assert_eq!(
        kinds,
        json!({"AI": "function", "BROWSER": "function", "VECTORS": "function", "EVENTS": "object",
               "MAILER": "object", "VERSION": "object", "LIMITER": "object", "PG": "object"})
    );
    for (route, binding, what) in [
        ("/ai", "AI", "Workers AI, `ai`"),
        ("/vectorize", "VECTORS", "Vectorize, `vectorize`"),
        ("/browser", "BROWSER", "Browser Rendering, `browser`"),
    ] {
        let answer = server.get_json_ok(route, &[]).await;
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(&format!(
                "Error: env.{binding} ({what} in the config) is not available locally"
            )),
            "{route}: {answer}"
        );
    }
    let quiet = server.get_json_ok("/awaited", &[]).await;
    assert_eq!(quiet["awaited"], "function", "{quiet}");
    assert_eq!(
        quiet["printed"], "[Workers AI: not available locally]",
        "{quiet}"
    );
    // Analytics Engine takes data points and drops them, as wrangler dev does.
    let events = server.get_json_ok("/events", &[]).await;
    assert_eq!(events, json!({}), "{events}");
}

#[tokio::test]
async fn send_email_writes_the_outbox_and_secrets_come_from_the_environment() {
    let server = Server::start_with_env(
        &fixture("local-bindings").join("wrangler.toml"),
        &["--ephemeral"],
        &[("DORUN_TEST_API_KEY", "s3cret")],
    );
    assert_eq!(
        server.get_json_ok("/email", &[]).await,
        json!({"ok": "sent"})
    );
    assert!(
        server.wait_for_log("written to ").await,
        "{}",
        server.logs()
    );
    let logs = server.logs();
    let path = logs
        .lines()
        .find_map(|l| l.split("written to ").nth(1))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(path.ends_with(".eml"), "{path}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "Subject: hi\r\n\r\nhello ops"
    );
    assert!(
        logs.contains("message from app@example.com to ops@example.com"),
        "{logs}"
    );
    let bad = server.get_json_ok("/email-bad", &[]).await;
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .starts_with("TypeError: send() expects an EmailMessage"),
        "{bad}"
    );
    let restricted = server.get_json_ok("/email-restricted", &[]).await;
    assert!(
        restricted["error"]
            .as_str()
            .unwrap()
            .starts_with("Error: email to evil@example.com not allowed"),
        "{restricted}"
    );
    assert_eq!(
        server.get_json_ok("/secret", &[]).await,
        json!({"ok": "s3cret"})
    );
    let missing = server.get_json_ok("/secret-missing", &[]).await;
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("has no local value: set NOT_SET_ANYWHERE"),
        "{missing}"
    );
}

#[tokio::test]
async fn version_metadata_rate_limits_and_hyperdrive_work_locally() {
    let server = Server::start(&fixture("local-bindings").join("wrangler.toml"), &[]);
    let version = server.get_json_ok("/version", &[]).await;
    assert_eq!(version["id"].as_str().unwrap().len(), 36, "{version}");
    assert_eq!(version["tag"], "");
    assert!(version["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        server.get_json_ok("/version", &[]).await,
        version,
        "one version per start"
    );

    // 3 calls a minute per key, in fixed windows: the fourth call of a key is refused
    // (checked strictly unless the calls straddled a window's end).
    let window = |period: u64| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / period
    };
    let started = window(60);
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(server.get_json_ok("/limit?key=alice", &[]).await["success"] == true);
    }
    if window(60) == started {
        assert_eq!(answers, [true, true, true, false]);
    }
    assert_eq!(
        server.get_json_ok("/limit?key=bob", &[]).await["success"],
        true
    );
    // The unsafe form: 1 per 10 s.
    let started = window(10);
    let first = server.get_json_ok("/old-limit", &[]).await["success"] == true;
    let second = server.get_json_ok("/old-limit", &[]).await["success"] == true;
    if window(10) == started {
        assert_eq!((first, second), (true, false));
    }

    assert_eq!(
        server.get_json_ok("/pg", &[]).await,
        json!({"connectionString": "postgres://app:secret@127.0.0.1:5433/appdb", "host": "127.0.0.1",
               "port": 5433, "user": "app", "password": "secret", "database": "appdb"})
    );
}

/// A TCP server on 127.0.0.1 that answers each connection with what it read, upper-cased,
/// once the client stops writing (or after 5 bytes).
async fn upper_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while got.len() < 5 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(&got.to_ascii_uppercase()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    port
}

#[tokio::test]
async fn connect_from_cloudflare_sockets_reaches_a_tcp_server() {
    let server = Server::start(&fixture("sockets").join("wrangler.toml"), &["--ephemeral"]);
    let port = upper_server().await;
    let echo = server
        .get_json_ok(&format!("/echo?port={port}&say=hello"), &[])
        .await;
    assert_eq!(echo["answer"], "HELLO", "{echo}");
    assert_eq!(echo["remote"], format!("127.0.0.1:{port}"));
    let short = server
        .get_json_ok(&format!("/string?port={port}"), &[])
        .await;
    assert_eq!(short["answer"], "SHORT", "{short}");
    // Nothing listens on a port just freed: `opened` rejects.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let free = closed.local_addr().unwrap().port();
    drop(closed);
    let refused = server.get(&format!("/refused?port={free}")).await;
    assert_eq!(refused.status, 502);
    assert!(
        refused
            .text()
            .contains("ConnectionRefused: Connection refused"),
        "{}",
        refused.text()
    );
    let smtp = server.get("/port25").await.json();
    assert_eq!(
        smtp["error"],
        "TypeError: Connections to port 25 are prohibited (as on Cloudflare)"
    );
    assert_eq!(
        server
            .get(&format!("/starttls-twice?port={port}"))
            .await
            .text(),
        "function"
    );
}
