//! Alarms end to end: firing after eviction and restarts, alarms due while the server was
//! down, retries with backoff, rescheduling, and the alarm in the implicit transaction.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{fixture, scratch_dir, Server};

fn start(data_dir: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--data-dir", data_dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&fixture("alarms").join("wrangler.toml"), &args)
}

/// Polls `/log/<name>` until `done` holds or `timeout` passes; returns the last log.
async fn wait_log(
    server: &Server,
    name: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let log = server.get(&format!("/log/{name}")).await.json();
        if done(&log) || Instant::now() >= deadline {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn runs(log: &Value) -> &Vec<Value> {
    log["runs"].as_array().unwrap()
}

fn number(value: &Value) -> i64 {
    value.as_f64().unwrap() as i64
}

#[tokio::test]
async fn an_alarm_fires_once_at_its_time_and_reads_null_while_running() {
    let data = scratch_dir("alarms-basic");
    let server = start(&data, &[]);
    let at = number(&server.post("/set/a?ms=300&date=1", "").await.json());
    assert_eq!(server.get("/log/a").await.json()["alarm"], json!(at));
    let log = wait_log(&server, "a", Duration::from_secs(5), |l| {
        !runs(l).is_empty()
    })
    .await;
    let run = &runs(&log)[0];
    assert_eq!(number(&run["scheduledTime"]), at);
    assert_eq!(run["retryCount"], json!(0));
    assert_eq!(run["isRetry"], json!(false));
    assert_eq!(run["alarmDuringRun"], Value::Null);
    let late = number(&run["at"]) - at;
    // On an idle server this is a few ms; the bound leaves room for a loaded CI machine.
    assert!((0..500).contains(&late), "fired {late} ms after its time");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = server.get("/log/a").await.json();
    assert_eq!(runs(&log).len(), 1, "fired once: {log}");
    assert_eq!(log["alarm"], Value::Null, "a run alarm is deleted");
}

#[tokio::test]
async fn an_alarm_wakes_an_evicted_object() {
    let data = scratch_dir("alarms-evicted");
    let server = start(&data, &["--object-idle-timeout", "0.2"]);
    server.post("/set/e?ms=1200", "").await;
    // No requests meanwhile: the object is evicted long before the alarm is due.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = wait_log(&server, "e", Duration::from_secs(6), |l| {
        !runs(l).is_empty()
    })
    .await;
    assert_eq!(runs(&log).len(), 1, "{log}\n{}", server.logs());
    assert!(
        number(&log["constructed"]) >= 2,
        "the alarm rebuilt the evicted object: {log}"
    );
}

#[tokio::test]
async fn alarms_survive_restarts_and_fire_when_due_during_downtime() {
    let data = scratch_dir("alarms-restart");
    let mut server = start(&data, &[]);
    let soon = number(&server.post("/set/down?ms=400", "").await.json());
    let later = number(&server.post("/set/up?ms=2500", "").await.json());
    assert!(server.terminate().success());
    // `down` falls due while no server runs.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let started = Instant::now();
    let server = start(&data, &[]);
    let log = wait_log(&server, "down", Duration::from_secs(5), |l| {
        !runs(l).is_empty()
    })
    .await;
    assert_eq!(runs(&log).len(), 1, "{log}\n{}", server.logs());
    assert_eq!(number(&runs(&log)[0]["scheduledTime"]), soon);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fired soon after startup"
    );
    let log = wait_log(&server, "up", Duration::from_secs(6), |l| {
        !runs(l).is_empty()
    })
    .await;
    assert_eq!(runs(&log).len(), 1, "{log}");
    let run = &runs(&log)[0];
    assert_eq!(number(&run["scheduledTime"]), later);
    assert!(number(&run["at"]) >= later, "not before its time: {run}");
    // The namespace index exists where workerd keeps it.
    assert!(data
        .join("alarms-Reminder")
        .join("metadata.sqlite")
        .exists());
}

#[tokio::test]
async fn alarms_survive_kill_9() {
    let data = scratch_dir("alarms-kill9");
    let mut server = start(&data, &[]);
    let at = number(&server.post("/set/k?ms=600", "").await.json());
    server.kill9();
    let server = start(&data, &[]);
    let log = wait_log(&server, "k", Duration::from_secs(5), |l| {
        !runs(l).is_empty()
    })
    .await;
    assert_eq!(runs(&log).len(), 1, "{log}\n{}", server.logs());
    assert_eq!(number(&runs(&log)[0]["scheduledTime"]), at);
}

