//! The two tiers as one Pingora `Storage`: L1 is this node's memory store, L2 the memcached
//! cluster every node shares. Either may be absent (memory only is the embedded default;
//! `memory.size: 0` is memcached only).
//!
//! - Lookup: L1, then L2. An L2 hit is promoted into L1 as its body streams out. An L1 copy
//!   re-checks the URL's fleet purge marker at most every `purge_check` (the purge bound), and
//!   a stale L1 copy yields to a fresher L2 one (another node may have refreshed it).
//! - Miss in both: one node per object wins a lease in memcached and fetches; the others wait
//!   for its fill (one poller per node), up to `lock_timeout`, then fetch themselves.
//! - Fill: both tiers. With L1 present the L2 commit finishes in the background, so the client
//!   never waits for memcached; with L2 alone it is awaited, so local waiters find the entry.
//! - memcached down: every L2 step fails fast (breaker) and the node behaves as memory-only.
//! - A fill in progress is readable while it arrives, by its writer and its waiters, and goes
//!   on when its client leaves (streaming partial write, [`super::fill`]).

use super::fill::{Fills, TieredMiss};
use super::fleet::Fleet;
use super::memcached::MemcachedStorage;
use super::memory::{MemoryStore, StoredMeta};
use super::promote::Promote;
use async_trait::async_trait;
use pingora::cache::key::{CacheHashKey, CacheKey};
use pingora::cache::storage::{HitHandler, MissHandler, PurgeOutcome, PurgeTarget, PurgeType};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheEntryKey, CacheMeta, Storage};
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::time::{Duration, SystemTime};

pub struct Tiered {
    pub l1: Option<&'static MemoryStore>,
    pub l2: Option<&'static MemcachedStorage>,
    /// Present with L2: the fleet shares one cache through it.
    fleet: Option<Fleet>,
    purge_check: Duration,
    /// Fills in progress, readable while they arrive (see [`super::fill`]).
    pub(super) fills: Fills,
    /// Stored partials may exist (`cache.range_misses: forward`): purges remove them too.
    pub(super) partials: bool,
}

impl Tiered {
    pub fn new(
        l1: Option<&'static MemoryStore>,
        l2: Option<&'static MemcachedStorage>,
        lock_timeout: Duration,
        purge_check: Duration,
    ) -> Tiered {
        Tiered {
            l1,
            l2,
            fleet: l2.map(|l2| Fleet::new(l2, lock_timeout)),
            purge_check,
            fills: Fills::default(),
            partials: false,
        }
    }

    /// Removes the stored partial of `key`'s object ([`super::partial`]) from both tiers. Its
    /// key is known, unlike a Vary variant's, so memcached deletes it even when no purge marker
    /// is written. True if one was removed.
    pub async fn forget_partial(&'static self, key: &CacheKey) -> bool {
        if !self.partials {
            return false;
        }
        let exact = CacheEntryKey::key_only(super::partial::key_of(key).to_compact());
        let span = pingora::cache::trace::Span::inactive().handle();
        let outcome = self
            .purge(PurgeTarget::Exact(&exact), PurgeType::Invalidation, &span)
            .await;
        matches!(outcome, Ok(PurgeOutcome::Purged(_)))
    }

    pub fn max_object(&self) -> usize {
        let l1 = self.l1.map_or(0, |m| m.max_object());
        let l2 = self.l2.map_or(0, |m| m.settings().max_object);
        l1.max(l2)
    }

