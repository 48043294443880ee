//! The dorun binary is self-contained: copied away from the source tree and the Cargo
//! registry, with HOME and the working directory elsewhere, it serves a Worker with Durable
//! Objects (the extensions' JS is embedded); and `dorun healthcheck` asks the admin listener.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{dorun_binary, fixture, scratch_dir, Server};

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[tokio::test]
async fn a_copied_binary_runs_outside_the_source_tree() {
    let root = scratch_dir("portable");
    let bin = root.join("bin/dorun");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(dorun_binary(), &bin).unwrap();
    let app = root.join("app");
    copy_dir(&fixture("admin"), &app);
    let home = root.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut child = Command::new(&bin)
        .args([
            "serve",
            "--port",
            "0",
            "--ephemeral",
            "--admin-port",
            "0",
            "--exit-after",
            "60",
        ])
        .current_dir(&app)
        .env_clear()
        .env("HOME", &home)
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut found = (None, None);
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(url) = line.strip_prefix("dorun: listening on ") {
                found.0 = Some(url.to_string());
            }
            if let Some(url) = line.strip_prefix("dorun: admin on ") {
                found.1 = Some(url.to_string());
            }
            if found.0.is_some() && found.1.is_some() {
                return found;
            }
        }
        found
    });
    let (Some(base), Some(admin)) = lines.join().unwrap() else {
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        panic!("did not start: {}", String::from_utf8_lossy(&output.stderr));
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let response =
                tokio::time::timeout(Duration::from_secs(20), client.get(url.parse().unwrap()))
                    .await
                    .unwrap()
                    .unwrap();
            let status = response.status().as_u16();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, String::from_utf8_lossy(&body).into_owned())
        }
    };
    // fetch, Response.json, URL, a Durable Object with storage: deno_web, deno_fetch,
    // deno_webidl and dorun's glue all loaded from the binary.
    let (status, body) = get(format!("{base}/o/p/put?key=x&value=41")).await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = get(format!("{base}/o/p/get?key=x")).await;
    assert_eq!(body, r#"{"value":41}"#);

    let (ok, out) = {
        let output = Command::new(&bin)
            .args(["healthcheck", "--admin", &admin])
            .env_clear()
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    assert!(ok && out.contains("/healthz"), "{out}");
    let _ = child.kill();
    let _ = child.wait();
    let (ok, _) = {
        let output = Command::new(&bin)
            .args(["healthcheck", "--admin", &admin])
            .env_clear()
            .output()
            .unwrap();
        (output.status.success(), ())
    };
    assert!(!ok, "healthcheck passes against a stopped server");
}

#[tokio::test]
async fn healthcheck_ready_follows_readyz() {
    let data = scratch_dir("healthcheck");
    let server = Server::start(
        &fixture("admin").join("wrangler.toml"),
        &["--data-dir", data.to_str().unwrap(), "--admin-port", "0"],
    );
    let admin = server.stdout_line("dorun: admin on ").unwrap();
    let (ok, stdout, stderr) =
        crate::harness::run_dorun(&["healthcheck", "--ready", "--admin", &admin], None);
    assert!(ok && stdout.contains("/readyz"), "{stderr}");
}
