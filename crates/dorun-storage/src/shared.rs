//! How the files the bindings share between requests (a KV namespace, a queue, a workflow)
//! are opened: WAL, the process's durability, a busy timeout for the other connections of
//! the file, the file's schema, and replication when it is on (`replica::files`).

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use crate::{Durability, Result};

/// How long a writer waits for another connection's write to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens (creating it and its directory if needed) the file at `path`, or a database in
/// memory (tests) when there is none, with `schema` applied.
pub(crate) fn open(
    path: Option<&Path>,
    durability: Durability,
    schema: &str,
) -> Result<Connection> {
    let (mut conn, durability) = match path {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            (Connection::open(path)?, durability)
        }
        None => (Connection::open_in_memory()?, Durability::Off),
    };
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", durability.synchronous())?;
    conn.execute_batch(schema)?;
    if let Some(path) = path {
        crate::replica::files::install(&mut conn, path)?;
    }
    Ok(conn)
}
