//! `dorun export` / `dorun import`: a consistent copy taken while the server runs, restored
//! exactly (KV, SQL tables, the alarm), through a running server's admin listener or into a
//! stopped server's data directory; KV namespaces, D1 databases and R2 buckets with them.

use serde_json::{json, Value};

use crate::admin::AdminClient;
use crate::harness::{fixture, run_dorun, scratch_dir, Server};

const NS: &str = "admin-Store";

fn start(data: &std::path::Path) -> Server {
    Server::start(
        &fixture("admin").join("wrangler.toml"),
        &["--data-dir", data.to_str().unwrap(), "--admin-port", "0"],
    )
}

/// Everything stored in an object, as the admin's SQL sees it.
async fn contents(admin: &AdminClient, id: &str) -> Value {
    let mut out = serde_json::Map::new();
    for table in ["_cf_KV", "_cf_METADATA", "notes"] {
        let result = admin
            .ok(
                "POST",
                &format!("/api/objects/{NS}/{id}/sql"),
                Some(json!({"query": format!("SELECT * FROM {table} ORDER BY 1")})),
            )
            .await;
        out.insert(table.into(), result["rows"].clone());
    }
    Value::Object(out)
}

async fn fill(server: &Server) -> (String, String) {
    server
        .get_json_ok("/o/p1/put?key=profile&value=%7B%22n%22%3A5%7D", &[])
        .await;
    server.get_json_ok("/o/p1/sql?body=hello", &[]).await;
    server.get_json_ok("/o/p1/sql?body=world", &[]).await;
    let p1 = server.get_json_ok("/o/p1/alarm?in=3600000", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let p2 = server.get_json_ok("/o/p2/put?key=x&value=2", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(server.get("/bindings/seed").await.status, 200);
    (p1, p2)
}

/// What the Worker reads from its KV namespace, D1 database and R2 bucket after /bindings/seed.
fn seeded() -> Value {
    json!({
        "greeting": "hello from KV", "theme": {"dark": true}, "added": null,
        "posts": ["first post", "second post"],
        "readme": "an R2 object", "files": ["docs/readme.txt", "logo.bin"],
    })
}

fn dorun_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = run_dorun(args, None);
    assert!(ok, "dorun {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

#[tokio::test]
async fn export_while_serving_wipe_and_import_through_the_admin_listener_restores_exactly() {
    let data = scratch_dir("backup-online");
    let out = scratch_dir("backup-online-out");
    let server = start(&data);
    let admin = AdminClient::of(&server, None);
    let (p1, p2) = fill(&server).await;
    let before = contents(&admin, &p1).await;
    let alarm_before = admin
        .ok("GET", &format!("/api/objects/{NS}/{p1}"), None)
        .await["alarm"]
        .clone();
    assert!(alarm_before.is_i64());

    // The running server holds its open objects' files locked: the data directory cannot
    // be copied behind its back, and the error says how to do it.
    let (ok, _, stderr) = run_dorun(
        &[
            "export",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        None,
    );
    assert!(!ok, "an export of a locked data directory must fail");
    assert!(stderr.contains("dorun export --admin URL"), "{stderr}");

    // Through the admin listener: each object copied on its own thread; the KV, D1 and R2
    // files, which the server does not hold exclusively, from the data directory.
    let stdout = dorun_ok(&[
        "export",
        "--admin",
        &admin.base,
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    assert!(
        stdout.contains("exported 2 objects") && stdout.contains("and 3 KV namespaces"),
        "{stdout}"
    );
    let (ok, _, stderr) = run_dorun(
        &[
            "export",
            "--admin",
            &admin.base,
            "--out",
            out.to_str().unwrap(),
            "-n",
            "nope",
        ],
        None,
    );
    assert!(
        !ok && stderr.contains("no namespace 'nope' in http://"),
        "{stderr}"
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("dorun-export.json")).unwrap()).unwrap();
    assert_eq!(manifest["objects"].as_array().unwrap().len(), 2);
    let dump: Value =
        serde_json::from_slice(&std::fs::read(out.join(NS).join(format!("{p1}.json"))).unwrap())
            .unwrap();
    assert_eq!(dump["notes"]["rows"], json!([[1, "hello"], [2, "world"]]));

    admin.ok("POST", "/api/reset", None).await;
    let gone = server.get_json_ok("/o/p1/get?key=profile", &[]).await;
    assert_eq!(gone["value"], Value::Null);
    let emptied = server.get_json_ok("/bindings/read", &[]).await;
    assert_eq!(
        (&emptied["posts"], &emptied["files"]),
        (&json!([]), &json!([]))
    );
    admin.ok("POST", "/api/reset", None).await;

    let stdout = dorun_ok(&[
        "import",
        out.to_str().unwrap(),
        "--admin",
        &admin.base,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("imported 2 objects and 3 KV namespaces"),
        "{stdout}"
    );
    // The running server sees the restored KV, D1 and R2 data at once.
    assert_eq!(server.get_json_ok("/bindings/read", &[]).await, seeded());
    assert_eq!(contents(&admin, &p1).await, before);
    let listed = admin
        .ok("GET", &format!("/api/objects/{NS}/{p1}"), None)
        .await;
    assert_eq!(
        listed["alarm"], alarm_before,
        "the alarm is scheduled again"
    );
    let value = server.get_json_ok("/o/p1/get?key=profile", &[]).await;
    assert_eq!(value["value"], json!({"n": 5}));
    let value = server.get_json_ok("/o/p2/get?key=x", &[]).await;
    assert_eq!(value["value"], 2);
    let _ = p2;
}

#[tokio::test]
async fn one_object_imported_into_a_stopped_servers_data_dir_comes_back_with_its_alarm() {
    let data = scratch_dir("backup-offline");
    let out = scratch_dir("backup-offline-out");
    let (p1, before, alarm_before) = {
        let server = start(&data);
        let admin = AdminClient::of(&server, None);
        let (p1, _) = fill(&server).await;
        let before = contents(&admin, &p1).await;
        let alarm = admin
            .ok("GET", &format!("/api/objects/{NS}/{p1}"), None)
            .await["alarm"]
            .clone();
        (p1, before, alarm)
    };
    dorun_ok(&[
        "export",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--namespace",
        NS,
        "--object",
        &p1,
    ]);
    let fresh = scratch_dir("backup-offline-fresh");
    let stdout = dorun_ok(&[
        "import",
        out.to_str().unwrap(),
        "--data-dir",
        fresh.to_str().unwrap(),
    ]);
    assert!(stdout.contains("imported 1 objects"), "{stdout}");
    let server = start(&fresh);
    let admin = AdminClient::of(&server, None);
    let objects = admin
        .ok("GET", &format!("/api/namespaces/{NS}/objects"), None)
        .await;
    assert_eq!(objects.as_array().unwrap().len(), 1, "{objects}");
    assert_eq!(
        objects[0]["alarm"], alarm_before,
        "the alarm is scheduled at startup"
    );
    assert_eq!(contents(&admin, &p1).await, before);
}

#[tokio::test]
async fn a_whole_data_directory_moves_to_a_fresh_one_with_its_kv_d1_and_r2_data() {
    let data = scratch_dir("backup-bindings");
    let out = scratch_dir("backup-bindings-out");
    let p1 = {
        let server = start(&data);
        let (p1, _) = fill(&server).await;
        assert_eq!(server.get_json_ok("/bindings/read", &[]).await, seeded());
        p1
    };
    let stdout = dorun_ok(&[
        "export",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("exported 2 objects") && stdout.contains("and 3 KV namespaces"),
        "{stdout}"
    );
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(out.join("dorun-export.json")).unwrap()).unwrap();
    let kinds: Vec<&str> = manifest["bindings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["kv", "d1", "r2"], "{manifest}");
    // Plain files a person can open: the bucket's two bodies sit beside its index.
    let blobs = std::fs::read_dir(out.join("r2/admin-files/blobs"))
        .unwrap()
        .count();
    assert_eq!(blobs, 2);

    let fresh = scratch_dir("backup-bindings-fresh");
    let stdout = dorun_ok(&[
        "import",
        out.to_str().unwrap(),
        "--data-dir",
        fresh.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("imported 2 objects and 3 KV namespaces"),
        "{stdout}"
    );
    let server = start(&fresh);
    assert_eq!(server.get_json_ok("/bindings/read", &[]).await, seeded());
    let value = server.get_json_ok("/o/p1/get?key=profile", &[]).await;
    assert_eq!(value["value"], json!({"n": 5}));
    let _ = p1;
}

#[test]
fn export_errors_name_what_is_missing() {
    let data = scratch_dir("backup-errors");
    let out = scratch_dir("backup-errors-out");
    let (ok, _, stderr) = run_dorun(
        &[
            "export",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--namespace",
            "nope",
        ],
        None,
    );
    assert!(!ok);
    assert!(stderr.contains("no namespace 'nope'"), "{stderr}");
    let (ok, _, stderr) = run_dorun(
        &[
            "import",
            out.to_str().unwrap(),
            "--admin",
            "http://127.0.0.1:1",
        ],
        None,
    );
    // An empty export imports nothing and never needs the server.
    assert!(ok, "{stderr}");
}
