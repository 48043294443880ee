//! Durable Object migrations, applied at startup and recorded in the data directory.
//!
//! `<data-dir>/dorun-migrations.json` records, per worker, the migration tags applied in
//! order and, for each live class, the unique key its IDs and data directory derive from.
//! A renamed class keeps its key (so its IDs and data follow it); a deleted class's data
//! directory is removed. Re-running the same migrations is a no-op; a config whose history
//! disagrees with the recorded one is a startup error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{ExportState, Migration, WorkerConfig};

const STATE_FILE: &str = "dorun-migrations.json";

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    workers: BTreeMap<String, WorkerState>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerState {
    applied: Vec<String>,
    classes: BTreeMap<String, ClassState>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClassState {
    pub unique_key: String,
    pub sqlite: bool,
}

/// The classes of one worker after its migrations, by class name.
pub type Classes = BTreeMap<String, ClassState>;

/// Why migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("{}: unreadable migration record: {source}", path.display())]
    UnreadableRecord {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot record migrations: {source}", path.display())]
    Record {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove {}: {source}", path.display())]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: migrations conflict with the data directory {}: it recorded tags [{}] but the config lists [{}]; migrations can only be appended", config.display(), data_dir.display(), recorded.join(", "), listed.join(", "))]
    Conflict {
        config: PathBuf,
        data_dir: PathBuf,
        recorded: Vec<String>,
        listed: Vec<String>,
    },
    #[error("migration {tag}: transferred_classes names worker '{worker}', which dorun has no record of")]
    UnknownWorker { tag: String, worker: String },
    #[error("migration {tag}: worker '{worker}' has no class '{class}' to transfer")]
    NothingToTransfer {
        tag: String,
        worker: String,
        class: String,
    },
    #[error("migration {tag}: class '{class}' already exists")]
    ClassExists { tag: String, class: String },
    #[error("migration {tag}: {list} names unknown class '{class}'")]
    UnknownClass {
        tag: String,
        list: &'static str,
        class: String,
    },
    #[error("migration {tag}: cannot rename to existing class '{class}'")]
    RenameOntoExisting { tag: String, class: String },
    #[error("{}: exports.{class}: the class exists with {} storage; a class's storage kind cannot change", config.display(), if *sqlite { "SQLite" } else { "key-value" })]
    StorageKindChanged {
        config: PathBuf,
        class: String,
        sqlite: bool,
    },
}

/// Applies `config`'s migrations to the data directory and returns the worker's classes.
pub fn apply(data_dir: &Path, config: &WorkerConfig) -> Result<Classes, MigrationError> {
    let path = data_dir.join(STATE_FILE);
    let mut state: State = match std::fs::read_to_string(&path) {
        Ok(text) => {
            serde_json::from_str(&text).map_err(|source| MigrationError::UnreadableRecord {
                path: path.clone(),
                source,
            })?
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => State::default(),
        Err(source) => return Err(MigrationError::Io { path, source }),
    };
    let mut removed_dirs: Vec<PathBuf> = Vec::new();
    let mut changed = apply_to_state(&mut state, config, data_dir, &mut removed_dirs)?;
    changed |= reconcile_exports(&mut state, config, data_dir, &mut removed_dirs)?;
    if changed {
        let text = serde_json::to_string_pretty(&state).expect("state serializes");
        let temporary = data_dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&temporary, text)
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(|source| MigrationError::Record {
                path: path.clone(),
                source,
            })?;
        for dir in removed_dirs {
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .map_err(|source| MigrationError::Remove { path: dir, source })?;
            }
        }
    }
    Ok(state
        .workers
        .get(&config.name)
        .map(|w| w.classes.clone())
        .unwrap_or_default())
}

