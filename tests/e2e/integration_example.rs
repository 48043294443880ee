//! `--ephemeral`, and examples/integration-tests: an app's own node:test suite that starts
//! `dorun serve --port 0 --ephemeral --admin-port 0`, resets between tests through the admin
//! listener and stops dorun at the end.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{dorun_binary, example, fixture, Server};

#[tokio::test]
async fn ephemeral_state_lives_in_a_temp_dir_removed_on_exit() {
    let mut server = Server::start(&fixture("admin").join("wrangler.toml"), &["--ephemeral"]);
    assert!(server.wait_for_log("ephemeral state in ").await);
    let logs = server.logs();
    let dir = logs
        .split("ephemeral state in ")
        .nth(1)
        .and_then(|rest| rest.split(" (removed on exit)").next())
        .expect("the log names the directory")
        .to_string();
    server.get_json_ok("/o/e1/put?key=x&value=1", &[]).await;
    let dir = std::path::PathBuf::from(dir);
    assert!(dir.join("admin-Store").is_dir(), "{}", dir.display());
    assert!(server.terminate().success());
    assert!(!dir.exists(), "{} was left behind", dir.display());
}

#[test]
fn ephemeral_and_data_dir_conflict() {
    let (ok, _, stderr) = crate::harness::run_dorun(
        &[
            "serve",
            "--ephemeral",
            "--data-dir",
            "/tmp/x",
            "--port",
            "0",
        ],
        None,
    );
    assert!(!ok);
    assert!(stderr.contains("--data-dir"), "{stderr}");
}

#[test]
fn the_integration_tests_example_suite_passes_against_dorun() {
    let dir = example("integration-tests");
    let mut child = Command::new("node")
        .args(["--test", "test/app.test.mjs"])
        .current_dir(&dir)
        .env("DORUN", dorun_binary())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is installed");
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the example's suite did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("# pass 4") && stdout.contains("# fail 0"),
        "{stdout}"
    );
}
