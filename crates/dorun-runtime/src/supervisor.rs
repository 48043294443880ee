//! CPU limit enforcement from outside the isolate threads.
//!
//! Each isolate thread marks when it starts running JS (a poll of its event loop) and
//! clears the mark when the poll returns. A supervisor thread checks the marks every
//! few milliseconds; JS that has used more CPU time than the limit without returning to
//! the event loop is terminated through V8's thread-safe isolate handle (and SQL it runs is
//! interrupted through [`IsolateWatch::cpu_limit_flag`]). The isolate thread then sees the
//! termination and resets its isolate.
//!
//! The limit counts the thread's CPU time (Linux: `/proc/thread-self/stat`), not wall time,
//! so a loaded machine does not stop code that is merely waiting for a core. Where the
//! thread's CPU time cannot be read, wall time is used.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// Why an isolate was stopped from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Termination {
    CpuLimit,
    HeapLimit,
}

/// Shared between one isolate thread and the supervisor.
pub struct IsolateWatch {
    /// Milliseconds since `epoch` when the current JS run started; 0 when idle.
    busy_since_ms: AtomicU64,
    epoch: Instant,
    limit: Duration,
    handle: Mutex<Option<deno_core::v8::IsolateHandle>>,
    /// Shared with the isolate's SQLite connections, whose progress handler stops a
    /// statement once it is set.
    cpu_exceeded: Arc<AtomicBool>,
    heap_exceeded: AtomicBool,
    /// `/proc/self/task/<tid>/stat` of the isolate thread, once attached.
    cpu_clock: Mutex<Option<std::path::PathBuf>>,
    /// The busy period the supervisor last looked at: (its `busy_since_ms`, the thread's
    /// CPU milliseconds when first seen).
    seen: Mutex<(u64, u64)>,
}

impl IsolateWatch {
    pub fn new(limit: Duration) -> Arc<Self> {
        Arc::new(Self {
            busy_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            limit,
            handle: Mutex::new(None),
            cpu_exceeded: Arc::new(AtomicBool::new(false)),
            heap_exceeded: AtomicBool::new(false),
            cpu_clock: Mutex::new(None),
            seen: Mutex::new((0, 0)),
        })
    }

    /// Points the watch at a (new) isolate.
    /// Called on the isolate thread.
    pub fn attach(&self, handle: deno_core::v8::IsolateHandle) {
        *self.handle.lock().unwrap() = Some(handle);
        let clock = std::fs::read_link("/proc/thread-self")
            .ok()
            .map(|task| std::path::Path::new("/proc").join(task).join("stat"));
        if clock.is_none() {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    "the CPU limit counts wall time on this system, not CPU time: a thread's CPU \
                     time is read from /proc, which only Linux has"
                );
            });
        }
        *self.cpu_clock.lock().unwrap() = clock;
        self.cpu_exceeded.store(false, Ordering::SeqCst);
        self.heap_exceeded.store(false, Ordering::SeqCst);
    }

    /// Set while the isolate is being stopped for the CPU limit: native work (SQL) checks it.
    pub fn cpu_limit_flag(&self) -> Arc<AtomicBool> {
        self.cpu_exceeded.clone()
    }

    pub fn enter(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.busy_since_ms.store(now.max(1), Ordering::SeqCst);
    }

    pub fn leave(&self) {
        self.busy_since_ms.store(0, Ordering::SeqCst);
    }

    /// Called from V8's near-heap-limit callback on the isolate thread.
    pub fn heap_limit_reached(&self) {
        self.heap_exceeded.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.lock().unwrap().as_ref() {
            handle.terminate_execution();
        }
    }

    /// Why the isolate was terminated, if it was.
    pub fn termination(&self) -> Option<Termination> {
        if self.heap_exceeded.load(Ordering::SeqCst) {
            Some(Termination::HeapLimit)
        } else if self.cpu_exceeded.load(Ordering::SeqCst) {
            Some(Termination::CpuLimit)
        } else {
            None
        }
    }

    /// The isolate thread's CPU time (user + system) in milliseconds.
    fn thread_cpu_ms(&self) -> Option<u64> {
        let path = self.cpu_clock.lock().unwrap().clone()?;
        let stat = std::fs::read_to_string(path).ok()?;
        // Fields after the command name (which may hold spaces): state is field 3, utime
        // and stime are fields 14 and 15, in clock ticks of 1/100 s (Linux's USER_HZ).
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
        let user: u64 = fields.next()?.parse().ok()?;
        let system: u64 = fields.next()?.parse().ok()?;
        Some((user + system) * 10)
    }

    /// CPU milliseconds the current busy period has used, or wall milliseconds where CPU
    /// time cannot be read.
    fn used_ms(&self, since: u64, now: u64) -> u64 {
        let wall = now.saturating_sub(since);
        let Some(cpu) = self.thread_cpu_ms() else {
            return wall;
        };
        let mut seen = self.seen.lock().unwrap();
        if seen.0 != since {
            // First look at this period: what it used before now is at most its wall time.
            *seen = (since, cpu.saturating_sub(wall));
        }
        cpu.saturating_sub(seen.1).min(wall)
    }

    fn check(&self) {
        let since = self.busy_since_ms.load(Ordering::SeqCst);
        if since == 0 || self.cpu_exceeded.load(Ordering::SeqCst) {
            return;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        let used = self.used_ms(since, now);
        if used > self.limit.as_millis() as u64 {
            tracing::debug!("terminating JS that has used {used} ms of CPU time");
            self.cpu_exceeded.store(true, Ordering::SeqCst);
            if let Some(handle) = self.handle.lock().unwrap().as_ref() {
                handle.terminate_execution();
            }
        }
    }
}

/// The supervisor thread. It holds weak references, so it stops when every watch is gone.
pub fn spawn_supervisor(watches: Vec<Weak<IsolateWatch>>) {
    let interval = watches
        .iter()
        .filter_map(Weak::upgrade)
        .map(|w| (w.limit / 10).clamp(Duration::from_millis(1), Duration::from_millis(50)))
        .min()
        .unwrap_or(Duration::from_millis(50));
    std::thread::Builder::new()
        .name("dorun-supervisor".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let mut alive = false;
            for watch in &watches {
                if let Some(watch) = watch.upgrade() {
                    alive = true;
                    watch.check();
                }
            }
            if !alive {
                return;
            }
        })
        .expect("spawn supervisor thread");
}
