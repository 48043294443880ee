//! Workers static assets, served the way Cloudflare's asset worker serves them.
//!
//! Pure Rust with no runtime dependencies, so both the HTTP front door (which answers asset
//! requests without entering JS) and the `env.ASSETS` binding inside an isolate use it.
//!
//! Lookups go to the file system on each request (a few `stat`s), so startup does not scan
//! the directory and edits show up at once; a file's ETag (a content hash) is computed the
//! first time it is served and cached by size and modification time.

mod mime;
pub mod rules;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest, Sha256};

pub use mime::content_type;
use rules::{HeaderRule, IgnoreRules, Redirects, RoutePattern};

/// `assets.html_handling`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HtmlHandling {
    #[default]
    AutoTrailingSlash,
    ForceTrailingSlash,
    DropTrailingSlash,
    None,
}

impl HtmlHandling {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "auto-trailing-slash" => Self::AutoTrailingSlash,
            "force-trailing-slash" => Self::ForceTrailingSlash,
            "drop-trailing-slash" => Self::DropTrailingSlash,
            "none" => Self::None,
            _ => return None,
        })
    }
}

/// `assets.not_found_handling`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NotFoundHandling {
    #[default]
    None,
    NotFoundPage,
    SinglePageApplication,
}

impl NotFoundHandling {
    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "none" => Self::None,
            "404-page" => Self::NotFoundPage,
            "single-page-application" => Self::SinglePageApplication,
            _ => return None,
        })
    }
}

/// `assets.run_worker_first`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RunWorkerFirst {
    #[default]
    No,
    Always,
    /// Route patterns: a request matching a `!` pattern goes to the assets, one matching a
    /// plain pattern to the Worker, anything else is routed as usual.
    Routes(Vec<String>),
}

/// The `assets` section of a config, resolved.
#[derive(Clone, Debug, Default)]
pub struct AssetsConfig {
    /// Absolute path of the assets directory.
    pub directory: PathBuf,
    /// `env.<binding>` in the Worker, if any.
    pub binding: Option<String>,
    pub html_handling: HtmlHandling,
    pub not_found_handling: NotFoundHandling,
    pub run_worker_first: RunWorkerFirst,
    /// `Sec-Fetch-Mode: navigate` requests get `not_found_handling` before the Worker runs
    /// (compatibility date 2025-04-01 or `assets_navigation_prefers_asset_serving`).
    pub navigation_prefers_assets: bool,
}

/// An answer from the assets.
#[derive(Debug)]
pub struct AssetResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Where the front door sends a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Worker,
    Assets,
}

/// An assets directory ready to serve.
#[derive(Debug)]
pub struct Assets {
    config: AssetsConfig,
    ignore: IgnoreRules,
    redirects: Redirects,
    headers: Vec<HeaderRule>,
    worker_first: Vec<RoutePattern>,
    assets_first: Vec<RoutePattern>,
    etags: Mutex<HashMap<PathBuf, CachedTag>>,
    /// Lines of `_headers`, `_redirects`, `.assetsignore` that were skipped.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
struct CachedTag {
    len: u64,
    modified: Option<SystemTime>,
    tag: String,
}

/// What a request resolves to before the file is read.
enum Resolved {
    /// Nothing here: the Worker (if any) should handle it.
    NoIntent,
    Response(StatusCode, Vec<(HeaderName, String)>),
    Asset {
        key: String,
        status: StatusCode,
    },
}

enum Intent {
    Asset { key: String, status: StatusCode },
    Redirect(String),
}

/// `encodeURIComponent`'s set: everything but `A-Z a-z 0-9 - _ . ! ~ * ' ( )`.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

const CACHE_CONTROL: &str = "public, max-age=0, must-revalidate";

impl Assets {
    /// Opens the directory and reads its rule files. Errors name the directory or file.
    pub fn open(config: AssetsConfig) -> Result<Self, String> {
        let directory = &config.directory;
        if !directory.is_dir() {
            return Err(format!(
                "the assets directory {} does not exist or is not a directory",
                directory.display()
            ));
        }
        let mut warnings = Vec::new();
        let read = |name: &str| -> Result<String, String> {
            let path = directory.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(format!("{}: cannot read: {e}", path.display())),
            }
        };
        let ignore = IgnoreRules::parse(&read(".assetsignore")?, &mut warnings);
        let redirects = Redirects::parse(&read("_redirects")?, &mut warnings);
        let headers = rules::parse_headers(&read("_headers")?, &mut warnings);
        let mut worker_first = Vec::new();
        let mut assets_first = Vec::new();
        if let RunWorkerFirst::Routes(routes) = &config.run_worker_first {
            for route in routes {
                match route.strip_prefix('!') {
                    Some(negated) => assets_first.push(RoutePattern::new(negated)?),
                    None => worker_first.push(RoutePattern::new(route)?),
                }
            }
        }
        Ok(Self {
            config,
            ignore,
            redirects,
            headers,
            worker_first,
            assets_first,
            etags: Mutex::new(HashMap::new()),
            warnings,
        })
    }

