//! The copy staging receives, built from the client's request header.

use pingora::http::RequestHeader;

/// Beyond `forward`'s hop-by-hop set: the credentials meant for Shellac itself, and `Expect`
/// (the body is sent at once; staging must not wait for a 100 Continue nobody reads). Pingora
/// strips these on the production path; the mirror uses a raw connector, so it strips them here.
const MIRROR_ONLY: [&str; 2] = ["proxy-authorization", "expect"];

/// The client's credentials: staging gets them only with `mirror.forward_credentials: true`,
/// since staging and its logs are rarely guarded like production.
const CREDENTIALS: [&str; 2] = ["authorization", "cookie"];

/// What staging receives: the request as production's origin would (hop-by-hop fields gone,
/// X-Forwarded-*, Via, X-Request-Id, unkeyed fields stripped, see `forward`), marked as a copy.
pub(super) fn staging_request(
    req: &RequestHeader,
    client: Option<std::net::IpAddr>,
    request_id: &str,
    forward_credentials: bool,
) -> pingora::Result<RequestHeader> {
    let mut fwd = req.clone();
    for name in crate::forward::connection_nominated(&req.headers)
        .into_iter()
        .flatten()
    {
        fwd.remove_header(&name);
    }
    for name in crate::forward::HOP_BY_HOP.iter().chain(&MIRROR_ONLY) {
        fwd.remove_header(*name);
    }
    if !forward_credentials {
        for name in CREDENTIALS {
            fwd.remove_header(name);
        }
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
        crate::authority::raw(req),
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
        r.insert_header("Authorization", "Bearer x").unwrap();
        r.insert_header("Cookie", "session=1").unwrap();
        let with = staging_request(&r, None, "id-1", true).unwrap();
        assert_eq!(with.headers["authorization"], "Bearer x");
        assert_eq!(with.headers["cookie"], "session=1");
        assert!(with.headers.get("proxy-authorization").is_none());
        let f = staging_request(&r, Some("10.0.0.1".parse().unwrap()), "id-1", false).unwrap();
        for h in [
            "connection",
            "x-secret",
            "keep-alive",
            "te",
            "proxy-authorization",
            "authorization",
            "cookie",
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
