//! `POST /purge` on the admin listener: purge by URL, tag, host, host + path prefix or
//! everything, hard or soft, fleet-wide (see [`crate::cache::invalidation`]).
//!
//! ```json
//! {"urls": ["http://example.com/a"], "tags": ["product-42"], "hosts": ["example.com"],
//!  "prefixes": ["example.com/static/"], "all": false, "soft": false}
//! ```
//!
//! Authorised by `Authorization: Bearer <token>` (`admin.purge_token_file`), or, with no token
//! configured, for loopback clients only. Answers: 200 with what was done per item; 400 naming
//! the bad field (nothing is purged then); 401 without a token, 403 with a wrong one or from a
//! non-loopback client; 405 for another method; 413 for a body over 64KiB; 503 when memcached
//! could not be told (the items that failed say so; the others were done).

use crate::authority::{self, Authority};
use crate::cache::invalidation::{self, Invalidator, Target, MAX_ITEMS};
use crate::cache::purge::{bearer, constant_time_eq};
use crate::cache::tiered::Tiered;
use crate::cache::{key, tags};
use crate::config::PurgeToken;
use crate::metrics;
use http::{header, Response, StatusCode};
use pingora::protocols::http::ServerSession;
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::sync::OnceLock;

const MAX_BODY: usize = 64 << 10;
const FIELDS: [&str; 6] = ["urls", "tags", "hosts", "prefixes", "all", "soft"];

struct Api {
    storage: &'static Tiered,
    inv: &'static Invalidator,
    token: Option<PurgeToken>,
}

static API: OnceLock<Api> = OnceLock::new();

/// Called once at start-up with the cache the API acts on.
pub fn install(handle: (&'static Tiered, &'static Invalidator), token: Option<PurgeToken>) {
    let _ = API.set(Api {
        storage: handle.0,
        inv: handle.1,
        token,
    });
}

/// One validated purge request.
#[derive(Debug, Default, PartialEq)]
pub struct Request {
    /// (authority, path and query) of each URL.
    pub urls: Vec<(String, String)>,
    pub targets: Vec<Target>,
    pub soft: bool,
}

fn reply(status: StatusCode, body: Value) -> Response<Vec<u8>> {
    let body = format!("{body}\n").into_bytes();
    let mut r = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::CACHE_CONTROL, "no-store");
    if status == StatusCode::UNAUTHORIZED {
        r = r.header(header::WWW_AUTHENTICATE, "Bearer");
    }
    if status == StatusCode::METHOD_NOT_ALLOWED {
        r = r.header(header::ALLOW, "POST");
    }
    r.body(body).unwrap()
}

fn refuse(status: StatusCode, reason: &str, field: Option<&str>, msg: &str) -> Response<Vec<u8>> {
    metrics::PURGE_API_ERRORS.with_label_values(&[reason]).inc();
    reply(status, json!({"error": msg, "field": field}))
}

pub async fn respond(session: &mut ServerSession) -> Response<Vec<u8>> {
    if session.req_header().method != http::Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "method", None, "use POST");
    }
    let Some(api) = API.get() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            None,
            "not ready",
        );
    };
    if let Some(r) = authorise(session, api.token.as_ref()) {
        return r;
    }
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(b)) if body.len() + b.len() <= MAX_BODY => body.extend_from_slice(&b),
            Ok(Some(_)) => {
                return refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "bad_request",
                    None,
                    "body over 64KiB",
                )
            }
            Ok(None) => break,
            Err(e) => {
                return refuse(StatusCode::BAD_REQUEST, "bad_request", None, &e.to_string());
            }
        }
    }
    let req = match parse(&body) {
        Ok(r) => r,
        Err((field, msg)) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                field.as_deref(),
                &msg,
            )
        }
    };
    let (results, failed) = run(api, &req).await;
    let status = if failed > 0 {
        metrics::PURGE_API_ERRORS
            .with_label_values(&["unavailable"])
            .inc();
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    reply(
        status,
        json!({"soft": req.soft, "failed": failed, "results": results}),
    )
}

