//! `dorun inspect`: the admin listener's API as tables in a terminal (namespaces, objects,
//! KV entries, SQL results, alarms; KV namespaces, D1 databases, R2 buckets, queues and
//! cron triggers), or its JSON
//! with `--json`.

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::admin_client::AdminTarget;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The admin listener, e.g. http://127.0.0.1:9000 (see `dorun serve --admin-port`).
    #[arg(long, value_name = "URL", env = "DORUN_ADMIN_URL")]
    pub admin: String,
    /// The admin listener's token.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "DORUN_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub what: Inspect,
}

#[derive(Debug, Subcommand)]
pub enum Inspect {
    /// Namespaces, or the objects of one namespace.
    List { namespace: Option<String> },
    /// An object's KV entries (OBJECT: its id or a unique prefix of it).
    Kv {
        namespace: String,
        object: String,
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Run SQL on an object (the KV table `_cf_KV` is readable).
    Sql {
        namespace: String,
        object: String,
        query: String,
    },
    /// Scheduled alarms (of one namespace, or all).
    Alarms { namespace: Option<String> },
    /// The KV namespaces, D1 databases and R2 buckets that hold data.
    Bindings,
    /// The keys of a KV namespace (its `id`, or its binding's name when it has no id).
    KvKeys {
        namespace: String,
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Print a KV value to standard output, as stored.
    KvGet { namespace: String, key: String },
    /// Store a KV value (from the argument, or from standard input with `-`).
    KvPut {
        namespace: String,
        key: String,
        value: String,
    },
    /// Delete a KV key.
    KvDelete { namespace: String, key: String },
    /// Run SQL on a D1 database (statements separated by `;`; the last one's rows are shown);
    /// without a query, its tables and their row counts.
    D1 {
        database: String,
        query: Option<String>,
    },
    /// The objects of an R2 bucket.
    R2 {
        bucket: String,
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Write an R2 object to standard output (or to --out FILE).
    R2Get {
        bucket: String,
        key: String,
        #[arg(long, short = 'o')]
        out: Option<std::path::PathBuf>,
    },
    /// Delete an R2 object.
    R2Delete { bucket: String, key: String },
    /// Queues: messages stored, ready, in flight, and how they ended.
    Queues,
    /// The oldest messages of a queue (text and JSON bodies shown).
    Queue {
        name: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Delete every message stored in a queue.
    QueuePurge { name: String },
    /// Cron triggers: next run and last run.
    Crons,
    /// Workflows and their instances by status; with a name, its newest instances; with an
    /// instance id too, that instance's steps.
    Workflows {
        name: Option<String>,
        instance: Option<String>,
    },
}

/// A path segment or key, percent-encoded for a URL path (slashes in keys kept).
fn segment(text: &str) -> String {
    text.split('/')
        .map(|part| url::form_urlencoded::byte_serialize(part.as_bytes()).collect::<String>())
        .map(|part| part.replace('+', "%20"))
        .collect::<Vec<_>>()
        .join("/")
}

/// The subcommands that move bytes rather than print a table.
fn raw(admin: &AdminTarget, what: &Inspect) -> anyhow::Result<bool> {
    use std::io::{Read, Write};
    let done = match what {
        Inspect::KvGet { namespace, key } => {
            let path = format!("/api/kv/{}/values/{}", segment(namespace), segment(key));
            std::io::stdout().write_all(&admin.call("GET", &path, Default::default())?)?;
            true
        }
        Inspect::KvPut {
            namespace,
            key,
            value,
        } => {
            let value = if value == "-" {
                let mut bytes = Vec::new();
                std::io::stdin().read_to_end(&mut bytes)?;
                bytes
            } else {
                value.clone().into_bytes()
            };
            let path = format!("/api/kv/{}/values/{}", segment(namespace), segment(key));
            admin.call("PUT", &path, value.into())?;
            true
        }
        Inspect::KvDelete { namespace, key } => {
            let path = format!("/api/kv/{}/values/{}", segment(namespace), segment(key));
            admin.call("DELETE", &path, Default::default())?;
            true
        }
        Inspect::R2Get { bucket, key, out } => {
            let path = format!("/api/r2/{}/objects/{}", segment(bucket), segment(key));
            let body = admin.call("GET", &path, Default::default())?;
            match out {
                Some(file) => std::fs::write(file, &body)?,
                None => std::io::stdout().write_all(&body)?,
            }
            true
        }
        Inspect::R2Delete { bucket, key } => {
            let path = format!("/api/r2/{}/objects/{}", segment(bucket), segment(key));
            admin.call("DELETE", &path, Default::default())?;
            true
        }
        _ => false,
    };
    Ok(done)
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let admin = AdminTarget::new(&args.admin, args.admin_token.clone());
    if raw(&admin, &args.what)? {
        return Ok(());
    }
    let (value, table) = match &args.what {
        Inspect::List { namespace: None } => {
            let value = admin.json("GET", "/api/namespaces", Default::default())?;
            let table = namespaces_table(&value);
            (value, table)
        }
        Inspect::List {
            namespace: Some(ns),
        } => {
            let value = admin.json(
                "GET",
                &format!("/api/namespaces/{ns}/objects"),
                Default::default(),
            )?;
            let table = objects_table(&value);
            (value, table)
        }
        Inspect::Kv {
            namespace,
            object,
            prefix,
            limit,
        } => {
            let id = resolve(&admin, namespace, object)?;
            let mut path = format!("/api/objects/{namespace}/{id}/kv?limit={limit}");
            if let Some(prefix) = prefix {
                let prefix: String =
                    url::form_urlencoded::byte_serialize(prefix.as_bytes()).collect();
                path.push_str(&format!("&prefix={prefix}"));
            }
            let value = admin.json("GET", &path, Default::default())?;
            let table = kv_table(&value);
            (value, table)
        }
        Inspect::Sql {
            namespace,
            object,
            query,
        } => {
            let id = resolve(&admin, namespace, object)?;
            let body = serde_json::json!({ "query": query }).to_string();
            let value = admin.json(
                "POST",
                &format!("/api/objects/{namespace}/{id}/sql"),
                body.into(),
            )?;
            let table = sql_table(&value);
            (value, table)
        }
        Inspect::Alarms { namespace } => alarms(&admin, namespace.as_deref())?,
        Inspect::Bindings => bindings(&admin)?,
        Inspect::KvKeys {
            namespace,
            prefix,
            limit,
        } => {
            let mut path = format!("/api/kv/{}/keys?limit={limit}", segment(namespace));
            if let Some(prefix) = prefix {
                let prefix: String =
                    url::form_urlencoded::byte_serialize(prefix.as_bytes()).collect();
                path.push_str(&format!("&prefix={prefix}"));
            }
            let value = admin.json("GET", &path, Default::default())?;
            let rows = value["keys"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|k| {
                    vec![
                        cell(&k["name"]),
                        k["expiration"]
                            .as_i64()
                            .map(|at| when(at * 1000))
                            .unwrap_or_default(),
                        if k["metadata"].is_null() {
                            String::new()
                        } else {
                            cell(&Value::String(k["metadata"].to_string()))
                        },
                    ]
                })
                .collect();
            let mut table = render(&["KEY", "EXPIRES", "METADATA"], rows);
            if value["complete"] == false {
                table.push_str("(more keys: raise --limit)\n");
            }
            (value, table)
        }
        Inspect::D1 {
            database,
            query: None,
        } => {
            let list = admin.json("GET", "/api/d1", Default::default())?;
            let Some(found) = list
                .as_array()
                .into_iter()
                .flatten()
                .find(|d| d["name"] == database.as_str())
            else {
                bail!("no D1 database '{database}' holds data (see `dorun inspect bindings`)");
            };
            let rows = found["tables"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| vec![cell(&t["name"]), t["rows"].to_string()])
                .collect();
            let table = render(&["TABLE", "ROWS"], rows);
            (found.clone(), table)
        }
        Inspect::D1 {
            database,
            query: Some(query),
        } => {
            let body = serde_json::json!({ "query": query }).to_string();
            let mut value = admin.json(
                "POST",
                &format!("/api/d1/{}/sql", segment(database)),
                body.into(),
            )?;
            value["rowsWritten"] = value["changes"].clone();
            let table = sql_table(&value);
            (value, table)
        }
        Inspect::R2 { bucket, prefix } => {
            let mut path = format!("/api/r2/{}/objects", segment(bucket));
            if let Some(prefix) = prefix {
                let prefix: String =
                    url::form_urlencoded::byte_serialize(prefix.as_bytes()).collect();
                path.push_str(&format!("?prefix={prefix}"));
            }
            let value = admin.json("GET", &path, Default::default())?;
            let rows = value["objects"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|o| {
                    vec![
                        cell(&o["key"]),
                        bytes(&o["size"]),
                        cell(&o["etag"]),
                        o["uploaded"].as_i64().map(when).unwrap_or_default(),
                    ]
                })
                .collect();
            let table = render(&["KEY", "SIZE", "ETAG", "UPLOADED"], rows);
            (value, table)
        }
        Inspect::Queues => {
            let value = admin.json("GET", "/api/queues", Default::default())?;
            let rows = value
                .as_array()
                .into_iter()
                .flatten()
                .map(|q| {
                    let consumer = &q["consumer"];
                    vec![
                        cell(&q["name"]),
                        q["depth"].to_string(),
                        q["ready"].to_string(),
                        consumer["inFlight"]
                            .as_u64()
                            .map(|n| n.to_string())
                            .unwrap_or_default(),
                        q["acked"].to_string(),
                        q["retried"].to_string(),
                        q["deadLettered"].to_string(),
                        q["dropped"].to_string(),
                        consumer["worker"].as_str().unwrap_or("(none)").to_string(),
                    ]
                })
                .collect();
            let table = render(
                &[
                    "QUEUE",
                    "STORED",
                    "READY",
                    "IN FLIGHT",
                    "ACKED",
                    "RETRIED",
                    "DEAD-LETTERED",
                    "DROPPED",
                    "CONSUMER",
                ],
                rows,
            );
            (value, table)
        }
        Inspect::Queue { name, limit } => {
            let path = format!("/api/queues/{}/messages?limit={limit}", segment(name));
            let value = admin.json("GET", &path, Default::default())?;
            let rows = value
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    vec![
                        cell(&m["id"]),
                        m["timestamp"].as_i64().map(when).unwrap_or_default(),
                        m["attempts"].to_string(),
                        cell(&m["contentType"]),
                        bytes(&m["bytes"]),
                        if m["body"].is_null() {
                            String::new()
                        } else {
                            cell(&m["body"])
                        },
                    ]
                })
                .collect();
            let table = render(&["ID", "SENT", "FAILED", "TYPE", "SIZE", "BODY"], rows);
            (value, table)
        }
        Inspect::QueuePurge { name } => {
            let path = format!("/api/queues/{}/purge", segment(name));
            let value = admin.json("POST", &path, Default::default())?;
            let table = format!("purged {} messages from {name}\n", value["purged"]);
            (value, table)
        }
        Inspect::Crons => {
            let value = admin.json("GET", "/api/crons", Default::default())?;
            let rows = value
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let last = &t["last"];
                    vec![
                        cell(&t["worker"]),
                        cell(&t["cron"]),
                        t["next"].as_str().unwrap_or_default().to_string(),
                        last["scheduled"].as_i64().map(when).unwrap_or_default(),
                        last["outcome"].as_str().unwrap_or_default().to_string(),
                    ]
                })
                .collect();
            let table = render(&["WORKER", "CRON", "NEXT", "LAST RUN", "OUTCOME"], rows);
            (value, table)
        }
        Inspect::Workflows {
            name: None,
            instance: _,
        } => {
            let value = admin.json("GET", "/api/workflows", Default::default())?;
            let rows = value
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| {
                    let counts = w["instances"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| format!("{k} {v}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    vec![
                        cell(&w["name"]),
                        w["worker"].as_str().unwrap_or("(not served)").to_string(),
                        counts,
                        w["runsInProgress"].to_string(),
                    ]
                })
                .collect();
            let table = render(&["WORKFLOW", "WORKER", "INSTANCES", "RUNNING NOW"], rows);
            (value, table)
        }
        Inspect::Workflows {
            name: Some(name),
            instance: None,
        } => {
            let path = format!("/api/workflows/{}/instances", segment(name));
            let value = admin.json("GET", &path, Default::default())?;
            let rows = value
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    vec![
                        cell(&i["id"]),
                        cell(&i["status"]),
                        i["created"].as_i64().map(when).unwrap_or_default(),
                        i["updated"].as_i64().map(when).unwrap_or_default(),
                        if i["error"].is_null() {
                            String::new()
                        } else {
                            format!(
                                "{}: {}",
                                cell(&i["error"]["name"]),
                                cell(&i["error"]["message"])
                            )
                        },
                    ]
                })
                .collect();
            let table = render(&["INSTANCE", "STATUS", "CREATED", "UPDATED", "ERROR"], rows);
            (value, table)
        }
        Inspect::Workflows {
            name: Some(name),
            instance: Some(instance),
        } => {
            let path = format!(
                "/api/workflows/{}/instances/{}",
                segment(name),
                segment(instance)
            );
            let value = admin.json("GET", &path, Default::default())?;
            let rows = value["steps"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    vec![
                        cell(&s["key"]),
                        s["attempts"].to_string(),
                        if s["done"] == true { "done" } else { "" }.to_string(),
                        s["until"].as_i64().map(when).unwrap_or_default(),
                        if s["error"].is_null() {
                            String::new()
                        } else {
                            cell(&s["error"]["message"])
                        },
                    ]
                })
                .collect();
            let mut table = format!("{} {}\n", cell(&value["id"]), cell(&value["status"]));
            table.push_str(&render(
                &["STEP", "ATTEMPTS", "DONE", "UNTIL", "ERROR"],
                rows,
            ));
            (value, table)
        }
        Inspect::KvGet { .. }
        | Inspect::KvPut { .. }
        | Inspect::KvDelete { .. }
        | Inspect::R2Get { .. }
        | Inspect::R2Delete { .. } => unreachable!("handled by raw()"),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{table}");
    }
    Ok(())
}

