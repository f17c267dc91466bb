//! Conditional requests answered from a stored response (RFC 9110 §13, RFC 9111 §4.3.2).

use super::header_date;
use pingora::http::{RequestHeader, ResponseHeader};

/// Whether a stored (or just received) 200 answers `req`'s preconditions with 304.
/// If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2). For If-Modified-Since,
/// §4.3.2 has the cache compare with Last-Modified, or, without one, with the response's Date
/// (the time it was generated): a response that was current at its Date has not been modified
/// since a later time.
pub fn not_modified(req: &RequestHeader, resp: &ResponseHeader) -> bool {
    if resp.status != http::StatusCode::OK {
        return false;
    }
    if req.headers.contains_key(http::header::IF_NONE_MATCH) {
        // Pingora's weak comparison (§13.1.2) for the ETag case.
        return pingora::protocols::http::conditional_filter::not_modified_filter(req, resp);
    }
    if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
        return false;
    }
    let Some(since) = req
        .headers
        .get(http::header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(super::parse_http_date)
    else {
        return false;
    };
    let modified = header_date(resp, http::header::LAST_MODIFIED)
        .or_else(|| header_date(resp, http::header::DATE));
    modified.is_some_and(|m| since >= m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(h: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in h {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn ims_uses_last_modified_then_date() {
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("Date", "Sun, 06 Nov 1994 08:49:37 GMT")
            .unwrap();
        let later = [("If-Modified-Since", "Mon, 07 Nov 1994 08:49:37 GMT")];
        let earlier = [("If-Modified-Since", "Sat, 05 Nov 1994 08:49:37 GMT")];
        assert!(not_modified(&req(&later), &resp));
        assert!(!not_modified(&req(&earlier), &resp));
        resp.insert_header("Last-Modified", "Mon, 07 Nov 1994 09:00:00 GMT")
            .unwrap();
        assert!(!not_modified(&req(&later), &resp));
        resp.insert_header("ETag", "\"a\"").unwrap();
        let inm = [("If-None-Match", "\"b\""), later[0]];
        assert!(!not_modified(&req(&inm), &resp), "INM wins over IMS");
        assert!(not_modified(&req(&[("If-None-Match", "W/\"a\"")]), &resp));
    }
}
