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
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dorun_storage::{AlarmIndex, StorageError};
use tokio::sync::{oneshot, Notify};

use crate::clock::{Clock, SystemClock};
use crate::mailbox::{AlarmOutcome, ObjectCall, ObjectEvent, Reply};
use crate::namespaces::ObjectConfig;
use crate::router::Router;

/// A namespace's alarm index could not be opened, read or written.
#[derive(Debug, thiserror::Error, deno_error::JsError)]
#[class(generic)]
pub enum AlarmIndexError {
    #[error("cannot open alarm index {}: {source}", path.display())]
    Open { path: PathBuf, source: StorageError },
    #[error("cannot read alarm index {}: {source}", path.display())]
    Read { path: PathBuf, source: StorageError },
    #[error("alarm index: {0}")]
    Write(#[from] StorageError),
    #[error("unknown namespace {0}")]
    UnknownNamespace(u32),
}

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

/// Why [`AlarmScheduler::run_now`] ran nothing.
#[derive(Debug, thiserror::Error)]
pub enum RunNowError {
    #[error("the object has no alarm scheduled")]
    NoAlarm,
    #[error("the object's alarm is running")]
    Running,
    #[error("the worker is shutting down")]
    ShuttingDown,
}

pub struct AlarmScheduler {
    state: Mutex<State>,
    wake: Notify,
    indexes: Vec<Mutex<Option<AlarmIndex>>>,
    config: Arc<ObjectConfig>,
    retry: AlarmRetry,
    clock: Arc<dyn Clock>,
}

/// Metrics: how late an alarm fires (first tries) and how often alarms are retried.
fn record_fired(alarm: &DueAlarm, now_ms: i64) {
    if alarm.retries == 0 {
        let lag = (now_ms - alarm.scheduled).max(0) as f64 / 1000.0;
        metrics::histogram!("dorun_alarm_lag_seconds").record(lag);
    } else {
        metrics::counter!("dorun_alarm_retries_total").increment(1);
    }
}

/// An alarm that is due, to be sent to its object.
#[derive(Debug, PartialEq, Eq)]
pub struct DueAlarm {
    pub namespace: u32,
    pub object_id: String,
    pub name: Option<String>,
    /// The stored alarm time that fires.
    pub scheduled: i64,
    pub retries: u32,
}

impl AlarmScheduler {
    /// Loads every namespace's alarm index.
    pub fn load(config: Arc<ObjectConfig>, retry: AlarmRetry) -> Result<Self, AlarmIndexError> {
        Self::load_with_clock(config, retry, Arc::new(SystemClock))
    }

