//! The admin listener: its JSON API (namespaces, objects, KV, SQL, alarms, evict, reset)
//! against a real server, the token, and that the front door never serves admin routes.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{fixture, scratch_dir, Server};

/// A client of the admin listener.
pub struct AdminClient {
    pub base: String,
    pub token: Option<String>,
}

impl AdminClient {
    pub fn of(server: &Server, token: Option<&str>) -> AdminClient {
        let base = server
            .stdout_line("dorun: admin on ")
            .unwrap_or_else(|| panic!("no admin line on stdout\n{}", server.logs()));
        AdminClient {
            base,
            token: token.map(str::to_string),
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, bytes) = self.raw(method, path, body).await;
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    pub async fn raw(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Bytes) {
        let mut headers = Vec::new();
        let authorization = self.token.as_ref().map(|token| format!("Bearer {token}"));
        if let Some(authorization) = &authorization {
            headers.push(("authorization", authorization.as_str()));
        }
        if method != "GET" {
            headers.push(("content-type", "application/json"));
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        self.with_headers(method, path, &headers, body).await
    }

    /// A request with exactly these headers (no token, no content type added).
    pub async fn with_headers(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> (u16, Bytes) {
        let client = Client::builder(TokioExecutor::new()).build_http();
        let mut builder = http::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body)).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
            .await
            .expect("admin answers within 30 s")
            .expect("admin request");
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, bytes)
    }

    /// A call that must answer 200.
    pub async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method, path, body).await;
        assert_eq!(status, 200, "{method} {path}: {value}");
        value
    }
}

fn start(extra: &[&str]) -> Server {
    let data = scratch_dir("admin");
    let mut args = vec![
        "--data-dir",
        data.to_str().unwrap(),
        "--admin-port",
        "0",
        "--alarm-retry-start-ms",
        "50",
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&fixture("admin").join("wrangler.toml"), &args)
}

const NS: &str = "admin-Store";

