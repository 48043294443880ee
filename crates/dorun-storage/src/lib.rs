//! SQLite storage for one Durable Object: KV data, user SQL, the implicit transaction.
//!
//! # Layout
//! - [`ObjectDatabase`]: one object's SQLite file (WAL). KV values live in the reserved
//!   table `_cf_KV`; user SQL cannot reach `_cf_*` names (an authorizer refuses them) and
//!   cannot open or close transactions itself.
//! - Writes open an implicit transaction; the runtime calls [`ObjectDatabase::commit`] after
//!   the JS turn that made them, so every write of one turn lands atomically.
//! - `sandbox`: the SQL sandbox (limits, the authorizer and its roles, the statement
//!   splitter).
//! - [`CacheDatabase`] (`cache.rs`): the Cache API's entries, one file per data directory.
//! - [`D1Database`] (`d1.rs`): a D1 database, one plain SQLite file per database.
//! - [`R2Bucket`] (`r2.rs`): an R2 bucket, body files plus a SQLite index.
//! - [`KvDatabase`] (`kv_namespace.rs`): a Workers KV namespace, one file per namespace id.
//!
//! No V8 and no tokio here: everything is synchronous and testable on a temp file.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rusqlite::config::DbConfig;
use rusqlite::hooks::AuthContext;
use rusqlite::limits::Limit;
use rusqlite::types::{Value, ValueRef};
use rusqlite::{params_from_iter, Connection, OptionalExtension};

mod admin;
mod cache;
mod close;
mod d1;
mod flush;
mod group;
mod kv_namespace;
mod queue;
mod r2;
pub mod replica;
mod sandbox;
mod shared;
mod workflow;
pub use admin::{backup, restore, restore_shared};
pub use cache::{CacheDatabase, CachedResponse};
pub use close::Closer;
pub use d1::{d1_message, D1Database, D1Result};
pub use flush::{wal_path, FlushDone, FlushRequest, Flusher};
pub use group::{Group, Transactional};
pub use kv_namespace::{KvDatabase, KvEntry, KvListedKey};
pub use queue::{NewMessage, QueueCounts, QueueDatabase, QueuedMessage, Settlement};
pub use r2::{R2Bucket, R2ObjectMeta, R2Page, R2Part, R2Upload};
use sandbox::{
    split_statements, value_size, SqlGuard, SqlRole, INTERRUPT_CHECK_STEPS, RESULT_TOO_LARGE,
};
pub use sandbox::{
    MAX_BOUND_PARAMETERS, MAX_COLUMNS, MAX_COMPOUND_SELECT, MAX_RESULT_BYTES, MAX_SQL_BYTES,
    MAX_VALUE_BYTES,
};
pub use workflow::{WorkflowDatabase, WorkflowInstance, WorkflowStep};

/// How hard a commit tries to be durable before anything it gates is released.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: every commit is fsync'd. RPO: zero.
    #[default]
    Full,
    /// `synchronous=NORMAL` in WAL mode: commits survive a process crash, but a power loss
    /// or kernel crash can lose the commits since the last WAL checkpoint.
    Normal,
    /// `synchronous=OFF`: no fsync at all; an OS crash can lose or corrupt recent data.
    Off,
}

impl Durability {
    /// SQLite's `synchronous` setting for this durability.
    pub fn synchronous(self) -> &'static str {
        match self {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
            Durability::Off => "OFF",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
    /// Someone else has the file or the transaction; trying again later may work.
    #[error("{0}")]
    Busy(String),
}

pub type Result<T> = std::result::Result<T, StorageError>;

/// Options for [`ObjectDatabase::list`].
#[derive(Clone, Debug, Default)]
pub struct ListOptions {
    /// Inclusive lower bound.
    pub start: Option<String>,
    /// Exclusive upper bound.
    pub end: Option<String>,
    pub prefix: Option<String>,
    pub reverse: bool,
    pub limit: Option<u64>,
}

/// A SQL value crossing into or out of the database.
#[derive(Clone, Debug, PartialEq)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// The complete result of one `sql.exec`.
#[derive(Debug, Default)]
pub struct SqlResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
    pub rows_read: u64,
    pub rows_written: u64,
}

/// One Durable Object's SQLite database.
pub struct ObjectDatabase {
    conn: Connection,
    guard: Arc<SqlGuard>,
    in_transaction: bool,
    kv_ready: bool,
    /// The alarm was written in the open transaction.
    alarm_dirty: bool,
}

