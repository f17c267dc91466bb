//! A typed builder for the YAML a test starts Shellac with: upstreams, routes and cache tiers as
//! values, serialised by serde_yaml (so quoting and nesting are never spliced by hand). Keys a
//! test needs beyond these go in with [`TestConfig::set`], by key path, still typed.

use serde_yaml::{Mapping, Value};
use std::net::SocketAddr;

/// One route: a catch-all to `upstream` unless host or prefix are set.
#[derive(Clone, Debug)]
pub struct Route {
    pub name: Option<String>,
    pub host: String,
    pub path_prefix: String,
    pub upstream: String,
    pub cache: bool,
    /// More keys of the route (`stale_if_error`, `mirror`…).
    pub extra: Mapping,
}

impl Route {
    pub fn to(upstream: &str) -> Route {
        Route {
            name: None,
            host: "*".into(),
            path_prefix: "/".into(),
            upstream: upstream.into(),
            cache: false,
            extra: Mapping::new(),
        }
    }

    pub fn cached(mut self) -> Route {
        self.cache = true;
        self
    }

    pub fn prefix(mut self, p: &str) -> Route {
        self.path_prefix = p.into();
        self
    }

    pub fn host(mut self, h: &str) -> Route {
        self.host = h.into();
        self
    }

    pub fn named(mut self, n: &str) -> Route {
        self.name = Some(n.into());
        self
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Route {
        self.extra.insert(key.into(), value.into());
        self
    }
}

#[derive(Clone, Debug, Default)]
pub struct TestConfig {
    upstreams: Vec<(String, Vec<SocketAddr>)>,
    routes: Vec<Route>,
    rest: Mapping,
}

impl TestConfig {
    pub fn new() -> TestConfig {
        TestConfig::default()
    }

    /// An upstream group over these backends.
    pub fn upstream(mut self, name: &str, backends: &[SocketAddr]) -> TestConfig {
        self.upstreams.push((name.into(), backends.to_vec()));
        self
    }

    pub fn route(mut self, r: Route) -> TestConfig {
        self.routes.push(r);
        self
    }

    /// The memory tier only, of `size` ("64MiB"; "0" turns it off).
    pub fn memory(self, size: &str) -> TestConfig {
        self.set("cache.memory.size", size)
    }

    /// memcached as L2 over `servers`, in key `namespace`.
    pub fn memcached(self, servers: &[SocketAddr], namespace: &str) -> TestConfig {
        let list: Vec<Value> = servers.iter().map(|s| s.to_string().into()).collect();
        self.set("cache.memcached.servers", Value::Sequence(list))
            .set("cache.memcached.namespace", namespace)
    }

    /// Any key by dotted path (`limits.max_body`, `cache.stale_on_disconnect`).
    pub fn set(mut self, path: &str, value: impl Into<Value>) -> TestConfig {
        let mut at = &mut self.rest;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                at.insert(part.into(), value.into());
                break;
            }
            let next = at
                .entry(part.into())
                .or_insert_with(|| Value::Mapping(Mapping::new()));
            at = next.as_mapping_mut().expect("a section, not a value");
        }
        self
    }

    /// The YAML body for [`super::Shellac::start`] (it adds listeners, admin and pingora).
    pub fn yaml(&self) -> String {
        let mut root = self.rest.clone();
        let mut ups = Mapping::new();
        for (name, backends) in &self.upstreams {
            let list: Vec<Value> = backends.iter().map(|b| b.to_string().into()).collect();
            let mut u = Mapping::new();
            u.insert("backends".into(), Value::Sequence(list));
            ups.insert(name.as_str().into(), Value::Mapping(u));
        }
        root.insert("upstreams".into(), Value::Mapping(ups));
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut m = Mapping::new();
                if let Some(n) = &r.name {
                    m.insert("name".into(), n.as_str().into());
                }
                m.insert("host".into(), r.host.as_str().into());
                m.insert("path_prefix".into(), r.path_prefix.as_str().into());
                m.insert("upstream".into(), r.upstream.as_str().into());
                m.insert("cache".into(), r.cache.into());
                for (k, v) in &r.extra {
                    m.insert(k.clone(), v.clone());
                }
                Value::Mapping(m)
            })
            .collect();
        root.insert("routes".into(), Value::Sequence(routes));
        serde_yaml::to_string(&Value::Mapping(root)).expect("a YAML mapping serialises")
    }
}
