//! Memory outside the V8 heap: each isolate's ArrayBuffers come from an allocator with a
//! budget, WebAssembly memories are capped by V8's page limit, and a process-wide limit
//! (`--memory-limit-mb`) is watched so that, above it, large allocations fail and the front
//! door sheds new requests with a clear error before the kernel's OOM killer takes every
//! object down.

#![allow(unsafe_code)]

use std::alloc::Layout;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use deno_core::v8;

/// Set while the process's resident memory is above `--memory-limit-mb`.
static OVER_LIMIT: AtomicBool = AtomicBool::new(false);

/// Allocations at least this large fail while the process is over its memory limit.
const LARGE_ALLOCATION: usize = 64 << 10;

/// Whether the process is over its memory limit now.
/// Gives memory the allocator holds free back to the system. After an isolate reset (often
/// caused by a huge allocation) glibc keeps the freed pages in its arenas, and the process
/// would stay at its high-water mark; `malloc_trim` releases them.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn over_memory_limit() -> bool {
    OVER_LIMIT.load(Ordering::Relaxed)
}

/// Watches the process's resident memory against `limit_bytes` on a thread of its own.
/// Above the limit [`over_memory_limit`] is true; it turns false again below 90 % of it.
pub fn watch_process_memory(limit_bytes: u64) {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        if std::fs::metadata(STATM).is_err() {
            tracing::warn!(
                "--memory-limit-mb is not enforced on this system: dorun reads the resident \
                 memory from {STATM}, which only Linux has"
            );
            return;
        }
        let page = page_size();
        let spawned = std::thread::Builder::new()
            .name("dorun-memory".into())
            .spawn(move || loop {
                if let Some(pages) = std::fs::read_to_string(STATM)
                    .ok()
                    .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
                {
                    let rss = pages * page;
                    let over = OVER_LIMIT.load(Ordering::Relaxed);
                    if !over && rss > limit_bytes {
                        tracing::warn!(
                            rss_mb = rss >> 20,
                            limit_mb = limit_bytes >> 20,
                            "over the memory limit: shedding new requests and large allocations"
                        );
                        OVER_LIMIT.store(true, Ordering::Relaxed);
                    } else if over && rss < limit_bytes / 10 * 9 {
                        tracing::info!(rss_mb = rss >> 20, "back under the memory limit");
                        OVER_LIMIT.store(false, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            });
        if let Err(error) = spawned {
            tracing::error!("cannot watch memory: {error}");
        }
    });
}

/// Where Linux tells a process its size, in pages (`size resident shared ...`).
const STATM: &str = "/proc/self/statm";

/// The kernel's page size: 4 KiB on x86-64, but 16 or 64 KiB on some arm64 kernels.
fn page_size() -> u64 {
    // SAFETY: sysconf only reads a constant of the system.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// Caps every WebAssembly memory at `bytes` (V8's page limit; it applies to the process).
pub fn limit_wasm_memory(bytes: usize) {
    static SET: Once = Once::new();
    SET.call_once(|| {
        let pages = (bytes / 65536).clamp(16, 65536);
        let unknown =
            deno_core::v8_set_flags(vec![String::new(), format!("--wasm-max-mem-pages={pages}")]);
        if unknown.len() > 1 {
            tracing::warn!("V8 does not know the flags {:?}", &unknown[1..]);
        }
    });
}

/// The bytes of ArrayBuffers one isolate holds, and its budget.
pub struct ArrayBufferBudget {
    used: AtomicUsize,
    limit: usize,
}

impl ArrayBufferBudget {
    fn reserve(&self, len: usize) -> bool {
        if len >= LARGE_ALLOCATION && over_memory_limit() {
            return false;
        }
        let before = self.used.fetch_add(len, Ordering::AcqRel);
        if before + len > self.limit {
            self.used.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn release(&self, len: usize) {
        self.used.fetch_sub(len, Ordering::AcqRel);
    }
}

/// An ArrayBuffer allocator that refuses to go past `limit` bytes (V8 then throws
/// `RangeError: Array buffer allocation failed`).
pub fn budgeted_allocator(limit: usize) -> v8::SharedRef<v8::Allocator> {
    let budget = Arc::new(ArrayBufferBudget {
        used: AtomicUsize::new(0),
        limit,
    });
    // SAFETY: the vtable's functions match V8's allocator contract (below); the handle is
    // an `Arc` turned into a raw pointer, released by `drop_budget` when V8 drops the
    // allocator.
    unsafe { v8::new_rust_allocator(Arc::into_raw(budget), &VTABLE) }.make_shared()
}

static VTABLE: v8::RustAllocatorVtable<ArrayBufferBudget> = v8::RustAllocatorVtable {
    allocate,
    allocate_uninitialized,
    free,
    drop: drop_budget,
};

fn layout(len: usize) -> Layout {
    // Zero-length buffers still get a unique pointer; 16 bytes as malloc aligns.
    Layout::from_size_align(len.max(1), 16).expect("a valid layout")
}

/// Reserves `len` bytes of the budget, then allocates with `alloc` (zeroed or not).
fn allocate_with(
    budget: &ArrayBufferBudget,
    len: usize,
    alloc: unsafe fn(Layout) -> *mut u8,
) -> *mut c_void {
    if !budget.reserve(len) {
        return std::ptr::null_mut();
    }
    // SAFETY: the layout has a non-zero size.
    let data = unsafe { alloc(layout(len)) };
    if data.is_null() {
        budget.release(len);
    }
    data.cast()
}

unsafe extern "C" fn allocate(budget: &ArrayBufferBudget, len: usize) -> *mut c_void {
    allocate_with(budget, len, std::alloc::alloc_zeroed)
}

unsafe extern "C" fn allocate_uninitialized(budget: &ArrayBufferBudget, len: usize) -> *mut c_void {
    allocate_with(budget, len, std::alloc::alloc)
}

unsafe extern "C" fn free(budget: &ArrayBufferBudget, data: *mut c_void, len: usize) {
    if data.is_null() {
        return;
    }
    // SAFETY: V8 frees what `allocate*` returned, with the length it asked for.
    unsafe { std::alloc::dealloc(data.cast(), layout(len)) };
    budget.release(len);
}

unsafe extern "C" fn drop_budget(budget: *const ArrayBufferBudget) {
    // SAFETY: the pointer came from `Arc::into_raw` in `budgeted_allocator`.
    drop(unsafe { Arc::from_raw(budget) });
}
