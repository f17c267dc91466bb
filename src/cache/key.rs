//! The cache key: scheme, normalized host and the path and query of the request target.
//!
//! Host normalization ([`crate::authority`]): lower case, a trailing dot dropped, the default
//! port (80) dropped. The path was put in normal form by [`crate::path`] before routing, so the
//! key path is byte-identical to the path routed and forwarded to the origin; nothing here
//! decodes again (`%2F` never reaches this point: it is a 400).

use crate::authority::Authority;
use pingora::cache::CacheKey;
use pingora::http::RequestHeader;

/// The cache key for a request; variants (Vary) are added later by Pingora.
pub fn for_request(req: &RequestHeader) -> CacheKey {
    of(&Authority::of(req), path_and_query(req))
}

/// The key for `path_and_query` on `authority` (a Host value, possibly with port).
pub fn build(authority: &str, path_and_query: &[u8]) -> CacheKey {
    of(&Authority::parse(authority), path_and_query)
}

/// The key for `path_and_query` on a normalised authority: the same normal form routing
/// matches on, so a response is only ever stored where its own route looks it up.
pub fn of(authority: &Authority, path_and_query: &[u8]) -> CacheKey {
    of_variant(authority, path_and_query, b"")
}

/// As [`of`], with `variant` (framed by the caller: a rule's header and cookie values) as one
/// more field; an empty variant is the plain key.
pub fn of_variant(authority: &Authority, path_and_query: &[u8], variant: &[u8]) -> CacheKey {
    let (host, port) = (authority.host(), authority.port());
    // Length-prefixed fields: no two different (host, path) pairs frame to the same bytes.
    let mut primary =
        Vec::with_capacity(20 + host.len() + port.len() + path_and_query.len() + variant.len());
    let parts = [
        b"http".as_slice(),
        host.as_bytes(),
        port.as_bytes(),
        path_and_query,
        variant,
    ];
    for part in &parts[..if variant.is_empty() { 4 } else { 5 }] {
        primary.extend_from_slice(&(part.len() as u32).to_be_bytes());
        primary.extend_from_slice(part);
    }
    CacheKey::new(primary, "")
}

/// The request target's path and query as received: origin-form as is, absolute-form from the
/// first `/` after the authority (RFC 9112 §3.2.2), `*` as is.
pub fn path_and_query(req: &RequestHeader) -> &[u8] {
    let raw = req.raw_path();
    if raw.first() == Some(&b'/') || raw == b"*" {
        return raw;
    }
    let after_scheme = raw
        .windows(3)
        .position(|w| w == b"://")
        .map_or(0, |i| i + 3);
    match raw[after_scheme..]
        .iter()
        .position(|b| *b == b'/' || *b == b'?')
    {
        Some(i) if raw[after_scheme + i] == b'/' => &raw[after_scheme + i..],
        Some(_) | None => b"/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::cache::key::CacheHashKey;

    fn k(authority: &str, path: &str) -> String {
        build(authority, path.as_bytes()).primary()
    }

    #[test]
    fn host_spellings_that_mean_the_same_share_a_key() {
        assert_eq!(k("Example.COM", "/a"), k("example.com", "/a"));
        assert_eq!(k("example.com:80", "/a"), k("example.com", "/a"));
        assert_eq!(k("example.com.", "/a"), k("example.com", "/a"));
        assert_eq!(k("[::1]:80", "/a"), k("[::1]", "/a"));
    }

    #[test]
    fn different_resources_never_share_a_key() {
        assert_ne!(k("a.test", "/x"), k("b.test", "/x"));
        assert_ne!(k("a.test:8080", "/x"), k("a.test", "/x"));
        assert_ne!(k("a.test", "/x?1"), k("a.test", "/x?2"));
        assert_ne!(k("a.test", "/x%2Fy"), k("a.test", "/x/y"));
        assert_ne!(
            k("a.test", "/X"),
            k("a.test", "/x"),
            "paths are case-sensitive"
        );
        // Framing: moving bytes between host and path changes the key.
        assert_ne!(k("a.tes", "t/x"), k("a.test", "/x"));
    }

    #[test]
    fn absolute_form_uses_its_path() {
        let r = RequestHeader::build("GET", b"http://Example.com/p?q=1", None).unwrap();
        assert_eq!(path_and_query(&r), b"/p?q=1");
        let r = RequestHeader::build("GET", b"http://example.com", None).unwrap();
        assert_eq!(path_and_query(&r), b"/");
        let r = RequestHeader::build("GET", b"/p?q=1", None).unwrap();
        assert_eq!(path_and_query(&r), b"/p?q=1");
    }
}
