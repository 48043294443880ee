//! The rule files of an assets directory: `_headers`, `_redirects` and `.assetsignore`, and
//! the route patterns of `run_worker_first`.
//!
//! Patterns follow Cloudflare's rules engine: `*` is a splat (anything, including `/`,
//! available as `:splat`), `:name` a placeholder (one path segment; one label in the host of
//! an `https://host/...` rule), matched against the whole request path.

use std::collections::HashMap;

use globset::{GlobBuilder, GlobMatcher};
use regex::Regex;

/// Most `_headers` rules Cloudflare accepts.
pub const MAX_HEADER_RULES: usize = 100;
/// Most static and dynamic `_redirects` rules Cloudflare accepts.
pub const MAX_STATIC_REDIRECTS: usize = 2000;
pub const MAX_DYNAMIC_REDIRECTS: usize = 100;
const MAX_LINE_LENGTH: usize = 1000;

/// A compiled `_headers` / `_redirects` source pattern.
#[derive(Debug)]
pub struct Pattern {
    regex: Regex,
    /// `https://host/...` rules match `https://<request host><path>`.
    cross_host: bool,
}

impl Pattern {
    pub fn new(source: &str) -> Result<Self, String> {
        let cross_host = source.starts_with("https://");
        let mut out = String::from("^");
        let mut splat_used = false;
        let mut chars = source.char_indices().peekable();
        // The host part of an absolute rule ends at the first '/' after "https://".
        let host_end = if cross_host {
            source[8..].find('/').map(|i| i + 8).unwrap_or(source.len())
        } else {
            0
        };
        let mut names: Vec<String> = Vec::new();
        while let Some((index, c)) = chars.next() {
            if c == '*' {
                if splat_used {
                    out.push_str(".*");
                } else {
                    out.push_str("(?P<splat>.*)");
                    splat_used = true;
                }
            } else if c == ':'
                && chars
                    .peek()
                    .is_some_and(|(_, next)| next.is_ascii_alphabetic())
            {
                let mut name = String::new();
                while let Some((_, next)) = chars.peek() {
                    if next.is_ascii_alphanumeric() || *next == '_' {
                        name.push(*next);
                        chars.next();
                    } else {
                        break;
                    }
                }
                if names.contains(&name) || name == "splat" {
                    return Err(format!("placeholder ':{name}' is used twice"));
                }
                let class = if index < host_end { "[^/.]+" } else { "[^/]+" };
                out.push_str(&format!("(?P<{name}>{class})"));
                names.push(name);
            } else {
                out.push_str(&regex::escape(&c.to_string()));
            }
        }
        out.push('$');
        let regex = Regex::new(&out).map_err(|e| format!("invalid pattern '{source}': {e}"))?;
        Ok(Self { regex, cross_host })
    }

    /// The placeholders of a match (`splat` and named ones), or `None`.
    pub fn matches(&self, host: &str, path: &str) -> Option<HashMap<String, String>> {
        let subject;
        let subject = if self.cross_host {
            subject = format!("https://{host}{path}");
            subject.as_str()
        } else {
            path
        };
        let captures = self.regex.captures(subject)?;
        let mut values = HashMap::new();
        for name in self.regex.capture_names().flatten() {
            if let Some(value) = captures.name(name) {
                values.insert(name.to_string(), value.as_str().to_string());
            }
        }
        Some(values)
    }

    /// Whether the pattern has a splat or placeholder.
    pub fn is_dynamic(source: &str) -> bool {
        source.contains('*') || Regex::new(":[A-Za-z]").is_ok_and(|r| r.is_match(source))
    }
}

/// Replaces `:name` placeholders in `template` with their values; unknown ones stay.
pub fn substitute(template: &str, values: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find(':') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let length = after
            .char_indices()
            .take_while(|(i, c)| {
                if *i == 0 {
                    c.is_ascii_alphabetic()
                } else {
                    c.is_ascii_alphanumeric() || *c == '_'
                }
            })
            .count();
        let name = &after[..length];
        match values.get(name) {
            Some(value) if length > 0 => out.push_str(value),
            _ => {
                out.push(':');
                out.push_str(name);
            }
        }
        rest = &after[length..];
    }
    out.push_str(rest);
    out
}

/// One `_redirects` line.
#[derive(Debug)]
pub struct Redirect {
    pub line: usize,
    pub from: String,
    pub to: String,
    pub status: u16,
    pattern: Pattern,
}

