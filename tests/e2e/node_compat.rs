//! Node.js built-ins behind `nodejs_compat` / `nodejs_als`: each module answers known
//! values, AsyncLocalStorage follows awaits, timers and Durable Object calls, a real npm
//! package (hono's context storage) loads, and imports without the flag fail clearly.

use std::path::Path;

use serde_json::json;

use crate::harness::{fixture, install_npm_dependencies, run_dorun, scratch_dir, Server};

fn start() -> (Server, std::path::PathBuf) {
    let data = scratch_dir("node-compat");
    let server = Server::start(
        &fixture("node-compat").join("wrangler.toml"),
        &["--data-dir", data.to_str().unwrap()],
    );
    (server, data)
}

#[tokio::test]
async fn buffer_events_util_and_diagnostics_channel_give_nodes_answers() {
    let (server, _data) = start();
    assert_eq!(
        server.get_json_ok("/buffer", &[]).await,
        json!({
            "globalIsModule": true,
            "base64": "aMOpbGxv",
            "hex": "68c3a96c6c6f",
            "fromBase64": "hello world",
            "concat": "abcd",
            "isBuffer": true,
            "readUInt32BE": 3735928559u32,
            "inspect": "<Buffer 68 69>",
            "byteLength": 6,
        })
    );
    assert_eq!(
        server.get_json_ok("/events", &[]).await,
        json!({"seen": ["once:1", "on:1"], "value": "go", "threw": "unhandled", "count": 0})
    );
    assert_eq!(
        server.get_json_ok("/util", &[]).await,
        json!({
            "format": "a=1",
            "formatJson": "{\"a\":1} and [ 1 ]",
            "inspect": "{ a: [ 1, { b: [Map] } ], s: 'x' }",
            "promisified": 42,
            "callbackified": 42,
            "inherits": true,
            "types": [true, true, true],
            "deepEqual": true,
        })
    );
    assert_eq!(
        server.get_json_ok("/diagnostics", &[]).await,
        json!({"messages": ["dorun:test:1"], "hasSubscribers": false})
    );
}

#[tokio::test]
async fn async_local_storage_follows_awaits_timers_and_microtasks() {
    let (server, _data) = start();
    assert_eq!(
        server.get_json_ok("/async-hooks", &[]).await,
        json!({
            "sync": "req-1",
            "afterAwait": "req-1",
            "inTimer": "req-1",
            "inMicrotask": "req-1",
            "nested": "inner",
            "exited": null,
            "viaResource": "req-1",
            "concurrent": ["a", "b", "c"],
            "outside": null,
        })
    );
}

#[tokio::test]
async fn async_local_storage_works_inside_a_durable_object_with_its_storage() {
    let (server, _data) = start();
    // Storage writes and the output gate use the same async context as the stores.
    assert_eq!(
        server.get_json_ok("/object?value=v1", &[]).await,
        json!({"afterStorage": "v1", "afterTimer": "v1", "stored": "v1"})
    );
}

#[tokio::test]
async fn stream_path_url_querystring_and_assert_modules() {
    let (server, _data) = start();
    assert_eq!(
        server.get_json_ok("/stream", &[]).await,
        json!({
            "piped": "ABCDEF",
            "generated": "xxyy",
            "collected": [1, 2, 3],
            "web": "web",
            "decoded": "|€",
            "webStream": true,
        })
    );
    assert_eq!(
        server.get_json_ok("/path", &[]).await,
        json!({
            "join": "/a/c/d.txt",
            "resolve": "/y",
            "relative": "../../d",
            "parse": {"root": "/", "dir": "/home/u", "base": "file.tar.gz", "ext": ".gz", "name": "file.tar"},
            "extname": ".html",
            "sep": "/",
            "posixIsPath": true,
            "fileURLToPath": "/tmp/a b.txt",
            "pathToFileURL": "file:///tmp/a%20b.txt",
            "parseUrl": {"protocol": "https:", "host": "example.com:8080", "pathname": "/p", "query": {"q": "1"}},
            "formatUrl": "https://example.com/x?a=1",
            "querystring": {"a": ["1", "3"], "b": "2", "c": " x y"},
            "stringify": "a=1&a=2&b=x%20y",
        })
    );
    assert_eq!(
        server.get_json_ok("/assert", &[]).await,
        json!({"strictEqualFails": true, "strictModule": true, "throwsChecked": true})
    );
}

#[tokio::test]
async fn crypto_hashes_match_published_vectors() {
    let (server, _data) = start();
    assert_eq!(
        server.get_json_ok("/crypto", &[]).await,
        json!({
            // FIPS 180-2 and RFC 1321 "abc" vectors.
            "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "sha1": "a9993e364706816aba3e25717850c26c9cd0d89d",
            "md5": "900150983cd24fb0d6963f7d28e17f72",
            "sha512": "3a81oZNherrMQXNJriBBMRLm+k6JqX6iCp7u5ktV05ohkpkqJ0/BqDa6PCOj/uu9RU1EI2Q86A4qmslPpUyknw==",
            "sha384": "38b060a751ac96384cd9327eb1b1e36a21fdb71114be07434c0cc7bf63f6e1da274edebfe76f65fbd51ad2f14898b95b",
            "hmac": "f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8",
            // RFC 6070, iteration count 1.
            "pbkdf2": "0c60c80f961f0e71f3a9b524af6012062fe037a6",
            "randomBytes": 16,
            "uuid": true,
            "randomInt": true,
            "timingSafeEqual": [true, false],
            "subtle": true,
        })
    );
}

