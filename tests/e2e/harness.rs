//! Starts real `dorun` processes on 127.0.0.1 and talks HTTP to them.
//!
//! Every server is bounded in time twice: it is started with `--exit-after` (it stops by
//! itself), and it is killed when its [`Server`] handle drops.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ClientBody = BoxBody<Bytes, BoxError>;

/// Seconds after which a test server exits on its own (unless the test passes its own
/// `--exit-after`).
const SERVER_LIFETIME_SECS: &str = "120";

pub fn dorun_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dorun"))
}

/// The repository's `tests/fixtures/<name>` directory.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// The repository's `examples/<name>` directory.
pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

/// A fresh scratch directory for one test, under this run's own directory
/// (`<temp>/dorun-e2e-run-<pid>`), which goes when the test process ends.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let unique = format!(
        "{tag}-{}",
        Instant::now().elapsed().as_nanos() + rand_suffix()
    );
    let dir = run_scratch_root().join(unique);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// This run's scratch root. A full run writes gigabytes of data directories (large R2
/// objects, many-object stores); left behind, runs on one machine filled its disk, and every
/// test after that failed. So the first call removes what earlier runs left (roots of
/// processes that are gone, and the per-test directories older runs made directly in the
/// temp dir), and starts a watcher that removes this run's root once the test process has
/// exited, however it ends. `DORUN_KEEP_SCRATCH=1` keeps it for a look after a failure.
fn run_scratch_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        let temp = std::env::temp_dir();
        remove_scratch_of_ended_runs(&temp);
        let root = temp.join(format!("dorun-e2e-run-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        if std::env::var_os("DORUN_KEEP_SCRATCH").is_none() {
            // A detached shell outlives this process, so nothing here has to run at exit.
            let _ = Command::new("sh")
                .arg("-c")
                .arg("while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; rm -rf \"$2\"")
                .arg("dorun-e2e-scratch-cleanup")
                .arg(std::process::id().to_string())
                .arg(&root)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
        }
        root
    })
}

/// Removes `dorun-e2e-run-<pid>` roots and older `dorun-e2e-<tag>-<pid>-<n>` directories
/// whose process no longer runs.
fn remove_scratch_of_ended_runs(temp: &Path) {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return;
    };
    if !Path::new("/proc/self").exists() {
        return; // no way to tell a live run from an ended one
    }
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = if let Some(pid) = name.strip_prefix("dorun-e2e-run-") {
            pid
        } else if name.starts_with("dorun-e2e-") {
            // The pid is the second-to-last field (tags may hold dashes).
            let mut fields = name.rsplit('-');
            fields.next();
            fields.next().unwrap_or("")
        } else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn rand_suffix() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed) as u128
        + std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos() as u128
}

/// Runs a project's install step (`npm ci`) when its node_modules are missing (they stay out
/// of git). One install at a time: tests share example and fixture directories.
pub fn install_npm_dependencies(dir: &Path) {
    static INSTALL: Mutex<()> = Mutex::new(());
    // A failed install (asserted below) must not poison the lock for every later caller.
    let _guard = INSTALL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if dir.join("node_modules/.package-lock.json").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--prefix"])
        .arg(dir)
        .status()
        .expect("npm is needed to install the project's dependencies");
    assert!(status.success(), "npm ci --prefix {} failed", dir.display());
}

/// A running `dorun serve`.
pub struct Server {
    child: Child,
    pub base: String,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<Vec<String>>>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, ClientBody>,
}

/// What a request got back.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

