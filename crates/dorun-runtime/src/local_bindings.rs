//! The state of the bindings `js/17_local_bindings.js` serves: the rate limits' windows,
//! shared by every isolate thread of the process (one count per namespace and key, as
//! Cloudflare keeps one per location).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use deno_core::{op2, OpState};

/// `env.<version_metadata binding>`: one made-up version per process (as `wrangler dev`
/// makes one up per start): `{id, tag, timestamp}`, the same on every isolate thread.
pub fn version_metadata() -> serde_json::Value {
    static VERSION: OnceLock<serde_json::Value> = OnceLock::new();
    VERSION
        .get_or_init(|| {
            let b: [u8; 16] = rand::random();
            let hex: String = b.iter().map(|b| format!("{b:02x}")).collect();
            // A version 4 UUID.
            let id = format!(
                "{}-{}-4{}-{:x}{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[13..16],
                8 | (b[8] & 0x3),
                &hex[17..20],
                &hex[20..32]
            );
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            serde_json::json!({"id": id, "tag": "", "timestampMs": now.as_millis() as u64})
        })
        .clone()
}

/// (namespace, key) → (window start in seconds, calls in it).
type Windows = HashMap<(String, String), (u64, u64)>;

static WINDOWS: OnceLock<Mutex<Windows>> = OnceLock::new();

/// Counts one call of `key` in rate limit `namespace` (`limit` calls per `period` seconds,
/// fixed windows); whether it is within the limit.
pub fn allow(namespace: &str, key: &str, limit: u64, period: u64, now_seconds: u64) -> bool {
    let window = now_seconds - now_seconds % period.max(1);
    let mut windows = WINDOWS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if windows.len() > 100_000 {
        windows.retain(|_, (start, _)| *start == window);
    }
    let entry = windows
        .entry((namespace.to_string(), key.to_string()))
        .or_insert((window, 0));
    if entry.0 != window {
        *entry = (window, 0);
    }
    entry.1 += 1;
    entry.1 <= limit
}

#[op2(fast)]
pub fn op_dorun_ratelimit(
    #[string] namespace: &str,
    #[string] key: &str,
    #[number] limit: u64,
    #[number] period: u64,
) -> bool {
    let now = (crate::clock::now_ms().max(0) / 1000) as u64;
    allow(namespace, key, limit, period, now)
}

#[cfg(test)]
mod tests {
    use super::allow;

    #[test]
    fn a_window_allows_its_limit_then_refuses_until_the_next() {
        let results: Vec<bool> = (0..5).map(|_| allow("ns-a", "k", 3, 60, 120)).collect();
        assert_eq!(results, [true, true, true, false, false]);
        assert!(
            allow("ns-a", "other", 3, 60, 121),
            "another key has its own count"
        );
        assert!(allow("ns-b", "k", 3, 60, 121), "another namespace too");
        assert!(
            allow("ns-a", "k", 3, 60, 180),
            "the next window starts afresh"
        );
    }
}

/// Where `send_email` bindings write the messages they would send (`<data-dir>/email`).
pub struct Outbox(pub std::path::PathBuf);

#[derive(Debug, thiserror::Error, deno_error::JsError)]
#[class(generic)]
#[error("send_email: cannot write the message to {path}: {source}")]
pub struct OutboxError {
    path: String,
    source: std::io::Error,
}

/// `env.<send_email binding>.send(message)`: writes the raw message to the outbox as
/// `<ms>-<n>.eml` (as `wrangler dev` writes it to a file instead of sending it); its path.
#[op2]
#[string]
pub fn op_dorun_email_write(
    state: &mut OpState,
    #[buffer] raw: &[u8],
) -> Result<String, OutboxError> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = state.borrow::<Outbox>().0.clone();
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("{}-{n}.eml", crate::clock::now_ms()));
    let failed = |source| OutboxError {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(failed)?;
    std::fs::write(&path, raw).map_err(failed)?;
    Ok(path.display().to_string())
}
