//! Logs: console.* lines tagged with the worker and, inside a Durable Object, its class and
//! id; text, JSON and pretty formats; the request line can be turned off.

use crate::harness::{fixture, scratch_dir, Server};

fn start(extra: &[&str]) -> Server {
    let data = scratch_dir("logs");
    let mut args = vec!["--data-dir", data.to_str().unwrap()];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&fixture("admin").join("wrangler.toml"), &args)
}

async fn object_id(server: &Server) -> String {
    let reply = server.get("/o/logger/hits").await;
    reply.json()["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn console_lines_name_the_worker_and_inside_an_object_its_class_and_id() {
    let server = start(&[]);
    assert_eq!(server.get("/log").await.text(), "logged");
    let id = object_id(&server).await;
    assert!(server.wait_for_log("from the object").await);
    let logs = server.logs();
    let worker_line = logs
        .lines()
        .find(|l| l.contains("from the worker"))
        .unwrap();
    assert!(
        worker_line.contains("worker=\"admin\"") || worker_line.contains("worker=admin"),
        "{worker_line}"
    );
    assert!(!worker_line.contains("class="), "{worker_line}");
    // Terminal styles (Hono's logger writes them) are dropped, not printed escaped.
    let styled = logs.lines().find(|l| l.contains("styled")).unwrap();
    assert!(styled.contains("<-- GET /log styled"), "{styled}");
    assert!(
        !styled.contains("[32m") && !styled.contains("x1b"),
        "{styled}"
    );
    let object_line = logs
        .lines()
        .find(|l| l.contains("from the object"))
        .unwrap();
    assert!(
        object_line.contains("class=\"Store\"") || object_line.contains("class=Store"),
        "{object_line}"
    );
    assert!(object_line.contains(&id), "{object_line}");
    assert!(
        logs.contains("dorun::request"),
        "the request line is on by default"
    );
}

#[tokio::test]
async fn json_logs_carry_the_fields_and_the_request_line_can_be_turned_off() {
    let server = start(&["--log-format", "json", "--no-request-log"]);
    server.get("/log").await;
    let id = object_id(&server).await;
    assert!(server.wait_for_log("from the object").await);
    let logs = server.logs();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let object = lines
        .iter()
        .find(|l| l["fields"]["message"] == "from the object")
        .unwrap_or_else(|| panic!("{logs}"));
    assert_eq!(object["fields"]["class"], "Store");
    assert_eq!(object["fields"]["object"], id.as_str());
    assert_eq!(object["fields"]["worker"], "admin");
    assert_eq!(object["target"], "dorun::console");
    assert!(
        !lines.iter().any(|l| l["target"] == "dorun::request"),
        "{logs}"
    );
}

#[tokio::test]
async fn pretty_logs_put_fields_on_their_own_lines() {
    let server = start(&["--log-format", "pretty"]);
    server.get("/log").await;
    assert!(server.wait_for_log("from the object").await);
    let logs = server.logs();
    assert!(
        logs.contains("class: \"Store\"") || logs.contains("class: Store"),
        "{logs}"
    );
}