    pub fn config(&self) -> &AssetsConfig {
        &self.config
    }

    /// Whether the front door answers this request from the assets or hands it to the
    /// Worker (`has_worker`: there is one), as Cloudflare's router does.
    pub fn route(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        has_worker: bool,
    ) -> Route {
        if !has_worker {
            return Route::Assets;
        }
        let path = uri.path();
        match &self.config.run_worker_first {
            RunWorkerFirst::Always => return Route::Worker,
            RunWorkerFirst::Routes(_) => {
                if self.assets_first.iter().any(|p| p.matches(path)) {
                    return Route::Assets;
                }
                if self.worker_first.iter().any(|p| p.matches(path)) {
                    return Route::Worker;
                }
            }
            RunWorkerFirst::No => {}
        }
        let navigate = self.config.navigation_prefers_assets
            && headers
                .get("sec-fetch-mode")
                .is_some_and(|v| v.as_bytes() == b"navigate");
        // With `run_worker_first` routes, the routes say what the Worker gets: anything else
        // is the assets' whole, `not_found_handling` included, navigation or not (as
        // Cloudflare's asset worker does with static routing).
        let static_routing = matches!(self.config.run_worker_first, RunWorkerFirst::Routes(_));
        let not_found = if navigate || static_routing {
            self.config.not_found_handling
        } else {
            NotFoundHandling::None
        };
        match self.resolve(method, uri, headers, not_found) {
            Resolved::NoIntent => Route::Worker,
            _ => Route::Assets,
        }
    }

    /// Answers a request from the assets: redirects, html_handling, not_found_handling,
    /// conditional and range requests, `_headers`. What `env.ASSETS.fetch` and the front
    /// door return. Blocking (file reads): call it off the async threads.
    pub fn fetch(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> AssetResponse {
        let mut response = match self.resolve(method, uri, headers, self.config.not_found_handling)
        {
            Resolved::NoIntent => empty(StatusCode::NOT_FOUND),
            Resolved::Response(status, extra) => {
                let mut response = empty(status);
                for (name, value) in extra {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        response.headers.insert(name, value);
                    }
                }
                response
            }
            Resolved::Asset { key, status } => self.serve_file(&key, status, method, headers),
        };
        self.attach_custom_headers(uri, headers, &mut response.headers);
        response
    }

    fn resolve(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        not_found: NotFoundHandling,
    ) -> Resolved {
        let host = request_host(uri, headers);
        let search = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        let mut pathname = uri.path().to_string();
        let mut proxied = false;
        if let Some(target) = self.redirects.find(&host, &pathname) {
            let (base, query, hash) = split_target(&target.to);
            if target.status == 200 {
                pathname = base.to_string();
                proxied = true;
            } else {
                let query = if query.is_empty() {
                    search.as_str()
                } else {
                    query
                };
                let location = format!("{base}{query}{hash}");
                let status = StatusCode::from_u16(target.status).unwrap_or(StatusCode::FOUND);
                return Resolved::Response(status, vec![(http::header::LOCATION, location)]);
            }
        }
        let decoded = decode_path(&pathname);
        let Some(intent) = self.intent(&decoded, not_found, false) else {
            return if proxied {
                Resolved::Response(StatusCode::NOT_FOUND, Vec::new())
            } else {
                Resolved::NoIntent
            };
        };
        if method != Method::GET && method != Method::HEAD {
            return Resolved::Response(StatusCode::METHOD_NOT_ALLOWED, Vec::new());
        }
        match intent {
            Intent::Redirect(destination) => Resolved::Response(
                StatusCode::TEMPORARY_REDIRECT,
                vec![(
                    http::header::LOCATION,
                    format!("{}{search}", encode_path(&destination)),
                )],
            ),
            Intent::Asset { key, status } => {
                let canonical = encode_path(&decoded);
                if canonical != pathname && !proxied {
                    Resolved::Response(
                        StatusCode::TEMPORARY_REDIRECT,
                        vec![(http::header::LOCATION, format!("{canonical}{search}"))],
                    )
                } else {
                    Resolved::Asset { key, status }
                }
            }
        }
    }