/// The rules of a `_redirects` file: static ones by path, dynamic ones in file order.
#[derive(Debug, Default)]
pub struct Redirects {
    statics: HashMap<String, Redirect>,
    dynamics: Vec<Redirect>,
}

/// Where a redirect sends a request.
#[derive(Debug, PartialEq, Eq)]
pub struct RedirectTarget {
    pub status: u16,
    pub to: String,
}

impl Redirects {
    /// Parses a `_redirects` file. Invalid lines are skipped with a warning naming the line,
    /// as wrangler does.
    pub fn parse(text: &str, warnings: &mut Vec<String>) -> Self {
        let mut redirects = Redirects::default();
        let mut seen: Vec<String> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line_number = index + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut warn = |message: String| {
                warnings.push(format!("_redirects line {line_number}: {message}"))
            };
            if line.len() > MAX_LINE_LENGTH {
                warn(format!("longer than {MAX_LINE_LENGTH} characters; ignored"));
                continue;
            }
            let tokens: Vec<&str> = line.split_whitespace().collect();
            if tokens.len() < 2 || tokens.len() > 3 {
                warn(format!(
                    "expected '[source] [destination] [code?]', got {} field(s); ignored",
                    tokens.len()
                ));
                continue;
            }
            let (from, to) = (tokens[0], tokens[1]);
            let status = match tokens.get(2) {
                None => 302,
                Some(code) => {
                    match code.parse::<u16>() {
                        Ok(code @ (200 | 301 | 302 | 303 | 307 | 308)) => code,
                        _ => {
                            warn(format!("status '{code}' is not one of 200, 301, 302, 303, 307, 308; ignored"));
                            continue;
                        }
                    }
                }
            };
            if !from.starts_with('/') && !from.starts_with("https://") {
                warn(format!(
                    "source '{from}' must start with '/' or 'https://'; ignored"
                ));
                continue;
            }
            let absolute_to = to.contains("://");
            if !to.starts_with('/') && !absolute_to {
                warn(format!(
                    "destination '{to}' must be a path starting with '/' or a URL; ignored"
                ));
                continue;
            }
            if status == 200 && absolute_to {
                warn(format!(
                    "proxy (200) rules can only point to paths, not '{to}'; ignored"
                ));
                continue;
            }
            if seen.iter().any(|s| s == from) {
                warn(format!("source '{from}' already has a rule above; ignored"));
                continue;
            }
            let dynamic = Pattern::is_dynamic(from);
            if dynamic && redirects.dynamics.len() >= MAX_DYNAMIC_REDIRECTS {
                warn(format!(
                    "more than {MAX_DYNAMIC_REDIRECTS} dynamic rules; ignored"
                ));
                continue;
            }
            if !dynamic && redirects.statics.len() >= MAX_STATIC_REDIRECTS {
                warn(format!(
                    "more than {MAX_STATIC_REDIRECTS} static rules; ignored"
                ));
                continue;
            }
            let pattern = match Pattern::new(from) {
                Ok(pattern) => pattern,
                Err(e) => {
                    warn(format!("{e}; ignored"));
                    continue;
                }
            };
            seen.push(from.to_string());
            let rule = Redirect {
                line: line_number,
                from: from.to_string(),
                to: to.to_string(),
                status,
                pattern,
            };
            if dynamic {
                redirects.dynamics.push(rule);
            } else {
                redirects.statics.insert(from.to_string(), rule);
            }
        }
        redirects
    }

    /// The rule for a request: a static rule (with or without host, the earlier line wins)
    /// before any dynamic one.
    pub fn find(&self, host: &str, path: &str) -> Option<RedirectTarget> {
        let with_host = self.statics.get(&format!("https://{host}{path}"));
        let without_host = self.statics.get(path);
        let found = match (with_host, without_host) {
            (Some(a), Some(b)) => Some(if a.line < b.line { a } else { b }),
            (a, b) => a.or(b),
        };
        if let Some(rule) = found {
            return Some(RedirectTarget {
                status: rule.status,
                to: rule.to.clone(),
            });
        }
        for rule in &self.dynamics {
            if let Some(values) = rule.pattern.matches(host, path) {
                let to = substitute(&rule.to, &values).trim().to_string();
                let to = if to.contains("://") {
                    to
                } else {
                    collapse_slashes(&to)
                };
                return Some(RedirectTarget {
                    status: rule.status,
                    to,
                });
            }
        }
        None
    }

    pub fn is_empty(&self) -> bool {
        self.statics.is_empty() && self.dynamics.is_empty()
    }
}

