//! The HTTP front door.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dorun_assets::{Assets, Route};
use dorun_runtime::body::BoxError;
use dorun_runtime::sockets::WebSocketToken;
use dorun_runtime::{Failure, ResponseBody, WorkerPool};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::client_ip::TrustedProxies;
use crate::connections::{ConnectionLimits, Connections, TrackedBody};
use crate::websocket;

/// Front door settings.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// How long shutdown waits for in-flight requests before closing connections.
    pub drain_timeout: Duration,
    /// Static assets answered here, without entering JS, when they match (as on Cloudflare).
    pub assets: Option<Arc<Assets>>,
    /// The worker's name for log lines (an assets-only worker has no pool).
    pub name: String,
    /// Reverse proxies whose `CF-Connecting-IP` / `X-Forwarded-For` are believed.
    pub trusted_proxies: TrustedProxies,
    /// The connection budget and the deadlines of idle connections.
    pub limits: ConnectionLimits,
    /// `/__scheduled` and `/cdn-cgi/handler/scheduled` run `scheduled()` on demand (off
    /// with `--no-dev-endpoints`).
    pub dev_endpoints: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            drain_timeout: Duration::from_secs(30),
            assets: None,
            name: String::new(),
            trusted_proxies: TrustedProxies::default(),
            limits: ConnectionLimits::from_descriptor_limit(
                1024,
                Duration::from_secs(10),
                Duration::from_secs(60),
            ),
            dev_endpoints: true,
        }
    }
}

/// Serves `pool` (and the assets) on `listener` until `shutdown` resolves, then stops
/// accepting and drains in-flight requests for up to `options.drain_timeout`. Without a
/// pool only the assets answer.
pub async fn run(
    listener: TcpListener,
    pool: Option<Arc<WorkerPool>>,
    shutdown: impl Future<Output = ()>,
    options: ServerOptions,
) {
    let local = listener.local_addr().ok();
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let connections = Connections::new(options.limits);
    connections.spawn_reaper();
    let mut refused_logged = false;
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {error}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.as_mut() => break,
        };
        let Some(tracked) = connections.admit() else {
            // Every connection is busy: refuse this one rather than run out of descriptors.
            if !std::mem::replace(&mut refused_logged, true) {
                tracing::warn!(
                    max = options.limits.max_connections,
                    "connection limit reached and no connection is idle; refusing new ones"
                );
            }
            drop(stream);
            continue;
        };
        refused_logged = false;
        let _ = stream.set_nodelay(true);
        let pool = pool.clone();
        let options = options.clone();
        let service_connections = connections.clone();
        let service_tracked = tracked.clone();
        let service = service_fn(move |request| {
            let pool = pool.clone();
            let options = options.clone();
            let in_flight = service_connections.request_started(&service_tracked);
            async move {
                let response = handle(pool.as_deref(), &options, request, peer, local).await;
                Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, Some(in_flight))))
            }
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let connections = connections.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = connection => if let Err(error) = result {
                    tracing::debug!("connection from {peer}: {error}");
                },
                () = tracked.closed() => tracing::debug!("closed idle connection from {peer}"),
            }
            connections.forget(&tracked);
        });
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(options.drain_timeout) => {
            tracing::warn!("drain timeout of {:?} reached; closing remaining connections", options.drain_timeout)
        }
    }
}

