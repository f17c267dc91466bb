//! Targeted cache control (RFC 9213): a field such as `CDN-Cache-Control` that speaks only to
//! caches like this one. When one of the configured fields is present and valid it replaces
//! `Cache-Control` for this cache's storage and freshness decisions; `Cache-Control` itself is
//! still sent downstream unchanged, for browsers.

use pingora::cache::cache_control::CacheControl;
use pingora::http::ResponseHeader;

/// The directives that govern this cache for `resp`: the first configured targeted field that
/// is present and valid, else `Cache-Control`.
pub fn response_cc(resp: &ResponseHeader, targeted: &[http::HeaderName]) -> Option<CacheControl> {
    for name in targeted {
        let mut lines = resp.headers.get_all(name).iter().peekable();
        if lines.peek().is_none() {
            continue;
        }
        // §2.1: an invalid field is ignored as a whole, as if absent.
        if lines.all(|v| valid_dictionary(v.as_bytes())) {
            if let Some(cc) = CacheControl::from_headers_named(name.as_str(), &resp.headers) {
                return Some(cc);
            }
        }
    }
    CacheControl::from_resp_headers(resp)
}

/// Whether `v` parses as an RFC 8941 Dictionary of the shapes cache directives take: members
/// `key` or `key=value`, where key is `lcalpha *( lcalpha / DIGIT / "_" / "-" / "." / "*" )`
/// and value an integer, a token or a quoted string; parameters (`;x=y`) are accepted. The
/// delta-seconds directives must be Integers (RFC 9213 §2.1): `max-age="60"` or `max-age=1.5`
/// is a wrongly typed member, and so an invalid field.
pub fn valid_dictionary(v: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(v) else {
        return false;
    };
    if s.trim().is_empty() {
        return false;
    }
    split_members(s).all(|m| {
        let m = m.trim_matches(|c| c == ' ' || c == '\t');
        let mut parts = m.split(';');
        let Some(head) = parts.next() else {
            return false;
        };
        member(head) && parts.all(|p| member(p.trim_start_matches(' ')))
    })
}

/// Commas outside quoted strings.
fn split_members(s: &str) -> impl Iterator<Item = &str> {
    let mut in_quotes = false;
    let mut start = 0;
    let mut out = Vec::new();
    let bytes = s.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'"' if i == 0 || bytes[i - 1] != b'\\' => in_quotes = !in_quotes,
            b',' if !in_quotes => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter()
}

fn member(m: &str) -> bool {
    let (key, value) = match m.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (m, None),
    };
    let mut kb = key.bytes();
    let key_ok = kb
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
        && kb.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b));
    let typed = match value {
        Some(v) if DELTA_SECONDS.contains(&key) => integer(v),
        _ => true,
    };
    key_ok && typed && value.is_none_or(valid_value)
}

/// Directives whose value is delta-seconds (RFC 9111 §1.2.2), an Integer in a targeted field.
const DELTA_SECONDS: [&str; 4] = [
    "max-age",
    "s-maxage",
    "stale-while-revalidate",
    "stale-if-error",
];

/// An RFC 8941 §3.3.1 Integer: an optional `-` and 1 to 15 digits.
fn integer(v: &str) -> bool {
    let digits = v.strip_prefix('-').unwrap_or(v);
    (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

fn valid_value(v: &str) -> bool {
    let b = v.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b[0] == b'"' {
        return b.len() >= 2 && b[b.len() - 1] == b'"';
    }
    if b[0] == b'-' || b[0].is_ascii_digit() {
        return b[1..].iter().all(|c| c.is_ascii_digit() || *c == b'.');
    }
    (b[0].is_ascii_alphabetic() || b[0] == b'*')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionaries() {
        for ok in [
            "max-age=60",
            "max-age=60, stale-if-error=300",
            "no-store",
            "private, x-ext=\"a, b\"",
            "s-maxage=10;x",
        ] {
            assert!(valid_dictionary(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "Max-Age=60",
            "max-age=",
            "",
            "max-age=60,,",
            "=5",
            "max age=1",
            "max-age=\"60\"",
            "max-age=1.5",
            "s-maxage=x",
            "stale-if-error=9999999999999999",
        ] {
            assert!(!valid_dictionary(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn first_valid_targeted_field_wins() {
        let names: Vec<http::HeaderName> = vec![
            "shellac-cache-control".parse().unwrap(),
            "cdn-cache-control".parse().unwrap(),
        ];
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("Cache-Control", "no-store").unwrap();
        r.insert_header("CDN-Cache-Control", "max-age=60").unwrap();
        let cc = response_cc(&r, &names).unwrap();
        assert!(!cc.no_store());
        assert_eq!(cc.max_age().unwrap(), Some(60));
        r.insert_header("Shellac-Cache-Control", "max-age=5")
            .unwrap();
        assert_eq!(response_cc(&r, &names).unwrap().max_age().unwrap(), Some(5));
        // An invalid targeted field is ignored as a whole.
        r.insert_header("Shellac-Cache-Control", "Max-Age=5")
            .unwrap();
        assert_eq!(
            response_cc(&r, &names).unwrap().max_age().unwrap(),
            Some(60)
        );
        r.remove_header("CDN-Cache-Control");
        assert!(response_cc(&r, &names).unwrap().no_store());
        assert!(response_cc(&r, &[]).unwrap().no_store());
    }
}