/// An object id from a unique prefix of it.
fn resolve(admin: &AdminTarget, namespace: &str, prefix: &str) -> anyhow::Result<String> {
    if prefix.len() == 64 {
        return Ok(prefix.to_ascii_lowercase());
    }
    let objects = admin.objects(namespace)?;
    let prefix = prefix.to_ascii_lowercase();
    let matches: Vec<&str> = objects
        .iter()
        .filter_map(|o| o["id"].as_str())
        .filter(|id| id.starts_with(&prefix))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.to_string()),
        [] => bail!("no object of {namespace} starts with '{prefix}'"),
        _ => bail!(
            "'{prefix}' matches {} objects of {namespace}; give more digits",
            matches.len()
        ),
    }
}

fn alarms(admin: &AdminTarget, namespace: Option<&str>) -> anyhow::Result<(Value, String)> {
    let mut rows = Vec::new();
    let mut all = Vec::new();
    for key in admin.namespace_keys()? {
        if namespace.is_some_and(|n| n != key) {
            continue;
        }
        let key = key.as_str();
        for object in admin.objects(key)? {
            let Some(at) = object["alarm"].as_i64() else {
                continue;
            };
            rows.push(vec![
                key.to_string(),
                object["id"].as_str().unwrap_or_default().to_string(),
                when(at),
                object["alarmRetries"].to_string(),
            ]);
            all.push(serde_json::json!({"namespace": key, "id": object["id"], "alarm": at, "retries": object["alarmRetries"]}));
        }
    }
    let table = render(&["NAMESPACE", "OBJECT", "ALARM", "RETRIES"], rows);
    Ok((Value::Array(all), table))
}

