//! Replication of objects' commits to an S3-compatible store (issue 26; ARCHITECTURE.md,
//! "Replication and clusters"). Built so far, and not yet wired into `dorun serve`:
//! - [`wal`]: reading committed transactions out of an object's WAL past a cursor;
//! - [`ltx`]: the LTX files segments are shipped and restored as;
//! - [`journal`]: the batches that carry many objects' segments in one upload;
//! - [`store`]: the store behind `--replicate-to` (s3://, file://), generations;
//! - [`replicator`]: capture → batch → upload with `If-None-Match`, settling commits in
//!   batch order;
//! - [`restore`]: objects' files rebuilt from the journals.

pub mod baseline;
pub mod files;
pub mod journal;
pub mod ltx;
pub mod replicator;
pub mod restore;
pub mod store;
pub mod wal;

/// What the isolate threads need to replicate objects' commits (`--replicate-to`).
pub struct Replication {
    /// Also says which epoch (generation) commits are filed under: this process's, or a
    /// later one taken by a reset ([`replicator::Replicator::epoch`]).
    pub replicator: replicator::Replicator,
    /// `--durability replicated`: a commit's output gate opens once it is in the store.
    /// Else (`async`) once it is durable on the local disk; the store follows.
    pub wait: bool,
    /// `async`: how far the store may fall behind. Once the oldest commit not in the store
    /// has waited this long, commits wait for the store as under `replicated` until it
    /// catches up, so a lost machine loses at most about this much.
    pub async_bound: std::time::Duration,
    /// The store, as `--replicate-to` names it.
    pub store: String,
}

impl Replication {
    /// Whether the commit being made now waits for the store (under `async`: once the
    /// store lags past the bound, or replication stopped, so that its commits fail loudly
    /// as under `replicated` instead of going on unreplicated).
    pub fn waits(&self) -> bool {
        self.wait || self.replicator.behind(self.async_bound)
    }

    /// Where replication stands, for the admin listener.
    pub fn status_json(&self) -> serde_json::Value {
        let progress = self.replicator.progress();
        serde_json::json!({
            "enabled": true,
            "store": self.store,
            "durability": if self.wait { "replicated" } else { "async" },
            "asyncBoundMs": self.async_bound.as_millis() as u64,
            "generation": self.replicator.epoch(),
            "lagMs": self.replicator.lag().as_millis() as u64,
            "pendingCommits": progress.announced - progress.settled,
            "batches": progress.batches,
            "bytes": progress.bytes,
            "stopped": self.replicator.stopped(),
        })
    }
}

impl std::fmt::Debug for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replication")
            .field("epoch", &self.replicator.epoch())
            .field("wait", &self.wait)
            .finish()
    }
}
