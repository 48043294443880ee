//! R2 buckets (`r2_buckets`): each bucket is a directory, `<data-dir>/r2/<bucket>/`, with
//! one file per object body under `blobs/` and an index (`index.sqlite`, table `objects`)
//! that a person can open with `sqlite3`. A body is written to a temporary file, synced,
//! renamed into `blobs/`, and only then indexed: a crash never leaves half an object
//! visible (at worst an unindexed file, removed at the next open). Multipart uploads keep
//! their parts as files too until they are completed or aborted.
//!
//! The API's rules (conditions, ranges, limits, messages) are the runtime's
//! (`dorun-runtime/src/r2_binding.rs`); this type stores, finds and lists.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use crate::{Durability, Result};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// An object as the index holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct R2ObjectMeta {
    pub key: String,
    pub version: String,
    pub size: u64,
    /// Hex MD5 of the body, or of the parts' MD5s with `-<parts>` for a multipart object.
    pub etag: String,
    /// Milliseconds since the epoch.
    pub uploaded: i64,
    /// JSON text of the HTTP metadata.
    pub http_metadata: String,
    /// JSON text of the custom metadata.
    pub custom_metadata: String,
    /// JSON text of the checksums (`{"md5": "<hex>", ...}`).
    pub checksums: String,
    /// The body's file name under `blobs/`.
    pub blob: String,
}

/// A multipart upload in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct R2Upload {
    pub key: String,
    pub http_metadata: String,
    pub custom_metadata: String,
}

/// One uploaded part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct R2Part {
    pub number: u32,
    pub etag: String,
    pub size: u64,
    /// The MD5 of the part's bytes.
    pub md5: Vec<u8>,
    pub blob: String,
}

/// One page of `list`.
#[derive(Debug, Default)]
pub struct R2Page {
    pub objects: Vec<R2ObjectMeta>,
    pub prefixes: Vec<String>,
    /// The last key (or prefix) this page covered, when more follow.
    pub next: Option<String>,
}

/// A bucket's directory.
pub struct R2Bucket {
    dir: PathBuf,
    conn: Connection,
    durability: Durability,
}

impl crate::Transactional for R2Bucket {
    fn control(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.execute_batch(sql)
    }

    fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }
}

