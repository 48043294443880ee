//! `serve --replicate-to` and `dorun restore`: Durable Object commits in a store (here a
//! `file://` one), acknowledged only once they are there (`--durability replicated`), and a
//! data directory rebuilt from the store alone after the machine's disk is gone.

use std::path::Path;
use std::time::Duration;

use crate::harness::{example, run_dorun, run_dorun_with_env, scratch_dir, Server};

fn counter() -> std::path::PathBuf {
    example("counter/js/wrangler.toml")
}

fn serve(data: &Path, store: &str, extra: &[&str]) -> Server {
    // A slow store (every upload 30 ms late): what a commit waits for shows. Segments go
    // into per-object L1 files every 300 ms (10 s by default), so restores read both.
    serve_app(
        &counter(),
        data,
        store,
        extra,
        &[
            ("DORUN_TEST_REPLICA_DELAY_MS", "30"),
            ("DORUN_TEST_REPLICA_L1_MS", "300"),
        ],
    )
}

/// `dorun serve <app> --data-dir <data> --replicate-to <store> --node-id e2e <extra>`.
fn serve_app(app: &Path, data: &Path, store: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
    let mut args = vec![
        "--data-dir",
        data.to_str().unwrap(),
        "--replicate-to",
        store,
        "--node-id",
        "e2e",
    ];
    args.extend_from_slice(extra);
    Server::start_with_env(app, &args, env)
}

fn restore(store: &str, into: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "restore",
        "--from",
        store,
        "--data-dir",
        into.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = run_dorun(&args, None);
    assert!(ok, "dorun restore failed: {stderr}");
    stdout
}

/// Serves the counter example on `data` and checks each counter's value.
async fn assert_counters(data: &Path, expected: &[(&str, u64)], when: &str) {
    let server = Server::start(&counter(), &["--data-dir", data.to_str().unwrap()]);
    for (name, value_wanted) in expected {
        assert_eq!(value(&server, name).await, *value_wanted, "{name} {when}");
    }
}

