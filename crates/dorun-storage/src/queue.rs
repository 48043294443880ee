//! Queues (`queues.producers` / `queues.consumers`): one SQLite file per queue
//! (`<data-dir>/queues/<queue>.sqlite`), shared by every worker that sends to or consumes
//! from it. A person can open it with `sqlite3` and read table `messages`.
//!
//! A message stays in the file from the commit of its `send` until its consumer acks it
//! (or it is moved to a dead-letter queue, or dropped after its last retry). Which messages
//! are being delivered right now is not stored: after a crash every message left in the
//! file is delivered again, so delivery is at least once.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use crate::{Durability, Result};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS messages (
                seq INTEGER PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                body BLOB NOT NULL,
                content_type TEXT NOT NULL,
                timestamp INTEGER NOT NULL,
                visible_at INTEGER NOT NULL,
                failed_attempts INTEGER NOT NULL DEFAULT 0
            );
            CREATE INDEX IF NOT EXISTS messages_by_time ON messages (visible_at, seq);
            CREATE TABLE IF NOT EXISTS counters (
                name TEXT PRIMARY KEY,
                value INTEGER NOT NULL
            ) WITHOUT ROWID;";

/// A message to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    /// 32 hex digits, unique in the queue.
    pub id: String,
    pub body: Vec<u8>,
    /// `v8`, `json`, `text` or `bytes`.
    pub content_type: String,
    /// When it was sent (ms since the epoch); kept when it moves to a dead-letter queue.
    pub timestamp: i64,
    /// Not delivered before this time (ms since the epoch).
    pub visible_at: i64,
}

/// A stored message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueuedMessage {
    /// Order of arrival (the row id).
    pub seq: i64,
    pub id: String,
    pub body: Vec<u8>,
    pub content_type: String,
    pub timestamp: i64,
    pub visible_at: i64,
    /// Deliveries that ended in a retry so far.
    pub failed_attempts: i64,
}

/// What a queue holds, as the admin listener and metrics show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Messages stored.
    pub depth: i64,
    /// Of those, the ones whose delay has passed.
    pub ready: i64,
    /// Bytes of all stored bodies.
    pub bytes: i64,
    /// `timestamp` of the oldest stored message.
    pub oldest: Option<i64>,
    /// Messages ever sent, acked, retried, moved to a dead-letter queue, dropped.
    pub sent: i64,
    pub acked: i64,
    pub retried: i64,
    pub dead_lettered: i64,
    pub dropped: i64,
}

/// How one delivered batch ended, message by message (by `seq`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settlement {
    /// Delivered and done: deleted.
    pub acked: Vec<i64>,
    /// To be delivered again at the given time (ms), one failed attempt more.
    pub retried: Vec<(i64, i64)>,
    /// Out of retries and moved to the dead-letter queue (already stored there): deleted.
    pub dead_lettered: Vec<i64>,
    /// Out of retries with no dead-letter queue: deleted.
    pub dropped: Vec<i64>,
}

/// A queue's file.
pub struct QueueDatabase {
    conn: Connection,
}

impl crate::Transactional for QueueDatabase {
    fn control(&self, sql: &str) -> rusqlite::Result<()> {
        self.conn.execute_batch(sql)
    }

    fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }
}

impl QueueDatabase {
    /// Opens (creating if needed) the queue file at `path`.
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

