//! Workers APIs real apps use that dorun lacked (issue 12, point 5).

use serde_json::{json, Value};

use crate::harness::{fixture, scratch_dir, Server};

fn start() -> Server {
    start_with(&[])
}

fn start_with(args: &[&str]) -> Server {
    let data = scratch_dir("api-gaps");
    let mut all = vec!["--data-dir", data.to_str().unwrap()];
    all.extend_from_slice(args);
    Server::start(&fixture("api-gaps").join("wrangler.toml"), &all)
}

async fn get_with(server: &Server, path: &str, headers: &[(&str, &str)]) -> crate::harness::Reply {
    server
        .request(http::Method::GET, path, headers, bytes::Bytes::new())
        .await
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

/// A body read with readAtLeast(min) until done, as workerd answers it (checked against
/// wrangler dev 4.86.0): the last, shorter read comes with `done: false`, then a read with
/// `done: true` and no bytes. Code that keeps only the reads that are not done stores all.
#[tokio::test]
async fn read_at_least_to_the_end_of_a_body_keeps_the_short_last_read() {
    let server = start();
    let min = 1000usize;
    for size in [3 * min + 57, 3 * min, 57, 1, 6_144_057] {
        let min = if size > 1_000_000 { 1_500_000 } else { min };
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let sum = body.iter().fold(0u64, |s, b| (s + u64::from(*b)) % 65521);
        let reply = server
            .post(&format!("/upload-in-chunks?min={min}"), body)
            .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let answer = reply.json();
        assert_eq!(answer["stored"], json!(size), "{size} bytes: {answer}");
        assert_eq!(answer["sum"], json!(sum), "{size} bytes: {answer}");
        let mut reads: Vec<Value> = (0..size / min).map(|_| json!([false, min, min])).collect();
        if size % min != 0 {
            reads.push(json!([false, size % min, min]));
        }
        reads.push(json!([true, 0, min]));
        assert_eq!(answer["reads"], json!(reads), "{size} bytes");
    }
}

#[tokio::test]
async fn request_cf_is_filled_in_and_fields_can_be_set() {
    let server = start();
    let cf = get_with(&server, "/cf", &[("accept-encoding", "gzip, br")])
        .await
        .json();
    assert_eq!(cf["country"], json!("US"), "{cf}");
    assert!(cf["colo"].is_string() && cf["asn"].is_number(), "{cf}");
    assert_eq!(cf["clientAcceptEncoding"], json!("gzip, br"));
    let server = start_with(&["--cf", "country=DE", "--cf", "asn=3320", "--cf", "colo=FRA"]);
    let cf = server.get("/cf").await.json();
    assert_eq!(
        (&cf["country"], &cf["asn"], &cf["colo"]),
        (&json!("DE"), &json!(3320), &json!("FRA"))
    );
}

#[tokio::test]
async fn client_ip_comes_from_forwarding_headers_only_behind_a_trusted_proxy() {
    let claims = [
        ("cf-connecting-ip", "203.0.113.7"),
        ("x-forwarded-for", "198.51.100.1"),
    ];
    let untrusted = start();
    assert_eq!(
        get_with(&untrusted, "/ip", &claims).await.text(),
        "127.0.0.1"
    );
    let behind_proxy = start_with(&["--trust-proxy", "127.0.0.0/8"]);
    assert_eq!(
        get_with(&behind_proxy, "/ip", &claims).await.text(),
        "203.0.113.7"
    );
    let forwarded = [("x-forwarded-for", "198.51.100.1, 127.0.0.5")];
    assert_eq!(
        get_with(&behind_proxy, "/ip", &forwarded).await.text(),
        "198.51.100.1"
    );
    assert_eq!(behind_proxy.get("/ip").await.text(), "127.0.0.1");
}

#[tokio::test]
async fn an_uncaught_exception_shows_a_page_to_browsers_unless_turned_off() {
    let server = start();
    let browser = [("accept", "text/html,application/xhtml+xml")];
    let page = get_with(&server, "/throw", &browser).await;
    assert_eq!(page.status, 500);
    assert_eq!(page.headers["content-type"], "text/html;charset=UTF-8");
    let html = page.text();
    assert!(
        html.contains("TypeError: page &#60;on&#62; purpose"),
        "{html}"
    );
    assert!(
        html.contains("api-gaps/index.js:"),
        "the stack names the file: {html}"
    );
    let api = server.get("/throw").await;
    assert_eq!(
        (api.status, api.text().as_str()),
        (500, "Internal Server Error")
    );
    let production = start_with(&["--no-error-page"]);
    let plain = get_with(&production, "/throw", &browser).await;
    assert_eq!(
        (plain.status, plain.text().as_str()),
        (500, "Internal Server Error")
    );
}

#[tokio::test]
async fn a_worker_can_accept_the_websocket_an_object_returned() {
    let server = start();
    let reply = server.get("/accept-remote").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    assert_eq!(
        reply.json(),
        json!({
            "status": 101,
            "received": ["echo:one", "echo:two", "echo:bye"],
            "close": [4000, "done"],
        })
    );
}

#[tokio::test]
async fn request_cf_reaches_an_object_through_stub_fetch() {
    let server = start_with(&["--cf", "country=NZ"]);
    let reply = server.get("/cf-forward").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    assert_eq!(reply.json(), json!({"country": "NZ", "colo": "SFO"}));
    // As partyserver passes it on: a copy made with new Request(request).
    let copy = server.get("/cf-forward-copy").await;
    assert_eq!(copy.json(), json!({"country": "NZ", "colo": "SFO"}));
}

#[tokio::test]
async fn cloudflare_email_and_the_exports_of_cloudflare_workers_load() {
    let server = start();
    let reply = server.get("/modules").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    assert_eq!(
        reply.json(),
        json!({"email": ["a@example.com", "b@example.com"], "exports": ["Echo", "Relay"]})
    );
}

#[tokio::test]
async fn generated_configs_load_an_unusable_tsconfig_and_empty_binding_lists() {
    let dir = scratch_dir("generated-config");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("src/index.ts"),
        "export default { fetch: (): Response => new Response(\"loaded\") };\n",
    )
    .unwrap();
    // A tsconfig that extends a file outside the project (as monorepo fixtures do).
    std::fs::write(
        dir.join("tsconfig.json"),
        r#"{"extends": "../no-such-base/tsconfig.json", "compilerOptions": {"paths": {"@/*": ["src/*"]}}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("wrangler.json"),
        r#"{"name": "generated", "main": "src/index.ts", "compatibility_date": "2026-01-01", "kv_namespaces": [], "r2_buckets": []}"#,
    )
    .unwrap();
    let server = Server::start(&dir.join("wrangler.json"), &[]);
    assert_eq!(server.get("/").await.text(), "loaded");
    assert!(
        server
            .logs()
            .contains("compilerOptions.paths and baseUrl are not used"),
        "{}",
        server.logs()
    );
}
