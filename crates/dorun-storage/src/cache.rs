//! The Cache API's entries (`caches.default`, `caches.open(name)`): one SQLite file per data
//! directory (`<data-dir>/cache.sqlite`), shared by every isolate thread. Each thread opens
//! its own connection; WAL and a busy timeout let them write one after another.
//!
//! This type only stores and finds rows; what may be stored and for how long is decided by
//! the runtime (`dorun-runtime/src/cache.rs`).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use crate::Result;

/// How long a writer waits for another thread's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One stored response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Milliseconds since the epoch after which the entry is gone.
    pub expires_at: i64,
}

/// The cache file of a data directory.
pub struct CacheDatabase {
    conn: Connection,
}

impl CacheDatabase {
    /// Opens (creating if needed) the cache file at `path` and drops the entries that
    /// expired before `now_ms`.
    pub fn open(path: &Path, now_ms: i64) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Self::configure(Connection::open(path)?, now_ms)
    }

    /// An in-memory cache, for tests.
    pub fn open_in_memory() -> Result<Self> {
        Self::configure(Connection::open_in_memory()?, 0)
    }

    fn configure(conn: Connection, now_ms: i64) -> Result<Self> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // A cache may lose its last writes on a power loss; it must never be corrupt.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS cache_entries (
                cache TEXT NOT NULL,
                url TEXT NOT NULL,
                status INTEGER NOT NULL,
                headers TEXT NOT NULL,
                body BLOB NOT NULL,
                expires_at INTEGER NOT NULL,
                PRIMARY KEY (cache, url)
            ) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS cache_entries_expiry ON cache_entries (expires_at);",
        )?;
        conn.execute("DELETE FROM cache_entries WHERE expires_at <= ?1", [now_ms])?;
        Ok(Self { conn })
    }

    /// Stores (replacing) the entry of `url` in `cache`.
    pub fn put(&self, cache: &str, url: &str, response: &CachedResponse) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO cache_entries (cache, url, status, headers, body, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                cache,
                url,
                response.status,
                encode_headers(&response.headers),
                response.body,
                response.expires_at
            ])?;
        Ok(())
    }

    /// The entry of `url` in `cache` if it has not expired at `now_ms`; an expired entry is
    /// deleted.
    pub fn get(&self, cache: &str, url: &str, now_ms: i64) -> Result<Option<CachedResponse>> {
        let found = self
            .conn
            .prepare_cached(
                "SELECT status, headers, body, expires_at FROM cache_entries
                 WHERE cache = ?1 AND url = ?2",
            )?
            .query_row(params![cache, url], |row| {
                Ok(CachedResponse {
                    status: row.get(0)?,
                    headers: decode_headers(&row.get::<_, String>(1)?),
                    body: row.get(2)?,
                    expires_at: row.get(3)?,
                })
            })
            .optional()?;
        match found {
            Some(entry) if entry.expires_at <= now_ms => {
                self.delete(cache, url)?;
                Ok(None)
            }
            found => Ok(found),
        }
    }

    /// Deletes the entry of `url` in `cache`; true if there was one.
    pub fn delete(&self, cache: &str, url: &str) -> Result<bool> {
        let deleted = self
            .conn
            .prepare_cached("DELETE FROM cache_entries WHERE cache = ?1 AND url = ?2")?
            .execute(params![cache, url])?;
        Ok(deleted > 0)
    }
}

// Header names cannot hold ':' and values cannot hold CR or LF, so one "name: value" line
// per header is unambiguous.
fn encode_headers(headers: &[(String, String)]) -> String {
    let mut text = String::new();
    for (name, value) in headers {
        text.push_str(name);
        text.push_str(": ");
        text.push_str(value);
        text.push('\n');
    }
    text
}

fn decode_headers(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(expires_at: i64) -> CachedResponse {
        CachedResponse {
            status: 200,
            headers: vec![
                ("content-type".into(), "text/plain".into()),
                ("x-empty".into(), "".into()),
            ],
            body: b"hello".to_vec(),
            expires_at,
        }
    }

    #[test]
    fn put_then_get_returns_the_entry_until_it_expires() {
        let db = CacheDatabase::open_in_memory().unwrap();
        db.put("default", "https://a/x", &entry(1_000)).unwrap();
        assert_eq!(
            db.get("default", "https://a/x", 999).unwrap(),
            Some(entry(1_000))
        );
        assert_eq!(db.get("default", "https://a/x", 1_000).unwrap(), None);
        assert!(
            !db.delete("default", "https://a/x").unwrap(),
            "expired entry dropped"
        );
    }

    #[test]
    fn caches_are_separate_and_delete_reports_whether_it_found_one() {
        let db = CacheDatabase::open_in_memory().unwrap();
        db.put("a", "https://a/x", &entry(1_000)).unwrap();
        assert_eq!(db.get("b", "https://a/x", 0).unwrap(), None);
        assert!(db.delete("a", "https://a/x").unwrap());
        assert!(!db.delete("a", "https://a/x").unwrap());
    }

    #[test]
    fn entries_survive_reopening_and_expired_ones_are_purged_on_open() {
        let dir = std::env::temp_dir().join(format!("dorun-cache-test-{}", std::process::id()));
        let path = dir.join("cache.sqlite");
        {
            let db = CacheDatabase::open(&path, 0).unwrap();
            db.put("c", "https://a/live", &entry(5_000)).unwrap();
            db.put("c", "https://a/old", &entry(1_000)).unwrap();
        }
        let db = CacheDatabase::open(&path, 2_000).unwrap();
        assert!(db.get("c", "https://a/live", 2_000).unwrap().is_some());
        assert!(!db.delete("c", "https://a/old").unwrap());
        drop(db);
        let _ = std::fs::remove_dir_all(dir);
    }
}