fn collapse_slashes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    out
}

/// One `_headers` block.
#[derive(Debug)]
pub struct HeaderRule {
    pattern: Pattern,
    /// Headers to set, in file order (a name set twice in a block is joined with ", ").
    pub set: Vec<(String, String)>,
    /// Headers to remove (`! Name`).
    pub unset: Vec<String>,
}

/// Parses a `_headers` file; invalid lines are skipped with a warning naming the line.
pub fn parse_headers(text: &str, warnings: &mut Vec<String>) -> Vec<HeaderRule> {
    let mut rules: Vec<HeaderRule> = Vec::new();
    // Whether the current block's path line was valid (its header lines belong to it).
    let mut in_rule = false;
    for (index, raw) in text.lines().enumerate() {
        let line_number = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut warn =
            |message: String| warnings.push(format!("_headers line {line_number}: {message}"));
        if line.len() > MAX_LINE_LENGTH {
            warn(format!("longer than {MAX_LINE_LENGTH} characters; ignored"));
            continue;
        }
        let indented = raw.starts_with([' ', '\t']);
        if !indented {
            in_rule = false;
            if !line.starts_with('/') && !line.starts_with("https://") {
                warn(format!(
                    "path '{line}' must start with '/' or 'https://'; block ignored"
                ));
                continue;
            }
            if rules.len() >= MAX_HEADER_RULES {
                warn(format!("more than {MAX_HEADER_RULES} rules; ignored"));
                continue;
            }
            match Pattern::new(line) {
                Ok(pattern) => {
                    rules.push(HeaderRule {
                        pattern,
                        set: Vec::new(),
                        unset: Vec::new(),
                    });
                    in_rule = true;
                }
                Err(e) => warn(format!("{e}; block ignored")),
            }
            continue;
        }
        if !in_rule {
            warn("header line without a path line above it; ignored".into());
            continue;
        }
        let rule = rules.last_mut().expect("in_rule implies a rule");
        if let Some(name) = line.strip_prefix('!') {
            let name = name.trim().to_ascii_lowercase();
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                warn(format!("'{name}' is not a header name; ignored"));
                continue;
            }
            rule.unset.push(name);
            continue;
        }
        let Some((name, value)) = line.split_once(':') else {
            warn(format!("expected 'Name: value', got '{line}'; ignored"));
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim().to_string();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            warn(format!("'{name}' is not a header name; ignored"));
            continue;
        }
        match rule.set.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            None => rule.set.push((name, value)),
        }
    }
    rules
}

impl HeaderRule {
    /// The headers this rule sets for a request, placeholders filled in, if it matches.
    pub fn apply_to(&self, host: &str, path: &str) -> Option<Vec<(String, String)>> {
        let values = self.pattern.matches(host, path)?;
        Some(
            self.set
                .iter()
                .map(|(name, value)| (name.clone(), substitute(value, &values)))
                .collect(),
        )
    }
}

/// A `run_worker_first` route pattern: `*` matches anything (including `/`).
#[derive(Debug)]
pub struct RoutePattern(Regex);

impl RoutePattern {
    pub fn new(source: &str) -> Result<Self, String> {
        let body = source
            .split('*')
            .map(regex::escape)
            .collect::<Vec<_>>()
            .join(".*");
        Regex::new(&format!("^{body}$"))
            .map(RoutePattern)
            .map_err(|e| format!("invalid route pattern '{source}': {e}"))
    }

    pub fn matches(&self, path: &str) -> bool {
        self.0.is_match(path)
    }
}

/// `.assetsignore`: gitignore-style patterns over paths relative to the assets directory.
#[derive(Debug, Default)]
pub struct IgnoreRules {
    rules: Vec<IgnoreRule>,
}

#[derive(Debug)]
struct IgnoreRule {
    matcher: GlobMatcher,
    negate: bool,
    directory_only: bool,
}

