//! HTTP caching rules (RFC 9111) as pure functions of (request, response, time). Nothing here
//! touches storage, sockets or clocks: callers pass `now`, so every rule is a table test.
//!
//! Choices where the RFC leaves room (documented in docs/caching.md):
//! - Responses with `Set-Cookie` are stored only when the origin marks them `public`; a cookie
//!   is per user and an origin that forgets `private` must not leak it to everyone.
//! - No default TTL: a response without explicit freshness is stored only when the §4.2.2
//!   heuristic applies (`Last-Modified`, heuristically cacheable status or `public`).
//! - A response that is stale on arrival is stored only if it can be revalidated (has a
//!   validator) or served stale (has a stale window); otherwise storing it could never help.
//!
//! Sub-modules: [`age`] (§4.2.3 arithmetic, saturating), [`stale`] (§4.2.4: when stale may be
//! served), [`revalidate`] (§3.2: the 304 merge), [`invalidate`] (§4.4), [`refusal`] (why not),
//! [`targeted`] (RFC 9213 `CDN-Cache-Control`), [`conditional`] (304s from storage).

pub mod age;
pub mod conditional;
pub mod invalidate;
pub mod refusal;
pub mod revalidate;
pub mod stale;
pub mod targeted;

pub use age::{current_age, ttl_secs};
pub use refusal::Refusal;

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
    /// How long a stale copy may stand in when the origin cannot be reached at all (§4.2.4);
    /// never longer than the origin allows stale at all.
    pub on_disconnect: u32,
}

/// Operator overrides of freshness (from rules), decided per response.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides {
    /// Freshness when the response has no explicit one; takes precedence over the heuristic.
    pub ttl: Option<Duration>,
    /// Freshness regardless of the response's, and despite `no-cache` and `private`.
    pub force_ttl: Option<Duration>,
    /// Stale windows replacing the route's defaults (the response's own still count, unless
    /// `force_ttl`, which uses these alone).
    pub stale: Option<StaleDefaults>,
}

/// When the request went to the origin and when its response header arrived (§4.2.3).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub request_sent: SystemTime,
    pub response_received: SystemTime,
}

/// Decides whether `resp` to `req` may be stored (§3) and builds its metadata: freshness
/// (§4.2.1), the initial age (§4.2.3), stale windows (§4.2.4, RFC 5861) and the stored header.
pub fn storable(
    req: &RequestHeader,
    resp: &ResponseHeader,
    t: Timing,
    heuristic: Heuristic,
    stale: StaleDefaults,
    targeted_fields: &[http::HeaderName],
) -> Result<CacheMeta, Refusal> {
    let o = Overrides::default();
    storable_with(req, resp, t, heuristic, stale, targeted_fields, o)
}

/// [`storable`] with an operator's [`Overrides`]: `force_ttl` sets the lifetime and lifts
/// `no-cache` and `private` (never `no-store`, `Set-Cookie` or `Authorization`).
pub fn storable_with(
    req: &RequestHeader,
    resp: &ResponseHeader,
    t: Timing,
    heuristic: Heuristic,
    stale: StaleDefaults,
    targeted_fields: &[http::HeaderName],
    o: Overrides,
) -> Result<CacheMeta, Refusal> {
    storable_exchange(req, resp)?;
    // RFC 9213: a valid targeted field replaces Cache-Control for everything below.
    let cc = targeted::response_cc(resp, targeted_fields);
    let mut directives = Directives::of(cc.as_ref());
    if o.force_ttl.is_some() {
        directives.no_cache = false;
        directives.private = false;
    }
    permitted(req, resp, &directives)?;
    let date = header_date(resp, http::header::DATE).unwrap_or(t.response_received);
    let explicit = freshness_lifetime(resp, cc.as_ref(), date, directives.public, heuristic, o.ttl);
    // §5.2.2.4: no-cache may be stored but must be validated before every reuse.
    let lifetime = match explicit {
        _ if o.force_ttl.is_some() => o.force_ttl.unwrap_or_default(),
        _ if directives.no_cache => Duration::ZERO,
        Some(l) => l,
        None if resp.status.is_server_error() => return Err(Refusal::ServerError),
        None => return Err(Refusal::NoFreshness),
    };
    let stale = o.stale.map_or(stale, |s| StaleDefaults {
        on_disconnect: stale.on_disconnect,
        ..s
    });
    let (swr, sie) = match o.force_ttl {
        Some(_) => (stale.while_revalidate, stale.if_error),
        None => stale::windows(cc.as_ref(), stale),
    };
    let initial_age = age::initial_age(resp, date, t);
    let fresh_until = age::fresh_until(t.response_received, lifetime, initial_age);
    let fresh = fresh_until > t.response_received;
    let validator = resp.headers.contains_key(http::header::ETAG)
        || resp.headers.contains_key(http::header::LAST_MODIFIED);
    if !fresh && !validator && swr == 0 && sie == 0 {
        return Err(if directives.no_cache {
            Refusal::NoCache
        } else {
            Refusal::Stale
        });
    }
    // The copy dates from when its request left, not when its answer arrived: a purge in
    // between must retire it (purge markers compare against `created`). §4.2.3's resident
    // time still counts from the response: the stored Age is the initial age less the
    // response delay, which the time since `created` adds back.
    let response_delay = t
        .response_received
        .duration_since(t.request_sent)
        .unwrap_or(Duration::ZERO);
    Ok(CacheMeta::new(
        fresh_until,
        t.request_sent.min(t.response_received),
        swr,
        sie,
        stored_header(
            resp,
            cc.as_ref(),
            initial_age.saturating_sub(response_delay),
        ),
    ))
}

