//! Which upstream group a request goes to: routes matched in config order on host and path
//! prefix, first match wins. The host is the normalised one of [`crate::authority`], the same
//! the cache key holds.

use crate::cache::CacheRule;
use crate::config;

pub struct Route {
    pub name: String,
    host: HostPattern,
    path_prefix: String,
    /// Index into the proxy's upstream groups.
    pub upstream: usize,
    /// What the cache does for this route's requests.
    pub cache: CacheRule,
}

/// A route's (or a rule's) host: `*`, an exact host or `*.example.com`.
pub enum HostPattern {
    Any,
    Exact(String),
    /// `*.example.com`, stored as `.example.com`: any subdomain, never the bare domain.
    Suffix(String),
}

impl HostPattern {
    pub fn parse(h: &str) -> HostPattern {
        match h {
            "*" => HostPattern::Any,
            h => match h.strip_prefix('*') {
                Some(suffix) => HostPattern::Suffix(suffix.to_ascii_lowercase()),
                None => HostPattern::Exact(h.to_ascii_lowercase()),
            },
        }
    }

    pub fn matches(&self, host: &str) -> bool {
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
                let host = HostPattern::parse(&r.host);
                Route {
                    name: r.label(),
                    host,
                    path_prefix: r.path_prefix.clone(),
                    upstream: upstream_index(&r.upstream),
                    cache: CacheRule::for_route(r),
                }
            })
            .collect();
        Router { routes }
    }

    /// `host` is the request's normalised host ([`crate::authority::Authority::host`]).
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
}