/// Bytes a WAL keeps after a checkpoint resets it (about SQLite's 1000-page auto-checkpoint).
const WAL_SIZE_LIMIT: i64 = 4 << 20;

impl ObjectDatabase {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path, durability: Durability) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        // Only this connection ever uses the file while it is open (one live instance per
        // object, on one thread), so it locks the file for its lifetime and keeps the WAL
        // index in its own memory: no `-shm` file, whose mmapped pages every commit dirtied
        // and every flush wrote back (spread writes ran ~35 % slower with it), and one file
        // descriptor less per open object. Set before the first access, as SQLite requires.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        // The WAL file outlives the connection, truncated to zero bytes when it closes
        // (which needs a journal size limit): reopening a cold object then creates no file.
        // Creating and deleting a WAL per activation cost a quarter of a cold request's time
        // in the filesystem's inode allocation. The limit also truncates a WAL that grew
        // past it when a checkpoint resets it.
        conn.file_control(
            Some(rusqlite::MAIN_DB),
            rusqlite::FileControl::PersistWal(&mut 1),
        )?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        Self::configure(conn, durability)
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self> {
        Self::configure(Connection::open_in_memory()?, Durability::Full)
    }

    fn configure(mut conn: Connection, durability: Durability) -> Result<Self> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", durability.synchronous())?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Objects are many and small: keep each connection's page cache modest (KiB).
        conn.pragma_update(None, "cache_size", -512)?;
        conn.set_prepared_statement_cache_capacity(64);
        // Defensive mode: no statement can corrupt the file (writable_schema and the like).
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        for (limit, value) in [
            (Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES),
            (Limit::SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_BYTES),
            (Limit::SQLITE_LIMIT_COLUMN, MAX_COLUMNS),
            (Limit::SQLITE_LIMIT_VARIABLE_NUMBER, MAX_BOUND_PARAMETERS),
            (Limit::SQLITE_LIMIT_COMPOUND_SELECT, MAX_COMPOUND_SELECT),
        ] {
            conn.set_limit(limit, value)?;
        }
        let kv_ready = table_exists(&conn, "_cf_KV")?;
        let guard = Arc::new(SqlGuard::default());
        let authorizer = guard.clone();
        conn.authorizer(Some(move |context: AuthContext<'_>| {
            authorizer.authorize(context)
        }))?;
        Ok(Self {
            conn,
            guard,
            in_transaction: false,
            kv_ready,
            alarm_dirty: false,
        })
    }

    /// Stops any statement of this connection while `flag` is set (SQLite's progress
    /// handler): the runtime sets it when the isolate that runs the SQL passes its CPU
    /// limit. The statement then fails with "interrupted".
    /// Frees what an idle connection keeps in memory and can rebuild on its next use: its
    /// page cache and its prepared statements. Nothing is freed inside a transaction.
    pub fn trim(&mut self) -> Result<()> {
        if self.in_transaction || !self.conn.is_autocommit() {
            return Ok(());
        }
        self.conn.flush_prepared_statement_cache();
        self.conn.release_memory()?;
        Ok(())
    }

    pub fn interrupt_when(&mut self, flag: Arc<AtomicBool>) -> Result<()> {
        self.conn.progress_handler(
            INTERRUPT_CHECK_STEPS,
            Some(move || flag.load(Ordering::Relaxed)),
        )?;
        Ok(())
    }

    /// Starts the implicit transaction if none is open. Returns true if it started one,
    /// in which case the caller schedules [`commit`](Self::commit) after the current turn.
    pub fn begin_implicit(&mut self) -> Result<bool> {
        begin(&self.conn, &mut self.in_transaction)
    }

    /// Commits the implicit transaction, if any. Durable per the configured [`Durability`]
    /// when this returns.
    pub fn commit(&mut self) -> Result<()> {
        if !self.in_transaction {
            return Ok(());
        }
        self.in_transaction = false;
        self.alarm_dirty = false;
        if let Err(error) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(error.into());
        }
        Ok(())
    }

    /// Whether writes are waiting for [`commit`](Self::commit).
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    /// Drops uncommitted writes.
    pub fn rollback(&mut self) -> Result<()> {
        self.alarm_dirty = false;
        if self.in_transaction {
            self.in_transaction = false;
            self.conn.execute_batch("ROLLBACK")?;
            // The rollback may have undone the creation of the KV table.
            self.kv_ready = table_exists(&self.conn, "_cf_KV")?;
        }
        Ok(())
    }

    pub fn savepoint(&mut self, name: &str) -> Result<()> {
        self.begin_implicit()?;
        self.conn.execute_batch(&format!("SAVEPOINT {name}"))?;
        Ok(())
    }

    pub fn release(&mut self, name: &str) -> Result<()> {
        self.conn.execute_batch(&format!("RELEASE {name}"))?;
        Ok(())
    }

    pub fn rollback_to(&mut self, name: &str) -> Result<()> {
        self.conn
            .execute_batch(&format!("ROLLBACK TO {name}; RELEASE {name}"))?;
        Ok(())
    }

    fn ensure_kv(&mut self) -> Result<()> {
        if !self.kv_ready {
            self.conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS _cf_KV (key TEXT PRIMARY KEY, value BLOB) WITHOUT ROWID",
            )?;
            self.kv_ready = true;
        }
        Ok(())
    }

    pub fn kv_get(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        if !self.kv_ready {
            return Ok(None);
        }
        let mut statement = self
            .conn
            .prepare_cached("SELECT value FROM _cf_KV WHERE key = ?1")?;
        Ok(statement
            .query_row([key], |row| row.get::<_, Vec<u8>>(0))
            .optional()?)
    }

    /// Writes a value inside the implicit transaction.
    pub fn kv_put(&mut self, key: &str, value: &[u8]) -> Result<()> {
        self.begin_implicit()?;
        self.ensure_kv()?;
        let mut statement = self
            .conn
            .prepare_cached("INSERT OR REPLACE INTO _cf_KV (key, value) VALUES (?1, ?2)")?;
        statement.execute(rusqlite::params![key, value])?;
        Ok(())
    }

    /// Returns whether the key existed.
    pub fn kv_delete(&mut self, key: &str) -> Result<bool> {
        if !self.kv_ready {
            return Ok(false);
        }
        self.begin_implicit()?;
        let mut statement = self
            .conn
            .prepare_cached("DELETE FROM _cf_KV WHERE key = ?1")?;
        Ok(statement.execute([key])? > 0)
    }

    /// Keys in UTF-8 byte order (SQLite's BINARY collation), honouring the bounds.
    pub fn kv_list(&mut self, options: &ListOptions) -> Result<Vec<(String, Vec<u8>)>> {
        if !self.kv_ready {
            return Ok(Vec::new());
        }
        let mut start = options.start.clone();
        let mut end = options.end.clone();
        if let Some(prefix) = &options.prefix {
            if start.as_deref().is_none_or(|s| s < prefix.as_str()) {
                start = Some(prefix.clone());
            }
            if let Some(prefix_end) = prefix_upper_bound(prefix) {
                if end.as_deref().is_none_or(|e| e > prefix_end.as_str()) {
                    end = Some(prefix_end);
                }
            }
        }
        let mut sql = String::from("SELECT key, value FROM _cf_KV WHERE 1");
        let mut bindings: Vec<String> = Vec::new();
        if let Some(start) = start {
            bindings.push(start);
            sql.push_str(&format!(" AND key >= ?{}", bindings.len()));
        }
        if let Some(end) = end {
            bindings.push(end);
            sql.push_str(&format!(" AND key < ?{}", bindings.len()));
        }
        if let Some(prefix) = &options.prefix {
            if prefix_upper_bound(prefix).is_none() && !prefix.is_empty() {
                bindings.push(prefix.clone());
                sql.push_str(&format!(
                    " AND substr(key, 1, length(?{0})) = ?{0}",
                    bindings.len()
                ));
            }
        }
        sql.push_str(if options.reverse {
            " ORDER BY key DESC"
        } else {
            " ORDER BY key ASC"
        });
        if let Some(limit) = options.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let mut statement = self.conn.prepare_cached(&sql)?;
        let rows = statement.query_map(params_from_iter(bindings.iter()), |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
        })?;
        Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
    }

    /// Wipes the whole database (KV data and user tables), atomically.
    /// With `keep_alarm`, the alarm survives (compatibility dates before 2026-02-24).
    pub fn delete_all(&mut self, keep_alarm: bool) -> Result<()> {
        self.begin_implicit()?;
        if !keep_alarm && self.alarm()?.is_some() {
            self.alarm_dirty = true;
        }
        let names: Vec<(String, String)> = {
            let mut statement = self.conn.prepare(
                "SELECT type, name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'",
            )?;
            let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect::<std::result::Result<Vec<_>, _>>()?
        };
        self.conn.execute_batch("PRAGMA defer_foreign_keys = ON")?;
        for (kind, name) in names {
            if keep_alarm && name == METADATA_TABLE {
                continue;
            }
            let kind = if kind == "view" { "VIEW" } else { "TABLE" };
            self.conn.execute_batch(&format!(
                "DROP {kind} IF EXISTS \"{}\"",
                name.replace('"', "\"\"")
            ))?;
        }
        self.kv_ready = false;
        Ok(())
    }

    /// Runs user SQL: possibly several statements; bindings apply to the last one, whose
    /// rows are returned. Reserved names and transaction statements are refused.
    pub fn sql_exec(&mut self, query: &str, bindings: &[SqlValue]) -> Result<SqlResult> {
        self.exec_as(SqlRole::User, query, bindings)
    }

    /// Runs SQL as the operator (the admin listener): like [`sql_exec`](Self::sql_exec)
    /// (several statements, writes in the implicit transaction, no BEGIN/COMMIT), but the
    /// reserved tables (`_cf_KV`, `_cf_METADATA`) are readable and writable.
    pub fn admin_exec(&mut self, query: &str) -> Result<SqlResult> {
        self.exec_as(SqlRole::Operator, query, &[])
    }

    /// Runs SQL in `role`'s sandbox (see [`SqlRole`]).
    pub(crate) fn exec_as(
        &mut self,
        role: SqlRole,
        query: &str,
        bindings: &[SqlValue],
    ) -> Result<SqlResult> {
        let statements = split_statements(&self.conn, query)?;
        let Some((last, earlier)) = statements.split_last() else {
            return Err(StorageError::Refused(
                "SQL code did not contain a statement.".into(),
            ));
        };
        let previous = self.guard.enter(role);
        let result = self.run_statements(earlier, last, bindings);
        self.guard.enter(previous);
        result.map_err(|error| match error {
            StorageError::Sqlite(error) => self.guard.error(error),
            other => other,
        })
    }

    fn run_statements(
        &mut self,
        earlier: &[String],
        last: &str,
        bindings: &[SqlValue],
    ) -> Result<SqlResult> {
        let Self {
            conn,
            in_transaction,
            guard,
            ..
        } = self;
        // The runtime's own BEGIN, not the user's: the authorizer lets it through.
        let mut begin = |conn: &Connection| {
            let role = guard.enter(SqlRole::Runtime);
            let begun = begin(conn, in_transaction);
            guard.enter(role);
            begun
        };
        let changes_before = conn.total_changes();
        let mut writes = false;
        for text in earlier {
            let mut statement = conn.prepare(text)?;
            if !statement.readonly() && !writes {
                writes = true;
                begin(conn)?;
            }
            let mut rows = statement.raw_query();
            while rows.next()?.is_some() {}
        }
        // Cached statements are authorized once, when prepared: each role has its own cache
        // entries, or user SQL spelled like a runtime statement would skip the authorizer.
        let tagged;
        let key = match guard.role.load(Ordering::Relaxed) {
            1 => {
                tagged = format!("{last}\n/* dorun:user */");
                &tagged
            }
            2 => {
                tagged = format!("{last}\n/* dorun:operator */");
                &tagged
            }
            _ => last,
        };
        let mut statement = conn.prepare_cached(key)?;
        if statement.parameter_count() != bindings.len() {
            return Err(StorageError::Refused(
                "Wrong number of parameter bindings for SQL query.".into(),
            ));
        }
        if !statement.readonly() && !writes {
            begin(conn)?;
        }
        let columns: Vec<String> = statement.column_names().map(|c| c.to_string()).collect();
        let rows = statement.query(params_from_iter(bindings.iter().map(to_sql_value)))?;
        let rows_out = collect_rows(rows, columns.len(), StorageError::from)?;
        drop(statement);
        let rows_written = conn.total_changes().saturating_sub(changes_before);
        Ok(SqlResult {
            columns,
            rows_read: rows_out.len() as u64,
            rows: rows_out,
            rows_written,
        })
    }

    /// `(page_count - freelist_count) * page_size`.
    /// The alarm time in ms since the epoch, as of the open transaction.
    pub fn alarm(&self) -> Result<Option<i64>> {
        if !table_exists(&self.conn, METADATA_TABLE)? {
            return Ok(None);
        }
        let nanos: Option<i64> = self
            .conn
            .query_row("SELECT value FROM _cf_METADATA WHERE key = 1", [], |row| {
                row.get(0)
            })
            .optional()?
            .flatten();
        Ok(nanos.map(|ns| ns.div_euclid(1_000_000)))
    }

    /// Sets or clears the alarm inside the implicit transaction. Stored as workerd does:
    /// `_cf_METADATA` key 1, nanoseconds since the epoch.
    pub fn set_alarm(&mut self, ms: Option<i64>) -> Result<()> {
        self.begin_implicit()?;
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS _cf_METADATA (key INTEGER PRIMARY KEY, value BLOB)",
        )?;
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO _cf_METADATA (key, value) VALUES (1, ?1)")?
            .execute([ms.map(|ms| ms.saturating_mul(1_000_000))])?;
        self.alarm_dirty = true;
        Ok(())
    }

    /// Replication (see `replica`): SQLite never checkpoints this WAL on its own, nor when
    /// the connection closes; its owner does, once the replicator has every frame in the
    /// store ([`checkpoint`](Self::checkpoint)).
    pub fn replicated(&mut self) -> Result<()> {
        self.conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        self.conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
        Ok(())
    }

    /// Writes the replication position (`_cf_METADATA` key 2: epoch and TXID, 16 bytes
    /// big-endian) inside the implicit transaction, so that every commit writes at least one
    /// page and each committed file knows its own position.
    pub fn write_position(&mut self, epoch: u64, txid: u64) -> Result<()> {
        self.begin_implicit()?;
        self.conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS _cf_METADATA (key INTEGER PRIMARY KEY, value BLOB)",
        )?;
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&epoch.to_be_bytes());
        value[8..].copy_from_slice(&txid.to_be_bytes());
        self.conn
            .prepare_cached("INSERT OR REPLACE INTO _cf_METADATA (key, value) VALUES (2, ?1)")?
            .execute([&value[..]])?;
        Ok(())
    }

    /// The replication position of the last commit (see
    /// [`write_position`](Self::write_position)), if any.
    pub fn position(&self) -> Result<Option<(u64, u64)>> {
        if !table_exists(&self.conn, METADATA_TABLE)? {
            return Ok(None);
        }
        let value: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM _cf_METADATA WHERE key = 2", [], |row| {
                row.get(0)
            })
            .optional()?;
        Ok(value.filter(|v| v.len() == 16).map(|v| {
            (
                u64::from_be_bytes(v[..8].try_into().expect("8 bytes")),
                u64::from_be_bytes(v[8..].try_into().expect("8 bytes")),
            )
        }))
    }

    /// Checkpoints the WAL into the database file and empties it (outside a transaction).
    pub fn checkpoint(&mut self) -> Result<()> {
        if self.in_transaction {
            return Ok(());
        }
        self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        Ok(())
    }

    /// If the open transaction wrote the alarm: its value as it will be committed.
    pub fn pending_alarm_change(&self) -> Result<Option<Option<i64>>> {
        if !self.alarm_dirty || !self.in_transaction {
            return Ok(None);
        }
        Ok(Some(self.alarm()?))
    }

    pub fn database_size(&self) -> Result<u64> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(((pages - free).max(1) * size) as u64)
    }
}

