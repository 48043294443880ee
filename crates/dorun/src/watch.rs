//! `dorun serve --watch`: reloads the Worker when its files or config change, keeping its
//! storage. This process runs `dorun serve` (the same arguments, without `--watch`) as a
//! child, polls the project's files, and on a change stops the child with SIGTERM (it drains
//! and commits like any shutdown) and starts a new one on the same ports and data directory.
//! In-memory state (live objects, open WebSockets) does not survive a reload; storage and
//! alarms do. A child that fails to start (a syntax error) is reported, and the next change
//! is waited for.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, SystemTime};

use anyhow::anyhow;

use crate::ephemeral::EphemeralDir;

/// What `--watch` needs of `dorun serve`'s arguments.
pub struct WatchTarget {
    /// The configs (or directories) given on the command line.
    pub configs: Vec<PathBuf>,
    /// `--env`: whose `[build]` section names the directories to watch.
    pub env: Option<String>,
    pub script: Option<PathBuf>,
    pub ephemeral: bool,
    /// Whether an admin listener is served (its address is relayed too).
    pub admin: bool,
}

/// How often the files are looked at.
const POLL: Duration = Duration::from_millis(300);

/// Directories whose files are never watched.
const SKIPPED: &[&str] = &["node_modules", "target"];

pub fn run(args: &WatchTarget) -> anyhow::Result<()> {
    let roots = watch_roots(args)?;
    let ephemeral = if args.ephemeral {
        Some(EphemeralDir::create()?)
    } else {
        None
    };
    let data_dir = ephemeral.as_ref().map(|e| e.path().to_path_buf());
    let stop = Arc::new(AtomicBool::new(false));
    spawn_signal_watcher(stop.clone())?;
    let mut ports: Option<(String, Option<String>)> = None;
    let mut generation = 0;
    loop {
        generation += 1;
        let argv = child_args(ports.as_ref(), data_dir.as_deref());
        let mut child = Command::new(std::env::current_exe()?)
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .env(
                crate::parent::PARENT_PID_VAR,
                std::process::id().to_string(),
            )
            .spawn()
            .map_err(|e| anyhow!("cannot start dorun serve: {e}"))?;
        let (bound, seen) = relay_stdout(&mut child, ports.is_none(), args.admin, &roots);
        if let Some(bound) = bound {
            if ports.is_none() {
                ports = Some(bound);
            }
            if generation > 1 {
                println!("dorun: reloaded (generation {generation})");
                tracing::info!("reloaded (generation {generation})");
            }
        } else {
            tracing::error!("the Worker did not start; waiting for a change to reload");
        }
        // The fingerprint after the child built (its [build] may write files) and before
        // anyone saw it listen, so an edit made right after the first answer is a change.
        let mut fingerprint = seen.unwrap_or_else(|| files_fingerprint(&roots));
        let changed = wait_for_change(&roots, &mut fingerprint, &stop, &mut child);
        if changed {
            tracing::info!("files changed; reloading");
        }
        terminate(&mut child);
        if !changed {
            return Ok(());
        }
    }
}

/// Where the project's files are: each config's directory (or the script's), and the
/// `[build]` `watch_dir`s outside it.
fn watch_roots(args: &WatchTarget) -> anyhow::Result<Vec<PathBuf>> {
    let mut roots = Vec::new();
    let mut config_files = Vec::new();
    for path in &args.configs {
        let path = std::fs::canonicalize(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        if path.is_dir() {
            config_files.extend(crate::config::find_config(&path));
            roots.push(path);
        } else {
            roots.push(path.parent().unwrap_or(Path::new("/")).to_path_buf());
            config_files.push(path);
        }
    }
    if roots.is_empty() {
        let cwd = std::env::current_dir()?;
        let found = crate::config::find_config(&cwd)
            .ok_or_else(|| anyhow!("no wrangler config in {} or its parents", cwd.display()))?;
        roots.push(found.parent().unwrap_or(&cwd).to_path_buf());
        config_files.push(found);
    }
    for config in &config_files {
        // A config whose [build] cannot be read is reported by the child.
        let Ok(Some(build)) = crate::build::read(config, args.env.as_deref()) else {
            continue;
        };
        for dir in build.watch_dirs {
            let Ok(dir) = std::fs::canonicalize(&dir) else {
                continue;
            };
            if dir.is_dir() && !roots.iter().any(|root| dir.starts_with(root)) {
                roots.push(dir);
            }
        }
    }
    if let Some(script) = &args.script {
        if let Some(parent) = std::fs::canonicalize(script)
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
        {
            roots.push(parent);
        }
    }
    Ok(roots)
}

/// This process's arguments for the child: without `--watch` and `--ephemeral`, with the
/// ports of the first generation and the ephemeral data directory.
fn child_args(ports: Option<&(String, Option<String>)>, data_dir: Option<&Path>) -> Vec<String> {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let name = arg.split('=').next().unwrap_or("");
        let replaced = matches!(name, "--port" | "-p" | "--admin-port");
        if arg == "--watch" || arg == "--ephemeral" || (replaced && ports.is_some()) {
            if replaced && !arg.contains('=') {
                args.next();
            }
            continue;
        }
        out.push(arg);
    }
    if let Some((port, admin)) = ports {
        out.extend(["--port".to_string(), port.clone()]);
        if let Some(admin) = admin {
            out.extend(["--admin-port".to_string(), admin.clone()]);
        }
    }
    if let Some(dir) = data_dir {
        out.extend(["--data-dir".to_string(), dir.display().to_string()]);
    }
    out
}

