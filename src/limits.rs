//! Request and response bounds (RFC 9110 §15.5.14/15/20, RFC 6585 §5) and request hygiene the
//! parser leaves to us. Pure checks over headers; the hooks turn a verdict into a status.

use crate::config::Limits;
use pingora::http::{RequestHeader, ResponseHeader};

/// The status to refuse `req` with, or `None` to let it through.
pub fn check_request(req: &RequestHeader, limits: &Limits) -> Option<u16> {
    if req.raw_path().len() as u64 > limits.max_request_target {
        return Some(414);
    }
    if req.headers.len() > limits.max_headers
        || header_bytes(&req.headers) > limits.max_header_bytes
    {
        return Some(431);
    }
    // RFC 9112 §3.2: an HTTP/1.1 request without Host (and not absolute-form) is a 400; without
    // it there is no authority to route or key on.
    let absolute_form = req.uri.authority().is_some() || req.raw_path().starts_with(b"http://");
    if req.version == http::Version::HTTP_11
        && !absolute_form
        && !req.headers.contains_key(http::header::HOST)
    {
        return Some(400);
    }
    // RFC 9112 §3.2: a Host that is not `uri-host [":" port]` is a 400. Junk after an IPv6
    // literal would otherwise be dropped from the cache key but still reach the origin.
    if let Some(host) = req.headers.get(http::header::HOST) {
        if !crate::authority::valid(host.as_bytes()) {
            return Some(400);
        }
    }
    if let Some(len) = content_length(req) {
        if len > limits.max_body {
            return Some(413);
        }
    }
    None
}

/// An origin response header over the limit is refused before anything is stored.
pub fn response_too_large(resp: &ResponseHeader, limits: &Limits) -> bool {
    header_bytes(&resp.headers) > limits.max_response_header_bytes
}

fn header_bytes(h: &http::HeaderMap) -> u64 {
    // name + ": " + value + CRLF, as on the wire.
    h.iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum()
}

/// The declared body length (the first of identical repeated values; Pingora has already
/// refused differing ones).
pub fn content_length(req: &RequestHeader) -> Option<u64> {
    parse_content_length(req.headers.get(http::header::CONTENT_LENGTH)?)
}

/// The one Content-Length parser: the first of a comma-separated list, `None` if not a number.
pub fn parse_content_length(v: &http::HeaderValue) -> Option<u64> {
    std::str::from_utf8(v.as_bytes())
        .ok()?
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Whether a Range header should be honoured: at most `max_ranges` ranges, none overlapping
/// (RFC 9110 §14.2: a server MAY ignore Range; many overlapping ranges are an amplification
/// attack). Unparseable headers are left to Pingora, which answers 416 or ignores them.
pub fn range_acceptable(range: &[u8], max_ranges: usize) -> bool {
    let Some(spec) = range.strip_prefix(b"bytes=") else {
        return true;
    };
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for part in spec.split(|b| *b == b',') {
        if spans.len() == max_ranges {
            return false;
        }
        let part = part.trim_ascii();
        let Some(dash) = part.iter().position(|b| *b == b'-') else {
            return true;
        };
        let num = |s: &[u8]| std::str::from_utf8(s).ok()?.parse::<u64>().ok();
        let (a, b) = (&part[..dash], &part[dash + 1..]);
        let span = match (num(a), num(b)) {
            (Some(a), Some(b)) => (a, b),
            (Some(a), None) if b.is_empty() => (a, u64::MAX),
            // Suffix ranges ("-500") count against the tail; treat as overlapping everything
            // after position 0 only when combined with others.
            (None, Some(n)) if a.is_empty() => (u64::MAX - n.min(u64::MAX - 1), u64::MAX),
            _ => return true,
        };
        if spans.iter().any(|s| span.0 <= s.1 && s.0 <= span.1) {
            return false;
        }
        spans.push(span);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn statuses_for_each_limit() {
        let l = limits();
        assert_eq!(check_request(&req("/ok", &[("Host", "a")]), &l), None);
        assert_eq!(
            check_request(
                &req(&format!("/{}", "a".repeat(9000)), &[("Host", "a")]),
                &l
            ),
            Some(414)
        );
        let big = "v".repeat(33 * 1024);
        assert_eq!(
            check_request(&req("/", &[("Host", "a"), ("X-Big", &big)]), &l),
            Some(431)
        );
        let many: Vec<(String, String)> =
            (0..101).map(|i| (format!("x-{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(check_request(&req("/", &many), &l), Some(431));
        assert_eq!(
            check_request(&req("/", &[]), &l),
            Some(400),
            "HTTP/1.1 without Host"
        );
        assert_eq!(
            check_request(&req("http://a/", &[]), &l),
            None,
            "absolute-form names its authority"
        );
        assert_eq!(
            check_request(
                &req("/", &[("Host", "a"), ("Content-Length", "2000000000")]),
                &l
            ),
            Some(413)
        );
    }

    #[test]
    fn host_must_be_an_authority() {
        for ok in [
            "t",
            "T.example",
            "t.example:80",
            "t.example.",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:80",
            "a_b-c~d%41",
            "",
        ] {
            assert!(crate::authority::valid(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "[::1]evil",
            "[::1",
            "[]",
            "[::1]:8o",
            "a b",
            "a@b",
            "a/b",
            "a:80:x",
            "a?b",
            "a#b",
            "caf\u{e9}",
        ] {
            assert!(!crate::authority::valid(bad.as_bytes()), "{bad}");
        }
        assert_eq!(
            check_request(&req("/", &[("Host", "[::1]evil")]), &limits()),
            Some(400)
        );
    }

    #[test]
    fn ranges_are_capped_and_must_not_overlap() {
        assert!(range_acceptable(b"bytes=0-99", 16));
        assert!(range_acceptable(b"bytes=0-9,20-29,-5", 16));
        assert!(!range_acceptable(b"bytes=0-9,5-20", 16));
        assert!(!range_acceptable(b"bytes=0-,10-20", 16));
        assert!(!range_acceptable(b"bytes=-5,-10", 16));
        let many: Vec<String> = (0..17)
            .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
            .collect();
        assert!(!range_acceptable(
            format!("bytes={}", many.join(",")).as_bytes(),
            16
        ));
        assert!(range_acceptable(
            format!("bytes={}", many[..16].join(",")).as_bytes(),
            16
        ));
    }
}
