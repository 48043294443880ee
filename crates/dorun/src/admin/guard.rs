//! What the admin listener trusts, so that no web page in the operator's browser can drive
//! it (cross-site request forgery, DNS rebinding, framing):
//!
//! - **Host**: the request must name the listener by an IP address, `localhost` (or a name
//!   under `.localhost`), or a name the operator allowed with `--admin-allow-host`. A
//!   rebinding page reaches the listener under its own domain name, which is refused.
//! - **Origin**: a request a browser sent from another origin (its `Origin` header is not
//!   the listener's own, or `Sec-Fetch-Site` says cross-site) is refused.
//! - **State changes** (every method but GET and HEAD) must carry a header that a cross-site
//!   form or a no-CORS `fetch` cannot send without the browser asking first: a `Content-Type`
//!   other than the three a form can send (`application/json`; `application/octet-stream`
//!   for an import), or `Authorization`.
//!
//! `/healthz` and `/readyz` hold no data and answer any Host (orchestrators' probes).

use http::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN};
use http::Method;

/// Names (besides IP addresses and `localhost`) under which the listener may be reached.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// Lower-case host names, without port; `*` allows any.
    allowed_hosts: Vec<String>,
}

impl Trust {
    pub fn new(allowed_hosts: &[String]) -> Trust {
        Trust {
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
        }
    }

    /// Why the request is refused, if it is.
    pub fn refusal(&self, method: &Method, uri: &http::Uri, headers: &HeaderMap) -> Option<String> {
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| header(headers, HOST).map(str::to_string));
        if let Some(authority) = &authority {
            if !self.host_allowed(host_of(authority)) {
                return Some(format!(
                    "the admin listener does not answer to the host '{authority}' (it answers to \
                     its IP address and localhost; allow a name with --admin-allow-host)"
                ));
            }
        }
        if let Some(origin) = header(headers, ORIGIN) {
            let same = authority
                .as_deref()
                .is_some_and(|authority| same_origin(origin, authority));
            if !same {
                return Some(format!(
                    "cross-origin request from '{origin}' refused by the admin listener"
                ));
            }
        }
        if let Some(site) = header(headers, "sec-fetch-site") {
            if !matches!(site, "same-origin" | "none") {
                return Some(format!(
                    "request from another site (Sec-Fetch-Site: {site}) refused by the admin listener"
                ));
            }
        }
        if method != Method::GET && method != Method::HEAD && !preflighted(headers) {
            return Some(format!(
                "the admin listener takes a {method} only with a header a web page cannot send \
                 on its own: Content-Type: application/json (application/octet-stream for an \
                 import), or Authorization"
            ));
        }
        None
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if host.parse::<std::net::IpAddr>().is_ok() {
            return true;
        }
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return inner.parse::<std::net::Ipv6Addr>().is_ok();
        }
        host == "localhost"
            || host.ends_with(".localhost")
            || self.allowed_hosts.iter().any(|h| h == "*" || *h == host)
    }
}

fn header<K: http::header::AsHeaderName>(headers: &HeaderMap, name: K) -> Option<&str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The host part of `host[:port]` (IPv6 literals keep their brackets).
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .find(']')
            .map_or(authority, |end| &authority[..=end]);
    }
    authority
        .rsplit_once(':')
        .map_or(authority, |(host, _)| host)
}

/// Whether `origin` (`scheme://host[:port]`) names the listener reached as `authority`.
fn same_origin(origin: &str, authority: &str) -> bool {
    let Ok(origin) = url::Url::parse(origin) else {
        return false; // "null" (sandboxed frames, file pages) and garbage
    };
    let Some(host) = origin.host_str() else {
        return false;
    };
    let origin_authority = match origin.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    let default_port = match origin.scheme() {
        "http" => "80",
        "https" => "443",
        _ => return false,
    };
    let normalize = |a: &str| {
        let a = a.to_ascii_lowercase();
        match a.strip_suffix(&format!(":{default_port}")) {
            Some(stripped) => stripped.to_string(),
            None => a,
        }
    };
    normalize(&origin_authority) == normalize(authority)
}