fn authorise(session: &ServerSession, token: Option<&PurgeToken>) -> Option<Response<Vec<u8>>> {
    match token {
        Some(secret) => {
            let given = session
                .req_header()
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| bearer(v.as_bytes()));
            match given {
                None => Some(refuse(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    None,
                    "send Authorization: Bearer <token from admin.purge_token_file>",
                )),
                Some(t) if !constant_time_eq(t, secret.as_bytes()) => Some(refuse(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    None,
                    "wrong token",
                )),
                Some(_) => None,
            }
        }
        None => {
            let loopback = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .is_some_and(|a| a.ip().is_loopback());
            (!loopback).then(|| {
                refuse(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    None,
                    "only loopback clients may purge without admin.purge_token_file",
                )
            })
        }
    }
}

/// What was wrong: the field (when one is to blame) and why.
type Bad = (Option<Cow<'static, str>>, String);

/// The request body, validated completely before anything is purged. `Err((field, why))`.
pub fn parse(body: &[u8]) -> Result<Request, Bad> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| (None, format!("malformed JSON: {e}")))?;
    let Value::Object(obj) = v else {
        return Err((None, "the body must be a JSON object".into()));
    };
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err((
            Some(k.clone().into()),
            format!("unknown field {k:?}; expected one of {}", FIELDS.join(", ")),
        ));
    }
    let mut req = Request {
        soft: flag(&obj, "soft")?,
        ..Request::default()
    };
    for u in list(&obj, "urls")? {
        req.urls.push(parse_url(&u).ok_or((
            Some("urls".into()),
            format!("{u:?} is not an http URL (http://host/path) or host/path"),
        ))?);
    }
    for t in list(&obj, "tags")? {
        if !tags::valid(&t) {
            return Err((
                Some("tags".into()),
                format!(
                    "{t:?}: a tag is 1-{} visible ASCII characters, no comma",
                    tags::MAX_LEN
                ),
            ));
        }
        req.targets.push(Target::Tag(t));
    }
    for h in list(&obj, "hosts")? {
        let host =
            norm_host(&h).ok_or((Some("hosts".into()), format!("{h:?} is not a host name")))?;
        req.targets.push(Target::Host(host));
    }
    for p in list(&obj, "prefixes")? {
        let bad = || {
            (
                Some("prefixes".into()),
                format!("{p:?} is not host/path-prefix (example.com/static/)"),
            )
        };
        let (h, path) = p.find('/').map(|i| p.split_at(i)).ok_or_else(bad)?;
        let host = norm_host(h).ok_or_else(bad)?;
        if path.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(bad());
        }
        req.targets.push(Target::Prefix {
            host,
            path: path.to_string(),
        });
    }
    if flag(&obj, "all")? {
        req.targets.push(Target::All);
    }
    let n = req.urls.len() + req.targets.len();
    if n == 0 {
        return Err((
            None,
            "nothing to purge: give urls, tags, hosts, prefixes or all".into(),
        ));
    }
    if n > MAX_ITEMS {
        // Name the largest list: that is the one to split.
        let field = ["urls", "tags", "hosts", "prefixes"]
            .into_iter()
            .max_by_key(|f| obj.get(*f).and_then(Value::as_array).map_or(0, Vec::len));
        return Err((
            field.map(Cow::from),
            format!("{n} items; at most {MAX_ITEMS} per request"),
        ));
    }
    Ok(req)
}

fn flag(obj: &Map<String, Value>, f: &'static str) -> Result<bool, Bad> {
    match obj.get(f) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err((Some(f.into()), "must be true or false".into())),
    }
}

fn list(obj: &Map<String, Value>, f: &'static str) -> Result<Vec<String>, Bad> {
    let Some(v) = obj.get(f) else {
        return Ok(vec![]);
    };
    let bad = || (Some(f.into()), "must be a list of strings".to_string());
    let arr = v.as_array().ok_or_else(bad)?;
    if arr.len() > MAX_ITEMS {
        return Err((
            Some(f.into()),
            format!("{} items; at most {MAX_ITEMS} per request", arr.len()),
        ));
    }
    arr.iter()
        .map(|x| x.as_str().map(str::to_string).ok_or_else(bad))
        .collect()
}