impl Drop for ObjectDatabase {
    fn drop(&mut self) {
        // Whatever was not committed by the runtime is not confirmed to anyone: drop it.
        let _ = self.rollback();
    }
}

const METADATA_TABLE: &str = "_cf_METADATA";

/// A namespace's alarm index (`<namespace dir>/metadata.sqlite`, table `_cf_ALARM` as in
/// workerd): which objects have an alarm and when, so that startup schedules every alarm
/// without opening every object's file.
pub struct AlarmIndex {
    conn: Connection,
}

/// One row of an [`AlarmIndex`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedAlarm {
    pub object_id: String,
    /// Milliseconds since the epoch.
    pub time: i64,
    pub name: Option<String>,
}

impl AlarmIndex {
    pub fn open(path: &Path, durability: Durability) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", durability.synchronous())?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS _cf_ALARM (actor_id TEXT PRIMARY KEY, scheduled_time INTEGER, actor_name TEXT) WITHOUT ROWID",
        )?;
        Ok(Self { conn })
    }

    pub fn put(&self, object_id: &str, time_ms: i64, name: Option<&str>) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO _cf_ALARM (actor_id, scheduled_time, actor_name) VALUES (?1, ?2, ?3)",
            )?
            .execute(rusqlite::params![
                object_id,
                time_ms.saturating_mul(1_000_000),
                name
            ])?;
        Ok(())
    }

    pub fn delete(&self, object_id: &str) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM _cf_ALARM WHERE actor_id = ?1")?
            .execute([object_id])?;
        Ok(())
    }

    pub fn all(&self) -> Result<Vec<IndexedAlarm>> {
        let mut statement = self
            .conn
            .prepare("SELECT actor_id, scheduled_time, actor_name FROM _cf_ALARM")?;
        let rows = statement.query_map([], |row| {
            Ok(IndexedAlarm {
                object_id: row.get(0)?,
                time: row.get::<_, i64>(1)?.div_euclid(1_000_000),
                name: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<Vec<_>, _>>()?)
    }
}

fn table_exists(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn begin(conn: &Connection, in_transaction: &mut bool) -> Result<bool> {
    if *in_transaction {
        return Ok(false);
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    *in_transaction = true;
    Ok(true)
}

/// The smallest string greater than every string starting with `prefix`.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Every row of `rows` as values (user SQL's results: refused past [`MAX_RESULT_BYTES`]);
/// `error` turns SQLite's errors into the caller's.
pub(crate) fn collect_rows(
    mut rows: rusqlite::Rows<'_>,
    columns: usize,
    error: impl Fn(rusqlite::Error) -> StorageError,
) -> Result<Vec<Vec<SqlValue>>> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = rows.next().map_err(&error)? {
        let mut values = Vec::with_capacity(columns);
        for index in 0..columns {
            let value = from_value_ref(row.get_ref(index)?);
            bytes += value_size(&value);
            values.push(value);
        }
        if bytes > MAX_RESULT_BYTES {
            return Err(StorageError::Refused(RESULT_TOO_LARGE.into()));
        }
        out.push(values);
    }
    Ok(out)
}

pub(crate) fn to_sql_value(value: &SqlValue) -> Value {
    match value {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => Value::Integer(*i),
        SqlValue::Real(f) => Value::Real(*f),
        SqlValue::Text(s) => Value::Text(s.clone()),
        SqlValue::Blob(b) => Value::Blob(b.clone()),
    }
}

pub(crate) fn from_value_ref(value: ValueRef<'_>) -> SqlValue {
    match value {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(i) => SqlValue::Integer(i),
        ValueRef::Real(f) => SqlValue::Real(f),
        ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> ObjectDatabase {
        ObjectDatabase::open_in_memory().unwrap()
    }

    #[test]
    fn an_object_file_has_no_shm_and_its_wal_is_kept_empty_across_a_close() {
        let dir = std::env::temp_dir().join(format!("dorun-wal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("a.sqlite");
        let wal = flush::wal_path(&path);
        let mut db = ObjectDatabase::open(&path, Durability::Full).unwrap();
        db.kv_put("k", b"v").unwrap();
        db.commit().unwrap();
        assert!(std::fs::metadata(&wal).unwrap().len() > 0);
        assert!(
            !dir.join("a.sqlite-shm").exists(),
            "the WAL index is in memory"
        );
        drop(db);
        // Checkpointed and truncated, not deleted: the next open creates no file.
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 0);
        let mut db = ObjectDatabase::open(&path, Durability::Full).unwrap();
        assert_eq!(db.kv_get("k").unwrap(), Some(b"v".to_vec()));
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn writes_are_invisible_after_rollback_and_kept_after_commit() {
        let mut db = db();
        db.begin_implicit().unwrap();
        db.kv_put("a", b"1").unwrap();
        db.rollback().unwrap();
        assert_eq!(db.kv_get("a").unwrap(), None);
        db.begin_implicit().unwrap();
        db.kv_put("a", b"2").unwrap();
        db.commit().unwrap();
        assert_eq!(db.kv_get("a").unwrap(), Some(b"2".to_vec()));
    }

    #[test]
    fn list_honours_prefix_bounds_reverse_and_limit() {
        let mut db = db();
        db.begin_implicit().unwrap();
        for key in ["a", "b1", "b2", "b3", "c"] {
            db.kv_put(key, key.as_bytes()).unwrap();
        }
        let keys = |options: ListOptions, db: &mut ObjectDatabase| {
            db.kv_list(&options)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k)
                .collect::<Vec<_>>()
        };
        let prefix = ListOptions {
            prefix: Some("b".into()),
            ..Default::default()
        };
        assert_eq!(keys(prefix, &mut db), ["b1", "b2", "b3"]);
        let reverse = ListOptions {
            reverse: true,
            limit: Some(2),
            ..Default::default()
        };
        assert_eq!(keys(reverse, &mut db), ["c", "b3"]);
        let range = ListOptions {
            start: Some("b2".into()),
            end: Some("c".into()),
            ..Default::default()
        };
        assert_eq!(keys(range, &mut db), ["b2", "b3"]);
    }

    #[test]
    fn multi_statement_exec_binds_the_last_statement() {
        let mut db = db();
        let result = db
            .sql_exec(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO t (name) VALUES (?) RETURNING id",
                &[SqlValue::Text("x".into())],
            )
            .unwrap();
        assert_eq!(result.columns, ["id"]);
        assert_eq!(result.rows, vec![vec![SqlValue::Integer(1)]]);
        assert_eq!(result.rows_written, 1);
        let error = db.sql_exec("SELECT ?", &[]).unwrap_err();
        assert!(error
            .to_string()
            .contains("Wrong number of parameter bindings"));
        let error = db.sql_exec("  ", &[]).unwrap_err();
        assert!(error.to_string().contains("did not contain a statement"));
    }

    #[test]
    fn delete_all_drops_kv_and_user_tables() {
        let mut db = db();
        db.sql_exec("CREATE TABLE t (x)", &[]).unwrap();
        db.kv_put("k", b"v").unwrap();
        db.delete_all(false).unwrap();
        db.commit().unwrap();
        assert_eq!(db.kv_get("k").unwrap(), None);
        assert!(db.sql_exec("SELECT * FROM t", &[]).is_err());
    }

    #[test]
    fn alarm_commits_with_the_transaction_and_survives_delete_all_when_asked() {
        let mut db = ObjectDatabase::open_in_memory().unwrap();
        assert_eq!(db.alarm().unwrap(), None);
        db.set_alarm(Some(1_700_000_000_123)).unwrap();
        assert_eq!(
            db.pending_alarm_change().unwrap(),
            Some(Some(1_700_000_000_123))
        );
        db.rollback().unwrap();
        assert_eq!(db.alarm().unwrap(), None);
        assert_eq!(db.pending_alarm_change().unwrap(), None);
        db.set_alarm(Some(5)).unwrap();
        db.commit().unwrap();
        assert_eq!(db.alarm().unwrap(), Some(5));
        db.delete_all(true).unwrap();
        db.commit().unwrap();
        assert_eq!(db.alarm().unwrap(), Some(5));
        db.delete_all(false).unwrap();
        assert_eq!(db.pending_alarm_change().unwrap(), Some(None));
        db.commit().unwrap();
        assert_eq!(db.alarm().unwrap(), None);
        // User SQL cannot see the metadata table.
        db.set_alarm(Some(7)).unwrap();
        db.commit().unwrap();
        assert!(db.sql_exec("SELECT * FROM _cf_METADATA", &[]).is_err());
    }

    #[test]
    fn alarm_index_round_trips() {
        let dir = std::env::temp_dir().join(format!("dorun-alarm-index-{}", std::process::id()));
        let path = dir.join("metadata.sqlite");
        let index = AlarmIndex::open(&path, Durability::Full).unwrap();
        index.put("ab", 10, Some("name")).unwrap();
        index.put("cd", 20, None).unwrap();
        index.put("ab", 30, Some("name")).unwrap();
        index.delete("cd").unwrap();
        drop(index);
        let index = AlarmIndex::open(&path, Durability::Full).unwrap();
        assert_eq!(
            index.all().unwrap(),
            vec![IndexedAlarm {
                object_id: "ab".into(),
                time: 30,
                name: Some("name".into())
            }]
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
