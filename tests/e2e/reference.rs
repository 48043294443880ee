//! Reference runs: a fixture directory holds a Worker whose `GET /run` executes a fixed
//! script of binding calls, and `expected.json`, what `wrangler dev` 4.86.0 answered for it
//! (re-recorded by the fixture's `record.sh`). dorun must answer every step the same way,
//! except the steps it differs in on purpose, each listed with its reason.

use serde_json::Value;

use crate::harness::{fixture, Server};

/// Serves `fixtures/<name>` and compares its `/run` with `expected.json`.
pub async fn assert_matches_wrangler_dev(name: &str, deliberate: &[(&str, &str)]) {
    assert_matches_wrangler_dev_except(name, deliberate, &[]).await;
}

/// [`assert_matches_wrangler_dev`], leaving out the object fields named in `ignored`
/// wherever they are (counters dorun computes differently, said in the README).
pub async fn assert_matches_wrangler_dev_except(
    name: &str,
    deliberate: &[(&str, &str)],
    ignored: &[&str],
) {
    assert_workers_match_wrangler_dev(name, &["wrangler.toml"], deliberate, ignored).await;
}

/// [`assert_matches_wrangler_dev_except`] for a fixture of several workers served together
/// (`configs`, relative to the fixture; the first one serves `/run`).
pub async fn assert_workers_match_wrangler_dev(
    name: &str,
    configs: &[&str],
    deliberate: &[(&str, &str)],
    ignored: &[&str],
) {
    let dir = fixture(name);
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let others: Vec<String> = configs[1..]
        .iter()
        .map(|c| dir.join(c).to_string_lossy().into_owned())
        .collect();
    let mut args: Vec<&str> = others.iter().map(String::as_str).collect();
    args.push("--ephemeral");
    let server = Server::start(&dir.join(configs[0]), &args);
    let reply = server.get("/run").await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.text(), server.logs());
    let actual = reply.json();
    let (mut expected, mut actual) = (expected, actual);
    strip(&mut expected, ignored);
    strip(&mut actual, ignored);
    let (expected, actual) = (steps(&expected), steps(&actual));
    let mut differences = Vec::new();
    for (step, want) in &expected {
        if deliberate.iter().any(|(name, _)| name == step) {
            continue;
        }
        match actual.iter().find(|(name, _)| name == step) {
            None => differences.push(format!("{step}: missing")),
            Some((_, got)) if got != want => differences.push(format!(
                "{step}:\n  wrangler dev: {want}\n  dorun:        {got}"
            )),
            Some(_) => {}
        }
    }
    assert!(
        differences.is_empty(),
        "{} of {} steps differ from wrangler dev:\n{}",
        differences.len(),
        expected.len(),
        differences.join("\n")
    );
}

fn strip(value: &mut Value, ignored: &[&str]) {
    match value {
        Value::Object(map) => {
            map.retain(|key, _| !ignored.contains(&key.as_str()));
            map.values_mut().for_each(|v| strip(v, ignored));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| strip(v, ignored)),
        _ => {}
    }
}

fn steps(value: &Value) -> Vec<(String, Value)> {
    value
        .as_array()
        .expect("an array of steps")
        .iter()
        .map(|step| (step["step"].as_str().unwrap().to_string(), step.clone()))
        .collect()
}
