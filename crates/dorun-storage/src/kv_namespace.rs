//! Workers KV namespaces (`kv_namespaces`): one SQLite file per namespace id
//! (`<data-dir>/kv/<id>.sqlite`), shared by every worker and isolate thread that binds the
//! same id. A person can open it with `sqlite3` and read table `kv`.
//!
//! This type only stores, finds and lists entries; the API's rules (key and value limits,
//! expiration checks, error messages) are the runtime's (`dorun-runtime/src/kv.rs`).
//! Expired entries are never returned and are deleted when found.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::{Durability, Result};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS kv (
                key TEXT PRIMARY KEY,
                value BLOB NOT NULL,
                metadata TEXT,
                expiration INTEGER
            ) WITHOUT ROWID;";

/// One stored value with what `getWithMetadata` and `list` show of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvEntry {
    pub value: Vec<u8>,
    /// JSON text of the metadata, if any.
    pub metadata: Option<String>,
    /// Seconds since the epoch after which the entry is gone.
    pub expiration: Option<i64>,
}

/// A key as `list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvListedKey {
    pub name: String,
    pub expiration: Option<i64>,
    pub metadata: Option<String>,
}

/// A KV namespace's file.
pub struct KvDatabase {
    conn: Connection,
}

impl crate::Transactional for KvDatabase {
    fn control(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.execute_batch(sql)
    }

    fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }
}

impl KvDatabase {
    /// Opens (creating if needed) the namespace file at `path`. With `Durability::Full` a
    /// write returns once it is on disk.
    pub fn open(path: &Path, durability: Durability) -> Result<Self> {
        Ok(Self {
            conn: crate::shared::open(Some(path), durability, SCHEMA)?,
        })
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self> {
        Ok(Self {
            conn: crate::shared::open(None, Durability::Off, SCHEMA)?,
        })
    }

    /// The entry of `key` unless it is missing or expired at `now` (seconds).
    pub fn get(&self, key: &str, now: i64) -> Result<Option<KvEntry>> {
        let entry = self
            .conn
            .prepare_cached("SELECT value, metadata, expiration FROM kv WHERE key = ?1")?
            .query_row([key], |row| {
                Ok(KvEntry {
                    value: row.get(0)?,
                    metadata: row.get(1)?,
                    expiration: row.get(2)?,
                })
            })
            .optional()?;
        match entry {
            Some(entry) if entry.expiration.is_some_and(|at| at <= now) => {
                self.conn
                    .prepare_cached("DELETE FROM kv WHERE key = ?1 AND expiration <= ?2")?
                    .execute(params![key, now])?;
                Ok(None)
            }
            entry => Ok(entry),
        }
    }

    /// Stores (replacing) `key`.
    pub fn put(&self, key: &str, entry: &KvEntry) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO kv (key, value, metadata, expiration) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![key, entry.value, entry.metadata, entry.expiration])?;
        Ok(())
    }

    /// Deletes `key` (nothing if it is missing).
    pub fn delete(&self, key: &str) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM kv WHERE key = ?1")?
            .execute([key])?;
        Ok(())
    }

    /// Up to `limit` live keys starting with `prefix`, in byte order, after `after` (the last
    /// key of the previous page); and whether more follow.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        now: i64,
    ) -> Result<(Vec<KvListedKey>, bool)> {
        // Keys are TEXT compared with SQLite's BINARY collation: byte order of UTF-8, as
        // Cloudflare lists them. `prefix` is matched on bytes, not with LIKE.
        let start = match after {
            Some(after) if after >= prefix => after.to_string(),
            _ => prefix.to_string(),
        };
        let inclusive = after.is_none_or(|after| after < prefix);
        let mut statement = self.conn.prepare_cached(
            "SELECT key, expiration, metadata FROM kv
             WHERE (key > ?1 OR (?2 AND key = ?1)) AND substr(key, 1, length(?3)) = ?3
               AND (expiration IS NULL OR expiration > ?4)
             ORDER BY key LIMIT ?5",
        )?;
        let rows = statement.query_map(
            params![start, inclusive, prefix, now, limit as i64 + 1],
            |row| {
                Ok(KvListedKey {
                    name: row.get(0)?,
                    expiration: row.get(1)?,
                    metadata: row.get(2)?,
                })
            },
        )?;
        let mut keys = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        let more = keys.len() > limit;
        keys.truncate(limit);
        Ok((keys, more))
    }

    /// Deletes every key (the admin's reset); how many there were.
    pub fn clear(&self) -> Result<u64> {
        Ok(self.conn.execute("DELETE FROM kv", [])? as u64)
    }

    /// How many live keys the namespace holds.
    pub fn count(&self, now: i64) -> Result<u64> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM kv WHERE expiration IS NULL OR expiration > ?1",
            [now],
            |row| row.get::<_, i64>(0),
        )? as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(value: &str, expiration: Option<i64>) -> KvEntry {
        KvEntry {
            value: value.as_bytes().to_vec(),
            metadata: None,
            expiration,
        }
    }

    #[test]
    fn expired_entries_are_never_returned_or_listed() {
        let kv = KvDatabase::open_in_memory().unwrap();
        kv.put("live", &entry("a", Some(200))).unwrap();
        kv.put("dead", &entry("b", Some(100))).unwrap();
        kv.put("forever", &entry("c", None)).unwrap();
        assert_eq!(kv.get("live", 150).unwrap().unwrap().value, b"a");
        assert_eq!(kv.get("dead", 150).unwrap(), None);
        let (keys, more) = kv.list("", None, 10, 150).unwrap();
        let names: Vec<_> = keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["forever", "live"]);
        assert!(!more);
        assert_eq!(kv.count(150).unwrap(), 2);
    }

    #[test]
    fn list_pages_in_byte_order_within_a_prefix() {
        let kv = KvDatabase::open_in_memory().unwrap();
        for key in ["a/2", "a/1", "b", "a/é", "a/Z", "a", "a/3"] {
            kv.put(key, &entry("v", None)).unwrap();
        }
        let (page, more) = kv.list("a/", None, 2, 0).unwrap();
        assert_eq!(
            page.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
            ["a/1", "a/2"]
        );
        assert!(more);
        let (page, more) = kv.list("a/", Some("a/2"), 10, 0).unwrap();
        assert_eq!(
            page.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(),
            ["a/3", "a/Z", "a/é"]
        );
        assert!(!more);
        // A prefix with LIKE's wildcards is matched literally.
        kv.put("a%b", &entry("v", None)).unwrap();
        let (page, _) = kv.list("a%", None, 10, 0).unwrap();
        assert_eq!(page.len(), 1);
    }
}
