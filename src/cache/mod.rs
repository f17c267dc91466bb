//! HTTP caching: what the proxy hooks call. Policy lives in [`policy`] (pure RFC 9111 rules),
//! keys in [`key`], storage in [`memory`]; this module wires them to Pingora's cache state
//! machine and reports each outcome in `Cache-Status` (RFC 9211), `Age` and metrics.

pub mod key;
pub mod memcached;
pub mod memory;
pub mod policy;
pub mod tiered;
mod vary;

use crate::config::{self, Cidr};
use crate::metrics;
use memcached::{MemcachedSettings, MemcachedStorage};
use memory::MemoryStore;
use pingora::cache::key::HashBinary;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::predictor::Predictor;
use pingora::cache::{CacheMeta, CacheOptionOverrides, CachePhase, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::Result;
use policy::{Heuristic, StaleDefaults, Timing};
use std::time::{Duration, SystemTime};
use tiered::Tiered;

/// Per-request cache facts, filled in by the hooks as the request moves along.
#[derive(Default)]
pub struct CacheCtx {
    /// The route caches and the method is GET or HEAD.
    pub enabled: bool,
    route_caches: bool,
    stale: StaleDefaults,
    request_sent: Option<SystemTime>,
    /// The origin's 304 during revalidation, merged into the stored header (§3.2).
    revalidation: Option<Box<ResponseHeader>>,
    stored: bool,
    refusal: Option<&'static str>,
    /// The client's directives forced validation (§5.2.1).
    forced: bool,
    had_stale: bool,
    /// The tier that answered the lookup (`memory`, `memcached`), for the lookup metric.
    tier: Option<&'static str>,
    /// The response body comes from the cache (counted as served bytes).
    pub from_cache: bool,
}

/// Request-dependent refusals: the Predictor must not remember them for the URL.
fn request_specific(reason: &'static str) -> bool {
    matches!(reason, "request-no-store" | "authorization" | "method")
}

pub struct Cache {
    storage: &'static Tiered,
    lock: &'static CacheKeyLockImpl,
    predictor: &'static Predictor<32>,
    lock_timeout: Duration,
    max_object: usize,
    heuristic: Heuristic,
    purge_allow: Vec<Cidr>,
}

impl Cache {
    /// Builds the process-wide cache parts. Pingora needs them `'static`; they live as long as
    /// the process, so leaking them once at start-up is the honest lifetime.
    pub fn new(conf: &config::Cache, purge_allow: Vec<Cidr>) -> Cache {
        let l1: Option<&'static MemoryStore> = (conf.memory.size > 0).then(|| {
            &*Box::leak(Box::new(MemoryStore::new(
                conf.memory.size as usize,
                conf.memory.max_object as usize,
            )))
        });
        let l2: Option<&'static MemcachedStorage> = conf.memcached.as_ref().map(|m| {
            metrics::init_memcached();
            metrics::init_fleet();
            &*Box::leak(Box::new(MemcachedStorage::new(memcached_settings(m))))
        });
        let purge_check = conf
            .memcached
            .as_ref()
            .map_or(Duration::from_secs(1), |m| m.purge_check);
        let storage: &'static Tiered = Box::leak(Box::new(Tiered::new(
            l1,
            l2,
            conf.lock_timeout,
            purge_check,
        )));
        let lock: &'static CacheLock = Box::leak(CacheLock::new_boxed(conf.lock_timeout));
        Cache {
            storage,
            lock,
            // 32 shards × 1024 URLs remembered as uncacheable (hit-for-pass): they skip the
            // lookup and the lock, so an uncacheable URL is never serialised behind itself.
            predictor: Box::leak(Box::new(Predictor::new(1024, Some(request_specific)))),
            lock_timeout: conf.lock_timeout,
            max_object: storage.max_object(),
            heuristic: Heuristic {
                fraction: conf.heuristic_fraction,
                max: conf.heuristic_max,
            },
            purge_allow,
        }
    }

    /// `request_cache_filter`: turn caching on for GET and HEAD on caching routes.
    pub fn enable(&self, session: &mut Session, route: &crate::route::Route, cx: &mut CacheCtx) {
        cx.route_caches = route.cache;
        if !route.cache || !matches!(session.req_header().method.as_str(), "GET" | "HEAD") {
            return;
        }
        cx.enabled = true;
        cx.stale = route.stale;
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(self.lock_timeout);
        session.cache.enable(
            self.storage,
            None,
            Some(self.predictor),
            Some(self.lock),
            Some(overrides),
        );
        session.cache.set_max_file_size_bytes(self.max_object);
    }

    pub fn key(&self, session: &Session) -> pingora::cache::CacheKey {
        key::for_request(session.req_header())
    }

    pub fn vary(&self, meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
        vary::variance(meta.headers(), req)
    }

    /// `upstream_request_filter`: when the request left for the origin (§4.2.3).
    pub fn request_sent(&self, cx: &mut CacheCtx) {
        cx.request_sent = Some(SystemTime::now());
    }

    /// `proxy_upstream_filter`: record what the cache knew before going to the origin, and
    /// answer `only-if-cached` misses with 504 (§5.2.1.7). `Ok(false)` = do not go upstream.
    pub async fn before_upstream(&self, session: &mut Session, cx: &mut CacheCtx) -> Result<bool> {
        cx.had_stale = matches!(session.cache.phase(), CachePhase::Stale);
        // A background stale-while-revalidate refresh: once per object per fleet, not per node.
        if cx.had_stale && session.subrequest_ctx.is_some() {
            if let Some(key) = session.cache.maybe_cache_key() {
                if !self.storage.may_refresh(key).await {
                    return Ok(false);
                }
            }
        }
        if policy::only_if_cached(session.req_header()) {
            let mut resp = ResponseHeader::build(504, Some(3))?;
            resp.insert_header(http::header::CONTENT_LENGTH, 0)?;
            resp.insert_header("cache-status", "shellac; fwd=miss; detail=only-if-cached")?;
            session.write_response_header(Box::new(resp), true).await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// `upstream_response_filter`: keep the origin's 304 for the header merge, and invalidate
    /// after unsafe methods (§4.4).
    pub async fn upstream_response(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        cx: &mut CacheCtx,
        route: &crate::route::Route,
    ) {
        let status = resp.status.as_u16();
        if status == 304 && matches!(session.cache.phase(), CachePhase::Stale) {
            cx.revalidation = Some(Box::new(resp.clone()));
        }
        let req = session.req_header();
        if route.cache && policy::invalidates(&req.method, status) {
            let authority = crate::route::request_authority(req);
            let mut n = self.invalidate(authority, key::path_and_query(req)).await;
            for h in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
                if let Some(path) = resp
                    .headers
                    .get(&h)
                    .and_then(|v| same_origin_path(v.as_bytes(), authority))
                {
                    n += self.invalidate(authority, path).await;
                }
            }
            metrics::CACHE_PURGES
                .with_label_values(&["invalidated"])
                .inc_by(n);
        }
    }

    async fn invalidate(&self, authority: &str, path: &[u8]) -> u64 {
        let key = key::build(authority, path);
        match self.storage.purge_all(&key).await {
            Ok(found) => found as u64,
            Err(e) => {
                log::warn!("invalidation did not reach the shared tier: {e}");
                0
            }
        }
    }

    /// The memcached tier, for the start-up probe.
    pub fn shared_tier(&self) -> Option<&'static MemcachedStorage> {
        self.storage.l2
    }

    /// `logging`: a request that went to the origin and stored nothing ends this node's fleet
    /// lease for the object, so other nodes stop waiting for a fill that will not come.
    pub fn done(&self, session: &Session, cx: &CacheCtx, went_upstream: bool) {
        // Only a request that fetched can end a fetch; local hits and waiters must not.
        if cx.enabled && went_upstream && !cx.stored {
            if let Some(key) = session.cache.maybe_cache_key() {
                self.storage.release(key, true);
            }
        }
    }

    /// `response_cache_filter`: the RFC 9111 decision for this response.
    pub fn decide(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        cx: &mut CacheCtx,
    ) -> RespCacheable {
        let now = SystemTime::now();
        let t = Timing {
            request_sent: cx.request_sent.unwrap_or(now),
            response_received: now,
        };
        let merged;
        let resp = match cx.revalidation.take() {
            Some(r304) => {
                merged = merge_304(resp, &r304);
                &merged
            }
            None => resp,
        };
        match policy::storable(session.req_header(), resp, t, self.heuristic, cx.stale) {
            Ok(meta) => {
                cx.stored = true;
                RespCacheable::Cacheable(meta)
            }
            Err(reason) => {
                cx.refusal = Some(reason);
                metrics::CACHE_NOT_STORED.with_label_values(&[reason]).inc();
                if let Some(key) = session.cache.maybe_cache_key() {
                    // Other nodes waiting for this fill would wait in vain.
                    self.storage.release(key, true);
                }
                RespCacheable::Uncacheable(NoCacheReason::Custom(reason))
            }
        }
    }

    /// `cache_hit_filter`: the client's own freshness demands (§5.2.1).
    pub fn on_hit(
        &self,
        session: &Session,
        meta: &CacheMeta,
        hit: &pingora::cache::HitHandler,
        cx: &mut CacheCtx,
    ) -> Option<pingora::cache::ForcedFreshness> {
        cx.tier = Some(self.storage.tier_of(hit));
        let forced = policy::on_hit(session.req_header(), meta, SystemTime::now());
        cx.forced = matches!(forced, Some(pingora::cache::ForcedFreshness::ForceExpired));
        forced
    }

    /// `response_filter`: `Age` on responses served from storage, `Cache-Status` on every
    /// response of a caching route, and the lookup metric (by result and answering tier).
    pub fn respond(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        cx: &mut CacheCtx,
        upstream_status: u16,
    ) -> Result<&'static str> {
        if !cx.enabled {
            // RFC 9211 `fwd=method`: a method whose responses are never reused; `bypass`: the
            // route does not cache.
            let why = if cx.route_caches {
                "shellac; fwd=method"
            } else {
                "shellac; fwd=bypass"
            };
            resp.insert_header("cache-status", why)?;
            if cx.route_caches {
                metrics::CACHE_LOOKUPS
                    .with_label_values(&["pass", "none"])
                    .inc();
                return Ok("pass");
            }
            return Ok("-");
        }
        let now = SystemTime::now();
        let phase = session.cache.phase();
        let from_storage = matches!(
            phase,
            CachePhase::Hit
                | CachePhase::Stale
                | CachePhase::StaleUpdating
                | CachePhase::Revalidated
                | CachePhase::RevalidatedNoCache(_)
        );
        let mut status = String::with_capacity(64);
        status.push_str("shellac; ");
        let result = if from_storage {
            cx.from_cache = true;
            let meta = session.cache.cache_meta();
            resp.insert_header(http::header::AGE, policy::current_age(meta, now).as_secs())?;
            let ttl = policy::ttl_secs(meta, now);
            match phase {
                CachePhase::Hit => {
                    push(&mut status, format_args!("hit; ttl={ttl}"));
                    if session.cache.lock_duration().is_some() {
                        status.push_str("; detail=coalesced");
                        "coalesced"
                    } else {
                        "hit"
                    }
                }
                CachePhase::StaleUpdating => {
                    push(
                        &mut status,
                        format_args!("hit; ttl={ttl}; detail=stale-while-revalidate"),
                    );
                    "stale"
                }
                CachePhase::Stale => {
                    status.push_str("fwd=stale");
                    if upstream_status >= 500 {
                        push(&mut status, format_args!("; fwd-status={upstream_status}"));
                    }
                    push(
                        &mut status,
                        format_args!("; ttl={ttl}; detail=stale-if-error"),
                    );
                    "stale"
                }
                _ => {
                    let fwd = if cx.forced { "request" } else { "stale" };
                    push(
                        &mut status,
                        format_args!("fwd={fwd}; fwd-status=304; ttl={ttl}"),
                    );
                    if !cx.stored {
                        status.push_str("; detail=not-stored");
                    }
                    "revalidated"
                }
            }
        } else {
            let fwd = if cx.forced {
                "request"
            } else if cx.had_stale {
                "stale"
            } else {
                "miss"
            };
            push(&mut status, format_args!("fwd={fwd}"));
            if upstream_status > 0 {
                push(&mut status, format_args!("; fwd-status={upstream_status}"));
            }
            if cx.stored && session.cache.enabled() {
                status.push_str("; stored");
            } else if let Some(reason) = cx.refusal {
                push(&mut status, format_args!("; detail={reason}"));
            } else if let CachePhase::Disabled(r) = phase {
                push(&mut status, format_args!("; detail={}", reason_label(r)));
            }
            if matches!(phase, CachePhase::Bypass) {
                "pass"
            } else {
                "miss"
            }
        };
        // Misses and passes were answered by no tier.
        let tier = cx.tier.filter(|_| from_storage).unwrap_or("none");
        metrics::CACHE_LOOKUPS
            .with_label_values(&[result, tier])
            .inc();
        resp.insert_header("cache-status", status)?;
        Ok(result)
    }

    /// A `PURGE` on the public listener: allowed by TCP peer address only (a forwarded-for
    /// header is never trusted for this), answered here and never forwarded. Removes every
    /// Vary variant. 200 if something was removed, 404 if not, 403 for other clients.
    pub async fn purge(&self, session: &mut Session) -> Result<()> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let allowed = peer.is_some_and(|ip| self.purge_allow.iter().any(|c| c.contains(ip)));
        let (code, result) = if !allowed {
            (403, "forbidden")
        } else {
            match self
                .storage
                .purge_all(&key::for_request(session.req_header()))
                .await
            {
                Ok(true) => (200, "purged"),
                Ok(false) => (404, "not_found"),
                Err(e) => {
                    // This node's copy is gone but the fleet was not told: the operator must
                    // retry, so this is not reported as done.
                    log::warn!("purge did not reach memcached: {e}");
                    (503, "failed")
                }
            }
        };
        metrics::CACHE_PURGES.with_label_values(&[result]).inc();
        if !session.is_body_empty() {
            // We never read a PURGE body; the connection cannot carry another request.
            session.set_keepalive(None);
        }
        let mut resp = ResponseHeader::build(code, Some(3))?;
        resp.insert_header(http::header::CONTENT_LENGTH, 0)?;
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        session.write_response_header(Box::new(resp), true).await
    }
}

