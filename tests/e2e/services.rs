//! Service bindings (`services`) between workers of one `dorun serve` (tests/fixtures/
//! services): `fetch()` reaches the bound worker's default export with the request as
//! sent (method, URL, headers, body) and its response comes back whole; a binding to a
//! worker this process does not serve warns at startup and fails clearly on first use;
//! JS RPC reaches the default export, a named entrypoint (with `ctx.props`) and an object
//! export, with functions, `RpcTarget`s and Durable Object stubs passed between the two
//! workers both ways.

use crate::harness::{fixture, Server};

fn start() -> Server {
    let back = fixture("services").join("back/wrangler.toml");
    Server::start(
        &fixture("services").join("front/wrangler.toml"),
        &["--ephemeral", back.to_str().unwrap()],
    )
}

#[tokio::test]
async fn fetch_reaches_the_bound_workers_default_export() {
    let server = start();
    let reply = server.post("/echo", "hello back").await;
    assert_eq!(reply.status, 201, "{}\n{}", reply.text(), server.logs());
    assert_eq!(reply.headers["x-back"], "yes");
    assert_eq!(
        reply.json(),
        serde_json::json!({"worker": "svc-back", "method": "POST", "url": "/echo?x=1",
                           "from": "front", "body": "hello back"})
    );
    // The incoming request passed on as it is.
    let forwarded = server.get("/forward?y=2").await;
    assert_eq!(
        forwarded.status,
        201,
        "{}\n{}",
        forwarded.text(),
        server.logs()
    );
    assert_eq!(forwarded.json()["url"], "/forward?y=2");
    assert_eq!(forwarded.json()["method"], "GET");
    // The bound worker's static assets answer first, as for a request from the front door.
    let asset = server.get("/asset").await;
    assert_eq!(
        (asset.status, asset.text()),
        (200, "an asset of svc-back\n".to_string())
    );
}

#[tokio::test]
async fn a_binding_to_a_worker_not_served_warns_and_fails_on_first_use() {
    let server = start();
    let gone = server.get("/gone").await;
    let logs = server.logs();
    assert!(
        logs.contains("service binding env.GONE names worker \"svc-elsewhere\""),
        "{logs}"
    );
    assert_eq!(gone.status, 502);
    assert!(
        gone.text()
            .contains("the service binding's worker \"svc-elsewhere\" is not served"),
        "{}",
        gone.text()
    );
}

#[tokio::test]
async fn js_rpc_reaches_entrypoints_and_passes_stubs_between_workers() {
    let server = start();
    let rpc = server.get("/rpc").await;
    assert_eq!(rpc.status, 200, "{}\n{}", rpc.text(), server.logs());
    let got = rpc.json();
    let expected = serde_json::json!({
        "add": {"value": 3},
        "version": {"value": 7},
        "pipelined": {"value": 2},
        "callback": {"value": "back got front doubled 42"},
        "storeFromBack": {"value": [1, 3]},
        "stubToBack": {"value": "front's Local greets back"},
        "fail": {"error": "RangeError: back failed on purpose"},
        "missing": {"error": "TypeError: The RPC receiver does not implement the method \"nothing\"."},
        "defaultProps": {"value": {}},
        "admin": {"value": {"props": {"role": "admin", "level": 3}, "hasEnv": true}},
        "adminFetch": "admin PUT /who admin",
        "plain": {"value": "hello front (object, function)"},
        "shadowed": {"error": "TypeError: The RPC receiver does not implement the method \"shadow\"."},
        "disposed": {"value": 5},
    });
    for (key, want) in expected.as_object().unwrap() {
        assert_eq!(&got[key], want, "{key}: {got}");
    }
    let gone = got["gone"]["error"].as_str().unwrap_or_default();
    assert!(
        gone.contains("the service binding's worker \"svc-elsewhere\" is not served"),
        "{got}"
    );
}

/// Steps where dorun differs on purpose, and why (the README says so too).
const DELIBERATE: &[(&str, &str)] = &[
    (
        "fetch.post-echo",
        "a request body is streamed to the bound worker, without content-length",
    ),
    ("fetch.request-object", "as fetch.post-echo"),
    (
        "fetch.callee-throws",
        "the bound worker's exception is a plain 500 Internal Server Error; wrangler dev \
         answers with Miniflare's JSON error page",
    ),
    (
        "rpc.call-nested-non-function",
        "the TypeError names the member called (\"v\"), not its whole path",
    ),
    (
        "rpc.pipelining.makeObj-array-index",
        "a pipelined array index gives the element; wrangler dev gives undefined",
    ),
    (
        "callee.env-and-ctx.default",
        "the callee's ctx has props (and waitUntil...), not workerd's cache and tracing",
    ),
    (
        "stream.arg.string-chunks",
        "a ReadableStream of strings passed over RPC fails at once with a clear error; \
         wrangler dev never settles",
    ),
    (
        "stream.return.value-stream",
        "as stream.arg.string-chunks (wrangler dev: \"Network connection lost.\")",
    ),
];

/// The two workers of tests/fixtures/services-reference on dorun answer every step as
/// wrangler dev 4.86.0 did, except the [`DELIBERATE`] differences.
#[tokio::test]
async fn service_bindings_answer_as_wrangler_dev_does() {
    crate::reference::assert_workers_match_wrangler_dev(
        "services-reference",
        &["main/wrangler.toml", "callee/wrangler.toml"],
        DELIBERATE,
        &[],
    )
    .await;
}
