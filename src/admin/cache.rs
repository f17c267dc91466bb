//! `GET /cache?url=URL` on the admin listener: what the cache holds for one URL (every variant,
//! on which tier, size, times, TTLs, stale windows, validators, tags, purge markers), as JSON;
//! see [`crate::cache::inspect`] and docs/operating.md. `shellac inspect` prints it.
//!
//! `URL` is percent-encoded in the query (`http://host/path?query`, `https://…` or
//! `host/path`). Authorised exactly like `POST /purge` ([`super::purge::check`]). Answers: 200
//! with the JSON, `"cached": false` for a URL nothing is held for; 400 without a usable `url`;
//! 401 without a token, 403 with a wrong one or from a non-loopback client; 405 for a method
//! other than GET or HEAD; 503 before start-up finished.

use crate::cache::inspect::Inspector;
use crate::config::PurgeToken;
use http::{header, Response, StatusCode};
use pingora::protocols::http::ServerSession;
use serde_json::{json, Value};
use std::sync::OnceLock;

static API: OnceLock<(Inspector, Option<PurgeToken>)> = OnceLock::new();

/// Called once at start-up with the cache to inspect and the admin token.
pub fn install(inspector: Inspector, token: Option<PurgeToken>) {
    let _ = API.set((inspector, token));
}

fn reply(status: StatusCode, body: &Value) -> Response<Vec<u8>> {
    let body = format!("{body:#}\n").into_bytes();
    let mut r = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CACHE_CONTROL, "no-store");
    if status == StatusCode::UNAUTHORIZED {
        r = r.header(header::WWW_AUTHENTICATE, "Bearer");
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        r = r.header(header::ALLOW, "GET, HEAD");
    }
    r.body(body).unwrap()
}

fn error(status: StatusCode, msg: &str) -> Response<Vec<u8>> {
    reply(status, &json!({ "error": msg }))
}

pub async fn respond(session: &mut ServerSession) -> Response<Vec<u8>> {
    let req = session.req_header();
    if !matches!(req.method, http::Method::GET | http::Method::HEAD) {
        return error(StatusCode::METHOD_NOT_ALLOWED, "use GET");
    }
    let Some((inspector, token)) = API.get() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "not ready");
    };
    if let Err((status, _, msg)) = super::purge::check(session, token.as_ref(), "inspect the cache")
    {
        return error(status, &msg);
    }
    let url = session.req_header().uri.query().and_then(|q| {
        q.split('&')
            .find_map(|p| p.strip_prefix("url="))
            .and_then(percent_decode)
    });
    let Some(url) = url else {
        return error(
            StatusCode::BAD_REQUEST,
            "give the URL to inspect: /cache?url=<percent-encoded http://host/path?query>",
        );
    };
    let Some((authority, path)) = super::purge::parse_url(&url) else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("{url:?} is not an http URL (http://host/path) or host/path"),
        );
    };
    let v = inspector.inspect(&authority, &path).await;
    reply(StatusCode::OK, &v)
}

/// `%XX` decoded (`+` is kept: it is a character of paths and queries). `None` when malformed
/// or not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_url_parameter() {
        assert_eq!(
            percent_decode("http%3A%2F%2Fa.test%2Fx%3Fb%3D1+2").as_deref(),
            Some("http://a.test/x?b=1+2")
        );
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("a%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