/// Whether a browser would have asked (CORS preflight) before sending these headers
/// cross-site: a Content-Type outside the three a form can send, or Authorization.
fn preflighted(headers: &HeaderMap) -> bool {
    if headers.contains_key(AUTHORIZATION) {
        return true;
    }
    let Some(content_type) = header(headers, CONTENT_TYPE) else {
        return false;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    !essence.is_empty()
        && !matches!(
            essence.as_str(),
            "application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(trust: &Trust, method: Method, pairs: &[(&str, &str)]) -> Option<String> {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        trust.refusal(&method, &"/api/reset".parse().unwrap(), &headers)
    }

    #[test]
    fn hosts_by_address_localhost_or_allowed_name() {
        let trust = Trust::new(&["Admin.Example.".to_string()]);
        for host in [
            "127.0.0.1:9000",
            "[::1]:9000",
            "10.1.2.3",
            "localhost:9000",
            "LOCALHOST",
            "app.localhost:9",
            "admin.example:9000",
        ] {
            assert_eq!(
                refusal(&trust, Method::GET, &[("host", host)]),
                None,
                "{host}"
            );
        }
        for host in [
            "evil.example:9000",
            "127.0.0.1.evil.example",
            "localhost.evil",
            "[zz]:1",
        ] {
            assert!(
                refusal(&trust, Method::GET, &[("host", host)]).is_some(),
                "{host}"
            );
        }
        let any = Trust::new(&["*".to_string()]);
        assert_eq!(
            refusal(&any, Method::GET, &[("host", "evil.example")]),
            None
        );
    }

    #[test]
    fn cross_origin_and_form_like_requests_are_refused() {
        let trust = Trust::default();
        let host = ("host", "127.0.0.1:9000");
        let json = ("content-type", "application/json");
        assert_eq!(refusal(&trust, Method::POST, &[host, json]), None);
        assert_eq!(
            refusal(
                &trust,
                Method::POST,
                &[host, json, ("origin", "http://127.0.0.1:9000")]
            ),
            None
        );
        assert_eq!(
            refusal(
                &trust,
                Method::POST,
                &[
                    ("host", "localhost"),
                    json,
                    ("origin", "http://localhost:80")
                ]
            ),
            None
        );
        // The scheme is not compared: behind a TLS proxy the page is https, the listener http.
        for origin in [
            "http://evil.example",
            "http://127.0.0.1:9001",
            "null",
            "file:///x",
        ] {
            assert!(
                refusal(&trust, Method::POST, &[host, json, ("origin", origin)]).is_some(),
                "{origin}"
            );
            assert!(
                refusal(&trust, Method::GET, &[host, ("origin", origin)]).is_some(),
                "{origin}"
            );
        }
        assert!(refusal(
            &trust,
            Method::POST,
            &[host, json, ("sec-fetch-site", "cross-site")]
        )
        .is_some());
        assert!(refusal(
            &trust,
            Method::POST,
            &[host, json, ("sec-fetch-site", "same-site")]
        )
        .is_some());
        assert_eq!(
            refusal(
                &trust,
                Method::POST,
                &[host, json, ("sec-fetch-site", "same-origin")]
            ),
            None
        );
        // What a form or a no-CORS fetch can send without a preflight.
        for content_type in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "TEXT/PLAIN;charset=utf-8",
        ] {
            assert!(
                refusal(
                    &trust,
                    Method::POST,
                    &[host, ("content-type", content_type)]
                )
                .is_some(),
                "{content_type}"
            );
        }
        assert!(refusal(&trust, Method::POST, &[host]).is_some());
        assert!(refusal(&trust, Method::DELETE, &[host]).is_some());
        assert_eq!(
            refusal(&trust, Method::POST, &[host, ("authorization", "Bearer x")]),
            None
        );
        assert_eq!(
            refusal(
                &trust,
                Method::POST,
                &[host, ("content-type", "application/octet-stream")]
            ),
            None
        );
        assert_eq!(refusal(&trust, Method::GET, &[host]), None);
    }
}