    // --- html_handling -------------------------------------------------------------------

    fn intent(&self, path: &str, not_found: NotFoundHandling, skip: bool) -> Option<Intent> {
        match self.config.html_handling {
            HtmlHandling::AutoTrailingSlash => self.auto_trailing_slash(path, not_found, skip),
            HtmlHandling::ForceTrailingSlash => self.force_trailing_slash(path, not_found, skip),
            HtmlHandling::DropTrailingSlash => self.drop_trailing_slash(path, not_found, skip),
            HtmlHandling::None => match self.exists(path) {
                true => Some(serve(path)),
                false => self.not_found(path, not_found),
            },
        }
    }

    /// A redirect from a request path to `destination`, only if `destination` would serve
    /// the same `file` (so a redirect never leads to a 404).
    fn safe_redirect(
        &self,
        file: &str,
        destination: &str,
        not_found: NotFoundHandling,
        skip: bool,
    ) -> Option<Intent> {
        if skip || self.exists(destination) {
            return None;
        }
        match self.intent(destination, not_found, true) {
            Some(Intent::Asset { key, .. }) if key == file && self.exists(file) => {
                Some(Intent::Redirect(destination.to_string()))
            }
            _ => None,
        }
    }

    fn auto_trailing_slash(&self, path: &str, nf: NotFoundHandling, skip: bool) -> Option<Intent> {
        let exact = self.exists(path);
        let redirect = |file: &str, to: &str| self.safe_redirect(file, to, nf, skip);
        if let Some(dir) = path.strip_suffix("index").filter(|d| d.ends_with('/')) {
            // /foo/index
            if exact {
                return Some(serve(path));
            }
            let parent = &dir[..dir.len() - 1];
            if let Some(r) = redirect(&format!("{path}.html"), dir) {
                return Some(r);
            }
            if let Some(r) = redirect(&format!("{parent}.html"), parent) {
                return Some(r);
            }
        } else if let Some(dir) = path.strip_suffix("index.html").filter(|d| d.ends_with('/')) {
            let parent = &dir[..dir.len() - 1];
            if let Some(r) = redirect(path, dir) {
                return Some(r);
            }
            if let Some(r) = redirect(&format!("{parent}.html"), parent) {
                return Some(r);
            }
        } else if let Some(parent) = path.strip_suffix('/') {
            let index = format!("{path}index.html");
            if self.exists(&index) {
                return Some(serve(&index));
            }
            if let Some(r) = redirect(&format!("{parent}.html"), parent) {
                return Some(r);
            }
        } else if let Some(stem) = path.strip_suffix(".html") {
            if let Some(r) = redirect(path, stem) {
                return Some(r);
            }
            if let Some(r) = redirect(&format!("{stem}/index.html"), &format!("{stem}/")) {
                return Some(r);
            }
        }
        if exact {
            return Some(serve(path));
        }
        let html = format!("{path}.html");
        if self.exists(&html) {
            return Some(serve(&html));
        }
        if let Some(r) = redirect(&format!("{path}/index.html"), &format!("{path}/")) {
            return Some(r);
        }
        self.not_found(path, nf)
    }