    /// The tier a hit handler from [`Tiered::lookup`] reads from: an L2 hit is either
    /// memcached's own handler (no L1) or wrapped for promotion into L1.
    pub fn tier_of(&self, hit: &HitHandler) -> &'static str {
        if self.l1.is_none() || hit.as_any().is::<Promote>() {
            "memcached"
        } else {
            "memory"
        }
    }

    /// L1 then L2, without fleet coordination.
    async fn lookup_tiers(
        &'static self,
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let fill = super::invalidation::unpurged(key, Ok(self.fills.lookup(key))).await?;
        if let Some(found) = fill {
            return Ok(Some(found)); // the freshest copy there is, streaming in
        }
        let now = SystemTime::now();
        let mut stale_l1 = None;
        if let Some(l1) = self.l1 {
            if let Some(e) = l1.entry(key) {
                let (v, mut purged) = super::invalidation::on_lookup(key, &e).await;
                if let (Some(fleet), true) = (&self.fleet, e.claim_check(now, self.purge_check)) {
                    // Unknown (memcached could not say) serves the copy, as a purge marker
                    // that cannot be read does everywhere; it is asked again after purge_check.
                    // Boxed, like every rare branch of a lookup: a lookup's future is as large as
                    // its largest state, and 1000 lookups waiting for memcached held ~5 KiB each.
                    purged |= Box::pin(fleet.purged_since(key, e.created())).await == Some(true);
                }
                if purged {
                    l1.remove_key(key);
                } else if (e.is_fresh(now) && v.is_keep()) || self.l2.is_none() {
                    return Ok(Some(MemoryStore::hit(&e)));
                } else {
                    stale_l1 = Some(e);
                }
            }
        }
        if let Some(l2) = self.l2 {
            match super::invalidation::unpurged(key, l2.lookup(key, trace).await).await {
                Ok(Some((meta, hit))) => {
                    if let Some(e) = &stale_l1 {
                        if meta.updated() <= e.updated() {
                            return Ok(Some(MemoryStore::hit(e)));
                        }
                    }
                    return Ok(Some(self.promote(key, meta, hit)));
                }
                Ok(None) => {}
                Err(e) => log::debug!("L2 lookup failed, trying the origin: {e}"),
            }
        }
        Ok(stale_l1.map(|e| MemoryStore::hit(&e)))
    }

    /// L1 then L2, without the fleet's lease: for entries no fill coordinates (stored partials,
    /// [`super::partial`]). Purge markers apply as for any lookup.
    pub async fn peek(&'static self, key: &CacheKey) -> Result<Option<(CacheMeta, HitHandler)>> {
        let span = pingora::cache::trace::Span::inactive().handle();
        self.lookup_tiers(key, &span).await
    }

    fn promote(&self, key: &CacheKey, meta: CacheMeta, hit: HitHandler) -> (CacheMeta, HitHandler) {
        let Some(l1) = self.l1 else {
            return (meta, hit);
        };
        let promote = Promote::new(hit, l1, key, StoredMeta::from_meta(&meta));
        (meta, Box::new(promote))
    }

    /// For a background refresh: whether this node may go to the origin (see [`Fleet`]).
    pub async fn may_refresh(&'static self, key: &CacheKey) -> bool {
        match &self.fleet {
            Some(f) => f.may_refresh(key).await,
            None => true,
        }
    }

    /// Ends this node's fleet lease on `key`, if any (see [`Fleet::release`]).
    pub fn release(&'static self, key: &CacheKey, pass: bool) {
        if let Some(f) = &self.fleet {
            f.release(key, pass);
        }
    }

    /// Removes `key` and every variant from both tiers. `Err` when the shared tier could not be
    /// told. `mark`: also write the fleet's purge marker, so
    /// other nodes drop their memory copies within `purge_check`; without it they keep them
    /// until they expire (the bound on invalidation markers, see `purge`).
    pub async fn purge_all(
        &'static self,
        key: &CacheKey,
        mark: bool,
    ) -> std::result::Result<bool, String> {
        let compact = key.to_compact();
        self.fills
            .forget(u128::from_be_bytes(compact.combined_bin()));
        let mut found = self.l1.is_some_and(|l1| l1.purge_all(&compact));
        if let (Some(l2), Some(fleet)) = (self.l2, &self.fleet) {
            if mark {
                fleet.mark_purged(key).await?;
            }
            let outcome = l2
                .purge(
                    PurgeTarget::Active(&compact),
                    PurgeType::Invalidation,
                    &pingora::cache::trace::Span::inactive().handle(),
                )
                .await
                .map_err(|e| e.to_string())?;
            found |= matches!(outcome, PurgeOutcome::Purged(_));
        }
        found |= self.forget_partial(key).await;
        Ok(found)
    }
}

#[async_trait]
impl Storage for Tiered {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        if let Some(found) = self.lookup_tiers(key, trace).await? {
            return Ok(Some(found));
        }
        let Some(fleet) = &self.fleet else {
            return Ok(None);
        };
        match Box::pin(fleet.coalesce(key, || self.lookup_tiers(key, trace))).await? {
            Some(found) => Ok(Some(found)),
            // The lookup waited for memcached: a fill of this node may have finished meanwhile.
            None => Ok(self.fills.landed(self.l1, key).await),
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let l1 = match self.l1 {
            Some(l1) => match l1.get_miss_handler(key, meta, trace).await {
                Ok(m) => Some(m),
                Err(e) => {
                    self.release(key, true); // no fill follows: waiters must not wait for one
                    return Err(e);
                }
            },
            None => None,
        };
        let l2 = match self.l2 {
            Some(l2) => l2.get_miss_handler(key, meta, trace).await.ok(),
            None => None,
        };
        if l1.is_none() && l2.is_none() {
            self.release(key, true);
            // Pingora then passes the response through uncached, as without streaming.
            return Error::e_explain(ErrorType::InternalError, "no tier can store this object");
        }
        TieredMiss::start(self, key, meta, l1, l2)
    }

    async fn lookup_streaming_write(
        &'static self,
        _key: &CacheKey,
        tag: Option<&[u8]>,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        Ok(self.fills.lookup_tagged(tag))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        ty: PurgeType,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let mut found = false;
        self.fills
            .forget(u128::from_be_bytes(target.key().combined_bin()));
        if let Some(l1) = self.l1 {
            found |= matches!(l1.purge(target, ty, trace).await?, PurgeOutcome::Purged(_));
        }
        if let Some(l2) = self.l2 {
            found |= matches!(l2.purge(target, ty, trace).await?, PurgeOutcome::Purged(_));
        }
        Ok(super::purge::outcome(found))
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<bool> {
        let mut updated = false;
        if let Some(l1) = self.l1 {
            updated |= l1.update_meta(key, meta, trace).await?;
        }
        if let Some(l2) = self.l2 {
            updated |= l2.update_meta(key, meta, trace).await.unwrap_or(false);
        }
        self.release(key, false);
        Ok(updated)
    }

    fn support_streaming_partial_write(&self) -> bool {
        true // see super::fill: waiters stream, and a fill outlives its client
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
