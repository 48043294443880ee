//! `dorun serve --watch`: a change to the Worker's files reloads it on the same ports, with
//! its storage kept; a broken edit is reported and the next good one is served.

use std::time::{Duration, Instant};

use crate::admin::AdminClient;
use crate::harness::{fixture, scratch_dir, Server};

/// GET that reports a refused connection (a reload in progress) instead of panicking.
async fn try_get(url: &str) -> Option<String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = tokio::time::timeout(Duration::from_secs(5), client.get(url.parse().ok()?))
        .await
        .ok()?
        .ok()?;
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .ok()?;
    Some(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

async fn wait_for_text(server: &Server, path: &str, want: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Some(text) = try_get(&format!("{}{path}", server.base)).await {
            last = text;
            if last.contains(want) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{path} never answered {want:?} (last: {last:?})\n{}",
        server.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_worker_is_reloaded_on_the_same_ports_with_its_storage() {
    let app = scratch_dir("watch");
    for entry in std::fs::read_dir(fixture("admin")).unwrap().flatten() {
        std::fs::copy(entry.path(), app.join(entry.file_name())).unwrap();
    }
    let server = Server::start(
        &app.join("wrangler.toml"),
        &["--watch", "--admin-port", "0"],
    );
    let admin = AdminClient::of(&server, None);
    server.get_json_ok("/o/w/put?key=kept&value=1", &[]).await;
    assert_eq!(server.get("/").await.text(), "worker answered /");

    let source = std::fs::read_to_string(app.join("index.js")).unwrap();
    std::fs::write(
        app.join("index.js"),
        source.replace("worker answered", "reloaded worker answered"),
    )
    .unwrap();
    wait_for_text(&server, "/", "reloaded worker answered /").await;
    assert!(server
        .stdout_line("dorun: reloaded (generation 2)")
        .is_some());
    let kept = server.get_json_ok("/o/w/get?key=kept", &[]).await;
    assert_eq!(kept["value"], 1, "storage survives a reload");
    // The admin listener is back on the same port.
    admin.ok("GET", "/api/namespaces", None).await;

    // A broken edit: reported, then the fix is served.
    std::fs::write(app.join("index.js"), "export default { fetch( ").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.logs().contains("the Worker did not start") {
        assert!(
            Instant::now() < deadline,
            "no report of the broken edit\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(
        app.join("index.js"),
        source.replace("worker answered", "fixed worker answered"),
    )
    .unwrap();
    wait_for_text(&server, "/", "fixed worker answered /").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_watch_dir_outside_the_project_is_watched_and_rebuilt() {
    let root = scratch_dir("watch-dir");
    let shared = root.join("shared");
    let app = root.join("app");
    std::fs::create_dir_all(&shared).unwrap();
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(shared.join("message.txt"), "first").unwrap();
    std::fs::write(
        app.join("wrangler.toml"),
        "main = \"index.js\"\ncompatibility_date = \"2025-01-01\"\n\
         [build]\ncommand = \"cp ../shared/message.txt message.txt\"\nwatch_dir = \"../shared\"\n",
    )
    .unwrap();
    std::fs::write(
        app.join("index.js"),
        "import message from \"./message.txt\";\n\
         export default { fetch() { return new Response(`built: ${message}`); } };\n",
    )
    .unwrap();
    let server = Server::start(&app.join("wrangler.toml"), &["--watch"]);
    assert_eq!(server.get("/").await.text(), "built: first");
    std::fs::write(shared.join("message.txt"), "second").unwrap();
    wait_for_text(&server, "/", "built: second").await;
}
