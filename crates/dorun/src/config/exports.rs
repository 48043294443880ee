//! The top-level `exports` block: wrangler's declarative alternative to `migrations`. Each
//! entry, keyed by class name, declares a Durable Object class and its state: live (with its
//! storage kind), deleted, or renamed. Reconciled against the data directory at every start
//! (migrations.rs), where `migrations` are applied once by tag.

use super::*;

/// One class of the `exports` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassExport {
    pub class: String,
    pub state: ExportState,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportState {
    /// The class exists (created if it does not yet), SQLite-backed or key-value.
    Live { sqlite: bool },
    /// The class and its data are removed.
    Deleted,
    /// The class's objects and data move to class `to` (which must be declared live).
    Renamed { to: String },
}

impl Reader {
    pub(super) fn read_exports(&mut self, root: &Map<String, Value>) -> Vec<ClassExport> {
        let mut exports = Vec::new();
        let Some(value) = root.get("exports") else {
            return exports;
        };
        let Some(table) = value.as_object() else {
            self.problems
                .push("key 'exports' must be a table / object of classes".into());
            return exports;
        };
        for (class, entry) in table {
            let at = format!("exports.{class}");
            let Some(entry) = entry.as_object() else {
                self.problems
                    .push(format!("key '{at}' must be a table / object"));
                continue;
            };
            let text = |key: &str| entry.get(key).and_then(Value::as_str);
            match text("type") {
                Some("durable-object") => {}
                Some(other) => {
                    self.problems.push(format!(
                        "key '{at}.type': '{other}' exports are not supported (only \"durable-object\")"
                    ));
                    continue;
                }
                None => {
                    self.problems
                        .push(format!("key '{at}.type' is missing (\"durable-object\")"));
                    continue;
                }
            }
            let state = match text("state").unwrap_or("created") {
                "created" => match text("storage").unwrap_or("sqlite") {
                    "sqlite" => ExportState::Live { sqlite: true },
                    "legacy-kv" => ExportState::Live { sqlite: false },
                    other => {
                        self.problems.push(format!(
                            "key '{at}.storage': '{other}' is not a storage kind (\"sqlite\" or \"legacy-kv\")"
                        ));
                        continue;
                    }
                },
                "deleted" => ExportState::Deleted,
                "renamed" => match text("renamed_to") {
                    Some(to) if !to.is_empty() => ExportState::Renamed { to: to.to_string() },
                    _ => {
                        self.problems.push(format!(
                            "key '{at}.renamed_to' must name the class it is renamed to"
                        ));
                        continue;
                    }
                },
                other => {
                    self.problems.push(format!(
                        "key '{at}.state': '{other}' is not supported by dorun (\"created\", \"deleted\" or \"renamed\"; transfers between workers use migrations)"
                    ));
                    continue;
                }
            };
            for key in entry.keys() {
                if !["type", "state", "storage", "renamed_to"].contains(&key.as_str()) {
                    self.warnings
                        .push(format!("key '{at}.{key}' is not supported and is ignored"));
                }
            }
            exports.push(ClassExport {
                class: class.clone(),
                state,
            });
        }
        for export in &exports {
            if let ExportState::Renamed { to } = &export.state {
                let live = exports
                    .iter()
                    .any(|e| &e.class == to && matches!(e.state, ExportState::Live { .. }));
                if !live {
                    self.problems.push(format!(
                        "key 'exports.{}.renamed_to': class '{to}' must be declared in exports too",
                        export.class
                    ));
                }
            }
        }
        exports
    }
}
