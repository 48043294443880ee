//! Workflows (`workflows`): one SQLite file per workflow name
//! (`<data-dir>/workflows/<name>.sqlite`) with its instances, the steps each finished (so a
//! resumed run does not repeat one) and the events sent to them. A person can open it with
//! `sqlite3`: tables `instances`, `steps`, `events`.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::{Durability, Result};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS instances (
                id TEXT PRIMARY KEY,
                params BLOB NOT NULL,
                status TEXT NOT NULL,
                created INTEGER NOT NULL,
                updated INTEGER NOT NULL,
                wake_at INTEGER,
                output BLOB,
                error TEXT
            );
            CREATE INDEX IF NOT EXISTS instances_by_status ON instances (status, wake_at);
            CREATE TABLE IF NOT EXISTS steps (
                instance TEXT NOT NULL,
                key TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                done INTEGER NOT NULL DEFAULT 0,
                result BLOB,
                error TEXT,
                until INTEGER,
                position INTEGER NOT NULL,
                PRIMARY KEY (instance, key)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS events (
                seq INTEGER PRIMARY KEY,
                instance TEXT NOT NULL,
                type TEXT NOT NULL,
                payload BLOB NOT NULL,
                timestamp INTEGER NOT NULL,
                taken_by TEXT
            );
            CREATE INDEX IF NOT EXISTS events_by_instance ON events (instance, type);";

/// An instance as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkflowInstance {
    pub id: String,
    /// `params` of `create()`, V8-serialized.
    pub params: Vec<u8>,
    /// `queued`, `running`, `paused`, `waiting`, `complete`, `errored`, `terminated`.
    pub status: String,
    /// ms since the epoch.
    pub created: i64,
    pub updated: i64,
    /// `waiting`: run again at this time (ms); none: when an event arrives.
    pub wake_at: Option<i64>,
    /// The return value of `run()`, V8-serialized.
    pub output: Option<Vec<u8>>,
    /// `{name, message}` as JSON, for `errored`.
    pub error: Option<String>,
}

/// A step of an instance as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkflowStep {
    pub key: String,
    pub attempts: i64,
    pub done: bool,
    /// Its value, V8-serialized (a `do` step's result, an event).
    pub result: Option<Vec<u8>>,
    /// `{name, message}` as JSON when it failed for good.
    pub error: Option<String>,
    /// A time the step waits for (ms): a sleep's end, an event's deadline.
    pub until: Option<i64>,
}

/// A workflow's file.
pub struct WorkflowDatabase {
    conn: Connection,
}

impl WorkflowDatabase {
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

    /// Stores a new instance, `queued`; false if `id` exists already.
    pub fn create(&self, id: &str, params: &[u8], now: i64) -> Result<bool> {
        let added = self
            .conn
            .prepare_cached(
                "INSERT OR IGNORE INTO instances (id, params, status, created, updated)
                 VALUES (?1, ?2, 'queued', ?3, ?3)",
            )?
            .execute(params![id, params, now])?;
        Ok(added == 1)
    }

