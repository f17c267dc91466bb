//! Match blocks, compiled once at load: globs become literals or anchored regexes, hosts the
//! routes' [`HostPattern`], CIDRs parsed. Matching reads the request in place and allocates
//! nothing.

use crate::authority::Authority;
use crate::config::{err, Cidr, ConfigError};
use crate::route::HostPattern;
use pingora::http::RequestHeader;
use regex::Regex;
use std::net::IpAddr;

use crate::config::rules::MatchConf;

/// A glob: `*` (within a path segment for path globs, anything for values), `**` (across
/// segments), `?` (one character). `*` alone as a value means "present, any value".
#[derive(Debug, Clone)]
pub enum Glob {
    Any,
    Exact(String),
    /// `/static/**`: a plain prefix test, no regex.
    Prefix(String),
    /// `*Mobile*` (value globs): a substring test.
    Contains(String),
    /// `*.jpg` (value globs): a suffix test.
    Suffix(String),
    Pattern(Regex),
}

impl Glob {
    /// A path glob: `*` stays within a segment, `**` crosses segments.
    pub fn path(p: &str) -> Result<Glob, String> {
        if !p.starts_with('/') && !p.starts_with('*') {
            return Err(format!("{p:?} must start with / (or *)"));
        }
        Glob::compile(p, true)
    }

    /// A value or name glob: `*` matches anything.
    pub fn value(p: &str) -> Result<Glob, String> {
        if p == "*" {
            return Ok(Glob::Any);
        }
        Glob::compile(p, false)
    }

    fn compile(p: &str, segments: bool) -> Result<Glob, String> {
        if p.contains("***") {
            return Err(format!("{p:?}: *** is not a glob; use * or **"));
        }
        if let Some(c) = p.chars().find(|c| matches!(c, '[' | ']' | '{' | '}')) {
            return Err(format!(
                "{p:?}: {c:?} is not supported in globs (only *, ** and ?); use path_regex"
            ));
        }
        if !p.contains(['*', '?']) {
            return Ok(Glob::Exact(p.to_string()));
        }
        if let Some(prefix) = p.strip_suffix("**") {
            if !prefix.contains(['*', '?']) && (!segments || prefix.ends_with('/')) {
                return Ok(Glob::Prefix(prefix.to_string()));
            }
        }
        // In a value glob `*` is any text, so one literal around stars is a string test.
        if !segments && !p.contains('?') {
            let inner = |s: &str| !s.is_empty() && !s.contains('*');
            match (p.strip_prefix('*'), p.strip_suffix('*')) {
                (Some(r), _) if r.strip_suffix('*').is_some_and(inner) => {
                    return Ok(Glob::Contains(r[..r.len() - 1].to_string()));
                }
                (Some(r), _) if inner(r) => return Ok(Glob::Suffix(r.to_string())),
                (None, Some(l)) if inner(l) => return Ok(Glob::Prefix(l.to_string())),
                _ => {}
            }
        }
        let (star, one) = if segments {
            ("[^/]*", "[^/]")
        } else {
            (".*", ".")
        };
        let mut re = String::with_capacity(p.len() * 2 + 2);
        re.push_str("^(?s:");
        let mut rest = p;
        while let Some(c) = rest.chars().next() {
            if let Some(r) = rest.strip_prefix("**") {
                re.push_str(".*");
                rest = r;
                continue;
            }
            match c {
                '*' => re.push_str(star),
                '?' => re.push_str(one),
                c => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
            }
            rest = &rest[c.len_utf8()..];
        }
        re.push_str(")$");
        Regex::new(&re)
            .map(Glob::Pattern)
            .map_err(|e| format!("{p:?}: {e}"))
    }

