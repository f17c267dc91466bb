//! HTTP caching rules (RFC 9111) as pure functions of (request, response, time). Nothing here
//! touches storage, sockets or clocks: callers pass `now`, so every rule is a table test.
//!
//! Choices where the RFC leaves room (documented in the README):
//! - Responses with `Set-Cookie` are stored only when the origin marks them `public`; a cookie
//!   is per user and an origin that forgets `private` must not leak it to everyone.
//! - No default TTL: a response without explicit freshness is stored only when the §4.2.2
//!   heuristic applies (`Last-Modified`, heuristically cacheable status or `public`).
//! - A response that is stale on arrival is stored only if it can be revalidated (has a
//!   validator) or served stale (has a stale window); otherwise storing it could never help.

use pingora::cache::cache_control::CacheControl;
use pingora::cache::{CacheMeta, ForcedFreshness};
use pingora::http::{RequestHeader, ResponseHeader};
use std::time::{Duration, SystemTime};

/// The §4.2.2 heuristic: a fraction of the time since `Last-Modified`, capped.
#[derive(Debug, Clone, Copy)]
pub struct Heuristic {
    pub fraction: f64,
    pub max: Duration,
}

/// Stale windows applied when the response names none (per route).
#[derive(Debug, Clone, Copy, Default)]
pub struct StaleDefaults {
    pub while_revalidate: u32,
    pub if_error: u32,
}

/// When the request went to the origin and when its response header arrived (§4.2.3).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub request_sent: SystemTime,
    pub response_received: SystemTime,
}

/// Why a response was not stored; a closed set, used as a metric label.
pub type Refusal = &'static str;

/// Decides whether `resp` to `req` may be stored (§3) and builds its metadata: freshness
/// (§4.2.1), the initial age (§4.2.3), stale windows (§4.2.4, RFC 5861) and the stored header.
pub fn storable(
    req: &RequestHeader,
    resp: &ResponseHeader,
    t: Timing,
    heuristic: Heuristic,
    stale: StaleDefaults,
) -> Result<CacheMeta, Refusal> {
    // §3: only methods whose responses we can reuse; HEAD is filled as GET by Pingora.
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        return Err("method");
    }
    let status = resp.status.as_u16();
    // §3: a final status we understand; a 206 is part of something we never asked for whole.
    if !(200..600).contains(&status) || status == 206 || status == 304 {
        return Err("status");
    }
    let req_cc = CacheControl::from_req_headers(req);
    if req_cc.as_ref().is_some_and(|c| c.no_store()) {
        return Err("request-no-store"); // §5.2.1.5
    }
    let cc = CacheControl::from_resp_headers(resp);
    let has = |f: fn(&CacheControl) -> bool| cc.as_ref().is_some_and(f);
    if has(CacheControl::no_store) {
        return Err("no-store"); // §5.2.2.5
    }
    if has(CacheControl::private) {
        return Err("private"); // §5.2.2.7: a shared cache MUST NOT store it
    }
    let public = has(CacheControl::public);
    let s_maxage = cc.as_ref().map(|c| c.s_maxage());
    let has_s_maxage = matches!(s_maxage, Some(Ok(Some(_))) | Some(Err(_)));
    // §3.5: responses to authenticated requests only with explicit permission.
    if req.headers.contains_key(http::header::AUTHORIZATION)
        && !(public || has_s_maxage || has(CacheControl::must_revalidate))
    {
        return Err("authorization");
    }
    if resp.headers.contains_key(http::header::SET_COOKIE) && !public {
        return Err("set-cookie");
    }
    // §4.1: `Vary: *` never matches a later request, so storing it is useless.
    if resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii() == b"*")
    }) {
        return Err("vary-star");
    }

    let date = header_date(resp, http::header::DATE).unwrap_or(t.response_received);
    // §5.2.2.4: no-cache may be stored but must be validated before every reuse.
    let no_cache = has(CacheControl::no_cache);
    let lifetime = match freshness_lifetime(resp, cc.as_ref(), date, public, heuristic) {
        _ if no_cache => Duration::ZERO,
        Some(l) => l,
        None => return Err("no-freshness"),
    };
    // §5.2.2.4, §5.2.2.2, §5.2.2.8, §5.2.2.10: each forbids serving stale without validation.
    let no_stale = no_cache
        || has(CacheControl::must_revalidate)
        || has(CacheControl::proxy_revalidate)
        || has_s_maxage;
    let (swr, sie) = if no_stale {
        (0, 0)
    } else {
        let pick = |v: Option<pingora::Result<Option<u32>>>, d: u32| match v {
            Some(Ok(Some(s))) => s,
            _ => d,
        };
        (
            pick(
                cc.as_ref().map(|c| c.stale_while_revalidate()),
                stale.while_revalidate,
            ),
            pick(cc.as_ref().map(|c| c.stale_if_error()), stale.if_error),
        )
    };

    let initial_age = initial_age(resp, date, t);
    let fresh_until = if lifetime >= initial_age {
        t.response_received + (lifetime - initial_age)
    } else {
        t.response_received - (initial_age - lifetime)
    };
    let fresh = fresh_until > t.response_received;
    let validator = resp.headers.contains_key(http::header::ETAG)
        || resp.headers.contains_key(http::header::LAST_MODIFIED);
    if !fresh && !validator && swr == 0 && sie == 0 {
        return Err(if no_cache { "no-cache" } else { "stale" });
    }

    let mut header = resp.clone();
    // §5.2.2.4, §5.2.2.7: the named fields must not be reused; drop them from the stored copy.
    if let Some(cc) = &cc {
        let named: Vec<String> = cc
            .private_field_names()
            .into_iter()
            .flatten()
            .chain(cc.no_cache_field_names().into_iter().flatten())
            .filter_map(|n| {
                std::str::from_utf8(n)
                    .ok()
                    .map(|s| s.trim().to_ascii_lowercase())
            })
            .collect();
        for n in named {
            header.remove_header(&n);
        }
    }
    // The stored Age is the corrected initial age; hits add their resident time (§4.2.3).
    header.remove_header(&http::header::AGE);
    let age_secs = initial_age.as_secs();
    if age_secs > 0 {
        let _ = header.insert_header(http::header::AGE, age_secs);
    }
    Ok(CacheMeta::new(
        fresh_until,
        t.response_received,
        swr,
        sie,
        header,
    ))
}

