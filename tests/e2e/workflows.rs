//! Workflows (tests/fixtures/workflows): an instance runs its steps (retries with backoff,
//! a sleep that resumes on time, an event it waits for) to its output; pause, resume,
//! terminate and restart; a NonRetryableError ends it as errored; a run survives kill -9 in
//! the middle of a sleep without running a finished step again.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{fixture, scratch_dir, Server};

fn app() -> std::path::PathBuf {
    fixture("workflows").join("wrangler.toml")
}

/// The instance's status once `done` accepts it (up to `within`).
async fn status_when(
    server: &Server,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let status = server.get(&format!("/status?id={id}")).await.json();
        if done(&status) || Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn log_of(server: &Server, id: &str) -> Vec<(String, i64)> {
    server
        .get(&format!("/log?id={id}"))
        .await
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["what"].as_str().unwrap().to_string(),
                e["at"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn whats(log: &[(String, i64)]) -> Vec<&str> {
    log.iter().map(|(w, _)| w.as_str()).collect()
}

/// Waits until the instance's step log has `what` (up to 5 s).
async fn logged(server: &Server, id: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !whats(&log_of(server, id).await).contains(&what) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_instance_runs_its_steps_sleeps_retries_and_completes() {
    let server = Server::start(&app(), &["--ephemeral"]);
    let created = server.get("/create?id=first-run&n=21").await.json();
    assert_eq!(created, json!({"id": "first-run"}));
    // Sleeping, it reports `running`, as wrangler dev does.
    logged(&server, "first-run", "first").await;
    let sleeping = server.get("/status?id=first-run").await.json();
    assert_eq!(sleeping["status"], "running", "{sleeping}");
    assert_eq!(sleeping["output"], Value::Null);
    let done = status_when(&server, "first-run", Duration::from_secs(10), |s| {
        s["status"] == "complete"
    })
    .await;
    assert_eq!(
        done["output"],
        json!({"doubled": 42, "attempt": 3, "approval": null, "at": true}),
        "{done}\n{}",
        server.logs()
    );
    // The outputs of the finished steps, as wrangler dev lists them.
    assert_eq!(done["__LOCAL_DEV_STEP_OUTPUTS"], json!([42, 3]), "{done}");
    let log = log_of(&server, "first-run").await;
    assert_eq!(
        whats(&log),
        ["first", "woke", "flaky 1", "flaky 2", "flaky 3"]
    );
    // step.sleep("1 second") resumed within 50 ms of its time.
    let slept = log[1].1 - log[0].1;
    assert!((1000..1050).contains(&slept), "slept {slept} ms");
    // Retries 20 ms apart (constant backoff).
    assert!(
        log[3].1 - log[2].1 >= 20 && log[4].1 - log[3].1 >= 20,
        "{log:?}"
    );

    // create() with an id that exists gives that instance, which does not run again; an
    // unknown id is not found; createBatch makes several.
    let again = server.get("/create?id=first-run").await;
    assert_eq!(again.json(), json!({"id": "first-run"}));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        whats(&log_of(&server, "first-run").await).len(),
        5,
        "it did not run again"
    );
    let missing = server.get("/status?id=nobody").await;
    assert_eq!(missing.json()["error"], "Error: instance.not_found");
    let bad = server.get("/create?id=no%20spaces").await;
    assert_eq!(
        bad.json()["error"],
        "Error: WorkflowError: Workflow instance has invalid id"
    );
    let batch = server.get("/batch?id=many").await.json();
    assert_eq!(batch, json!(["many-a", "many-b"]));
    let b = status_when(&server, "many-b", Duration::from_secs(10), |s| {
        s["status"] == "complete"
    })
    .await;
    assert_eq!(b["output"]["doubled"], 4);
}

#[tokio::test]
async fn wait_for_event_pause_resume_terminate_restart_and_errors() {
    let server = Server::start(&app(), &["--ephemeral"]);
    // waitForEvent: waits until the event is sent, then goes on with its payload.
    server.get("/create?id=approve-me&wait=1&sleep=10+ms").await;
    logged(&server, "approve-me", "flaky 3").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = server.get("/status?id=approve-me").await.json();
    assert_eq!(
        waiting["status"], "running",
        "it waits for the event: {waiting}"
    );
    assert_eq!(
        server.get("/event?id=approve-me&by=ops").await.json(),
        "sent"
    );
    let done = status_when(&server, "approve-me", Duration::from_secs(5), |s| {
        s["status"] == "complete"
    })
    .await;
    assert_eq!(
        done["output"]["approval"],
        json!({"by": "ops"}),
        "{}",
        server.logs()
    );

    // A NonRetryableError is not retried; not handled, it ends the instance as errored.
    server.get("/create?id=doomed&fail=1&sleep=10+ms").await;
    let errored = status_when(&server, "doomed", Duration::from_secs(5), |s| {
        s["status"] == "errored"
    })
    .await;
    assert_eq!(
        errored["error"],
        json!({"message": "The execution of the Workflow instance was terminated, as a step threw an NonRetryableError and it was not handled",
               "name": "WorkflowFatalError"})
    );
    assert_eq!(
        whats(&log_of(&server, "doomed").await)
            .iter()
            .filter(|w| **w == "fatal")
            .count(),
        1
    );

    // Paused in its sleep, it stays paused past the sleep's end; resumed, it completes.
    server.get("/create?id=pausable&sleep=1+second").await;
    logged(&server, "pausable", "first").await;
    assert_eq!(server.get("/pause?id=pausable").await.json(), "done");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        server.get("/status?id=pausable").await.json()["status"],
        "paused"
    );
    assert_eq!(whats(&log_of(&server, "pausable").await), ["first"]);
    server.get("/resume?id=pausable").await;
    let done = status_when(&server, "pausable", Duration::from_secs(5), |s| {
        s["status"] == "complete"
    })
    .await;
    assert_eq!(done["output"]["doubled"], 4);
    // "first" ran once: the resumed run replayed it.
    assert_eq!(
        whats(&log_of(&server, "pausable").await),
        ["first", "woke", "flaky 1", "flaky 2", "flaky 3"]
    );

    // Terminated in its sleep, it never goes on; a finished one cannot be terminated.
    server.get("/create?id=stopped&sleep=1+second").await;
    logged(&server, "stopped", "first").await;
    server.get("/terminate?id=stopped").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        server.get("/status?id=stopped").await.json()["status"],
        "terminated"
    );
    assert_eq!(whats(&log_of(&server, "stopped").await), ["first"]);
    let again = server.get("/terminate?id=stopped").await.json();
    assert!(
        again["error"]
            .as_str()
            .unwrap()
            .contains("instance.cannot_terminate"),
        "{again}"
    );

    // Restarted, it runs from the start: its steps run again.
    server.get("/restart?id=stopped").await;
    status_when(&server, "stopped", Duration::from_secs(5), |s| {
        s["status"] == "complete"
    })
    .await;
    assert_eq!(
        whats(&log_of(&server, "stopped").await),
        ["first", "first", "woke", "flaky 1", "flaky 2", "flaky 3"]
    );
}

#[tokio::test]
async fn a_run_survives_kill_9_in_the_middle_of_a_sleep() {
    let data = scratch_dir("workflows-kill9");
    let args = ["--data-dir", data.to_str().unwrap()];
    let mut server = Server::start(&app(), &args);
    server.get("/create?id=sturdy&n=5&sleep=2+seconds").await;
    logged(&server, "sturdy", "first").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.kill9();
    let server = Server::start(&app(), &args);
    let done = status_when(&server, "sturdy", Duration::from_secs(10), |s| {
        s["status"] == "complete"
    })
    .await;
    assert_eq!(done["output"]["doubled"], 10, "{}", server.logs());
    let log = log_of(&server, "sturdy").await;
    // The finished step was not run again, and the sleep kept its end across the restart.
    assert_eq!(
        whats(&log),
        ["first", "woke", "flaky 1", "flaky 2", "flaky 3"]
    );
    let slept = log[1].1 - log[0].1;
    assert!((2000..3000).contains(&slept), "slept {slept} ms");
    // The workflow's file is SQLite a person can open.
    let db = rusqlite::Connection::open(data.join("workflows").join("flow.sqlite")).unwrap();
    let steps: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM steps WHERE instance = 'sturdy'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(steps, 3, "first, nap, flaky");
}

#[tokio::test]
async fn the_admin_listener_and_inspect_show_instances_and_their_steps() {
    let server = Server::start(&app(), &["--ephemeral", "--admin-port", "0"]);
    let admin = crate::admin::AdminClient::of(&server, None);
    server.get("/create?id=seen&sleep=10+ms").await;
    server.get("/create?id=doomed&fail=1&sleep=10+ms").await;
    status_when(&server, "seen", Duration::from_secs(5), |s| {
        s["status"] == "complete"
    })
    .await;
    status_when(&server, "doomed", Duration::from_secs(5), |s| {
        s["status"] == "errored"
    })
    .await;
    let list = admin.ok("GET", "/api/workflows", None).await;
    assert_eq!(list[0]["name"], "flow", "{list}");
    assert_eq!(list[0]["worker"], "workflows");
    assert_eq!(list[0]["instances"], json!({"complete": 1, "errored": 1}));
    let one = admin
        .ok("GET", "/api/workflows/flow/instances/doomed", None)
        .await;
    assert_eq!(one["status"], "errored");
    assert_eq!(one["error"]["name"], "WorkflowFatalError");
    let keys: Vec<&str> = one["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["do:first#1", "sleep:nap#1", "do:flaky#1", "do:fatal#1"]
    );
    assert_eq!(one["steps"][2]["attempts"], 3);

    let base = admin.base.clone();
    let (ok, out, err) =
        crate::harness::run_dorun(&["inspect", "--admin", &base, "workflows", "flow"], None);
    assert!(
        ok && out.contains("seen") && out.contains("WorkflowFatalError: The execution"),
        "{out}{err}"
    );
    let (ok, out, err) = crate::harness::run_dorun(
        &["inspect", "--admin", &base, "workflows", "flow", "doomed"],
        None,
    );
    assert!(
        ok && out.contains("do:flaky#1") && out.contains("no way"),
        "{out}{err}"
    );
    let metrics = String::from_utf8_lossy(&admin.raw("GET", "/metrics", None).await.1).into_owned();
    assert!(
        metrics.contains("dorun_workflow_instances{workflow=\"flow\",status=\"errored\"} 1"),
        "{metrics}"
    );
    // A reset forgets the instances.
    admin.ok("POST", "/api/reset", None).await;
    let list = admin.ok("GET", "/api/workflows", None).await;
    assert_eq!(list[0]["instances"], json!({}));
}

/// Steps where dorun differs on purpose, and why (the README says so too).
const DELIBERATE: &[(&str, &str)] = &[
    (
        "shape.instance",
        "step is a plain object whose methods are step.do/sleep/sleepUntil/waitForEvent; \
         wrangler dev's is an RPC stub, a function on which any name is a function",
    ),
    (
        "sleep.invalid-string",
        "step.sleep(\"soon\") is a TypeError naming the bad duration; wrangler dev fails \
         with an internal SQLite NOT NULL error",
    ),
    (
        "lifecycle.pause-during-waitForEvent-caught-by-run",
        "pause() pauses; wrangler dev throws \"Aborting engine: User called pause\" into \
         run(), so a run() that catches it completes instead",
    ),
    (
        "errors.create-params-function",
        "params that structured clone cannot take are a DataCloneError at create(); wrangler \
         dev accepts them and the instance never starts",
    ),
];

/// The same worker on dorun does every step of tests/fixtures/workflows-reference as
/// wrangler dev 4.86.0 did, except the [`DELIBERATE`] differences.
#[tokio::test]
async fn the_api_answers_as_wrangler_dev_does() {
    crate::reference::assert_matches_wrangler_dev("workflows-reference", DELIBERATE).await;
}
