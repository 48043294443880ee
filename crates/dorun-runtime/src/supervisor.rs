//! CPU limit enforcement from outside the isolate threads.
//!
//! Each isolate thread marks when it starts running JS (a poll of its event loop) and
//! clears the mark when the poll returns. A supervisor thread checks the marks every
//! few milliseconds; JS that has been running longer than the limit without returning
//! to the event loop is terminated through V8's thread-safe isolate handle. The isolate
//! thread then sees the termination and resets its isolate.

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
    cpu_exceeded: AtomicBool,
    heap_exceeded: AtomicBool,
}

impl IsolateWatch {
    pub fn new(limit: Duration) -> Arc<Self> {
        Arc::new(Self {
            busy_since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            limit,
            handle: Mutex::new(None),
            cpu_exceeded: AtomicBool::new(false),
            heap_exceeded: AtomicBool::new(false),
        })
    }

    /// Points the watch at a (new) isolate.
    pub fn attach(&self, handle: deno_core::v8::IsolateHandle) {
        *self.handle.lock().unwrap() = Some(handle);
        self.cpu_exceeded.store(false, Ordering::SeqCst);
        self.heap_exceeded.store(false, Ordering::SeqCst);
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

    fn check(&self) {
        let since = self.busy_since_ms.load(Ordering::SeqCst);
        if since == 0 || self.cpu_exceeded.load(Ordering::SeqCst) {
            return;
        }
        let now = self.epoch.elapsed().as_millis() as u64;
        if now.saturating_sub(since) > self.limit.as_millis() as u64 {
            tracing::debug!(
                "terminating JS that has run for {} ms",
                now.saturating_sub(since)
            );
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