/// What a store reports to Pingora for a purge that did or did not remove something (we hand
/// out no entry ids).
fn purge_outcome(found: bool) -> pingora::cache::PurgeOutcome {
    if found {
        pingora::cache::PurgeOutcome::Purged(None)
    } else {
        pingora::cache::PurgeOutcome::NotFound
    }
}

/// The adapter's settings for a `cache.memcached` section.
pub fn memcached_settings(m: &config::Memcached) -> MemcachedSettings {
    MemcachedSettings {
        servers: m.servers.clone(),
        timeout: m.timeout,
        chunk_size: m.chunk_size as usize,
        max_object: m.max_object as usize,
        namespace: m.namespace.clone(),
        ..MemcachedSettings::default()
    }
}

fn push(s: &mut String, args: std::fmt::Arguments) {
    use std::fmt::Write;
    let _ = s.write_fmt(args);
}

fn reason_label(r: NoCacheReason) -> &'static str {
    match r {
        NoCacheReason::Custom(s) => s,
        NoCacheReason::ResponseTooLarge | NoCacheReason::PredictedResponseTooLarge => "too-large",
        NoCacheReason::CacheLockTimeout => "lock-timeout",
        NoCacheReason::StorageError => "storage-error",
        NoCacheReason::OriginNotCache => "origin-not-cacheable",
        _ => "not-stored",
    }
}

/// §3.2: a 304 updates the stored header with every field it carries, except framing fields
/// (the stored body keeps its own length and coding). Pingora merges only a handful of fields;
/// this completes the merge. `Age` comes only from the 304: the old one described old bytes.
fn merge_304(stored: &ResponseHeader, r304: &ResponseHeader) -> ResponseHeader {
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

/// The path of a `Location`/`Content-Location` value if it points at the same origin: a
/// relative reference, or an absolute `http` URI with the same authority.
fn same_origin_path<'a>(value: &'a [u8], authority: &str) -> Option<&'a [u8]> {
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

/// Checks memcached once at start-up (reachable, and `chunk_size` fits its item size limit)
/// and says so in the log. Never fatal: the shared tier is a cache, and the breaker keeps a
/// failing server out of the request path.
pub struct Probe(pub &'static MemcachedStorage);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Probe {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        match self.0.probe().await {
            Ok(()) => log::info!("memcached: every server answers and accepts full-size chunks"),
            Err(e) => log::error!("memcached: {e}; requests go to the origin while it fails"),
        }
    }
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