/// §4.2.1: s-maxage, then max-age, then Expires − Date; otherwise the §4.2.2 heuristic.
/// `None` when the response carries no freshness information at all.
fn freshness_lifetime(
    resp: &ResponseHeader,
    cc: Option<&CacheControl>,
    date: SystemTime,
    public: bool,
    heuristic: Heuristic,
) -> Option<Duration> {
    if let Some(cc) = cc {
        // An invalid value is explicit but unusable: §4.2.1 encourages treating it as stale.
        for v in [cc.s_maxage(), cc.max_age()] {
            match v {
                Ok(Some(s)) => return Some(Duration::from_secs(s as u64)),
                Ok(None) => {}
                Err(_) => return Some(Duration::ZERO),
            }
        }
    }
    if resp.headers.contains_key(http::header::EXPIRES) {
        // §5.3: an invalid Expires (e.g. "0") means already expired.
        return Some(match header_date(resp, http::header::EXPIRES) {
            Some(exp) => exp.duration_since(date).unwrap_or(Duration::ZERO),
            None => Duration::ZERO,
        });
    }
    // §4.2.2: heuristics only for heuristically cacheable statuses (RFC 9110 §15.1) or `public`.
    let status = resp.status.as_u16();
    let heuristic_status = matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    );
    if heuristic.fraction <= 0.0 || !(heuristic_status || public) {
        return None;
    }
    let modified = header_date(resp, http::header::LAST_MODIFIED)?;
    let since = date.duration_since(modified).ok()?;
    Some(since.mul_f64(heuristic.fraction).min(heuristic.max))
}

/// §4.2.3: the age the response already had when it arrived, corrected for transit time.
fn initial_age(resp: &ResponseHeader, date: SystemTime, t: Timing) -> Duration {
    let age_value = resp
        .headers
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let apparent_age = t
        .response_received
        .duration_since(date)
        .unwrap_or(Duration::ZERO);
    let response_delay = t
        .response_received
        .duration_since(t.request_sent)
        .unwrap_or(Duration::ZERO);
    apparent_age.max(age_value + response_delay)
}