#[tokio::test]
async fn process_env_holds_text_vars_and_node_globals_are_installed() {
    let (server, _data) = start();
    assert_eq!(
        server.get_json_ok("/process", &[]).await,
        json!({
            "myVar": "from-vars",
            "jsonVar": null,
            "globalProcess": true,
            "global": true,
            "platform": "linux",
            "cwd": "/",
            "version": true,
            "order": ["sync", "tick", "immediate"],
            "builtin": [true, "function", null],
        })
    );
}

#[tokio::test]
async fn hono_context_storage_runs_on_nodejs_als() {
    let dir = fixture("node-compat-hono");
    install_npm_dependencies(&dir);
    let server = Server::start(&dir.join("wrangler.toml"), &[]);
    let (ada, bob) = tokio::join!(server.get("/?user=ada"), server.get("/?user=bob"));
    assert_eq!(ada.json(), json!({"user": "ada"}), "{}", server.logs());
    assert_eq!(bob.json(), json!({"user": "bob"}));
}

/// Writes a one-file Worker with `flags` and returns its config path.
fn worker(tag: &str, source: &str, date: &str, flags: &[&str]) -> std::path::PathBuf {
    let dir = scratch_dir(tag);
    std::fs::write(dir.join("index.js"), source).unwrap();
    let flags = flags
        .iter()
        .map(|f| format!("\"{f}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let config = dir.join("wrangler.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"{tag}\"\nmain = \"index.js\"\ncompatibility_date = \"{date}\"\ncompatibility_flags = [{flags}]\n"
        ),
    )
    .unwrap();
    config
}

fn check(config: &Path) -> (bool, String) {
    let (ok, stdout, stderr) = run_dorun(&["check", config.to_str().unwrap()], None);
    (ok, format!("{stdout}{stderr}"))
}

const USES_BUFFER: &str =
    "export default { fetch() { return new Response(String(Buffer.from('x').length)); } };\n";

#[test]
fn node_imports_without_the_flag_fail_at_load_naming_nodejs_compat() {
    let bare = worker(
        "no-flag-bare",
        &format!("import {{ Buffer }} from \"buffer\";\n{USES_BUFFER}"),
        "2025-06-01",
        &[],
    );
    let (ok, output) = check(&bare);
    assert!(!ok, "loaded without nodejs_compat: {output}");
    assert!(output.contains("index.js:1:"), "{output}");
    assert!(
        output.contains("\"buffer\" wasn't found on the file system but is built into node")
            && output.contains("nodejs_compat"),
        "{output}"
    );

    let prefixed = worker(
        "no-flag-node",
        &format!("import {{ Buffer }} from \"node:buffer\";\n{USES_BUFFER}"),
        "2025-06-01",
        &[],
    );
    let (ok, output) = check(&prefixed);
    assert!(!ok, "{output}");
    assert!(
        output.contains("cannot import \"node:buffer\"")
            && output.contains("\"nodejs_compat\" compatibility flag"),
        "{output}"
    );

    // nodejs_als opens node:async_hooks only.
    let als_only = worker(
        "als-only",
        "import { AsyncLocalStorage } from \"node:async_hooks\";\nimport \"node:events\";\nexport default { fetch() { return new Response(typeof AsyncLocalStorage); } };\n",
        "2025-06-01",
        &["nodejs_als"],
    );
    let (ok, output) = check(&als_only);
    assert!(!ok, "{output}");
    assert!(output.contains("cannot import \"node:events\""), "{output}");
    assert!(!output.contains("node:async_hooks\""), "{output}");
}

#[test]
fn modules_workers_lack_fail_with_no_such_module() {
    let config = worker(
        "no-such-module",
        "import fs from \"node:child_process\";\nexport default { fetch() { return new Response(String(fs)); } };\n",
        "2025-06-01",
        &["nodejs_compat"],
    );
    let (ok, output) = check(&config);
    assert!(!ok, "{output}");
    assert!(
        output.contains("No such module \"node:child_process\""),
        "{output}"
    );
}

#[tokio::test]
async fn v1_mode_before_2024_09_23_has_no_bare_specifiers_or_globals() {
    let config = worker(
        "v1",
        "import { Buffer } from \"node:buffer\";\nexport default { fetch() { return Response.json({ buffer: Buffer.from('ab').toString('hex'), global: typeof globalThis.Buffer }); } };\n",
        "2024-06-01",
        &["nodejs_compat"],
    );
    let server = Server::start(&config, &[]);
    assert_eq!(
        server.get("/").await.json(),
        json!({"buffer": "6162", "global": "undefined"})
    );
    let bare = worker(
        "v1-bare",
        "import { Buffer } from \"buffer\";\nexport default { fetch() { return new Response(Buffer.name); } };\n",
        "2024-06-01",
        &["nodejs_compat"],
    );
    let (ok, output) = check(&bare);
    assert!(!ok && output.contains("built into node"), "{output}");
}