async fn value(server: &Server, name: &str) -> u64 {
    server.get(&format!("/{name}/value")).await.json()["value"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_kill_9_and_a_lost_disk_a_restore_holds_every_acknowledged_write() {
    let dir = scratch_dir("replica-kill9");
    let store = format!("file://{}", dir.join("store").display());
    let data = dir.join("data");
    let mut server = serve(&data, &store, &[]);
    // 12 writers on 6 objects, each request one increment; kill -9 under load.
    let acknowledged = crate::harness::write_until_kill9(
        &mut server,
        12,
        Duration::from_millis(1500),
        |base, w, _| empty_request(http::Method::POST, format!("{base}/o{}/increment", w % 6)),
    )
    .await;
    // Under 1.5 s of load, segments moved into per-object L1 files (every 300 ms here) and
    // the journal behind them was deleted: the restore reads both.
    let l1 = count_files(&dir.join("store/o"), ".ltx");
    assert!(l1 >= 6, "{l1} L1 files");
    // The disk is gone: only the store is left. (With `--durability async` this fails:
    // acknowledged increments are missing from the store, checked when this test was
    // written.)
    std::fs::remove_dir_all(&data).unwrap();
    let restored = dir.join("restored");
    let report = restore(&store, &restored, &[]);
    assert!(report.starts_with("restored 6 objects"), "{report}");
    let server = Server::start(&counter(), &["--data-dir", restored.to_str().unwrap()]);
    for object in 0..6 {
        let acked: u64 = (0..12)
            .filter(|w| w % 6 == object)
            .map(|w| acknowledged[w].len() as u64)
            .sum();
        let sent_at_most = acked + 2; // each writer had at most one request in flight
        let stored = value(&server, &format!("o{object}")).await;
        assert!(
            (acked..=sent_at_most).contains(&stored),
            "o{object}: {acked} increments acknowledged, {stored} restored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_chain_and_a_graceful_stop_leaves_the_store_complete() {
    let dir = scratch_dir("replica-generations");
    let store = format!("file://{}", dir.join("store").display());
    let data = dir.join("data");
    // First life: three objects.
    let mut server = serve(&data, &store, &["--admin-port", "0"]);
    for name in ["a", "b", "c"] {
        for _ in 0..3 {
            assert_eq!(
                server.post(&format!("/{name}/increment"), "").await.status,
                200
            );
        }
    }
    // What the replicator did shows in /metrics: 9 commits went up.
    let admin = server.stdout_line("dorun: admin on ").unwrap();
    let metrics = get_text(&format!("{admin}/metrics")).await;
    for name in [
        "dorun_replica_batches_total",
        "dorun_replica_bytes_total",
        "dorun_replica_upload_seconds_count",
    ] {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"));
        let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(value >= 1.0, "{line}");
    }
    assert!(
        metrics.contains("dorun_replica_batch_commits_sum 9"),
        "{metrics}"
    );
    // And in the admin API (the admin page's Replication section reads it).
    let status: serde_json::Value =
        serde_json::from_str(&get_text(&format!("{admin}/api/replication")).await).unwrap();
    assert_eq!(status["enabled"], true, "{status}");
    assert_eq!(status["durability"], "replicated", "{status}");
    assert_eq!(status["generation"], 1, "{status}");
    assert_eq!(status["pendingCommits"], 0, "{status}");
    assert_eq!(status["store"], store.as_str(), "{status}");
    assert!(status["batches"].as_u64().unwrap() >= 1, "{status}");
    assert!(status["stopped"].is_null(), "{status}");
    // How many objects have L1 files of the first generation.
    let first_life_files = |store: &std::path::Path| {
        let mut found = Vec::new();
        for object in std::fs::read_dir(store.join("o/counter-Counter"))
            .unwrap()
            .flatten()
        {
            let l1 = object.path().join("e/0000000000000001/l1");
            if std::fs::read_dir(&l1).is_ok_and(|mut d| d.next().is_some()) {
                found.push(object.file_name());
            }
        }
        found.len()
    };
    let until = |want: usize| {
        let store = dir.join("store");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let found = first_life_files(&store);
            if found == want || std::time::Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert_eq!(
        until(3),
        3,
        "every object's first-life segments reach an L1 file"
    );
    assert!(server.terminate().success());
    // Second life on the same directory (a new generation): only `a` changes. Its first
    // commit ships it whole, which supersedes its first-life files: with no retention they
    // go once that snapshot is in an L1 file.
    let mut server = serve(&data, &store, &["--replica-retention-hours", "0"]);
    for _ in 0..4 {
        server.post("/a/increment", "").await;
    }
    assert_eq!(value(&server, "a").await, 7);
    assert_eq!(
        until(2),
        2,
        "a's first-life files are gone, b's and c's stay"
    );
    assert!(server.terminate().success());
    let generations = std::fs::read_dir(dir.join("store/g")).unwrap().count();
    assert_eq!(generations, 2);
    // Everything from the store alone.
    let restored = dir.join("restored");
    restore(&store, &restored, &[]);
    let server = Server::start(&counter(), &["--data-dir", restored.to_str().unwrap()]);
    assert_eq!(value(&server, "a").await, 7);
    assert_eq!(value(&server, "b").await, 3);
    assert_eq!(value(&server, "c").await, 3);
    drop(server);
    // One object alone: the others are not written.
    let ids = std::fs::read_dir(restored.join("counter-Counter"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".sqlite")
                .map(String::from)
        })
        .filter(|id| id.len() == 64)
        .collect::<Vec<_>>();
    let one = dir.join("one");
    let report = restore(
        &store,
        &one,
        &["--namespace", "counter-Counter", "--object", &ids[0]],
    );
    assert!(report.starts_with("restored 1 objects"), "{report}");
    let written: Vec<_> = std::fs::read_dir(one.join("counter-Counter"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".sqlite"))
        .collect();
    assert_eq!(written.len(), 1);
}

#[test]
fn durability_and_store_flags_that_do_not_go_together_are_refused() {
    let dir = scratch_dir("replica-flags");
    let config = counter();
    let config = config.to_str().unwrap();
    let (ok, _, stderr) = run_dorun(
        &["serve", config, "--port", "0", "--durability", "replicated"],
        None,
    );
    assert!(!ok && stderr.contains("needs --replicate-to"), "{stderr}");
    // A restore from a prefix nothing was replicated to (a typo) says so.
    let empty = format!("file://{}", dir.join("nothing-here").display());
    let into = dir.join("restored");
    let (ok, _, stderr) = run_dorun(
        &[
            "restore",
            "--from",
            &empty,
            "--data-dir",
            into.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        !ok && stderr.contains("nothing was ever replicated there"),
        "{stderr}"
    );
    let store = format!("file://{}", dir.join("store").display());
    let (ok, _, stderr) = run_dorun(
        &[
            "serve",
            config,
            "--port",
            "0",
            "--replicate-to",
            &store,
            "--durability",
            "full",
        ],
        None,
    );
    assert!(
        !ok && stderr.contains("does not go with --replicate-to"),
        "{stderr}"
    );
    let (ok, _, stderr) = run_dorun(
        &[
            "serve",
            config,
            "--port",
            "0",
            "--replicate-to",
            "ftp://x/y",
        ],
        None,
    );
    assert!(!ok && stderr.contains("s3://bucket/prefix"), "{stderr}");
    // A store that does not answer: the error names the flag and what to check.
    let (ok, _, stderr) = crate::harness::run_dorun_with_env(
        &[
            "serve",
            config,
            "--port",
            "0",
            "--replicate-to",
            "s3://nobucket/x",
        ],
        None,
        &[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", "x"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    assert!(
        !ok && stderr.contains("--replicate-to s3://nobucket/x: the store cannot be used"),
        "{stderr}"
    );
}

/// A local S3 server (moto, from PyPI, installed once into target/ci-tools/moto), stopped
/// when dropped.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    fn start() -> Moto {
        static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ci-tools/moto");
        {
            let _guard = INSTALL.lock().unwrap();
            if !venv.join("bin/moto_server").exists() {
                let made = std::process::Command::new("python3")
                    .args(["-m", "venv"])
                    .arg(&venv)
                    .status()
                    .expect("python3 is needed for the S3 test server (moto)");
                assert!(made.success(), "python3 -m venv {} failed", venv.display());
                let installed = std::process::Command::new(venv.join("bin/pip"))
                    .args(["install", "-q", "moto[server]==5.2.6"])
                    .status()
                    .expect("pip");
                assert!(
                    installed.success(),
                    "pip install moto[server] failed (PyPI needed)"
                );
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server");
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    fn env(&self) -> Vec<(&str, &str)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
        ]
    }

    async fn create_bucket(&self, name: &str) {
        let http = client();
        let request = empty_request(http::Method::PUT, format!("{}/{name}", self.endpoint));
        let response = http.request(request).await.unwrap();
        assert!(
            response.status().is_success(),
            "create bucket: {}",
            response.status()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_store_holds_every_acknowledged_write_through_kill_9() {
    let moto = Moto::start();
    moto.create_bucket("dorun").await;
    let dir = scratch_dir("replica-s3");
    let data = dir.join("data");
    let store = "s3://dorun/apps/counter";
    let env = moto.env();
    let mut server = Server::start_with_env(
        &counter(),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--replicate-to",
            store,
            "--node-id",
            "e2e",
        ],
        &env,
    );
    let acknowledged = crate::harness::write_until_kill9(
        &mut server,
        6,
        Duration::from_millis(1500),
        |base, w, _| empty_request(http::Method::POST, format!("{base}/s{}/increment", w % 3)),
    )
    .await;
    std::fs::remove_dir_all(&data).unwrap();
    let restored = dir.join("restored");
    let (ok, stdout, stderr) = run_dorun_with_env(
        &[
            "restore",
            "--from",
            store,
            "--data-dir",
            restored.to_str().unwrap(),
        ],
        None,
        &env,
    );
    assert!(
        ok && stdout.starts_with("restored 3 objects"),
        "{stdout}{stderr}"
    );
    let server = Server::start(&counter(), &["--data-dir", restored.to_str().unwrap()]);
    for object in 0..3 {
        let acked: u64 = (0..6)
            .filter(|w| w % 3 == object)
            .map(|w| acknowledged[w].len() as u64)
            .sum();
        let stored = value(&server, &format!("s{object}")).await;
        assert!(
            (acked..=acked + 2).contains(&stored),
            "s{object}: {acked} increments acknowledged, {stored} restored"
        );
    }
}

/// R2 bodies over an S3 server: a 20 MiB body goes up as a multipart upload, a restore
/// brings it back byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_bodies_go_to_an_s3_store_as_multipart_uploads() {
    let moto = Moto::start();
    moto.create_bucket("dorun").await;
    let dir = scratch_dir("replica-s3-r2");
    let store = "s3://dorun/apps/r2";
    let env = moto.env();
    let app = crate::harness::fixture("r2/wrangler.toml");
    let data = dir.join("data");
    let mut server = serve_app(&app, &data, store, &[], &env);
    let large: Vec<u8> = (0..20u32 << 20).map(|i| (i % 241) as u8).collect();
    let put = server
        .request(http::Method::PUT, "/large", &[], large.clone().into())
        .await;
    assert_eq!(put.status, 200, "{}", put.text());
    server.kill9();
    let restored = dir.join("restored");
    let (ok, stdout, stderr) = run_dorun_with_env(
        &[
            "restore",
            "--from",
            store,
            "--data-dir",
            restored.to_str().unwrap(),
        ],
        None,
        &env,
    );
    assert!(ok && stdout.contains("and 1 R2 bodies"), "{stdout}{stderr}");
    let server = Server::start(&app, &["--data-dir", restored.to_str().unwrap()]);
    let got = server.get("/large").await;
    assert_eq!(got.status, 200);
    assert!(got.body == large, "the body differs after the restore");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_store_stops_the_first_ones_replication() {
    let dir = scratch_dir("replica-two");
    let store = format!("file://{}", dir.join("store").display());
    let check = [("DORUN_TEST_GENERATION_CHECK_MS", "200")];
    let args = |data: &std::path::PathBuf| {
        vec![
            "--data-dir".to_string(),
            data.to_str().unwrap().to_string(),
            "--replicate-to".to_string(),
            store.clone(),
        ]
    };
    let first_args = args(&dir.join("a"));
    let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let first = Server::start_with_env(&counter(), &first_args, &check);
    assert_eq!(first.post("/x/increment", "").await.status, 200);
    let second_args = args(&dir.join("b"));
    let second_args: Vec<&str> = second_args.iter().map(String::as_str).collect();
    let second = Server::start_with_env(&counter(), &second_args, &check);
    assert_eq!(second.post("/y/increment", "").await.status, 200);
    // Within a few checks the first one's commits fail, loudly, instead of mixing two
    // histories in one store.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = first.post("/x/increment", "").await;
        if reply.status != 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first process kept replicating"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(first
        .logs()
        .contains("another process started on the same store"));
    assert_eq!(second.post("/y/increment", "").await.status, 200);
}

/// Under `async` too: once replication stopped (another process took the store), commits
/// fail instead of going on without the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_async_a_stopped_replication_fails_commits_too() {
    let dir = scratch_dir("replica-two-async");
    let store = format!("file://{}", dir.join("store").display());
    let check = [("DORUN_TEST_GENERATION_CHECK_MS", "200")];
    let first = serve_app(
        &counter(),
        &dir.join("a"),
        &store,
        &["--durability", "async"],
        &check,
    );
    assert_eq!(first.post("/x/increment", "").await.status, 200);
    let second = serve_app(&counter(), &dir.join("b"), &store, &[], &check);
    assert_eq!(second.post("/y/increment", "").await.status, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while first.post("/x/increment", "").await.status == 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first process went on without its store"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(first
        .logs()
        .contains("another process started on the same store"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_at_a_point_in_time_stops_there() {
    let dir = scratch_dir("replica-at");
    let store = format!("file://{}", dir.join("store").display());
    let mut server = serve(&dir.join("data"), &store, &[]);
    for _ in 0..3 {
        server.post("/t/increment", "").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let between = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        server.post("/t/increment", "").await;
    }
    assert!(server.terminate().success());
    let then = dir.join("then");
    restore(&store, &then, &["--at", &between]);
    let latest = dir.join("latest");
    restore(&store, &latest, &[]);
    let server = Server::start(&counter(), &["--data-dir", then.to_str().unwrap()]);
    assert_eq!(value(&server, "t").await, 3);
    drop(server);
    let server = Server::start(&counter(), &["--data-dir", latest.to_str().unwrap()]);
    assert_eq!(value(&server, "t").await, 6);
    let (ok, _, stderr) = run_dorun(
        &[
            "restore",
            "--from",
            &store,
            "--data-dir",
            "/tmp/x",
            "--at",
            "yesterday",
        ],
        None,
    );
    assert!(!ok && stderr.contains("RFC 3339"), "{stderr}");
}

/// An operator's reset deletes objects; the store must say so, or a restore would bring
/// them back (it did: the reset only moved local files away). The reset takes a new
/// generation whose record names the reset namespaces; a restore drops them there. A
/// restore to a time before the reset still has them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_object_does_not_come_back_from_a_restore() {
    let dir = scratch_dir("replica-reset");
    let store = format!("file://{}", dir.join("store").display());
    let mut server = serve(&dir.join("data"), &store, &["--admin-port", "0"]);
    let admin = crate::admin::AdminClient::of(&server, None);
    for _ in 0..5 {
        server.post("/gone/increment", "").await;
    }
    for _ in 0..2 {
        server.post("/again/increment", "").await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_reset = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reset = admin.ok("POST", "/api/reset", None).await;
    assert_eq!(reset["objects"], 2, "{reset}");
    server.post("/again/increment", "").await;
    for _ in 0..3 {
        server.post("/new/increment", "").await;
    }
    // A second reset, of one namespace, then more writes: each reset is its own generation.
    let second = admin
        .ok("POST", "/api/namespaces/counter-Counter/reset", None)
        .await;
    assert_eq!(second["objects"], 2, "{second}");
    for _ in 0..4 {
        server.post("/after/increment", "").await;
    }
    assert_eq!(value(&server, "new").await, 0);
    server.kill9();

    let latest = dir.join("latest");
    let printed = restore(&store, &latest, &[]);
    assert!(printed.starts_with("restored 1 objects"), "{printed}");
    let then = dir.join("then");
    restore(&store, &then, &["--at", &before_reset]);
    assert_counters(
        &latest,
        &[("gone", 0), ("again", 0), ("new", 0), ("after", 4)],
        "after the restore",
    )
    .await;
    assert_counters(
        &then,
        &[("gone", 5), ("again", 2), ("after", 0)],
        "before the reset",
    )
    .await;
}

/// Only commits are shipped, so an object written while dorun ran without `--replicate-to`
/// (or imported) would never reach the store unless written again. A start ships whole
/// what the store may lack (everything on the first start into a store, the objects with a
/// WAL after a crash, nothing after a clean stop), and an import through the admin
/// listener ships the imported object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_written_before_replication_or_imported_reach_the_store() {
    let dir = scratch_dir("replica-baseline");
    let store = format!("file://{}", dir.join("store").display());
    let data = dir.join("data");
    let plain = Server::start(&counter(), &["--data-dir", data.to_str().unwrap()]);
    for _ in 0..3 {
        plain.post("/before/increment", "").await;
    }
    drop(plain);
    // The file an import will bring in: an object of another data directory.
    let elsewhere = dir.join("elsewhere");
    let mut other = Server::start(&counter(), &["--data-dir", elsewhere.to_str().unwrap()]);
    for _ in 0..7 {
        other.post("/imported/increment", "").await;
    }
    assert!(other.terminate().success());

    let mut first = serve(&data, &store, &[]);
    assert!(
        first.wait_for_log("shipped 1 objects whole").await,
        "{}",
        first.logs()
    );
    first.post("/during/increment", "").await;
    assert!(first.terminate().success());
    // After a clean stop nothing is shipped up front.
    let mut second = serve(&data, &store, &["--admin-port", "0"]);
    assert!(
        !second.logs().contains("objects whole"),
        "{}",
        second.logs()
    );
    let admin = crate::admin::AdminClient::of(&second, None);
    let id = admin
        .ok(
            "GET",
            "/api/namespaces/counter-Counter/id?name=imported",
            None,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let file = std::fs::read(
        elsewhere
            .join("counter-Counter")
            .join(format!("{id}.sqlite")),
    )
    .unwrap();
    let (status, body) = admin
        .with_headers(
            "POST",
            &format!("/api/objects/counter-Counter/{id}/import"),
            &[("content-type", "application/octet-stream")],
            file.into(),
        )
        .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(value(&second, "imported").await, 7);
    // The import reaches the store within the replication lag.
    tokio::time::sleep(Duration::from_millis(500)).await;
    second.kill9();

    let restored = dir.join("restored");
    restore(&store, &restored, &[]);
    assert_counters(
        &restored,
        &[("before", 3), ("during", 1), ("imported", 7)],
        "after the restore",
    )
    .await;
}

/// KV namespaces and D1 databases are replicated too: every commit, from whichever path
/// (a put, a delete, D1's `exec` and `run`), is in the store before the Worker's call
/// returns, and a restore puts the files back where the bindings find them. Files written
/// before replication was turned on are shipped at the first start into the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_and_d1_writes_are_in_the_store_before_they_return() {
    let dir = scratch_dir("replica-bindings");
    let store = format!("file://{}", dir.join("store").display());
    let data = dir.join("data");
    let app = crate::harness::fixture("kv/app/wrangler.toml");
    let plain = Server::start(&app, &["--data-dir", data.to_str().unwrap()]);
    assert_eq!(plain.get("/put?key=early&value=e").await.status, 200);
    drop(plain);
    let mut server = serve_app(
        &app,
        &data,
        &store,
        &[],
        &[("DORUN_TEST_REPLICA_DELAY_MS", "30")],
    );
    for (key, value) in [("k1", "v1"), ("k2", "v2"), ("k3", "v3")] {
        let put = server.get(&format!("/put?key={key}&value={value}")).await;
        assert_eq!(put.status, 200, "{}", put.text());
    }
    assert_eq!(server.get("/delete?key=k2").await.status, 200);
    for (key, value) in [("a", "1"), ("b", "2")] {
        let put = server.get(&format!("/d1put?key={key}&value={value}")).await;
        assert_eq!(put.status, 200, "{}", put.text());
    }
    // Acknowledged means in the store: nothing is waited for after the last answer.
    server.kill9();
    let restored = dir.join("restored");
    restore(&store, &restored, &[]);
    let server = Server::start(&app, &["--data-dir", restored.to_str().unwrap()]);
    for (key, expected) in [
        ("early", Some("e")),
        ("k1", Some("v1")),
        ("k2", None),
        ("k3", Some("v3")),
    ] {
        let got = server.get(&format!("/get?key={key}")).await;
        match expected {
            Some(value) => assert_eq!((got.status, got.text()), (200, value.to_string()), "{key}"),
            None => assert_eq!(got.status, 404, "{key} was deleted"),
        }
    }
    drop(server);
    let d1 = rusqlite::Connection::open(restored.join("d1/shared-db.sqlite")).unwrap();
    let rows: Vec<(String, String)> = d1
        .prepare("SELECT k, v FROM notes ORDER BY k")
        .unwrap()
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows, [("a".into(), "1".into()), ("b".into(), "2".into())]);
}

/// Queued messages are replicated like the rest: a resolved `send()` is in the store, and a
/// restore brings the queue back with the messages still waiting (delayed here, so the
/// consumer has not taken them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_messages_are_in_the_store_once_send_resolves() {
    let dir = scratch_dir("replica-queues");
    let store = format!("file://{}", dir.join("store").display());
    let app = crate::harness::fixture("queues/wrangler.toml");
    let data = dir.join("data");
    let mut server = serve_app(
        &app,
        &data,
        &store,
        &[],
        &[("DORUN_TEST_REPLICA_DELAY_MS", "30")],
    );
    for n in 0..3 {
        let sent = server.get(&format!("/send?body=later-{n}&delay=600")).await;
        assert_eq!((sent.status, sent.text()), (200, "sent".to_string()));
    }
    server.kill9();
    let restored = dir.join("restored");
    let printed = restore(&store, &restored, &[]);
    assert!(printed.contains("binding files"), "{printed}");
    let queue = rusqlite::Connection::open(restored.join("queues/jobs.sqlite")).unwrap();
    let waiting: i64 = queue
        .query_row("SELECT count(*) FROM messages", [], |row| row.get(0))
        .unwrap();
    assert_eq!(waiting, 3);
}

/// R2 bodies go to the store as they are written, before the index refers to them (a body
/// over 16 MiB as a multipart upload read from disk), and the index is replicated like the
/// other binding files: a restore brings the bucket back, bodies and all; a deleted object
/// stays deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_bodies_and_index_are_in_the_store_before_put_returns() {
    let dir = scratch_dir("replica-r2");
    let store = format!("file://{}", dir.join("store").display());
    let app = crate::harness::fixture("r2/wrangler.toml");
    let data = dir.join("data");
    let mut server = serve_app(
        &app,
        &data,
        &store,
        &[],
        &[("DORUN_TEST_REPLICA_DELAY_MS", "30")],
    );
    let large: Vec<u8> = (0..20u32 << 20).map(|i| (i % 251) as u8).collect();
    let small = b"a small body".to_vec();
    for (key, body) in [("large", &large), ("small", &small), ("gone", &small)] {
        let put = server
            .request(
                http::Method::PUT,
                &format!("/{key}"),
                &[],
                body.clone().into(),
            )
            .await;
        assert_eq!(put.status, 200, "{}", put.text());
    }
    assert_eq!(
        server
            .request(http::Method::DELETE, "/gone", &[], bytes::Bytes::new())
            .await
            .status,
        200
    );
    server.kill9();
    let restored = dir.join("restored");
    let printed = restore(&store, &restored, &[]);
    assert!(printed.contains("and 2 R2 bodies"), "{printed}");
    let server = Server::start(&app, &["--data-dir", restored.to_str().unwrap()]);
    let got = server.get("/large").await;
    assert_eq!(got.status, 200);
    assert!(
        got.body == large,
        "the large body differs after the restore"
    );
    assert_eq!(server.get("/small").await.text(), "a small body");
    assert_eq!(server.get("/gone").await.status, 404);
}

/// `--durability async` lags by a bounded interval: once the oldest commit not in the
/// store has waited past the bound (10 s; 300 ms here), commits wait for the store until it
/// catches up. With every upload made 1 s slow, a writer is answered at local-disk speed
/// for the bound, then waits for an upload, and so on; a kill -9 loses only what was
/// answered within the last bound and uploads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_replication_waits_for_the_store_once_it_lags_past_the_bound() {
    let dir = scratch_dir("replica-async-bound");
    let store = format!("file://{}", dir.join("store").display());
    let data = dir.join("data");
    let mut server = serve_app(
        &counter(),
        &data,
        &store,
        &["--durability", "async"],
        &[
            ("DORUN_TEST_REPLICA_DELAY_MS", "1000"),
            ("DORUN_TEST_REPLICA_ASYNC_BOUND_MS", "300"),
        ],
    );
    let started = std::time::Instant::now();
    let mut answers = Vec::new(); // (sent at, took, value)
    while started.elapsed() < Duration::from_secs(4) {
        let sent = std::time::Instant::now();
        let reply = server.post("/w/increment", "").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let value = reply.json()["value"].as_u64().unwrap();
        answers.push((sent - started, sent.elapsed(), value));
    }
    let killed = started.elapsed();
    server.kill9();
    // Commits are answered at local-disk speed until the oldest one not in the store is
    // 300 ms old; then the next waits for the store (about an upload, 1 s).
    let longest = answers.iter().map(|(_, took, _)| *took).max().unwrap();
    assert!(
        longest >= Duration::from_millis(500),
        "past the bound a commit waits for the store: the longest answer took {longest:?}"
    );
    let acknowledged = answers.last().unwrap().2;
    let restored = dir.join("restored");
    restore(&store, &restored, &[]);
    let server = Server::start(&counter(), &["--data-dir", restored.to_str().unwrap()]);
    let stored = value(&server, "w").await;
    // Answered within the bound plus an upload or two of the kill: may be lost.
    let window = Duration::from_millis(300 + 2 * 1000 + 200);
    let recent = answers
        .iter()
        .filter(|(sent, took, _)| killed.saturating_sub(*sent + *took) < window)
        .count() as u64;
    assert!(
        stored <= acknowledged && stored + recent >= acknowledged,
        "{acknowledged} acknowledged, {stored} restored, {recent} answered in the last {window:?}"
    );
}

/// A binding file whose name is percent-encoded on disk (`notes.db` is `notes%2Edb.sqlite`)
/// keeps its name through the store: object_store lists such keys encoded once more, and a
/// restore that took the listed name as it was failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_d1_database_whose_name_needs_encoding_comes_back_under_its_name() {
    let dir = scratch_dir("replica-encoded-name");
    let app = dir.join("app");
    std::fs::create_dir_all(&app).unwrap();
    std::fs::write(
        app.join("wrangler.toml"),
        "name = \"dot\"\nmain = \"index.js\"\ncompatibility_date = \"2025-10-01\"\n\
         [[d1_databases]]\nbinding = \"DB\"\ndatabase_name = \"notes.db\"\n\
         database_id = \"00000000-0000-4000-8000-00000000000a\"\n",
    )
    .unwrap();
    std::fs::write(
        app.join("index.js"),
        "export default { async fetch(request, env) {\n\
           await env.DB.exec(\"CREATE TABLE IF NOT EXISTS t (v TEXT)\");\n\
           await env.DB.prepare(\"INSERT INTO t VALUES (?)\").bind(\"x\").run();\n\
           return Response.json(await env.DB.prepare(\"SELECT count(*) AS n FROM t\").first(\"n\"));\n\
         } };\n",
    )
    .unwrap();
    let store = format!("file://{}", dir.join("store").display());
    let mut server = serve_app(
        &app.join("wrangler.toml"),
        &dir.join("data"),
        &store,
        &[],
        &[("DORUN_TEST_REPLICA_L1_MS", "100")],
    );
    for n in 1..=3 {
        assert_eq!(server.get("/").await.text(), n.to_string());
    }
    // Until the rows are in an L1 file (listed back from the store), not only in the journal.
    let l1 = dir.join("store/o/d1");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while count_files(&l1, ".ltx") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no L1 file under {}",
            l1.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill9();
    let restored = dir.join("restored");
    let printed = restore(&store, &restored, &[]);
    assert!(printed.contains("1 binding files"), "{printed}");
    let file = restored.join("d1/notes%2Edb.sqlite");
    let rows: i64 = rusqlite::Connection::open(&file)
        .unwrap()
        .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
        .unwrap();
    assert_eq!(rows, 3);
}

/// A D1 database made by `dorun d1 migrations apply` (a separate process that closes it
/// cleanly: no WAL file at all) is shipped whole at the first start with replication; the
/// first real app tried (Cloudflare's d1-template) failed to start on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_offline_is_shipped_at_the_first_start() {
    let dir = scratch_dir("replica-d1-migrated");
    let data = dir.join("data");
    let app = crate::harness::fixture("d1/wrangler.toml");
    let (ok, _, stderr) = run_dorun(
        &[
            "d1",
            "migrations",
            "apply",
            "DB",
            "--config",
            app.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        None,
    );
    assert!(ok, "{stderr}");
    let store = format!("file://{}", dir.join("store").display());
    let mut server = serve_app(&app, &data, &store, &[], &[]);
    assert!(
        server.wait_for_log("shipped 1 objects whole").await,
        "{}",
        server.logs()
    );
    assert_eq!(server.get("/add?body=hello").await.status, 200);
    server.kill9();
    let restored = dir.join("restored");
    restore(&store, &restored, &[]);
    let server = Server::start(&app, &["--data-dir", restored.to_str().unwrap()]);
    // The migrations' seed row and the row written while replicating.
    assert_eq!(
        server.get("/bodies").await.text(),
        r#"["welcome; it's seeded","hello"]"#
    );
}

async fn get_text(url: &str) -> String {
    let http = client();
    let request = empty_request(http::Method::GET, url);
    let response = http.request(request).await.unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    String::from_utf8(body.to_bytes().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wal_is_checkpointed_once_it_is_in_the_store_and_the_restore_still_matches() {
    let dir = scratch_dir("replica-checkpoint");
    let store = format!("file://{}", dir.join("store").display());
    let data = dir.join("data");
    let mut server = serve(&data, &store, &[]);
    // The WAL's salts (bytes 16..24 of its header) change when a checkpoint restarts it.
    assert_eq!(server.post("/w/increment", "").await.status, 200);
    let wal = std::fs::read_dir(data.join("counter-Counter"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with("-wal"))
        .unwrap()
        .path();
    let salts = |wal: &Path| {
        std::fs::read(wal)
            .ok()
            .and_then(|b| b.get(16..24).map(<[u8]>::to_vec))
    };
    let first = salts(&wal).unwrap();
    // Commits to one object until its WAL passes the 4 MiB a replicated WAL may reach and
    // the isolate thread's sweep (about once a second) checkpoints it, once all of it is in
    // the store: its salts change. (How many commits that takes depends on how the load
    // groups writes into commits, so the writers go on until it happens.)
    let checkpointed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(1));
    let mut writers = Vec::new();
    for _ in 0..8 {
        let base = server.base.clone();
        let checkpointed = checkpointed.clone();
        let written = written.clone();
        writers.push(tokio::spawn(async move {
            let http = client();
            while !checkpointed.load(std::sync::atomic::Ordering::Relaxed) {
                let request = empty_request(http::Method::POST, format!("{base}/w/increment"));
                assert_eq!(http.request(request).await.unwrap().status(), 200);
                written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while salts(&wal).as_ref() == Some(&first) {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL was never checkpointed ({} commits)",
            written.load(std::sync::atomic::Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    checkpointed.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    assert!(std::fs::metadata(&wal).unwrap().len() < 8 << 20);
    for _ in 0..50 {
        server.post("/w/increment", "").await;
    }
    let total = written.load(std::sync::atomic::Ordering::Relaxed) + 50;
    assert_eq!(value(&server, "w").await, total);
    assert!(server.terminate().success());
    let restored = dir.join("restored");
    restore(&store, &restored, &[]);
    let server = Server::start(&counter(), &["--data-dir", restored.to_str().unwrap()]);
    assert_eq!(value(&server, "w").await, total);
}

fn count_files(dir: &Path, suffix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                count_files(&path, suffix)
            } else {
                usize::from(path.to_string_lossy().ends_with(suffix))
            }
        })
        .sum()
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

fn client() -> Client {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

fn empty_request(
    method: http::Method,
    url: impl AsRef<str>,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(url.as_ref())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_objects_alarm_fires_on_the_restored_directory() {
    let dir = scratch_dir("replica-alarm");
    let store = format!("file://{}", dir.join("store").display());
    let alarms = example("alarms/wrangler.toml");
    let data = dir.join("data");
    let mut server = Server::start(
        &alarms,
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--replicate-to",
            &store,
            "--var",
            "FLUSH_AFTER_MS=1500",
        ],
    );
    assert_eq!(server.post("/queue/a", "x").await.status, 200);
    // Stopped before the alarm is due; the machine's disk is then gone.
    assert!(server.terminate().success());
    std::fs::remove_dir_all(&data).unwrap();
    let restored = dir.join("restored");
    let report = restore(&store, &restored, &[]);
    assert!(report.contains("1 with an alarm"), "{report}");
    let server = Server::start(&alarms, &["--data-dir", restored.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = server.get("/queue/a").await.json();
        if status["batches"].as_array().is_some_and(|b| b.len() == 1) {
            assert_eq!(status["batches"][0]["items"], serde_json::json!(["x"]));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the alarm never fired: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
