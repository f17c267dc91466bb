//! Revalidation (RFC 9111 §4.3.4): freshening a stored response with the origin's 304.

use pingora::http::ResponseHeader;

/// §3.2: a 304 updates the stored header with every field it carries, except framing fields
/// (the stored body keeps its own length and coding). Pingora merges only a handful of fields;
/// this completes the merge. `Age` comes only from the 304: the old one described old bytes.
pub fn merge_304(stored: &ResponseHeader, r304: &ResponseHeader) -> ResponseHeader {
    let mut merged = stored.clone();
    merged.remove_header(&http::header::AGE);
    let keep = [
        http::header::CONTENT_LENGTH,
        http::header::TRANSFER_ENCODING,
        http::header::CONTENT_ENCODING,
        http::header::CONTENT_RANGE,
        http::header::VARY,
    ];
    let mut replaced: Vec<&http::header::HeaderName> = Vec::new();
    for (name, value) in r304.headers.iter() {
        if keep.contains(name) {
            continue;
        }
        if !replaced.contains(&name) {
            merged.remove_header(name);
            replaced.push(name);
        }
        let _ = merged.append_header(name.clone(), value.clone());
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_304_replaces_stored_fields_but_not_framing() {
        let mut stored = ResponseHeader::build(200, None).unwrap();
        for (k, v) in [
            ("Content-Length", "5"),
            ("ETag", "\"1\""),
            ("X-Version", "old"),
            ("Age", "100"),
            ("Cache-Control", "max-age=1"),
        ] {
            stored.insert_header(k, v).unwrap();
        }
        let mut r304 = ResponseHeader::build(304, None).unwrap();
        for (k, v) in [
            ("Content-Length", "0"),
            ("ETag", "\"2\""),
            ("X-Version", "new"),
            ("Cache-Control", "max-age=60"),
        ] {
            r304.insert_header(k, v).unwrap();
        }
        let m = merge_304(&stored, &r304);
        assert_eq!(m.status, 200);
        assert_eq!(m.headers["content-length"], "5");
        assert_eq!(m.headers["etag"], "\"2\"");
        assert_eq!(m.headers["x-version"], "new");
        assert_eq!(m.headers["cache-control"], "max-age=60");
        assert!(m.headers.get("age").is_none());
    }
}