    pub fn matches(&self, s: &str) -> bool {
        match self {
            Glob::Any => true,
            Glob::Exact(e) => e == s,
            Glob::Prefix(p) => s.starts_with(p.as_str()),
            Glob::Contains(p) => s.contains(p.as_str()),
            Glob::Suffix(p) => s.ends_with(p.as_str()),
            Glob::Pattern(r) => r.is_match(s),
        }
    }
}

/// What a condition can look at.
pub struct Facts<'a> {
    pub req: &'a RequestHeader,
    pub route: Option<usize>,
    pub client: Option<IpAddr>,
    /// The response status; `None` in the request phase.
    pub status: Option<u16>,
}

#[derive(Debug)]
pub struct Match {
    route: Option<usize>,
    host: Option<HostPattern>,
    path: Option<Glob>,
    pub path_regex: Option<Regex>,
    /// Literal text every path matching `path_regex` starts with: tested first, so most paths
    /// never run the regex.
    path_literal: Option<String>,
    methods: Vec<http::Method>,
    client: Vec<Cidr>,
    header: Vec<(http::HeaderName, Glob)>,
    cookie: Vec<(String, Glob)>,
    query: Vec<(String, Glob)>,
    status: Vec<u16>,
    not: Option<Box<Match>>,
}

impl std::fmt::Debug for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("HostPattern")
    }
}

impl Match {
    pub fn compile(c: &MatchConf, at: &str, routes: &[String]) -> Result<Match, ConfigError> {
        let route = match &c.route {
            None => None,
            Some(r) => match routes.iter().position(|n| n == r) {
                Some(i) => Some(i),
                None => {
                    return err(
                        format!("{at}.route"),
                        format!("no route named {r:?}; use one of {routes:?}"),
                    )
                }
            },
        };
        let host = match &c.host {
            None => None,
            Some(h) => {
                let bare = h.strip_prefix("*.").unwrap_or(h);
                let ok = h == "*"
                    || (!bare.is_empty()
                        && bare
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
                if !ok {
                    return err(
                        format!("{at}.host"),
                        format!(
                            "{h:?} is not a host pattern; use \"example.com\" or \"*.example.com\""
                        ),
                    );
                }
                Some(HostPattern::parse(h))
            }
        };
        let glob = |key: &str, p: &str, f: fn(&str) -> Result<Glob, String>| {
            f(p).or_else(|m| err(format!("{at}.{key}"), m))
        };
        let path = match &c.path {
            Some(p) => Some(glob("path", p, Glob::path)?),
            None => None,
        };
        let path_regex = match &c.path_regex {
            Some(r) => Some(Regex::new(r).or_else(|e| {
                err(
                    format!("{at}.path_regex"),
                    format!("{r:?} is not a regex: {e}"),
                )
            })?),
            None => None,
        };
        let mut methods = Vec::new();
        for (i, m) in c.method.iter().flatten().enumerate() {
            let up = m.to_ascii_uppercase();
            match http::Method::from_bytes(up.as_bytes()) {
                Ok(m) => methods.push(m),
                Err(_) => {
                    return err(
                        format!("{at}.method[{i}]"),
                        format!("{m:?} is not a method"),
                    )
                }
            }
        }
        let mut header = Vec::new();
        for (name, v) in &c.header {
            let key = format!("header.{name}");
            let n = http::HeaderName::from_bytes(name.as_bytes()).or_else(|_| {
                err(
                    format!("{at}.{key}"),
                    format!("{name:?} is not a header name"),
                )
            })?;
            header.push((n, glob(&key, v, Glob::value)?));
        }
        let pairs = |kind: &str, m: &std::collections::BTreeMap<String, String>| {
            m.iter()
                .map(|(n, v)| Ok((n.clone(), glob(&format!("{kind}.{n}"), v, Glob::value)?)))
                .collect::<Result<Vec<_>, ConfigError>>()
        };
        let status = c.status.clone().unwrap_or_default();
        for (i, s) in status.iter().enumerate() {
            if !(100..=599).contains(s) {
                return err(format!("{at}.status[{i}]"), format!("{s} is not a status"));
            }
        }
        let not = match &c.not {
            Some(n) => Some(Box::new(Match::compile(n, &format!("{at}.not"), routes)?)),
            None => None,
        };
        Ok(Match {
            route,
            host,
            path,
            path_literal: c.path_regex.as_deref().and_then(literal_prefix),
            path_regex,
            methods,
            client: c.client.clone(),
            header,
            cookie: pairs("cookie", &c.cookie)?,
            query: pairs("query", &c.query)?,
            status,
            not,
        })
    }

    /// The key path of the first `status` condition, if any (it needs a response).
    pub fn status_at(c: &MatchConf, at: &str) -> Option<String> {
        if c.status.is_some() {
            return Some(format!("{at}.status"));
        }
        c.not
            .as_ref()
            .and_then(|n| Match::status_at(n, &format!("{at}.not")))
    }

    pub fn needs_status(&self) -> bool {
        !self.status.is_empty() || self.not.as_ref().is_some_and(|n| n.needs_status())
    }

    pub fn matches(&self, f: &Facts) -> bool {
        if self.route.is_some() && self.route != f.route {
            return false;
        }
        if !self.status.is_empty() && !f.status.is_some_and(|s| self.status.contains(&s)) {
            return false;
        }
        if !self.methods.is_empty() && !self.methods.contains(&f.req.method) {
            return false;
        }
        if let Some(h) = &self.host {
            if !h.matches(Authority::of(f.req).host()) {
                return false;
            }
        }
        let path = f.req.uri.path();
        if self.path.as_ref().is_some_and(|g| !g.matches(path)) {
            return false;
        }
        if self
            .path_literal
            .as_ref()
            .is_some_and(|l| !path.starts_with(l.as_str()))
        {
            return false;
        }
        if self.path_regex.as_ref().is_some_and(|r| !r.is_match(path)) {
            return false;
        }
        if !self.client.is_empty()
            && !f
                .client
                .is_some_and(|ip| self.client.iter().any(|c| c.contains(ip)))
        {
            return false;
        }
        for (name, g) in &self.header {
            let any = f
                .req
                .headers
                .get_all(name)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| g.matches(v)));
            if !any {
                return false;
            }
        }
        for (name, g) in &self.cookie {
            if !cookie(f.req, name).is_some_and(|v| g.matches(v)) {
                return false;
            }
        }
        for (name, g) in &self.query {
            if !query(f.req, name).is_some_and(|v| g.matches(v)) {
                return false;
            }
        }
        !self.not.as_ref().is_some_and(|n| n.matches(f))
    }
}

