use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dorun-config-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("index.js"), "export default {}").unwrap();
    dir
}

#[test]
fn env_section_inherits_main_but_not_vars() {
    let dir = temp_dir("env");
    let path = write(
        &dir,
        "wrangler.toml",
        r#"
name = "app"
main = "index.js"
compatibility_date = "2025-01-01"
[vars]
A = "top"
B = "only-top"
[env.staging.vars]
A = "staging"
"#,
    );
    let options = LoadOptions {
        env: Some("staging".into()),
        ..Default::default()
    };
    let config = load(&path, &options).unwrap();
    assert_eq!(config.name, "app-staging");
    assert_eq!(config.main, Some(dir.join("index.js")));
    assert_eq!(config.vars.get("A"), Some(&Value::String("staging".into())));
    assert_eq!(config.vars.get("B"), None);
}

#[test]
fn unsupported_binding_is_an_error_naming_the_key_unless_allowed() {
    let dir = temp_dir("kv");
    let path = write(
        &dir,
        "wrangler.json",
        r#"{ "main": "index.js", "wasm_modules": {"M": "m.wasm"} }"#,
    );
    let error = load(&path, &LoadOptions::default()).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("wasm_modules"), "{text}");
    assert!(text.contains("wrangler.json"), "{text}");
    let options = LoadOptions {
        unsupported_bindings: UnsupportedBindings::Warn,
        ..Default::default()
    };
    let config = load(&path, &options).unwrap();
    assert!(config.warnings.iter().any(|w| w.contains("wasm_modules")));
    // Containers start with a warning: their classes run, the containers do not.
    let path = write(
        &dir,
        "wrangler.json",
        r#"{ "main": "index.js", "containers": [{"class_name": "X", "image": "./Dockerfile"}] }"#,
    );
    let config = load(&path, &LoadOptions::default()).unwrap();
    assert!(config
        .warnings
        .iter()
        .any(|w| w.contains("does not run containers")));
}

#[test]
fn queues_take_wranglers_defaults_and_cloudflares_limits() {
    let dir = temp_dir("queues-config");
    write(&dir, "index.js", "export default {}");
    let path = write(
        &dir,
        "wrangler.toml",
        "main = \"index.js\"\n\
         [[queues.producers]]\nbinding = \"JOBS\"\nqueue = \"jobs\"\ndelivery_delay = 5\n\
         [[queues.consumers]]\nqueue = \"jobs\"\n\
         [[queues.consumers]]\nqueue = \"other\"\nmax_batch_size = 100\nmax_batch_timeout = 0.5\n\
         max_retries = 0\ndead_letter_queue = \"dead\"\nmax_concurrency = 3\nretry_delay = 9\n",
    );
    let config = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(config.queue_producers.len(), 1);
    assert_eq!(config.queue_producers[0].delivery_delay, Some(5));
    let jobs = &config.queue_consumers[0];
    assert_eq!(
        (
            jobs.max_batch_size,
            jobs.max_batch_timeout,
            jobs.max_retries
        ),
        (5, std::time::Duration::from_secs(1), 2)
    );
    let other = &config.queue_consumers[1];
    assert_eq!(
        other.max_batch_timeout,
        std::time::Duration::from_millis(500)
    );
    assert_eq!(other.dead_letter_queue.as_deref(), Some("dead"));
    assert_eq!((other.max_concurrency, other.retry_delay), (Some(3), 9));

    let path = write(
        &dir,
        "wrangler.toml",
        "main = \"index.js\"\n\
         [[queues.consumers]]\nqueue = \"a\"\nmax_batch_size = 101\n\
         [[queues.consumers]]\nqueue = \"a\"\n\
         [[queues.consumers]]\nqueue = \"b\"\nmax_batch_timeout = 61\ndead_letter_queue = \"b\"\n",
    );
    let text = load(&path, &LoadOptions::default())
        .unwrap_err()
        .to_string();
    for part in [
        "queues.consumers[0].max_batch_size",
        "queue 'a' has a consumer already",
        "queues.consumers[2].max_batch_timeout",
        "queues.consumers[2].dead_letter_queue",
    ] {
        assert!(text.contains(part), "{part}: {text}");
    }
}

