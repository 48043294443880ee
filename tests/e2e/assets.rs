//! Static assets (`assets` config): served by the front door without entering JS, as on
//! Cloudflare, and reachable from the Worker through `env.ASSETS.fetch`.

use bytes::Bytes;
use http::Method;
use serde_json::json;

use crate::harness::{fixture, run_dorun, scratch_dir, Reply, Server};

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or("")
}

async fn with_headers(
    server: &Server,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    server.request(method, path, headers, Bytes::new()).await
}

#[tokio::test]
async fn matching_assets_are_served_and_the_rest_goes_to_the_worker() {
    let server = Server::start(&fixture("assets").join("wrangler.toml"), &[]);
    let home = server.get("/").await;
    assert_eq!(home.status, 200);
    assert_eq!(home.text(), "<h1>home</h1>");
    assert_eq!(header(&home, "content-type"), "text/html; charset=utf-8");
    assert_eq!(
        header(&home, "cache-control"),
        "public, max-age=0, must-revalidate"
    );
    assert!(header(&home, "etag").starts_with('"'), "{:?}", home.headers);
    assert_eq!(header(&home, "x-from"), "", "the Worker did not run");
    let css = server.get("/style.css").await;
    assert_eq!(header(&css, "content-type"), "text/css; charset=utf-8");
    let json = server.get("/api/data/info.json").await;
    assert_eq!(
        json.text(),
        "worker GET /api/data/info.json",
        "run_worker_first route"
    );
    let missing = server.get("/nope").await;
    assert_eq!(missing.text(), "worker GET /nope");
    assert_eq!(header(&missing, "x-from"), "worker");
    assert_eq!(
        header(&missing, "x-frame-options"),
        "",
        "_headers apply to assets only"
    );
    // Non-GET requests to an asset: 405, as Cloudflare's asset worker answers.
    let post = server.post("/style.css", "x").await;
    assert_eq!(post.status, 405);
    let post_other = server.post("/submit", "x").await;
    assert_eq!(post_other.text(), "worker POST /submit");
    let logs = server.logs();
    assert!(logs.contains("GET /style.css 200"), "{logs}");
}

#[tokio::test]
async fn html_handling_auto_trailing_slash_redirects_and_serves() {
    let server = Server::start(&fixture("assets").join("wrangler.toml"), &[]);
    assert_eq!(server.get("/about").await.text(), "<h1>about</h1>");
    for (path, location) in [
        ("/about.html", "/about"),
        ("/about/", "/about"),
        ("/blog", "/blog/"),
        ("/blog/index.html", "/blog/"),
        ("/index.html", "/"),
        ("/about.html?x=1", "/about?x=1"),
    ] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, 307, "{path}");
        assert_eq!(header(&reply, "location"), location, "{path}");
    }
    assert_eq!(server.get("/blog/").await.text(), "<h1>blog</h1>");
}

#[tokio::test]
async fn run_worker_first_routes_with_negation() {
    let server = Server::start(&fixture("assets").join("wrangler.toml"), &[]);
    let api = server.get("/api/anything").await;
    assert_eq!(api.text(), "worker GET /api/anything");
    let docs = server.get("/api/docs/").await;
    assert_eq!(
        docs.text(),
        "<h1>api docs</h1>",
        "'!/api/docs/*' goes to the assets"
    );
    let docs_missing = server.get("/api/docs/missing").await;
    assert_eq!(
        docs_missing.status, 404,
        "excluded routes never reach the Worker"
    );
}

#[tokio::test]
async fn headers_file_sets_and_removes_headers() {
    let server = Server::start(&fixture("assets").join("wrangler.toml"), &[]);
    let css = server.get("/style.css").await;
    assert_eq!(header(&css, "x-custom"), "css");
    assert_eq!(header(&css, "x-frame-options"), "DENY");
    assert_eq!(
        header(&css, "cache-control"),
        "public, max-age=31536000, immutable",
        "a _headers value replaces the default"
    );
    let blog = server.get("/blog/").await;
    assert_eq!(
        header(&blog, "x-frame-options"),
        "",
        "'! X-Frame-Options' removes it"
    );
    assert_eq!(header(&blog, "x-section"), "blog-", ":splat is substituted");
    let redirect = server.get("/blog").await;
    assert_eq!(redirect.status, 307);
    assert_eq!(
        header(&redirect, "x-frame-options"),
        "DENY",
        "redirects get _headers too"
    );
    assert_eq!(
        header(&redirect, "x-section"),
        "",
        "'/blog/*' does not match /blog"
    );
}

