//! HTTP caching: what the proxy hooks call. Policy lives in [`policy`] (pure RFC 9111 rules),
//! keys in [`key`], `Cache-Status` in [`status`] (gathered by [`respond`]), purge and §4.4
//! invalidation in [`purge`], fills in [`fill`],
//! the two tiers in [`tiered`] (with [`fleet`] coordinating nodes); this module wires them to
//! Pingora's cache state machine.

mod decide;
pub mod fill;
pub mod fleet;
pub mod inspect;
pub mod invalidation;
pub mod key;
pub mod memcached;
pub mod memory;
pub mod partial;
pub mod policy;
mod promote;
pub mod purge;
mod respond;
pub mod resume;
pub mod status;
pub mod stored;
pub mod tags;
pub mod tiered;
mod vary;

pub use memcached::Probe;

use crate::config;
use crate::metrics;
use memcached::MemcachedStorage;
use memory::MemoryStore;
use pingora::cache::key::HashBinary;
use pingora::cache::lock::{CacheKeyLockImpl, CacheLock};
use pingora::cache::predictor::Predictor;
use pingora::cache::{CacheMeta, CacheOptionOverrides, CachePhase};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::Result;
use policy::stale::StaleReason;
use policy::{Heuristic, Refusal, StaleDefaults};
use std::time::{Duration, SystemTime};
use tiered::Tiered;

/// What the cache does for one route's requests: the part of a route the cache needs.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheRule {
    /// Answer from the cache where HTTP allows it.
    pub enabled: bool,
    /// Stale windows for responses that name none.
    pub stale: StaleDefaults,
    /// Whether the client's no-cache / max-age may force revalidation.
    pub client_cache_control: config::ClientCacheControl,
}

impl CacheRule {
    pub fn for_route(r: &config::Route) -> CacheRule {
        let secs = |d: Duration| d.as_secs().min(u32::MAX as u64) as u32;
        CacheRule {
            enabled: r.cache,
            stale: StaleDefaults {
                while_revalidate: secs(r.stale_while_revalidate),
                if_error: secs(r.stale_if_error),
                // Cache-wide; `Cache::enable` fills it in.
                on_disconnect: 0,
            },
            client_cache_control: r.client_cache_control,
        }
    }
}

/// Per-request cache facts, filled in by the hooks as the request moves along.
#[derive(Default)]
pub struct CacheCtx {
    /// The route caches and the method is GET or HEAD.
    pub enabled: bool,
    rule: CacheRule,
    request_sent: Option<SystemTime>,
    /// The origin's 304 during revalidation, merged into the stored header (§3.2).
    revalidation: Option<Box<ResponseHeader>>,
    stored: bool,
    refusal: Option<Refusal>,
    /// The client's directives forced validation (§5.2.1).
    forced: bool,
    had_stale: bool,
    /// Why a stale copy stood in for the origin's answer.
    stale_reason: Option<StaleReason>,
    /// The tier that answered the lookup (`memory`, `memcached`), for the lookup metric.
    tier: Option<&'static str>,
    /// The response body comes from the cache (counted as served bytes).
    pub from_cache: bool,
    /// Freshness set by rules for the origin's answer.
    pub overrides: policy::Overrides,
    /// Partial content (RFC 9111 §3.3, §3.4): see [`partial::flow`].
    pub partial: partial::flow::Flow,
}

/// Request-dependent refusals: the Predictor must not remember them for the URL. The answer
/// to a forwarded range is one of them: it says nothing about the whole object.
fn request_specific(label: &'static str) -> bool {
    label == partial::FORWARDED || Refusal::from_label(label).is_some_and(Refusal::request_specific)
}

pub struct Cache {
    storage: &'static Tiered,
    lock: &'static CacheKeyLockImpl,
    predictor: &'static Predictor<32>,
    lock_timeout: Duration,
    max_object: usize,
    heuristic: Heuristic,
    /// RFC 9213 targeted fields, in order of precedence.
    targeted: Vec<http::HeaderName>,
    forward_targeted: bool,
    /// `cache.stale_on_disconnect`, whole seconds.
    on_disconnect: u32,
    vary_normalize: Vec<http::HeaderName>,
    purger: purge::Purger,
    inv: &'static invalidation::Invalidator,
    tags: config::Tags,
    range_misses: config::RangeMisses,
}