#[test]
fn kv_namespaces_are_keyed_by_id_else_by_binding_and_checked() {
    let dir = temp_dir("kv-config");
    let path = write(
        &dir,
        "wrangler.json",
        r#"{ "main": "index.js", "kv_namespaces": [
            {"binding": "A", "id": "abc", "preview_id": "p"},
            {"binding": "B", "colour": "red"}
        ] }"#,
    );
    let config = load(&path, &LoadOptions::default()).unwrap();
    let ids: Vec<(&str, &str)> = config
        .kv_namespaces
        .iter()
        .map(|kv| (kv.binding.as_str(), kv.id.as_str()))
        .collect();
    assert_eq!(ids, [("A", "abc"), ("B", "B")]);
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.contains("kv_namespaces[1].colour")),
        "{:?}",
        config.warnings
    );
    for (body, problem) in [
        (r#"[{"id": "x"}]"#, "needs a string key 'binding'"),
        (
            r#"[{"binding": "A"}, {"binding": "A"}]"#,
            "'A' is bound twice",
        ),
        (
            r#"[{"binding": "A", "id": 5}]"#,
            "id must be a non-empty string",
        ),
        (r#"{"binding": "A"}"#, "must be an array"),
    ] {
        let path = write(
            &dir,
            "wrangler.json",
            &format!(r#"{{ "main": "index.js", "kv_namespaces": {body} }}"#),
        );
        let error = load(&path, &LoadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains(problem), "{body}: {error}");
    }
}

#[test]
fn jsonc_allows_comments_and_trailing_commas() {
    let dir = temp_dir("jsonc");
    let path = write(
        &dir,
        "wrangler.jsonc",
        "{\n // a comment\n \"main\": \"index.js\", /* block */\n \"vars\": {\"N\": 3,},\n}\n",
    );
    let config = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(config.vars.get("N"), Some(&Value::from(3)));
}

#[test]
fn user_rule_replaces_default_rule_of_same_type() {
    let dir = temp_dir("rules");
    let path = write(
        &dir,
        "wrangler.toml",
        "main = \"index.js\"\n[[rules]]\ntype = \"Text\"\nglobs = [\"**/*.md\"]\n",
    );
    let config = load(&path, &LoadOptions::default()).unwrap();
    let text_globs: Vec<&String> = config
        .rules
        .iter()
        .filter(|r| r.kind == ModuleRuleKind::Text)
        .flat_map(|r| r.globs.iter())
        .collect();
    assert_eq!(text_globs, vec!["**/*.md"]);
    assert!(config.rules.iter().any(|r| r.kind == ModuleRuleKind::Data));
}

#[test]
fn all_problems_are_reported_together() {
    let dir = temp_dir("many");
    let path = write(
        &dir,
        "wrangler.toml",
        "main = \"missing.js\"\ncompatibility_date = \"soon\"\n[text_blobs]\nT = \"t.txt\"\n",
    );
    let error = load(&path, &LoadOptions::default()).unwrap_err();
    assert_eq!(error.problems.len(), 3, "{error}");
}

#[test]
fn empty_binding_lists_bind_nothing() {
    let dir = temp_dir("empty-lists");
    write(&dir, "index.js", "export default {}");
    let path = write(
        &dir,
        "wrangler.json",
        r#"{"main": "index.js", "compatibility_date": "2026-01-01", "kv_namespaces": [], "triggers": {},
            "queues": {"producers": [], "consumers": []}, "workflows": []}"#,
    );
    let config = load(&path, &LoadOptions::default()).unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // As @cloudflare/vite-plugin writes them, and in TOML.
    let path = write(
        &dir,
        "wrangler.toml",
        "main = \"index.js\"\ncompatibility_date = \"2026-01-01\"\n[triggers]\ncrons = []\n",
    );
    let config = load(&path, &LoadOptions::default()).unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    // Crons are read and checked.
    let path = write(
        &dir,
        "wrangler.toml",
        "main = \"index.js\"\n[triggers]\ncrons = [\"*/5 * * * *\"]\n[queues]\nproducers = []\n",
    );
    let config = load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(config.crons, ["*/5 * * * *"]);
    let path = write(
        &dir,
        "wrangler.toml",
        "main = \"index.js\"\n[triggers]\ncrons = [\"every day\"]\n",
    );
    let error = load(&path, &LoadOptions::default()).unwrap_err();
    assert_eq!(error.problems.len(), 1, "{error}");
    assert!(
        error.problems[0].contains("triggers.crons[0] 'every day' is not a cron pattern"),
        "{error}"
    );
}

#[test]
fn find_config_prefers_json_over_toml() {
    let dir = temp_dir("find");
    write(&dir, "wrangler.toml", "main = \"index.js\"");
    write(&dir, "wrangler.json", "{\"main\": \"index.js\"}");
    assert_eq!(find_config(&dir), Some(dir.join("wrangler.json")));
}