    pub fn instance(&self, id: &str) -> Result<Option<WorkflowInstance>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT id, params, status, created, updated, wake_at, output, error
                 FROM instances WHERE id = ?1",
            )?
            .query_row([id], instance_row)
            .optional()?)
    }

    /// Moves instance `id` to `status` if it is in one of `from` (any status when empty);
    /// whether it moved.
    #[allow(clippy::too_many_arguments)]
    pub fn set_status(
        &self,
        id: &str,
        from: &[&str],
        status: &str,
        wake_at: Option<i64>,
        output: Option<&[u8]>,
        error: Option<&str>,
        now: i64,
    ) -> Result<bool> {
        let current: Option<String> = self
            .conn
            .prepare_cached("SELECT status FROM instances WHERE id = ?1")?
            .query_row([id], |row| row.get(0))
            .optional()?;
        let Some(current) = current else {
            return Ok(false);
        };
        if !from.is_empty() && !from.contains(&current.as_str()) {
            return Ok(false);
        }
        self.conn
            .prepare_cached(
                "UPDATE instances SET status = ?2, wake_at = ?3, output = ?4, error = ?5,
                 updated = ?6 WHERE id = ?1",
            )?
            .execute(params![id, status, wake_at, output, error, now])?;
        Ok(true)
    }

    /// Instances to run at `now`: queued or running ones (a run cut short by a crash starts
    /// over), and waiting ones whose time has come.
    pub fn runnable(&self, now: i64, limit: usize) -> Result<Vec<String>> {
        let mut select = self.conn.prepare_cached(
            "SELECT id FROM instances WHERE status IN ('queued', 'running', 'waitingForPause')
                OR (status = 'waiting' AND wake_at IS NOT NULL AND wake_at <= ?1)
             ORDER BY updated LIMIT ?2",
        )?;
        let ids = select
            .query_map(params![now, limit as i64], |row| row.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    /// The earliest wake-up time after `now` of a waiting instance.
    pub fn next_wake(&self, now: i64) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT MIN(wake_at) FROM instances WHERE status = 'waiting' AND wake_at > ?1",
            )?
            .query_row([now], |row| row.get(0))?)
    }

    pub fn step(&self, instance: &str, key: &str) -> Result<Option<WorkflowStep>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT key, attempts, done, result, error, until FROM steps
                 WHERE instance = ?1 AND key = ?2",
            )?
            .query_row([instance, key], step_row)
            .optional()?)
    }

    /// Stores (replacing) step `step.key` of `instance`.
    pub fn put_step(&self, instance: &str, step: &WorkflowStep) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO steps (instance, key, attempts, done, result, error, until, position)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,
                   (SELECT COUNT(*) FROM steps WHERE instance = ?1))
                 ON CONFLICT (instance, key) DO UPDATE SET attempts = excluded.attempts,
                   done = excluded.done, result = excluded.result, error = excluded.error,
                   until = excluded.until",
            )?
            .execute(params![
                instance,
                step.key,
                step.attempts,
                step.done,
                step.result,
                step.error,
                step.until
            ])?;
        Ok(())
    }

    /// The steps of `instance` in the order they were first reached.
    pub fn steps(&self, instance: &str) -> Result<Vec<WorkflowStep>> {
        let mut select = self.conn.prepare_cached(
            "SELECT key, attempts, done, result, error, until FROM steps
             WHERE instance = ?1 ORDER BY position",
        )?;
        let steps = select
            .query_map([instance], step_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(steps)
    }

    /// Stores an event sent to `instance`; a waiting instance runs again at once.
    pub fn add_event(&self, instance: &str, kind: &str, payload: &[u8], now: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO events (instance, type, payload, timestamp) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![instance, kind, payload, now])?;
        self.conn
            .prepare_cached(
                "UPDATE instances SET wake_at = ?2 WHERE id = ?1 AND status = 'waiting'",
            )?
            .execute(params![instance, now])?;
        Ok(())
    }

    /// The event of type `kind` that step `key` waits for: the one it took before (a replay),
    /// else the oldest one nobody took, now taken by it.
    pub fn take_event(
        &self,
        instance: &str,
        kind: &str,
        key: &str,
    ) -> Result<Option<(Vec<u8>, i64)>> {
        let taken = self
            .conn
            .prepare_cached(
                "SELECT payload, timestamp FROM events WHERE instance = ?1 AND taken_by = ?2",
            )?
            .query_row([instance, key], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        if taken.is_some() {
            return Ok(taken);
        }
        let free: Option<(i64, Vec<u8>, i64)> = self
            .conn
            .prepare_cached(
                "SELECT seq, payload, timestamp FROM events
                 WHERE instance = ?1 AND type = ?2 AND taken_by IS NULL ORDER BY seq LIMIT 1",
            )?
            .query_row([instance, kind], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?))
            })
            .optional()?;
        let Some((seq, payload, timestamp)) = free else {
            return Ok(None);
        };
        self.conn
            .prepare_cached("UPDATE events SET taken_by = ?2 WHERE seq = ?1")?
            .execute(params![seq, key])?;
        Ok(Some((payload, timestamp)))
    }

    /// Resumes a paused instance: queued again, and its unfinished sleeps end later by as
    /// long as it was paused (the time of the pause is its `wake_at`). Whether it was paused.
    pub fn resume(&self, instance: &str, now: i64) -> Result<bool> {
        let paused_at: Option<Option<i64>> = self
            .conn
            .prepare_cached("SELECT wake_at FROM instances WHERE id = ?1 AND status = 'paused'")?
            .query_row([instance], |row| row.get(0))
            .optional()?;
        let Some(paused_at) = paused_at else {
            return Ok(false);
        };
        if let Some(at) = paused_at {
            self.conn
                .prepare_cached(
                    "UPDATE steps SET until = until + ?2 WHERE instance = ?1 AND done = 0
                     AND until IS NOT NULL AND key LIKE 'sleep:%'",
                )?
                .execute(params![instance, (now - at).max(0)])?;
        }
        self.set_status(instance, &["paused"], "queued", None, None, None, now)
    }

    /// Forgets what `instance` did (its steps; events it took are free again) and queues it.
    pub fn restart(&self, instance: &str, now: i64) -> Result<bool> {
        self.conn
            .prepare_cached("DELETE FROM steps WHERE instance = ?1")?
            .execute([instance])?;
        self.conn
            .prepare_cached("UPDATE events SET taken_by = NULL WHERE instance = ?1")?
            .execute([instance])?;
        self.set_status(instance, &[], "queued", None, None, None, now)
    }

    /// The newest `limit` instances.
    pub fn list(&self, limit: usize) -> Result<Vec<WorkflowInstance>> {
        let mut select = self.conn.prepare_cached(
            "SELECT id, params, status, created, updated, wake_at, output, error
             FROM instances ORDER BY created DESC, id LIMIT ?1",
        )?;
        let list = select
            .query_map([limit as i64], instance_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(list)
    }

    /// Instances by status.
    pub fn counts(&self) -> Result<Vec<(String, i64)>> {
        let mut select = self.conn.prepare_cached(
            "SELECT status, COUNT(*) FROM instances GROUP BY status ORDER BY status",
        )?;
        let counts = select
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(counts)
    }

    /// Deletes every instance, step and event; how many instances.
    pub fn clear(&self) -> Result<u64> {
        self.conn.execute("DELETE FROM steps", [])?;
        self.conn.execute("DELETE FROM events", [])?;
        Ok(self.conn.execute("DELETE FROM instances", [])? as u64)
    }
}

