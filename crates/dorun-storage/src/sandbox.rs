//! The SQL sandbox of an object: Cloudflare's limits, the authorizer that holds user SQL
//! to them (no transactions, only allowed PRAGMAs, no `_cf_*` names, no ATTACH or TEMP),
//! the roles whose SQL it judges, and the splitter that cuts `sql.exec`'s text into
//! statements.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::Connection;

use crate::{Result, SqlValue, StorageError};

/// Cloudflare's limits for SQL on Durable Objects, applied as SQLite's own limits.
/// A string, BLOB or row: 2 MB.
pub const MAX_VALUE_BYTES: i32 = 2_000_000;
/// The text of one SQL statement: 100 KB.
pub const MAX_SQL_BYTES: i32 = 100_000;
/// Columns of a table: 100.
pub const MAX_COLUMNS: i32 = 100;
/// Bound parameters of one statement: 100.
pub const MAX_BOUND_PARAMETERS: i32 = 100;
/// Terms of one compound SELECT: 5 (as in workerd).
pub const MAX_COMPOUND_SELECT: i32 = 5;
/// The rows of one `sql.exec`, in bytes of values: results are materialised before they
/// cross into JS, so one query may not hold more memory than this.
pub const MAX_RESULT_BYTES: usize = 64 << 20;
/// SQLite VM steps between checks of the interrupt flag (a few microseconds of work).
pub(crate) const INTERRUPT_CHECK_STEPS: i32 = 1000;

/// PRAGMAs user SQL may run, as Cloudflare allows them (workerd's list). `page_size` may
/// only be read.
const ALLOWED_PRAGMAS: &[&str] = &[
    "data_version",
    "table_info",
    "table_xinfo",
    "table_list",
    "case_sensitive_like",
    "foreign_keys",
    "defer_foreign_keys",
    "ignore_check_constraints",
    "legacy_alter_table",
    "recursive_triggers",
    "reverse_unordered_selects",
    "foreign_key_check",
    "foreign_key_list",
    "index_info",
    "index_list",
    "index_xinfo",
    "quick_check",
    "optimize",
];

/// SQL functions user SQL may call, as Cloudflare allows them (workerd's list, by family).
/// Anything else, e.g. `sqlite_version()` or `sqlite_source_id()` (build details), fails
/// with SQLite's "not authorized to use function: <name>".
const ALLOWED_FUNCTIONS: &[&[&str]] = &[
    // Core scalar functions.
    &[
        "abs",
        "changes",
        "char",
        "coalesce",
        "concat",
        "concat_ws",
        "format",
        "glob",
        "hex",
        "ifnull",
        "iif",
        "instr",
        "last_insert_rowid",
        "length",
        "like",
        "likelihood",
        "likely",
        "load_extension",
        "lower",
        "ltrim",
        "max_scalar",
        "min_scalar",
        "nullif",
        "octet_length",
        "printf",
        "quote",
        "random",
        "randomblob",
        "replace",
        "round",
        "rtrim",
        "sign",
        "soundex",
        "substr",
        "substring",
        "total_changes",
        "trim",
        "typeof",
        "unhex",
        "unicode",
        "unlikely",
        "upper",
        "zeroblob",
    ],
    // Date and time.
    &[
        "date",
        "time",
        "datetime",
        "julianday",
        "unixepoch",
        "strftime",
        "timediff",
        "current_date",
        "current_time",
        "current_timestamp",
    ],
    // Aggregates and window functions.
    &[
        "avg",
        "count",
        "group_concat",
        "max",
        "min",
        "string_agg",
        "sum",
        "total",
        "row_number",
        "rank",
        "dense_rank",
        "percent_rank",
        "cume_dist",
        "ntile",
        "lag",
        "lead",
        "first_value",
        "last_value",
        "nth_value",
    ],
    // Math.
    &[
        "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil", "cos", "cosh",
        "degrees", "exp", "floor", "ln", "log", "log2", "mod", "pi", "pow", "radians", "sin",
        "sinh", "sqrt", "tan", "tanh", "trunc",
    ],
    // JSON (`->` and `->>` are functions to the authorizer).
    &[
        "json",
        "json_array",
        "json_array_length",
        "json_extract",
        "->",
        "->>",
        "json_insert",
        "json_object",
        "json_patch",
        "json_remove",
        "json_replace",
        "json_set",
        "json_type",
        "json_valid",
        "json_quote",
        "json_group_array",
        "json_group_object",
        "json_each",
        "json_tree",
    ],
    // FTS5 auxiliary functions, and the ones ALTER TABLE runs.
    &[
        "match",
        "highlight",
        "bm25",
        "snippet",
        "sqlite_rename_column",
        "sqlite_rename_table",
        "sqlite_rename_test",
        "sqlite_drop_column",
        "sqlite_rename_quotefix",
    ],
];

