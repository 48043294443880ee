//! D1 databases (`d1_databases`): one plain SQLite file per database
//! (`<data-dir>/d1/<name>.sqlite`) holding only the user's tables (and wrangler's
//! `d1_migrations` table when migrations are applied), shared by every worker that binds it.
//!
//! User SQL runs in the same sandbox as Durable Object SQL (`sandbox.rs`: no ATTACH, only
//! the PRAGMAs and functions workerd allows, no `_cf_*` names, the size limits) and may
//! not open or close transactions; a batch runs in one transaction of the runtime's own.
//! A query stops when the caller's interrupt flag is set or its deadline passes.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::config::DbConfig;
use rusqlite::hooks::AuthContext;
use rusqlite::limits::Limit;
use rusqlite::{params_from_iter, Connection};

use crate::sandbox::{split_statements, SqlGuard, SqlRole, INTERRUPT_CHECK_STEPS};
use crate::{
    collect_rows, to_sql_value, Durability, Result, SqlValue, StorageError, MAX_BOUND_PARAMETERS,
    MAX_COLUMNS, MAX_COMPOUND_SELECT, MAX_SQL_BYTES,
};

/// D1's largest string or blob (and row), in bytes.
pub const MAX_D1_VALUE_BYTES: i32 = 2_200_000;

/// PRAGMAs D1 refuses although Durable Object SQL may run them.
const REFUSED_PRAGMAS: [&str; 6] = [
    "journal_mode",
    "user_version",
    "page_size",
    "integrity_check",
    "compile_options",
    "database_list",
];

/// D1's answer to SQL with no statement at all.
const NO_STATEMENTS: &str = "No SQL statements detected.";
/// D1's answer to SQL that holds only comments.
const NO_STATEMENT: &str = "SQL code did not contain a statement.";

/// How long a writer waits for another connection's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// What one statement produced, with D1's `meta` counters.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct D1Result {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
    /// Rows the statement inserted, updated or deleted (`changes()`).
    pub changes: u64,
    pub last_row_id: i64,
    pub rows_read: u64,
    pub rows_written: u64,
    /// Whether the statement changed the schema (CREATE, DROP, ALTER...).
    pub changed_schema: bool,
}

/// A D1 database file.
pub struct D1Database {
    conn: Connection,
    guard: Arc<SqlGuard>,
    /// Set from outside to stop the running statement.
    interrupt: Arc<AtomicBool>,
    /// When the running query must stop (the caller's time limit), as ms since `epoch`.
    deadline: Arc<std::sync::atomic::AtomicU64>,
    epoch: Instant,
    /// Where the database's history stands: grows with every write (a session's bookmark).
    /// It starts from the clock so that it keeps growing across restarts.
    position: u64,
}

impl crate::Transactional for D1Database {
    fn control(&self, sql: &str) -> rusqlite::Result<()> {
        self.runtime(|conn| conn.execute_batch(sql))
    }

    fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }
}