#[tokio::test]
async fn redirects_file_with_statuses_splats_and_placeholders() {
    let server = Server::start(&fixture("assets").join("wrangler.toml"), &[]);
    for (path, status, location) in [
        ("/old", 301, "/about"),
        ("/old?ref=x", 301, "/about?ref=x"),
        ("/temp", 302, "/about"),
        ("/see-other", 303, "/about"),
        ("/docs/a/b", 302, "/blog/a/b"),
        ("/news/2024/hello", 301, "/blog/?year=2024&slug=hello"),
        ("/external", 308, "https://example.com/landing"),
    ] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, status, "{path}");
        assert_eq!(header(&reply, "location"), location, "{path}");
    }
    let alias = server.get("/alias").await;
    assert_eq!(
        (alias.status, alias.text().as_str()),
        (200, "<h1>about</h1>"),
        "a 200 rule rewrites"
    );
}

#[tokio::test]
async fn assetsignore_and_rule_files_are_not_served() {
    let server = Server::start(&fixture("assets").join("wrangler.toml"), &[]);
    for path in [
        "/secret.txt",
        "/maps/app.js.map",
        "/_headers",
        "/_redirects",
        "/.assetsignore",
    ] {
        assert_eq!(
            server.get(path).await.text(),
            format!("worker GET {path}"),
            "{path}"
        );
    }
    assert_eq!(
        server.get("/maps/keep.map").await.text(),
        "kept",
        "'!keep.map' re-includes"
    );
}

#[tokio::test]
async fn etag_if_none_match_head_and_range() {
    let server = Server::start(&fixture("assets").join("wrangler.toml"), &[]);
    let first = server.get("/range.txt").await;
    let etag = header(&first, "etag").to_string();
    assert_eq!(etag.len(), 34, "{etag}");
    assert_eq!(
        server.get("/range.txt").await.headers["etag"],
        etag.as_str(),
        "stable"
    );
    let not_modified = with_headers(
        &server,
        Method::GET,
        "/range.txt",
        &[("if-none-match", &etag)],
    )
    .await;
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(header(&not_modified, "etag"), etag);
    let weak = format!("W/{etag}");
    let weak_match = with_headers(
        &server,
        Method::GET,
        "/range.txt",
        &[("if-none-match", &weak)],
    )
    .await;
    assert_eq!(weak_match.status, 304);
    let other = with_headers(
        &server,
        Method::GET,
        "/range.txt",
        &[("if-none-match", "\"other\"")],
    )
    .await;
    assert_eq!((other.status, other.text().as_str()), (200, "0123456789"));

    let head = with_headers(&server, Method::HEAD, "/range.txt", &[]).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(header(&head, "content-length"), "10");
    assert_eq!(header(&head, "etag"), etag);

    for (range, body, content_range) in [
        ("bytes=2-5", "2345", "bytes 2-5/10"),
        ("bytes=-3", "789", "bytes 7-9/10"),
        ("bytes=8-", "89", "bytes 8-9/10"),
    ] {
        let reply = with_headers(&server, Method::GET, "/range.txt", &[("range", range)]).await;
        assert_eq!(reply.status, 206, "{range}");
        assert_eq!(reply.text(), body, "{range}");
        assert_eq!(header(&reply, "content-range"), content_range, "{range}");
        assert_eq!(
            header(&reply, "cache-control"),
            "",
            "no default Cache-Control on a range"
        );
    }
    let unsatisfiable = with_headers(
        &server,
        Method::GET,
        "/range.txt",
        &[("range", "bytes=20-")],
    )
    .await;
    assert_eq!(unsatisfiable.status, 416);
    assert_eq!(header(&unsatisfiable, "content-range"), "bytes */10");
    let stale_if_range = with_headers(
        &server,
        Method::GET,
        "/range.txt",
        &[("range", "bytes=0-1"), ("if-range", "\"old\"")],
    )
    .await;
    assert_eq!(
        (stale_if_range.status, stale_if_range.text().as_str()),
        (200, "0123456789")
    );
}

