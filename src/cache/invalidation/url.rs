//! Purging one URL (every Vary variant), hard or soft. Hard is [`Tiered::purge_all`] (delete
//! from both tiers, plus the URL's fleet purge marker). Soft keeps the body for revalidation:
//! this node's memory copy and the memcached copy are marked expired in place (Pingora's
//! `Storage::expire`), and the URL's fleet marker makes every other node drop its memory copy
//! and read the expired memcached one. Vary variants in memcached cannot be listed, so the
//! marker retires them as misses: a soft URL purge is soft for the plain object only.

use crate::cache::memory::MemoryStore;
use crate::cache::tiered::Tiered;
use pingora::cache::key::CacheKey;
use pingora::cache::storage::{PurgeOutcome, PurgeTarget};
use pingora::cache::trace::Span;
use pingora::cache::Storage;
use std::time::SystemTime;

/// `Ok(found)`; `Err` when memcached could not be told (this node's copy is handled anyway).
pub async fn purge(tiered: &'static Tiered, key: &CacheKey, soft: bool) -> Result<bool, String> {
    let mode = if soft { "soft" } else { "hard" };
    crate::metrics::CACHE_INVALIDATIONS
        .with_label_values(&["url", mode])
        .inc();
    if !soft {
        let found = tiered.purge_all(key, true).await;
        super::marks::past_millisecond(super::marks::millis(SystemTime::now())).await;
        return found;
    }
    let span = Span::inactive().handle();
    let now = SystemTime::now();
    // A stored partial is never revalidated: a soft purge retires it as a hard one does.
    let mut found = tiered.forget_partial(key).await;
    if let Some(l1) = tiered.l1 {
        if let Some(e) = l1.entry(key) {
            let (mut meta, _) = MemoryStore::hit(&e);
            if meta.is_fresh(now) {
                meta.expire_at(now);
            }
            found |= l1.update_meta(key, &meta, &span).await.unwrap_or(false);
        }
    }
    if let Some(l2) = tiered.l2 {
        let compact = key.to_compact();
        let outcome = l2
            .expire(PurgeTarget::Active(&compact), &span)
            .await
            .map_err(|e| e.to_string())?;
        found |= matches!(outcome, PurgeOutcome::Expired);
        l2.set_purge_marker(&pingora::cache::key::CacheHashKey::primary(key), now)
            .await
            .map_err(|e| e.to_string())?;
    }
    super::marks::past_millisecond(super::marks::millis(now)).await;
    Ok(found)
}