/// The literal text a `^`-anchored regex requires at the start (`^/admin(/|$)` → `/admin`).
/// Conservative: `None` when an alternation outside a group could make `^` bind to one branch
/// only; the literal stops at the first metacharacter and loses its last character when a
/// quantifier follows it.
fn literal_prefix(re: &str) -> Option<String> {
    let rest = re.strip_prefix('^')?;
    if rest.contains('[') && rest.contains('|') {
        return None; // a class may hold a bracket or parenthesis that would fool the depth count
    }
    let (mut depth, mut escaped) = (0i32, false);
    for c in rest.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            '|' if depth <= 0 => return None,
            _ => {}
        }
    }
    let mut out = String::new();
    for c in rest.chars() {
        match c {
            '*' | '?' | '{' => {
                out.pop();
                break;
            }
            '\\' | '.' | '+' | '(' | ')' | '|' | '[' | ']' | '}' | '^' | '$' => break,
            c => out.push(c),
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The value of cookie `name` (the first one), as sent.
pub fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (n, v) = pair.trim().split_once('=')?;
            (n == name).then_some(v)
        })
}

/// The value of query parameter `name` (the first one), not percent-decoded.
pub fn query<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.uri.query()?.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_globs_with_one_literal_are_string_tests() {
        // Each agrees with the regex the general case would build (`*` = any text).
        for (p, yes, no) in [
            ("*Mobile*", "Mozilla (Mobile) x", "Mozilla"),
            ("*.jpg", "a.jpg", "a.jpg.png"),
            ("curl/*", "curl/8.1", "xcurl/8"),
            ("*a*b*", "xaxbx", "xbxa"),
        ] {
            let g = Glob::value(p).unwrap();
            assert!(g.matches(yes) && !g.matches(no), "{p}: {g:?}");
        }
        assert!(matches!(
            Glob::value("*Mobile*").unwrap(),
            Glob::Contains(_)
        ));
        assert!(matches!(Glob::value("*.jpg").unwrap(), Glob::Suffix(_)));
        assert!(matches!(Glob::value("curl/*").unwrap(), Glob::Prefix(_)));
        assert!(matches!(Glob::value("*a*b*").unwrap(), Glob::Pattern(_)));
        assert!(matches!(Glob::value("*").unwrap(), Glob::Any));
    }

    #[test]
    fn regex_literal_prefixes_are_conservative() {
        for (re, want) in [
            ("^/admin(/|$)", Some("/admin")),
            ("^/old/(.*)$", Some("/old/")),
            ("^/ab?c", Some("/a")),
            ("^/ab*", Some("/a")),
            ("^/ab+", Some("/ab")),
            ("^/a{2}", Some("/")),
            ("^/v1\\.0/", Some("/v1")),
            ("^/a|/b", None),
            ("^/a[(]|/b", None),
            ("^(?i)/admin", None),
            ("\\.(css|js)$", None),
            ("^.*", None),
        ] {
            assert_eq!(literal_prefix(re).as_deref(), want, "{re}");
            // Whatever the prefix, every path the regex matches starts with it.
            if let Some(p) = want {
                let r = Regex::new(re).unwrap();
                for path in [
                    "/admin", "/admin/x", "/old/a", "/ac", "/abbb", "/aa", "/v1.0/x",
                ] {
                    assert!(!r.is_match(path) || path.starts_with(p), "{re} {path}");
                }
            }
        }
    }

    #[test]
    fn path_globs() {
        let g = Glob::path("/static/**").unwrap();
        assert!(g.matches("/static/a/b.css"));
        assert!(!g.matches("/other/static/a"));
        assert!(matches!(g, Glob::Prefix(_)));
        assert!(!g.matches("/static"));
        let g = Glob::path("/a/**/b").unwrap();
        assert!(g.matches("/a/x/y/b") && !g.matches("/a/x/c"));
        let g = Glob::path("/old/*").unwrap();
        assert!(g.matches("/old/a"));
        assert!(!g.matches("/old/a/b"));
        let g = Glob::path("/a.b").unwrap();
        assert!(g.matches("/a.b") && !g.matches("/axb"));
        assert!(Glob::path("/[ab]").is_err());
        assert!(Glob::path("/***").is_err());
        assert!(Glob::path("static").is_err());
    }

    #[test]
    fn value_globs() {
        assert!(Glob::value("*Mobile*").unwrap().matches("Foo Mobile/1"));
        assert!(!Glob::value("*Mobile*").unwrap().matches("Desktop"));
        assert!(Glob::value("utm_*").unwrap().matches("utm_source"));
        assert!(Glob::value("*").unwrap().matches(""));
    }

    #[test]
    fn cookies_and_query() {
        let mut r = RequestHeader::build("GET", b"/p?a=1&debug=1&flag", None).unwrap();
        r.insert_header("Cookie", "x=1; session=abc").unwrap();
        assert_eq!(cookie(&r, "session"), Some("abc"));
        assert_eq!(cookie(&r, "sess"), None);
        assert_eq!(query(&r, "debug"), Some("1"));
        assert_eq!(query(&r, "flag"), Some(""));
        assert_eq!(query(&r, "b"), None);
    }
}
