//! The copy staging receives, built from the client's request header.

use crate::upstream::Group;
use pingora::http::RequestHeader;

pub(super) fn declared_length(req: &RequestHeader) -> Option<u64> {
    let v = req.headers.get(http::header::CONTENT_LENGTH)?;
    std::str::from_utf8(v.as_bytes())
        .ok()?
        .split(',')
        .next()?
        .trim()
        .parse()
        .ok()
}

pub(super) fn select(group: &Group, req: &RequestHeader) -> Option<pingora::lb::Backend> {
    if !group.consistent {
        return group.select(b"", |_| false);
    }
    let host = crate::route::request_host(req).as_bytes();
    let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut key = Vec::with_capacity(host.len() + pq.len());
    key.extend_from_slice(host);
    key.extend_from_slice(pq.as_bytes());
    group.select(&key, |_| false)
}

/// Request fields that describe the client's connection to Shellac, not the message. Pingora
/// strips these on the production path; the mirror uses a raw connector, so it strips them here.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    // The body is sent at once; staging must not wait for a 100 Continue nobody reads.
    "expect",
];

/// What staging receives: the request as production's origin would (hop-by-hop fields gone,
/// X-Forwarded-*, Via, X-Request-Id, unkeyed fields stripped, see `forward`), marked as a copy.
pub(super) fn staging_request(
    req: &RequestHeader,
    client: Option<std::net::IpAddr>,
    request_id: &str,
) -> pingora::Result<RequestHeader> {
    let mut fwd = req.clone();
    let nominated: Vec<http::HeaderName> = req
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| http::HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect();
    for name in nominated {
        // As on the production path: a client cannot make us drop the host, framing or
        // forwarding fields by naming them in Connection.
        let protected = name == http::header::HOST
            || name == http::header::CONTENT_LENGTH
            || name == http::header::TRANSFER_ENCODING
            || name.as_str().starts_with("x-forwarded-");
        if !protected {
            fwd.remove_header(&name);
        }
    }
    for name in HOP_BY_HOP {
        fwd.remove_header(name);
    }
    crate::forward::upstream_request(&mut fwd, client)?;
    crate::request_id::forward(&mut fwd, request_id)?;
    fwd.insert_header("x-shellac-mirror", "1")?;
    Ok(fwd)
}

/// `METHOD host/target id` for the mismatch log.
pub(super) fn describe(req: &RequestHeader, request_id: &str) -> String {
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    format!(
        "{} {}{} id={request_id}",
        req.method,
        crate::route::request_authority(req),
        target
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_request_strips_hop_by_hop_and_marks_the_copy() {
        let mut r = RequestHeader::build("GET", b"/x?y=1", None).unwrap();
        r.insert_header("Host", "example.com").unwrap();
        r.insert_header("Connection", "keep-alive, X-Secret, Host")
            .unwrap();
        r.insert_header("X-Secret", "1").unwrap();
        r.insert_header("Keep-Alive", "timeout=5").unwrap();
        r.insert_header("TE", "trailers").unwrap();
        r.insert_header("Proxy-Authorization", "Basic x").unwrap();
        r.insert_header("X-Kept", "yes").unwrap();
        let f = staging_request(&r, Some("10.0.0.1".parse().unwrap()), "id-1").unwrap();
        for h in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "proxy-authorization",
        ] {
            assert!(f.headers.get(h).is_none(), "{h}");
        }
        assert_eq!(f.headers["host"], "example.com");
        assert_eq!(f.headers["x-kept"], "yes");
        assert_eq!(f.headers["x-shellac-mirror"], "1");
        assert_eq!(f.headers["x-forwarded-for"], "10.0.0.1");
        assert_eq!(f.headers["x-request-id"], "id-1");
    }
}