#[tokio::test]
async fn a_throwing_alarm_is_retried_with_backoff() {
    let data = scratch_dir("alarms-retry");
    let server = start(
        &data,
        &["--alarm-retry-start-ms", "100", "--alarm-max-retries", "3"],
    );
    let at = number(&server.post("/set/r?ms=10&failures=2", "").await.json());
    let log = wait_log(&server, "r", Duration::from_secs(5), |l| runs(l).len() >= 3).await;
    let runs_seen = runs(&log);
    assert_eq!(runs_seen.len(), 3, "{log}\n{}", server.logs());
    for (index, run) in runs_seen.iter().enumerate() {
        assert_eq!(run["retryCount"], json!(index), "{log}");
        assert_eq!(run["isRetry"], json!(index > 0));
        assert_eq!(
            number(&run["scheduledTime"]),
            at,
            "retries keep scheduledTime"
        );
    }
    let first_gap = number(&runs_seen[1]["at"]) - number(&runs_seen[0]["at"]);
    let second_gap = number(&runs_seen[2]["at"]) - number(&runs_seen[1]["at"]);
    assert!(
        (100..400).contains(&first_gap),
        "first retry after {first_gap} ms"
    );
    assert!(
        (200..600).contains(&second_gap),
        "second retry after {second_gap} ms"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = server.get("/log/r").await.json();
    assert_eq!(runs(&log).len(), 3, "the third run succeeded: {log}");
    assert_eq!(log["alarm"], Value::Null);
}

#[tokio::test]
async fn a_failing_alarm_is_given_up_after_the_retry_limit() {
    let data = scratch_dir("alarms-give-up");
    let server = start(
        &data,
        &["--alarm-retry-start-ms", "20", "--alarm-max-retries", "2"],
    );
    server.post("/set/g?ms=0&failures=100", "").await;
    let log = wait_log(&server, "g", Duration::from_secs(5), |l| runs(l).len() >= 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log_after = server.get("/log/g").await.json();
    assert_eq!(runs(&log_after).len(), 3, "1 attempt + 2 retries: {log}");
    assert_eq!(log_after["alarm"], Value::Null, "given up: alarm deleted");
}

#[tokio::test]
async fn set_alarm_in_alarm_reschedules() {
    let data = scratch_dir("alarms-resched");
    let server = start(&data, &[]);
    server.post("/set/s?ms=50&reschedule=2", "").await;
    let log = wait_log(&server, "s", Duration::from_secs(5), |l| runs(l).len() >= 3).await;
    assert_eq!(runs(&log).len(), 3, "{log}");
    for run in runs(&log) {
        assert_eq!(run["retryCount"], json!(0));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = server.get("/log/s").await.json();
    assert_eq!(runs(&log).len(), 3);
    assert_eq!(log["alarm"], Value::Null);
}

#[tokio::test]
async fn the_alarm_is_part_of_the_implicit_transaction_and_api_errors_match_cloudflare() {
    let data = scratch_dir("alarms-txn");
    let server = start(&data, &[]);
    // Rolled back with the transaction.
    assert_eq!(
        server.post("/transaction/t?ms=60000", "").await.json(),
        Value::Null
    );
    // Committed with the writes of the turn even though the method then threw.
    assert_eq!(
        server.post("/set-then-throw/t?ms=60000", "").await.json(),
        json!("thrown after setAlarm")
    );
    assert!(server.get("/log/t").await.json()["alarm"].is_number());
    assert_eq!(server.post("/clear/t", "").await.json(), Value::Null);
    // compatibility_date 2025-10-01: deleteAll() keeps the alarm.
    assert!(server
        .post("/delete-all/t?ms=60000", "")
        .await
        .json()
        .is_number());
    let errors = server.get("/errors/t").await.json();
    assert_eq!(
        errors["zero"],
        json!("TypeError: setAlarm() cannot be called with an alarm time <= 0")
    );
    assert_eq!(
        errors["negative"],
        json!("TypeError: setAlarm() cannot be called with an alarm time <= 0")
    );
    assert!(
        errors["string"].as_str().unwrap().starts_with("TypeError"),
        "{errors}"
    );
    assert_eq!(
        server.get("/no-handler/n").await.json(),
        json!("TypeError: Your Durable Object class must have an alarm() handler in order to call setAlarm()")
    );
}
