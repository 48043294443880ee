//! `dorun inspect` against a running server's admin listener: tables for namespaces,
//! objects, KV entries, SQL results and alarms; `--json`; a clear error for a bad token.

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