/// KV namespaces, D1 databases and R2 buckets in one table.
fn bindings(admin: &AdminTarget) -> anyhow::Result<(Value, String)> {
    let kv = admin.json("GET", "/api/kv", Default::default())?;
    let d1 = admin.json("GET", "/api/d1", Default::default())?;
    let r2 = admin.json("GET", "/api/r2", Default::default())?;
    let list = |value: &Value| value.as_array().cloned().unwrap_or_default();
    let mut rows = Vec::new();
    for n in list(&kv) {
        rows.push(vec![
            "kv".into(),
            cell(&n["id"]),
            format!("{} keys", n["keys"]),
        ]);
    }
    for db in list(&d1) {
        let tables: Vec<String> = list(&db["tables"])
            .iter()
            .map(|t| format!("{} ({})", t["name"].as_str().unwrap_or_default(), t["rows"]))
            .collect();
        rows.push(vec!["d1".into(), cell(&db["name"]), tables.join(", ")]);
    }
    for b in list(&r2) {
        rows.push(vec![
            "r2".into(),
            cell(&b["name"]),
            format!("{} objects", b["objects"]),
        ]);
    }
    let table = render(&["KIND", "NAME", "HOLDS"], rows);
    Ok((serde_json::json!({"kv": kv, "d1": d1, "r2": r2}), table))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A time relative to now: `in 5s`, `3m ago`.
fn when(ms: i64) -> String {
    let delta = ms - now_ms();
    let secs = delta.abs() / 1000;
    let amount = match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m", secs / 60),
        3600..=86_399 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    };
    if delta >= 0 {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

fn bytes(n: &Value) -> String {
    let n = n.as_u64().unwrap_or(0) as f64;
    match n {
        n if n < 1024.0 => format!("{n} B"),
        n if n < 1024.0 * 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n => format!("{:.1} MiB", n / 1024.0 / 1024.0),
    }
}

fn cell(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Null => "NULL".into(),
        other => other.to_string(),
    };
    let text = text.replace(['\n', '\t'], " ");
    if text.chars().count() > 60 {
        format!("{}...", text.chars().take(57).collect::<String>())
    } else {
        text
    }
}

fn namespaces_table(value: &Value) -> String {
    let rows = value
        .as_array()
        .into_iter()
        .flatten()
        .map(|ns| {
            vec![
                cell(&ns["key"]),
                cell(&ns["worker"]),
                cell(&ns["class"]),
                cell(&ns["binding"]),
                ns["objects"].to_string(),
                bytes(&ns["bytes"]),
            ]
        })
        .collect();
    render(
        &["NAMESPACE", "WORKER", "CLASS", "BINDING", "OBJECTS", "SIZE"],
        rows,
    )
}

fn objects_table(value: &Value) -> String {
    let rows = value
        .as_array()
        .into_iter()
        .flatten()
        .map(|o| {
            vec![
                o["id"].as_str().unwrap_or_default().to_string(),
                o["name"].as_str().unwrap_or("").to_string(),
                bytes(&o["bytes"]),
                o["lastActivity"].as_i64().map(when).unwrap_or_default(),
                if o["resident"] == true { "yes" } else { "no" }.to_string(),
                o["alarm"].as_i64().map(when).unwrap_or_default(),
            ]
        })
        .collect();
    render(
        &["OBJECT", "NAME", "SIZE", "LAST ACTIVE", "RESIDENT", "ALARM"],
        rows,
    )
}

fn kv_table(value: &Value) -> String {
    let rows = value["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| vec![cell(&e["key"]), cell(&e["value"]), bytes(&e["bytes"])])
        .collect();
    render(&["KEY", "VALUE", "SIZE"], rows)
}

fn sql_table(value: &Value) -> String {
    let columns: Vec<String> = value["columns"]
        .as_array()
        .into_iter()
        .flatten()
        .map(cell)
        .collect();
    let rows: Vec<Vec<String>> = value["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|row| row.as_array().into_iter().flatten().map(cell).collect())
        .collect();
    let count = rows.len();
    let headers: Vec<&str> = columns.iter().map(String::as_str).collect();
    let mut out = if headers.is_empty() {
        String::new()
    } else {
        render(&headers, rows)
    };
    out.push_str(&format!(
        "({count} row{}, {} written)\n",
        if count == 1 { "" } else { "s" },
        value["rowsWritten"]
    ));
    out
}

/// Columns padded to their widest cell, a rule under the header.
pub fn render(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (index, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(index) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(headers.to_vec());
    out.push_str(&line(
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect(),
    ));
    for row in &rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    out
}