/// The response directives `storable` consults more than once.
struct Directives {
    public: bool,
    no_cache: bool,
    s_maxage: bool,
    must_revalidate: bool,
    no_store: bool,
    private: bool,
    must_understand: bool,
}

impl Directives {
    fn of(cc: Option<&CacheControl>) -> Directives {
        let has = |f: fn(&CacheControl) -> bool| cc.is_some_and(f);
        Directives {
            public: has(CacheControl::public),
            no_cache: has(CacheControl::no_cache),
            // An invalid s-maxage still says "shared caches, validate": count it.
            s_maxage: cc.is_some_and(|c| !matches!(c.s_maxage(), Ok(None))),
            must_revalidate: has(CacheControl::must_revalidate),
            no_store: has(CacheControl::no_store),
            private: has(CacheControl::private),
            must_understand: cc.is_some_and(|c| c.has_key("must-understand")),
        }
    }
}

/// §3: a method whose responses we can reuse (HEAD is filled as GET by Pingora), and a final
/// status we understand (a 206 is part of something we never asked for whole).
fn storable_exchange(req: &RequestHeader, resp: &ResponseHeader) -> Result<(), Refusal> {
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        return Err(Refusal::Method);
    }
    let status = resp.status.as_u16();
    if !(200..600).contains(&status) || status == 206 || status == 304 {
        return Err(Refusal::Status);
    }
    Ok(())
}

/// What the request and the response allow a shared cache to store (§3, §3.5, §4.1, §5.2).
fn permitted(req: &RequestHeader, resp: &ResponseHeader, d: &Directives) -> Result<(), Refusal> {
    if CacheControl::from_req_headers(req).is_some_and(|c| c.no_store()) {
        return Err(Refusal::RequestNoStore); // §5.2.1.5
    }
    // §5.2.2.3: must-understand on a status whose caching rules we implement overrides
    // no-store (an origin sends both so that older caches, which ignore it, do not store).
    let understood = d.must_understand && understood_status(resp.status.as_u16());
    if d.no_store && !understood {
        return Err(Refusal::NoStore); // §5.2.2.5
    }
    if d.private {
        return Err(Refusal::Private); // §5.2.2.7: a shared cache MUST NOT store it
    }
    // §3.5: responses to authenticated requests only with explicit permission.
    if req.headers.contains_key(http::header::AUTHORIZATION)
        && !(d.public || d.s_maxage || d.must_revalidate)
    {
        return Err(Refusal::Authorization);
    }
    if resp.headers.contains_key(http::header::SET_COOKIE) && !d.public {
        return Err(Refusal::SetCookie);
    }
    // §4.1: `Vary: *` never matches a later request, so storing it is useless.
    if resp.headers.get_all(http::header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii() == b"*")
    }) {
        return Err(Refusal::VaryStar);
    }
    Ok(())
}