#[tokio::test]
async fn env_assets_fetch_from_the_worker() {
    let server = Server::start(&fixture("assets").join("wrangler.toml"), &[]);
    let css = server.get("/api/asset").await.json();
    assert_eq!(css["status"], json!(200));
    assert_eq!(css["type"], json!("text/css; charset=utf-8"));
    assert_eq!(css["body"], json!("body { color: red }"));
    let direct = server.get("/style.css").await;
    assert_eq!(
        css["etag"],
        json!(header(&direct, "etag")),
        "same ETag as the front door"
    );
    let about = server.get("/api/asset-path").await.json();
    assert_eq!(
        (about["status"].clone(), about["body"].clone()),
        (json!(200), json!("<h1>about</h1>"))
    );
    // html_handling's redirects are followed by the binding (as a fetch follows them)
    // unless the request says redirect: "manual".
    let blog = server.get("/api/asset-url-manual").await.json();
    assert_eq!(
        (blog["status"].clone(), blog["location"].clone()),
        (json!(307), json!("/blog/"))
    );
    let blog = server.get("/api/asset-url").await.json();
    assert_eq!(
        (blog["status"].clone(), blog["redirected"].clone()),
        (json!(200), json!(true))
    );
    assert!(blog["url"].as_str().unwrap().ends_with("/blog/"), "{blog}");
    assert!(blog["body"].as_str().unwrap().contains("blog"), "{blog}");
    let html = server.get("/api/asset-html").await.json();
    assert_eq!(
        html,
        json!({"status": 200, "type": "text/html; charset=utf-8", "etag": html["etag"],
            "location": null, "url": "https://x/about", "redirected": true, "body": "<h1>about</h1>"})
    );
    let missing = server.get("/api/missing").await.json();
    assert_eq!(missing["status"], json!(404));
    let head = server.get("/api/head").await.json();
    assert_eq!(
        (head["status"].clone(), head["body"].clone()),
        (json!(200), json!(""))
    );
    let by_pathname = server.get("/api/by-pathname").await.json();
    assert_eq!(
        by_pathname,
        json!({"contentType": "text/html; charset=utf-8", "body": "<h1>about</h1>", "missing": null})
    );
}

#[tokio::test]
async fn assets_only_worker_with_404_page_and_drop_trailing_slash() {
    let server = Server::start(&fixture("assets-static").join("wrangler.jsonc"), &[]);
    assert_eq!(server.get("/").await.text(), "root page");
    assert_eq!(server.get("/folder").await.text(), "folder page");
    let slash = server.get("/folder/").await;
    assert_eq!((slash.status, header(&slash, "location")), (307, "/folder"));
    let missing = server.get("/missing").await;
    assert_eq!((missing.status, missing.text().as_str()), (404, "root 404"));
    let nested = server.get("/sub/deeper/missing").await;
    assert_eq!(
        (nested.status, nested.text().as_str()),
        (404, "sub 404"),
        "nearest 404.html"
    );
    let post = server.post("/missing", "x").await;
    assert_eq!(post.status, 405);
}

/// With `run_worker_first` routes, a path outside them that no asset matches gets the SPA
/// shell even without `Sec-Fetch-Mode: navigate`; the routes still reach the Worker.
#[tokio::test]
async fn run_worker_first_routes_leave_everything_else_to_the_spa_fallback() {
    let dir = scratch_dir("assets-spa-routes");
    let spa = fixture("assets-spa");
    std::fs::create_dir_all(dir.join("dist")).unwrap();
    std::fs::copy(spa.join("dist/index.html"), dir.join("dist/index.html")).unwrap();
    std::fs::copy(spa.join("worker.js"), dir.join("worker.js")).unwrap();
    std::fs::write(
        dir.join("wrangler.toml"),
        "main = \"worker.js\"\ncompatibility_date = \"2025-06-01\"\n[assets]\ndirectory = \"dist\"\nnot_found_handling = \"single-page-application\"\nrun_worker_first = [\"/api/*\"]\n",
    )
    .unwrap();
    let server = Server::start(&dir.join("wrangler.toml"), &[]);
    let route = server.get("/app/route").await;
    assert_eq!((route.status, route.text().as_str()), (200, "spa shell"));
    assert_eq!(server.get("/api/users").await.text(), "worker /api/users");
}

