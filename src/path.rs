//! The request path in normal form (RFC 3986 §6.2.2), computed once before routing so that
//! routing, the cache key and the request forwarded to the origin all see the same bytes. If
//! they disagreed, `/%61pi/`, `//api/` or `/x/../api/` would miss an `/api/` route (and its
//! limits and upstream) while the origin still served `/api/`.
//!
//! Normal form: percent-encoded unreserved characters decoded and the hex digits of the rest in
//! upper case (§6.2.2.1, §6.2.2.2), repeated slashes merged, dot-segments removed (§6.2.2.3,
//! after decoding, so `%2E%2E` is a dot-segment too). The query is kept byte for byte: its
//! meaning is the origin's. A path that encodes `/` or NUL, or has a malformed escape, is
//! refused: an origin that decodes it would see a different path than the one routed.

use pingora::http::authority::{raw_target_authority, RawTargetAuthority};
use pingora::http::RequestHeader;

/// Why a path cannot be normalised: the request is a 400.
#[derive(Debug, PartialEq, Eq)]
pub enum Invalid {
    /// `%2F` or `%00`: decoding it would change the path's structure or end it early.
    EncodedSeparator,
    /// `%` not followed by two hex digits (RFC 3986 §2.1).
    MalformedEscape,
    /// The normal form is not a request target the URI type accepts.
    Unrepresentable,
}

/// Rewrites `req`'s target to its normal form; leaves it untouched when it already is one.
/// An absolute-form target keeps its scheme and authority bytes (Pingora reconciles them with
/// Host on the way out), and is split by Pingora's own classifier so the path normalised here
/// is the one Pingora forwards.
pub fn normalise_request(req: &mut RequestHeader) -> Result<(), Invalid> {
    let raw = req.raw_path();
    if raw == b"*" {
        return Ok(());
    }
    let (prefix, target) = match raw_target_authority(raw) {
        RawTargetAuthority::Absolute { path_and_query, .. } => {
            (&raw[..raw.len() - path_and_query.len()], path_and_query)
        }
        _ => (&b""[..], raw),
    };
    let Some(normal) = normalise(target)? else {
        return Ok(());
    };
    let mut full = prefix.to_vec();
    full.extend_from_slice(&normal);
    req.set_raw_path(&full)
        .map_err(|_| Invalid::Unrepresentable)
}

/// The normal form of an origin-form `path[?query]`, or `None` when it already is one.
pub fn normalise(target: &[u8]) -> Result<Option<Vec<u8>>, Invalid> {
    let split = target
        .iter()
        .position(|b| *b == b'?')
        .unwrap_or(target.len());
    let (path, query) = target.split_at(split);
    if is_normal(path) {
        return Ok(None);
    }
    let decoded = decode_unreserved(path)?;
    let mut out = remove_dot_segments(&decoded);
    out.extend_from_slice(query);
    Ok((out != target).then_some(out))
}

/// The common case, checked without allocating: no escape, no empty or dot segment (an empty
/// last segment, `/a/`, is a trailing slash and normal).
fn is_normal(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') || path.contains(&b'%') {
        return false;
    }
    let mut segs = path[1..].split(|b| *b == b'/').peekable();
    while let Some(seg) = segs.next() {
        let last = segs.peek().is_none();
        if seg == b"." || seg == b".." || (seg.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// §6.2.2.2: decode `%XX` where it names an unreserved character; upper-case the rest.
fn decode_unreserved(path: &[u8]) -> Result<Vec<u8>, Invalid> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        if path[i] != b'%' {
            out.push(path[i]);
            i += 1;
            continue;
        }
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        let (Some(hi), Some(lo)) = (hex(path.get(i + 1)), hex(path.get(i + 2))) else {
            return Err(Invalid::MalformedEscape);
        };
        let byte = (hi * 16 + lo) as u8;
        match byte {
            b'/' | 0 => return Err(Invalid::EncodedSeparator),
            b if b.is_ascii_alphanumeric() || b"-._~".contains(&b) => out.push(b),
            _ => out.extend_from_slice(format!("%{byte:02X}").as_bytes()),
        }
        i += 3;
    }
    Ok(out)
}

