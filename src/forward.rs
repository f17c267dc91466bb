//! Header rewriting between client and origin (RFC 9110 §7.6): hop-by-hop fields removed in both
//! directions, `X-Forwarded-For`/`X-Forwarded-Proto` set by us, `Via` added.
//!
//! On the request side Pingora already strips the standard hop-by-hop fields and those named in
//! `Connection` (its default `HttpUpstreamRequestPolicy`), and refuses nominations of Host or
//! X-Forwarded-*; the response side is ours.

use http::header::{self, HeaderName};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::Result;
use std::net::IpAddr;

pub const VIA: &str = "1.1 shellac";

/// Fields that describe one connection, never the message (RFC 9110 §7.6.1), plus the
/// pre-standard `Keep-Alive`/`Proxy-Connection` that clients and origins still send.
pub const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authenticate",
];

/// Request fields an origin may trust to rebuild URLs, pick a method or route internally, none
/// of which are in the cache key. A client could use them to make the origin produce a response
/// for someone else's URL (cache poisoning), so they never reach the origin. Shellac itself sets
/// X-Forwarded-For and X-Forwarded-Proto.
const UNKEYED: [&str; 23] = [
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-scheme",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "x-forwarded-ssl",
    "x-original-url",
    "x-rewrite-url",
    // Path overrides frameworks and gateways honour (Traefik, nginx auth_request, Envoy): the
    // path routed and keyed is the request's own, so no other may reach the origin.
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-original-uri",
    "x-original-path",
    "x-envoy-original-path",
    "x-envoy-original-host",
    "x-envoy-original-dst-host",
    "x-original-host",
    "x-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-real-ip",
    "front-end-https",
];

/// Shellac's own request fields (`x-shellac-*`, e.g. `X-Shellac-Mirror` marking a staging
/// copy) mean something only when Shellac sets them; a client's are removed before the
/// request is routed, keyed or forwarded. Called first in `request_filter`.
pub fn strip_internal(req: &mut RequestHeader) {
    for name in fields_where(&req.headers, |n| n.starts_with("x-shellac-")) {
        req.remove_header(&name);
    }
}

/// `hop` is the connection's source ([`crate::client::hop`]): each proxy appends the address
/// it received the request from, so the chain stays verifiable by the next hop.
pub fn upstream_request(req: &mut RequestHeader, hop: Option<IpAddr>) -> Result<()> {
    for name in fields_where(&req.headers, |n| UNKEYED.contains(&n)) {
        req.remove_header(&name);
    }
    normalize_content_length(req)?;
    if let Some(ip) = hop {
        // Append rather than replace; `crate::client` believes it only from trusted proxies.
        let value = match req.headers.get("x-forwarded-for") {
            Some(prev) => {
                let mut v = Vec::with_capacity(prev.len() + 48);
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(b", ");
                v.extend_from_slice(ip.to_string().as_bytes());
                v
            }
            None => ip.to_string().into_bytes(),
        };
        req.insert_header("x-forwarded-for", value)?;
    }
    // Only the plain-HTTP listener exists; a client-supplied value must never reach the origin.
    req.insert_header("x-forwarded-proto", "http")?;
    req.append_header(header::VIA, VIA)?;
    Ok(())
}

/// Pingora accepts repeated identical Content-Length values (`3, 3`, two fields, `03`); the
/// origin gets exactly one canonical value, so it cannot frame the body differently.
fn normalize_content_length(req: &mut RequestHeader) -> Result<()> {
    let Some(first) = req.headers.get(header::CONTENT_LENGTH) else {
        return Ok(());
    };
    match crate::limits::parse_content_length(first) {
        Some(len) => req.insert_header(header::CONTENT_LENGTH, len).map(|_| ()),
        None => pingora::Error::e_explain(
            pingora::ErrorType::InvalidHTTPHeader,
            "invalid Content-Length",
        ),
    }
}

pub fn upstream_response(resp: &mut ResponseHeader) {
    if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
        // A 101 needs Connection/Upgrade to mean anything; Pingora only lets WebSocket through.
        return;
    }
    for name in connection_nominated(&resp.headers).into_iter().flatten() {
        resp.remove_header(&name);
    }
    for name in fields_where(&resp.headers, |n| HOP_BY_HOP.contains(&n)) {
        resp.remove_header(&name);
    }
}

/// An interim (1xx) answer other than `101 Switching Protocols`, which is the final one.
pub fn is_interim(resp: &ResponseHeader) -> bool {
    resp.status.is_informational() && resp.status != http::StatusCode::SWITCHING_PROTOCOLS
}