    fn force_trailing_slash(&self, path: &str, nf: NotFoundHandling, skip: bool) -> Option<Intent> {
        let exact = self.exists(path);
        let redirect = |file: &str, to: &str| self.safe_redirect(file, to, nf, skip);
        if let Some(dir) = path.strip_suffix("index").filter(|d| d.ends_with('/')) {
            if exact {
                return Some(serve(path));
            }
            let parent = &dir[..dir.len() - 1];
            if let Some(r) = redirect(&format!("{path}.html"), dir) {
                return Some(r);
            }
            if let Some(r) = redirect(&format!("{parent}.html"), dir) {
                return Some(r);
            }
        } else if let Some(dir) = path.strip_suffix("index.html").filter(|d| d.ends_with('/')) {
            let parent = &dir[..dir.len() - 1];
            if let Some(r) = redirect(path, dir) {
                return Some(r);
            }
            if let Some(r) = redirect(&format!("{parent}.html"), dir) {
                return Some(r);
            }
        } else if let Some(parent) = path.strip_suffix('/') {
            let index = format!("{path}index.html");
            if self.exists(&index) {
                return Some(serve(&index));
            }
            let html = format!("{parent}.html");
            if self.exists(&html) {
                return Some(serve(&html));
            }
        } else if let Some(stem) = path.strip_suffix(".html") {
            if let Some(r) = redirect(path, &format!("{stem}/")) {
                return Some(r);
            }
            if exact {
                return Some(serve(path));
            }
            if let Some(r) = redirect(&format!("{stem}/index.html"), &format!("{stem}/")) {
                return Some(r);
            }
        }
        if exact {
            return Some(serve(path));
        }
        if let Some(r) = redirect(&format!("{path}.html"), &format!("{path}/")) {
            return Some(r);
        }
        if let Some(r) = redirect(&format!("{path}/index.html"), &format!("{path}/")) {
            return Some(r);
        }
        self.not_found(path, nf)
    }

    fn drop_trailing_slash(&self, path: &str, nf: NotFoundHandling, skip: bool) -> Option<Intent> {
        let exact = self.exists(path);
        let redirect = |file: &str, to: &str| self.safe_redirect(file, to, nf, skip);
        if let Some(dir) = path.strip_suffix("index").filter(|d| d.ends_with('/')) {
            if exact {
                return Some(serve(path));
            }
            let parent = &dir[..dir.len() - 1];
            if path == "/index" {
                if let Some(r) = redirect("/index.html", "/") {
                    return Some(r);
                }
            } else if let Some(r) = redirect(&format!("{parent}.html"), parent) {
                return Some(r);
            } else if let Some(r) = redirect(&format!("{path}.html"), parent) {
                return Some(r);
            }
        } else if let Some(dir) = path.strip_suffix("index.html").filter(|d| d.ends_with('/')) {
            let parent = &dir[..dir.len() - 1];
            if path == "/index.html" {
                if let Some(r) = redirect("/index.html", "/") {
                    return Some(r);
                }
            } else if let Some(r) = redirect(path, parent) {
                return Some(r);
            } else if exact {
                return Some(serve(path));
            } else if let Some(r) = redirect(&format!("{parent}.html"), parent) {
                return Some(r);
            }
        } else if let Some(parent) = path.strip_suffix('/') {
            if path == "/" {
                if self.exists("/index.html") {
                    return Some(serve("/index.html"));
                }
            } else if let Some(r) = redirect(&format!("{parent}.html"), parent) {
                return Some(r);
            } else if let Some(r) = redirect(&format!("{parent}/index.html"), parent) {
                return Some(r);
            }
        } else if let Some(stem) = path.strip_suffix(".html") {
            if let Some(r) = redirect(path, stem) {
                return Some(r);
            }
            if let Some(r) = redirect(&format!("{stem}/index.html"), stem) {
                return Some(r);
            }
        }
        if exact {
            return Some(serve(path));
        }
        for candidate in [format!("{path}.html"), format!("{path}/index.html")] {
            if self.exists(&candidate) {
                return Some(serve(&candidate));
            }
        }
        self.not_found(path, nf)
    }

    fn not_found(&self, path: &str, handling: NotFoundHandling) -> Option<Intent> {
        match handling {
            NotFoundHandling::None => None,
            NotFoundHandling::SinglePageApplication => {
                self.exists("/index.html").then(|| serve("/index.html"))
            }
            NotFoundHandling::NotFoundPage => {
                // The nearest 404.html walking up from the request's directory.
                let mut dir = path;
                while !dir.is_empty() {
                    dir = &dir[..dir.rfind('/').unwrap_or(0)];
                    let page = format!("{dir}/404.html");
                    if self.exists(&page) {
                        return Some(Intent::Asset {
                            key: page,
                            status: StatusCode::NOT_FOUND,
                        });
                    }
                }
                None
            }
        }
    }