impl IgnoreRules {
    /// The rules of an `.assetsignore` file plus the ones wrangler always adds (the rule files
    /// themselves are never served).
    pub fn parse(text: &str, warnings: &mut Vec<String>) -> Self {
        let mut rules = IgnoreRules::default();
        for builtin in ["/.assetsignore", "/_headers", "/_redirects"] {
            rules.add(builtin).expect("built-in patterns are valid");
        }
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim_end();
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            if let Err(e) = rules.add(line.trim_start()) {
                warnings.push(format!(".assetsignore line {}: {e}; ignored", index + 1));
            }
        }
        rules
    }

    fn add(&mut self, line: &str) -> Result<(), String> {
        let (negate, line) = match line.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, line.strip_prefix('\\').unwrap_or(line)),
        };
        let (directory_only, line) = match line.strip_suffix('/') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        if line.is_empty() {
            return Ok(());
        }
        // Anchored to the directory when it starts with '/' or has a '/' inside.
        let anchored = line.starts_with('/') || line.contains('/');
        let line = line.trim_start_matches('/');
        let glob = if anchored {
            line.to_string()
        } else {
            format!("**/{line}")
        };
        let matcher = GlobBuilder::new(&glob)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("invalid pattern '{line}': {e}"))?
            .compile_matcher();
        self.rules.push(IgnoreRule {
            matcher,
            negate,
            directory_only,
        });
        Ok(())
    }

    /// Whether `relative` (a file path relative to the assets directory, `/`-separated, no
    /// leading slash) is ignored: it or one of its directories matches, the last matching
    /// rule deciding, as in gitignore.
    pub fn is_ignored(&self, relative: &str) -> bool {
        let mut prefix_end = 0;
        let bytes = relative.as_bytes();
        // Directories first: a file under an ignored directory is ignored.
        while let Some(slash) = relative[prefix_end..].find('/') {
            let dir = &relative[..prefix_end + slash];
            if self.decide(dir, true) {
                return true;
            }
            prefix_end += slash + 1;
            if prefix_end >= bytes.len() {
                break;
            }
        }
        self.decide(relative, false)
    }

    fn decide(&self, path: &str, is_dir: bool) -> bool {
        let mut ignored = false;
        for rule in &self.rules {
            if rule.directory_only && !is_dir {
                continue;
            }
            if rule.matcher.is_match(path) {
                ignored = !rule.negate;
            }
        }
        ignored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_capture_splats_and_placeholders() {
        let pattern = Pattern::new("/blog/:year/*").unwrap();
        let values = pattern.matches("h", "/blog/2024/a/b").unwrap();
        assert_eq!(values["year"], "2024");
        assert_eq!(values["splat"], "a/b");
        assert!(pattern.matches("h", "/blog/2024").is_none());
        assert_eq!(
            substitute("/posts/:year/:splat?x=:nope", &values),
            "/posts/2024/a/b?x=:nope"
        );
        let host = Pattern::new("https://:sub.example.com/*").unwrap();
        assert_eq!(
            host.matches("docs.example.com", "/x").unwrap()["sub"],
            "docs"
        );
    }

    #[test]
    fn redirects_prefer_static_rules_and_skip_bad_lines() {
        let mut warnings = Vec::new();
        let redirects = Redirects::parse(
            "# comment\n/a/* /b/:splat 301\n/a/x /static\n/bad\n/c /d 418\n/a/x /dup\n",
            &mut warnings,
        );
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert_eq!(
            redirects.find("h", "/a/x"),
            Some(RedirectTarget {
                status: 302,
                to: "/static".into()
            })
        );
        assert_eq!(redirects.find("h", "/a/y/z").unwrap().to, "/b/y/z");
    }

    #[test]
    fn headers_blocks_set_and_unset() {
        let mut warnings = Vec::new();
        let rules = parse_headers(
            "/*\n  X-A: 1\n  X-A: 2\n  ! Cache-Control\n/p/:id\n  X-Id: :id\n",
            &mut warnings,
        );
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].set, vec![("x-a".to_string(), "1, 2".to_string())]);
        assert_eq!(rules[0].unset, vec!["cache-control".to_string()]);
        assert_eq!(
            rules[1].apply_to("h", "/p/7").unwrap(),
            vec![("x-id".to_string(), "7".to_string())]
        );
    }

    #[test]
    fn ignore_rules_follow_gitignore() {
        let mut warnings = Vec::new();
        let rules =
            IgnoreRules::parse("*.map\nsecret/\n/root-only.txt\n!keep.map\n", &mut warnings);
        assert!(rules.is_ignored("a/b/app.js.map"));
        assert!(!rules.is_ignored("keep.map"));
        assert!(rules.is_ignored("secret/x.txt"));
        assert!(rules.is_ignored("root-only.txt"));
        assert!(!rules.is_ignored("sub/root-only.txt"));
        assert!(rules.is_ignored("_headers"));
        assert!(!rules.is_ignored("sub/_headers"));
    }
}
