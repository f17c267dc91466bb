//! What a response of a caching route says about the cache: `Age` when it was served from
//! storage, `Cache-Status` always, and the lookup metric. The words are [`super::status`]'s;
//! this gathers the facts from Pingora's cache state.

use super::policy::stale::StaleReason;
use super::status::{self, Facts, Served};
use super::{policy, tags, Cache, CacheCtx};
use crate::metrics;
use pingora::cache::{CachePhase, NoCacheReason};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use std::time::SystemTime;

impl Cache {
    /// `response_filter`: `Age` on responses served from storage, `Cache-Status` on every
    /// response of a caching route, and the lookup metric (by result and answering tier).
    pub fn respond(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        cx: &mut CacheCtx,
        upstream_status: u16,
    ) -> Result<&'static str> {
        if !self.forward_targeted {
            // RFC 9213 fields speak to caches; this one has read them.
            for name in &self.targeted {
                resp.remove_header(name);
            }
        }
        tags::deliver(resp, &self.tags.header, self.tags.expose);
        if !cx.enabled {
            let (value, lookup) = status::uncached(cx.rule.enabled);
            resp.insert_header(status::FIELD.clone(), value)?;
            let Some(lookup) = lookup else { return Ok("-") };
            metrics::count_lookup(lookup.label(), "none");
            return Ok(lookup.label());
        }
        let phase = session.cache.phase();
        let served = match phase {
            _ if cx.partial.served.is_some() => Served::PartialHit,
            CachePhase::Hit => Served::Hit {
                coalesced: session.cache.lock_duration().is_some(),
            },
            CachePhase::StaleUpdating => Served::StaleWhileRevalidate,
            CachePhase::Stale => {
                Served::StaleOnError(cx.stale_reason.unwrap_or(StaleReason::IfError))
            }
            CachePhase::Revalidated | CachePhase::RevalidatedNoCache(_) => Served::Revalidated,
            _ => Served::Origin {
                bypass: matches!(phase, CachePhase::Bypass),
            },
        };
        let mut ttl = 0;
        if let Some((age, left)) = cx.partial.served {
            cx.from_cache = true;
            resp.insert_header(http::header::AGE, age)?;
            ttl = left;
        } else if !matches!(served, Served::Origin { .. }) {
            cx.from_cache = true;
            let now = SystemTime::now();
            let meta = session.cache.cache_meta();
            resp.insert_header(http::header::AGE, policy::current_age(meta, now).as_secs())?;
            ttl = policy::ttl_secs(meta, now);
        }
        let facts = Facts {
            served,
            ttl,
            upstream_status,
            forced: cx.forced,
            had_stale: cx.had_stale,
            stored: cx.partial.storing()
                || cx.stored && (matches!(served, Served::Revalidated) || session.cache.enabled()),
            refusal: cx.refusal,
            had_partial: cx.partial.had,
            unstorable: cx.partial.unstorable,
            disabled: match phase {
                CachePhase::Disabled(r) => Some(reason_label(r)),
                _ => None,
            },
        };
        let (value, lookup) = status::cache_status(&facts);
        // Misses and passes were answered by no tier.
        let tier = cx.tier.filter(|_| cx.from_cache).unwrap_or("none");
        metrics::count_lookup(lookup.label(), tier);
        resp.insert_header(status::FIELD.clone(), value)?;
        Ok(lookup.label())
    }
}

/// Pingora's reasons for not caching, in the words `Cache-Status` uses.
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