    // --- files -----------------------------------------------------------------------------

    /// The file behind an asset path (`/a/b.html`), refusing anything that could leave
    /// the directory.
    fn file_path(&self, key: &str) -> Option<PathBuf> {
        let relative = key.strip_prefix('/')?;
        if relative.is_empty() || relative.ends_with('/') {
            return None;
        }
        let mut path = self.config.directory.clone();
        for part in relative.split('/') {
            if part.is_empty() || part == "." || part == ".." || part.contains(['\\', '\0']) {
                return None;
            }
            path.push(part);
        }
        if self.ignore.is_ignored(relative) {
            return None;
        }
        Some(path)
    }

    /// Whether an asset is served at exactly this path.
    pub fn exists(&self, key: &str) -> bool {
        self.file_path(key).is_some_and(|p| p.is_file())
    }

    fn serve_file(
        &self,
        key: &str,
        status: StatusCode,
        method: &Method,
        request: &HeaderMap,
    ) -> AssetResponse {
        let Some(path) = self.file_path(key) else {
            return empty(StatusCode::NOT_FOUND);
        };
        match self.serve_file_inner(&path, status, method, request) {
            Ok(response) => response,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                empty(StatusCode::NOT_FOUND)
            }
            Err(_) => empty(StatusCode::INTERNAL_SERVER_ERROR),
        }
    }

    fn serve_file_inner(
        &self,
        path: &Path,
        status: StatusCode,
        method: &Method,
        request: &HeaderMap,
    ) -> std::io::Result<AssetResponse> {
        let mut file = std::fs::File::open(path)?;
        let meta = file.metadata()?;
        let len = meta.len();
        let modified = meta.modified().ok();
        let cached = self
            .etags
            .lock()
            .expect("etag cache lock")
            .get(path)
            .filter(|c| c.len == len && c.modified == modified)
            .map(|c| c.tag.clone());
        let mut whole: Option<Bytes> = None;
        let tag = match cached {
            Some(tag) => tag,
            None => {
                let mut bytes = Vec::with_capacity(len as usize);
                file.read_to_end(&mut bytes)?;
                let digest = Sha256::digest(&bytes);
                let tag: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
                self.etags.lock().expect("etag cache lock").insert(
                    path.to_path_buf(),
                    CachedTag {
                        len: bytes.len() as u64,
                        modified,
                        tag: tag.clone(),
                    },
                );
                whole = Some(Bytes::from(bytes));
                tag
            }
        };
        let len = whole.as_ref().map(|b| b.len() as u64).unwrap_or(len);
        let strong = format!("\"{tag}\"");
        let mut headers = HeaderMap::new();
        headers.insert(http::header::ETAG, value(&strong));
        let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        headers.insert(http::header::CONTENT_TYPE, value(&content_type(file_name)));
        if !request.contains_key(http::header::AUTHORIZATION)
            && !request.contains_key(http::header::RANGE)
        {
            headers.insert(http::header::CACHE_CONTROL, value(CACHE_CONTROL));
        }
        let weak = format!("W/{strong}");
        let if_none_match = request
            .get(http::header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if if_none_match
            .split(',')
            .map(str::trim)
            .any(|t| t == strong || t == weak || t == "*")
        {
            return Ok(AssetResponse {
                status: StatusCode::NOT_MODIFIED,
                headers,
                body: Bytes::new(),
            });
        }
        if status == StatusCode::OK {
            headers.insert(http::header::ACCEPT_RANGES, value("bytes"));
        }
        // Range: one range of a 200 asset; If-Range must name the current ETag.
        let range = request
            .get(http::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .filter(|_| status == StatusCode::OK && method == Method::GET)
            .filter(|_| {
                request
                    .get(http::header::IF_RANGE)
                    .is_none_or(|v| v.as_bytes() == strong.as_bytes())
            })
            .and_then(|r| parse_range(r, len));
        if let Some(range) = range {
            let Some((start, end)) = range else {
                headers.insert(
                    http::header::CONTENT_RANGE,
                    value(&format!("bytes */{len}")),
                );
                return Ok(AssetResponse {
                    status: StatusCode::RANGE_NOT_SATISFIABLE,
                    headers,
                    body: Bytes::new(),
                });
            };
            let body = match &whole {
                Some(bytes) => bytes.slice(start as usize..=end as usize),
                None => {
                    file.seek(SeekFrom::Start(start))?;
                    let mut buffer = vec![0; (end - start + 1) as usize];
                    file.read_exact(&mut buffer)?;
                    Bytes::from(buffer)
                }
            };
            headers.insert(
                http::header::CONTENT_RANGE,
                value(&format!("bytes {start}-{end}/{len}")),
            );
            return Ok(AssetResponse {
                status: StatusCode::PARTIAL_CONTENT,
                headers,
                body,
            });
        }
        if method == Method::HEAD {
            headers.insert(http::header::CONTENT_LENGTH, value(&len.to_string()));
            return Ok(AssetResponse {
                status,
                headers,
                body: Bytes::new(),
            });
        }
        let body = match whole {
            Some(bytes) => bytes,
            None => {
                let mut bytes = Vec::with_capacity(len as usize);
                file.read_to_end(&mut bytes)?;
                Bytes::from(bytes)
            }
        };
        Ok(AssetResponse {
            status,
            headers,
            body,
        })
    }

    /// `_headers`: every matching block in order; the first `_headers` value of a name
    /// replaces the default, later ones are added; `! Name` removes.
    fn attach_custom_headers(&self, uri: &Uri, request: &HeaderMap, headers: &mut HeaderMap) {
        if self.headers.is_empty() {
            return;
        }
        let host = request_host(uri, request);
        let mut set_here: Vec<String> = Vec::new();
        for rule in &self.headers {
            let Some(values) = rule.apply_to(&host, uri.path()) else {
                continue;
            };
            for name in &rule.unset {
                headers.remove(name.as_str());
            }
            for (name, text) in values {
                let (Ok(name), Ok(text)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&text),
                ) else {
                    continue;
                };
                if set_here.iter().any(|n| n == name.as_str()) {
                    headers.append(name, text);
                } else {
                    set_here.push(name.as_str().to_string());
                    headers.insert(name, text);
                }
            }
        }
    }
}

