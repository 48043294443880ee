//! The alarm scheduler: one per Worker, shared by its isolate threads.
//!
//! An object's alarm lives in its own database (`_cf_METADATA`, committed with the writes
//! around it) and in its namespace's index (`metadata.sqlite`, see
//! [`dorun_storage::AlarmIndex`]). The index is written before the object's commit when an
//! alarm is set and after it when one is cleared, so it is always a superset of the truth:
//! an alarm that fires from a stale index entry finds the object's own record and skips or
//! reschedules. Startup reads only the indexes.
//!
//! Due alarms are sent to the object's isolate thread as an [`ObjectCall::Alarm`] event; the
//! scheduler runs at most one alarm per object at a time and retries failures with
//! exponential backoff.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dorun_storage::{AlarmIndex, Durability};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::objects::{thread_for, Event, ObjectCall, ObjectConfig, ObjectEvent, Reply};

/// How alarm() failures are retried.
#[derive(Clone, Copy, Debug)]
pub struct AlarmRetry {
    /// Delay before the first retry; doubles with each retry (plus up to 25% jitter).
    pub start: Duration,
    /// Retries after the first attempt before the alarm is given up.
    pub max_retries: u32,
}

impl Default for AlarmRetry {
    fn default() -> Self {
        // workerd: ALARM_RETRY_START_SECONDS = 2, ALARM_RETRY_MAX_TRIES = 6.
        Self {
            start: Duration::from_secs(2),
            max_retries: 6,
        }
    }
}

/// What running an alarm event came to, reported by the JS glue.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AlarmOutcome {
    /// Ran (or gave up); the object's storage says what is scheduled next.
    Done,
    /// alarm() threw: retry the same scheduled time after a backoff.
    Retry,
    /// The object's own record differs from what fired (a stale index entry): the real
    /// alarm time, if any.
    Stale(Option<i64>),
}

type ObjectKey = (u32, String);

struct Entry {
    /// The alarm time stored by the object (ms since the epoch): `alarmInfo.scheduledTime`.
    scheduled: i64,
    /// When to fire next (later than `scheduled` while retrying).
    due: i64,
    retries: u32,
    name: Option<String>,
}

#[derive(Default)]
struct State {
    entries: HashMap<ObjectKey, Entry>,
    /// (due, key) for every entry.
    queue: BTreeSet<(i64, u32, String)>,
    /// Objects whose alarm() is running, with the scheduled time that fired.
    running: HashMap<ObjectKey, i64>,
    stopped: bool,
}

impl State {
    fn remove(&mut self, key: &ObjectKey) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.queue.remove(&(entry.due, key.0, key.1.clone()));
        Some(entry)
    }

    fn insert(&mut self, key: ObjectKey, entry: Entry) {
        self.remove(&key);
        self.queue.insert((entry.due, key.0, key.1.clone()));
        self.entries.insert(key, entry);
    }
}

pub struct AlarmScheduler {
    state: Mutex<State>,
    wake: Notify,
    indexes: Vec<Mutex<Option<AlarmIndex>>>,
    config: Arc<ObjectConfig>,
    retry: AlarmRetry,
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl AlarmScheduler {
    /// Loads every namespace's alarm index.
    pub fn load(config: Arc<ObjectConfig>, retry: AlarmRetry) -> Result<Self, String> {
        let mut state = State::default();
        let mut indexes = Vec::new();
        for (index, namespace) in config.namespaces.iter().enumerate() {
            let path = Self::index_path(&config, index);
            let mut opened = None;
            // Another worker's class: its own pool schedules its alarms.
            if path.exists() && namespace.foreign.is_none() {
                let db = AlarmIndex::open(&path, config.durability)
                    .map_err(|e| format!("cannot open alarm index {}: {e}", path.display()))?;
                let rows = db
                    .all()
                    .map_err(|e| format!("cannot read alarm index {}: {e}", path.display()))?;
                for row in rows {
                    if namespace.check_id(&row.object_id).is_err() {
                        continue;
                    }
                    state.insert(
                        (index as u32, row.object_id),
                        Entry {
                            scheduled: row.time,
                            due: row.time,
                            retries: 0,
                            name: row.name,
                        },
                    );
                }
                opened = Some(db);
            }
            indexes.push(Mutex::new(opened));
        }
        Ok(Self {
            state: Mutex::new(state),
            wake: Notify::new(),
            indexes,
            config,
            retry,
        })
    }

    fn index_path(config: &ObjectConfig, namespace: usize) -> std::path::PathBuf {
        config
            .data_dir
            .join(&config.namespaces[namespace].unique_key)
            .join("metadata.sqlite")
    }

    fn with_index<T>(
        &self,
        namespace: u32,
        f: impl FnOnce(&AlarmIndex) -> dorun_storage::Result<T>,
    ) -> Result<T, String> {
        let slot = self
            .indexes
            .get(namespace as usize)
            .ok_or_else(|| "unknown namespace".to_string())?;
        let mut slot = slot.lock().unwrap();
        if slot.is_none() {
            let path = Self::index_path(&self.config, namespace as usize);
            let durability: Durability = self.config.durability;
            *slot = Some(
                AlarmIndex::open(&path, durability)
                    .map_err(|e| format!("cannot open alarm index {}: {e}", path.display()))?,
            );
        }
        f(slot.as_ref().expect("opened above")).map_err(|e| format!("alarm index: {e}"))
    }

    /// Records an alarm in the index. Called before the object's commit.
    pub fn index_put(
        &self,
        namespace: u32,
        object_id: &str,
        name: Option<&str>,
        time: i64,
    ) -> Result<(), String> {
        self.with_index(namespace, |index| index.put(object_id, time, name))
    }

    /// Removes an alarm from the index. Called after the object's commit.
    pub fn index_delete(&self, namespace: u32, object_id: &str) -> Result<(), String> {
        self.with_index(namespace, |index| index.delete(object_id))
    }

    /// The object committed a new alarm time (or cleared it).
    pub fn update(&self, namespace: u32, object_id: &str, name: Option<&str>, time: Option<i64>) {
        let key = (namespace, object_id.to_string());
        let mut state = self.state.lock().unwrap();
        match time {
            Some(time) => state.insert(
                key,
                Entry {
                    scheduled: time,
                    due: time,
                    retries: 0,
                    name: name.map(str::to_string),
                },
            ),
            None => {
                state.remove(&key);
            }
        }
        drop(state);
        self.wake.notify_one();
    }

    pub fn stop(&self) {
        self.state.lock().unwrap().stopped = true;
        self.wake.notify_one();
    }

    /// Fires due alarms until [`stop`](Self::stop). Runs on its own thread.
    pub fn spawn(self: &Arc<Self>, senders: Arc<Vec<mpsc::UnboundedSender<Event>>>) {
        let scheduler = self.clone();
        let spawned = std::thread::Builder::new()
            .name("dorun-alarms".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("alarm runtime");
                runtime.block_on(scheduler.run(senders));
            });
        if let Err(error) = spawned {
            tracing::error!("cannot start the alarm scheduler: {error}");
        }
    }

