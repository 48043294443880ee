//! The Cache API (`caches.default`, `caches.open(name)`), as Cloudflare's edge cache
//! answers a Worker: what `put` refuses or silently drops, how long an entry lives, and how
//! `match` answers. Entries live in `<data-dir>/cache.sqlite` (`dorun_storage::CacheDatabase`)
//! so they survive a restart; each isolate thread opens its own connection on first use.
//! The JS side is `js/12_cache.js`.
//!
//! The policy, as Cloudflare documents it:
//! - `put` throws a TypeError for a non-GET request, a 206 response or `Vary: *`; a 304 is
//!   dropped silently (as workerd does).
//! - Not stored: `Cache-Control: no-store`, `no-cache` or `private`, and a `Set-Cookie`
//!   response unless `Cache-Control: private=Set-Cookie` (then the cookie is not stored).
//! - Time to live: `s-maxage`, else `max-age`, else `Expires`. A response with none of them
//!   is what the Worker never marked cacheable: as `wrangler dev` does, it is stored only
//!   for a heuristic lifetime from `Last-Modified` (a tenth of its age, RFC 9111 4.2.2),
//!   and otherwise not at all. With `--cache-edge-ttl` (the [`TtlPolicy::EdgeDefaults`]
//!   policy) it is stored for Cloudflare's documented default edge TTL of its status
//!   ([`default_ttl_ms`]) instead.
//! - `match` adds `CF-Cache-Status: HIT` and answers `If-None-Match` with the stored `ETag`
//!   by a 304.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use deno_core::{op2, JsBuffer, OpState, ToJsBuffer};
use dorun_storage::{CacheDatabase, CachedResponse, StorageError};

use crate::clock::now_ms;

/// Why a cache op failed; the first three are Cloudflare's (and workerd's) TypeErrors.
#[derive(Debug, thiserror::Error, deno_error::JsError)]
pub enum CacheError {
    #[class(type)]
    #[error("Cannot cache response to non-GET request.")]
    NotGet,
    #[class(type)]
    #[error("Cannot cache response to a range request (206 Partial Content).")]
    PartialContent,
    #[class(type)]
    #[error("Cannot cache response with 'Vary: *' header.")]
    VaryAll,
    #[class(generic)]
    // The path goes to the server log (see `logged`), not to the Worker.
    #[error("cannot open the cache: {source}")]
    Open { path: PathBuf, source: StorageError },
    #[class(generic)]
    #[error("cache storage failed: {source}")]
    Storage { path: PathBuf, source: StorageError },
    #[class(generic)]
    #[error("cache task failed: {0}")]
    Task(String),
}

impl CacheError {
    /// Logs a storage failure with its file (for the operator) before JS sees it without.
    fn logged(self) -> Self {
        if let CacheError::Open { path, source } | CacheError::Storage { path, source } = &self {
            tracing::error!(file = %path.display(), "cache: {source}");
        }
        self
    }
}

/// Checks `put`'s arguments the way workerd does, before the body is read.
pub fn check_put(
    method: &str,
    status: u16,
    headers: &[(String, String)],
) -> Result<(), CacheError> {
    if method != "GET" {
        return Err(CacheError::NotGet);
    }
    if status == 206 {
        return Err(CacheError::PartialContent);
    }
    if header(headers, "vary").is_some_and(|vary| vary.contains('*')) {
        return Err(CacheError::VaryAll);
    }
    Ok(())
}

/// How long a response without `s-maxage`, `max-age` or `Expires` lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TtlPolicy {
    /// As `wrangler dev`: only a heuristic lifetime from `Last-Modified`, else not stored.
    #[default]
    Explicit,
    /// Cloudflare's default edge TTL of the status (`--cache-edge-ttl`).
    EdgeDefaults,
}

