//! Limits that hold every time, not only the first: every kind of abuse the server resists,
//! run hundreds of times in a mixed order on one isolate thread and on several. After each
//! step a plain request must be answered within a bound, and the abuse itself must have
//! been stopped again (a reset is counted in the log each time). Resident memory and open
//! descriptors after many resets stay where they were after a few.
//!
//! `DORUN_ABUSE_RESETS` sets how many resets the single-thread run makes (default 500).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{fixture, Server};

fn hostile() -> std::path::PathBuf {
    fixture("hostile").join("wrangler.toml")
}

/// How long a plain request may take after an abuse: the limit, the reset, and a new
/// isolate loading the Worker, on a loaded two-core machine.
const ANSWER_BOUND: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Abuse {
    /// JS that never yields, in the Worker.
    Spin,
    /// SQL that never ends, in an object.
    SqlForever,
    /// A timer whose callback never yields, after the response was sent.
    TimerSpin,
    /// Live JS objects until the V8 heap limit.
    Heap,
    /// ArrayBuffers past the isolate's budget.
    ArrayBuffers,
    /// WebAssembly memories past the budget.
    Wasm,
    /// A SQL value past Cloudflare's size limit (an error, no reset).
    SqlTooBig,
    /// A connection whose header never ends (closed by the header timeout).
    SlowHeader,
    /// A SQL result past the 64 MiB limit (an error, or the CPU limit first).
    SqlResultTooLarge,
    /// A connection that never sends anything (closed by the header timeout).
    Silent,
}

const ALL: [Abuse; 10] = [
    Abuse::Spin,
    Abuse::SqlForever,
    Abuse::TimerSpin,
    Abuse::Heap,
    Abuse::ArrayBuffers,
    Abuse::Wasm,
    Abuse::SqlTooBig,
    Abuse::SlowHeader,
    Abuse::SqlResultTooLarge,
    Abuse::Silent,
];

/// What one abuse did: whether it reset an isolate.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Reset,
    Refused,
}

impl Abuse {
    /// Runs the abuse once against `server`; panics if it was not stopped as it should be.
    /// With `alone` false another client abuses the same server at the same time: a reset
    /// of the thread this request is on, caused by the other client, answers it too.
    async fn run(self, server: &Server, step: usize, alone: bool) -> Outcome {
        let path = match self {
            Abuse::Spin => "/spin?ms=1000000000".to_string(),
            Abuse::SqlForever => format!("/obj/o{}/sql-forever", step % 7),
            Abuse::TimerSpin => "/burn-timer".to_string(),
            Abuse::Heap => "/heap".to_string(),
            Abuse::ArrayBuffers => "/array-buffers?n=8&mb=32".to_string(),
            Abuse::Wasm => "/wasm-memory?n=4&pages=4096".to_string(),
            Abuse::SqlTooBig => format!(
                "/obj/o{}/sql?q=SELECT%20length(randomblob(50000000))",
                step % 7
            ),
            Abuse::SqlResultTooLarge => format!(
                "/obj/o{}/sql?q={}",
                step % 7,
                "WITH%20RECURSIVE%20c(x)%20AS%20(SELECT%201%20UNION%20ALL%20SELECT%20x%2B1%20FROM%20c%20LIMIT%2040)%20SELECT%20randomblob(1900000)%20FROM%20c"
            ),
            Abuse::SlowHeader => return never_ends(server, true).await,
            Abuse::Silent => return never_ends(server, false).await,
        };
        let reply = bounded(server, &path).await;
        let text = reply.text();
        let cpu = reply.status == 503 && text.contains("CPU time limit");
        let memory = reply.status == 503 && text.contains("memory limit");
        if !alone && (cpu || memory) {
            return Outcome::Reset;
        }
        if !alone
            && reply.status == 500
            && matches!(
                self,
                Abuse::SqlForever | Abuse::SqlTooBig | Abuse::SqlResultTooLarge
            )
        {
            // The object's thread was reset by the other client's abuse while the Worker
            // (on another thread) waited for it: its stub call threw, uncaught.
            return Outcome::Refused;
        }
        match self {
            Abuse::Spin | Abuse::SqlForever => {
                assert!(cpu, "step {step} {self:?}: {} {text}", reply.status);
                Outcome::Reset
            }
            Abuse::Heap => {
                // Filling the heap takes CPU too: whichever limit comes first stops it.
                assert!(
                    memory || cpu,
                    "step {step} {self:?}: {} {text}",
                    reply.status
                );
                Outcome::Reset
            }
            Abuse::TimerSpin => {
                assert_eq!(text, "started", "step {step} {self:?}");
                Outcome::Reset
            }
            Abuse::ArrayBuffers | Abuse::Wasm => {
                // The allocation fails (a RangeError the code catches), or V8 then treats
                // the isolate as out of memory and it is reset; on a loaded machine filling
                // the buffers may pass the CPU limit first.
                if memory || cpu {
                    Outcome::Reset
                } else {
                    assert!(
                        reply.status == 200 && text.starts_with("error: "),
                        "step {step} {self:?}: {} {text}",
                        reply.status
                    );
                    Outcome::Refused
                }
            }
            Abuse::SqlTooBig => {
                assert!(
                    text.contains("too big"),
                    "step {step} {self:?}: {text}\n{}",
                    tail(&server.logs())
                );
                Outcome::Refused
            }
            Abuse::SqlResultTooLarge => {
                // 76 MB of random blobs: refused as too large, unless filling them passed
                // the CPU limit first (then the thread was reset).
                if cpu {
                    Outcome::Reset
                } else {
                    assert!(
                        text.contains("too large"),
                        "step {step} {self:?}: {text}\n{}",
                        tail(&server.logs())
                    );
                    Outcome::Refused
                }
            }
            Abuse::SlowHeader | Abuse::Silent => unreachable!(),
        }
    }
}