fn instance_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<WorkflowInstance> {
    Ok(WorkflowInstance {
        id: row.get(0)?,
        params: row.get(1)?,
        status: row.get(2)?,
        created: row.get(3)?,
        updated: row.get(4)?,
        wake_at: row.get(5)?,
        output: row.get(6)?,
        error: row.get(7)?,
    })
}

fn step_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<WorkflowStep> {
    Ok(WorkflowStep {
        key: row.get(0)?,
        attempts: row.get(1)?,
        done: row.get(2)?,
        result: row.get(3)?,
        error: row.get(4)?,
        until: row.get(5)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_steps_and_events_keep_what_a_replay_needs() {
        let db = WorkflowDatabase::open_in_memory().unwrap();
        assert!(db.create("a", b"p", 10).unwrap());
        assert!(!db.create("a", b"q", 11).unwrap(), "ids are unique");
        assert_eq!(db.runnable(10, 10).unwrap(), ["a"]);
        db.put_step(
            "a",
            &WorkflowStep {
                key: "do:x#1".into(),
                attempts: 1,
                done: true,
                result: Some(b"r".to_vec()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(db
            .set_status(
                "a",
                &["running", "queued"],
                "waiting",
                Some(50),
                None,
                None,
                12
            )
            .unwrap());
        assert!(db.runnable(20, 10).unwrap().is_empty());
        assert_eq!(db.next_wake(20).unwrap(), Some(50));
        assert_eq!(db.runnable(50, 10).unwrap(), ["a"]);
        // A paused instance does not move to waiting behind the pause's back.
        db.set_status("a", &[], "paused", None, None, None, 13)
            .unwrap();
        assert!(!db
            .set_status("a", &["running"], "waiting", Some(60), None, None, 14)
            .unwrap());
        // Events: the step that took one gets the same one on a replay.
        db.add_event("a", "go", b"1", 20).unwrap();
        db.add_event("a", "go", b"2", 21).unwrap();
        assert_eq!(db.take_event("a", "go", "k1").unwrap().unwrap().0, b"1");
        assert_eq!(db.take_event("a", "go", "k1").unwrap().unwrap().0, b"1");
        assert_eq!(db.take_event("a", "go", "k2").unwrap().unwrap().0, b"2");
        assert_eq!(db.take_event("a", "go", "k3").unwrap(), None);
        assert!(db.restart("a", 30).unwrap());
        assert!(db.steps("a").unwrap().is_empty());
        assert_eq!(db.take_event("a", "go", "k9").unwrap().unwrap().0, b"1");
        assert_eq!(db.instance("a").unwrap().unwrap().status, "queued");
    }
}