fn header_date(resp: &ResponseHeader, name: http::header::HeaderName) -> Option<SystemTime> {
    let v = resp.headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(v.trim()).ok()
}

/// The age of a stored response now (§4.2.3): its initial age plus the time since it was
/// stored or last validated.
pub fn current_age(meta: &CacheMeta, now: SystemTime) -> Duration {
    let initial = meta
        .headers()
        .get(http::header::AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    initial + now.duration_since(meta.epoch()).unwrap_or(Duration::ZERO)
}

/// Seconds of freshness left (negative: stale for that long).
pub fn ttl_secs(meta: &CacheMeta, now: SystemTime) -> i64 {
    match meta.fresh_until().duration_since(now) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// What the request's own directives (§5.2.1) do to a stored response: `ForceExpired` makes
/// Pingora validate it first, `ForceFresh` serves it stale as the client allowed. `None`
/// leaves the decision to the stored freshness.
pub fn on_hit(req: &RequestHeader, meta: &CacheMeta, now: SystemTime) -> Option<ForcedFreshness> {
    let Some(cc) = CacheControl::from_req_headers(req) else {
        // §5.4: `Pragma: no-cache` counts only when there is no Cache-Control.
        let pragma = req.headers.get(http::header::PRAGMA)?;
        return pragma
            .as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"no-cache"))
            .then_some(ForcedFreshness::ForceExpired);
    };
    if cc.no_cache() {
        return Some(ForcedFreshness::ForceExpired); // §5.2.1.4
    }
    let age = current_age(meta, now);
    if let Ok(Some(max_age)) = cc.max_age() {
        if age > Duration::from_secs(max_age as u64) {
            return Some(ForcedFreshness::ForceExpired); // §5.2.1.1
        }
    }
    let ttl = ttl_secs(meta, now);
    if let Ok(Some(min_fresh)) = cc.parse_min_fresh() {
        if ttl < min_fresh as i64 {
            return Some(ForcedFreshness::ForceExpired); // §5.2.1.3
        }
    }
    if ttl < 0 && cc.has_key("max-stale") {
        // §5.2.1.2, unless the origin forbade serving it stale (§4.2.4).
        let stored = CacheControl::from_resp_headers(meta.response_header());
        let forbidden = stored.is_some_and(|s| {
            s.must_revalidate()
                || s.proxy_revalidate()
                || s.no_cache()
                || matches!(s.s_maxage(), Ok(Some(_)))
        });
        let within = match cc.parse_max_stale() {
            Ok(Some(limit)) => -ttl <= limit as i64,
            _ => true, // max-stale without a value: any staleness
        };
        if !forbidden && within {
            return Some(ForcedFreshness::ForceFresh);
        }
    }
    None
}

/// §5.2.1.7: the client wants only a stored response; a miss gets 504.
pub fn only_if_cached(req: &RequestHeader) -> bool {
    CacheControl::from_req_headers(req).is_some_and(|c| c.only_if_cached())
}

/// §4.4: methods whose non-error responses invalidate stored responses for the target URI.
pub fn invalidates(method: &http::Method, status: u16) -> bool {
    !matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS" | "TRACE") && (200..400).contains(&status)
}

trait RequestDirectives {
    fn parse_min_fresh(&self) -> pingora::Result<Option<u32>>;
    fn parse_max_stale(&self) -> pingora::Result<Option<u32>>;
}

impl RequestDirectives for CacheControl {
    fn parse_min_fresh(&self) -> pingora::Result<Option<u32>> {
        delta(self, "min-fresh")
    }
    fn parse_max_stale(&self) -> pingora::Result<Option<u32>> {
        delta(self, "max-stale")
    }
}

fn delta(cc: &CacheControl, name: &str) -> pingora::Result<Option<u32>> {
    let key = pingora::cache::cache_control::DirectiveKey::from_lowercase(name);
    match cc.directives.get(&key) {
        Some(Some(v)) => v.parse_as_delta_seconds().map(Some),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests;