/// What the child printed once it listens: its ports, and the files' fingerprint taken
/// before that line was passed on.
type Listening = (
    Option<(String, Option<String>)>,
    Option<(SystemTime, usize)>,
);

/// Passes the child's stdout on (the first generation's address lines; later ones are
/// not repeated) and returns the bound ports once it listens (and its admin listener, when
/// `admin` is expected), or `None` if it exited first; with them, the fingerprint of the
/// files under `roots` taken when the first address line came, before it was passed on.
fn relay_stdout(child: &mut Child, first: bool, admin: bool, roots: &[PathBuf]) -> Listening {
    let Some(stdout) = child.stdout.take() else {
        return (None, None);
    };
    let (tx, rx) = mpsc::channel();
    let (fingerprint_tx, fingerprint_rx) = mpsc::channel();
    let roots = roots.to_vec();
    std::thread::spawn(move || {
        let mut fingerprinted = false;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let port = |url: &str| url.rsplit(':').next().unwrap_or_default().to_string();
            let address = if let Some(url) = line.strip_prefix("dorun: listening on ") {
                Some((false, port(url)))
            } else {
                line.strip_prefix("dorun: admin on ")
                    .map(|url| (true, port(url)))
            };
            if address.is_some() && !fingerprinted {
                fingerprinted = true;
                let _ = fingerprint_tx.send(files_fingerprint(&roots));
            }
            if first || address.is_none() {
                println!("{line}");
            }
            if let Some(address) = address {
                let _ = tx.send(address);
            }
        }
    });
    let (mut port, mut admin_port) = (None, None);
    while port.is_none() || (admin && admin_port.is_none()) {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok((false, p)) => port = Some(p),
            Ok((true, p)) => admin_port = Some(p),
            Err(_) => return (None, None),
        }
    }
    (
        port.map(|port| (port, admin_port)),
        fingerprint_rx.try_recv().ok(),
    )
}

/// The latest modification time and the number of the project's files.
fn files_fingerprint(roots: &[PathBuf]) -> (SystemTime, usize) {
    let mut latest = SystemTime::UNIX_EPOCH;
    let mut count = 0;
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && !name.starts_with(".dev.vars") && name != ".env" {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                if !SKIPPED.contains(&name.as_ref()) {
                    stack.push(entry.path());
                }
                continue;
            }
            count += 1;
            if let Ok(modified) = meta.modified() {
                latest = latest.max(modified);
            }
        }
    }
    (latest, count)
}

/// Waits until the files change (true) or a signal asks to stop (false).
fn wait_for_change(
    roots: &[PathBuf],
    fingerprint: &mut (SystemTime, usize),
    stop: &AtomicBool,
    child: &mut Child,
) -> bool {
    let mut exited = false;
    loop {
        std::thread::sleep(POLL);
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        if !exited && matches!(child.try_wait(), Ok(Some(_))) {
            exited = true;
            tracing::warn!("dorun serve exited; waiting for a change to reload");
        }
        let now = files_fingerprint(roots);
        if now != *fingerprint {
            // Let an editor finish writing.
            std::thread::sleep(Duration::from_millis(100));
            *fingerprint = files_fingerprint(roots);
            return true;
        }
    }
}

/// SIGTERM to the child (it drains and commits), then waits for it.
fn terminate(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while std::time::Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Sets `stop` on SIGINT / SIGTERM.
fn spawn_signal_watcher(stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("dorun-watch-signals".into())
        .spawn(move || {
            runtime.block_on(async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
                    () = crate::parent::parent_gone() => {}
                }
            });
            stop.store(true, Ordering::SeqCst);
        })?;
    Ok(())
}
