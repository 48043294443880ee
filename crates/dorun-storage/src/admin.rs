//! Operator access to an object's file (the admin listener; its SQL is
//! [`ObjectDatabase::admin_exec`]): consistent copies taken with SQLite's online backup while
//! the server keeps writing, restores, and connections closed without a checkpoint for
//! files about to be deleted.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::{ObjectDatabase, Result, StorageError};

impl ObjectDatabase {
    /// Prepares the connection of an object whose files are about to be deleted (the admin's
    /// reset) for closing: uncommitted writes dropped, and no checkpoint or fsync on close,
    /// which would cost a few milliseconds per object for data that is thrown away. Closing
    /// the returned connection writes nothing, so it may be dropped on any thread.
    pub fn discard(mut self) -> Self {
        let _ = self.rollback();
        let _ = self.conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        );
        let _ = self.conn.pragma_update(None, "synchronous", "OFF");
        self
    }
}

impl ObjectDatabase {
    /// Copies this object's committed content to `target` (replaced) with SQLite's online
    /// backup, through this connection: the file is locked by it (see [`ObjectDatabase::open`]),
    /// so a copy of a live object is taken on its own thread. Refused while a transaction
    /// is open, whose writes are not committed yet.
    pub fn snapshot(&self, target: &Path) -> Result<()> {
        if self.in_transaction() || !self.conn.is_autocommit() {
            return Err(StorageError::Busy(
                "the object has a transaction open; try again".to_string(),
            ));
        }
        write_copy(&self.conn, target)
    }
}

impl crate::AlarmIndex {
    /// The index connection, ready to be dropped anywhere: closing it writes nothing (the
    /// admin's reset moves the file away).
    pub fn discard(self) -> Self {
        let _ = self.conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        );
        let _ = self.conn.pragma_update(None, "synchronous", "OFF");
        self
    }
}

/// Copies the database at `source` to `target` (replaced) as one consistent snapshot,
/// with SQLite's online backup: other connections may keep writing to `source`.
pub fn backup(source: &Path, target: &Path) -> Result<()> {
    let from = Connection::open_with_flags(
        source,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    from.busy_timeout(std::time::Duration::from_millis(500))?;
    write_copy(&from, target).map_err(|error| match error {
        StorageError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            StorageError::Busy(
                "the file is locked: a running dorun server has this object open \
                 (copy it through the server's admin listener)"
                    .to_string(),
            )
        }
        other => other,
    })
}

/// A consistent copy of `from`'s database at `target`, written beside it and renamed.
fn write_copy(from: &Connection, target: &Path) -> Result<()> {
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = target.with_extension("sqlite.partial");
    let _ = std::fs::remove_file(&partial);
    {
        let mut to = Connection::open(&partial)?;
        let backup = rusqlite::backup::Backup::new(from, &mut to)?;
        // One step copies every page under one read transaction: a consistent snapshot.
        if let Err(error) = copy_all(&backup) {
            drop(backup);
            drop(to);
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    }
    std::fs::rename(&partial, target)?;
    Ok(())
}

/// Runs `backup` to the end in one step (one read transaction on the source: a consistent
/// snapshot); a source that is locked is an error, not a partial copy.
fn copy_all(backup: &rusqlite::backup::Backup) -> Result<()> {
    match backup.step(-1)? {
        rusqlite::backup::StepResult::Done => Ok(()),
        _ => Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        )
        .into()),
    }
}

/// Writes the snapshot in `source` into the live database at `target` (replacing its
/// content) through SQLite's backup API, so connections to `target` see the new content.
/// `target` is an object's file: opened as its own connection opens it (exclusive).
pub fn restore(source: &Path, target: &Path) -> Result<()> {
    restore_into(source, target, true)
}

/// As `restore`, for a file other processes may hold open at the same time (a KV
/// namespace, a D1 database, an R2 bucket's index): waits its turn for their locks.
pub fn restore_shared(source: &Path, target: &Path) -> Result<()> {
    restore_into(source, target, false)
}

fn restore_into(source: &Path, target: &Path, exclusive: bool) -> Result<()> {
    let from = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut to = Connection::open(target)?;
    to.busy_timeout(std::time::Duration::from_secs(5))?;
    if exclusive {
        // As the object's own connection opens it (no -shm file).
        to.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    }
    to.pragma_update(None, "journal_mode", "WAL")?;
    {
        let backup = rusqlite::backup::Backup::new(&from, &mut to)?;
        copy_all(&backup)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Durability;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("dorun-admin-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_live_object_is_copied_through_its_own_connection_and_only_between_transactions() {
        let dir = scratch("backup");
        let path = dir.join("a.sqlite");
        let mut db = ObjectDatabase::open(&path, Durability::Full).unwrap();
        db.kv_put("committed", b"1").unwrap();
        db.commit().unwrap();
        db.kv_put("pending", b"2").unwrap();
        let copy = dir.join("copy.sqlite");
        let refused = db.snapshot(&copy).unwrap_err();
        assert!(matches!(refused, StorageError::Busy(_)), "{refused}");
        // Another connection cannot read the file while the object has it open.
        let locked = backup(&path, &copy).unwrap_err().to_string();
        assert!(locked.contains("running dorun server"), "{locked}");
        db.rollback().unwrap();
        db.snapshot(&copy).unwrap();
        let mut restored = ObjectDatabase::open(&copy, Durability::Full).unwrap();
        assert_eq!(restored.kv_get("committed").unwrap(), Some(b"1".to_vec()));
        assert_eq!(restored.kv_get("pending").unwrap(), None);
        drop(restored);
        drop(db);
        // Closed: an offline copy of the file works, and restores into a new file.
        let offline = dir.join("offline.sqlite");
        backup(&path, &offline).unwrap();
        let target = dir.join("b.sqlite");
        restore(&offline, &target).unwrap();
        assert!(
            !dir.join("b.sqlite-shm").exists(),
            "restored without a -shm file"
        );
        let mut back = ObjectDatabase::open(&target, Durability::Full).unwrap();
        assert_eq!(back.kv_get("committed").unwrap(), Some(b"1".to_vec()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
