//! The binding kinds besides Durable Objects, KV, D1 and R2 that dorun serves without a
//! store of their own: `version_metadata`, rate limits (`ratelimits` and the
//! `unsafe.bindings` `ratelimit` form), Analytics Engine datasets (writes accepted and
//! dropped, as `wrangler dev` does), and the bindings that exist only on Cloudflare (AI,
//! Vectorize, Browser Rendering, ...). A Cloudflare-only binding does not stop startup: the
//! Worker starts with a warning, `env.<binding>` is there, and its first use throws an Error
//! naming it, as a Worker under `wrangler dev` without remote bindings sees.
//!
//! Each comes out as one JSON object for the isolate (`{binding, kind, ...}`; see
//! `js/17_local_bindings.js`).

use super::*;
use serde_json::json;

/// Keys whose entries are bindings only Cloudflare can serve, with what the warning and
/// the error call them.
pub(super) const CLOUD_ONLY: &[(&str, &str)] = &[
    ("ai", "Workers AI"),
    ("vectorize", "Vectorize"),
    ("browser", "Browser Rendering"),
    ("images", "Cloudflare Images"),
    ("hyperdrive", "Hyperdrive"),
    ("mtls_certificates", "an mTLS certificate"),
    ("dispatch_namespaces", "Workers for Platforms dispatch"),
    ("pipelines", "Pipelines"),
    ("vpc_services", "a VPC service"),
    ("worker_loaders", "Worker Loader"),
];

impl Reader {
    /// The bindings of `table` this module serves, in the order the keys appear.
    pub(super) fn read_local_bindings(&mut self, table: &Map<String, Value>) -> Vec<Value> {
        let mut out = Vec::new();
        for (key, what) in CLOUD_ONLY {
            let Some(value) = table.get(*key) else {
                continue;
            };
            for (at, binding, entry) in self.binding_names(key, value) {
                let mut item =
                    json!({"binding": binding, "kind": "cloud", "key": key, "what": what});
                // Hyperdrive with a local database: the connection details are there, for a
                // driver to connect() to.
                if *key == "hyperdrive" {
                    if let Some(url) = entry.get("localConnectionString").and_then(Value::as_str) {
                        match url::Url::parse(url) {
                            Ok(parsed) => {
                                item = json!({
                                    "binding": binding,
                                    "kind": "hyperdrive",
                                    "connectionString": url,
                                    "host": parsed.host_str().unwrap_or_default(),
                                    "port": parsed.port().unwrap_or(5432),
                                    "user": parsed.username(),
                                    "password": parsed.password().unwrap_or_default(),
                                    "database": parsed.path().trim_start_matches('/'),
                                });
                                out.push(item);
                                continue;
                            }
                            Err(error) => {
                                self.problems
                                    .push(format!("{at}.localConnectionString: {error}"));
                                continue;
                            }
                        }
                    }
                }
                self.warnings.push(format!(
                    "{at}: env.{binding} ({what}) exists only on Cloudflare; the Worker starts, \
                     and its first use throws"
                ));
                out.push(item);
            }
        }
        // Email: messages are written to the outbox directory, as `wrangler dev` writes them
        // to files.
        if let Some(value) = table.get("send_email") {
            for (at, binding, entry) in self.binding_names("send_email", value) {
                let destination = entry.get("destination_address").and_then(Value::as_str);
                let allowed = match entry.get("allowed_destination_addresses") {
                    None => None,
                    Some(Value::Array(list)) if list.iter().all(Value::is_string) => {
                        Some(list.clone())
                    }
                    Some(_) => {
                        self.problems.push(format!(
                            "{at}.allowed_destination_addresses must list strings"
                        ));
                        None
                    }
                };
                out.push(json!({"binding": binding, "kind": "send_email",
                                "destination": destination, "allowed": allowed}));
            }
        }
        // Secrets Store: a secret's value comes from `.dev.vars` / `.env` or the process's
        // environment, under its `secret_name` (filled in by `load`).
        if let Some(value) = table.get("secrets_store_secrets") {
            for (at, binding, entry) in self.binding_names("secrets_store_secrets", value) {
                let Some(secret_name) = entry.get("secret_name").and_then(Value::as_str) else {
                    self.problems
                        .push(format!("{at} needs a string key 'secret_name'"));
                    continue;
                };
                out.push(json!({"binding": binding, "kind": "secret",
                                "secretName": secret_name, "value": null}));
            }
        }
        // Analytics Engine: data points are accepted locally and go nowhere, as in
        // `wrangler dev`.
        if let Some(value) = table.get("analytics_engine_datasets") {
            for (_, binding, _) in self.binding_names("analytics_engine_datasets", value) {
                out.push(json!({"binding": binding, "kind": "analytics_engine"}));
            }
        }
        if let Some(value) = table.get("version_metadata") {
            for (_, binding, _) in self.binding_names("version_metadata", value) {
                out.push(json!({"binding": binding, "kind": "version_metadata"}));
            }
        }
        if let Some(value) = table.get("ratelimits") {
            for (at, binding, entry) in self.binding_names("ratelimits", value) {
                if let Some(item) = self.ratelimit(&at, &binding, entry) {
                    out.push(item);
                }
            }
        }
        if let Some(value) = table.get("unsafe") {
            self.read_unsafe(value, &mut out);
        }
        out
    }

