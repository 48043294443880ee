//! The Cache API (`caches.default`, `caches.open`): put / match / delete with Cloudflare's
//! rules for what is stored and for how long, entries kept on disk across a restart.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{fixture, scratch_dir, Server};

fn start(data: &Path) -> Server {
    Server::start(
        &fixture("cache").join("wrangler.toml"),
        &["--data-dir", data.to_str().unwrap()],
    )
}

async fn call(server: &Server, path: &str) -> Value {
    server.get_json_ok(path, &[]).await
}

#[tokio::test]
async fn put_then_match_returns_the_stored_response_with_cf_cache_status_hit() {
    let server = start(&scratch_dir("cache-basic"));
    assert_eq!(
        call(&server, "/globals").await,
        json!({"caches": "object", "sameDefault": true, "cache": true, "storage": true})
    );
    assert_eq!(call(&server, "/match?key=a").await, json!({"found": false}));
    let put = call(
        &server,
        "/put?key=a&status=200&etag=%22v1%22&cache-control=max-age%3D600",
    )
    .await;
    assert_eq!(
        put,
        json!({"stored": true, "bodyUsed": true}),
        "put consumes the response"
    );

    let found = call(&server, "/match?key=a").await;
    assert_eq!(found["found"], true, "{found}");
    assert_eq!(found["status"], 200);
    assert_eq!(found["body"], "body of a");
    assert_eq!(found["headers"]["content-type"], "text/plain");
    assert_eq!(found["headers"]["x-key"], "a");
    assert_eq!(found["headers"]["etag"], "\"v1\"");
    assert_eq!(found["headers"]["cf-cache-status"], "HIT");
    // A URL string is the same key as a GET Request for it.
    assert_eq!(
        call(&server, "/match?key=a&byUrl").await["body"],
        "body of a"
    );

    // If-None-Match with the stored ETag: 304 without a body; another tag: the entry.
    let not_modified = server
        .get_json_ok("/match?key=a", &[("if-none-match", "\"v1\"")])
        .await;
    assert_eq!(not_modified["status"], 304, "{not_modified}");
    assert_eq!(not_modified["body"], "");
    assert_eq!(not_modified["headers"]["cf-cache-status"], "HIT");
    let modified = server
        .get_json_ok("/match?key=a", &[("if-none-match", "\"v0\"")])
        .await;
    assert_eq!(modified["status"], 200);
    assert_eq!(modified["body"], "body of a");

    // Only GET matches, unless ignoreMethod.
    assert_eq!(
        call(&server, "/match?key=a&method=POST").await,
        json!({"found": false})
    );
    let ignored = call(&server, "/match?key=a&method=POST&ignoreMethod").await;
    assert_eq!(ignored["body"], "body of a");

    // A named cache is separate from the default one and from other names.
    assert_eq!(
        call(&server, "/match?key=a&cache=x").await,
        json!({"found": false})
    );
    call(&server, "/put?key=a&cache=x&cache-control=max-age%3D600").await;
    assert_eq!(call(&server, "/match?key=a&cache=x").await["found"], true);
    assert_eq!(call(&server, "/match?key=a&cache=y").await["found"], false);

    // delete: only GET unless ignoreMethod; true once, then false.
    assert_eq!(
        call(&server, "/delete?key=a&method=POST").await,
        json!({"deleted": false})
    );
    assert_eq!(
        call(&server, "/delete?key=a").await,
        json!({"deleted": true})
    );
    assert_eq!(
        call(&server, "/delete?key=a").await,
        json!({"deleted": false})
    );
    assert_eq!(call(&server, "/match?key=a").await, json!({"found": false}));
    assert_eq!(call(&server, "/match?key=a&cache=x").await["found"], true);
    assert_eq!(
        call(&server, "/delete?key=a&cache=x&method=PURGE&ignoreMethod").await,
        json!({"deleted": true})
    );
}

#[tokio::test]
async fn put_refuses_non_get_requests_partial_content_and_vary_star_with_type_errors() {
    let server = start(&scratch_dir("cache-refused"));
    let post = call(&server, "/put?key=p&method=POST").await;
    assert_eq!(post["error"], "TypeError", "{post}");
    assert_eq!(post["message"], "Cannot cache response to non-GET request.");
    assert_eq!(
        post["bodyUsed"], false,
        "the body is untouched when put throws"
    );
    let partial = call(&server, "/put?key=p&status=206").await;
    assert_eq!(partial["error"], "TypeError", "{partial}");
    assert_eq!(
        partial["message"],
        "Cannot cache response to a range request (206 Partial Content)."
    );
    let vary = call(&server, "/put?key=p&vary=Accept,%20*").await;
    assert_eq!(vary["error"], "TypeError", "{vary}");
    assert_eq!(
        vary["message"],
        "Cannot cache response with 'Vary: *' header."
    );
    assert_eq!(call(&server, "/match?key=p").await, json!({"found": false}));
}