/// §5.2.4 on a path whose empty segments are merged first (so `/a//../b` is `/b`, the same as
/// `/a/../b`). The result starts with `/`; a trailing slash, `.` or `..` leaves a trailing `/`.
fn remove_dot_segments(path: &[u8]) -> Vec<u8> {
    let rest = path.strip_prefix(b"/").unwrap_or(path);
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for seg in rest.split(|b| *b == b'/') {
        trailing_slash = true;
        match seg {
            b"" | b"." => {}
            b".." => {
                kept.pop();
            }
            s => {
                kept.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for seg in &kept {
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    if trailing_slash || kept.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        match normalise(p.as_bytes()).unwrap() {
            Some(v) => String::from_utf8(v).unwrap(),
            None => p.to_string(),
        }
    }

    #[test]
    fn spellings_of_one_path_are_equal() {
        for s in [
            "/api/",
            "/%61pi/",
            "//api/",
            "/./api/",
            "/x/../api/",
            "/api/.",
            "/%2E/api/",
            "/x/%2e%2e/api/",
            "/../api/",
            "/api//",
            "///api/./",
        ] {
            assert_eq!(n(s), "/api/", "{s}");
        }
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/b/../c"), "/a/c");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/"), "/");
        assert_eq!(n("/a"), "/a");
        assert_eq!(
            n("/a.b/..c/.d"),
            "/a.b/..c/.d",
            "dots inside names are names"
        );
    }

    #[test]
    fn already_normal_paths_are_not_rewritten() {
        for s in ["/", "/a", "/a/", "/a/b.c", "/a?x=//..&y=%2F", "/..a/b.."] {
            assert_eq!(normalise(s.as_bytes()), Ok(None), "{s}");
        }
    }

    #[test]
    fn reserved_escapes_stay_encoded_in_upper_case_and_the_query_is_kept() {
        assert_eq!(n("/a%3ab"), "/a%3Ab");
        assert_eq!(n("/a%3Ab"), "/a%3Ab");
        assert_eq!(n("/a%20b"), "/a%20b");
        assert_eq!(n("//a?q=//%61&r=."), "/a?q=//%61&r=.");
        assert_eq!(n("/%7euser"), "/~user");
    }

    #[test]
    fn encoded_slash_nul_and_bad_escapes_are_refused() {
        assert_eq!(normalise(b"/a%2Fb"), Err(Invalid::EncodedSeparator));
        assert_eq!(normalise(b"/a%2fb"), Err(Invalid::EncodedSeparator));
        assert_eq!(normalise(b"/a%00"), Err(Invalid::EncodedSeparator));
        assert_eq!(normalise(b"/a%zz"), Err(Invalid::MalformedEscape));
        assert_eq!(normalise(b"/a%4"), Err(Invalid::MalformedEscape));
        // In the query they are the origin's business.
        assert_eq!(normalise(b"/a?x=%2F%00"), Ok(None));
    }

    #[test]
    fn absolute_form_keeps_its_authority() {
        let mut r = RequestHeader::build("GET", b"http://A.test:81//x/../%61?q", None).unwrap();
        normalise_request(&mut r).unwrap();
        assert_eq!(r.raw_path(), b"http://A.test:81/a?q");
        assert_eq!(r.uri.path(), "/a");
        assert_eq!(crate::cache::key::path_and_query(&r), b"/a?q");
        let mut r = RequestHeader::build("GET", b"/x/./y", None).unwrap();
        normalise_request(&mut r).unwrap();
        assert_eq!(r.uri.path(), "/x/y");
        assert_eq!(r.raw_path(), b"/x/y");
    }
}