/// A GET that must be answered within [`ANSWER_BOUND`]; a failure shows the server's log.
async fn bounded(server: &Server, path: &str) -> crate::harness::Reply {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let url = format!("{}{path}", server.base);
    let answer = tokio::time::timeout(ANSWER_BOUND, async {
        let response = client.get(url.parse().unwrap()).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((parts, body))
    })
    .await;
    match answer {
        Ok(Ok((parts, body))) => crate::harness::Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        },
        Ok(Err(error)) => panic!("{path}: {error}\n{}", tail(&server.logs())),
        Err(_) => panic!(
            "{path} not answered within {ANSWER_BOUND:?}\n{}",
            tail(&server.logs())
        ),
    }
}

/// A header that never ends, or nothing at all: the server must close the connection
/// (header timeout 1 s).
async fn never_ends(server: &Server, started: bool) -> Outcome {
    let address = server.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    if started {
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
    }
    let mut buffer = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a connection that never sends a request was not cut off"
    );
    Outcome::Refused
}

/// Resets the server logged so far.
fn resets_logged(server: &Server) -> usize {
    let logs = server.logs();
    logs.matches("ran past the CPU limit; isolate terminated and reset")
        .count()
        + logs
            .matches("JS heap outgrew its limit; isolate reset")
            .count()
}

