//! The `assets` key: wrangler's static assets settings, checked and resolved against the
//! config file's directory.

use super::*;

impl Reader {
    /// The `assets` section: `directory` (required, relative to the config file),
    /// `binding`, `html_handling`, `not_found_handling`, `run_worker_first`.
    pub(super) fn read_assets(
        &mut self,
        table: &Map<String, Value>,
        base_dir: &Path,
        has_worker: bool,
    ) -> Option<dorun_assets::AssetsConfig> {
        use dorun_assets::{AssetsConfig, HtmlHandling, NotFoundHandling, RunWorkerFirst};
        let section = table.get("assets")?;
        let Some(section) = section.as_object() else {
            self.problems
                .push("key 'assets' must be a table / object".into());
            return None;
        };
        let mut config = AssetsConfig::default();
        let mut ok = true;
        for (key, value) in section {
            match key.as_str() {
                "directory" => match value.as_str() {
                    Some(dir) if !dir.is_empty() => {
                        let directory = base_dir.join(dir);
                        if !directory.is_dir() {
                            self.problems.push(format!(
                                "key 'assets.directory': {} does not exist or is not a directory",
                                directory.display()
                            ));
                            ok = false;
                        }
                        config.directory = directory;
                    }
                    _ => {
                        self.problems
                            .push("key 'assets.directory' must be a non-empty string".into());
                        ok = false;
                    }
                },
                "binding" => match value.as_str() {
                    Some(name) if is_js_identifier(name) => config.binding = Some(name.into()),
                    _ => {
                        self.problems.push(format!(
                            "key 'assets.binding' must be a JavaScript identifier, got {value}"
                        ));
                        ok = false;
                    }
                },
                "html_handling" => match value.as_str().and_then(HtmlHandling::parse) {
                    Some(handling) => config.html_handling = handling,
                    None => {
                        self.problems.push(format!(
                            "key 'assets.html_handling' must be one of \"auto-trailing-slash\", \"force-trailing-slash\", \"drop-trailing-slash\", \"none\"; got {value}"
                        ));
                        ok = false;
                    }
                },
                "not_found_handling" => match value.as_str().and_then(NotFoundHandling::parse) {
                    Some(handling) => config.not_found_handling = handling,
                    None => {
                        self.problems.push(format!(
                            "key 'assets.not_found_handling' must be one of \"none\", \"404-page\", \"single-page-application\"; got {value}"
                        ));
                        ok = false;
                    }
                },
                "run_worker_first" | "experimental_serve_directly" => {
                    let serve_directly = key == "experimental_serve_directly";
                    match value {
                        Value::Bool(flag) => {
                            config.run_worker_first = if *flag != serve_directly {
                                RunWorkerFirst::Always
                            } else {
                                RunWorkerFirst::No
                            };
                        }
                        Value::Array(items) if !serve_directly => {
                            let mut routes = Vec::new();
                            for item in items {
                                match item.as_str() {
                                    Some(route)
                                        if route.starts_with('/') || route.starts_with("!/") =>
                                    {
                                        routes.push(route.to_string())
                                    }
                                    _ => {
                                        self.problems.push(format!(
                                            "key 'assets.run_worker_first': route {item} must be a string starting with '/' (or '!/' to exclude)"
                                        ));
                                        ok = false;
                                    }
                                }
                            }
                            config.run_worker_first = RunWorkerFirst::Routes(routes);
                        }
                        _ => {
                            self.problems.push(format!(
                                "key 'assets.{key}' must be a boolean{}, got {value}",
                                if serve_directly {
                                    ""
                                } else {
                                    " or a list of route patterns"
                                }
                            ));
                            ok = false;
                        }
                    }
                }
                other => self
                    .warnings
                    .push(format!("unknown key 'assets.{other}' is ignored")),
            }
        }
        if !section.contains_key("directory") {
            self.problems.push(
                "key 'assets.directory' is missing: name the folder of static files to serve"
                    .into(),
            );
            return None;
        }
        if !has_worker {
            if let Some(binding) = &config.binding {
                self.problems.push(format!(
                    "key 'assets.binding' ('{binding}') needs a Worker: set 'main' or pass the script"
                ));
                ok = false;
            }
        }
        ok.then_some(config)
    }
}
