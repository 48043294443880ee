//! The Web platform inside a Worker: crypto against published vectors, the common
//! globals, and outbound fetch to a local server.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::harness::{fixture, Server};

#[tokio::test]
async fn crypto_subtle_matches_known_vectors() {
    let server = Server::start(&fixture("web-apis").join("wrangler.toml"), &[]);
    let reply = server.get("/crypto").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    let body = reply.json();
    assert_eq!(
        body["sha256"],
        json!("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    );
    assert_eq!(
        body["sha1"],
        json!("a9993e364706816aba3e25717850c26c9cd0d89d")
    );
    assert_eq!(
        body["hmac"],
        json!("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    );
    assert_eq!(
        body["aesGcm"],
        json!(concat!(
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e",
            "21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
            "4d5c2af327cd64a62cf35abd2ba6fab4"
        ))
    );
    assert_eq!(body["aesRoundTrip"], json!(true));
    assert_eq!(
        body["ed25519"],
        json!(concat!(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155",
            "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        ))
    );
    assert_eq!(body["edVerified"], json!(true));
    assert_eq!(body["ecVerified"], json!(true));
    assert_eq!(body["ecTampered"], json!(false));
    assert_eq!(body["ecSignatureLength"], json!(64));
}

#[tokio::test]
async fn platform_globals_behave() {
    let server = Server::start(&fixture("web-apis").join("wrangler.toml"), &[]);
    let reply = server.get("/platform").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    let body = reply.json();
    assert_eq!(body["globals"], json!([]), "missing globals");
    assert_eq!(body["userAgent"], json!("Cloudflare-Workers"));
    assert_eq!(body["btoa"], json!("aGVsbG8="));
    assert_eq!(body["atob"], json!("hello"));
    assert_eq!(body["uuidOk"], json!(true));
    assert_eq!(body["randomLength"], json!(16));
    assert_eq!(body["urlPattern"], json!("42"));
    assert_eq!(body["url"], json!("https://example.com/a?x=1&y=2&z=3"));
    assert_eq!(body["searchParams"], json!("2"));
    assert_eq!(body["structuredClone"], json!(true));
    assert_eq!(body["textDecoder"], json!("€"));
    assert_eq!(
        body["blob"],
        json!({"size": 4, "type": "text/plain", "text": "abcd"})
    );
    assert_eq!(body["formData"], json!("value"));
    assert_eq!(body["headers"], json!([["x-one", "1"], ["x-two", "2"]]));
    assert_eq!(body["abort"], json!(true));
    assert_eq!(body["eventTarget"], json!("ping"));
    assert_eq!(body["timeout"], json!("fired"));
    assert_eq!(body["elapsedAtLeast20"], json!(true));
    assert_eq!(body["intervalTicks"], json!(3));
    assert_eq!(body["clearTimeout"], json!("cleared"));
    assert_eq!(body["microtask"], json!("ran"));
    assert_eq!(body["transformStream"], json!("ABC"));
    assert_eq!(body["compression"], json!(true));
    assert_eq!(body["responseJson"], json!({"a": 1}));
    assert_eq!(body["requestClone"], json!("b"));
    assert_eq!(
        body["noDeno"],
        json!(true),
        "Deno internals are not exposed"
    );
    assert!(
        server
            .wait_for_log("web-apis console.log reached 123")
            .await,
        "console.log goes to the log"
    );
    assert!(
        server.logs().contains("web-apis"),
        "log lines are tagged with the worker"
    );
}

/// A local upstream that answers with a header and echoes what the Worker sent.
async fn start_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service =
                    service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                        let from_worker = request
                            .headers()
                            .get("x-from-worker")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        let method = request.method().to_string();
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        let text =
                            format!("{method} {from_worker} {}", String::from_utf8_lossy(&body));
                        let response = http::Response::builder()
                            .status(201)
                            .header("x-upstream", "local")
                            .body(Full::new(Bytes::from(text)))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    format!("http://{address}/upstream")
}

#[tokio::test]
async fn outbound_fetch_reaches_a_local_server() {
    let upstream = start_upstream().await;
    let server = Server::start(&fixture("web-apis").join("wrangler.toml"), &[]);
    let reply = server.get(&format!("/fetch?target={upstream}")).await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    assert_eq!(
        reply.json(),
        json!({"status": 201, "header": "local", "body": "POST yes sent by the worker"})
    );
}

#[tokio::test]
async fn fetch_refuses_non_http_schemes() {
    let server = Server::start(&fixture("web-apis").join("wrangler.toml"), &[]);
    assert_eq!(server.get("/fetch-file").await.text(), "refused: TypeError");
}

#[tokio::test]
async fn zero_delay_timers_have_no_floor() {
    let server = Server::start(&fixture("web-apis").join("wrangler.toml"), &[]);
    let body = server.get_json_ok("/timers", &[]).await;
    // A 1 ms floor allows at most 20 turns in a 20 ms window; without one it is thousands.
    let turns = body["turnsPerWindow"].as_u64().unwrap_or(0);
    assert!(
        turns > 200,
        "only {turns} setTimeout(0) turns in 20 ms: {body}"
    );
    assert_eq!(body["order"], json!(["a", "b"]), "{body}");
    assert_eq!(body["fiveMsNotEarly"], json!(true), "{body}");
}
