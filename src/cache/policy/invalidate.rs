//! Invalidation by unsafe methods (RFC 9111 §4.4): which responses invalidate, and which
//! URIs they invalidate.

/// §4.4: whether a response invalidates stored responses for the target URI: a non-error
/// answer to one of `on` (`cache.invalidate_on`). The comparison is exact: methods are
/// case-sensitive (RFC 9110 §9.1), so `post` and unknown extension methods, which anyone can
/// send and an origin may answer 200, invalidate nothing unless listed.
pub fn invalidates(method: &http::Method, status: u16, on: &[http::Method]) -> bool {
    on.contains(method) && (200..400).contains(&status)
}

/// The path of a `Location`/`Content-Location` value if it points at the same origin: a
/// relative reference, or an absolute `http` URI with the same authority. §4.4 forbids
/// invalidating other origins' URIs (that would be a denial-of-service tool).
pub fn same_origin_path<'a>(value: &'a [u8], authority: &str) -> Option<&'a [u8]> {
    if value.first() == Some(&b'/') && value.get(1) != Some(&b'/') {
        return Some(value);
    }
    let rest = value.strip_prefix(b"http://")?;
    let end = rest.iter().position(|b| *b == b'/').unwrap_or(rest.len());
    rest[..end]
        .eq_ignore_ascii_case(authority.as_bytes())
        .then(|| {
            if end == rest.len() {
                b"/".as_slice()
            } else {
                &rest[end..]
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_same_origin_locations_are_invalidated() {
        assert_eq!(
            same_origin_path(b"/a?b", "h.test"),
            Some(b"/a?b".as_slice())
        );
        assert_eq!(
            same_origin_path(b"http://H.test/x", "h.test"),
            Some(b"/x".as_slice())
        );
        assert_eq!(
            same_origin_path(b"http://h.test", "h.test"),
            Some(b"/".as_slice())
        );
        assert_eq!(same_origin_path(b"http://evil.test/x", "h.test"), None);
        assert_eq!(same_origin_path(b"//evil.test/x", "h.test"), None);
        assert_eq!(same_origin_path(b"https://h.test/x", "h.test"), None);
    }
}