async fn object_id(server: &Server, name: &str) -> String {
    let value = server.get_json_ok(&format!("/o/{name}/hits"), &[]).await;
    value["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn lists_namespaces_and_objects_with_size_residency_and_alarm() {
    let server = start(&[]);
    let admin = AdminClient::of(&server, None);
    server
        .get_json_ok("/o/alice/put?key=greeting&value=%22hi%22", &[])
        .await;
    let alice = object_id(&server, "alice").await;
    server.get_json_ok("/o/bob/alarm?in=3600000", &[]).await;
    let bob = object_id(&server, "bob").await;

    let namespaces = admin.ok("GET", "/api/namespaces", None).await;
    let ns = &namespaces.as_array().unwrap()[0];
    assert_eq!(ns["key"], NS);
    assert_eq!(ns["class"], "Store");
    assert_eq!(ns["binding"], "STORE");
    assert_eq!(ns["objects"], 2, "{namespaces}");
    assert!(ns["bytes"].as_u64().unwrap() > 0);

    let objects = admin
        .ok("GET", &format!("/api/namespaces/{NS}/objects"), None)
        .await;
    let find = |id: &str| {
        objects
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in {objects}"))
    };
    let (a, b) = (find(&alice), find(&bob));
    assert_eq!(a["resident"], true);
    assert_eq!(a["name"], "alice");
    assert!(a["bytes"].as_u64().unwrap() > 0);
    assert!(a["lastActivity"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(a["alarm"], Value::Null);
    let due = b["alarm"].as_i64().expect("bob's alarm is listed");
    assert!(due > 1_600_000_000_000);

    let (status, _) = admin
        .call("GET", "/api/namespaces/nope/objects", None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = admin
        .call("GET", &format!("/api/objects/{NS}/../../etc"), None)
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn reads_kv_entries_and_runs_sql_including_on_the_kv_table() {
    let server = start(&[]);
    let admin = AdminClient::of(&server, None);
    let value = r#"{"n":1,"tags":["a","b"]}"#;
    server
        .get_json_ok(
            &format!("/o/carol/put?key=profile&value={}", urlencode(value)),
            &[],
        )
        .await;
    server.get_json_ok("/o/carol/sql?body=first", &[]).await;
    let id = object_id(&server, "carol").await;
    let object = format!("/api/objects/{NS}/{id}");

    let kv = admin.ok("GET", &format!("{object}/kv"), None).await;
    assert_eq!(
        kv["entries"],
        json!([{"key": "profile", "value": {"n": 1, "tags": ["a", "b"]}, "bytes": kv["entries"][0]["bytes"]}])
    );
    let sql = admin
        .ok(
            "POST",
            &format!("{object}/sql"),
            Some(json!({"query": "SELECT body FROM notes"})),
        )
        .await;
    assert_eq!(sql["columns"], json!(["body"]));
    assert_eq!(sql["rows"], json!([["first"]]));
    // The KV table, which user SQL cannot read.
    let sql = admin
        .ok(
            "POST",
            &format!("{object}/sql"),
            Some(json!({"query": "SELECT key FROM _cf_KV"})),
        )
        .await;
    assert_eq!(sql["rows"], json!([["profile"]]));
    // A write through the admin, on the resident object's own connection: the object sees it.
    admin
        .ok(
            "POST",
            &format!("{object}/sql"),
            Some(json!({"query": "INSERT INTO notes (body) VALUES ('from admin')"})),
        )
        .await;
    let sql = admin
        .ok(
            "POST",
            &format!("{object}/sql"),
            Some(json!({"query": "SELECT count(*) AS n FROM notes"})),
        )
        .await;
    assert_eq!(sql["rows"], json!([[2]]));
    let (status, error) = admin
        .call(
            "POST",
            &format!("{object}/sql"),
            Some(json!({"query": "SELECT * FROM missing"})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        error["error"].as_str().unwrap().contains("missing"),
        "{error}"
    );
    let (status, _) = admin
        .call(
            "GET",
            &format!("/api/objects/{NS}/{}/kv", "0".repeat(64)),
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn views_and_deletes_an_alarm_so_it_never_runs() {
    let server = start(&[]);
    let admin = AdminClient::of(&server, None);
    server.get_json_ok("/o/dave/alarm?in=1500", &[]).await;
    let id = object_id(&server, "dave").await;
    let object = format!("/api/objects/{NS}/{id}");
    let alarm = admin.ok("GET", &format!("{object}/alarm"), None).await;
    assert!(alarm["alarm"].as_f64().is_some(), "{alarm}");
    let deleted = admin.ok("DELETE", &format!("{object}/alarm"), None).await;
    assert_eq!(deleted["deleted"], true);
    let alarm = admin.ok("GET", &format!("{object}/alarm"), None).await;
    assert_eq!(alarm["alarm"], Value::Null);
    let listed = admin.ok("GET", &object, None).await;
    assert_eq!(listed["alarm"], Value::Null);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ran = server.get_json_ok("/o/dave/get?key=alarmRan", &[]).await;
    assert_eq!(ran["value"], Value::Null, "the deleted alarm ran");
}

#[tokio::test]
async fn runs_an_alarm_now_and_gives_the_id_of_a_name() {
    let server = start(&[]);
    let admin = AdminClient::of(&server, None);
    let id = object_id(&server, "frank").await;
    let named = admin
        .ok("GET", &format!("/api/namespaces/{NS}/id?name=frank"), None)
        .await;
    assert_eq!(named["id"], id.as_str(), "{named}");
    let (status, _) = admin
        .call("GET", &format!("/api/namespaces/{NS}/id"), None)
        .await;
    assert_eq!(status, 400);
    let object = format!("/api/objects/{NS}/{id}");
    let none = admin.ok("POST", &format!("{object}/alarm/run"), None).await;
    assert_eq!(none["ran"], false, "{none}");
    // An hour away; run now, and answered once alarm() has returned.
    server.get_json_ok("/o/frank/alarm?in=3600000", &[]).await;
    let scheduled = admin.ok("GET", &format!("{object}/alarm"), None).await["alarm"].clone();
    let ran = admin.ok("POST", &format!("{object}/alarm/run"), None).await;
    assert_eq!(ran["ran"], true, "{ran}");
    assert_eq!(ran["outcome"], "done", "{ran}");
    assert_eq!(ran["scheduled"], scheduled, "{ran}");
    let value = server.get_json_ok("/o/frank/get?key=alarmRan", &[]).await;
    assert_eq!(value["value"], true);
    let alarm = admin.ok("GET", &format!("{object}/alarm"), None).await;
    assert_eq!(alarm["alarm"], Value::Null, "the alarm that ran is cleared");
    let listed = admin.ok("GET", &object, None).await;
    assert_eq!(listed["alarm"], Value::Null, "and the scheduler forgot it");
}

#[tokio::test]
async fn evicting_an_object_drops_its_instance_and_keeps_its_storage() {
    let server = start(&[]);
    let admin = AdminClient::of(&server, None);
    server
        .get_json_ok("/o/erin/put?key=kept&value=7", &[])
        .await;
    let first = server.get_json_ok("/o/erin/hits", &[]).await;
    assert_eq!(first["hits"], 1);
    let id = first["id"].as_str().unwrap();
    let evicted = admin
        .ok("POST", &format!("/api/objects/{NS}/{id}/evict"), None)
        .await;
    assert_eq!(evicted["evicted"], true);
    let listed = admin
        .ok("GET", &format!("/api/objects/{NS}/{id}"), None)
        .await;
    assert_eq!(listed["resident"], false);
    let again = server.get_json_ok("/o/erin/hits", &[]).await;
    assert_eq!(again["hits"], 1, "a new instance counts from 1");
    let kept = server.get_json_ok("/o/erin/get?key=kept", &[]).await;
    assert_eq!(kept["value"], 7);
    // A second evict of an object not in memory says so.
    admin
        .ok("POST", &format!("/api/objects/{NS}/{id}/evict"), None)
        .await;
    let evicted = admin
        .ok("POST", &format!("/api/objects/{NS}/{id}/evict"), None)
        .await;
    assert_eq!(evicted["evicted"], false);
}

#[tokio::test]
async fn reset_removes_every_object_alarm_and_socket() {
    let server = start(&[]);
    let admin = AdminClient::of(&server, None);
    for name in ["f1", "f2", "f3"] {
        server
            .get_json_ok(&format!("/o/{name}/put?key=x&value=1"), &[])
            .await;
    }
    server.get_json_ok("/o/f1/alarm?in=1000", &[]).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/o/f2/ws"))
        .await
        .expect("websocket");
    ws.send(Message::text("ping")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    assert!(matches!(echo, Ok(Some(Ok(Message::Text(ref t)))) if t.as_str() == "echo ping"));

    let reset = admin.ok("POST", "/api/reset", None).await;
    assert_eq!(reset["objects"], 3, "{reset}");
    assert_eq!(reset["alarms"], 1, "{reset}");
    assert_eq!(reset["sockets"], 1, "{reset}");
    // The socket is closed with 1012.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = ws.next().await {
            if let Ok(Message::Close(frame)) = message {
                return frame.map(|f| u16::from(f.code));
            }
        }
        None
    })
    .await
    .expect("the socket closes");
    assert_eq!(closed, Some(1012));

    let namespaces = admin.ok("GET", "/api/namespaces", None).await;
    assert_eq!(namespaces[0]["objects"], 0, "{namespaces}");
    let objects = admin
        .ok("GET", &format!("/api/namespaces/{NS}/objects"), None)
        .await;
    assert_eq!(objects, json!([]));
    let value = server.get_json_ok("/o/f3/get?key=x", &[]).await;
    assert_eq!(value["value"], Value::Null, "f3's data survived the reset");
    let hits = server.get_json_ok("/o/f3/hits", &[]).await;
    assert_eq!(hits["hits"], 1, "f3's instance survived the reset");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ran = server.get_json_ok("/o/f1/get?key=alarmRan", &[]).await;
    assert_eq!(ran["value"], Value::Null, "f1's alarm ran after the reset");
}

#[tokio::test]
async fn resetting_one_namespace_leaves_the_others_alone() {
    let data = scratch_dir("admin-namespaces");
    let server = Server::start(
        &fixture("admin-namespaces").join("wrangler.toml"),
        &["--data-dir", data.to_str().unwrap(), "--admin-port", "0"],
    );
    let admin = AdminClient::of(&server, None);
    for ns in ["A", "B"] {
        for name in ["one", "two"] {
            server
                .get_json_ok(&format!("/{ns}/{name}/put?value=5"), &[])
                .await;
        }
        server.get_json_ok(&format!("/{ns}/one/alarm"), &[]).await;
        server.get_json_ok(&format!("/{ns}/one/hits"), &[]).await;
    }
    // In A: a socket accepted with accept() and a hibernatable one; in B a hibernatable one.
    let mut sockets = Vec::new();
    for path in ["/A/one/ws", "/A/two/hws", "/B/two/hws"] {
        let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url(path))
            .await
            .expect("websocket");
        ws.send(Message::text("ping")).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        assert!(
            matches!(echo, Ok(Some(Ok(Message::Text(ref t)))) if t.as_str() == "echo ping"),
            "{path}: {echo:?}"
        );
        sockets.push(ws);
    }

    let reset = admin
        .ok("POST", "/api/namespaces/two-Alpha/reset", None)
        .await;
    assert_eq!(reset["namespace"], "two-Alpha", "{reset}");
    assert_eq!(reset["objects"], 2, "{reset}");
    assert_eq!(reset["resident"], 2, "{reset}");
    assert_eq!(reset["alarms"], 1, "{reset}");
    assert_eq!(reset["sockets"], 2, "{reset}");
    for ws in &mut sockets[..2] {
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(message) = ws.next().await {
                if let Ok(Message::Close(frame)) = message {
                    return frame.map(|f| u16::from(f.code));
                }
            }
            None
        })
        .await
        .expect("A's sockets close");
        assert_eq!(closed, Some(1012));
    }
    // B's socket still answers; its objects, storage, alarm and instances are untouched.
    let b = &mut sockets[2];
    b.send(Message::text("again")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), b.next()).await;
    assert!(
        matches!(echo, Ok(Some(Ok(Message::Text(ref t)))) if t.as_str() == "echo again"),
        "{echo:?}"
    );
    for name in ["one", "two"] {
        let a = server.get_json_ok(&format!("/A/{name}/get"), &[]).await;
        assert_eq!(a["value"], Value::Null, "A/{name}'s storage survived");
        let b = server.get_json_ok(&format!("/B/{name}/get"), &[]).await;
        assert_eq!(b["value"], 5, "B/{name}'s storage is gone");
    }
    assert_eq!(server.get_json_ok("/A/one/hits", &[]).await["hits"], 1);
    assert_eq!(server.get_json_ok("/B/one/hits", &[]).await["hits"], 2);
    let b_objects = admin
        .ok("GET", "/api/namespaces/two-Beta/objects", None)
        .await;
    let alarms: Vec<&Value> = b_objects
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| !o["alarm"].is_null())
        .collect();
    assert_eq!(alarms.len(), 1, "{b_objects}");
    let a_objects = admin
        .ok("GET", "/api/namespaces/two-Alpha/objects", None)
        .await;
    assert!(
        a_objects
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["alarm"].is_null()),
        "{a_objects}"
    );
    let (status, _) = admin.call("POST", "/api/namespaces/nope/reset", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_front_door_never_serves_admin_routes() {
    let server = start(&[]);
    let admin = AdminClient::of(&server, None);
    server.get_json_ok("/o/gus/put?key=x&value=1", &[]).await;
    for path in ["/api/namespaces", "/api/reset", "/metrics", "/healthz"] {
        let reply = server.post(path, "").await;
        assert_eq!(reply.text(), format!("worker answered {path}"));
    }
    let namespaces = admin.ok("GET", "/api/namespaces", None).await;
    assert_eq!(
        namespaces[0]["objects"], 1,
        "a POST /api/reset on the front door reset"
    );
    // And the admin listener does not serve the Worker.
    let (status, _) = admin.call("GET", "/o/gus/hits", None).await;
    assert_eq!(status, 404);
}

/// What a page on another site can make the operator's browser send, and what a DNS
/// rebinding page sends: refused on every state-changing route, with and without a token,
/// while the same requests from the listener's own origin work.
#[tokio::test]
async fn no_other_site_and_no_foreign_host_can_drive_the_admin_listener() {
    for token in [None, Some("s3cret")] {
        let server = match token {
            Some(token) => start(&["--admin-token", token]),
            None => start(&[]),
        };
        let admin = AdminClient::of(&server, token);
        let authorization = token.map(|t| format!("Bearer {t}"));
        server.get_json_ok("/o/vic/put?key=x&value=1", &[]).await;
        server.get_json_ok("/o/vic/alarm?in=3600000", &[]).await;
        let id = object_id(&server, "vic").await;
        let object = format!("/api/objects/{NS}/{id}");
        let own_host = admin.base.trim_start_matches("http://").to_string();
        let own_origin = admin.base.clone();
        let routes = [
            ("POST", "/api/reset".to_string(), Bytes::new()),
            (
                "POST",
                format!("{object}/sql"),
                Bytes::from(r#"{"query": "DELETE FROM _cf_KV"}"#),
            ),
            ("DELETE", format!("{object}/alarm"), Bytes::new()),
            ("POST", format!("{object}/evict"), Bytes::new()),
            (
                "POST",
                format!("{object}/import"),
                Bytes::from_static(b"not sqlite"),
            ),
        ];
        for (method, path, body) in &routes {
            // Without the token: what a form or a no-CORS fetch sends (no header a page
            // cannot send on its own).
            for content_type in [
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                "",
            ] {
                let mut headers = vec![("origin", own_origin.as_str())];
                if !content_type.is_empty() {
                    headers.push(("content-type", content_type));
                }
                let (status, answer) = admin
                    .with_headers(method, path, &headers, body.clone())
                    .await;
                assert_eq!(
                    status, 403,
                    "{method} {path} as {content_type:?}: {answer:?}"
                );
            }
            // With everything else right: another origin, a cross-site fetch, another host.
            let mut good = vec![("content-type", "application/json")];
            if let Some(authorization) = &authorization {
                good.push(("authorization", authorization.as_str()));
            }
            for (name, value) in [
                ("origin", "http://evil.example"),
                ("origin", "null"),
                ("sec-fetch-site", "cross-site"),
                ("host", "evil.example"),
                ("host", "rebound.example:9000"),
            ] {
                let mut headers = good.clone();
                headers.push((name, value));
                let (status, answer) = admin
                    .with_headers(method, path, &headers, body.clone())
                    .await;
                assert_eq!(
                    status, 403,
                    "{method} {path} with {name}: {value}: {answer:?}"
                );
            }
        }
        // Reads under a foreign host (DNS rebinding) or from another origin: refused too.
        for path in ["/", "/api/namespaces", &format!("{object}/kv"), "/metrics"] {
            for (name, value) in [("host", "evil.example"), ("origin", "http://evil.example")] {
                let mut headers = vec![(name, value)];
                if let Some(authorization) = &authorization {
                    headers.push(("authorization", authorization.as_str()));
                }
                let (status, _) = admin
                    .with_headers("GET", path, &headers, Bytes::new())
                    .await;
                assert_eq!(status, 403, "GET {path} with {name}: {value}");
            }
        }
        // Nothing changed: the object, its data and its alarm are there.
        let kv = admin.ok("GET", &format!("{object}/kv"), None).await;
        assert_eq!(kv["entries"][0]["key"], "x", "{kv}");
        let alarm = admin.ok("GET", &format!("{object}/alarm"), None).await;
        assert!(alarm["alarm"].is_number(), "{alarm}");
        // The same requests from the listener's own origin, and under localhost, work.
        let mut own = vec![
            ("content-type", "application/json"),
            ("origin", own_origin.as_str()),
        ];
        if let Some(authorization) = &authorization {
            own.push(("authorization", authorization.as_str()));
        }
        let (status, answer) = admin
            .with_headers("POST", &format!("{object}/evict"), &own, Bytes::new())
            .await;
        assert_eq!(status, 200, "{answer:?}");
        let port = own_host.rsplit_once(':').unwrap().1;
        let localhost = format!("localhost:{port}");
        let mut headers = vec![("host", localhost.as_str())];
        if let Some(authorization) = &authorization {
            headers.push(("authorization", authorization.as_str()));
        }
        let (status, _) = admin
            .with_headers("GET", "/api/namespaces", &headers, Bytes::new())
            .await;
        assert_eq!(status, 200);
        // Health checks answer any host; the page may not be framed.
        let (status, _) = admin
            .with_headers("GET", "/healthz", &[("host", "evil.example")], Bytes::new())
            .await;
        assert_eq!(status, 200);
        let page = get_page(&admin.base).await;
        assert_eq!(page.0, 200);
        assert_eq!(page.1.get("x-frame-options").unwrap(), "DENY");
        assert!(page
            .1
            .get("content-security-policy")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'"));
    }
}

/// GET `base`/ with its headers.
async fn get_page(base: &str) -> (u16, http::HeaderMap) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client
        .get(format!("{base}/").parse().unwrap())
        .await
        .unwrap();
    (response.status().as_u16(), response.headers().clone())
}

#[tokio::test]
async fn a_host_name_is_served_when_allowed() {
    let server = start(&["--admin-allow-host", "dorun.internal"]);
    let admin = AdminClient::of(&server, None);
    let (status, _) = admin
        .with_headers(
            "GET",
            "/api/namespaces",
            &[("host", "dorun.internal:9000")],
            Bytes::new(),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = admin
        .with_headers(
            "GET",
            "/api/namespaces",
            &[("host", "other.internal")],
            Bytes::new(),
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_token_is_required_when_set() {
    let server = start(&["--admin-token", "s3cret"]);
    let good = AdminClient::of(&server, Some("s3cret"));
    let wrong = AdminClient::of(&server, Some("s3cres"));
    let missing = AdminClient::of(&server, None);
    for client in [&wrong, &missing] {
        for (method, path) in [
            ("GET", "/api/namespaces"),
            ("POST", "/api/reset"),
            ("GET", "/metrics"),
        ] {
            let (status, body) = client.call(method, path, None).await;
            assert_eq!(status, 401, "{method} {path}: {body}");
        }
    }
    good.ok("GET", "/api/namespaces", None).await;
    // Health checks carry no data and need no token.
    let (status, _) = missing.raw("GET", "/healthz", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_non_loopback_admin_address_needs_a_token() {
    let data = scratch_dir("admin-open");
    let (ok, _, stderr) = crate::harness::run_dorun(
        &[
            "serve",
            fixture("admin").join("wrangler.toml").to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--port",
            "0",
            "--admin-port",
            "0",
            "--admin-ip",
            "0.0.0.0",
        ],
        None,
    );
    assert!(!ok);
    assert!(stderr.contains("--admin-token"), "{stderr}");
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The value of the first sample line of `metric` whose labels contain every `labels` pair.
fn sample(text: &str, metric: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(metric) && l[metric.len()..].starts_with(['{', ' ']))
        .find(|l| labels.iter().all(|pair| l.contains(pair)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_health_and_readiness() {
    let server = start(&["--cpu-limit-ms", "200"]);
    let admin = AdminClient::of(&server, None);
    for name in ["m1", "m2"] {
        server
            .get_json_ok(&format!("/o/{name}/put?key=x&value=1"), &[])
            .await;
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/o/m1/ws"))
        .await
        .expect("websocket");
    ws.send(Message::text("hi")).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
    let spin = server.get("/spin").await;
    assert_eq!(spin.status, 503);

    let (status, body) = admin.raw("GET", "/metrics", None).await;
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{text}");
    let requests = sample(
        &text,
        "dorun_requests_total",
        &["worker=\"admin\"", "status=\"2xx\""],
    );
    assert!(requests.unwrap_or(0.0) >= 2.0, "{text}");
    assert_eq!(
        sample(&text, "dorun_requests_total", &["status=\"5xx\""]),
        Some(1.0),
        "{text}"
    );
    let buckets = sample(
        &text,
        "dorun_request_duration_seconds_bucket",
        &["le=\"+Inf\""],
    );
    assert!(buckets.unwrap_or(0.0) >= 3.0, "{text}");
    assert_eq!(
        sample(&text, "dorun_objects_resident", &["class=\"Store\""]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "dorun_objects_stored", &["class=\"Store\""]),
        Some(2.0),
        "{text}"
    );
    assert!(sample(&text, "dorun_storage_bytes", &["class=\"Store\""]).unwrap_or(0.0) > 0.0);
    assert_eq!(
        sample(&text, "dorun_websockets_open", &["kind=\"hibernatable\""]),
        Some(1.0),
        "{text}"
    );
    assert!(
        sample(&text, "dorun_object_activations_total", &[]).unwrap_or(0.0) >= 2.0,
        "{text}"
    );
    assert!(
        sample(&text, "dorun_storage_commit_seconds_count", &[]).unwrap_or(0.0) >= 2.0,
        "{text}"
    );
    // Under the default --durability full, each of those commits waited for its flush.
    assert!(
        sample(&text, "dorun_storage_durable_seconds_count", &[]).unwrap_or(0.0) >= 2.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "dorun_isolate_terminations_total",
            &["reason=\"cpu\""]
        ),
        Some(1.0),
        "{text}"
    );

    // One gauge per isolate thread: nothing waits now; a slow request counts while it runs.
    let depth = |text: &str| {
        let a = sample(text, "dorun_isolate_queue_depth", &["thread=\"0\""]);
        let b = sample(text, "dorun_isolate_queue_depth", &["thread=\"1\""]);
        a.zip(b).map(|(a, b)| a + b)
    };
    assert_eq!(depth(&text), Some(0.0), "{text}");
    let base = server.base.clone();
    let slow = tokio::spawn(async move {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<http_body_util::Empty<Bytes>>();
        let url = format!("{base}/slow").parse().unwrap();
        client.get(url).await.map(|r| r.status().as_u16())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, body) = admin.raw("GET", "/metrics", None).await;
    assert_eq!(depth(&String::from_utf8_lossy(&body)), Some(1.0));
    assert_eq!(slow.await.unwrap().unwrap(), 200);

    let (status, _) = admin.raw("GET", "/healthz", None).await;
    assert_eq!(status, 200);
    let (status, _) = admin.raw("GET", "/readyz", None).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn alarm_lag_is_measured() {
    let server = start(&[]);
    let admin = AdminClient::of(&server, None);
    server.get_json_ok("/o/lag/alarm?in=10", &[]).await;
    let mut ran = Value::Null;
    for _ in 0..100 {
        ran = server.get_json_ok("/o/lag/get?key=alarmRan", &[]).await["value"].clone();
        if ran == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ran, true);
    let (_, body) = admin.raw("GET", "/metrics", None).await;
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(
        sample(&text, "dorun_alarm_lag_seconds_count", &[]),
        Some(1.0),
        "{text}"
    );
}