impl D1Database {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path, durability: Durability) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut db = Self::configure(Connection::open(path)?, durability)?;
        crate::replica::files::install(&mut db.conn, path)?;
        Ok(db)
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> Result<Self> {
        Self::configure(Connection::open_in_memory()?, Durability::Off)
    }

    fn configure(mut conn: Connection, durability: Durability) -> Result<Self> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", durability.synchronous())?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        for (limit, value) in [
            (Limit::SQLITE_LIMIT_LENGTH, MAX_D1_VALUE_BYTES),
            // The statement itself is checked against MAX_SQL_BYTES before it is tagged.
            (Limit::SQLITE_LIMIT_SQL_LENGTH, MAX_SQL_BYTES + 64),
            (Limit::SQLITE_LIMIT_COLUMN, MAX_COLUMNS),
            (Limit::SQLITE_LIMIT_VARIABLE_NUMBER, MAX_BOUND_PARAMETERS),
            (Limit::SQLITE_LIMIT_COMPOUND_SELECT, MAX_COMPOUND_SELECT),
        ] {
            conn.set_limit(limit, value)?;
        }
        let guard = Arc::new(SqlGuard::default());
        let authorizer = guard.clone();
        conn.authorizer(Some(move |context: AuthContext<'_>| {
            if let rusqlite::hooks::AuthAction::Pragma { pragma_name, .. } = context.action {
                if authorizer.role.load(Ordering::Relaxed) != SqlRole::Runtime as u8
                    && REFUSED_PRAGMAS
                        .iter()
                        .any(|p| p.eq_ignore_ascii_case(pragma_name))
                {
                    return rusqlite::hooks::Authorization::Deny;
                }
            }
            authorizer.authorize(context)
        }))?;
        let interrupt = Arc::new(AtomicBool::new(false));
        let deadline = Arc::new(std::sync::atomic::AtomicU64::new(u64::MAX));
        let epoch = Instant::now();
        {
            let interrupt = interrupt.clone();
            let deadline = deadline.clone();
            conn.progress_handler(
                INTERRUPT_CHECK_STEPS,
                Some(move || {
                    interrupt.load(Ordering::Relaxed)
                        || epoch.elapsed().as_millis() as u64 > deadline.load(Ordering::Relaxed)
                }),
            )?;
        }
        guard.enter(SqlRole::User);
        Ok(Self {
            conn,
            guard,
            interrupt,
            deadline,
            epoch,
            position: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
        })
    }

    /// The history position after the last write (see `position`).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The flag that stops the running statement when set (cleared before each query).
    pub fn interrupt_flag(&self) -> Arc<AtomicBool> {
        self.interrupt.clone()
    }

    fn arm(&self, limit: Duration) {
        self.interrupt.store(false, Ordering::Relaxed);
        let at = self.epoch.elapsed().saturating_add(limit).as_millis() as u64;
        self.deadline.store(at, Ordering::Relaxed);
    }

    /// Runs `statements` (each one SQL statement with its bindings) in one transaction:
    /// all of them apply, or none. Each may take at most `limit`.
    pub fn batch(
        &mut self,
        statements: &[(String, Vec<SqlValue>)],
        limit: Duration,
    ) -> Result<Vec<D1Result>> {
        // Statements with no SQL at all are left out, as D1 does; none left is an error.
        let statements: Vec<&(String, Vec<SqlValue>)> = statements
            .iter()
            .filter(|(sql, _)| !sql.trim().is_empty())
            .collect();
        if statements.is_empty() {
            return Err(StorageError::Refused(NO_STATEMENTS.into()));
        }
        self.arm(limit);
        // Alone, a transaction of its own; inside a group commit (see group.rs), a savepoint
        // of the group's transaction.
        let (begin, commit, rollback) = if self.conn.is_autocommit() {
            ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")
        } else {
            (
                "SAVEPOINT dorun_batch",
                "RELEASE dorun_batch",
                "ROLLBACK TO dorun_batch; RELEASE dorun_batch",
            )
        };
        self.runtime(|conn| conn.execute_batch(begin))?;
        let mut results = Vec::with_capacity(statements.len());
        for (sql, bindings) in statements {
            match self.run(sql, bindings) {
                Ok(result) => results.push(result),
                Err(error) => {
                    let _ = self.runtime(|conn| conn.execute_batch(rollback));
                    return Err(error);
                }
            }
        }
        if let Err(error) = self.runtime(|conn| conn.execute_batch(commit)) {
            let _ = self.runtime(|conn| conn.execute_batch(rollback));
            return Err(error.into());
        }
        let written: u64 = results.iter().map(|r| r.rows_written).sum();
        if written > 0 {
            self.position = self.position.max(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_micros() as u64),
            ) + written;
        }
        Ok(results)
    }

    /// D1's `exec`: each non-blank line of `sql` is one query (a statement spread over
    /// several lines is incomplete), all in one transaction; returns how many ran.
    pub fn exec(&mut self, sql: &str, limit: Duration) -> Result<usize> {
        let lines: Vec<&str> = sql
            .trim()
            .split('\n')
            .filter(|line| !line.trim().is_empty())
            .collect();
        if lines.is_empty() {
            return Err(StorageError::Refused(NO_STATEMENTS.into()));
        }
        let statements: Vec<(String, Vec<SqlValue>)> = lines
            .iter()
            .map(|line| (line.to_string(), Vec::new()))
            .collect();
        Ok(self.batch(&statements, limit)?.len())
    }

    /// A script of statements (a migration, `dorun d1 execute --file`), split with SQLite's
    /// tokenizer, in one transaction; one result per statement.
    pub fn execute_script(&mut self, sql: &str, limit: Duration) -> Result<Vec<D1Result>> {
        self.execute_script_then(sql, "", &[], limit)
    }

    /// [`execute_script`](Self::execute_script), then `then` with `params` in the same
    /// transaction (a migration and the row that records it).
    pub fn execute_script_then(
        &mut self,
        sql: &str,
        then: &str,
        params: &[SqlValue],
        limit: Duration,
    ) -> Result<Vec<D1Result>> {
        let mut statements: Vec<(String, Vec<SqlValue>)> = split_statements(&self.conn, sql)?
            .into_iter()
            .filter(|statement| !is_only_comments(statement))
            .map(|statement| (statement, Vec::new()))
            .collect();
        if !then.is_empty() {
            statements.push((then.to_string(), params.to_vec()));
        }
        self.batch(&statements, limit)
    }

    /// The runtime's own statement (BEGIN, COMMIT): the authorizer lets it through.
    fn runtime<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<T> {
        let role = self.guard.enter(SqlRole::Runtime);
        let result = f(&self.conn);
        self.guard.enter(role);
        result
    }

    /// One user statement.
    fn run(&self, sql: &str, bindings: &[SqlValue]) -> Result<D1Result> {
        let guard = &self.guard;
        let conn = &self.conn;
        if sql.trim().is_empty() {
            return Err(StorageError::Refused(NO_STATEMENTS.into()));
        }
        if sql.len() > MAX_SQL_BYTES as usize {
            return Err(StorageError::Refused(
                "statement too long: SQLITE_TOOBIG".into(),
            ));
        }
        if is_only_comments(sql) {
            return Err(StorageError::Refused(NO_STATEMENT.into()));
        }
        // User statements are cached apart from the runtime's (each is authorized once,
        // when prepared, under the role it was prepared for).
        let tagged = format!("{sql}\n/* dorun:user */");
        // Several statements (a `;` with more after it, outside strings and comments as
        // SQLite's tokenizer tells) run one by one: a later one may use what an earlier
        // one creates, so they cannot all be prepared first.
        if has_inner_semicolon(sql) {
            let statements: Vec<String> = split_statements(conn, sql)?
                .into_iter()
                .filter(|statement| !is_only_comments(statement))
                .collect();
            if statements.len() > 1 {
                return self.run_several(&statements, bindings);
            }
        }
        let mut statement = conn.prepare_cached(&tagged).map_err(|e| guard.error(e))?;
        if statement.parameter_count() != bindings.len() {
            return Err(StorageError::Refused(
                "Wrong number of parameter bindings for SQL query.".into(),
            ));
        }
        let changes_before = conn.total_changes();
        let readonly = statement.readonly();
        let schema_before = if readonly { 0 } else { self.schema_version()? };
        let columns: Vec<String> = statement.column_names().map(|c| c.to_string()).collect();
        let rows = statement
            .query(params_from_iter(bindings.iter().map(to_sql_value)))
            .map_err(|e| guard.error(e))?;
        let rows_out = collect_rows(rows, columns.len(), |e| guard.error(e))?;
        drop(statement);
        let written = conn.total_changes().saturating_sub(changes_before);
        let changed_schema = !readonly && self.schema_version()? != schema_before;
        Ok(D1Result {
            columns,
            rows_read: rows_out.len() as u64,
            rows: rows_out,
            // Rows this statement changed; a CREATE or DROP changes none.
            changes: if readonly || changed_schema {
                0
            } else {
                written
            },
            last_row_id: conn.last_insert_rowid(),
            rows_written: written,
            changed_schema,
        })
    }

    /// Several statements in one `prepare()`, as D1 takes them: run in order (inside the
    /// caller's transaction: all or nothing), the bindings going to the last; the last one's
    /// rows, with the changes and rows all of them read and wrote.
    fn run_several(&self, statements: &[String], bindings: &[SqlValue]) -> Result<D1Result> {
        let Some((last, before)) = statements.split_last() else {
            return Err(StorageError::Refused(NO_STATEMENT.into()));
        };
        let (mut read, mut written, mut changes, mut schema) = (0, 0, 0, false);
        for statement in before {
            let result = self.run(statement, &[])?;
            read += result.rows_read;
            written += result.rows_written;
            changes += result.changes;
            schema |= result.changed_schema;
        }
        let mut result = self.run(last, bindings)?;
        result.rows_read += read;
        result.rows_written += written;
        result.changes += changes;
        result.changed_schema |= schema;
        Ok(result)
    }

    /// The user's tables with their row counts (the admin's view).
    pub fn tables(&self) -> Result<Vec<(String, u64)>> {
        let role = self.guard.enter(SqlRole::Runtime);
        let result = (|| {
            let names: Vec<String> = self
                .conn
                .prepare(
                    "SELECT name FROM sqlite_master WHERE type = 'table' \
                     AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
                )?
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut tables = Vec::with_capacity(names.len());
            for name in names {
                let quoted = format!("\"{}\"", name.replace('"', "\"\""));
                let rows: i64 =
                    self.conn
                        .query_row(&format!("SELECT count(*) FROM {quoted}"), [], |row| {
                            row.get(0)
                        })?;
                tables.push((name, rows as u64));
            }
            Ok(tables)
        })();
        self.guard.enter(role);
        result
    }

    /// Deletes every row of every table but `keep` (the admin's reset: the data goes, the
    /// schema and the record of applied migrations stay), in one transaction. Returns how
    /// many rows were deleted.
    pub fn clear_rows(&mut self, keep: &[&str]) -> Result<u64> {
        let tables = self.tables()?;
        let role = self.guard.enter(SqlRole::Runtime);
        let result = (|| {
            self.conn
                .execute_batch("BEGIN IMMEDIATE; PRAGMA defer_foreign_keys = ON")?;
            let mut deleted = 0u64;
            for (name, _) in tables
                .iter()
                .filter(|(name, _)| !keep.contains(&name.as_str()))
            {
                let quoted = format!("\"{}\"", name.replace('"', "\"\""));
                deleted += self.conn.execute(&format!("DELETE FROM {quoted}"), [])? as u64;
            }
            self.conn.execute_batch("COMMIT")?;
            Ok(deleted)
        })();
        if result.is_err() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.guard.enter(role);
        result
    }

    fn schema_version(&self) -> Result<i64> {
        let role = self.guard.enter(SqlRole::Runtime);
        let version = self
            .conn
            .query_row("PRAGMA schema_version", [], |row| row.get::<_, i64>(0));
        self.guard.enter(role);
        Ok(version?)
    }

    /// The file's size in bytes (`meta.size_after`).
    pub fn size(&self) -> Result<u64> {
        let role = self.guard.enter(SqlRole::Runtime);
        let size = self.conn.query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |row| row.get::<_, i64>(0),
        );
        self.guard.enter(role);
        Ok(size? as u64)
    }
}

