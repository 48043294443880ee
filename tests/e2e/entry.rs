//! Entry and build conventions as wrangler has them: a script instead of a config
//! (`dorun serve src/index.ts`), a config without `main` plus `--script`, and `[build]`.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::harness::{fixture, run_dorun, scratch_dir, Server};

/// Copies a fixture directory into a scratch directory (builds write into it).
fn copy_fixture(name: &str) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).unwrap();
            }
        }
    }
    let dir = scratch_dir(name).join(name);
    copy(&fixture(name), &dir);
    dir
}

#[tokio::test]
async fn a_script_alone_runs_with_default_config() {
    let dir = scratch_dir("script-only");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let script = dir.join("src").join("index.ts");
    std::fs::write(
        &script,
        "export default { fetch(r: Request, env: Record<string, string>): Response { return Response.json({ ok: true, secret: env.SECRET ?? null }); } };",
    )
    .unwrap();
    std::fs::write(dir.join("src").join(".dev.vars"), "SECRET=from-dev-vars\n").unwrap();
    let server = Server::start(&script, &[]);
    assert_eq!(
        server.get("/").await.json(),
        json!({"ok": true, "secret": "from-dev-vars"})
    );
    let logs = server.logs();
    assert!(logs.contains("compatibility_date"), "{logs}");
    let (ok, stdout, stderr) = run_dorun(&["check", script.to_str().unwrap()], None);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ok: worker"), "{stdout}");
}

#[tokio::test]
async fn a_script_uses_the_config_found_above_it() {
    let script = fixture("entry-config").join("src").join("index.js");
    let server = Server::start(&script, &[]);
    assert_eq!(
        server.get("/").await.json(),
        json!({"script": "index", "from": "config"})
    );
}

#[tokio::test]
async fn a_config_without_main_takes_the_script_option() {
    let config = fixture("entry-config").join("wrangler.toml");
    let other = fixture("entry-config").join("src").join("other.ts");
    let server = Server::start(&config, &["--script", other.to_str().unwrap()]);
    assert_eq!(
        server.get("/").await.json(),
        json!({"script": "other", "from": "config"})
    );
    drop(server);
    let (ok, _, stderr) = run_dorun(&["check", config.to_str().unwrap()], None);
    assert!(!ok);
    assert!(stderr.contains("key 'main' is missing"), "{stderr}");
    assert!(stderr.contains("--script"), "{stderr}");
    let (ok, _, stderr) = run_dorun(
        &[
            "check",
            config.to_str().unwrap(),
            "--script",
            "/nonexistent/worker.js",
        ],
        None,
    );
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/worker.js"), "{stderr}");
}

#[tokio::test]
async fn build_command_runs_before_the_worker_loads() {
    let dir = copy_fixture("entry-build");
    assert!(!dir.join("dist").exists());
    let server = Server::start(&dir.join("wrangler.toml"), &[]);
    assert_eq!(server.get("/").await.text(), "built by the build command");
    let logs = server.logs();
    assert!(logs.contains("running custom build"), "{logs}");
    assert!(
        logs.contains("build-step-ran"),
        "the command's output is shown: {logs}"
    );
}

#[tokio::test]
async fn wrangler_1_build_upload_names_the_entry() {
    let dir = copy_fixture("entry-build");
    // The same project as wrangler 1 wrote it: no `main`, the entry under [build.upload].
    let config = std::fs::read_to_string(dir.join("wrangler.toml"))
        .unwrap()
        .replace("main = \"dist/worker.js\"\n", "")
        .replace(
            "[build]\n",
            "[build.upload]\nformat = \"modules\"\ndir = \"dist\"\nmain = \"./worker.js\"\n\n[build]\n",
        );
    assert!(!config.contains("main = \"dist/"), "{config}");
    std::fs::write(dir.join("wrangler.toml"), config).unwrap();
    let server = Server::start(&dir.join("wrangler.toml"), &[]);
    assert_eq!(server.get("/").await.text(), "built by the build command");
}

#[tokio::test]
async fn the_build_command_finds_tools_in_node_modules_bin() {
    let dir = scratch_dir("build-local-bin");
    let bin = dir.join("node_modules/.bin");
    std::fs::create_dir_all(&bin).unwrap();
    let tool = bin.join("make-worker");
    std::fs::write(
        &tool,
        "#!/bin/sh\necho \"export default { fetch: () => new Response('from a local tool') }\" > worker.js\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.join("wrangler.toml"),
        "name = \"local-bin\"\nmain = \"worker.js\"\n[build]\ncommand = \"make-worker\"\n",
    )
    .unwrap();
    let server = Server::start(&dir.join("wrangler.toml"), &[]);
    assert_eq!(server.get("/").await.text(), "from a local tool");
}

#[tokio::test]
async fn a_failing_build_command_stops_dorun_with_its_name() {
    let dir = scratch_dir("build-fails");
    std::fs::write(
        dir.join("index.js"),
        "export default { fetch: () => new Response('x') }",
    )
    .unwrap();
    let config = dir.join("wrangler.toml");
    std::fs::write(
        &config,
        "main = \"index.js\"\n[build]\ncommand = \"echo compiler-says-no >&2; exit 3\"\n",
    )
    .unwrap();
    let path = config.to_str().unwrap();
    for args in [vec!["check", path], vec!["serve", path, "--port", "0"]] {
        let (ok, _, stderr) = run_dorun(&args, None);
        assert!(!ok, "{args:?}");
        assert!(stderr.contains("compiler-says-no"), "{stderr}");
        assert!(
            stderr.contains(
                "[build] command `echo compiler-says-no >&2; exit 3` failed with exit status 3"
            ),
            "{stderr}"
        );
    }
    std::fs::write(
        &config,
        "main = \"index.js\"\n[build]\ncommand = \"true\"\ncwd = \"missing\"\n",
    )
    .unwrap();
    let (ok, _, stderr) = run_dorun(&["check", config.to_str().unwrap()], None);
    assert!(!ok);
    assert!(stderr.contains("key 'build.cwd'"), "{stderr}");
}