fn allowed_function(name: &str) -> bool {
    ALLOWED_FUNCTIONS
        .iter()
        .any(|family| family.iter().any(|f| f.eq_ignore_ascii_case(name)))
}

pub(crate) const RESULT_TOO_LARGE: &str =
    "SQL query result set is too large to fit in memory. Use LIMIT to read it in parts.";

pub(crate) const TRANSACTION_REFUSED: &str = "To execute a transaction, please use the state.storage.transaction() or state.storage.transactionSync() APIs instead of the SQL BEGIN TRANSACTION or SAVEPOINT statements. The JavaScript API is safer because it will automatically roll back on exceptions, and because it interacts correctly with Durable Objects' automatic atomic write coalescing.";

/// Whose SQL is being prepared: the authorizer lets the runtime's own statements through,
/// holds user SQL to Cloudflare's sandbox, and lets an operator (the admin listener) read
/// reserved tables — but neither user nor operator may open or close transactions, which
/// belong to the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum SqlRole {
    Runtime = 0,
    User = 1,
    Operator = 2,
}

/// What the authorizer needs: whose SQL is being prepared, and why it refused the last
/// statement, when SQLite's "not authorized" is not the message Cloudflare gives.
#[derive(Default)]
pub(crate) struct SqlGuard {
    pub(crate) role: AtomicU8,
    refusal: Mutex<Option<&'static str>>,
}

impl SqlGuard {
    /// Switches to `role`, returning the previous one.
    pub(crate) fn enter(&self, role: SqlRole) -> SqlRole {
        if role != SqlRole::Runtime {
            *self.refusal.lock().unwrap() = None;
        }
        match self.role.swap(role as u8, Ordering::Relaxed) {
            1 => SqlRole::User,
            2 => SqlRole::Operator,
            _ => SqlRole::Runtime,
        }
    }

    pub(crate) fn authorize(&self, context: AuthContext<'_>) -> Authorization {
        let role = self.role.load(Ordering::Relaxed);
        if role == SqlRole::Runtime as u8 {
            return Authorization::Allow;
        }
        match context.action {
            AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => {
                *self.refusal.lock().unwrap() = Some(TRANSACTION_REFUSED);
                Authorization::Deny
            }
            _ if role == SqlRole::User as u8 => authorize_action(&context),
            _ => Authorization::Allow,
        }
    }

    /// The error for a failed user statement: the authorizer's reason if it gave one.
    pub(crate) fn error(&self, error: rusqlite::Error) -> StorageError {
        match self.refusal.lock().unwrap().take() {
            Some(reason) => StorageError::Refused(reason.into()),
            None => error.into(),
        }
    }
}

/// Splits `query` into complete statements with SQLite's own tokenizer.
pub(crate) fn split_statements(conn: &Connection, query: &str) -> Result<Vec<String>> {
    let mut statements = Vec::new();
    let mut rest = query;
    loop {
        let trimmed = rest.trim_start();
        if trimmed.is_empty() {
            break;
        }
        let end = statement_end(trimmed);
        let text = &trimmed[..end];
        if rusqlite::Connection::is_autocommit(conn) || !text.trim().is_empty() {
            let candidate = text.trim();
            if !candidate.is_empty() && candidate != ";" && !is_only_comment(candidate) {
                statements.push(candidate.to_string());
            }
        }
        rest = &trimmed[end..];
    }
    Ok(statements)
}