#[tokio::test]
async fn single_page_application_fallback_for_navigations() {
    let server = Server::start(&fixture("assets-spa").join("wrangler.toml"), &[]);
    let navigate = with_headers(
        &server,
        Method::GET,
        "/app/route",
        &[("sec-fetch-mode", "navigate")],
    )
    .await;
    assert_eq!(
        (navigate.status, navigate.text().as_str()),
        (200, "spa shell")
    );
    let fetch = server.get("/app/route").await;
    assert_eq!(
        fetch.text(),
        "worker /app/route",
        "non-navigation requests reach the Worker"
    );
    assert_eq!(server.get("/app.js").await.text(), "console.log(1)");
    let about = server.get("/about").await;
    assert_eq!(
        (about.status, header(&about, "location")),
        (307, "/about/"),
        "force-trailing-slash"
    );
    assert_eq!(server.get("/about/").await.text(), "about page");
}

#[tokio::test]
async fn check_names_a_missing_assets_directory() {
    let dir = scratch_dir("assets-missing");
    std::fs::write(
        dir.join("index.js"),
        "export default { fetch: () => new Response('x') }",
    )
    .unwrap();
    let config = dir.join("wrangler.toml");
    std::fs::write(
        &config,
        "main = \"index.js\"\n[assets]\ndirectory = \"./nowhere\"\nhtml_handling = \"sideways\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = run_dorun(&["check", config.to_str().unwrap()], None);
    assert!(!ok);
    assert!(stderr.contains("key 'assets.directory'"), "{stderr}");
    assert!(stderr.contains("nowhere"), "{stderr}");
    assert!(stderr.contains("key 'assets.html_handling'"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::fs::write(
        &config,
        "main = \"index.js\"\n[assets]\nbinding = \"ASSETS\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = run_dorun(&["check", config.to_str().unwrap()], None);
    assert!(!ok);
    assert!(
        stderr.contains("key 'assets.directory' is missing"),
        "{stderr}"
    );
    std::fs::create_dir_all(dir.join("public")).unwrap();
    std::fs::write(
        &config,
        "main = \"index.js\"\n[assets]\ndirectory = \"public\"\nbinding = \"ASSETS\"\n",
    )
    .unwrap();
    let (ok, stdout, stderr) = run_dorun(&["check", config.to_str().unwrap()], None);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ok:"), "{stdout}");
}

#[tokio::test]
async fn run_worker_first_true_sends_everything_through_the_worker() {
    let dir = scratch_dir("assets-worker-first");
    std::fs::create_dir_all(dir.join("public")).unwrap();
    std::fs::write(dir.join("public").join("about.html"), "about").unwrap();
    std::fs::write(
        dir.join("worker.js"),
        r#"export default {
  async fetch(request, env) {
    const asset = await env.STATIC.fetch(request);
    const response = new Response(asset.body, asset);
    response.headers.set("x-through", "worker");
    return response;
  },
};"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("wrangler.toml"),
        "main = \"worker.js\"\ncompatibility_date = \"2025-06-01\"\n[assets]\ndirectory = \"public\"\nbinding = \"STATIC\"\nrun_worker_first = true\nhtml_handling = \"none\"\n",
    )
    .unwrap();
    let server = Server::start(&dir.join("wrangler.toml"), &[]);
    let exact = server.get("/about.html").await;
    assert_eq!((exact.status, exact.text().as_str()), (200, "about"));
    assert_eq!(header(&exact, "x-through"), "worker");
    let pretty = server.get("/about").await;
    assert_eq!(
        pretty.status, 404,
        "html_handling none serves exact paths only"
    );
    assert_eq!(header(&pretty, "x-through"), "worker");
}