#[tokio::test]
async fn uncacheable_responses_are_not_stored_and_entries_expire() {
    let server = start(&scratch_dir("cache-policy"));
    for (key, query) in [
        ("no-store", "cache-control=no-store"),
        ("private", "cache-control=private"),
        ("no-cache", "cache-control=no-cache"),
        ("cookie", "set-cookie=a%3D1&cache-control=max-age%3D600"),
        ("server-error", "status=500"),
        // Never marked cacheable (no max-age, s-maxage or Expires): as in wrangler dev.
        ("unmarked", "status=200"),
        ("unmarked-404", "status=404"),
        ("past", "expires=Thu,%2001%20Jan%201970%2000:00:00%20GMT"),
    ] {
        let put = call(&server, &format!("/put?key={key}&{query}")).await;
        assert_eq!(
            put["stored"], true,
            "put resolves even when nothing is stored: {put}"
        );
        assert_eq!(put["bodyUsed"], true);
        assert_eq!(
            call(&server, &format!("/match?key={key}")).await,
            json!({"found": false}),
            "{key} must not be stored"
        );
    }
    // With private=Set-Cookie the response is stored without its cookie.
    call(
        &server,
        "/put?key=cookie-ok&set-cookie=a%3D1&cache-control=private%3DSet-Cookie,%20max-age%3D600",
    )
    .await;
    let stored = call(&server, "/match?key=cookie-ok").await;
    assert_eq!(stored["found"], true, "{stored}");
    assert_eq!(stored["headers"].get("set-cookie"), None, "{stored}");
    // max-age=1 expires; s-maxage=60 wins over max-age=1.
    call(&server, "/put?key=short&cache-control=max-age%3D1").await;
    call(
        &server,
        "/put?key=shared&cache-control=max-age%3D1,%20s-maxage%3D60",
    )
    .await;
    assert_eq!(call(&server, "/match?key=short").await["found"], true);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        call(&server, "/match?key=short").await,
        json!({"found": false})
    );
    assert_eq!(
        call(&server, "/delete?key=short").await,
        json!({"deleted": false}),
        "an expired entry is dropped when matched"
    );
    assert_eq!(call(&server, "/match?key=shared").await["found"], true);
}

#[tokio::test]
async fn with_cache_edge_ttl_unmarked_responses_live_for_the_default_edge_ttl() {
    let data = scratch_dir("cache-edge-ttl");
    let server = Server::start(
        &fixture("cache").join("wrangler.toml"),
        &["--data-dir", data.to_str().unwrap(), "--cache-edge-ttl"],
    );
    call(&server, "/put?key=default-ttl").await;
    call(&server, "/put?key=missing&status=404").await;
    call(&server, "/put?key=server-error&status=500").await;
    assert_eq!(call(&server, "/match?key=default-ttl").await["found"], true);
    assert_eq!(call(&server, "/match?key=missing").await["found"], true);
    assert_eq!(
        call(&server, "/match?key=server-error").await,
        json!({"found": false})
    );
}

#[tokio::test]
async fn entries_survive_a_restart_with_the_same_data_dir() {
    let data = scratch_dir("cache-restart");
    let mut server = start(&data);
    call(&server, "/put?key=kept&cache-control=max-age%3D600").await;
    call(
        &server,
        "/put?key=kept&cache=named&cache-control=max-age%3D600",
    )
    .await;
    server.terminate();
    assert!(
        data.join("cache.sqlite").exists(),
        "the cache lives in the data directory"
    );

    let server = start(&data);
    let found = call(&server, "/match?key=kept").await;
    assert_eq!(found["body"], "body of kept", "{found}\n{}", server.logs());
    assert_eq!(found["headers"]["cf-cache-status"], "HIT");
    assert_eq!(
        call(&server, "/match?key=kept&cache=named").await["found"],
        true
    );
    assert_eq!(
        call(&server, "/match?key=missing").await,
        json!({"found": false})
    );
}
