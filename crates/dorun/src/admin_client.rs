//! A small HTTP client of the admin listener, for `dorun export --admin`,
//! `dorun import --admin` and `dorun inspect`.

use anyhow::{anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Where the admin listener is and the token it wants.
#[derive(Clone, Debug)]
pub struct AdminTarget {
    pub base: String,
    pub token: Option<String>,
}

impl AdminTarget {
    pub fn new(base: &str, token: Option<String>) -> Self {
        let base = base.trim_end_matches('/');
        let base = if base.contains("://") {
            base.to_string()
        } else {
            format!("http://{base}")
        };
        Self { base, token }
    }

    /// Sends a request and returns the body of a 2xx answer; anything else is an error
    /// carrying the server's message.
    pub fn call(&self, method: &str, path: &str, body: Bytes) -> anyhow::Result<Bytes> {
        match self.send_status(method, path, body)? {
            (200..=299, bytes) => Ok(bytes),
            (status, bytes) => bail!(
                "{method} {}{path}: {}: {}",
                self.base,
                http::StatusCode::from_u16(status).map_or(status.to_string(), |s| s.to_string()),
                error_message(&bytes)
            ),
        }
    }

    /// Sends a request and returns the answer's status and body, whatever the status.
    pub fn send_status(
        &self,
        method: &str,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<(u16, Bytes)> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(self.send(method, path, body))
    }

    /// The key of every namespace the server has, in its order.
    pub fn namespace_keys(&self) -> anyhow::Result<Vec<String>> {
        let namespaces = self.json("GET", "/api/namespaces", Bytes::new())?;
        let list = namespaces
            .as_array()
            .ok_or_else(|| anyhow!("/api/namespaces: unexpected answer {namespaces}"))?;
        Ok(list
            .iter()
            .filter_map(|ns| ns["key"].as_str().map(str::to_string))
            .collect())
    }

    /// The objects of namespace `key`, as the API lists them (`id`, `alarm`, ...).
    pub fn objects(&self, key: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let objects = self.json(
            "GET",
            &format!("/api/namespaces/{key}/objects"),
            Bytes::new(),
        )?;
        match objects {
            serde_json::Value::Array(list) => Ok(list),
            other => bail!("/api/namespaces/{key}/objects: unexpected answer {other}"),
        }
    }

    pub fn json(&self, method: &str, path: &str, body: Bytes) -> anyhow::Result<serde_json::Value> {
        let bytes = self.call(method, path, body)?;
        serde_json::from_slice(&bytes).map_err(|e| anyhow!("{path}: the answer is not JSON: {e}"))
    }

    async fn send(&self, method: &str, path: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        let url = format!("{}{path}", self.base);
        let client = Client::builder(TokioExecutor::new()).build_http();
        let mut builder = http::Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if method != "GET" && method != "HEAD" {
            // The admin listener takes a state change only with a header no web page can
            // send on its own (admin/guard.rs).
            let content_type = if path.ends_with("/import") || path.starts_with("/api/kv/") {
                "application/octet-stream"
            } else {
                "application/json"
            };
            builder = builder.header(http::header::CONTENT_TYPE, content_type);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|e| anyhow!("{url}: {e}"))?;
        let response =
            tokio::time::timeout(std::time::Duration::from_secs(300), client.request(request))
                .await
                .map_err(|_| anyhow!("{url}: no answer within 300 s"))?
                .map_err(|e| anyhow!("cannot reach the admin listener at {url}: {e}"))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| anyhow!("{url}: {e}"))?
            .to_bytes();
        Ok((status.as_u16(), bytes))
    }
}

/// The message of an admin error answer (`{"error": "..."}`), or its text.
pub fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned())
}