/// Whether `sql` has a `;` with something other than whitespace, `;` and comments after it
/// (a cheap scan; strings are not told apart, so a yes is checked with SQLite's tokenizer).
fn has_inner_semicolon(sql: &str) -> bool {
    let mut rest = sql;
    while let Some(at) = rest.find(';') {
        rest = &rest[at + 1..];
        if !is_only_comments(rest) {
            return true;
        }
    }
    false
}

/// Whether `statement` holds nothing but comments, whitespace and semicolons.
fn is_only_comments(statement: &str) -> bool {
    let mut rest = statement.trim();
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, next)| next);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, next)| next);
        } else {
            return rest.is_empty();
        }
    }
}

/// The message of a failed query as D1 words it: SQLite's text (with the offset of a
/// statement that would not compile) and its result code's name, and the extended code's
/// when it says more.
pub fn d1_message(error: &StorageError) -> String {
    match error {
        StorageError::Sqlite(rusqlite::Error::SqlInputError {
            msg, offset, error, ..
        }) => {
            format!(
                "{msg} at offset {offset}: {}",
                code_names(error.extended_code)
            )
        }
        StorageError::Sqlite(rusqlite::Error::SqliteFailure(failure, text)) => {
            let code = code_names(failure.extended_code);
            match text {
                Some(text) => format!("{text}: {code}"),
                None => format!("{failure}: {code}"),
            }
        }
        other => other.to_string(),
    }
}

