//! D1 (`d1_databases`): the API against what wrangler dev answers
//! (tests/fixtures/d1-reference), a plain SQLite file per database, batches that apply all
//! or nothing, restarts and kill -9.

/// Steps where dorun differs on purpose, and why (the README says so too).
const DELIBERATE: &[(&str, &str)] = &[
    // The SQLite rusqlite bundles is the amalgamation, whose parser has no UPDATE/DELETE
    // ... ORDER BY ... LIMIT (that needs SQLite built from its canonical sources).
    (
        "limit.delete-returning",
        "DELETE ... LIMIT is a syntax error in dorun's SQLite",
    ),
    ("limit.update", "UPDATE ... LIMIT is a syntax error"),
    (
        "limit.update-order",
        "UPDATE ... ORDER BY ... LIMIT is a syntax error",
    ),
    ("limit.after", "the three statements above changed nothing"),
    (
        "prepare.no-arg",
        "prepare() runs the SQL \"undefined\"; Miniflare fails to parse its own request",
    ),
    (
        "prepare.number-arg",
        "prepare(42) runs the SQL \"42\"; Miniflare fails to parse its own request",
    ),
    (
        "batch.strings",
        "batch([\"SQL\"]) says there is no statement; Miniflare fails to parse its own request",
    ),
    // Miniflare keeps a D1 database in a Durable Object's file, with its _cf_METADATA
    // table; dorun's file holds only the user's tables.
    ("cleanup.sqlite_master", "no _cf_METADATA table"),
    (
        "pragma.table_list",
        "no _cf_METADATA table; ANALYZE also writes sqlite_stat4",
    ),
    (
        "pragma.pragma_table_list-function",
        "no _cf_METADATA table; sqlite_stat4",
    ),
    ("pragma.sqlite_master", "no _cf_METADATA table"),
    (
        "pragma.changes-fn",
        "changes() after the runtime's own statements of the previous call",
    ),
    (
        "prepare.create-view",
        "a CREATE VIEW changes the schema, so changed_db is true",
    ),
    (
        "prepare.create-virtual-fts5",
        "changes counts no rows of the fts5 shadow tables",
    ),
];

/// Counters dorun keeps as SQLite gives them: rows returned and rows changed. Cloudflare
/// counts every b-tree row a statement visits or writes (index entries included).
const APPROXIMATE: &[&str] = &["rows_read", "rows_written"];

/// The same worker on dorun answers every step of tests/fixtures/d1-reference as
/// wrangler dev 4.86.0 did, except the [`DELIBERATE`] differences.
#[tokio::test]
async fn the_api_answers_as_wrangler_dev_does() {
    crate::reference::assert_matches_wrangler_dev_except("d1-reference", DELIBERATE, APPROXIMATE)
        .await;
}

fn app() -> std::path::PathBuf {
    crate::harness::fixture("d1").join("wrangler.toml")
}

/// `dorun d1 <args> --config <fixture> --data-dir <data>`; panics unless it succeeds.
fn d1(data: &std::path::Path, args: &[&str]) -> String {
    let config = app();
    let mut all = vec!["d1"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let (ok, stdout, stderr) = crate::harness::run_dorun(&all, None);
    assert!(ok, "dorun {all:?}: {stderr}");
    stdout
}

fn start(data: &std::path::Path) -> crate::harness::Server {
    crate::harness::Server::start(&app(), &["--data-dir", data.to_str().unwrap()])
}

/// The project's workflow: migrations applied with `dorun d1 migrations apply` (as with
/// `wrangler d1 migrations apply --local`), the Worker reads and writes, a batch applies
/// all or nothing, the data survives a restart, and `dorun d1 export` gives SQL that
/// rebuilds the database elsewhere.
#[tokio::test]
async fn migrations_queries_batches_restart_and_export() {
    use serde_json::json;
    let data = crate::harness::scratch_dir("d1-app");
    let pending = d1(&data, &["migrations", "list", "DB"]);
    assert_eq!(
        pending.lines().collect::<Vec<_>>(),
        ["0001_create_notes.sql", "0002_add_tags.sql"]
    );
    d1(&data, &["migrations", "apply", "notes-db"]);
    assert!(d1(&data, &["migrations", "list", "DB"]).contains("No migrations to apply"));
    let mut server = start(&data);
    assert_eq!(
        server.get("/count").await.json(),
        json!(1),
        "the seeded note"
    );
    assert_eq!(
        server.get("/add?body=first").await.json(),
        json!({"id": 2, "changes": 1})
    );
    assert_eq!(
        server.get("/tag?body=tagged&tag=red").await.json(),
        json!([1, 1])
    );
    // The note's body is UNIQUE: the second insert of the batch fails, so the first one
    // (a new note) is rolled back with it.
    let failed = server.get("/tag?body=first&tag=blue").await;
    assert_eq!(failed.status, 500, "{}", failed.text());
    assert_eq!(server.get("/count").await.json(), json!(3));
    // A duplicate through the Worker is D1's error, not a crash.
    let duplicate = server.get("/add?body=first").await;
    assert_eq!(duplicate.status, 500);
    assert!(
        server
            .logs()
            .contains("D1_ERROR: UNIQUE constraint failed: notes.body: SQLITE_CONSTRAINT"),
        "{}",
        server.logs()
    );
    server.terminate();
    // One plain SQLite file with the user's tables and wrangler's migrations table.
    let file = data.join("d1/notes-db.sqlite");
    let connection = rusqlite::Connection::open(&file).unwrap();
    let mut tables: Vec<String> = connection
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    tables.sort();
    assert_eq!(tables, ["d1_migrations", "notes", "tags"]);
    drop(connection);
    let server = start(&data);
    assert_eq!(
        server.get("/bodies").await.json(),
        json!(["welcome; it's seeded", "first", "tagged"])
    );
    drop(server);
    // Export, then rebuild a fresh data directory from the SQL text.
    let dump = crate::harness::scratch_dir("d1-dump").join("dump.sql");
    d1(&data, &["export", "DB", "--output", dump.to_str().unwrap()]);
    let copy = crate::harness::scratch_dir("d1-copy");
    d1(&copy, &["execute", "DB", "--file", dump.to_str().unwrap()]);
    let server = start(&copy);
    assert_eq!(
        server.get("/bodies").await.json(),
        json!(["welcome; it's seeded", "first", "tagged"])
    );
    assert!(d1(&copy, &["migrations", "list", "DB"]).contains("No migrations to apply"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_loses_no_acknowledged_insert() {
    use std::time::Duration;
    let data = crate::harness::scratch_dir("d1-kill9");
    d1(&data, &["migrations", "apply", "DB"]);
    let mut server = start(&data);
    let acknowledged = crate::harness::write_until_kill9(
        &mut server,
        8,
        Duration::from_millis(1500),
        |base, w, n| crate::harness::get_request(format!("{base}/add?body=w{w}-{}", n - 1)),
    )
    .await;
    let acknowledged: Vec<String> = acknowledged
        .iter()
        .enumerate()
        .flat_map(|(w, ns)| ns.iter().map(move |n| format!("w{w}-{}", n - 1)))
        .collect();
    assert!(
        acknowledged.len() >= 8,
        "only {} inserts acknowledged",
        acknowledged.len()
    );
    let server = start(&data);
    let bodies = server.get("/bodies").await.json();
    let stored: Vec<&str> = bodies
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|body| !stored.contains(&body.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but lost after kill -9: {lost:?}"
    );
}
