//! `dorun d1`: a project's D1 workflow against the local database files, as `wrangler d1
//! ... --local` runs it: `execute` (`--command` or `--file`), `migrations list|apply`
//! (wrangler's `migrations_dir` and `d1_migrations` table), and `export` (SQL text that
//! `wrangler d1 execute --file` accepts). Safe while `dorun serve` runs: SQLite's WAL and
//! busy timeout order the writers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use dorun_runtime::d1_binding::database_file;
use dorun_storage::{d1_message, D1Database, Durability, SqlValue};

use crate::config::{self, D1DatabaseConfig, LoadOptions, UnsupportedBindings};

/// How long one command's SQL may run.
const LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, Args)]
pub struct D1Args {
    #[command(subcommand)]
    pub command: D1Command,
}

#[derive(Debug, Subcommand)]
pub enum D1Command {
    /// Run SQL on a database: statements from --command or --file, in one transaction.
    Execute {
        #[command(flatten)]
        target: Target,
        /// The SQL to run.
        #[arg(long, conflicts_with = "file")]
        command: Option<String>,
        /// A file of SQL to run.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Print the rows as JSON (as `wrangler d1 execute --json`).
        #[arg(long)]
        json: bool,
    },
    /// The database's migrations: which are applied, and applying the rest.
    Migrations {
        #[command(subcommand)]
        command: MigrationsCommand,
    },
    /// Write the database as SQL text (schema and rows).
    Export {
        #[command(flatten)]
        target: Target,
        /// Where to write it (default: standard output).
        #[arg(long)]
        output: Option<PathBuf>,
        /// Only the schema.
        #[arg(long, conflicts_with = "no_schema")]
        no_data: bool,
        /// Only the rows.
        #[arg(long)]
        no_schema: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum MigrationsCommand {
    /// List the migrations not applied yet.
    List(Target),
    /// Apply, in order, every migration not applied yet (each in its own transaction).
    Apply(Target),
}

/// Which database: a binding or `database_name` of the config's `d1_databases`.
#[derive(Debug, Args)]
pub struct Target {
    /// The database's `database_name` or `binding`.
    pub database: String,
    /// The wrangler config (default: found in the current directory or a parent).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// The [env.<name>] section to use.
    #[arg(long, short = 'e')]
    pub env: Option<String>,
    /// The data directory [default: .dorun beside the config].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Accepted for wrangler's command lines: dorun's databases are always local.
    #[arg(long, hide = true)]
    pub local: bool,
}

/// A database resolved from the config: its settings and its open file.
struct Opened {
    config: D1DatabaseConfig,
    database: D1Database,
    file: PathBuf,
}

impl Target {
    fn open(&self) -> anyhow::Result<Opened> {
        let config_path = match &self.config {
            Some(path) => path.clone(),
            None => {
                let here = std::env::current_dir()?;
                config::find_config(&here).ok_or_else(|| {
                    anyhow!(
                        "no wrangler config in {} or its parents: pass --config",
                        here.display()
                    )
                })?
            }
        };
        let options = LoadOptions {
            env: self.env.clone(),
            unsupported_bindings: UnsupportedBindings::Warn,
            ..Default::default()
        };
        let worker = config::load(&config_path, &options).map_err(|e| anyhow!("{e}"))?;
        let Some(found) = worker
            .d1_databases
            .iter()
            .find(|d| d.name == self.database || d.binding == self.database)
        else {
            let known: Vec<String> = worker
                .d1_databases
                .iter()
                .map(|d| format!("{} (binding {})", d.name, d.binding))
                .collect();
            bail!(
                "{}: no D1 database '{}' in d1_databases (there: {})",
                config_path.display(),
                self.database,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        };
        let data_dir = match &self.data_dir {
            Some(dir) => dir.clone(),
            None => config_path
                .parent()
                .unwrap_or(Path::new("."))
                .join(".dorun"),
        };
        let file = database_file(&data_dir, &found.name);
        // Changed outside a server: the next `serve --replicate-to` ships it whole.
        dorun_storage::replica::baseline::forget_marker(&data_dir)
            .with_context(|| format!("{}", data_dir.display()))?;
        let database = D1Database::open(&file, Durability::Full)
            .with_context(|| format!("cannot open {}", file.display()))?;
        Ok(Opened {
            config: found.clone(),
            database,
            file,
        })
    }
}

pub fn run(args: D1Args) -> anyhow::Result<()> {
    match args.command {
        D1Command::Execute {
            target,
            command,
            file,
            json,
        } => {
            let sql = match (command, file) {
                (Some(sql), _) => sql,
                (None, Some(file)) => std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?,
                (None, None) => bail!("give the SQL with --command or --file"),
            };
            let mut opened = target.open()?;
            let results = opened
                .database
                .execute_script(&sql, LIMIT)
                .map_err(|e| anyhow!("{}: {}", opened.config.name, d1_message(&e)))?;
            if json {
                let out: Vec<serde_json::Value> = results
                    .iter()
                    .map(|r| {
                        serde_json::json!({
                            "results": rows_json(&r.columns, &r.rows),
                            "success": true,
                            "meta": {"changes": r.changes, "last_row_id": r.last_row_id},
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                let changes: u64 = results.iter().map(|r| r.changes).sum();
                for result in results.iter().filter(|r| !r.columns.is_empty()) {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&rows_json(&result.columns, &result.rows))?
                    );
                }
                eprintln!(
                    "{}: {} statement(s) ran, {changes} row(s) changed ({})",
                    opened.config.name,
                    results.len(),
                    opened.file.display()
                );
            }
            Ok(())
        }
        D1Command::Migrations { command } => match command {
            MigrationsCommand::List(target) => {
                let mut opened = target.open()?;
                let pending = pending_migrations(&mut opened)?;
                if pending.is_empty() {
                    println!("No migrations to apply.");
                }
                for (name, _) in pending {
                    println!("{name}");
                }
                Ok(())
            }
            MigrationsCommand::Apply(target) => {
                let mut opened = target.open()?;
                let pending = pending_migrations(&mut opened)?;
                if pending.is_empty() {
                    println!("No migrations to apply.");
                }
                let table = opened.config.migrations_table.clone();
                for (name, path) in pending {
                    let sql = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let record = format!("INSERT INTO {} (name) VALUES (?)", quote_ident(&table));
                    opened
                        .database
                        .execute_script_then(&sql, &record, &[SqlValue::Text(name.clone())], LIMIT)
                        .map_err(|e| anyhow!("migration {name} failed: {}", d1_message(&e)))?;
                    println!("applied {name}");
                }
                Ok(())
            }
        },
        D1Command::Export {
            target,
            output,
            no_data,
            no_schema,
        } => {
            let mut opened = target.open()?;
            let sql = export(&mut opened.database, !no_schema, !no_data)?;
            match output {
                Some(path) => std::fs::write(&path, sql)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{sql}"),
            }
            Ok(())
        }
    }
}

fn rows_json(columns: &[String], rows: &[Vec<SqlValue>]) -> serde_json::Value {
    serde_json::Value::Array(
        rows.iter()
            .map(|row| {
                serde_json::Value::Object(
                    columns
                        .iter()
                        .zip(row)
                        .map(|(column, value)| (column.clone(), value_json(value)))
                        .collect(),
                )
            })
            .collect(),
    )
}

/// A SQL value as JSON (blobs as arrays of bytes, as D1 gives them).
pub fn value_json(value: &SqlValue) -> serde_json::Value {
    match value {
        SqlValue::Null => serde_json::Value::Null,
        SqlValue::Integer(n) => (*n).into(),
        SqlValue::Real(n) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        SqlValue::Text(text) => text.clone().into(),
        SqlValue::Blob(bytes) => bytes.iter().map(|b| serde_json::Value::from(*b)).collect(),
    }
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The `.sql` files of the migrations directory not recorded as applied, in name order.
fn pending_migrations(opened: &mut Opened) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let dir = &opened.config.migrations_dir;
    let mut files: Vec<(String, PathBuf)> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "sql"))
            .filter_map(|p| Some((p.file_name()?.to_str()?.to_string(), p)))
            .collect(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            bail!("no migrations directory {} (migrations_dir)", dir.display())
        }
        Err(error) => bail!("cannot read {}: {error}", dir.display()),
    };
    files.sort();
    let table = quote_ident(&opened.config.migrations_table);
    let create = format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n    id         INTEGER PRIMARY KEY AUTOINCREMENT,\n    name       TEXT UNIQUE,\n    applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP NOT NULL\n)"
    );
    let results = opened
        .database
        .execute_script(&format!("{create};\nSELECT name FROM {table}"), LIMIT)
        .map_err(|e| anyhow!("{}: {}", opened.config.name, d1_message(&e)))?;
    let applied: Vec<String> = results
        .last()
        .map(|r| {
            r.rows
                .iter()
                .filter_map(|row| match row.first() {
                    Some(SqlValue::Text(name)) => Some(name.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    files.retain(|(name, _)| !applied.contains(name));
    Ok(files)
}

/// The database as SQL text: tables, their rows, then indexes, views and triggers.
fn export(database: &mut D1Database, schema: bool, data: bool) -> anyhow::Result<String> {
    let query = |database: &mut D1Database, sql: &str| {
        database
            .execute_script(sql, LIMIT)
            .map(|mut results| results.pop().map(|r| r.rows).unwrap_or_default())
            .map_err(|e| anyhow!("{}", d1_message(&e)))
    };
    let text = |value: &SqlValue| match value {
        SqlValue::Text(text) => text.clone(),
        _ => String::new(),
    };
    let objects = query(
        database,
        "SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL \
         AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\' \
         ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 ELSE 2 END, rowid",
    )?;
    let mut out = String::from("PRAGMA defer_foreign_keys=TRUE;\n");
    for object in objects.iter().filter(|o| text(&o[0]) == "table") {
        let name = text(&object[1]);
        if schema {
            out.push_str(&text(&object[2]));
            out.push_str(";\n");
        }
        if data {
            let columns = query(
                database,
                &format!("SELECT name FROM pragma_table_info({})", sql_string(&name)),
            )?;
            let quoted: Vec<String> = columns
                .iter()
                .map(|c| format!("quote({})", quote_ident(&text(&c[0]))))
                .collect();
            if quoted.is_empty() {
                continue;
            }
            let rows = query(
                database,
                &format!(
                    "SELECT 'INSERT INTO ' || {} || ' VALUES(' || {} || ');' FROM {}",
                    sql_string(&quote_ident(&name)),
                    quoted.join(" || ',' || "),
                    quote_ident(&name)
                ),
            )?;
            for row in rows {
                out.push_str(&text(&row[0]));
                out.push('\n');
            }
        }
    }
    if schema {
        for object in objects.iter().filter(|o| text(&o[0]) != "table") {
            out.push_str(&text(&object[2]));
            out.push_str(";\n");
        }
    }
    Ok(out)
}

fn sql_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
