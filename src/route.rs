//! Which upstream group a request goes to: routes matched in config order on host and path
//! prefix, first match wins.

use crate::config;

pub struct Route {
    pub name: String,
    host: HostPattern,
    path_prefix: String,
    /// Index into the proxy's upstream groups.
    pub upstream: usize,
    pub cache: bool,
    pub stale: crate::cache::policy::StaleDefaults,
}

enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any subdomain, never the bare domain.
    Suffix(String),
}

impl HostPattern {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
            HostPattern::Suffix(s) => {
                host.len() > s.len()
                    && host.as_bytes()[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }
        }
    }
}

pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// `upstream_index` maps an upstream group name to its index; validation guarantees it exists.
    pub fn new(routes: &[config::Route], upstream_index: impl Fn(&str) -> usize) -> Router {
        let routes = routes
            .iter()
            .map(|r| {
                let host = match r.host.as_str() {
                    "*" => HostPattern::Any,
                    h => match h.strip_prefix('*') {
                        Some(suffix) => HostPattern::Suffix(suffix.to_ascii_lowercase()),
                        None => HostPattern::Exact(h.to_ascii_lowercase()),
                    },
                };
                Route {
                    name: r
                        .name
                        .clone()
                        .unwrap_or_else(|| format!("{}{}", r.host, r.path_prefix)),
                    host,
                    path_prefix: r.path_prefix.clone(),
                    upstream: upstream_index(&r.upstream),
                    cache: r.cache,
                    stale: crate::cache::policy::StaleDefaults {
                        while_revalidate: r.stale_while_revalidate.as_secs().min(u32::MAX as u64)
                            as u32,
                        if_error: r.stale_if_error.as_secs().min(u32::MAX as u64) as u32,
                    },
                }
            })
            .collect();
        Router { routes }
    }

    /// `host` is the request's host without port.
    pub fn find(&self, host: &str, path: &str) -> Option<usize> {
        self.routes
            .iter()
            .position(|r| r.host.matches(host) && path.starts_with(&r.path_prefix))
    }

    pub fn get(&self, i: usize) -> &Route {
        &self.routes[i]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

/// The host a request names, without port: the absolute-form authority if present (RFC 9112
/// §3.2.2 says it wins over Host), else the Host header.
pub fn request_host(req: &pingora::http::RequestHeader) -> &str {
    strip_port(request_authority(req))
}

/// The authority a request names (host and optional port), by the same rule.
pub fn request_authority(req: &pingora::http::RequestHeader) -> &str {
    match req.uri.authority() {
        // Userinfo is never part of the host; Pingora refuses to forward it anyway.
        Some(a) => a.as_str().rsplit('@').next().unwrap_or(""),
        None => req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: keep the brackets, drop what follows them.
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router() -> Router {
        let yaml = r#"
- {host: "api.example.com", path_prefix: /v1/, upstream: a}
- {host: "*.example.com", upstream: b}
- {path_prefix: /static/, upstream: c}
- {upstream: d}
"#;
        let routes: Vec<config::Route> = serde_yaml::from_str(yaml).unwrap();
        Router::new(&routes, |n| (n.as_bytes()[0] - b'a') as usize)
    }

    #[test]
    fn first_match_wins() {
        let r = router();
        let up = |h, p| r.get(r.find(h, p).unwrap()).upstream;
        assert_eq!(up("api.example.com", "/v1/users"), 0);
        assert_eq!(up("API.Example.COM", "/v1/users"), 0);
        assert_eq!(up("api.example.com", "/v2/users"), 1);
        assert_eq!(up("www.example.com", "/static/x"), 1);
        assert_eq!(
            up("example.com", "/static/x"),
            2,
            "bare domain is not a subdomain"
        );
        assert_eq!(up("other.test", "/"), 3);
        assert_eq!(up("evilexample.com", "/"), 3);
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("example.com:8080"), "example.com");
        assert_eq!(strip_port("example.com"), "example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }
}