/// Statuses a cache may keep for a heuristic lifetime (RFC 9110 15.1).
const HEURISTICALLY_CACHEABLE: [u16; 12] =
    [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// The heuristic lifetime of a response with `Last-Modified` and no explicit one: a tenth
/// of the time since it was last modified (as of its `Date`, else now), in ms.
fn heuristic_ttl_ms(status: u16, headers: &[(String, String)], now: i64) -> Option<i64> {
    if !HEURISTICALLY_CACHEABLE.contains(&status) {
        return None;
    }
    let millis = |name: &str| -> Option<i64> {
        let at = httpdate::parse_http_date(header(headers, name)?).ok()?;
        Some(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
    };
    let modified = millis("last-modified")?;
    let date = millis("date").unwrap_or(now);
    Some((date - modified) / 10)
}

/// Cloudflare's default edge TTL for a response without caching headers, in ms.
pub fn default_ttl_ms(status: u16) -> Option<i64> {
    const MINUTE: i64 = 60_000;
    match status {
        200 | 206 | 301 => Some(120 * MINUTE),
        302 | 303 => Some(20 * MINUTE),
        404 | 410 => Some(3 * MINUTE),
        _ => None,
    }
}

/// What `put` stores: the headers to keep and when the entry expires.
#[derive(Debug, PartialEq, Eq)]
pub struct Storable {
    pub headers: Vec<(String, String)>,
    pub expires_at: i64,
}

/// Whether a (checked) response is stored at `now`, and until when.
pub fn storable(
    status: u16,
    headers: &[(String, String)],
    now: i64,
    policy: TtlPolicy,
) -> Option<Storable> {
    if !(200..=599).contains(&status) || status == 304 {
        return None;
    }
    let directives = cache_control(headers);
    let directive = |name: &str| directives.iter().find(|(n, _)| n == name);
    if directive("no-store").is_some() || directive("no-cache").is_some() {
        return None;
    }
    // `private` alone keeps the response out of a shared cache; `private=<fields>` only
    // keeps those fields out.
    let mut private_fields: Vec<String> = Vec::new();
    if let Some((_, value)) = directive("private") {
        let Some(fields) = value else { return None };
        private_fields = fields
            .split(',')
            .map(|field| field.trim().to_ascii_lowercase())
            .filter(|field| !field.is_empty())
            .collect();
    }
    let is_private = |name: &str| private_fields.iter().any(|f| f.eq_ignore_ascii_case(name));
    if header(headers, "set-cookie").is_some() && !is_private("set-cookie") {
        return None;
    }
    let seconds = |name: &str| {
        directive(name)
            .and_then(|(_, value)| value.as_deref())
            .and_then(|value| value.parse::<i64>().ok())
    };
    let ttl = if let Some(s) = seconds("s-maxage").or_else(|| seconds("max-age")) {
        s.saturating_mul(1000)
    } else if let Some(expires) = header(headers, "expires") {
        // An Expires that is not a date means "already expired" (RFC 9111 5.3).
        let at = httpdate::parse_http_date(expires).ok()?;
        let at = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64;
        at - now
    } else {
        match policy {
            TtlPolicy::Explicit => heuristic_ttl_ms(status, headers, now)?,
            TtlPolicy::EdgeDefaults => default_ttl_ms(status)?,
        }
    };
    if ttl <= 0 {
        return None;
    }
    Some(Storable {
        headers: headers
            .iter()
            .filter(|(name, _)| !is_private(name))
            .cloned()
            .collect(),
        expires_at: now.saturating_add(ttl),
    })
}

/// The directives of every `Cache-Control` header, names lowercased, values unquoted.
fn cache_control(headers: &[(String, String)]) -> Vec<(String, Option<String>)> {
    let mut directives = Vec::new();
    for (_, value) in headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("cache-control"))
    {
        // Split on commas outside quotes: private="set-cookie, x-a" is one directive.
        let mut parts = Vec::new();
        let (mut start, mut quoted) = (0, false);
        for (i, c) in value.char_indices() {
            match c {
                '"' => quoted = !quoted,
                ',' if !quoted => {
                    parts.push(&value[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&value[start..]);
        for part in parts.into_iter().map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = match part.split_once('=') {
                Some((name, value)) => (name, Some(value.trim().trim_matches('"').to_string())),
                None => (part, None),
            };
            directives.push((name.trim().to_ascii_lowercase(), value));
        }
    }
    directives
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

/// A `match` answer for JS.
#[derive(Debug, serde::Serialize)]
pub struct CacheReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<ToJsBuffer>,
}

/// The answer to a request for a stored entry: a 304 when `If-None-Match` names its ETag,
/// else the entry; `CF-Cache-Status: HIT` either way.
fn answer(entry: CachedResponse, if_none_match: Option<&str>) -> CacheReply {
    let mut headers: Vec<(String, String)> = entry
        .headers
        .into_iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("cf-cache-status"))
        .collect();
    headers.push(("cf-cache-status".into(), "HIT".into()));
    let not_modified = match (if_none_match, header(&headers, "etag")) {
        (Some(wanted), Some(etag)) => etag_matches(wanted, etag),
        _ => false,
    };
    if not_modified {
        headers.retain(|(name, _)| !name.eq_ignore_ascii_case("content-length"));
        return CacheReply {
            status: 304,
            headers,
            body: None,
        };
    }
    let null_body = matches!(entry.status, 204 | 205 | 304);
    CacheReply {
        status: entry.status,
        headers,
        body: (!null_body).then(|| entry.body.into()),
    }
}

/// `If-None-Match` uses the weak comparison: `W/"a"` matches `"a"`.
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let weak = |tag: &str| tag.trim().trim_start_matches("W/").to_string();
    let etag = weak(etag);
    if_none_match
        .split(',')
        .any(|tag| tag.trim() == "*" || weak(tag) == etag)
}

/// This isolate thread's connection to the cache file, opened on first use.
pub struct CacheStore {
    path: PathBuf,
    policy: TtlPolicy,
    db: Arc<Mutex<Option<CacheDatabase>>>,
}

impl CacheStore {
    pub fn new(path: PathBuf, policy: TtlPolicy) -> Self {
        Self {
            path,
            policy,
            db: Arc::default(),
        }
    }

    /// Runs `f` on the database, on a blocking thread.
    async fn with<T: Send + 'static>(
        state: &Rc<RefCell<OpState>>,
        f: impl FnOnce(&CacheDatabase) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, CacheError> {
        let (path, db) = {
            let state = state.borrow();
            let store = state.borrow::<CacheStore>();
            (store.path.clone(), store.db.clone())
        };
        tokio::task::spawn_blocking(move || {
            let mut db = db.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if db.is_none() {
                let opened =
                    CacheDatabase::open(&path, now_ms()).map_err(|source| CacheError::Open {
                        path: path.clone(),
                        source,
                    })?;
                *db = Some(opened);
            }
            f(db.as_ref().expect("opened above"))
                .map_err(|source| CacheError::Storage { path, source })
        })
        .await
        .map_err(|e| CacheError::Task(e.to_string()))?
        .map_err(CacheError::logged)
    }
}

/// `put`'s argument checks (TypeErrors), run before JS reads the body.
#[op2]
pub fn op_dorun_cache_check(
    #[string] method: &str,
    #[smi] status: u16,
    #[serde] headers: Vec<(String, String)>,
) -> Result<(), CacheError> {
    check_put(method, status, &headers)
}

/// Stores a response if the policy allows; true if it was stored.
#[op2]
pub async fn op_dorun_cache_put(
    state: Rc<RefCell<OpState>>,
    #[string] cache: String,
    #[string] url: String,
    #[smi] status: u16,
    #[serde] headers: Vec<(String, String)>,
    #[buffer] body: JsBuffer,
) -> Result<bool, CacheError> {
    let policy = state.borrow().borrow::<CacheStore>().policy;
    let Some(storable) = storable(status, &headers, now_ms(), policy) else {
        return Ok(false);
    };
    let entry = CachedResponse {
        status,
        headers: storable.headers,
        body: body.to_vec(),
        expires_at: storable.expires_at,
    };
    CacheStore::with(&state, move |db| db.put(&cache, &url, &entry)).await?;
    Ok(true)
}

/// The stored answer for `url`, or null when there is none (or it expired).
#[op2]
#[serde]
pub async fn op_dorun_cache_match(
    state: Rc<RefCell<OpState>>,
    #[string] cache: String,
    #[string] url: String,
    #[string] if_none_match: Option<String>,
) -> Result<Option<CacheReply>, CacheError> {
    let entry = CacheStore::with(&state, move |db| db.get(&cache, &url, now_ms())).await?;
    Ok(entry.map(|entry| answer(entry, if_none_match.as_deref())))
}

/// Deletes the entry of `url`; true if there was one.
#[op2]
pub async fn op_dorun_cache_delete(
    state: Rc<RefCell<OpState>>,
    #[string] cache: String,
    #[string] url: String,
) -> Result<bool, CacheError> {
    CacheStore::with(&state, move |db| db.delete(&cache, &url)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn ttl(status: u16, list: &[(&str, &str)]) -> Option<i64> {
        storable(status, &headers(list), NOW, TtlPolicy::Explicit).map(|s| s.expires_at - NOW)
    }

    fn edge_ttl(status: u16, list: &[(&str, &str)]) -> Option<i64> {
        storable(status, &headers(list), NOW, TtlPolicy::EdgeDefaults).map(|s| s.expires_at - NOW)
    }

    fn http_date(ms: i64) -> String {
        httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms as u64))
    }

    #[test]
    fn put_refuses_non_get_partial_content_and_vary_star() {
        assert!(matches!(
            check_put("POST", 200, &[]),
            Err(CacheError::NotGet)
        ));
        assert!(matches!(
            check_put("GET", 206, &[]),
            Err(CacheError::PartialContent)
        ));
        assert!(matches!(
            check_put("GET", 200, &headers(&[("Vary", "Accept, *")])),
            Err(CacheError::VaryAll)
        ));
        assert!(check_put("GET", 200, &headers(&[("vary", "Accept")])).is_ok());
    }

    #[test]
    fn s_maxage_wins_over_max_age_which_wins_over_expires() {
        let expires = httpdate::fmt_http_date(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis((NOW + 50_000) as u64),
        );
        assert_eq!(
            ttl(
                200,
                &[
                    ("cache-control", "max-age=10, s-maxage=20"),
                    ("expires", &expires)
                ]
            ),
            Some(20_000)
        );
        assert_eq!(
            ttl(
                200,
                &[
                    ("Cache-Control", "public, max-age=10"),
                    ("expires", &expires)
                ]
            ),
            Some(10_000)
        );
        assert_eq!(ttl(200, &[("expires", &expires)]), Some(50_000));
        assert_eq!(ttl(200, &[("expires", "not a date")]), None);
        assert_eq!(ttl(200, &[("cache-control", "max-age=0")]), None);
    }

    #[test]
    fn unmarked_responses_are_not_stored_unless_last_modified_gives_a_lifetime() {
        for status in [200, 301, 302, 404, 500] {
            assert_eq!(ttl(status, &[]), None, "{status}");
        }
        assert_eq!(ttl(200, &[("cache-control", "public")]), None);
        assert_eq!(ttl(500, &[("cache-control", "max-age=5")]), Some(5_000));
        assert_eq!(ttl(304, &[("cache-control", "max-age=5")]), None);
        // Modified 10 days ago: a tenth of that, as wrangler dev keeps it.
        let ten_days = 10 * 24 * 3600 * 1000;
        let modified = http_date(NOW - ten_days);
        assert_eq!(
            ttl(200, &[("last-modified", &modified)]),
            Some(ten_days / 10)
        );
        assert_eq!(
            ttl(
                200,
                &[
                    ("last-modified", &modified),
                    ("date", &http_date(NOW - ten_days / 2))
                ]
            ),
            Some(ten_days / 20)
        );
        assert_eq!(ttl(302, &[("last-modified", &modified)]), None);
        assert_eq!(ttl(200, &[("last-modified", &http_date(NOW + 1000))]), None);
    }

    #[test]
    fn with_edge_defaults_the_status_sets_the_ttl() {
        assert_eq!(edge_ttl(200, &[]), Some(120 * 60_000));
        assert_eq!(edge_ttl(301, &[]), Some(120 * 60_000));
        assert_eq!(edge_ttl(302, &[]), Some(20 * 60_000));
        assert_eq!(edge_ttl(404, &[]), Some(3 * 60_000));
        assert_eq!(edge_ttl(500, &[]), None);
        assert_eq!(
            edge_ttl(200, &[("cache-control", "max-age=5")]),
            Some(5_000)
        );
        assert_eq!(edge_ttl(200, &[("cache-control", "no-store")]), None);
    }

    #[test]
    fn no_store_no_cache_and_private_are_not_stored() {
        assert_eq!(ttl(200, &[("cache-control", "no-store")]), None);
        assert_eq!(ttl(200, &[("cache-control", "max-age=60, no-cache")]), None);
        assert_eq!(ttl(200, &[("cache-control", "private, max-age=60")]), None);
    }

    #[test]
    fn set_cookie_is_stored_only_with_private_set_cookie_and_then_dropped() {
        assert_eq!(ttl(200, &[("set-cookie", "a=1")]), None);
        let kept = storable(
            200,
            &headers(&[
                ("set-cookie", "a=1"),
                ("cache-control", "private=\"Set-Cookie\", max-age=60"),
                ("x-kept", "yes"),
            ]),
            NOW,
            TtlPolicy::Explicit,
        )
        .unwrap();
        assert_eq!(kept.expires_at - NOW, 60_000);
        assert_eq!(
            kept.headers,
            headers(&[
                ("cache-control", "private=\"Set-Cookie\", max-age=60"),
                ("x-kept", "yes")
            ])
        );
    }

    fn entry(status: u16, list: &[(&str, &str)]) -> CachedResponse {
        CachedResponse {
            status,
            headers: headers(list),
            body: b"body".to_vec(),
            expires_at: NOW,
        }
    }

    #[test]
    fn match_adds_cf_cache_status_and_answers_a_matching_if_none_match_with_304() {
        let plain = answer(entry(200, &[("etag", "\"v1\"")]), None);
        assert_eq!(plain.status, 200);
        assert!(plain.body.is_some());
        assert!(plain
            .headers
            .contains(&("cf-cache-status".into(), "HIT".into())));
        let hit = answer(entry(200, &[("ETag", "\"v1\"")]), Some("\"v0\", W/\"v1\""));
        assert_eq!(hit.status, 304);
        assert!(hit.body.is_none());
        let miss = answer(entry(200, &[("etag", "\"v1\"")]), Some("\"v2\""));
        assert_eq!(miss.status, 200);
        assert_eq!(answer(entry(200, &[]), Some("*")).status, 200);
    }
}