fn serve(key: &str) -> Intent {
    Intent::Asset {
        key: key.to_string(),
        status: StatusCode::OK,
    }
}

fn empty(status: StatusCode) -> AssetResponse {
    AssetResponse {
        status,
        headers: HeaderMap::new(),
        body: Bytes::new(),
    }
}

fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn request_host(uri: &Uri, headers: &HeaderMap) -> String {
    uri.host()
        .map(str::to_string)
        .or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(|h| h.split(':').next().unwrap_or(h).to_string())
        })
        .unwrap_or_default()
}

/// Splits a redirect destination into (path or URL, `?query`, `#hash`).
fn split_target(to: &str) -> (&str, &str, &str) {
    let (rest, hash) = match to.find('#') {
        Some(at) => (&to[..at], &to[at..]),
        None => (to, ""),
    };
    match rest.find('?') {
        Some(at) => (&rest[..at], &rest[at..], hash),
        None => (rest, "", hash),
    }
}

/// Decodes each segment (`decodeURIComponent`; invalid ones stay as they are) and collapses
/// repeated slashes.
pub fn decode_path(path: &str) -> String {
    let decoded: Vec<String> = path
        .split('/')
        .map(|segment| match percent_decode_str(segment).decode_utf8() {
            Ok(text) => text.into_owned(),
            Err(_) => segment.to_string(),
        })
        .collect();
    let joined = decoded.join("/");
    let mut out = String::with_capacity(joined.len());
    for c in joined.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// Encodes each segment as `encodeURIComponent` does: the canonical URL of an asset.
pub fn encode_path(path: &str) -> String {
    path.split('/')
        .map(|segment| utf8_percent_encode(segment, COMPONENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// Parses a `Range` header for a body of `len` bytes: `None` when it is not a single byte
/// range we serve (the whole body goes out), `Some(None)` when it cannot be satisfied.
fn parse_range(header: &str, len: u64) -> Option<Option<(u64, u64)>> {
    let spec = header.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.trim().split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    if start.is_empty() {
        let suffix: u64 = end.parse().ok()?;
        if suffix == 0 || len == 0 {
            return Some(None);
        }
        let suffix = suffix.min(len);
        return Some(Some((len - suffix, len - 1)));
    }
    let start: u64 = start.parse().ok()?;
    let end: u64 = if end.is_empty() {
        len.saturating_sub(1)
    } else {
        end.parse().ok()?
    };
    if start >= len {
        return Some(None);
    }
    if end < start {
        return None;
    }
    Some(Some((start, end.min(len - 1))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(tag: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dorun-assets-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    fn get(assets: &Assets, path: &str) -> AssetResponse {
        let uri: Uri = format!("http://example.com{path}").parse().unwrap();
        assets.fetch(&Method::GET, &uri, &HeaderMap::new())
    }

    fn location(response: &AssetResponse) -> &str {
        response.headers[http::header::LOCATION].to_str().unwrap()
    }

    #[test]
    fn auto_trailing_slash_serves_and_redirects_like_cloudflare() {
        let dir = site(
            "auto",
            &[
                ("index.html", "home"),
                ("file.html", "file"),
                ("folder/index.html", "folder"),
            ],
        );
        let assets = Assets::open(AssetsConfig {
            directory: dir,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(get(&assets, "/").body, "home");
        assert_eq!(get(&assets, "/file").body, "file");
        let r = get(&assets, "/file.html");
        assert_eq!((r.status.as_u16(), location(&r)), (307, "/file"));
        let r = get(&assets, "/file/");
        assert_eq!((r.status.as_u16(), location(&r)), (307, "/file"));
        assert_eq!(get(&assets, "/folder/").body, "folder");
        let r = get(&assets, "/folder");
        assert_eq!((r.status.as_u16(), location(&r)), (307, "/folder/"));
        let r = get(&assets, "/folder/index.html?x=1");
        assert_eq!((r.status.as_u16(), location(&r)), (307, "/folder/?x=1"));
        let r = get(&assets, "/index.html");
        assert_eq!((r.status.as_u16(), location(&r)), (307, "/"));
        assert_eq!(get(&assets, "/missing").status, 404);
    }

    #[test]
    fn force_and_drop_trailing_slash() {
        let files = [("file.html", "file"), ("folder/index.html", "folder")];
        let force = Assets::open(AssetsConfig {
            directory: site("force", &files),
            html_handling: HtmlHandling::ForceTrailingSlash,
            ..Default::default()
        })
        .unwrap();
        let r = get(&force, "/file");
        assert_eq!((r.status.as_u16(), location(&r)), (307, "/file/"));
        assert_eq!(get(&force, "/file/").body, "file");
        assert_eq!(get(&force, "/folder/").body, "folder");
        let drop = Assets::open(AssetsConfig {
            directory: site("drop", &files),
            html_handling: HtmlHandling::DropTrailingSlash,
            ..Default::default()
        })
        .unwrap();
        let r = get(&drop, "/folder/");
        assert_eq!((r.status.as_u16(), location(&r)), (307, "/folder"));
        assert_eq!(get(&drop, "/folder").body, "folder");
        assert_eq!(get(&drop, "/file").body, "file");
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-3", 10), Some(Some((0, 3))));
        assert_eq!(parse_range("bytes=-3", 10), Some(Some((7, 9))));
        assert_eq!(parse_range("bytes=5-", 10), Some(Some((5, 9))));
        assert_eq!(parse_range("bytes=5-100", 10), Some(Some((5, 9))));
        assert_eq!(parse_range("bytes=10-", 10), Some(None));
        assert_eq!(parse_range("bytes=0-1,3-4", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
    }

    #[test]
    fn paths_cannot_leave_the_directory() {
        let dir = site("escape", &[("a.txt", "a")]);
        let assets = Assets::open(AssetsConfig {
            directory: dir.join("."),
            html_handling: HtmlHandling::None,
            ..Default::default()
        })
        .unwrap();
        assert!(assets.exists("/a.txt"));
        assert!(!assets.exists("/../a.txt"));
        assert!(!assets.exists("/%2e%2e/etc/passwd"));
        assert_eq!(get(&assets, "/..%2Fescape/a.txt").status, 404);
    }
}