/// `SQLITE_<PRIMARY>`, with ` (extended: SQLITE_<EXTENDED>)` when the code has one.
fn code_names(code: i32) -> String {
    use rusqlite::ffi;
    let primary = match code & 0xff {
        ffi::SQLITE_CONSTRAINT => "SQLITE_CONSTRAINT",
        ffi::SQLITE_AUTH => "SQLITE_AUTH",
        ffi::SQLITE_TOOBIG => "SQLITE_TOOBIG",
        ffi::SQLITE_RANGE => "SQLITE_RANGE",
        ffi::SQLITE_INTERRUPT => "SQLITE_INTERRUPT",
        ffi::SQLITE_BUSY => "SQLITE_BUSY",
        ffi::SQLITE_MISMATCH => "SQLITE_MISMATCH",
        _ => "SQLITE_ERROR",
    };
    let extended = match code {
        ffi::SQLITE_CONSTRAINT_CHECK => "SQLITE_CONSTRAINT_CHECK",
        ffi::SQLITE_CONSTRAINT_FOREIGNKEY => "SQLITE_CONSTRAINT_FOREIGNKEY",
        ffi::SQLITE_CONSTRAINT_NOTNULL => "SQLITE_CONSTRAINT_NOTNULL",
        ffi::SQLITE_CONSTRAINT_PRIMARYKEY => "SQLITE_CONSTRAINT_PRIMARYKEY",
        ffi::SQLITE_CONSTRAINT_TRIGGER => "SQLITE_CONSTRAINT_TRIGGER",
        ffi::SQLITE_CONSTRAINT_UNIQUE => "SQLITE_CONSTRAINT_UNIQUE",
        ffi::SQLITE_CONSTRAINT_DATATYPE => "SQLITE_CONSTRAINT_DATATYPE",
        ffi::SQLITE_CONSTRAINT_ROWID => "SQLITE_CONSTRAINT_ROWID",
        _ => return primary.to_string(),
    };
    format!("{primary} (extended: {extended})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(sql: &str, bindings: Vec<SqlValue>) -> (String, Vec<SqlValue>) {
        (sql.to_string(), bindings)
    }

    const LIMIT: Duration = Duration::from_secs(5);

    #[test]
    fn a_batch_applies_all_or_nothing() {
        let mut db = D1Database::open_in_memory().unwrap();
        db.exec("CREATE TABLE t (x INTEGER UNIQUE)", LIMIT).unwrap();
        let results = db
            .batch(
                &[
                    statement("INSERT INTO t VALUES (?)", vec![SqlValue::Integer(1)]),
                    statement("INSERT INTO t VALUES (?)", vec![SqlValue::Integer(2)]),
                    statement("SELECT count(*) AS n FROM t", vec![]),
                ],
                LIMIT,
            )
            .unwrap();
        assert_eq!(results[1].changes, 1);
        assert_eq!(results[1].last_row_id, 2);
        assert_eq!(results[2].rows, vec![vec![SqlValue::Integer(2)]]);
        let failed = db.batch(
            &[
                statement("INSERT INTO t VALUES (3)", vec![]),
                statement("INSERT INTO t VALUES (1)", vec![]),
            ],
            LIMIT,
        );
        assert!(failed.is_err());
        let count = db
            .batch(&[statement("SELECT count(*) FROM t", vec![])], LIMIT)
            .unwrap();
        assert_eq!(
            count[0].rows,
            vec![vec![SqlValue::Integer(2)]],
            "3 was rolled back"
        );
    }

    #[test]
    fn user_sql_stays_in_the_sandbox_and_stops_at_its_deadline() {
        let mut db = D1Database::open_in_memory().unwrap();
        for sql in [
            "ATTACH DATABASE 'x.db' AS x",
            "BEGIN",
            "PRAGMA writable_schema = ON",
        ] {
            assert!(db.exec(sql, LIMIT).is_err(), "{sql}");
        }
        let started = Instant::now();
        let error = db
            .exec(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c",
                Duration::from_millis(200),
            )
            .unwrap_err();
        assert!(error.to_string().contains("interrupted"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        // The next query runs normally.
        assert_eq!(db.exec("CREATE TABLE ok (x)", LIMIT).unwrap(), 1);
    }
}
