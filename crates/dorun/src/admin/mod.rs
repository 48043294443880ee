//! The admin listener: a second HTTP listener, separate from the front door (loopback by
//! default, optionally behind a bearer token), for operators and test suites.
//!
//! - `api.rs`: the JSON API under `/api/` (namespaces, objects, KV, SQL, alarms, evict,
//!   reset, export/import of one object).
//! - `catalog.rs`: what the data directory holds, merged with what is resident.
//! - `metrics.rs`: `/metrics` (Prometheus), `/healthz`, `/readyz`.
//! - `page.html`: the web page at `/`.
//!
//! Nothing here is ever served by the front door: the two listeners share no routes.

pub mod api;
pub mod arrivals;
pub mod bindings;
pub mod catalog;
pub mod guard;
pub mod metrics;

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dorun_runtime::sockets::SocketRegistry;
use dorun_runtime::WorkerPool;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

pub type AdminResponse = http::Response<Full<Bytes>>;

/// What the admin listener serves.
pub struct Admin {
    pub pools: Vec<Arc<WorkerPool>>,
    pub data_dir: PathBuf,
    /// Required as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
    pub sockets: Arc<SocketRegistry>,
    /// False once shutdown began (`/readyz` answers 503).
    pub ready: AtomicBool,
    /// Which hosts and origins may drive the listener (`guard.rs`).
    pub trust: guard::Trust,
    /// Cron triggers and queue consumers, for their views.
    pub triggers: Vec<Arc<crate::crons::Trigger>>,
    pub consumers: Vec<Arc<crate::queues::Consumer>>,
    pub engines: Vec<Arc<crate::workflows::Engine>>,
    /// `--replicate-to`: a reset is recorded in the store before any file goes.
    pub replication: Option<Arc<dorun_storage::replica::Replication>>,
}

/// What runs without a request, for the admin listener's views: cron triggers, queue
/// consumers and workflow engines.
#[derive(Default)]
pub struct Arrivals {
    pub triggers: Vec<Arc<crate::crons::Trigger>>,
    pub consumers: Vec<Arc<crate::queues::Consumer>>,
    pub engines: Vec<Arc<crate::workflows::Engine>>,
}

/// The query parameters of a request.
pub(crate) fn query_params(
    parts: &http::request::Parts,
) -> std::collections::HashMap<String, String> {
    parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

/// The largest request body the admin listener reads (an imported object file).
const MAX_BODY: usize = 1 << 30;

/// Serves the admin listener until `shutdown` resolves.
pub async fn run(listener: TcpListener, admin: Arc<Admin>, shutdown: impl Future<Output = ()>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!("admin accept failed: {error}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        let admin = admin.clone();
        let service = service_fn(move |request| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(handle(&admin, request).await) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

async fn handle(admin: &Admin, request: http::Request<Incoming>) -> AdminResponse {
    let path = request.uri().path().to_string();
    match path.as_str() {
        "/healthz" => return text(200, "ok\n"),
        "/readyz" if admin.ready.load(Ordering::SeqCst) => return text(200, "ready\n"),
        "/readyz" => return text(503, "shutting down\n"),
        _ => {}
    }
    if let Some(refusal) = admin
        .trust
        .refusal(request.method(), request.uri(), request.headers())
    {
        tracing::warn!(
            "admin request {} {path} refused: {refusal}",
            request.method()
        );
        return json(403, &serde_json::json!({ "error": refusal }));
    }
    if path == "/" || path == "/index.html" {
        return page();
    }
    if !authorized(admin, &request) {
        let mut response = json(
            401,
            &serde_json::json!({"error": "missing or wrong admin token (Authorization: Bearer <token>)"}),
        );
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        return response;
    }
    if path == "/metrics" {
        return metrics::render(admin).await;
    }
    let (parts, body) = request.into_parts();
    let body = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return json(413, &serde_json::json!({"error": error.to_string()})),
    };
    api::route(admin, &parts, body).await
}

/// Whether the request carries the token (always, when none is set). The comparison takes
/// the same time wherever the first difference is.
fn authorized(admin: &Admin, request: &http::Request<Incoming>) -> bool {
    let Some(token) = &admin.token else {
        return true;
    };
    let given = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (given.as_bytes(), token.as_bytes());
    let mut difference = a.len() ^ b.len();
    for (index, byte) in b.iter().enumerate() {
        difference |= usize::from(a.get(index).copied().unwrap_or(0) ^ byte);
    }
    difference == 0
}

pub fn json(status: u16, value: &serde_json::Value) -> AdminResponse {
    respond(status, "application/json", value.to_string().into())
}

pub fn text(status: u16, body: &str) -> AdminResponse {
    respond(status, "text/plain; charset=utf-8", body.to_string().into())
}

pub fn respond(status: u16, content_type: &'static str, body: Bytes) -> AdminResponse {
    let mut response = http::Response::new(Full::new(body));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    // Nothing of the listener's may be framed by another page, or sniffed into a script.
    headers.insert(
        http::header::X_FRAME_OPTIONS,
        http::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    response
}

fn page() -> AdminResponse {
    let mut response = respond(
        200,
        "text/html; charset=utf-8",
        Bytes::from_static(include_bytes!("page.html")),
    );
    response.headers_mut().insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'; form-action 'none'",
        ),
    );
    response
}
