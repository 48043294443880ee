//! What the storage bindings (KV, D1, R2) share about their files under the data
//! directory: a binding's name made into a file name no name can escape with, the files of
//! a binding's directory, and one open handle per file per process, shared by every
//! isolate thread and worker.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use dorun_storage::StorageError;

/// `name` as a file name: `[A-Za-z0-9_-]` as they are, every other byte percent-encoded (so
/// no `/`, no `..`, and two names never share a file).
pub fn file_name(name: &str) -> String {
    let mut file = String::with_capacity(name.len());
    for byte in name.bytes() {
        match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => file.push(byte as char),
            _ => file.push_str(&format!("%{byte:02X}")),
        }
    }
    file
}

/// The entries of `dir` that `keep` accepts, sorted; none if `dir` does not exist.
pub fn entries(dir: &Path, keep: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| keep(p))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Whether `path` is a SQLite file of a binding (`*.sqlite`).
pub fn is_sqlite(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "sqlite")
}

/// Records one operation of a binding (`kind`: `kv`, `d1`, `r2`) in the metrics:
/// `dorun_binding_operations_total{kind, op, outcome}` and
/// `dorun_binding_operation_seconds{kind, op}`.
pub fn record(kind: &'static str, op: &'static str, started: std::time::Instant, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!("dorun_binding_operations_total", "kind" => kind, "op" => op, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("dorun_binding_operation_seconds", "kind" => kind, "op" => op)
        .record(started.elapsed().as_secs_f64());
}

/// Records bytes a binding moved: `dorun_binding_bytes_total{kind, direction}` (`in`:
/// written by the Worker, `out`: read by it).
pub fn record_bytes(kind: &'static str, direction: &'static str, bytes: usize) {
    metrics::counter!("dorun_binding_bytes_total", "kind" => kind, "direction" => direction)
        .increment(bytes as u64);
}

/// The files (or directories) a binding kind has open in this process, by path.
pub struct Registry<T> {
    open: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<T>>>>>,
}

impl<T> Registry<T> {
    pub const fn new() -> Self {
        Self {
            open: OnceLock::new(),
        }
    }

    /// The handle of `path`, opened with `open` the first time.
    pub fn get_or_open(
        &self,
        path: &Path,
        open: impl FnOnce(&Path) -> Result<T, StorageError>,
    ) -> Result<Arc<Mutex<T>>, StorageError> {
        let mut map = self
            .open
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(handle) = map.get(path) {
            return Ok(handle.clone());
        }
        let handle = Arc::new(Mutex::new(open(path)?));
        map.insert(path.to_path_buf(), handle.clone());
        Ok(handle)
    }
}

/// Handles (one per file or directory) a binding kind keeps open in this process, by path,
/// each made once by `open` and shared.
pub struct Handles<T> {
    open: OnceLock<Mutex<HashMap<PathBuf, Arc<T>>>>,
}

impl<T> Handles<T> {
    pub const fn new() -> Self {
        Self {
            open: OnceLock::new(),
        }
    }

    /// The handle of `path`, made with `open` the first time.
    pub fn get_or_open(
        &self,
        path: &Path,
        open: impl FnOnce(&Path) -> Result<T, StorageError>,
    ) -> Result<Arc<T>, StorageError> {
        let mut map = self
            .open
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(handle) = map.get(path) {
            return Ok(handle.clone());
        }
        let handle = Arc::new(open(path)?);
        map.insert(path.to_path_buf(), handle.clone());
        Ok(handle)
    }
}

impl<T> Default for Handles<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// The write groups ([`dorun_storage::Group`]) of the files a binding kind has open, by path:
/// writes to one file from many requests share its commits.
pub struct Groups<T, R> {
    open: OnceLock<Mutex<GroupMap<T, R>>>,
}

type GroupMap<T, R> = HashMap<PathBuf, Arc<dorun_storage::Group<T, R>>>;

impl<T: dorun_storage::Transactional, R> Default for Groups<T, R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: dorun_storage::Transactional, R> Groups<T, R> {
    pub const fn new() -> Self {
        Self {
            open: OnceLock::new(),
        }
    }

    /// The group of `path`.
    pub fn get(&self, path: &Path) -> Arc<dorun_storage::Group<T, R>> {
        let mut map = self
            .open
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry(path.to_path_buf()).or_default().clone()
    }
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_file_names_that_stay_in_their_directory() {
        assert_eq!(
            file_name("0f2ac74b498b48028cb68387c421e279"),
            "0f2ac74b498b48028cb68387c421e279"
        );
        assert_eq!(file_name("MY_KV-1"), "MY_KV-1");
        assert_eq!(file_name("../etc/x"), "%2E%2E%2Fetc%2Fx");
        assert_eq!(file_name("a b.c"), "a%20b%2Ec");
    }
}