/// Waits until the log shows `expected` resets; false if it does not within the bound.
async fn wait_for_resets(server: &Server, expected: usize) -> bool {
    let deadline = Instant::now() + ANSWER_BOUND;
    while Instant::now() < deadline {
        if resets_logged(server) >= expected {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

fn tail(logs: &str) -> String {
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The server's open file descriptors.
fn open_files(server: &Server) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

/// A small deterministic generator, so that a failing order can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % bound as u64) as usize
    }
}

fn start(threads: &str) -> Server {
    Server::start(
        &hostile(),
        &[
            "--threads",
            threads,
            "--cpu-limit-ms",
            "50",
            "--heap-limit-mb",
            "64",
            "--header-timeout",
            "1",
            "--no-request-log",
            "--ephemeral",
            // Hundreds of resets take minutes on a loaded two-core machine.
            "--exit-after",
            "900",
        ],
    )
}

/// Runs abuses in a mixed order until `resets` resets happened; after each, a plain request
/// is answered in time and the reset count went up exactly when the abuse resets.
/// Calls `at` with the number of resets so far after each step.
async fn campaign(server: &Server, seed: u64, resets: usize, mut at: impl FnMut(usize)) {
    let mut order = Lcg(seed);
    let mut expected = resets_logged(server);
    let mut step = 0;
    let mut seen = [0usize; ALL.len()];
    while expected < resets {
        let which = order.next(ALL.len());
        let abuse = ALL[which];
        seen[which] += 1;
        let outcome = abuse.run(server, step, true).await;
        if outcome == Outcome::Reset {
            expected += 1;
            assert!(
                wait_for_resets(server, expected).await,
                "step {step} {abuse:?}: reset {expected} was not made\n{}",
                tail(&server.logs())
            );
        }
        let hello = bounded(server, "/hello").await;
        assert_eq!(hello.text(), "hello", "step {step} after {abuse:?}");
        assert_eq!(
            resets_logged(server),
            expected,
            "step {step} {abuse:?}: an unexpected reset"
        );
        at(expected);
        step += 1;
    }
    for (abuse, count) in ALL.iter().zip(seen) {
        assert!(count > 0, "{abuse:?} never ran in {step} steps");
    }
}

#[tokio::test]
async fn every_limit_holds_after_hundreds_of_resets_on_one_thread() {
    let resets: usize = std::env::var("DORUN_ABUSE_RESETS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let server = start("1");
    let mut baseline = None;
    let mut last = (0, 0);
    campaign(&server, 7, resets, |done| {
        if done == 20 && baseline.is_none() {
            baseline = Some((server.rss_bytes().unwrap_or(0), open_files(&server)));
        }
        last = (server.rss_bytes().unwrap_or(0), open_files(&server));
    })
    .await;
    // No leak per reset: memory and descriptors after all of them are where they were
    // after 20 (within a few MB and a few files).
    let (rss_20, files_20) = baseline.expect("20 resets happened");
    let (rss_end, files_end) = last;
    assert!(
        rss_end < rss_20 + (24 << 20),
        "RSS {} MiB after {resets} resets, {} MiB after 20",
        rss_end >> 20,
        rss_20 >> 20
    );
    assert!(
        files_end <= files_20 + 4,
        "{files_end} open files after {resets} resets, {files_20} after 20"
    );
    // Objects still hold their data after all that.
    assert_eq!(bounded(&server, "/obj/kept/write?v=5").await.text(), "5");
    assert_eq!(bounded(&server, "/obj/kept/count").await.text(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_limit_holds_after_repeated_resets_on_several_threads() {
    let server = start("2");
    // Two clients abuse at once, each in its own order, while plain requests are checked.
    // Two abuses on the same thread may end in one reset, so resets are counted loosely.
    // A plain request in flight on a thread the other client's abuse resets fails with that
    // reset (as every event on a reset isolate does); it must still be answered in time.
    let expected_resets = std::sync::atomic::AtomicUsize::new(0);
    let hellos = std::sync::atomic::AtomicUsize::new(0);
    let run = |seed: u64| {
        let server = &server;
        let expected_resets = &expected_resets;
        let hellos = &hellos;
        async move {
            let mut order = Lcg(seed);
            for step in 0..60 {
                let abuse = ALL[order.next(ALL.len())];
                if abuse.run(server, step, false).await == Outcome::Reset {
                    expected_resets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let hello = bounded(server, "/hello").await;
                if hello.text() == "hello" {
                    hellos.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                } else {
                    assert_eq!(hello.status, 503, "step {step}: {}", hello.text());
                }
            }
        }
    };
    futures::join!(run(11), run(23));
    let hellos = hellos.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        hellos >= 60,
        "only {hellos} of 120 plain requests answered normally"
    );
    let answered = expected_resets.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        answered >= 40,
        "only {answered} abuses were stopped by a reset"
    );
    assert!(
        wait_for_resets(&server, answered / 2).await,
        "{} resets logged for {answered} abuses answered by one\n{}",
        resets_logged(&server),
        tail(&server.logs())
    );
    for _ in 0..8 {
        assert_eq!(bounded(&server, "/hello").await.text(), "hello");
    }
}