    /// `unsafe = { bindings = [{ name, type = "ratelimit", namespace_id, simple }] }`: the
    /// rate limits; any other unsafe binding starts with a warning and is left out.
    fn read_unsafe(&mut self, value: &Value, out: &mut Vec<Value>) {
        let Some(section) = value.as_object() else {
            self.problems
                .push("key 'unsafe' must be a table / object".into());
            return;
        };
        for key in section.keys() {
            if key != "bindings" {
                self.warnings.push(format!(
                    "key 'unsafe.{key}' is not supported and is ignored"
                ));
            }
        }
        let Some(bindings) = section.get("bindings") else {
            return;
        };
        for (at, binding, entry) in self.binding_names("unsafe.bindings", bindings) {
            match entry.get("type").and_then(Value::as_str) {
                Some("ratelimit") => {
                    if let Some(item) = self.ratelimit(&at, &binding, entry) {
                        out.push(item);
                    }
                }
                other => self.warnings.push(format!(
                    "{at}: unsafe binding type {} is not supported; env.{binding} is left out",
                    other.map_or("(none)".to_string(), |t| format!("'{t}'"))
                )),
            }
        }
    }

    /// One rate limit: `{ name, namespace_id, simple = { limit, period } }` (period 10 or
    /// 60 seconds, as Cloudflare takes).
    fn ratelimit(&mut self, at: &str, binding: &str, entry: &Map<String, Value>) -> Option<Value> {
        let namespace = match entry.get("namespace_id") {
            Some(Value::String(id)) => id.clone(),
            Some(Value::Number(id)) => id.to_string(),
            _ => binding.to_string(),
        };
        let simple = entry.get("simple").and_then(Value::as_object);
        let limit = simple.and_then(|s| s.get("limit")).and_then(Value::as_u64);
        let period = simple.and_then(|s| s.get("period")).and_then(Value::as_u64);
        match (limit, period) {
            (Some(limit), Some(period @ (10 | 60))) if limit > 0 => Some(json!({
                "binding": binding,
                "kind": "ratelimit",
                "namespace": namespace,
                "limit": limit,
                "period": period,
            })),
            _ => {
                self.problems.push(format!(
                    "{at}.simple must be {{ limit = <positive integer>, period = 10 or 60 }}"
                ));
                None
            }
        }
    }

