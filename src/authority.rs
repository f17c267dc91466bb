//! The authority a request names (RFC 9110 §4.2.3, RFC 9112 §3.2.2): one parser, one validator
//! and one normal form. Routing, the cache key, limits, upstream selection, the access log and
//! the mirror all read the host through here, so no two of them can disagree on what a spelling
//! such as `Example.COM.:80` means (a disagreement between routing and the key is how one route's
//! response ends up stored under another route's key).

use pingora::http::RequestHeader;
use std::borrow::Cow;

/// The authority as received: the absolute-form target's if present (it wins over Host, RFC
/// 9112 §3.2.2), else the Host header; empty when neither exists. Userinfo is never part of it.
pub fn raw(req: &RequestHeader) -> &str {
    match req.uri.authority() {
        Some(a) => a.as_str().rsplit('@').next().unwrap_or(""),
        None => req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    }
}

/// RFC 9112 §3.2.2: for an absolute-form target the server replaces Host with the target's
/// authority. Pingora already refuses a Host that differs from it; this covers a request with
/// no Host (HTTP/1.0, or HTTP/1.1 absolute-form), which would otherwise route and key on an
/// empty host while the origin is sent the target's. Done once before routing, so the route,
/// the key and the origin read the same host. `Err` when the target's authority is not a valid
/// `host[:port]` (a 400).
pub fn adopt_target(req: &mut RequestHeader) -> Result<(), InvalidTarget> {
    use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
    let authority = match raw_target_authority(req.raw_path()) {
        RawTargetAuthority::Absolute { authority, .. } => authority,
        _ => return Ok(()),
    };
    // Userinfo is never part of the authority a request names (RFC 9110 §4.2.4).
    let host = authority.rsplit(|b| *b == b'@').next().unwrap_or(authority);
    if host.is_empty() || !valid(host) {
        return Err(InvalidTarget);
    }
    if req.headers.get(http::header::HOST).map(|h| h.as_bytes()) == Some(host) {
        return Ok(());
    }
    let host = http::HeaderValue::from_bytes(host).map_err(|_| InvalidTarget)?;
    req.insert_header(http::header::HOST, host)
        .map_err(|_| InvalidTarget)
}

/// An absolute-form target whose authority is not a valid `host[:port]`.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidTarget;

/// `(host, port)` of an authority; `port` is empty when absent. An IPv6 literal keeps its
/// brackets. A trailing `:` with no digits counts as no port (RFC 3986 §3.2.3 allows it).
pub fn split(authority: &str) -> (&str, &str) {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(i) => (
                &authority[..=i],
                authority[i + 1..].strip_prefix(':').unwrap_or(""),
            ),
            None => (authority, ""),
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, p),
        _ => (authority, ""),
    }
}

/// Whether `host` is `uri-host [":" port]` (RFC 3986 §3.2.2): an IP literal in brackets or a
/// reg-name (unreserved, pct-encoded and sub-delim characters; IPv4 addresses are reg-names
/// syntactically), then optionally a colon and digits. Empty is allowed (RFC 9112 §3.2 permits
/// an empty Host when the target has no authority).
pub fn valid(host: &[u8]) -> bool {
    let (name, port) = if host.first() == Some(&b'[') {
        let Some(end) = host.iter().position(|b| *b == b']') else {
            return false;
        };
        let literal = &host[1..end];
        if literal.is_empty()
            || !literal
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b":.-_~!$&'()*+,;=".contains(b))
        {
            return false;
        }
        match &host[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (&[][..], port),
            _ => return false,
        }
    } else {
        match host.iter().rposition(|b| *b == b':') {
            Some(i) => (&host[..i], &host[i + 1..]),
            None => (host, &[][..]),
        }
    };
    let reg_name = |b: &u8| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(b);
    name.iter().all(reg_name) && port.iter().all(u8::is_ascii_digit)
}

/// An authority in normal form: host in lower case without a trailing dot, and the port only
/// when it is not the default (80). Two spellings that name the same origin are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority<'a> {
    host: Cow<'a, str>,
    port: &'a str,
}

impl<'a> Authority<'a> {
    /// The normal form of `req`'s authority.
    pub fn of(req: &'a RequestHeader) -> Authority<'a> {
        Authority::parse(raw(req))
    }

    /// The normal form of an authority string (a Host value, possibly with port).
    pub fn parse(authority: &'a str) -> Authority<'a> {
        let (host, port) = split(authority);
        let host = host.strip_suffix('.').unwrap_or(host);
        let port = if port == "80" { "" } else { port };
        // Most clients send lower case: allocate only for the rest.
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(host.to_ascii_lowercase())
        } else {
            Cow::Borrowed(host)
        };
        Authority { host, port }
    }

    /// The host, normalised: what routes match and what the key holds.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port digits when not the default, else empty.
    pub fn port(&self) -> &str {
        self.port
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_of_one_origin_are_equal() {
        let a = Authority::parse("example.com");
        for s in [
            "Example.COM",
            "example.com.",
            "EXAMPLE.com.:80",
            "example.com:",
        ] {
            assert_eq!(Authority::parse(s), a, "{s}");
        }
        assert_eq!(Authority::parse("[::1]:80"), Authority::parse("[::1]"));
        assert_ne!(Authority::parse("example.com:8080"), a);
        assert_eq!(Authority::parse("example.com:8080").port(), "8080");
    }

    #[test]
    fn split_keeps_ipv6_brackets() {
        assert_eq!(split("example.com:8080"), ("example.com", "8080"));
        assert_eq!(split("example.com"), ("example.com", ""));
        assert_eq!(split("[::1]:80"), ("[::1]", "80"));
        assert_eq!(split("[::1]"), ("[::1]", ""));
    }

    #[test]
    fn absolute_form_wins_and_userinfo_is_dropped() {
        let mut r = RequestHeader::build("GET", b"/x", None).unwrap();
        r.set_uri("http://u:p@A.test:81/x".parse().unwrap());
        r.insert_header("Host", "b.test").unwrap();
        assert_eq!(raw(&r), "A.test:81");
        assert_eq!(Authority::of(&r).host(), "a.test");
    }

    #[test]
    fn absolute_form_replaces_host() {
        let mut r = RequestHeader::build("GET", b"http://u@A.test:81/x", None).unwrap();
        assert_eq!(Authority::of(&r).host(), "", "no Host yet");
        adopt_target(&mut r).unwrap();
        assert_eq!(r.headers["host"], "A.test:81");
        assert_eq!(Authority::of(&r).host(), "a.test");
        let mut r = RequestHeader::build("GET", b"http://a.test/x", None).unwrap();
        r.insert_header("Host", "b.test").unwrap();
        adopt_target(&mut r).unwrap();
        assert_eq!(r.headers["host"], "a.test", "the target wins over Host");
        let mut r = RequestHeader::build("GET", b"/x", None).unwrap();
        r.insert_header("Host", "b.test").unwrap();
        adopt_target(&mut r).unwrap();
        assert_eq!(r.headers["host"], "b.test", "origin-form keeps its Host");
    }

    #[test]
    fn validity() {
        for ok in [
            "example.com",
            "example.com:8080",
            "[::1]",
            "[::1]:80",
            "",
            "a_b.test",
        ] {
            assert!(valid(ok.as_bytes()), "{ok}");
        }
        for bad in ["exa mple.com", "[::1]x", "[::1", "a.test:8x", "a/b", "[]"] {
            assert!(!valid(bad.as_bytes()), "{bad}");
        }
    }
}
