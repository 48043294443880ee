//! Operator access to an object's file (the admin listener; its SQL is
//! [`ObjectDatabase::admin_exec`]): consistent copies taken with SQLite's online backup while
//! the server keeps writing, restores, and connections closed without a checkpoint for
//! files about to be deleted.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use crate::{ObjectDatabase, Result};

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
    from.busy_timeout(std::time::Duration::from_secs(5))?;
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = target.with_extension("sqlite.partial");
    let _ = std::fs::remove_file(&partial);
    {
        let mut to = Connection::open(&partial)?;
        let backup = rusqlite::backup::Backup::new(&from, &mut to)?;
        // One step copies every page under one read transaction: a consistent snapshot.
        backup.step(-1)?;
    }
    std::fs::rename(&partial, target)?;
    Ok(())
}

/// Writes the snapshot in `source` into the live database at `target` (replacing its
/// content) through SQLite's backup API, so connections to `target` see the new content.
pub fn restore(source: &Path, target: &Path) -> Result<()> {
    let from = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut to = Connection::open(target)?;
    to.busy_timeout(std::time::Duration::from_secs(5))?;
    to.pragma_update(None, "journal_mode", "WAL")?;
    {
        let backup = rusqlite::backup::Backup::new(&from, &mut to)?;
        backup.step(-1)?;
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
    fn a_backup_taken_while_a_connection_holds_uncommitted_writes_has_the_committed_state() {
        let dir = scratch("backup");
        let path = dir.join("a.sqlite");
        let mut db = ObjectDatabase::open(&path, Durability::Full).unwrap();
        db.kv_put("committed", b"1").unwrap();
        db.commit().unwrap();
        db.kv_put("pending", b"2").unwrap();
        let copy = dir.join("copy.sqlite");
        backup(&path, &copy).unwrap();
        let mut restored = ObjectDatabase::open(&copy, Durability::Full).unwrap();
        assert_eq!(restored.kv_get("committed").unwrap(), Some(b"1".to_vec()));
        assert_eq!(restored.kv_get("pending").unwrap(), None);
        drop(db);
        let target = dir.join("b.sqlite");
        restore(&copy, &target).unwrap();
        let mut back = ObjectDatabase::open(&target, Durability::Full).unwrap();
        assert_eq!(back.kv_get("committed").unwrap(), Some(b"1".to_vec()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