    async fn run(self: Arc<Self>, senders: Arc<Vec<mpsc::UnboundedSender<Event>>>) {
        loop {
            let wait = {
                let mut state = self.state.lock().unwrap();
                if state.stopped {
                    return;
                }
                let now = now_ms();
                let mut due = Vec::new();
                let mut next = None;
                for (time, namespace, id) in state.queue.iter() {
                    let key = (*namespace, id.clone());
                    if state.running.contains_key(&key) {
                        continue;
                    }
                    if *time <= now {
                        due.push(key);
                    } else {
                        next = Some(*time);
                        break;
                    }
                }
                for key in due {
                    let entry = &state.entries[&key];
                    let call = ObjectCall::Alarm {
                        scheduled: entry.scheduled,
                        retries: entry.retries,
                    };
                    let name = entry.name.clone();
                    let scheduled = entry.scheduled;
                    state.running.insert(key.clone(), scheduled);
                    let (reply, response) = oneshot::channel();
                    let event = ObjectEvent {
                        namespace: key.0,
                        object_id: key.1.clone(),
                        object_name: name,
                        call,
                        reply,
                    };
                    let thread = thread_for(&key.1, senders.len());
                    if senders[thread]
                        .send(Event::Object(Box::new(event)))
                        .is_err()
                    {
                        return;
                    }
                    let scheduler = self.clone();
                    tokio::spawn(async move {
                        let outcome = match response.await {
                            Ok(Reply::Alarm(outcome)) => outcome,
                            // The object was reset while running it, or an internal error.
                            _ => AlarmOutcome::Retry,
                        };
                        scheduler.finished(key, outcome);
                    });
                }
                next.map(|time| Duration::from_millis((time - now).max(0) as u64))
            };
            match wait {
                Some(wait) => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    fn finished(&self, key: ObjectKey, outcome: AlarmOutcome) {
        let mut state = self.state.lock().unwrap();
        let fired = state.running.remove(&key);
        match outcome {
            AlarmOutcome::Done => {
                // The object clears or replaces its alarm when it runs; never fire the same
                // time twice if it did neither.
                if fired.is_some() && state.entries.get(&key).map(|e| e.scheduled) == fired {
                    state.remove(&key);
                }
            }
            AlarmOutcome::Stale(time) => match time {
                Some(time) => {
                    let name = state.entries.get(&key).and_then(|e| e.name.clone());
                    state.insert(
                        key,
                        Entry {
                            scheduled: time,
                            due: time,
                            retries: 0,
                            name,
                        },
                    );
                }
                None => {
                    state.remove(&key);
                    drop(state);
                    if let Err(error) = self.index_delete(key.0, &key.1) {
                        tracing::warn!("{error}");
                    }
                    self.wake.notify_one();
                    return;
                }
            },
            AlarmOutcome::Retry => {
                // A new alarm set while this one ran replaces the retry.
                let same = fired.is_some() && state.entries.get(&key).map(|e| e.scheduled) == fired;
                if let Some(entry) = if same { state.remove(&key) } else { None } {
                    let retries = entry.retries + 1;
                    if retries > self.retry.max_retries {
                        drop(state);
                        self.wake.notify_one();
                        return;
                    }
                    let base = self.retry.start.as_millis() as i64;
                    let delay = base << (retries - 1).min(9);
                    let jitter = (rand::random::<f64>() * 0.25 * delay as f64) as i64;
                    state.insert(
                        key,
                        Entry {
                            due: now_ms() + delay + jitter,
                            retries,
                            ..entry
                        },
                    );
                }
            }
        }
        drop(state);
        self.wake.notify_one();
    }
}
