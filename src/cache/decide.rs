//! The RFC 9111 decisions the hooks ask for, at the moment they ask: may this response be
//! stored, what do the client's directives demand of a hit, may a stale copy answer for this
//! failure, does the stored copy answer a conditional request. The rules are [`super::policy`]'s
//! pure functions; this reads their inputs from Pingora's session and records the outcome.

use super::policy::stale::{self as stale_policy};
use super::policy::{self, StaleDefaults, Timing};
use super::{tags, Cache, CacheCtx};
use crate::config;
use crate::metrics;
use pingora::cache::{CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::time::SystemTime;

impl Cache {
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
                merged = policy::revalidate::merge_304(resp, &r304);
                &merged
            }
            None => resp,
        };
        if let Some(partial) = self.partial_decide(session.req_header(), resp, cx, t) {
            return partial;
        }
        let (req, h, o) = (session.req_header(), self.heuristic, cx.overrides);
        match policy::storable_with(req, resp, t, h, cx.rule.stale, &self.targeted, o) {
            Ok(mut meta) => {
                tags::store(meta.response_header_mut(), &self.tags.header);
                cx.stored = true;
                RespCacheable::Cacheable(meta)
            }
            Err(reason) => {
                cx.refusal = Some(reason);
                metrics::CACHE_NOT_STORED
                    .with_label_values(&[reason.label()])
                    .inc();
                if let Some(key) = session.cache.maybe_cache_key() {
                    // Other nodes waiting for this fill would wait in vain.
                    self.storage.release(key, true);
                }
                RespCacheable::Uncacheable(NoCacheReason::Custom(reason.label()))
            }
        }
    }
    /// `cache_hit_filter`: purge markers (tag, host, prefix, all), then the client's own
    /// freshness demands (§5.2.1).
    pub async fn on_hit(
        &self,
        session: &Session,
        meta: &CacheMeta,
        hit: &pingora::cache::HitHandler,
        cx: &mut CacheCtx,
    ) -> Option<pingora::cache::ForcedFreshness> {
        cx.tier = Some(self.storage.tier_of(hit));
        let marked = self.inv.on_hit(session.req_header(), meta).await;
        // With `honor`, a request that waited on another's revalidation (the cache lock) is
        // answered by its result: forcing again would send each waiter to the origin in turn.
        let honor = cx.rule.client_cache_control == config::ClientCacheControl::Honor
            && session.cache.lock_duration().is_none();
        let forced = policy::on_hit(
            session.req_header(),
            meta,
            SystemTime::now(),
            honor,
            &self.targeted,
        );
        cx.forced = matches!(forced, Some(pingora::cache::ForcedFreshness::ForceExpired));
        match marked {
            Some(pingora::cache::ForcedFreshness::ForceMiss) => marked,
            _ => forced.or(marked),
        }
    }
    /// `should_serve_stale`: whether a stored stale copy may answer for this failure (§4.2.4,
    /// RFC 5861); `by_rules` are the windows rules give the stored response. Without an error (stale-while-revalidate) the stored window decides alone.
    pub fn may_serve_stale(
        &self,
        session: &Session,
        cx: &mut CacheCtx,
        error: Option<&pingora::Error>,
        by_rules: Option<StaleDefaults>,
    ) -> bool {
        let Some(error) = error else { return true };
        let Some(meta) = session.cache.maybe_cache_meta() else {
            return false;
        };
        let stale_for = SystemTime::now()
            .duration_since(meta.fresh_until())
            .map_or(0, |d| d.as_secs());
        let cc = policy::targeted::response_cc(meta.response_header(), &self.targeted);
        // A rule's stale windows stand in for the route's, as when the copy was stored.
        let defaults = by_rules.map_or(cx.rule.stale, |r| StaleDefaults {
            on_disconnect: cx.rule.stale.on_disconnect,
            ..r
        });
        let (_, origin_if_error) = stale_policy::origin_windows(cc.as_ref(), defaults);
        cx.stale_reason = stale_policy::may_serve_stale(
            stale_policy::classify(error),
            stale_for,
            origin_if_error,
            cx.rule.stale.on_disconnect,
        );
        cx.stale_reason.is_some()
    }
    /// `cache_not_modified_filter`: whether the stored response answers the client's
    /// conditional request with 304.
    pub fn not_modified(&self, req: &RequestHeader, resp: &ResponseHeader) -> bool {
        policy::conditional::not_modified(req, resp)
    }
}