async fn handle(
    pool: Option<&WorkerPool>,
    options: &ServerOptions,
    mut request: http::Request<Incoming>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
) -> http::Response<ResponseBody> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let log = |response: &http::Response<ResponseBody>| {
        crate::admin::metrics::record_request(&options.name, response.status(), started);
        tracing::info!(
            target: "dorun::request",
            worker = %options.name,
            status = response.status().as_u16(),
            ms = (started.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
            "{method} {path} {}",
            response.status().as_u16()
        );
    };
    if let (true, Some(pool)) = (options.dev_endpoints, pool) {
        if let Some(response) = crate::crons::dev_endpoint(pool, request.uri()).await {
            log(&response);
            return response;
        }
    }
    if let Some(assets) = &options.assets {
        let route = assets.route(
            request.method(),
            request.uri(),
            request.headers(),
            pool.is_some(),
        );
        if route == Route::Assets {
            let response = serve_assets(assets.clone(), request).await;
            log(&response);
            return response;
        }
    }
    let Some(pool) = pool else {
        let response = plain(404, "Not Found");
        log(&response);
        return response;
    };
    if dorun_runtime::memory::over_memory_limit() {
        let mut response = plain(
            503,
            "dorun is over its memory limit (--memory-limit-mb); try again shortly.",
        );
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        log(&response);
        return response;
    }
    let upgrade = websocket::take_upgrade(&mut request);
    let mut response = match prepare(request, peer, local, &options.trusted_proxies) {
        Ok(request) => match pool.dispatch(request).await {
            Ok(response) => response,
            Err(error) => error.failure().response(),
        },
        Err(message) => plain(400, &message),
    };
    if let Some(token) = response.extensions_mut().remove::<WebSocketToken>() {
        response = match upgrade {
            Some(upgrade) if response.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                websocket::accept(pool.sockets().clone(), token.0, upgrade, response)
            }
            _ => {
                pool.sockets().remove(token.0);
                tracing::error!(
                    worker = %pool.spec().name,
                    "the Worker answered a request without `Upgrade: websocket` with a WebSocket"
                );
                Failure::Exception.response()
            }
        };
    } else if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        response = Failure::Exception.response();
    }
    // The Response's own status text goes out as the reason phrase (HTTP/1.1).
    if let Some(text) = response
        .extensions_mut()
        .remove::<dorun_runtime::events::StatusText>()
    {
        if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(text.0.into_bytes()) {
            response.extensions_mut().insert(phrase);
        }
    }
    log(&response);
    response
}

/// Answers from the assets; file reads run on a blocking thread.
async fn serve_assets(
    assets: Arc<Assets>,
    request: http::Request<Incoming>,
) -> http::Response<ResponseBody> {
    let (parts, _body) = request.into_parts();
    let answer = tokio::task::spawn_blocking(move || {
        assets.fetch(&parts.method, &parts.uri, &parts.headers)
    })
    .await;
    match answer {
        Ok(answer) => {
            let mut response = http::Response::new(ResponseBody::full(answer.body));
            *response.status_mut() = answer.status;
            *response.headers_mut() = answer.headers;
            response
        }
        Err(_) => plain(500, "Internal Server Error"),
    }
}

/// Gives the request the absolute URL the client asked for and the peer's address.
fn prepare(
    request: http::Request<Incoming>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    proxies: &TrustedProxies,
) -> Result<http::Request<dorun_runtime::RequestBody>, String> {
    let (mut parts, body) = request.into_parts();
    if parts.uri.scheme().is_none() {
        if parts.version == http::Version::HTTP_11
            && !parts.headers.contains_key(http::header::HOST)
        {
            // RFC 9112 section 3.2: a server responds 400 to an HTTP/1.1 request without Host.
            return Err("missing Host header".into());
        }
        let authority = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| local.map(|a| a.to_string()))
            .ok_or_else(|| "missing Host header".to_string())?;
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        parts.uri = format!("http://{authority}{path}")
            .parse()
            .map_err(|_| format!("bad Host header '{authority}'"))?;
    }
    let client = proxies.client_ip(peer.ip(), &parts.headers);
    let ip = http::HeaderValue::from_str(&client.to_string()).expect("an IP is a header value");
    parts.headers.insert("cf-connecting-ip", ip);
    let body = body.map_err(|e| Box::new(e) as BoxError).boxed();
    Ok(http::Request::from_parts(parts, body))
}

/// A client error of the front door itself (a malformed request).
fn plain(status: u16, message: &str) -> http::Response<ResponseBody> {
    let mut response = http::Response::new(ResponseBody::full(message.to_string()));
    *response.status_mut() = http::StatusCode::from_u16(status).expect("valid status");
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain;charset=UTF-8"),
    );
    response
}
