//! The admin web page in a real headless browser driven by playwright-core: the system's
//! /usr/bin/chromium when present, else the Chromium the npm package @sparticuz/chromium
//! carries (tests/browser/browser.mjs; `DORUN_BROWSER=npm` picks it even when the system
//! has one). Each view (KV namespaces, D1 databases and R2 buckets too), the SQL boxes,
//! a KV put and delete, an R2 download and delete, alarm deletion, evict and reset with their
//! confirmations, and a page of another origin that tries to reset everything
//! (tests/browser/admin-page.mjs). Screenshots go to a scratch directory, or to docs/ with
//! `DORUN_SCREENSHOTS=docs`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{fixture, install_npm_dependencies, scratch_dir, Server};

#[tokio::test]
async fn the_admin_page_browses_queries_and_resets_in_a_real_browser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let tests = root.join("tests/browser");
    install_npm_dependencies(&tests);
    let data = scratch_dir("admin-page");
    let server = Server::start(
        &fixture("admin").join("wrangler.toml"),
        // Objects stay resident however slow the browser is (the page shows residency).
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--admin-port",
            "0",
            "--object-idle-timeout",
            "600",
        ],
    );
    let admin = server.stdout_line("dorun: admin on ").unwrap();
    let alice = server
        .get_json_ok("/o/alice/put?key=profile&value=%7B%22n%22%3A5%7D", &[])
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    server
        .get_json_ok("/o/alice/put?key=visits&value=12", &[])
        .await;
    let bob = server.get_json_ok("/o/bob/alarm?in=3600000", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    server.get_json_ok("/o/carol/sql?body=hello", &[]).await;
    let seeded = server.get("/bindings/seed").await;
    assert_eq!((seeded.status, seeded.text()), (200, "seeded".to_string()));
    let shots = match std::env::var("DORUN_SCREENSHOTS") {
        Ok(dir) => root.join(dir),
        Err(_) => scratch_dir("admin-page-shots"),
    };
    std::fs::create_dir_all(&shots).unwrap();
    let mut child = Command::new("node")
        .arg(tests.join("admin-page.mjs"))
        .args([&admin, shots.to_str().unwrap(), &alice, &bob, &server.base])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the browser test did not finish within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("\"ok\":true"),
        "{stdout}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.logs()
    );
    for view in [
        "namespaces",
        "objects",
        "kv",
        "sql",
        "kv-namespace",
        "d1",
        "r2",
        "alarm",
        "reset",
    ] {
        let png = shots.join(format!("admin-{view}.png"));
        let bytes = std::fs::read(&png).unwrap_or_default();
        assert!(
            bytes.starts_with(b"\x89PNG"),
            "{} is not a PNG",
            png.display()
        );
    }
}
