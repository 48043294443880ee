//! The front door's connection budget: every accepted connection is tracked, connections
//! that hold a descriptor without a request are closed, and the number of connections is
//! capped below the descriptor limit so storage and accept never starve.
//!
//! A connection is *idle* when no request is in flight on it (a response body still
//! streaming counts as in flight). An idle connection must start its next request — its
//! headers complete — within a deadline: the header timeout for a connection that has not
//! sent one yet, the keep-alive timeout after a response. Bytes alone do not count, so a
//! slowloris client dribbling a header, a silent one, and one still sending a body its
//! Worker ignored are all closed. At the cap, the longest-idle connection is closed to admit
//! a new one; with none idle, the new connection is refused.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dorun_runtime::body::BoxError;
use dorun_runtime::ResponseBody;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

/// The limits of [`Connections`].
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Most connections held at once.
    pub max_connections: usize,
    /// How long a new connection may take to send its first request's headers.
    pub header_timeout: Duration,
    /// How long a connection may sit between a response and its next request.
    pub keep_alive_timeout: Duration,
}

impl ConnectionLimits {
    /// Limits within the process's descriptors (`nofile`): the objects' SQLite files take
    /// all but an eighth (at least 1024; `dorun_runtime::storage::size_connection_cache`),
    /// and half of that reserve is for HTTP connections, the rest for WebSockets, accepts
    /// and the runtime's own files.
    pub fn from_descriptor_limit(
        nofile: u64,
        header_timeout: Duration,
        keep_alive_timeout: Duration,
    ) -> Self {
        Self {
            max_connections: ((nofile / 8).max(1024) / 2).clamp(16, 1 << 20) as usize,
            header_timeout,
            keep_alive_timeout,
        }
    }
}

/// One tracked connection.
pub struct Connection {
    id: u64,
    in_flight: AtomicUsize,
    served: AtomicU64,
    /// Milliseconds since the tracker's epoch when the connection last became idle.
    idle_since: AtomicU64,
    close: Notify,
}

impl Connection {
    /// Resolves when the tracker closes this connection.
    pub async fn closed(&self) {
        self.close.notified().await
    }
}

/// Marks a request in flight until dropped (with the response body).
pub struct InFlight {
    connection: Arc<Connection>,
    tracker: Arc<Connections>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.connection
            .idle_since
            .store(self.tracker.now_ms(), Ordering::Relaxed);
        self.connection.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Connections {
    limits: ConnectionLimits,
    epoch: Instant,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
}

impl Connections {
    pub fn new(limits: ConnectionLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            epoch: Instant::now(),
            next: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Registers a new connection, closing the longest-idle one if the budget is spent.
    /// `None`: every connection is busy; the caller drops the new one.
    pub fn admit(&self) -> Option<Arc<Connection>> {
        let mut open = self.open.lock().unwrap();
        if open.len() >= self.limits.max_connections {
            let oldest = open
                .values()
                .filter(|c| c.in_flight.load(Ordering::Acquire) == 0)
                .min_by_key(|c| (c.idle_since.load(Ordering::Relaxed), c.id))
                .cloned()?;
            open.remove(&oldest.id);
            oldest.close.notify_one();
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let connection = Arc::new(Connection {
            id,
            in_flight: AtomicUsize::new(0),
            served: AtomicU64::new(0),
            idle_since: AtomicU64::new(self.now_ms()),
            close: Notify::new(),
        });
        open.insert(id, connection.clone());
        Some(connection)
    }

    /// The connection ended by itself.
    pub fn forget(&self, connection: &Connection) {
        self.open.lock().unwrap().remove(&connection.id);
    }

    /// A request's headers arrived on `connection`.
    pub fn request_started(self: &Arc<Self>, connection: &Arc<Connection>) -> InFlight {
        connection.in_flight.fetch_add(1, Ordering::AcqRel);
        connection.served.fetch_add(1, Ordering::Relaxed);
        InFlight {
            connection: connection.clone(),
            tracker: self.clone(),
        }
    }

    /// How many connections are held now.
    pub fn held(&self) -> usize {
        self.open.lock().unwrap().len()
    }

    /// Closes the idle connections past their deadline. Returns how many.
    pub fn close_expired(&self) -> usize {
        let now = self.now_ms();
        let mut open = self.open.lock().unwrap();
        let expired: Vec<u64> = open
            .values()
            .filter(|c| {
                if c.in_flight.load(Ordering::Acquire) > 0 {
                    return false;
                }
                let deadline = if c.served.load(Ordering::Relaxed) == 0 {
                    self.limits.header_timeout
                } else {
                    self.limits.keep_alive_timeout
                };
                now.saturating_sub(c.idle_since.load(Ordering::Relaxed))
                    > deadline.as_millis() as u64
            })
            .map(|c| c.id)
            .collect();
        for id in &expired {
            if let Some(connection) = open.remove(id) {
                connection.close.notify_one();
            }
        }
        expired.len()
    }

    /// Checks deadlines until the tracker is dropped.
    pub fn spawn_reaper(self: &Arc<Self>) {
        let tracker = Arc::downgrade(self);
        let period = (self
            .limits
            .header_timeout
            .min(self.limits.keep_alive_timeout)
            / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let Some(tracker) = tracker.upgrade() else {
                    return;
                };
                let closed = tracker.close_expired();
                if closed > 0 {
                    tracing::debug!("closed {closed} idle connections");
                }
            }
        });
    }
}

/// A response body that keeps its request in flight until it is sent or dropped.
pub struct TrackedBody {
    body: ResponseBody,
    _in_flight: Option<InFlight>,
}

impl TrackedBody {
    pub fn new(body: ResponseBody, in_flight: Option<InFlight>) -> Self {
        Self {
            body,
            _in_flight: in_flight,
        }
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: max,
            header_timeout: Duration::from_millis(0),
            keep_alive_timeout: Duration::from_secs(3600),
        }
    }

    #[test]
    fn at_the_cap_the_longest_idle_connection_makes_room_and_busy_ones_are_kept() {
        let tracker = Connections::new(limits(2));
        let first = tracker.admit().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let second = tracker.admit().unwrap();
        let busy = tracker.request_started(&second);
        let third = tracker.admit().expect("the idle first one makes room");
        assert_eq!(tracker.held(), 2);
        assert!(!tracker.open.lock().unwrap().contains_key(&first.id));
        let _busy_too = tracker.request_started(&third);
        assert!(tracker.admit().is_none(), "every connection is busy");
        drop(busy);
        assert!(tracker.admit().is_some(), "the second became idle");
    }

    #[test]
    fn idle_connections_past_their_deadline_are_closed_busy_ones_are_not() {
        let tracker = Connections::new(limits(10));
        let silent = tracker.admit().unwrap();
        let working = tracker.admit().unwrap();
        let in_flight = tracker.request_started(&working);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(tracker.close_expired(), 1, "the silent one");
        assert!(!tracker.open.lock().unwrap().contains_key(&silent.id));
        drop(in_flight);
        // Served once: the keep-alive deadline (an hour) applies now.
        assert_eq!(tracker.close_expired(), 0);
        assert_eq!(tracker.held(), 1);
    }
}
