//! Cron triggers (`[triggers] crons`, tests/fixtures/crons): `scheduled()` fires at the
//! minute while the server runs, with the controller Cloudflare gives; `/__scheduled` and
//! `/cdn-cgi/handler/scheduled` run it on demand (waiting for its `waitUntil` work); a
//! failing run answers 500; `--no-crons` and `--no-dev-endpoints` turn each off; a pattern
//! that is not a cron stops startup naming it.

use std::time::{Duration, Instant};

use crate::harness::{fixture, run_dorun, scratch_dir, Server};

fn app() -> std::path::PathBuf {
    fixture("crons").join("wrangler.toml")
}

#[tokio::test]
async fn the_dev_endpoints_run_scheduled_with_its_controller_and_wait_for_wait_until() {
    let server = Server::start(&app(), &["--ephemeral", "--no-crons"]);
    let ran = server
        .get("/__scheduled?cron=0+17+*+*+sun&time=1765126800000")
        .await;
    assert_eq!(
        (ran.status, ran.text()),
        (200, "Ran scheduled event".to_string())
    );
    // waitUntil's work was done before the answer.
    let runs = server.get_json_ok("/runs", &[]).await;
    assert_eq!(runs.as_array().unwrap().len(), 1, "{runs}");
    let run = &runs[0];
    assert_eq!(run["cron"], "0 17 * * sun");
    assert_eq!(run["scheduledTime"], 1765126800000_i64);
    assert_eq!(run["type"], "scheduled");
    assert_eq!(run["noRetry"], "function");
    assert_eq!(run["waited"], true);

    let ran = server
        .get("/cdn-cgi/handler/scheduled?cron=*+*+*+*+*")
        .await;
    assert_eq!(ran.status, 200);
    let runs = server.get_json_ok("/runs", &[]).await;
    assert_eq!(runs[1]["cron"], "* * * * *");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let time = runs[1]["scheduledTime"].as_i64().unwrap();
    assert!(
        (now - time).abs() < 10_000,
        "without time=, scheduledTime is now: {time}"
    );

    let failed = server.get("/__scheduled?cron=fail").await;
    assert_eq!(failed.status, 500);
    assert!(
        failed.text().contains("scheduled() failed on purpose"),
        "{}",
        failed.text()
    );
    // An outside request cannot pass for a scheduled event.
    let forged = server
        .request(
            http::Method::GET,
            "/",
            &[("x-dorun-scheduled", "guess")],
            Default::default(),
        )
        .await;
    assert_eq!(forged.text(), "crons fixture");
}

#[tokio::test]
async fn without_dev_endpoints_the_paths_reach_the_worker() {
    let server = Server::start(&app(), &["--ephemeral", "--no-crons", "--no-dev-endpoints"]);
    assert_eq!(server.get("/__scheduled").await.text(), "crons fixture");
    assert_eq!(
        server.get_json_ok("/runs", &[]).await,
        serde_json::json!([])
    );
}

/// The every-minute trigger fires at the start of the next minute (waits up to ~70 s).
#[tokio::test]
async fn a_cron_fires_on_schedule_at_its_minute() {
    let server = Server::start(
        &app(),
        &["--ephemeral", "--exit-after", "150", "--admin-port", "0"],
    );
    let admin = crate::admin::AdminClient::of(&server, None);
    let before = admin.ok("GET", "/api/crons", None).await;
    assert_eq!(before[0]["cron"], "* * * * *", "{before}");
    assert_eq!(before[0]["last"], serde_json::Value::Null);
    let deadline = Instant::now() + Duration::from_secs(75);
    let runs = loop {
        let runs = server.get_json_ok("/runs", &[]).await;
        if !runs.as_array().unwrap().is_empty() || Instant::now() > deadline {
            break runs;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let run = &runs[0];
    assert_eq!(run["cron"], "* * * * *", "{runs}\n{}", server.logs());
    let scheduled = run["scheduledTime"].as_i64().unwrap();
    assert_eq!(
        scheduled % 60_000,
        0,
        "scheduledTime is the minute: {scheduled}"
    );
    let late = run["firedAt"].as_i64().unwrap() - scheduled;
    assert!(
        (0..1_000).contains(&late),
        "fired {late} ms after its minute"
    );
    // The run is logged once scheduled() and its waitUntil work are done.
    assert!(
        server.wait_for_log("scheduled() ran").await,
        "{}",
        server.logs()
    );
    // The admin listener (and `dorun inspect crons`) shows the run and the next one.
    let after = admin.ok("GET", "/api/crons", None).await;
    assert_eq!(after[0]["last"]["scheduled"], scheduled, "{after}");
    assert_eq!(after[0]["last"]["outcome"], "ok");
    let next = chrono::DateTime::parse_from_rfc3339(after[0]["next"].as_str().unwrap()).unwrap();
    assert!(next.timestamp_millis() > scheduled, "{after}");
    let (ok, out, err) = run_dorun(&["inspect", "--admin", &admin.base, "crons"], None);
    assert!(
        ok && out.contains("* * * * *") && out.contains("ok"),
        "{out}{err}"
    );
}

#[test]
fn a_pattern_that_is_not_a_cron_stops_startup_naming_it() {
    let dir = scratch_dir("crons-bad");
    std::fs::write(dir.join("worker.js"), "export default { scheduled() {} }").unwrap();
    std::fs::write(
        dir.join("wrangler.toml"),
        "name = \"bad\"\nmain = \"worker.js\"\n[triggers]\ncrons = [\"61 * * * *\"]\n",
    )
    .unwrap();
    let (ok, _, stderr) = run_dorun(
        &["check", dir.join("wrangler.toml").to_str().unwrap()],
        None,
    );
    assert!(!ok);
    assert!(
        stderr.contains("triggers.crons[0] '61 * * * *' is not a cron pattern"),
        "{stderr}"
    );
}