/// Makes the worker's classes what its `exports` block declares: renamed classes move to
/// their new name (keeping their key, so their objects and data), deleted ones go with their
/// data, live ones are created if missing. Returns whether anything changed.
fn reconcile_exports(
    state: &mut State,
    config: &WorkerConfig,
    data_dir: &Path,
    removed_dirs: &mut Vec<PathBuf>,
) -> Result<bool, MigrationError> {
    if config.exports.is_empty() {
        return Ok(false);
    }
    let worker = config.name.clone();
    let entry = state.workers.entry(worker.clone()).or_default();
    let mut changed = false;
    for export in &config.exports {
        if let ExportState::Renamed { to } = &export.state {
            if !entry.classes.contains_key(to) {
                if let Some(class) = entry.classes.remove(&export.class) {
                    entry.classes.insert(to.clone(), class);
                    changed = true;
                }
            }
        }
    }
    for export in &config.exports {
        if export.state == ExportState::Deleted {
            if let Some(removed) = entry.classes.remove(&export.class) {
                removed_dirs.push(data_dir.join(&removed.unique_key));
                changed = true;
            }
        }
    }
    for export in &config.exports {
        let ExportState::Live { sqlite } = export.state else {
            continue;
        };
        match entry.classes.get(&export.class) {
            Some(class) if class.sqlite != sqlite => {
                return Err(MigrationError::StorageKindChanged {
                    config: config.path.clone(),
                    class: export.class.clone(),
                    sqlite: class.sqlite,
                })
            }
            Some(_) => {}
            None => {
                entry.classes.insert(
                    export.class.clone(),
                    ClassState {
                        unique_key: format!("{worker}-{}", export.class),
                        sqlite,
                    },
                );
                changed = true;
            }
        }
    }
    Ok(changed)
}