fn norm_host(h: &str) -> Option<String> {
    (!h.is_empty() && authority::valid(h.as_bytes()))
        .then(|| Authority::parse(h).host().to_string())
}

/// `http://host[:port]/path?query`, `https://…` or `host/path`.
fn parse_url(u: &str) -> Option<(String, String)> {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .unwrap_or(u);
    let (auth, pq) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let ok = !auth.is_empty()
        && authority::valid(auth.as_bytes())
        && pq.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| (auth.to_string(), pq.to_string()))
}

/// Does it: every item is attempted, each reports its own result.
async fn run(api: &Api, req: &Request) -> (Vec<Value>, usize) {
    let mut out = Vec::new();
    let mut failed = 0;
    let mode = if req.soft { "stale" } else { "purged" };
    for (auth, pq) in &req.urls {
        let k = key::build(auth, pq.as_bytes());
        let name = format!("{auth}{pq}");
        out.push(
            match invalidation::url::purge(api.storage, &k, req.soft).await {
                Ok(true) => json!({"kind": "url", "name": name, "result": mode}),
                Ok(false) => json!({"kind": "url", "name": name, "result": "not_found"}),
                Err(e) => {
                    failed += 1;
                    json!({"kind": "url", "name": name, "result": "failed", "error": e})
                }
            },
        );
    }
    for t in &req.targets {
        let name = match t {
            Target::All => String::new(),
            Target::Host(h) | Target::Tag(h) => h.clone(),
            Target::Prefix { host, path } => format!("{host}{path}"),
        };
        out.push(match api.inv.purge(t, req.soft).await {
            Ok(()) => json!({"kind": t.kind(), "name": name, "result": mode}),
            Err(e) => {
                failed += 1;
                json!({"kind": t.kind(), "name": name, "result": "failed", "error": e})
            }
        });
    }
    (out, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_field_and_names_the_bad_one() {
        let r = parse(br#"{"urls": ["http://Example.com/a?b", "example.com"], "tags": ["p42"],
            "hosts": ["Example.COM:8080"], "prefixes": ["example.com/static/"], "all": true, "soft": true}"#)
        .unwrap();
        assert_eq!(
            r.urls,
            [
                ("Example.com".into(), "/a?b".into()),
                ("example.com".into(), "/".into())
            ]
        );
        assert!(r.soft);
        assert_eq!(
            r.targets,
            [
                Target::Tag("p42".into()),
                Target::Host("example.com".into()),
                Target::Prefix {
                    host: "example.com".into(),
                    path: "/static/".into()
                },
                Target::All,
            ]
        );
        let field = |b: &[u8]| parse(b).unwrap_err().0.map(String::from);
        assert_eq!(field(b"{"), None);
        assert_eq!(field(b"{}"), None);
        assert!(parse(br#"{"tag": ["a"]}"#)
            .unwrap_err()
            .1
            .contains("\"tag\""));
        assert_eq!(field(br#"{"tags": "a"}"#).as_deref(), Some("tags"));
        assert_eq!(field(br#"{"tags": ["a b"]}"#).as_deref(), Some("tags"));
        assert_eq!(field(br#"{"hosts": ["a b"]}"#).as_deref(), Some("hosts"));
        assert_eq!(
            field(br#"{"prefixes": ["nopath"]}"#).as_deref(),
            Some("prefixes")
        );
        assert_eq!(
            field(br#"{"urls": ["http:///x"]}"#).as_deref(),
            Some("urls")
        );
        assert_eq!(field(br#"{"all": 1}"#).as_deref(), Some("all"));
        let many: Vec<String> = (0..=MAX_ITEMS).map(|i| format!("\"t{i}\"")).collect();
        let body = format!("{{\"tags\": [{}]}}", many.join(","));
        assert_eq!(field(body.as_bytes()).as_deref(), Some("tags"));
    }
}