/// Pingora drops an origin's interim answers (`103 Early Hints`, `102 Processing`) that reach
/// it in the same read as the final header whenever that header starts a cache fill: the fill
/// takes over the client's response and the batch it was part of is discarded. So interim
/// answers are written here, as they arrive from the origin, and Pingora's own copy is
/// skipped ([`skip_pingora_interim`]). Not to HTTP/1.0 clients (RFC 9110 §15.2), and without
/// the cache's or the rules' fields: those describe the final response.
pub async fn relay_interim(session: &mut Session, resp: &ResponseHeader) -> Result<()> {
    // A `100 Continue` comes before the request body is sent, never with the final header, and
    // Pingora still passes it on to a client that asked for it (`Expect: 100-continue`).
    if resp.status == http::StatusCode::CONTINUE
        || session.req_header().version < http::Version::HTTP_11
    {
        return Ok(());
    }
    let downstream = &mut session.downstream_session;
    downstream.set_ignore_info_resp(false);
    let written = downstream.write_response_header_ref(resp).await;
    skip_pingora_interim(session);
    written
}

/// Makes Pingora skip the interim answers it would write itself (it still passes a
/// `100 Continue` on to a client that asked for one).
pub fn skip_pingora_interim(session: &mut Session) {
    session.downstream_session.set_ignore_info_resp(true);
}

/// The names (lower-case, as stored) of the fields in `headers` that `pick` selects, to remove
/// them: removing while iterating is not possible. One pass over the message's own fields (the
/// usual answer is none, and an empty Vec does not allocate) instead of parsing and hashing
/// every candidate name on every message, as removing each by its `&str` name would.
pub fn fields_where(headers: &http::HeaderMap, pick: impl Fn(&str) -> bool) -> Vec<HeaderName> {
    headers
        .keys()
        .filter(|n| pick(n.as_str()))
        .cloned()
        .collect()
}

/// The fields a message's `Connection` header names (RFC 9110 §7.6.1), at most 8, minus those a
/// peer must never make us drop: Host, framing, and the forwarding fields Shellac sets. An array,
/// not a Vec: no allocation when (as usual) nothing is named.
pub fn connection_nominated(headers: &http::HeaderMap) -> [Option<HeaderName>; 8] {
    let mut out: [Option<HeaderName>; 8] = Default::default();
    let names = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .filter(|name| {
            *name != header::HOST
                && *name != header::CONTENT_LENGTH
                && *name != header::TRANSFER_ENCODING
                && !name.as_str().starts_with("x-forwarded-")
        });
    for (slot, name) in out.iter_mut().zip(names) {
        *slot = Some(name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_hop_by_hop_and_nominated_fields_go() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("Connection", "close, X-Secret, content-length")
            .unwrap();
        r.insert_header("X-Secret", "1").unwrap();
        r.insert_header("Keep-Alive", "timeout=5").unwrap();
        r.insert_header("Content-Length", "3").unwrap();
        r.insert_header("X-Kept", "yes").unwrap();
        upstream_response(&mut r);
        assert!(r.headers.get("connection").is_none());
        assert!(r.headers.get("x-secret").is_none());
        assert!(r.headers.get("keep-alive").is_none());
        assert_eq!(r.headers["content-length"], "3");
        assert_eq!(r.headers["x-kept"], "yes");
    }

    #[test]
    fn unkeyed_headers_are_stripped_and_length_normalized() {
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        r.append_header("X-Forwarded-Host", "evil.test").unwrap();
        r.append_header("X-HTTP-Method-Override", "DELETE").unwrap();
        r.append_header("Forwarded", "host=evil.test").unwrap();
        r.append_header("Content-Length", "3").unwrap();
        r.append_header("Content-Length", "03").unwrap();
        upstream_request(&mut r, None).unwrap();
        for h in ["x-forwarded-host", "x-http-method-override", "forwarded"] {
            assert!(r.headers.get(h).is_none(), "{h}");
        }
        let lens: Vec<_> = r.headers.get_all("content-length").iter().collect();
        assert_eq!(lens, ["3"]);
    }

    #[test]
    fn internal_fields_from_clients_are_removed() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.append_header("X-Shellac-Mirror", "1").unwrap();
        r.append_header("x-shellac-anything", "2").unwrap();
        r.append_header("X-Shellacked", "kept").unwrap();
        strip_internal(&mut r);
        assert!(r.headers.get("x-shellac-mirror").is_none());
        assert!(r.headers.get("x-shellac-anything").is_none());
        assert_eq!(r.headers["x-shellacked"], "kept");
    }

    #[test]
    fn forwarded_for_is_appended_and_proto_overwritten() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        r.insert_header("X-Forwarded-For", "203.0.113.9").unwrap();
        r.insert_header("X-Forwarded-Proto", "https").unwrap();
        upstream_request(&mut r, Some("127.0.0.1".parse().unwrap())).unwrap();
        assert_eq!(r.headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
        assert_eq!(r.headers["x-forwarded-proto"], "http");
        assert_eq!(r.headers["via"], VIA);
    }
}