impl Server {
    /// Starts `dorun serve <config> --port 0 <args>` and waits until it listens.
    pub fn start(config: &Path, args: &[&str]) -> Server {
        Self::try_start(config, args).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn try_start(config: &Path, args: &[&str]) -> Result<Server, String> {
        Self::try_start_limited(config, args, None, &[])
    }

    /// Starts dorun with extra environment variables.
    pub fn start_with_env(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::try_start_limited(config, args, None, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts dorun with its open-file limit (soft and hard) set to `open_files`.
    pub fn start_with_open_file_limit(config: &Path, args: &[&str], open_files: u64) -> Server {
        Self::try_start_limited(config, args, Some(open_files), &[])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_start_limited(
        config: &Path,
        args: &[&str],
        open_files: Option<u64>,
        env: &[(&str, &str)],
    ) -> Result<Server, String> {
        let mut command = match open_files {
            None => Command::new(dorun_binary()),
            Some(limit) => {
                // The shell sets the limit, then becomes dorun (same pid).
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(dorun_binary());
                shell
            }
        };
        command
            .arg("serve")
            .arg(config)
            .args(["--port", "0", "--ip", "127.0.0.1"])
            .args(if args.contains(&"--exit-after") {
                &[][..]
            } else {
                &["--exit-after", SERVER_LIFETIME_SECS][..]
            })
            .args(args)
            .args(if args.contains(&"--threads") {
                &[][..]
            } else {
                &["--threads", "2"][..]
            })
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| format!("spawn dorun: {e}"))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        {
            let mut pipe = child.stderr.take().unwrap();
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut buffer = [0u8; 8192];
                loop {
                    match pipe.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => stderr
                            .lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&buffer[..n])),
                    }
                }
            });
        }
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let lines_seen = stdout_lines.clone();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                lines_seen.lock().unwrap().push(line.clone());
                if let Some(address) = line.strip_prefix("dorun: listening on ") {
                    let _ = tx.send(address.to_string());
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!(
                    "dorun did not start (exit {status:?}); stderr:\n{}",
                    stderr.lock().unwrap()
                ));
            }
        };
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Server {
            child,
            base,
            stderr,
            stdout: stdout_lines,
            client,
        })
    }

    /// The rest of the first stdout line starting with `prefix` (waits up to 10 s).
    pub fn stdout_line(&self, prefix: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let lines = self.stdout.lock().unwrap();
            if let Some(line) = lines.iter().find_map(|l| l.strip_prefix(prefix)) {
                return Some(line.to_string());
            }
            drop(lines);
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the logs contain `needle`.
    pub async fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.logs().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// GET `path` with `headers`, which must answer 200 with JSON (the logs say why not).
    pub async fn get_json_ok(&self, path: &str, headers: &[(&str, &str)]) -> serde_json::Value {
        let reply = self
            .request(http::Method::GET, path, headers, Bytes::new())
            .await;
        assert_eq!(
            reply.status,
            200,
            "{path}: {}\n{}",
            reply.text(),
            self.logs()
        );
        reply.json()
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(http::Method::GET, path, &[], Bytes::new())
            .await
    }

    pub async fn post(&self, path: &str, body: impl Into<Bytes>) -> Reply {
        self.request(http::Method::POST, path, &[], body.into())
            .await
    }

    pub async fn request(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        let body = Full::new(body).map_err(|never| match never {}).boxed();
        self.send(method, path, headers, body).await
    }

    /// Sends a request with any body and returns the response with its body still streaming.
    pub async fn send_streaming(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: ClientBody,
    ) -> http::Response<hyper::body::Incoming> {
        let mut builder = http::Request::builder()
            .method(method)
            .uri(format!("{}{}", self.base, path));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(body).unwrap();
        tokio::time::timeout(Duration::from_secs(60), self.client.request(request))
            .await
            .expect("response within 60 s")
            .expect("request failed")
    }

    pub async fn send(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: ClientBody,
    ) -> Reply {
        let response = self.send_streaming(method, path, headers, body).await;
        let (parts, body) = response.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(60), body.collect())
            .await
            .expect("body within 60 s")
            .expect("body read failed")
            .to_bytes();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        }
    }

    /// Kills the server with SIGKILL (no chance to flush or clean up) and waits for it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_exit(Duration::from_secs(30))
            .expect("dorun exits after SIGTERM")
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Current resident memory of the server process, in bytes (Linux).
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// The server's `ws://` URL for `path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{path}", self.base.replacen("http://", "ws://", 1))
    }

    /// Peak resident memory of the server process, in bytes (Linux).
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kill -9 campaigns' load: `writers` loops send the requests `request(base, writer, n)`
/// builds (n = 1, 2, ...) one after another for `duration`, then the server is killed with
/// SIGKILL while requests are in flight. Returns, per writer, the `n` of every request that
/// was answered 200 before the kill (a loop stops at its first failure).
pub async fn write_until_kill9(
    server: &mut Server,
    writers: usize,
    duration: Duration,
    request: impl Fn(&str, usize, u64) -> http::Request<Full<Bytes>> + Send + Sync + 'static,
) -> Vec<Vec<u64>> {
    let request = Arc::new(request);
    let acknowledged: Arc<Mutex<Vec<Vec<u64>>>> = Arc::new(Mutex::new(vec![Vec::new(); writers]));
    let stop_at = Instant::now() + duration;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let base = server.base.clone();
        let request = request.clone();
        let acknowledged = acknowledged.clone();
        tasks.push(tokio::spawn(async move {
            let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            for n in 1u64.. {
                let sent = http.request(request(&base, writer, n));
                let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(5), sent).await
                else {
                    return;
                };
                if response.status() != 200 {
                    return;
                }
                acknowledged.lock().unwrap()[writer].push(n);
            }
        }));
    }
    tokio::time::sleep(stop_at.saturating_duration_since(Instant::now())).await;
    tokio::task::block_in_place(|| server.kill9());
    for task in tasks {
        let _ = task.await;
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.iter().all(|a| !a.is_empty()),
        "every writer was acknowledged before the kill: {:?}",
        acknowledged.iter().map(Vec::len).collect::<Vec<_>>()
    );
    acknowledged
}

/// A GET of `url` for [`write_until_kill9`].
pub fn get_request(url: String) -> http::Request<Full<Bytes>> {
    http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Runs `dorun <args>` to completion (bounded to 60 s) and returns (success, stdout, stderr).
pub fn run_dorun(args: &[&str], cwd: Option<&Path>) -> (bool, String, String) {
    run_dorun_with_env(args, cwd, &[])
}

/// [`run_dorun`] with extra environment variables.
pub fn run_dorun_with_env(
    args: &[&str],
    cwd: Option<&Path>,
    env: &[(&str, &str)],
) -> (bool, String, String) {
    let mut command = Command::new(dorun_binary());
    command
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    let mut child = command.spawn().expect("spawn dorun");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("dorun {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("collect output");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