    /// Like [`load`](Self::load), telling time by `clock`.
    pub fn load_with_clock(
        config: Arc<ObjectConfig>,
        retry: AlarmRetry,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AlarmIndexError> {
        let mut state = State::default();
        let mut indexes = Vec::new();
        for (index, namespace) in config.namespaces.iter().enumerate() {
            let path = Self::index_path(&config, index);
            let mut opened = None;
            // Another worker's class: its own pool schedules its alarms.
            if path.exists() && namespace.foreign.is_none() {
                let db = AlarmIndex::open(&path, config.durability).map_err(|source| {
                    AlarmIndexError::Open {
                        path: path.clone(),
                        source,
                    }
                })?;
                let rows = db.all().map_err(|source| AlarmIndexError::Read {
                    path: path.clone(),
                    source,
                })?;
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
            clock,
        })
    }

    fn index_path(config: &ObjectConfig, namespace: usize) -> PathBuf {
        config
            .data_dir
            .join(&config.namespaces[namespace].unique_key)
            .join("metadata.sqlite")
    }

    fn with_index<T>(
        &self,
        namespace: u32,
        f: impl FnOnce(&AlarmIndex) -> dorun_storage::Result<T>,
    ) -> Result<T, AlarmIndexError> {
        let slot = self
            .indexes
            .get(namespace as usize)
            .ok_or(AlarmIndexError::UnknownNamespace(namespace))?;
        let mut slot = slot.lock().unwrap();
        if slot.is_none() {
            let path = Self::index_path(&self.config, namespace as usize);
            let index = AlarmIndex::open(&path, self.config.durability)
                .map_err(|source| AlarmIndexError::Open { path, source })?;
            *slot = Some(index);
        }
        Ok(f(slot.as_ref().expect("opened above"))?)
    }

    /// Records an alarm in the index. Called before the object's commit.
    pub fn index_put(
        &self,
        namespace: u32,
        object_id: &str,
        name: Option<&str>,
        time: i64,
    ) -> Result<(), AlarmIndexError> {
        self.with_index(namespace, |index| index.put(object_id, time, name))
    }

    /// Removes an alarm from the index. Called after the object's commit.
    pub fn index_delete(&self, namespace: u32, object_id: &str) -> Result<(), AlarmIndexError> {
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

    /// Forgets every scheduled alarm and closes the index connections (the admin's reset,
    /// which moves the namespace directories, indexes included, away; an index is reopened
    /// at its path on next use). Returns how many alarms were scheduled.
    pub fn clear(&self) -> usize {
        let mut state = self.state.lock().unwrap();
        let count = state.entries.len();
        state.entries.clear();
        state.queue.clear();
        drop(state);
        let closing: Vec<AlarmIndex> = self
            .indexes
            .iter()
            .filter_map(|slot| slot.lock().unwrap().take())
            .map(AlarmIndex::discard)
            .collect();
        if !closing.is_empty() {
            let _ = std::thread::Builder::new()
                .name("dorun-discard".into())
                .spawn(move || drop(closing));
        }
        count
    }

    /// Like [`clear`](Self::clear), for namespace `namespace` only (the admin's reset of one
    /// namespace). Returns how many of its alarms were scheduled.
    pub fn clear_namespace(&self, namespace: u32) -> usize {
        let mut state = self.state.lock().unwrap();
        let keys: Vec<ObjectKey> = state
            .entries
            .keys()
            .filter(|(ns, _)| *ns == namespace)
            .cloned()
            .collect();
        for key in &keys {
            state.remove(key);
        }
        drop(state);
        let closing = self
            .indexes
            .get(namespace as usize)
            .and_then(|slot| slot.lock().unwrap().take())
            .map(AlarmIndex::discard);
        if let Some(index) = closing {
            let _ = std::thread::Builder::new()
                .name("dorun-discard".into())
                .spawn(move || drop(index));
        }
        keys.len()
    }

    /// The scheduled alarms: (namespace, object id, scheduled ms, retries so far).
    pub fn scheduled(&self) -> Vec<(u32, String, i64, u32)> {
        let state = self.state.lock().unwrap();
        state
            .entries
            .iter()
            .map(|((ns, id), e)| (*ns, id.clone(), e.scheduled, e.retries))
            .collect()
    }

    pub fn stop(&self) {
        self.state.lock().unwrap().stopped = true;
        self.wake.notify_one();
    }

    /// Fires due alarms until [`stop`](Self::stop). Runs on its own thread.
    pub fn spawn(self: &Arc<Self>, router: Arc<Router>) {
        let scheduler = self.clone();
        let spawned = std::thread::Builder::new()
            .name("dorun-alarms".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("alarm runtime");
                runtime.block_on(scheduler.run(router));
            });
        if let Err(error) = spawned {
            tracing::error!("cannot start the alarm scheduler: {error}");
        }
    }

    /// Marks the alarms due now as running and returns them, with when the next one is due
    /// (`None`: nothing scheduled; the scheduler waits to be woken). An object runs at most
    /// one alarm at a time, so one whose alarm is running is skipped until it finishes.
    pub fn take_due(&self) -> (Vec<DueAlarm>, Option<i64>) {
        let mut state = self.state.lock().unwrap();
        let now = self.clock.now_ms();
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
        let due = due
            .into_iter()
            .map(|key| {
                let entry = &state.entries[&key];
                let alarm = DueAlarm {
                    namespace: key.0,
                    object_id: key.1.clone(),
                    name: entry.name.clone(),
                    scheduled: entry.scheduled,
                    retries: entry.retries,
                };
                state.running.insert(key, alarm.scheduled);
                alarm
            })
            .collect();
        (due, next)
    }

    /// Runs object `object_id`'s alarm now, whatever its time (the admin listener's "run the
    /// alarm now", for tests): marked running as a due alarm is, sent to the object, and
    /// finished with its outcome as the scheduler's own runs are. Returns the scheduled time
    /// that ran and the outcome.
    pub async fn run_now(
        &self,
        router: &Router,
        namespace: u32,
        object_id: &str,
    ) -> Result<(i64, AlarmOutcome), RunNowError> {
        let key = (namespace, object_id.to_string());
        let alarm = {
            let mut state = self.state.lock().unwrap();
            if state.running.contains_key(&key) {
                return Err(RunNowError::Running);
            }
            let entry = state.entries.get(&key).ok_or(RunNowError::NoAlarm)?;
            let alarm = DueAlarm {
                namespace,
                object_id: object_id.to_string(),
                name: entry.name.clone(),
                scheduled: entry.scheduled,
                retries: entry.retries,
            };
            state.running.insert(key.clone(), alarm.scheduled);
            alarm
        };
        let scheduled = alarm.scheduled;
        let (reply, response) = oneshot::channel();
        let event = ObjectEvent {
            namespace,
            object_id: alarm.object_id,
            object_name: alarm.name,
            call: ObjectCall::Alarm {
                scheduled,
                retries: alarm.retries,
            },
            reply,
        };
        if router.to_object(event).is_err() {
            self.state.lock().unwrap().running.remove(&key);
            return Err(RunNowError::ShuttingDown);
        }
        let outcome = match response.await {
            Ok(Reply::Alarm(outcome)) => outcome,
            _ => AlarmOutcome::Retry,
        };
        self.finished(key, outcome);
        Ok((scheduled, outcome))
    }

    fn is_stopped(&self) -> bool {
        self.state.lock().unwrap().stopped
    }

    async fn run(self: Arc<Self>, router: Arc<Router>) {
        loop {
            if self.is_stopped() {
                return;
            }
            let (due, next) = self.take_due();
            for alarm in due {
                record_fired(&alarm, self.clock.now_ms());
                let key = (alarm.namespace, alarm.object_id.clone());
                let (reply, response) = oneshot::channel();
                let event = ObjectEvent {
                    namespace: alarm.namespace,
                    object_id: alarm.object_id,
                    object_name: alarm.name,
                    call: ObjectCall::Alarm {
                        scheduled: alarm.scheduled,
                        retries: alarm.retries,
                    },
                    reply,
                };
                if router.to_object(event).is_err() {
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
            match next {
                Some(time) => {
                    let wait = Duration::from_millis((time - self.clock.now_ms()).max(0) as u64);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }

    /// An alarm event came back with `outcome`.
    pub fn finished(&self, key: (u32, String), outcome: AlarmOutcome) {
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
                            due: self.clock.now_ms() + delay + jitter,
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

#[cfg(test)]
mod tests {
    use dorun_storage::Durability;

    use super::*;
    use crate::clock::ManualClock;
    use crate::namespaces::ObjectNamespace;

    fn scheduler(tag: &str, retry: AlarmRetry) -> (Arc<AlarmScheduler>, Arc<ManualClock>) {
        let dir = std::env::temp_dir().join(format!("dorun-alarms-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("w-A")).unwrap();
        let config = Arc::new(ObjectConfig {
            namespaces: vec![ObjectNamespace {
                binding: "A".into(),
                class_name: "A".into(),
                unique_key: "w-A".into(),
                sqlite: true,
                foreign: None,
            }],
            data_dir: dir,
            durability: Durability::Off,
            replication: None,
        });
        let clock = Arc::new(ManualClock::new(0));
        let scheduler = AlarmScheduler::load_with_clock(config, retry, clock.clone()).unwrap();
        (Arc::new(scheduler), clock)
    }

    fn fired(due: &[DueAlarm]) -> Vec<(&str, i64, u32)> {
        due.iter()
            .map(|d| (d.object_id.as_str(), d.scheduled, d.retries))
            .collect()
    }

    fn key(id: &str) -> (u32, String) {
        (0, id.to_string())
    }

    const RETRY: AlarmRetry = AlarmRetry {
        start: Duration::from_millis(1000),
        max_retries: 2,
    };

    #[test]
    fn alarms_fire_in_time_order_once_their_time_has_come() {
        let (alarms, clock) = scheduler("order", RETRY);
        alarms.update(0, "c", None, Some(300));
        alarms.update(0, "a", Some("name-a"), Some(100));
        alarms.update(0, "b", None, Some(200));
        let (due, next) = alarms.take_due();
        assert!(due.is_empty());
        assert_eq!(next, Some(100));
        clock.set(250);
        let (due, next) = alarms.take_due();
        assert_eq!(fired(&due), vec![("a", 100, 0), ("b", 200, 0)]);
        assert_eq!(due[0].name.as_deref(), Some("name-a"));
        assert_eq!(next, Some(300));
        // Running alarms are not handed out again; done ones are gone.
        assert!(alarms.take_due().0.is_empty());
        alarms.finished(key("a"), AlarmOutcome::Done);
        alarms.finished(key("b"), AlarmOutcome::Done);
        clock.set(10_000);
        assert_eq!(fired(&alarms.take_due().0), vec![("c", 300, 0)]);
        alarms.finished(key("c"), AlarmOutcome::Done);
        assert_eq!(alarms.take_due(), (Vec::new(), None));
    }

    #[test]
    fn a_failing_alarm_is_retried_with_exponential_backoff_then_given_up() {
        let (alarms, clock) = scheduler("retry", RETRY);
        alarms.update(0, "a", None, Some(100));
        clock.set(100);
        assert_eq!(fired(&alarms.take_due().0), vec![("a", 100, 0)]);
        alarms.finished(key("a"), AlarmOutcome::Retry);
        // First retry after 1 s plus at most 25 % jitter, keeping its scheduled time.
        let (due, next) = alarms.take_due();
        assert!(due.is_empty());
        let next = next.unwrap();
        assert!((1100..=1350).contains(&next), "first retry at {next}");
        clock.set(next);
        assert_eq!(fired(&alarms.take_due().0), vec![("a", 100, 1)]);
        alarms.finished(key("a"), AlarmOutcome::Retry);
        let next = alarms.take_due().1.unwrap();
        assert!(
            (next - clock.now_ms() >= 2000) && (next - clock.now_ms() <= 2500),
            "second retry {} ms later",
            next - clock.now_ms()
        );
        clock.set(next);
        assert_eq!(fired(&alarms.take_due().0), vec![("a", 100, 2)]);
        // max_retries = 2: the third failure gives up.
        alarms.finished(key("a"), AlarmOutcome::Retry);
        clock.set(i64::MAX / 2);
        assert_eq!(alarms.take_due(), (Vec::new(), None));
    }

    #[test]
    fn a_new_alarm_set_inside_alarm_replaces_both_the_done_and_the_retry() {
        let (alarms, clock) = scheduler("resched", RETRY);
        alarms.update(0, "a", None, Some(100));
        alarms.update(0, "b", None, Some(100));
        clock.set(100);
        assert_eq!(alarms.take_due().0.len(), 2);
        // Both handlers set a new alarm (committed while they run), then one succeeds and
        // the other throws: neither the done nor the retry touches the new alarm.
        alarms.update(0, "a", None, Some(5000));
        alarms.update(0, "b", None, Some(6000));
        alarms.finished(key("a"), AlarmOutcome::Done);
        alarms.finished(key("b"), AlarmOutcome::Retry);
        assert_eq!(alarms.take_due().1, Some(5000));
        clock.set(6000);
        assert_eq!(
            fired(&alarms.take_due().0),
            vec![("a", 5000, 0), ("b", 6000, 0)]
        );
    }

    #[test]
    fn a_stale_entry_follows_the_objects_own_record() {
        let (alarms, clock) = scheduler("stale", RETRY);
        alarms.index_put(0, "a", None, 100).unwrap();
        alarms.update(0, "a", None, Some(100));
        alarms.update(0, "b", None, Some(100));
        clock.set(100);
        assert_eq!(alarms.take_due().0.len(), 2);
        // a's object says its alarm is at 900; b's object has none.
        alarms.finished(key("a"), AlarmOutcome::Stale(Some(900)));
        alarms.finished(key("b"), AlarmOutcome::Stale(None));
        assert_eq!(alarms.take_due(), (Vec::new(), Some(900)));
        clock.set(900);
        assert_eq!(fired(&alarms.take_due().0), vec![("a", 900, 0)]);
        // The index row of the object without an alarm was removed; a's stays.
        let rows = alarms.with_index(0, |index| index.all()).unwrap();
        assert_eq!(
            rows.iter()
                .map(|r| r.object_id.as_str())
                .collect::<Vec<_>>(),
            vec!["a"]
        );
    }

    #[test]
    fn the_index_is_read_back_at_startup() {
        let (alarms, _clock) = scheduler("reload", RETRY);
        let config = alarms.config.clone();
        let id = config.namespaces[0].id_from_name("n");
        alarms.index_put(0, &id, Some("n"), 42).unwrap();
        // Rows with ids not of this namespace are ignored.
        alarms.index_put(0, "not-an-id", None, 42).unwrap();
        drop(alarms);
        let clock = Arc::new(ManualClock::new(50));
        let reloaded = AlarmScheduler::load_with_clock(config, RETRY, clock).unwrap();
        let (due, _) = reloaded.take_due();
        assert_eq!(fired(&due), vec![(id.as_str(), 42, 0)]);
        assert_eq!(due[0].name.as_deref(), Some("n"));
    }
}
