//! What rules put into the cache key beyond host and path: the query as it is keyed (dropped,
//! kept, sorted or ignored parameters) and header and cookie values (variants without `Vary`).
//! The framing itself stays in [`crate::cache::key`].

use super::matcher::{cookie, Glob};
use crate::authority::Authority;
use crate::cache::key as cache_key;
use pingora::cache::CacheKey;
use pingora::http::RequestHeader;

/// How the query enters the key.
#[derive(Debug)]
pub enum QueryKey {
    /// Parameters sorted by name (stable), so their order does not split the cache.
    Sort,
    /// No query in the key at all.
    Ignore,
    /// Parameters whose name matches one of `names` dropped (or, with `keep`, only those kept).
    Filter {
        names: Vec<Glob>,
        keep: bool,
        sort: bool,
    },
}

/// The key's parts set by plugins; each is replaced by the later plugin that sets it.
///
/// The parts are `'static`: a plugin builds them once, when it is built (a `static`, a
/// `OnceLock`, or `Box::leak` at start-up, as YAML rules do), because setting one is then a
/// pointer copy. A shared `Arc` would put a reference count that every core writes on every
/// request into the hit path.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeySpec {
    pub query: Option<&'static QueryKey>,
    pub headers: Option<&'static [http::HeaderName]>,
    pub cookies: Option<&'static [String]>,
}

impl KeySpec {
    fn is_default(&self) -> bool {
        self.query.is_none() && self.headers.is_none() && self.cookies.is_none()
    }
}

/// The key for `req` under `spec`; `None` when nothing changes the default key.
pub fn cache_key(req: &RequestHeader, spec: &KeySpec) -> Option<CacheKey> {
    if spec.is_default() {
        return None;
    }
    let pq = cache_key::path_and_query(req);
    let keyed;
    let pq = match &spec.query {
        // Without a query every mode keys the path as it is: no copy.
        Some(q) if pq.contains(&b'?') => {
            keyed = query_key(pq, q);
            &keyed[..]
        }
        _ => pq,
    };
    // Framed on the stack: a key's header and cookie values are short.
    let mut variant = smallvec::SmallVec::<[u8; 256]>::new();
    let mut field = |name: &[u8], value: Option<&[u8]>| {
        variant.extend_from_slice(&(name.len() as u32).to_be_bytes());
        variant.extend_from_slice(name);
        // Absent and empty differ: u32::MAX marks absent.
        match value {
            Some(v) => {
                variant.extend_from_slice(&(v.len() as u32).to_be_bytes());
                variant.extend_from_slice(v);
            }
            None => variant.extend_from_slice(&u32::MAX.to_be_bytes()),
        }
    };
    for h in spec.headers.iter().flat_map(|h| h.iter()) {
        field(
            h.as_str().as_bytes(),
            req.headers.get(h).map(|v| v.as_bytes()),
        );
    }
    for c in spec.cookies.iter().flat_map(|c| c.iter()) {
        field(c.as_bytes(), cookie(req, c).map(str::as_bytes));
    }
    Some(cache_key::of_variant(&Authority::of(req), pq, &variant))
}

/// The path and query as keyed under `q`.
pub fn query_key(pq: &[u8], q: &QueryKey) -> Vec<u8> {
    let (path, query) = match pq.iter().position(|b| *b == b'?') {
        Some(i) => (&pq[..i], &pq[i + 1..]),
        None => (pq, &b""[..]),
    };
    let mut params: Vec<&[u8]> = match q {
        QueryKey::Ignore => Vec::new(),
        _ => query
            .split(|b| *b == b'&')
            .filter(|p| !p.is_empty())
            .collect(),
    };
    if let QueryKey::Filter { names, keep, .. } = q {
        params.retain(|p| {
            let hit = std::str::from_utf8(param_name(p))
                .is_ok_and(|n| names.iter().any(|g| g.matches(n)));
            hit == *keep
        });
    }
    if matches!(q, QueryKey::Sort | QueryKey::Filter { sort: true, .. }) {
        params.sort_by(|a, b| param_name(a).cmp(param_name(b)));
    }
    let mut out = path.to_vec();
    for (i, p) in params.iter().enumerate() {
        out.push(if i == 0 { b'?' } else { b'&' });
        out.extend_from_slice(p);
    }
    out
}

fn param_name(p: &[u8]) -> &[u8] {
    p.split(|b| *b == b'=').next().unwrap_or(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pq: &str, k: &QueryKey) -> String {
        String::from_utf8(query_key(pq.as_bytes(), k)).unwrap()
    }

    #[test]
    fn query_modes() {
        let drop = QueryKey::Filter {
            names: vec![Glob::value("utm_*").unwrap(), Glob::value("gclid").unwrap()],
            keep: false,
            sort: true,
        };
        assert_eq!(q("/a?utm_source=x&b=2&gclid=1&a=1", &drop), "/a?a=1&b=2");
        assert_eq!(q("/a?utm_source=x", &drop), "/a");
        assert_eq!(q("/a?b=1&a=2&b=0", &QueryKey::Sort), "/a?a=2&b=1&b=0");
        assert_eq!(q("/a?b=1", &QueryKey::Ignore), "/a");
        let keep = QueryKey::Filter {
            names: vec![Glob::value("page").unwrap()],
            keep: true,
            sort: false,
        };
        assert_eq!(q("/a?x=1&page=2", &keep), "/a?page=2");
    }

    #[test]
    fn headers_split_the_key_absent_differs_from_empty() {
        let spec = KeySpec {
            headers: Some(Box::leak(Box::new([http::HeaderName::from_static(
                "x-device",
            )]))),
            ..KeySpec::default()
        };
        let key = |v: Option<&str>| {
            let mut r = RequestHeader::build("GET", b"/p", None).unwrap();
            r.insert_header("Host", "h").unwrap();
            if let Some(v) = v {
                r.insert_header("X-Device", v).unwrap();
            }
            use pingora::cache::key::CacheHashKey;
            cache_key(&r, &spec).unwrap().primary()
        };
        assert_ne!(key(Some("mobile")), key(None));
        assert_ne!(key(Some("")), key(None));
        assert_eq!(key(Some("mobile")), key(Some("mobile")));
    }
}
