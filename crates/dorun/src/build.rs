//! wrangler's `[build]` section: a shell command run before the Worker loads (`command`, in
//! `cwd`, relative to the config file); `watch_dir` (default `src`) is watched by `--watch`
//! along with the project.
//! Its output goes to stderr; a failing command stops dorun with a message naming it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// The `[build]` section is malformed, or its command failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{}: key '{key}{problem}", path.display())]
    Key {
        path: PathBuf,
        key: String,
        problem: String,
    },
    #[error("{}: cannot run the [build] command `{command}`: {source}", config.display())]
    Spawn {
        config: PathBuf,
        command: String,
        source: std::io::Error,
    },
    #[error("{}: the [build] command `{command}` failed with {how}; fix the build or remove [build]", config.display())]
    Failed {
        config: PathBuf,
        command: String,
        how: String,
    },
}

/// A `[build]` command to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildCommand {
    pub command: String,
    pub cwd: PathBuf,
    /// `watch_dir`, relative to the config file: what `--watch` watches besides the project.
    pub watch_dirs: Vec<PathBuf>,
}

/// The build command of a config file (the `[env.<name>.build]` section if there is one,
/// as wrangler inherits it), or `None`.
pub fn read(path: &Path, env: Option<&str>) -> Result<Option<BuildCommand>, BuildError> {
    let text = std::fs::read_to_string(path).map_err(|source| BuildError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let root = crate::config::parse_document(path, &text).map_err(|message| BuildError::Parse {
        path: path.to_path_buf(),
        message,
    })?;
    let env_build = env.and_then(|name| root.get("env")?.get(name)?.get("build"));
    let (key, section) = match (env_build, root.get("build")) {
        (Some(section), _) => (format!("env.{}.build", env.unwrap_or_default()), section),
        (None, Some(section)) => ("build".to_string(), section),
        (None, None) => return Ok(None),
    };
    let fail = |problem: String| BuildError::Key {
        path: path.to_path_buf(),
        key: key.clone(),
        problem,
    };
    let Some(section) = section.as_object() else {
        return Err(fail("' must be a table / object".into()));
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let mut command = None;
    let mut cwd = base.to_path_buf();
    let mut watch_dirs = vec![base.join("src")];
    for (name, value) in section {
        match (name.as_str(), value) {
            ("command", Value::String(text)) => {
                if !text.trim().is_empty() {
                    command = Some(text.clone());
                }
            }
            ("cwd", Value::String(dir)) => cwd = base.join(dir),
            ("watch_dir", Value::String(dir)) => watch_dirs = vec![base.join(dir)],
            ("watch_dir", Value::Array(dirs)) if dirs.iter().all(Value::is_string) => {
                watch_dirs = dirs
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|dir| base.join(dir))
                    .collect();
            }
            // wrangler 1's entry (`dir` + `main`), read by the config.
            ("upload", Value::Object(_)) => {}
            ("command" | "cwd", _) => return Err(fail(format!(".{name}' must be a string"))),
            ("watch_dir", _) => {
                return Err(fail(
                    ".watch_dir' must be a string or a list of strings".into(),
                ))
            }
            (other, _) => {
                tracing::warn!("{}: unknown key '{key}.{other}' is ignored", path.display())
            }
        }
    }
    let Some(command) = command else {
        return Ok(None);
    };
    if !cwd.is_dir() {
        return Err(fail(format!(
            ".cwd': {} does not exist or is not a directory",
            cwd.display()
        )));
    }
    Ok(Some(BuildCommand {
        command,
        cwd,
        watch_dirs,
    }))
}

/// `PATH` with every `node_modules/.bin` from `dir` up to the root first, as `npm run`
/// gives scripts (so `esbuild` or `tsc` installed in the project are found).
fn path_with_local_bins(dir: &Path) -> std::ffi::OsString {
    let mut paths: Vec<PathBuf> = dir
        .ancestors()
        .map(|dir| dir.join("node_modules").join(".bin"))
        .filter(|bin| bin.is_dir())
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(paths).unwrap_or_default()
}

/// Runs the command with `sh -c` (its stdout and stderr both on dorun's stderr) and waits.
pub fn run(build: &BuildCommand, config: &Path) -> Result<(), BuildError> {
    eprintln!(
        "dorun: running custom build: {} (in {})",
        build.command,
        build.cwd.display()
    );
    let status = Command::new("sh")
        .arg("-c")
        .arg(&build.command)
        .current_dir(&build.cwd)
        .env("PATH", path_with_local_bins(&build.cwd))
        .stdin(Stdio::null())
        .stdout(std::io::stderr())
        .stderr(std::io::stderr())
        .status()
        .map_err(|source| BuildError::Spawn {
            config: config.to_path_buf(),
            command: build.command.clone(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        let how = match status.code() {
            Some(code) => format!("exit status {code}"),
            None => "a signal".to_string(),
        };
        Err(BuildError::Failed {
            config: config.to_path_buf(),
            command: build.command.clone(),
            how,
        })
    }
}
