//! Queues (tests/fixtures/queues): `send` / `sendBatch` reach the consumer's `queue()` in
//! batches with their bodies, ids, timestamps and attempts; `ack`, `retry`, a thrown
//! handler, retry delays and the dead-letter queue settle messages as Cloudflare does; a
//! resolved send survives kill -9, and a batch in flight at kill -9 is delivered again.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{fixture, scratch_dir, Server};

fn app() -> std::path::PathBuf {
    fixture("queues").join("wrangler.toml")
}

fn start(data: &std::path::Path) -> Server {
    Server::start(&app(), &["--data-dir", data.to_str().unwrap()])
}

/// What `queue()` recorded for `queue`, once `done` accepts it (up to `within`).
async fn received(
    server: &Server,
    queue: &str,
    within: Duration,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let list = server
            .get_json_ok(&format!("/received?queue={queue}"), &[])
            .await;
        let list = list.as_array().unwrap().clone();
        if done(&list) || Instant::now() > deadline {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn bodies(list: &[Value]) -> Vec<Value> {
    list.iter().map(|e| e["body"].clone()).collect()
}

#[tokio::test]
async fn messages_reach_queue_in_batches_with_their_bodies() {
    let data = scratch_dir("queues-basic");
    let server = start(&data);
    let sent_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Four messages: one full batch of 4.
    let batch = json!([
        {"body": "text:1", "contentType": "text"},
        {"body": {"kind": "json", "n": 2}, "contentType": "json"},
        {"body": [1, 2, 3]},
        {"body": {"kind": "v8", "nested": {"list": [true, null]}}, "contentType": "v8"},
    ]);
    let sent = server.post("/batch?queue=jobs", batch.to_string()).await;
    assert_eq!(sent.text(), "sent");
    let list = received(&server, "jobs", Duration::from_secs(10), |l| l.len() >= 4).await;
    assert_eq!(
        bodies(&list),
        vec![
            json!("text:1"),
            json!({"kind": "json", "n": 2}),
            json!([1, 2, 3]),
            json!({"kind": "v8", "nested": {"list": [true, null]}}),
        ]
    );
    for entry in &list {
        assert_eq!(entry["batch"], 4, "one batch of max_batch_size: {entry}");
        assert_eq!(entry["attempts"], 1);
        let id = entry["id"].as_str().unwrap();
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "{id}"
        );
        let timestamp = entry["timestamp"].as_i64().unwrap();
        assert!(
            (timestamp - sent_at).abs() < 5_000,
            "{timestamp} vs {sent_at}"
        );
    }

    // One message alone goes out when the batch timeout (300 ms) passes; structured
    // clone keeps Dates, Maps and BigInts; bytes arrive as an ArrayBuffer.
    let started = Instant::now();
    assert_eq!(
        server.get("/send?queue=jobs&structured=1").await.text(),
        "sent"
    );
    assert_eq!(
        server
            .get("/send?queue=jobs&type=bytes&body=hi")
            .await
            .text(),
        "sent"
    );
    let list = received(&server, "jobs", Duration::from_secs(10), |l| l.len() >= 6).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert_eq!(
        bodies(&list[4..]),
        vec![
            json!({"kind": "record", "when": {"date": "1970-01-01T00:00:00.000Z"}, "map": {"map": [["a", 1]]}, "big": {"bigint": "12"}}),
            json!({"arrayBuffer": [104, 105]}),
        ]
    );
    assert_eq!(list[5]["batch"], 2);

    // Cloudflare's limits and messages.
    let big = server.get("/send?queue=jobs&type=text&size=128001").await;
    assert_eq!(big.status, 400);
    assert_eq!(
        big.text(),
        "Error: Queue send failed: message length of 128001 bytes exceeds limit of 128000"
    );
    let fits = server.get("/send?queue=jobs&type=text&size=128000").await;
    assert_eq!(fits.text(), "sent");
    let bad = server.get("/send?queue=jobs&type=xml&body=a").await;
    assert_eq!(
        bad.text(),
        "TypeError: Unsupported queue message content type: xml"
    );
    let empty = server.post("/batch?queue=jobs", "[]").await;
    assert_eq!(
        empty.text(),
        "TypeError: sendBatch() requires at least one message"
    );
    let many: Vec<Value> = (0..101).map(|n| json!({"body": n})).collect();
    let many = server
        .post("/batch?queue=jobs", Value::from(many).to_string())
        .await;
    assert_eq!(
        many.text(),
        "Error: Queue sendBatch failed: batch message count of 101 exceeds limit of 100"
    );

    // The queue is a SQLite file a person can open.
    let file = data.join("queues").join("jobs.sqlite");
    let db = rusqlite::Connection::open(&file).unwrap();
    let sent: i64 = db
        .query_row("SELECT value FROM counters WHERE name = 'sent'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(sent, 7);
}

#[tokio::test]
async fn ack_retry_throw_delay_and_the_dead_letter_queue() {
    let server = Server::start(&app(), &["--ephemeral"]);
    // In one batch: "ack" is acked explicitly, then the handler throws (because of
    // "throw"): the acked message is done, the others come back with attempts 2, 3, then
    // move to the dead-letter queue (max_retries = 2).
    let batch = json!([
        {"body": "ack:a", "contentType": "text"},
        {"body": "throw:b", "contentType": "text"},
        {"body": "record:c", "contentType": "text"},
    ]);
    assert_eq!(
        server
            .post("/batch?queue=flaky", batch.to_string())
            .await
            .text(),
        "sent"
    );
    let dead = received(&server, "flaky-dead", Duration::from_secs(10), |l| {
        l.len() >= 2
    })
    .await;
    let flaky = server.get_json_ok("/received?queue=flaky", &[]).await;
    let attempts = |body: &str| -> Vec<i64> {
        flaky
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["body"] == body)
            .map(|e| e["attempts"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(attempts("ack:a"), [1], "{flaky}");
    assert_eq!(attempts("throw:b"), [1, 2, 3], "{flaky}");
    assert_eq!(attempts("record:c"), [1, 2, 3], "{flaky}");
    let mut dead_bodies = bodies(&dead);
    dead_bodies.sort_by_key(|b| b.to_string());
    assert_eq!(dead_bodies, vec![json!("record:c"), json!("throw:b")]);
    for entry in &dead {
        assert_eq!(
            entry["attempts"], 1,
            "a dead-lettered message starts over: {entry}"
        );
        let original = flaky
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["body"] == entry["body"])
            .unwrap();
        assert_eq!(entry["id"], original["id"], "it keeps its id");
        assert_eq!(
            entry["timestamp"], original["timestamp"],
            "and its timestamp"
        );
    }

    // retry() alone: attempts 1, 2, 3, then dead.
    assert_eq!(
        server
            .get("/send?queue=flaky&type=text&body=retry:d")
            .await
            .text(),
        "sent"
    );
    let dead = received(&server, "flaky-dead", Duration::from_secs(10), |l| {
        l.len() >= 3
    })
    .await;
    assert_eq!(dead[2]["body"], "retry:d");

    // retry({delaySeconds: 1}): delivered again no sooner than a second later.
    assert_eq!(
        server
            .get("/send?queue=flaky&type=text&body=later:e")
            .await
            .text(),
        "sent"
    );
    let list = received(&server, "flaky", Duration::from_secs(10), |l| {
        l.iter().filter(|e| e["body"] == "later:e").count() >= 2
    })
    .await;
    let times: Vec<i64> = list
        .iter()
        .filter(|e| e["body"] == "later:e")
        .map(|e| e["at"].as_i64().unwrap())
        .collect();
    assert_eq!(times.len(), 2, "{list:?}");
    assert!(times[1] - times[0] >= 950, "{times:?}");

    // ctx.waitUntil work is done before the batch is settled.
    assert_eq!(
        server
            .get("/send?queue=jobs&type=text&body=wait:f")
            .await
            .text(),
        "sent"
    );
    let waited = received(&server, "waitUntil", Duration::from_secs(10), |l| {
        !l.is_empty()
    })
    .await;
    assert_eq!(waited.len(), 1);

    // send({delaySeconds}) holds the message back.
    let started = Instant::now();
    assert_eq!(
        server
            .get("/send?queue=jobs&type=text&body=delayed:g&delay=1")
            .await
            .text(),
        "sent"
    );
    let list = received(&server, "jobs", Duration::from_secs(10), |l| {
        l.iter().any(|e| e["body"] == "delayed:g")
    })
    .await;
    assert!(list.iter().any(|e| e["body"] == "delayed:g"));
    assert!(started.elapsed() >= Duration::from_millis(950));
    let bad = server
        .get("/send?queue=jobs&type=text&body=x&delay=86401")
        .await;
    assert_eq!(bad.status, 400, "{}", bad.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resolved_send_survives_kill_9() {
    let data = scratch_dir("queues-kill9");
    let mut server = start(&data);
    // Each message waits 2 s before delivery, so the kill finds them all stored.
    let acknowledged = crate::harness::write_until_kill9(
        &mut server,
        8,
        Duration::from_millis(1500),
        |base, w, n| {
            crate::harness::get_request(format!(
                "{base}/send?queue=jobs&type=text&body=w{w}-{n}&delay=2"
            ))
        },
    )
    .await;
    let expected: Vec<String> = acknowledged
        .iter()
        .enumerate()
        .flat_map(|(w, ns)| ns.iter().map(move |n| format!("w{w}-{n}")))
        .collect();
    let server = start(&data);
    // Sends in flight at the kill may have been stored without an answer: they come too.
    let list = received(&server, "jobs", Duration::from_secs(30), |l| {
        let seen: std::collections::HashSet<&str> =
            l.iter().filter_map(|e| e["body"].as_str()).collect();
        expected.iter().all(|b| seen.contains(b.as_str()))
    })
    .await;
    let seen: std::collections::HashSet<&str> =
        list.iter().filter_map(|e| e["body"].as_str()).collect();
    let lost: Vec<&String> = expected
        .iter()
        .filter(|b| !seen.contains(b.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged sends were not delivered after kill -9: {:?}",
        lost.len(),
        expected.len(),
        &lost[..lost.len().min(10)]
    );
}

#[tokio::test]
async fn a_batch_in_flight_at_kill_9_is_delivered_again() {
    let data = scratch_dir("queues-inflight");
    let mut server = start(&data);
    assert_eq!(
        server
            .get("/send?queue=slow&type=text&body=hang:1")
            .await
            .text(),
        "sent"
    );
    // queue() runs (and hangs) ...
    let first = received(&server, "slow", Duration::from_secs(10), |l| !l.is_empty()).await;
    assert_eq!(first.len(), 1);
    server.kill9();
    // ... so after kill -9 the message is still there, and comes again.
    let server = start(&data);
    let again = received(&server, "slow", Duration::from_secs(10), |l| l.len() >= 2).await;
    assert_eq!(again.len(), 2, "{again:?}");
    assert_eq!(again[1]["id"], first[0]["id"]);
    assert_eq!(again[1]["body"], "hang:1");
}

#[tokio::test]
async fn the_admin_listener_and_inspect_show_peek_and_purge_queues() {
    let data = scratch_dir("queues-admin");
    let server = Server::start(
        &app(),
        &["--data-dir", data.to_str().unwrap(), "--admin-port", "0"],
    );
    let admin = crate::admin::AdminClient::of(&server, None);
    for n in 1..=3 {
        let sent = server
            .get(&format!(
                "/send?queue=jobs&type=text&body=held{n}&delay=600"
            ))
            .await;
        assert_eq!(sent.text(), "sent");
    }
    // One message through the flaky queue to its dead-letter queue.
    assert_eq!(
        server
            .get("/send?queue=flaky&type=text&body=retry:x")
            .await
            .text(),
        "sent"
    );
    received(&server, "flaky-dead", Duration::from_secs(10), |l| {
        !l.is_empty()
    })
    .await;

    let queues = admin.ok("GET", "/api/queues", None).await;
    let find = |name: &str| {
        queues
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {queues}"))
            .clone()
    };
    let jobs = find("jobs");
    assert_eq!(
        (jobs["depth"].as_i64(), jobs["ready"].as_i64()),
        (Some(3), Some(0)),
        "{jobs}"
    );
    assert_eq!(jobs["delayed"], 3);
    assert_eq!(jobs["consumer"]["worker"], "queues");
    assert_eq!(jobs["consumer"]["maxBatchSize"], 4);
    let flaky = find("flaky");
    assert_eq!(
        (flaky["retried"].as_i64(), flaky["deadLettered"].as_i64()),
        (Some(2), Some(1)),
        "{flaky}"
    );
    assert_eq!(flaky["consumer"]["last"]["deadLettered"], 1, "{flaky}");

    let peeked = admin
        .ok("GET", "/api/queues/jobs/messages?limit=2", None)
        .await;
    let peeked = peeked.as_array().unwrap();
    assert_eq!(peeked.len(), 2);
    assert_eq!(peeked[0]["body"], "held1");
    assert_eq!(peeked[0]["contentType"], "text");

    let mut all = vec!["inspect", "--admin", &admin.base, "queues"];
    let (ok, out, err) = crate::harness::run_dorun(&all, None);
    assert!(ok, "{err}");
    let row = out
        .lines()
        .find(|l| l.starts_with("jobs "))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>()[..3],
        ["jobs", "3", "0"],
        "{out}"
    );
    all.truncate(3);
    all.extend(["queue", "jobs"]);
    let (ok, out, err) = crate::harness::run_dorun(&all, None);
    assert!(ok && out.contains("held3"), "{out}{err}");
    all.truncate(3);
    all.extend(["queue-purge", "jobs"]);
    let (ok, out, err) = crate::harness::run_dorun(&all, None);
    assert!(ok && out.contains("purged 3 messages"), "{out}{err}");
    let jobs = admin.ok("GET", "/api/queues", None).await;
    assert!(jobs
        .as_array()
        .unwrap()
        .iter()
        .any(|q| q["name"] == "jobs" && q["depth"] == 0));

    // A reset purges queued messages too.
    server
        .get("/send?queue=jobs&type=text&body=again&delay=600")
        .await;
    let reset = admin.ok("POST", "/api/reset", None).await;
    assert_eq!(reset["queueMessages"], 1, "{reset}");

    let metrics = admin.raw("GET", "/metrics", None).await.1;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.contains("dorun_queue_depth{queue=\"jobs\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dorun_queue_messages_total{queue=\"flaky\",outcome=\"dead_lettered\"} 1"),
        "{metrics}"
    );
}

/// Steps where dorun differs on purpose, and why (the README says so too).
const DELIBERATE: &[(&str, &str)] = &[
    (
        "errors.send.v8-function",
        "same DataCloneError; V8 quotes the function's source, which dorun's transpiler re-emitted",
    ),
    (
        "noconsumer.send.text-128001",
        "a queue no worker consumes keeps its messages, so sends are checked as for any queue; \
         wrangler dev drops them unchecked",
    ),
    (
        "noconsumer.sendBatch.101-messages",
        "as noconsumer.send.text-128001",
    ),
    (
        "noconsumer.send.delay-86401",
        "as noconsumer.send.text-128001",
    ),
    (
        "consumer.ack-then-throw",
        "an ack()ed message is not retried when the handler throws, as Cloudflare documents; \
         wrangler dev retries the whole batch",
    ),
    ("consumer.acts.ack-then-throw", "as consumer.ack-then-throw"),
    (
        "consumer.acts.ackAll-then-throw",
        "ackAll() holds when the handler throws, as Cloudflare documents",
    ),
    (
        "send.result.idle-queue",
        "metrics() at once after send() counts the message until the consumer takes it, a few \
         ms later (dorun answers either way, depending on timing); wrangler dev's broker has \
         taken it already",
    ),
];

/// The same worker on dorun does every step of tests/fixtures/queues-reference as
/// wrangler dev 4.86.0 did, except the [`DELIBERATE`] differences.
#[tokio::test]
async fn the_api_answers_as_wrangler_dev_does() {
    crate::reference::assert_matches_wrangler_dev("queues-reference", DELIBERATE).await;
}