    fn count(&self, name: &str, by: usize) -> Result<()> {
        if by > 0 {
            self.conn
                .prepare_cached(
                    "INSERT INTO counters (name, value) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                )?
                .execute(params![name, by as i64])?;
        }
        Ok(())
    }

    /// Runs `f` all or nothing: a transaction of its own, or a savepoint inside the
    /// group commit's transaction.
    fn atomically(&self, f: impl FnOnce() -> Result<()>) -> Result<()> {
        self.conn.execute_batch("SAVEPOINT dorun_queue")?;
        let result = f();
        if result.is_err() {
            let _ = self.conn.execute_batch("ROLLBACK TO dorun_queue");
        }
        self.conn.execute_batch("RELEASE dorun_queue")?;
        result
    }

    /// Stores `messages`, all or none (a message whose id is already stored is left as it
    /// is: a dead-letter move repeated after a crash).
    pub fn enqueue(&self, messages: &[NewMessage]) -> Result<()> {
        self.atomically(|| {
            let mut insert = self.conn.prepare_cached(
                "INSERT OR IGNORE INTO messages (id, body, content_type, timestamp, visible_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for m in messages {
                insert.execute(params![
                    m.id,
                    m.body,
                    m.content_type,
                    m.timestamp,
                    m.visible_at
                ])?;
            }
            self.count("sent", messages.len())
        })
    }

    /// Up to `limit` messages visible at `now` (ms) that `skip` does not hold (those being
    /// delivered), oldest first.
    pub fn ready(
        &self,
        now: i64,
        limit: usize,
        skip: &dyn Fn(i64) -> bool,
        skipped: usize,
    ) -> Result<Vec<QueuedMessage>> {
        let mut select = self.conn.prepare_cached(
            "SELECT seq, id, body, content_type, timestamp, visible_at, failed_attempts
             FROM messages WHERE visible_at <= ?1 ORDER BY visible_at, seq LIMIT ?2",
        )?;
        let rows = select.query_map(params![now, (limit + skipped) as i64], |row| {
            Ok(QueuedMessage {
                seq: row.get(0)?,
                id: row.get(1)?,
                body: row.get(2)?,
                content_type: row.get(3)?,
                timestamp: row.get(4)?,
                visible_at: row.get(5)?,
                failed_attempts: row.get(6)?,
            })
        })?;
        let mut out = Vec::new();
        for row in rows {
            let message = row?;
            if !skip(message.seq) {
                out.push(message);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The earliest `visible_at` after `now` (ms), if a message waits for its delay.
    pub fn next_visible(&self, now: i64) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT MIN(visible_at) FROM messages WHERE visible_at > ?1")?
            .query_row([now], |row| row.get::<_, Option<i64>>(0))?)
    }

    /// Applies how a batch ended, all or nothing.
    pub fn settle(&self, settlement: &Settlement) -> Result<()> {
        self.atomically(|| {
            let mut delete = self
                .conn
                .prepare_cached("DELETE FROM messages WHERE seq = ?1")?;
            for seq in settlement
                .acked
                .iter()
                .chain(&settlement.dead_lettered)
                .chain(&settlement.dropped)
            {
                delete.execute([seq])?;
            }
            let mut retry = self.conn.prepare_cached(
                "UPDATE messages SET failed_attempts = failed_attempts + 1, visible_at = ?2
                 WHERE seq = ?1",
            )?;
            for (seq, at) in &settlement.retried {
                retry.execute([seq, at])?;
            }
            self.count("acked", settlement.acked.len())?;
            self.count("retried", settlement.retried.len())?;
            self.count("dead_lettered", settlement.dead_lettered.len())?;
            self.count("dropped", settlement.dropped.len())
        })
    }

    /// The queue's counts at `now` (ms).
    pub fn counts(&self, now: i64) -> Result<QueueCounts> {
        let (depth, ready, bytes, oldest) = self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(visible_at <= ?1), 0),
                    COALESCE(SUM(LENGTH(body)), 0), MIN(timestamp) FROM messages",
            [now],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )?;
        let counter = |name: &str| -> Result<i64> {
            Ok(self
                .conn
                .prepare_cached("SELECT value FROM counters WHERE name = ?1")?
                .query_row([name], |row| row.get(0))
                .optional()?
                .unwrap_or(0))
        };
        Ok(QueueCounts {
            depth,
            ready,
            bytes,
            oldest,
            sent: counter("sent")?,
            acked: counter("acked")?,
            retried: counter("retried")?,
            dead_lettered: counter("dead_lettered")?,
            dropped: counter("dropped")?,
        })
    }

    /// (messages stored, bytes of their bodies), for a fresh count at open.
    pub fn backlog(&self) -> Result<(i64, i64)> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM messages",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?)
    }

    /// `timestamp` of the message that arrived first among those stored.
    pub fn first_timestamp(&self) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT timestamp FROM messages ORDER BY seq LIMIT 1")?
            .query_row([], |row| row.get(0))
            .optional()?)
    }

    /// The first `limit` stored messages, oldest first (the admin's peek).
    pub fn peek(&self, limit: usize) -> Result<Vec<QueuedMessage>> {
        self.ready(i64::MAX, limit, &|_| false, 0)
    }

    /// Deletes every stored message; how many.
    pub fn purge(&self) -> Result<u64> {
        Ok(self.conn.execute("DELETE FROM messages", [])? as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, visible_at: i64) -> NewMessage {
        NewMessage {
            id: id.into(),
            body: id.as_bytes().to_vec(),
            content_type: "text".into(),
            timestamp: 1,
            visible_at,
        }
    }

    #[test]
    fn messages_come_out_in_order_of_visibility_and_settle() {
        let q = QueueDatabase::open_in_memory().unwrap();
        q.enqueue(&[message("a", 10), message("b", 5), message("c", 50)])
            .unwrap();
        let ids = |v: Vec<QueuedMessage>| v.into_iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids(q.ready(20, 10, &|_| false, 0).unwrap()), ["b", "a"]);
        assert_eq!(q.next_visible(20).unwrap(), Some(50));
        let all = q.ready(100, 10, &|_| false, 0).unwrap();
        let seq = |id: &str| all.iter().find(|m| m.id == id).unwrap().seq;
        // Skipped ones (in flight) are not handed out twice.
        let b = seq("b");
        assert_eq!(ids(q.ready(100, 1, &|s| s == b, 1).unwrap()), ["a"]);
        q.settle(&Settlement {
            acked: vec![seq("a")],
            retried: vec![(seq("b"), 70)],
            dead_lettered: vec![],
            dropped: vec![seq("c")],
        })
        .unwrap();
        let left = q.ready(100, 10, &|_| false, 0).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].failed_attempts, left[0].visible_at), (1, 70));
        let counts = q.counts(60).unwrap();
        assert_eq!((counts.depth, counts.ready), (1, 0));
        assert_eq!(
            (counts.sent, counts.acked, counts.retried, counts.dropped),
            (3, 1, 1, 1)
        );
        // A dead-letter move repeated after a crash stores the message once.
        q.enqueue(&[message("b", 0)]).unwrap();
        assert_eq!(q.counts(100).unwrap().depth, 1);
        assert_eq!(q.purge().unwrap(), 1);
    }
}