/// Statuses whose caching semantics this cache implements (RFC 9110 §15), for §5.2.2.3.
fn understood_status(status: u16) -> bool {
    matches!(
        status,
        200 | 203 | 204 | 300 | 301 | 302 | 303 | 307 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The header as stored: fields named by `private=`/`no-cache=` removed (§5.2.2.4, §5.2.2.7),
/// `Age` replaced by the corrected initial age (hits add their resident time, §4.2.3).
fn stored_header(
    resp: &ResponseHeader,
    cc: Option<&CacheControl>,
    initial_age: Duration,
) -> ResponseHeader {
    let mut header = resp.clone();
    if let Some(cc) = cc {
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
    header.remove_header(&http::header::AGE);
    let age_secs = initial_age.as_secs();
    if age_secs > 0 {
        let _ = header.insert_header(http::header::AGE, age_secs);
    }
    header
}

/// §4.2.1: s-maxage, then max-age, then Expires − Date; otherwise the §4.2.2 heuristic.
/// `None` when the response carries no freshness information at all.
fn freshness_lifetime(
    resp: &ResponseHeader,
    cc: Option<&CacheControl>,
    date: SystemTime,
    public: bool,
    heuristic: Heuristic,
    default_ttl: Option<Duration>,
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
    if default_ttl.is_some() {
        return default_ttl; // the operator's TTL for responses without explicit freshness
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

pub(crate) fn header_date(
    resp: &ResponseHeader,
    name: http::header::HeaderName,
) -> Option<SystemTime> {
    parse_http_date(resp.headers.get(name)?.to_str().ok()?)
}

/// An HTTP-date in any of the three formats of RFC 9110 §5.6.7 (IMF-fixdate, RFC 850,
/// asctime), with day and month names in any case; the zone must be `GMT`.
pub fn parse_http_date(v: &str) -> Option<SystemTime> {
    let v = v.trim();
    if let Ok(t) = httpdate::parse_http_date(v) {
        return Some(t);
    }
    // Recipients parse names case-insensitively (§5.6.7); the parser wants `Sun`, `Nov`.
    let mut canon = String::with_capacity(v.len());
    let mut word_start = true;
    for c in v.chars() {
        if c.is_ascii_alphabetic() {
            canon.push(if word_start {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            });
            word_start = false;
        } else {
            canon.push(c);
            word_start = true;
        }
    }
    // The zone is a name too; asctime has none.
    let canon = match canon.strip_suffix("Gmt") {
        Some(s) => format!("{s}GMT"),
        None => canon,
    };
    httpdate::parse_http_date(&canon)
        .ok()
        .or_else(|| with_right_day_name(&canon))
}

/// `v` parsed with its day name replaced: the name is redundant (the date fixes the day) and
/// §5.6.7 asks recipients to be lenient, so `Thu Aug  8 … 2050` (a Monday) is still that date.
/// Everything else about the format must already be right.
fn with_right_day_name(v: &str) -> Option<SystemTime> {
    const SHORT: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const LONG: [&str; 7] = [
        "Monday",
        "Tuesday",
        "Wednesday",
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
    ];
    let end = v.find(|c: char| !c.is_ascii_alphabetic())?;
    let (day, rest) = v.split_at(end);
    let names = match day.len() {
        3 => SHORT,
        6..=9 => LONG,
        _ => return None,
    };
    names
        .iter()
        .find_map(|d| httpdate::parse_http_date(&format!("{d}{rest}")).ok())
}

/// What the request's own directives (§5.2.1) do to a stored response: `ForceExpired` makes
/// Pingora validate it first, `ForceFresh` serves it stale as the client allowed. `None`
/// leaves the decision to the stored freshness. Unless `honor_reload` (a route's
/// `client_cache_control: honor`), `no-cache`, `max-age` and `Pragma: no-cache` are ignored:
/// they would let any client send every request to the origin. `min-fresh` and `max-stale`
/// count either way.
pub fn on_hit(
    req: &RequestHeader,
    meta: &CacheMeta,
    now: SystemTime,
    honor_reload: bool,
    targeted_fields: &[http::HeaderName],
) -> Option<ForcedFreshness> {
    let Some(cc) = CacheControl::from_req_headers(req) else {
        if !honor_reload {
            return None;
        }
        // §5.4: `Pragma: no-cache` counts only when there is no Cache-Control.
        let pragma = req.headers.get(http::header::PRAGMA)?;
        return pragma
            .as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"no-cache"))
            .then_some(ForcedFreshness::ForceExpired);
    };
    if honor_reload && cc.no_cache() {
        return Some(ForcedFreshness::ForceExpired); // §5.2.1.4
    }
    let age = current_age(meta, now);
    if let (true, Ok(Some(max_age))) = (honor_reload, cc.max_age()) {
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
        let stored = targeted::response_cc(meta.response_header(), targeted_fields);
        let forbidden = stale::origin_forbids_stale(stored.as_ref());
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
mod input_tests;
#[cfg(test)]
mod tests;
