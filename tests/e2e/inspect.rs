//! `dorun inspect` against a running server's admin listener: tables for namespaces,
//! objects, KV entries, SQL results and alarms; `--json`; a clear error for a bad token;
//! KV namespaces, D1 databases and R2 buckets (list, read, write, delete, SQL).

use crate::admin::AdminClient;
use crate::harness::{fixture, run_dorun, scratch_dir, Server};

fn inspect(admin: &AdminClient, args: &[&str]) -> String {
    let mut all = vec!["inspect", "--admin", &admin.base];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = run_dorun(&all, None);
    assert!(ok, "dorun {all:?}: {stderr}");
    stdout
}

#[tokio::test]
async fn lists_reads_kv_runs_sql_and_shows_alarms_as_tables() {
    let data = scratch_dir("inspect");
    let server = Server::start(
        &fixture("admin").join("wrangler.toml"),
        &["--data-dir", data.to_str().unwrap(), "--admin-port", "0"],
    );
    let admin = AdminClient::of(&server, None);
    server
        .get_json_ok("/o/ina/put?key=profile&value=%7B%22n%22%3A5%7D", &[])
        .await;
    server.get_json_ok("/o/ina/sql?body=hello", &[]).await;
    let id = server.get_json_ok("/o/ina/alarm?in=600000", &[]).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    let out = inspect(&admin, &["list"]);
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("NAMESPACE") && header.contains("OBJECTS"),
        "{out}"
    );
    assert!(lines.next().unwrap().starts_with("---------"), "{out}");
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("admin-Store") && row.contains("Store"),
        "{out}"
    );

    let out = inspect(&admin, &["list", "admin-Store"]);
    assert!(
        out.contains(&id) && out.contains("ina") && out.contains("yes"),
        "{out}"
    );

    let out = inspect(&admin, &["kv", "admin-Store", &id[..10]]);
    assert!(
        out.contains("profile") && out.contains(r#"{"n":5}"#),
        "{out}"
    );

    let out = inspect(
        &admin,
        &["sql", "admin-Store", &id, "SELECT id, body FROM notes"],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["id", "body"],
        "{out}"
    );
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["1", "hello"],
        "{out}"
    );
    assert_eq!(lines[3], "(1 row, 0 written)", "{out}");

    let out = inspect(&admin, &["alarms"]);
    assert!(out.contains(&id) && out.contains("in 9m"), "{out}");

    let out = inspect(&admin, &["--json", "list"]);
    let value: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(value[0]["key"], "admin-Store");

    let (ok, _, stderr) = run_dorun(
        &["inspect", "--admin", &admin.base, "kv", "admin-Store", "zz"],
        None,
    );
    assert!(
        !ok && stderr.contains("no object of admin-Store starts with 'zz'"),
        "{stderr}"
    );
}

#[tokio::test]
async fn kv_namespaces_d1_databases_and_r2_buckets_are_read_written_and_deleted() {
    let data = scratch_dir("inspect-bindings");
    let server = Server::start(
        &fixture("admin").join("wrangler.toml"),
        &["--data-dir", data.to_str().unwrap(), "--admin-port", "0"],
    );
    let admin = AdminClient::of(&server, None);
    assert_eq!(server.get("/bindings/seed").await.status, 200);

    let out = inspect(&admin, &["bindings"]);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["kv", "admin-cache", "2", "keys"],
            vec!["d1", "admin-db", "posts", "(2)"],
            vec!["r2", "admin-files", "2", "objects"],
        ],
        "{out}"
    );

    let out = inspect(&admin, &["kv-keys", "admin-cache"]);
    assert!(out.contains("config/theme"), "{out}");
    let greeting = out.lines().find(|l| l.starts_with("greeting")).unwrap();
    assert!(greeting.contains(r#"{"lang":"en"}"#), "{out}");
    assert_eq!(
        inspect(&admin, &["kv-get", "admin-cache", "greeting"]),
        "hello from KV"
    );
    inspect(
        &admin,
        &["kv-put", "admin-cache", "added/by page", "from the CLI"],
    );
    inspect(&admin, &["kv-delete", "admin-cache", "config/theme"]);
    let out = inspect(&admin, &["kv-keys", "admin-cache", "--prefix", "con"]);
    assert!(out.contains("(none)"), "{out}");

    let out = inspect(&admin, &["d1", "admin-db"]);
    assert!(
        out.lines().any(|l| l.split_whitespace().eq(["posts", "2"])),
        "{out}"
    );
    let out = inspect(
        &admin,
        &[
            "d1",
            "admin-db",
            "INSERT INTO posts (title) VALUES ('from the CLI'); SELECT title FROM posts ORDER BY id",
        ],
    );
    assert!(
        out.contains("second post")
            && out.contains("from the CLI")
            && out.contains("(3 rows, 1 written)"),
        "{out}"
    );

    let out = inspect(&admin, &["r2", "admin-files"]);
    assert!(
        out.contains("docs/readme.txt") && out.contains("logo.bin") && out.contains("4 B"),
        "{out}"
    );
    assert_eq!(
        inspect(&admin, &["r2-get", "admin-files", "docs/readme.txt"]),
        "an R2 object"
    );
    inspect(&admin, &["r2-delete", "admin-files", "logo.bin"]);

    let seen = server.get_json_ok("/bindings/read", &[]).await;
    assert_eq!(
        seen,
        serde_json::json!({
            "greeting": "hello from KV", "theme": null, "added": "from the CLI",
            "posts": ["first post", "second post", "from the CLI"],
            "readme": "an R2 object", "files": ["docs/readme.txt"],
        })
    );
    let (ok, _, stderr) = run_dorun(
        &[
            "inspect",
            "--admin",
            &admin.base,
            "kv-get",
            "admin-cache",
            "nope",
        ],
        None,
    );
    assert!(!ok && stderr.contains("no such key"), "{stderr}");
    let (ok, _, stderr) = run_dorun(&["inspect", "--admin", &admin.base, "d1", "nodb"], None);
    assert!(!ok && stderr.contains("no D1 database 'nodb'"), "{stderr}");
}

#[tokio::test]
async fn a_wrong_token_is_a_clear_error() {
    let data = scratch_dir("inspect-token");
    let server = Server::start(
        &fixture("admin").join("wrangler.toml"),
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--admin-port",
            "0",
            "--admin-token",
            "t0k",
        ],
    );
    let admin = AdminClient::of(&server, None);
    let (ok, _, stderr) = run_dorun(
        &[
            "inspect",
            "--admin",
            &admin.base,
            "--admin-token",
            "bad",
            "list",
        ],
        None,
    );
    assert!(!ok);
    assert!(
        stderr.contains("401") && stderr.contains("admin token"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = run_dorun(
        &[
            "inspect",
            "--admin",
            &admin.base,
            "--admin-token",
            "t0k",
            "list",
        ],
        None,
    );
    assert!(ok && stdout.contains("admin-Store"), "{stderr}");
}