    /// The entries of a binding key, as (where, binding name, entry): an array of tables, or
    /// one table (`ai`, `browser`, `images`, `version_metadata`). The name is `binding`, or
    /// `name` where wrangler calls it that (`send_email`, `ratelimits`, `unsafe.bindings`).
    fn binding_names<'a>(
        &mut self,
        key: &str,
        value: &'a Value,
    ) -> Vec<(String, String, &'a Map<String, Value>)> {
        let entries: Vec<(String, &Value)> = match value {
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| (format!("{key}[{i}]"), item))
                .collect(),
            Value::Object(_) => vec![(key.to_string(), value)],
            _ => {
                self.problems
                    .push(format!("key '{key}' must be an array or a table / object"));
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (at, item) in entries {
            let Some(entry) = item.as_object() else {
                self.problems.push(format!("{at} must be a table / object"));
                continue;
            };
            let name = entry
                .get("binding")
                .or_else(|| entry.get("name"))
                .and_then(Value::as_str);
            let Some(name) = name else {
                self.problems
                    .push(format!("{at} needs a string key 'binding'"));
                continue;
            };
            if !is_js_identifier(name) {
                self.problems.push(format!(
                    "{at}.binding '{name}' is not a valid JavaScript identifier"
                ));
                continue;
            }
            out.push((at, name.to_string(), entry));
        }
        out
    }

    /// `triggers = { crons = ["*/5 * * * *", ...] }`: each pattern must parse.
    pub(super) fn read_crons(&mut self, table: &Map<String, Value>) -> Vec<String> {
        let Some(triggers) = table.get("triggers") else {
            return Vec::new();
        };
        let Some(triggers) = triggers.as_object() else {
            self.problems
                .push("key 'triggers' must be a table / object".into());
            return Vec::new();
        };
        for key in triggers.keys() {
            if key != "crons" {
                self.warnings
                    .push(format!("unknown key 'triggers.{key}' is ignored"));
            }
        }
        let mut crons = Vec::new();
        match triggers.get("crons") {
            None => {}
            Some(Value::Array(items)) => {
                for (index, item) in items.iter().enumerate() {
                    match item.as_str().map(|p| (p, crate::crons::parse(p))) {
                        Some((pattern, Ok(_))) => crons.push(pattern.trim().to_string()),
                        Some((pattern, Err(error))) => self.problems.push(format!(
                            "triggers.crons[{index}] '{pattern}' is not a cron pattern: {error}"
                        )),
                        None => self
                            .problems
                            .push(format!("triggers.crons[{index}] must be a string")),
                    }
                }
            }
            Some(_) => self
                .problems
                .push("key 'triggers.crons' must be an array of strings".into()),
        }
        crons
    }

    /// `services = [{ binding, service, entrypoint, props }]`.
    pub(super) fn read_services(&mut self, table: &Map<String, Value>) -> Vec<ServiceBinding> {
        let known = [
            "binding",
            "service",
            "entrypoint",
            "environment",
            "props",
            "remote",
            "experimental_remote",
        ];
        let mut out = Vec::new();
        for (at, binding, entry) in self.binding_entries(table, "services", &known) {
            let Some(service) = entry.get("service").and_then(Value::as_str) else {
                self.problems
                    .push(format!("{at} needs a string key 'service'"));
                continue;
            };
            let entrypoint = match entry.get("entrypoint") {
                None => None,
                Some(Value::String(name)) if is_js_identifier(name) => Some(name.clone()),
                Some(_) => {
                    self.problems.push(format!(
                        "{at}.entrypoint must name an export (a JavaScript identifier)"
                    ));
                    None
                }
            };
            let props = match entry.get("props") {
                None => None,
                Some(props @ Value::Object(_)) => Some(props.to_string()),
                Some(_) => {
                    self.problems
                        .push(format!("{at}.props must be a table / object"));
                    None
                }
            };
            out.push(ServiceBinding {
                binding,
                service: service.to_string(),
                entrypoint,
                props,
            });
        }
        out
    }
}