/// Where a `CREATE TRIGGER` statement is: the `;`s of its body (between BEGIN and the
/// END that closes it, CASE ... END counted) do not end it.
#[derive(Default)]
struct TriggerScan {
    words: usize,
    create: bool,
    trigger: bool,
    in_body: bool,
    case_depth: usize,
}

impl TriggerScan {
    fn word(&mut self, word: &str) {
        self.words += 1;
        let word = word.to_ascii_uppercase();
        if self.words == 1 {
            self.create = word == "CREATE";
        } else if self.create && self.words <= 4 && word == "TRIGGER" {
            self.trigger = true;
        } else if self.trigger {
            match word.as_str() {
                "BEGIN" if !self.in_body => self.in_body = true,
                "CASE" if self.in_body => self.case_depth += 1,
                "END" if self.in_body && self.case_depth > 0 => self.case_depth -= 1,
                "END" if self.in_body => self.in_body = false,
                _ => {}
            }
        }
    }
}

/// Byte offset just past the first complete statement (a `;` outside quotes, comments and
/// a trigger's body).
fn statement_end(sql: &str) -> usize {
    let bytes = sql.as_bytes();
    let mut trigger = TriggerScan::default();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'\'' | b'"' | b'`') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += 1;
                }
            }
            b'[' => {
                while i < bytes.len() && bytes[i] != b']' {
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b';' if !trigger.in_body => return i + 1,
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                trigger.word(&sql[start..i]);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    bytes.len()
}

fn is_only_comment(sql: &str) -> bool {
    let trimmed = sql.trim_end_matches(';').trim();
    trimmed.is_empty()
        || (trimmed.starts_with("--") && !trimmed.contains('\n'))
        || (trimmed.starts_with("/*") && trimmed.ends_with("*/"))
}

/// Bytes a value holds once read (8 for numbers and NULL).
pub(crate) fn value_size(value: &SqlValue) -> usize {
    match value {
        SqlValue::Text(text) => text.len(),
        SqlValue::Blob(blob) => blob.len(),
        _ => 8,
    }
}

fn is_reserved(name: &str) -> bool {
    name.len() >= 4 && name[..4].eq_ignore_ascii_case("_cf_")
}

/// The authorizer for user SQL: no `_cf_*` names, no ATTACH, no TEMP objects, only the
/// allowed PRAGMAs and functions. (Transactions are refused by [`SqlGuard::authorize`].)
fn authorize_action(context: &AuthContext<'_>) -> Authorization {
    match context.action {
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let name = pragma_name.to_ascii_lowercase();
            let allowed = ALLOWED_PRAGMAS.contains(&name.as_str())
                || (name == "page_size" && pragma_value.is_none());
            if allowed {
                Authorization::Allow
            } else {
                Authorization::Deny
            }
        }
        AuthAction::Function { function_name } => {
            if allowed_function(function_name) {
                Authorization::Allow
            } else {
                Authorization::Deny
            }
        }
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => Authorization::Deny,
        AuthAction::Read { table_name, .. }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::CreateTable { table_name }
        | AuthAction::DropTable { table_name }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::Analyze { table_name }
        | AuthAction::CreateIndex { table_name, .. }
        | AuthAction::DropIndex { table_name, .. }
        | AuthAction::CreateTrigger { table_name, .. }
        | AuthAction::DropTrigger { table_name, .. } => {
            if is_reserved(table_name) {
                Authorization::Deny
            } else {
                Authorization::Allow
            }
        }
        AuthAction::CreateView { view_name } | AuthAction::DropView { view_name } => {
            if is_reserved(view_name) {
                Authorization::Deny
            } else {
                Authorization::Allow
            }
        }
        AuthAction::CreateTempTable { .. }
        | AuthAction::CreateTempIndex { .. }
        | AuthAction::CreateTempTrigger { .. }
        | AuthAction::CreateTempView { .. }
        | AuthAction::DropTempTable { .. }
        | AuthAction::DropTempIndex { .. }
        | AuthAction::DropTempTrigger { .. }
        | AuthAction::DropTempView { .. } => Authorization::Deny,
        _ => Authorization::Allow,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use super::*;
    use crate::ObjectDatabase;

    fn db() -> ObjectDatabase {
        ObjectDatabase::open_in_memory().unwrap()
    }

    #[test]
    fn user_sql_cannot_touch_reserved_tables_or_transactions() {
        let mut db = db();
        db.begin_implicit().unwrap();
        db.kv_put("k", b"v").unwrap();
        db.commit().unwrap();
        let error = db.sql_exec("SELECT * FROM _cf_KV", &[]).unwrap_err();
        assert!(
            error.to_string().contains("_cf_KV.key is prohibited"),
            "{error}"
        );
        let error = db.sql_exec("BEGIN TRANSACTION", &[]).unwrap_err();
        assert!(
            error.to_string().contains("state.storage.transaction()"),
            "{error}"
        );
        let error = db.sql_exec("CREATE TABLE _CF_mine (x)", &[]).unwrap_err();
        assert!(error.to_string().contains("not authorized"), "{error}");
    }

    #[test]
    fn user_sql_may_call_only_the_functions_cloudflare_allows() {
        let mut db = db();
        for sql in [
            "SELECT sqlite_version()",
            "SELECT SQLITE_SOURCE_ID()",
            "SELECT sqlite_compileoption_used('THREADSAFE')",
            "SELECT fts5_source_id()",
        ] {
            let error = db.sql_exec(sql, &[]).unwrap_err().to_string();
            assert!(
                error.contains("not authorized to use function"),
                "{sql}: {error}"
            );
        }
        db.sql_exec("CREATE TABLE t (j TEXT, d TEXT)", &[]).unwrap();
        db.sql_exec(
            "INSERT INTO t VALUES (json_object('a', 1), datetime('now'))",
            &[],
        )
        .unwrap();
        let rows = db
            .sql_exec(
                "SELECT j ->> '$.a', upper('x'), count(*) OVER (), round(pi(), 2), \
                 unixepoch(d) > 0 FROM t",
                &[],
            )
            .unwrap();
        assert_eq!(rows.rows.len(), 1, "{rows:?}");
        // The runtime's own statements are not held to the list.
        let version: String = db
            .conn
            .query_row("SELECT sqlite_version()", [], |r| r.get(0))
            .unwrap();
        assert!(version.starts_with('3'), "{version}");
    }

    #[test]
    fn transactions_are_refused_by_the_authorizer_whatever_comes_first() {
        let mut db = db();
        db.sql_exec("CREATE TABLE t (x)", &[]).unwrap();
        db.commit().unwrap();
        for sql in [
            "/**/BEGIN",
            "/* c */ COMMIT",
            "/**/SAVEPOINT s",
            "-- note\nROLLBACK",
            "INSERT INTO t VALUES (1); /**/COMMIT",
        ] {
            let error = db.sql_exec(sql, &[]).unwrap_err();
            assert!(
                error.to_string().contains("state.storage.transaction()"),
                "{sql}: {error}"
            );
        }
        // The implicit transaction is still the runtime's: it rolls back as a whole.
        assert!(db.in_transaction());
        db.rollback().unwrap();
        let count = db.sql_exec("SELECT count(*) FROM t", &[]).unwrap();
        assert_eq!(count.rows, vec![vec![SqlValue::Integer(0)]]);
        // Writes after a refused statement still work.
        db.sql_exec("INSERT INTO t VALUES (2)", &[]).unwrap();
        db.commit().unwrap();
    }

    #[test]
    fn the_operator_reads_reserved_tables_but_cannot_open_transactions() {
        let mut db = db();
        db.begin_implicit().unwrap();
        db.kv_put("k", b"v").unwrap();
        db.commit().unwrap();
        let rows = db.admin_exec("SELECT key FROM _cf_KV").unwrap().rows;
        assert_eq!(rows, vec![vec![SqlValue::Text("k".into())]]);
        let error = db.admin_exec("/**/BEGIN").unwrap_err();
        assert!(
            error.to_string().contains("state.storage.transaction()"),
            "{error}"
        );
        // And user SQL is back in its sandbox afterwards.
        assert!(db.sql_exec("SELECT key FROM _cf_KV", &[]).is_err());
    }

    #[test]
    fn user_sql_spelled_like_a_cached_runtime_statement_is_still_authorized() {
        let mut db = db();
        db.begin_implicit().unwrap();
        db.kv_put("k", b"v").unwrap();
        db.commit().unwrap();
        // The runtime's own statement, now in the connection's statement cache.
        assert_eq!(db.kv_get("k").unwrap(), Some(b"v".to_vec()));
        let error = db
            .sql_exec(
                "SELECT value FROM _cf_KV WHERE key = ?1",
                &[SqlValue::Text("k".into())],
            )
            .unwrap_err();
        assert!(error.to_string().contains("prohibited"), "{error}");
    }

    #[test]
    fn a_trigger_with_a_body_of_several_statements_is_one_statement() {
        let mut db = db();
        db.sql_exec(
            "CREATE TABLE t (x); CREATE TABLE log (y);
             CREATE TRIGGER keep AFTER INSERT ON t BEGIN
               INSERT INTO log VALUES (CASE WHEN new.x > 1 THEN 'big' ELSE 'small' END);
               INSERT INTO log VALUES ('end; not the end');
             END;
             INSERT INTO t VALUES (2);",
            &[],
        )
        .unwrap();
        let rows = db
            .sql_exec("SELECT y FROM log ORDER BY rowid", &[])
            .unwrap()
            .rows;
        assert_eq!(
            rows,
            vec![
                vec![SqlValue::Text("big".into())],
                vec![SqlValue::Text("end; not the end".into())],
            ]
        );
    }

    #[test]
    fn only_allowed_pragmas_run() {
        let mut db = db();
        db.sql_exec("CREATE TABLE t (x)", &[]).unwrap();
        for sql in [
            "PRAGMA table_info(t)",
            "PRAGMA foreign_keys = OFF",
            "PRAGMA page_size",
            "PRAGMA quick_check",
        ] {
            db.sql_exec(sql, &[])
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        for sql in [
            "PRAGMA writable_schema = ON",
            "PRAGMA page_size = 8192",
            "PRAGMA journal_mode = DELETE",
            "/**/ PRAGMA synchronous = OFF",
            "PRAGMA database_list",
        ] {
            let error = db.sql_exec(sql, &[]).unwrap_err();
            assert!(
                error.to_string().contains("not authorized"),
                "{sql}: {error}"
            );
        }
    }

    #[test]
    fn values_and_results_obey_cloudflare_sizes() {
        let mut db = db();
        db.sql_exec("CREATE TABLE b (v)", &[]).unwrap();
        let error = db
            .sql_exec("INSERT INTO b VALUES (randomblob(3000000))", &[])
            .unwrap_err();
        assert!(error.to_string().contains("too big"), "{error}");
        db.sql_exec("INSERT INTO b VALUES (randomblob(1900000))", &[])
            .unwrap();
        let error = db
            .sql_exec(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 40) \
                 SELECT v FROM b, c",
                &[],
            )
            .unwrap_err();
        assert!(error.to_string().contains("too large"), "{error}");
    }

    #[test]
    fn a_set_interrupt_flag_stops_a_statement_that_never_ends() {
        let mut db = db();
        let flag = Arc::new(AtomicBool::new(false));
        db.interrupt_when(flag.clone()).unwrap();
        let setter = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            flag.store(true, Ordering::Relaxed);
        });
        let error = db
            .sql_exec(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) \
                 SELECT count(*) FROM c",
                &[],
            )
            .unwrap_err();
        setter.join().unwrap();
        assert!(error.to_string().contains("interrupted"), "{error}");
    }
}