impl Cache {
    /// Builds the process-wide cache parts. Pingora needs them `'static`; they live as long as
    /// the process, so leaking them once at start-up is the honest lifetime.
    pub fn new(conf: &config::Cache, admin: &config::Admin) -> Cache {
        let l1: Option<&'static MemoryStore> = (conf.memory.size > 0).then(|| {
            &*Box::leak(Box::new(MemoryStore::new(
                conf.memory.size as usize,
                conf.memory.max_object as usize,
            )))
        });
        let l2: Option<&'static MemcachedStorage> = conf.memcached.as_ref().map(|m| {
            metrics::init_memcached();
            metrics::init_fleet();
            &*Box::leak(Box::new(MemcachedStorage::new(m.clone())))
        });
        let purge_check = conf
            .memcached
            .as_ref()
            .map_or(Duration::from_secs(1), |m| m.purge_check);
        let mut tiered = Tiered::new(l1, l2, conf.lock_timeout, purge_check);
        tiered.partials = conf.range_misses == config::RangeMisses::Forward;
        let storage: &'static Tiered = Box::leak(Box::new(tiered));
        let lock: &'static CacheLock = Box::leak(CacheLock::new_boxed(conf.lock_timeout));
        let inv = &*Box::leak(Box::new(invalidation::Invalidator::new(l2, purge_check)));
        invalidation::install(inv);
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
            targeted: conf.targeted_fields.clone(),
            forward_targeted: conf.forward_targeted_fields,
            on_disconnect: conf.stale_on_disconnect.as_secs().min(u32::MAX as u64) as u32,
            vary_normalize: conf.vary_normalize.clone(),
            purger: purge::Purger {
                storage,
                inv,
                allow: admin.purge_allow.clone(),
                token: admin.purge_token.clone(),
                invalidate_on: conf
                    .invalidate_on
                    .iter()
                    .map(|m| http::Method::from_bytes(m.as_bytes()).expect("validated"))
                    .collect(),
                fleet_budget: conf
                    .memcached
                    .as_ref()
                    .map(|m| purge::Bucket::per_second(m.invalidations_per_second)),
            },
            inv,
            tags: conf.tags.clone(),
            range_misses: conf.range_misses,
        }
    }

    /// `request_cache_filter`: turn caching on for GET and HEAD on caching routes.
    pub fn enable(&self, session: &mut Session, rule: &CacheRule, cx: &mut CacheCtx) {
        cx.rule = *rule;
        cx.rule.stale.on_disconnect = self.on_disconnect;
        if !rule.enabled || !matches!(session.req_header().method.as_str(), "GET" | "HEAD") {
            return;
        }
        cx.enabled = true;
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
        vary::variance(meta.headers(), req, &self.vary_normalize)
    }

    /// `upstream_request_filter`: when the request left for the origin (§4.2.3).
    pub fn request_sent(&self, cx: &mut CacheCtx) {
        cx.request_sent = Some(SystemTime::now());
    }

    /// `proxy_upstream_filter`: record what the cache knew before going to the origin, and
    /// answer `only-if-cached` misses with 504 (§5.2.1.7). `Ok(false)` = do not go upstream.
    /// The directive is for caches: a route that does not cache is not one, and ignores it.
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
        if cx.enabled && policy::only_if_cached(session.req_header()) {
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
    ) {
        if resp.status.as_u16() == 304 && matches!(session.cache.phase(), CachePhase::Stale) {
            cx.revalidation = Some(Box::new(resp.clone()));
        }
        self.purger.after_unsafe(session, resp, &cx.rule).await;
    }

    /// The memcached tier, for the start-up probe.
    pub fn shared_tier(&self) -> Option<&'static MemcachedStorage> {
        self.storage.l2
    }

    /// `logging`: a request that went to the origin (or tried to: every backend may have
    /// refused) and stored nothing ends this node's fleet lease for the object, so other nodes
    /// stop waiting for a fill that will not come. Storable but not stored counts: Pingora
    /// disables the cache for a Content-Length over `max_object` after `decide`.
    pub fn done(&self, session: &Session, cx: &CacheCtx, went_upstream: bool) {
        // Only a request that fetched can end a fetch; local hits and waiters must not.
        if cx.enabled && went_upstream && !(cx.stored && session.cache.enabled()) {
            if let Some(key) = session.cache.maybe_cache_key() {
                self.storage.release(key, true);
            }
        }
    }

    /// What `POST /purge` on the admin listener acts on.
    pub fn purge_handle(&self) -> (&'static Tiered, &'static invalidation::Invalidator) {
        (self.storage, self.inv)
    }

    /// What `GET /cache` on the admin listener reads (see [`inspect`]).
    pub fn inspector(&self) -> inspect::Inspector {
        inspect::Inspector::new(self.storage, self.inv)
    }

    /// `request_filter` for the `PURGE` method, from the real `client`.
    pub async fn purge(
        &self,
        session: &mut Session,
        client: Option<std::net::IpAddr>,
    ) -> Result<()> {
        self.purger.purge(session, client).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictor_forgets_only_request_specific_refusals() {
        assert!(request_specific(Refusal::Authorization.label()));
        assert!(request_specific(Refusal::Method.label()));
        assert!(!request_specific(Refusal::Private.label()));
        assert!(!request_specific("too-large"));
        assert!(
            request_specific(partial::FORWARDED),
            "a range's answer is not the URL's"
        );
    }
}
