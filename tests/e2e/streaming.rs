//! Request and response bodies stream in both directions.

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::json;

use crate::harness::{fixture, BoxError, Server};

const MIB: usize = 1024 * 1024;

fn generated_upload(total: usize) -> crate::harness::ClientBody {
    let chunk = Bytes::from(vec![3u8; MIB]);
    let stream = futures::stream::iter(0..total / MIB)
        .map(move |_| Ok::<_, BoxError>(Frame::data(chunk.clone())));
    BodyExt::boxed(StreamBody::new(stream))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_through_the_worker() {
    let server = Server::start(
        &fixture("streaming").join("wrangler.toml"),
        &["--threads", "1"],
    );
    let total = 256 * MIB;
    let reply = server
        .send(http::Method::POST, "/count", &[], generated_upload(total))
        .await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    let body = reply.json();
    assert_eq!(body["bytes"], json!(total));
    assert!(
        body["chunks"].as_u64().unwrap() > 16,
        "arrived in many chunks: {body}"
    );
    let peak = server.peak_rss_bytes().unwrap();
    assert!(
        peak < 200 * MIB as u64,
        "a 256 MiB upload must not sit in memory; peak RSS was {} MiB",
        peak / MIB as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_from_the_worker() {
    let server = Server::start(
        &fixture("streaming").join("wrangler.toml"),
        &["--threads", "1"],
    );
    let response = server
        .send_streaming(
            http::Method::GET,
            "/generate?mib=256",
            &[],
            http_body_util::Empty::new()
                .map_err(|never| match never {})
                .boxed(),
        )
        .await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = 0usize;
    let mut frames = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body frame");
        if let Ok(data) = frame.into_data() {
            assert!(data.iter().all(|b| *b == 7));
            received += data.len();
            frames += 1;
        }
    }
    assert_eq!(received, 256 * MIB);
    assert!(frames > 16);
    let peak = server.peak_rss_bytes().unwrap();
    assert!(
        peak < 200 * MIB as u64,
        "a 256 MiB download must not sit in memory; peak RSS was {} MiB",
        peak / MIB as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_can_be_returned_as_the_response_body() {
    let server = Server::start(&fixture("streaming").join("wrangler.toml"), &[]);
    let payload: Vec<u8> = (0..3 * MIB).map(|i| (i % 251) as u8).collect();
    let reply = server.post("/echo", payload.clone()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), payload.len());
    assert!(reply.body == payload, "echoed bytes differ");
}
