//! Group commit for the files the storage bindings share between requests (a KV namespace,
//! a D1 database, an R2 bucket's index). Each write is queued; whoever holds the file's
//! lock next runs every queued write in one transaction, each in its own savepoint (a
//! failing write leaves the others), and commits once: one fsync for all of them instead
//! of one each. A write's answer is sent only after that commit, so an acknowledged write
//! is as durable as before. With nobody else writing, a write runs alone, as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Mutex;

use crate::{Result, StorageError};

/// A database a group of writes can wrap in a transaction.
pub trait Transactional {
    /// Runs one of the runtime's own control statements (BEGIN, SAVEPOINT, COMMIT...).
    fn control(&self, sql: &str) -> rusqlite::Result<()>;
    /// Whether a transaction is open (SQLite rolls one back by itself on some errors, e.g.
    /// an interrupted write).
    fn in_transaction(&self) -> bool;
}

/// One queued write: what it does to the database, and where its answer goes.
type Job<T, R> = (
    Box<dyn FnOnce(&mut T) -> Result<R> + Send>,
    SyncSender<Result<R>>,
);

/// The writes waiting for one file.
pub struct Group<T, R> {
    queue: Mutex<Vec<Job<T, R>>>,
    /// Transactions run (a write alone counts as one).
    commits: AtomicU64,
}

impl<T: Transactional, R> Default for Group<T, R> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            commits: AtomicU64::new(0),
        }
    }
}

impl<T: Transactional, R> Group<T, R> {
    /// How many writes are waiting.
    pub fn queued(&self) -> usize {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// How many transactions ran so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `write` on the database behind `db`, committed together with the writes queued
    /// meanwhile. Blocks (call it on a blocking thread) until it is committed or failed.
    pub fn write(
        &self,
        db: &Mutex<T>,
        write: impl FnOnce(&mut T) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        let (tx, rx) = sync_channel(1);
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((Box::new(write), tx));
        {
            let mut db = db.lock().unwrap_or_else(|p| p.into_inner());
            let jobs = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
            // Empty: a writer that held the lock before took ours along and answered it.
            if !jobs.is_empty() {
                self.commits.fetch_add(1, Ordering::Relaxed);
                run(&mut *db, jobs);
            }
        }
        rx.recv().unwrap_or_else(|_| {
            Err(StorageError::Refused(
                "the write was lost with the thread that ran it".into(),
            ))
        })
    }
}

fn run<T: Transactional, R>(db: &mut T, mut jobs: Vec<Job<T, R>>) {
    if jobs.len() == 1 {
        let (job, tx) = jobs.pop().expect("one job");
        let _ = tx.send(job(db));
        return;
    }
    if let Err(error) = db.control("BEGIN IMMEDIATE") {
        let message = error.to_string();
        for (_, tx) in jobs {
            let _ = tx.send(Err(StorageError::Busy(message.clone())));
        }
        return;
    }
    let mut done = Vec::with_capacity(jobs.len());
    let mut jobs = jobs.into_iter();
    while let Some((job, tx)) = jobs.next() {
        let result = match db.control("SAVEPOINT dorun_group") {
            Ok(()) => {
                let result = job(db);
                if result.is_err() {
                    let _ = db.control("ROLLBACK TO dorun_group");
                }
                let _ = db.control("RELEASE dorun_group");
                result
            }
            Err(error) => Err(error.into()),
        };
        done.push((result, tx));
        if !db.in_transaction() {
            // SQLite rolled the whole transaction back (a write was interrupted): what ran
            // before is gone, and those writes fail; the ones not run yet go on anew.
            for (result, tx) in done {
                let _ = tx.send(result.and(Err(StorageError::Refused(
                    "rolled back with another write of its group".into(),
                ))));
            }
            let rest: Vec<_> = jobs.collect();
            if !rest.is_empty() {
                run(db, rest);
            }
            return;
        }
    }
    match db.control("COMMIT") {
        Ok(()) => {
            for (result, tx) in done {
                let _ = tx.send(result);
            }
        }
        Err(error) => {
            let _ = db.control("ROLLBACK");
            let message = error.to_string();
            for (result, tx) in done {
                let _ = tx.send(result.and(Err(StorageError::Refused(message.clone()))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;
    use std::sync::Arc;

    struct Db(Connection);

    impl Transactional for Db {
        fn control(&self, sql: &str) -> rusqlite::Result<()> {
            self.0.execute_batch(sql)
        }

        fn in_transaction(&self) -> bool {
            !self.0.is_autocommit()
        }
    }

    #[test]
    fn concurrent_writes_commit_together_and_a_failing_one_leaves_the_others() {
        let dir = std::env::temp_dir().join(format!("dorun-group-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let conn = Connection::open(dir.join("g.sqlite")).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (x INTEGER UNIQUE)")
            .unwrap();
        let db = Arc::new(Mutex::new(Db(conn)));
        let group: Arc<Group<Db, usize>> = Arc::default();
        // The file is busy while sixteen writers queue up behind it.
        let held = db.lock().unwrap();
        let threads: Vec<_> = (0..16)
            .map(|n| {
                let (db, group) = (db.clone(), group.clone());
                std::thread::spawn(move || {
                    // Writer 7 inserts 1000 twice: its second insert fails, and its
                    // savepoint takes its first one back; the others are committed.
                    group.write(&db, move |db| {
                        if n == 7 {
                            db.0.execute("INSERT INTO t VALUES (1000)", [])?;
                            return Ok(db.0.execute("INSERT INTO t VALUES (1000)", [])?);
                        }
                        Ok(db.0.execute("INSERT INTO t VALUES (?1)", [n])?)
                    })
                })
            })
            .collect();
        while group.queued() < 16 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        drop(held);
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for (n, result) in results.iter().enumerate() {
            assert_eq!(result.is_ok(), n != 7, "writer {n}: {result:?}");
        }
        let db = db.lock().unwrap();
        let count: i64 =
            db.0.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap();
        assert_eq!(count, 15, "writer 7's first insert was rolled back with it");
        assert!(db.0.is_autocommit(), "no transaction is left open");
        assert_eq!(group.commits(), 1, "one transaction for all sixteen");
    }
}