impl R2Bucket {
    /// Opens (creating if needed) the bucket at `dir`.
    pub fn open(dir: &Path, durability: Durability) -> Result<Self> {
        std::fs::create_dir_all(dir.join("blobs"))?;
        let mut conn = Connection::open(dir.join("index.sqlite"))?;
        crate::replica::files::install(&mut conn, &dir.join("index.sqlite"))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", durability.synchronous())?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS objects (
                key TEXT PRIMARY KEY,
                version TEXT NOT NULL,
                size INTEGER NOT NULL,
                etag TEXT NOT NULL,
                uploaded INTEGER NOT NULL,
                http_metadata TEXT NOT NULL,
                custom_metadata TEXT NOT NULL,
                checksums TEXT NOT NULL,
                blob TEXT NOT NULL
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS uploads (
                upload_id TEXT PRIMARY KEY,
                key TEXT NOT NULL,
                http_metadata TEXT NOT NULL,
                custom_metadata TEXT NOT NULL,
                state INTEGER NOT NULL DEFAULT 0
            );
            CREATE TABLE IF NOT EXISTS parts (
                upload_id TEXT NOT NULL,
                number INTEGER NOT NULL,
                etag TEXT NOT NULL,
                size INTEGER NOT NULL,
                md5 BLOB NOT NULL,
                blob TEXT NOT NULL,
                PRIMARY KEY (upload_id, number)
            );",
        )?;
        let bucket = Self {
            dir: dir.to_path_buf(),
            conn,
            durability,
        };
        bucket.remove_strays()?;
        Ok(bucket)
    }

    /// Deletes body files no object or part refers to (left by a crash mid-put).
    fn remove_strays(&self) -> Result<()> {
        let mut known: std::collections::HashSet<String> = self
            .conn
            .prepare("SELECT blob FROM objects UNION SELECT blob FROM parts")?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        known.insert(String::new());
        for entry in std::fs::read_dir(self.dir.join("blobs"))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// The bucket's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of a body.
    pub fn blob_path(&self, blob: &str) -> PathBuf {
        self.dir.join("blobs").join(blob)
    }

    /// A new, empty file for a body, and its name; it counts once [`put`](Self::put) or
    /// [`put_part`](Self::put_part) indexes it.
    pub fn create_blob(&self, name: &str) -> Result<File> {
        Ok(File::create(self.blob_path(name))?)
    }

    /// Makes a written body durable (with `Durability::Full`): its data, then its directory
    /// entry.
    pub fn sync_blob(&self, file: &mut File) -> Result<()> {
        Self::sync_body(&self.dir, self.durability, file)
    }

    /// [`sync_blob`](Self::sync_blob) for the bucket at `dir`, without its lock: bodies of
    /// concurrent puts are synced in parallel.
    pub fn sync_body(dir: &Path, durability: Durability, file: &mut File) -> Result<()> {
        file.flush()?;
        if durability == Durability::Full {
            file.sync_data()?;
            File::open(dir.join("blobs"))?.sync_all()?;
        }
        Ok(())
    }

    pub fn head(&self, key: &str) -> Result<Option<R2ObjectMeta>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT key, version, size, etag, uploaded, http_metadata, custom_metadata,
                        checksums, blob FROM objects WHERE key = ?1",
            )?
            .query_row([key], meta_row)
            .optional()?)
    }

    /// Indexes `object` (its body already durable), replacing any object of that key, whose
    /// body file is deleted.
    pub fn put(&self, object: &R2ObjectMeta) -> Result<()> {
        if let Some(old) = self.put_indexed(object)? {
            let _ = std::fs::remove_file(self.blob_path(&old));
        }
        Ok(())
    }

    /// Indexes `object` as [`put`](Self::put) does, inside the caller's transaction; the body
    /// file it replaced, for the caller to delete once that transaction is committed.
    pub fn put_indexed(&self, object: &R2ObjectMeta) -> Result<Option<String>> {
        let old = self.head(&object.key)?;
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO objects (key, version, size, etag, uploaded,
                    http_metadata, custom_metadata, checksums, blob)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                object.key,
                object.version,
                object.size as i64,
                object.etag,
                object.uploaded,
                object.http_metadata,
                object.custom_metadata,
                object.checksums,
                object.blob
            ])?;
        Ok(old.map(|old| old.blob).filter(|blob| *blob != object.blob))
    }

    /// Deletes `key` (nothing if it is missing).
    pub fn delete(&self, key: &str) -> Result<()> {
        if let Some(old) = self.head(key)? {
            self.conn
                .prepare_cached("DELETE FROM objects WHERE key = ?1")?
                .execute([key])?;
            let _ = std::fs::remove_file(self.blob_path(&old.blob));
        }
        Ok(())
    }

    /// Up to `limit` objects (and, with a delimiter, common prefixes, which count towards the
    /// limit) with `prefix`, in key order, after `after`.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        delimiter: Option<&str>,
    ) -> Result<R2Page> {
        let mut statement = self.conn.prepare_cached(
            "SELECT key, version, size, etag, uploaded, http_metadata, custom_metadata,
                    checksums, blob FROM objects
             WHERE substr(key, 1, length(?1)) = ?1 AND (?2 IS NULL OR key > ?2)
             ORDER BY key",
        )?;
        let mut rows = statement.query(params![prefix, after])?;
        let delimiter = delimiter.filter(|d| !d.is_empty());
        // A page that ended on a common prefix resumes after every key under it.
        let covered = delimiter.and_then(|d| after.filter(|a| a.ends_with(d)));
        let mut page = R2Page::default();
        let mut last: Option<String> = None;
        while let Some(row) = rows.next()? {
            let object = meta_row(row)?;
            if covered.is_some_and(|c| object.key.starts_with(c)) {
                continue;
            }
            let common = delimiter.and_then(|d| {
                let rest = &object.key[prefix.len()..];
                rest.find(d)
                    .map(|at| format!("{prefix}{}", &rest[..at + d.len()]))
            });
            if let Some(common) = &common {
                if page.prefixes.last() == Some(common) {
                    continue;
                }
            }
            if page.objects.len() + page.prefixes.len() == limit {
                page.next = last;
                break;
            }
            match common {
                Some(common) => {
                    last = Some(common.clone());
                    page.prefixes.push(common);
                }
                None => {
                    last = Some(object.key.clone());
                    page.objects.push(object);
                }
            }
        }
        Ok(page)
    }

    pub fn create_upload(&self, upload_id: &str, upload: &R2Upload) -> Result<()> {
        self.conn.execute(
            "INSERT INTO uploads (upload_id, key, http_metadata, custom_metadata) VALUES (?1, ?2, ?3, ?4)",
            params![upload_id, upload.key, upload.http_metadata, upload.custom_metadata],
        )?;
        Ok(())
    }

    /// The upload, if it exists and is still open.
    pub fn upload(&self, upload_id: &str, key: &str) -> Result<Option<R2Upload>> {
        Ok(self
            .conn
            .query_row(
                "SELECT key, http_metadata, custom_metadata FROM uploads
                 WHERE upload_id = ?1 AND key = ?2 AND state = 0",
                params![upload_id, key],
                |row| {
                    Ok(R2Upload {
                        key: row.get(0)?,
                        http_metadata: row.get(1)?,
                        custom_metadata: row.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// Records a part (its body already durable), replacing an earlier part of that number.
    pub fn put_part(&self, upload_id: &str, part: &R2Part) -> Result<()> {
        let old: Option<String> = self
            .conn
            .query_row(
                "SELECT blob FROM parts WHERE upload_id = ?1 AND number = ?2",
                params![upload_id, part.number],
                |row| row.get(0),
            )
            .optional()?;
        self.conn.execute(
            "INSERT OR REPLACE INTO parts (upload_id, number, etag, size, md5, blob)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                upload_id,
                part.number,
                part.etag,
                part.size as i64,
                part.md5,
                part.blob
            ],
        )?;
        if let Some(old) = old {
            let _ = std::fs::remove_file(self.blob_path(&old));
        }
        Ok(())
    }

    pub fn parts(&self, upload_id: &str) -> Result<Vec<R2Part>> {
        Ok(self
            .conn
            .prepare("SELECT number, etag, size, md5, blob FROM parts WHERE upload_id = ?1 ORDER BY number")?
            .query_map([upload_id], |row| {
                Ok(R2Part {
                    number: row.get(0)?,
                    etag: row.get(1)?,
                    size: row.get::<_, i64>(2)? as u64,
                    md5: row.get(3)?,
                    blob: row.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// Ends an upload (completed or aborted): its parts' files go, except `keep`.
    pub fn finish_upload(&self, upload_id: &str, state: u8, keep: &[String]) -> Result<()> {
        for part in self.parts(upload_id)? {
            if !keep.contains(&part.blob) {
                let _ = std::fs::remove_file(self.blob_path(&part.blob));
            }
        }
        self.conn
            .execute("DELETE FROM parts WHERE upload_id = ?1", [upload_id])?;
        self.conn.execute(
            "UPDATE uploads SET state = ?2 WHERE upload_id = ?1",
            params![upload_id, state],
        )?;
        Ok(())
    }

    /// Whether an upload of that id was ever created (whatever its state).
    pub fn upload_known(&self, upload_id: &str) -> Result<Option<u8>> {
        Ok(self
            .conn
            .query_row(
                "SELECT state FROM uploads WHERE upload_id = ?1",
                [upload_id],
                |row| row.get(0),
            )
            .optional()?)
    }

    /// Every object's key (the admin's reset deletes them).
    pub fn keys(&self) -> Result<Vec<String>> {
        Ok(self
            .conn
            .prepare("SELECT key FROM objects ORDER BY key")?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }
}

fn meta_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<R2ObjectMeta> {
    Ok(R2ObjectMeta {
        key: row.get(0)?,
        version: row.get(1)?,
        size: row.get::<_, i64>(2)? as u64,
        etag: row.get(3)?,
        uploaded: row.get(4)?,
        http_metadata: row.get(5)?,
        custom_metadata: row.get(6)?,
        checksums: row.get(7)?,
        blob: row.get(8)?,
    })
}