fn apply_to_state(
    state: &mut State,
    config: &WorkerConfig,
    data_dir: &Path,
    removed_dirs: &mut Vec<PathBuf>,
) -> Result<bool, MigrationError> {
    let worker = config.name.clone();
    let recorded = state
        .workers
        .get(&worker)
        .map(|w| w.applied.clone())
        .unwrap_or_default();
    let tags: Vec<&str> = config.migrations.iter().map(|m| m.tag.as_str()).collect();
    for (index, tag) in recorded.iter().enumerate() {
        if tags.get(index) != Some(&tag.as_str()) {
            return Err(MigrationError::Conflict {
                config: config.path.clone(),
                data_dir: data_dir.to_path_buf(),
                recorded: recorded.clone(),
                listed: tags.iter().map(|t| t.to_string()).collect(),
            });
        }
    }
    let pending: Vec<&Migration> = config.migrations.iter().skip(recorded.len()).collect();
    if pending.is_empty() {
        return Ok(false);
    }
    for migration in pending {
        // Classes transferred from another worker are taken out of that worker first.
        let mut incoming: Vec<(String, ClassState)> = Vec::new();
        for (from, from_script, to) in &migration.transferred_classes {
            let source = state.workers.get_mut(from_script).ok_or_else(|| {
                MigrationError::UnknownWorker {
                    tag: migration.tag.clone(),
                    worker: from_script.clone(),
                }
            })?;
            let class =
                source
                    .classes
                    .remove(from)
                    .ok_or_else(|| MigrationError::NothingToTransfer {
                        tag: migration.tag.clone(),
                        worker: from_script.clone(),
                        class: from.clone(),
                    })?;
            incoming.push((to.clone(), class));
        }
        let entry = state.workers.entry(worker.clone()).or_default();
        let tag = &migration.tag;
        for (class_list, sqlite) in [
            (&migration.new_classes, false),
            (&migration.new_sqlite_classes, true),
        ] {
            for class in class_list {
                if entry.classes.contains_key(class) {
                    return Err(MigrationError::ClassExists {
                        tag: tag.clone(),
                        class: class.clone(),
                    });
                }
                entry.classes.insert(
                    class.clone(),
                    ClassState {
                        unique_key: format!("{worker}-{class}"),
                        sqlite,
                    },
                );
            }
        }
        for (from, to) in &migration.renamed_classes {
            let class = entry
                .classes
                .remove(from)
                .ok_or_else(|| MigrationError::UnknownClass {
                    tag: tag.clone(),
                    list: "renamed_classes",
                    class: from.clone(),
                })?;
            if entry.classes.contains_key(to) {
                return Err(MigrationError::RenameOntoExisting {
                    tag: tag.clone(),
                    class: to.clone(),
                });
            }
            entry.classes.insert(to.clone(), class);
        }
        for class in &migration.deleted_classes {
            let removed =
                entry
                    .classes
                    .remove(class)
                    .ok_or_else(|| MigrationError::UnknownClass {
                        tag: tag.clone(),
                        list: "deleted_classes",
                        class: class.clone(),
                    })?;
            removed_dirs.push(data_dir.join(&removed.unique_key));
        }
        for (to, class) in incoming {
            entry.classes.insert(to, class);
        }
        entry.applied.push(tag.clone());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, migrations: Vec<Migration>) -> WorkerConfig {
        WorkerConfig {
            path: PathBuf::from("wrangler.toml"),
            name: name.into(),
            main: None,
            compatibility_date: None,
            compatibility_flags: Vec::new(),
            vars: Default::default(),
            secret_names: Vec::new(),
            rules: Vec::new(),
            durable_objects: Vec::new(),
            kv_namespaces: Vec::new(),
            local_bindings: Vec::new(),
            crons: Vec::new(),
            services: Vec::new(),
            queue_producers: Vec::new(),
            queue_consumers: Vec::new(),
            workflows: Vec::new(),
            d1_databases: Vec::new(),
            r2_buckets: Vec::new(),
            migrations,
            exports: Vec::new(),
            cpu_limit_ms: None,
            assets: None,
            warnings: Vec::new(),
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("dorun-migrations-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn renamed_class_keeps_its_key_and_rerun_is_a_no_op() {
        let dir = temp_dir("rename");
        let v1 = Migration {
            tag: "v1".into(),
            new_sqlite_classes: vec!["Counter".into()],
            ..Default::default()
        };
        let classes = apply(&dir, &config("app", vec![v1.clone()])).unwrap();
        assert_eq!(classes["Counter"].unique_key, "app-Counter");
        let v2 = Migration {
            tag: "v2".into(),
            renamed_classes: vec![("Counter".into(), "Tally".into())],
            ..Default::default()
        };
        let both = config("app", vec![v1.clone(), v2]);
        let classes = apply(&dir, &both).unwrap();
        assert_eq!(classes["Tally"].unique_key, "app-Counter");
        assert!(!classes.contains_key("Counter"));
        let again = apply(&dir, &both).unwrap();
        assert_eq!(again["Tally"].unique_key, "app-Counter");
    }

    #[test]
    fn deleted_class_loses_its_data_directory() {
        let dir = temp_dir("delete");
        let v1 = Migration {
            tag: "v1".into(),
            new_classes: vec!["Old".into()],
            ..Default::default()
        };
        apply(&dir, &config("app", vec![v1.clone()])).unwrap();
        std::fs::create_dir_all(dir.join("app-Old")).unwrap();
        std::fs::write(dir.join("app-Old/x.sqlite"), b"data").unwrap();
        let v2 = Migration {
            tag: "v2".into(),
            deleted_classes: vec!["Old".into()],
            ..Default::default()
        };
        let classes = apply(&dir, &config("app", vec![v1, v2])).unwrap();
        assert!(classes.is_empty());
        assert!(!dir.join("app-Old").exists());
    }

    #[test]
    fn transferred_class_moves_with_its_key_to_the_new_worker() {
        let dir = temp_dir("transfer");
        let create = Migration {
            tag: "v1".into(),
            new_sqlite_classes: vec!["Room".into()],
            ..Default::default()
        };
        apply(&dir, &config("old-app", vec![create])).unwrap();
        let transfer = Migration {
            tag: "v1".into(),
            transferred_classes: vec![("Room".into(), "old-app".into(), "Lobby".into())],
            ..Default::default()
        };
        let classes = apply(&dir, &config("new-app", vec![transfer])).unwrap();
        assert_eq!(
            classes["Lobby"].unique_key, "old-app-Room",
            "data and ids follow"
        );
        assert!(classes["Lobby"].sqlite);
        let unknown = Migration {
            tag: "v1".into(),
            transferred_classes: vec![("Nope".into(), "old-app".into(), "X".into())],
            ..Default::default()
        };
        let error = apply(&dir, &config("third-app", vec![unknown])).unwrap_err();
        assert!(
            matches!(&error, MigrationError::NothingToTransfer { class, .. } if class == "Nope"),
            "{error}"
        );
        assert!(error.to_string().contains("no class 'Nope'"), "{error}");
    }

    #[test]
    fn conflicting_history_is_an_error() {
        let dir = temp_dir("conflict");
        let v1 = Migration {
            tag: "v1".into(),
            new_classes: vec!["A".into()],
            ..Default::default()
        };
        apply(&dir, &config("app", vec![v1])).unwrap();
        let other = Migration {
            tag: "other".into(),
            new_classes: vec!["A".into()],
            ..Default::default()
        };
        let error = apply(&dir, &config("app", vec![other])).unwrap_err();
        assert!(matches!(error, MigrationError::Conflict { .. }), "{error}");
        assert!(error.to_string().contains("conflict"), "{error}");
    }
}
