//! Config formats, environments, vars and secrets.

use serde_json::json;

use crate::harness::{fixture, run_dorun, scratch_dir, Server};

#[tokio::test]
async fn each_config_format_serves_its_vars() {
    for (dir, file) in [
        ("toml", "wrangler.toml"),
        ("json", "wrangler.json"),
        ("jsonc", "wrangler.jsonc"),
    ] {
        let server = Server::start(&fixture("formats").join(dir).join(file), &[]);
        let env = server.get("/").await.json()["env"].clone();
        assert_eq!(env["FORMAT"], json!(dir), "format {dir}");
        assert_eq!(env["NUMBER"], json!(42), "JSON values stay JSON ({dir})");
        assert_eq!(
            env["NESTED"],
            json!({"list": [1, 2, 3], "flag": true}),
            "{dir}"
        );
    }
}

#[tokio::test]
async fn config_is_found_in_the_directory_in_wranglers_order() {
    let dir = scratch_dir("discovery");
    std::fs::write(
        dir.join("index.js"),
        "export default { fetch: (r, env) => new Response(env.FROM) }",
    )
    .unwrap();
    std::fs::write(
        dir.join("wrangler.toml"),
        "main = \"index.js\"\n[vars]\nFROM = \"toml\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("wrangler.json"),
        r#"{"main": "index.js", "vars": {"FROM": "json"}}"#,
    )
    .unwrap();
    let server = Server::start(&dir, &[]);
    assert_eq!(server.get("/").await.text(), "json");
}

#[tokio::test]
async fn top_level_vars_and_secrets_without_env() {
    let server = Server::start(&fixture("envs").join("wrangler.toml"), &[]);
    let env = server.get("/").await.json()["env"].clone();
    assert_eq!(env["LEVEL"], json!("top"));
    assert_eq!(env["ONLY_TOP"], json!("yes"));
    assert_eq!(env["SECRET"], json!("top-secret"), ".dev.vars is read");
    assert_eq!(env["QUOTED"], json!("with spaces"));
}

#[tokio::test]
async fn env_section_does_not_inherit_vars_and_uses_its_own_dev_vars() {
    let server = Server::start(
        &fixture("envs").join("wrangler.toml"),
        &["--env", "staging"],
    );
    let env = server.get("/").await.json()["env"].clone();
    assert_eq!(env["LEVEL"], json!("staging"));
    assert_eq!(env.get("ONLY_TOP"), None, "vars are not inherited");
    assert_eq!(
        env["SECRET"],
        json!("staging-secret"),
        ".dev.vars.staging wins"
    );
    // `main` was inherited: the Worker is running at all.
    let logs = server.logs();
    assert!(
        logs.contains("envs-staging"),
        "worker name gets the env suffix: {logs}"
    );
}

#[tokio::test]
async fn env_section_with_its_own_name_and_no_vars() {
    let server = Server::start(&fixture("envs").join("wrangler.toml"), &["--env", "bare"]);
    let env = server.get("/").await.json()["env"].clone();
    assert_eq!(env.get("LEVEL"), None);
    assert_eq!(env["SECRET"], json!("top-secret"));
    assert!(server.logs().contains("bare-named"));
}

#[tokio::test]
async fn cli_var_overrides_vars_and_secrets() {
    let server = Server::start(
        &fixture("envs").join("wrangler.toml"),
        &[
            "--var",
            "LEVEL=cli",
            "--var",
            "SECRET=cli-secret",
            "--var",
            "EXTRA=a=b",
        ],
    );
    let env = server.get("/").await.json()["env"].clone();
    assert_eq!(env["LEVEL"], json!("cli"));
    assert_eq!(env["SECRET"], json!("cli-secret"));
    assert_eq!(env["EXTRA"], json!("a=b"));
}

#[test]
fn unknown_env_is_an_error_listing_the_known_ones() {
    let config = fixture("envs").join("wrangler.toml");
    let (ok, _, stderr) = run_dorun(&["check", config.to_str().unwrap(), "--env", "prod"], None);
    assert!(!ok);
    assert!(
        stderr.contains("env.prod") && stderr.contains("staging"),
        "{stderr}"
    );
}

#[test]
fn unsupported_bindings_stop_startup_naming_key_and_file() {
    let config = fixture("errors/bad-config").join("wrangler.toml");
    let (ok, _, stderr) = run_dorun(&["serve", config.to_str().unwrap(), "--port", "0"], None);
    assert!(!ok, "serve must refuse: {stderr}");
    assert!(stderr.contains("wasm_modules"), "{stderr}");
    assert!(
        stderr.contains("'text_blobs'"),
        "every problem is reported: {stderr}"
    );
    assert!(stderr.contains("bad-config/wrangler.toml"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[tokio::test]
async fn unsupported_bindings_can_be_downgraded_to_warnings() {
    let config = fixture("errors/bad-config").join("wrangler.toml");
    let server = Server::start(&config, &["--allow-unsupported-bindings"]);
    assert_eq!(server.get("/").await.text(), "configured");
    assert!(server.logs().contains("'text_blobs'"));
}

#[test]
fn unknown_keys_are_warnings_naming_the_key() {
    let dir = scratch_dir("unknown-key");
    std::fs::write(
        dir.join("index.js"),
        "export default { fetch: () => new Response('x') }",
    )
    .unwrap();
    std::fs::write(
        dir.join("wrangler.toml"),
        "main = \"index.js\"\nfancy_feature = true\n",
    )
    .unwrap();
    let (ok, _, stderr) = run_dorun(
        &["check", dir.join("wrangler.toml").to_str().unwrap()],
        None,
    );
    assert!(ok, "{stderr}");
    assert!(stderr.contains("fancy_feature"), "{stderr}");
}

#[test]
fn missing_config_is_a_clear_error() {
    let dir = scratch_dir("no-config");
    let (ok, _, stderr) = run_dorun(&["check"], Some(&dir));
    assert!(!ok);
    assert!(
        stderr.contains("no wrangler.json, wrangler.jsonc or wrangler.toml"),
        "{stderr}"
    );
}

#[test]
fn version_flag_prints_the_version() {
    let (ok, stdout, _) = run_dorun(&["--version"], None);
    assert!(ok);
    assert!(stdout.starts_with("dorun "), "{stdout}");
}
