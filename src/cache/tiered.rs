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

use super::memcached::fleet::Lease;
use super::memcached::MemcachedStorage;
use super::memory::{MemoryStore, StoredMeta};
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora::cache::key::{CacheHashKey, CacheKey};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheMeta, Storage};
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// How often a node waiting for another node's fill asks memcached whether it is done.
const POLL: Duration = Duration::from_millis(15);

pub struct Tiered {
    pub l1: Option<&'static MemoryStore>,
    pub l2: Option<&'static MemcachedStorage>,
    node: u64,
    lock_timeout: Duration,
    purge_check: Duration,
    /// Objects this node holds the fleet lease for.
    leases: Mutex<HashSet<u128>>,
    /// One poller per object per node; local waiters watch it instead of asking memcached.
    polls: Mutex<HashMap<u128, watch::Receiver<bool>>>,
}

fn k128(key: &CacheKey) -> u128 {
    u128::from_be_bytes(key.combined_bin())
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
            node: rand::random(),
            lock_timeout,
            purge_check,
            leases: Mutex::new(HashSet::new()),
            polls: Mutex::new(HashMap::new()),
        }
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
        let now = SystemTime::now();
        let mut stale_l1 = None;
        if let Some(l1) = self.l1 {
            if let Some(e) = l1.entry(key) {
                let mut purged = false;
                if let (Some(l2), true) = (self.l2, e.check_due(now, self.purge_check)) {
                    match l2.purge_marker(&key.primary()).await {
                        Ok(Some(at)) if at >= e.created() => purged = true,
                        Ok(_) => e.mark_checked(now),
                        // memcached unreachable: keep serving, ask again next time.
                        Err(_) => {}
                    }
                }
                if purged {
                    l1.remove_key(key);
                } else if e.is_fresh(now) || self.l2.is_none() {
                    return Ok(Some(MemoryStore::hit(&e)));
                } else {
                    stale_l1 = Some(e);
                }
            }
        }
        if let Some(l2) = self.l2 {
            match l2.lookup(key, trace).await {
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

    fn promote(&self, key: &CacheKey, meta: CacheMeta, hit: HitHandler) -> (CacheMeta, HitHandler) {
        let Some(l1) = self.l1 else {
            return (meta, hit);
        };
        let promote = Promote {
            inner: hit,
            l1,
            key: key.clone(),
            meta: Some(StoredMeta::from_meta(&meta)),
            chunks: Vec::new(),
            len: 0,
        };
        (meta, Box::new(promote))
    }

    /// Nothing in any tier: make sure only one node of the fleet goes to the origin.
    async fn coalesce(
        &'static self,
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let Some(l2) = self.l2 else { return Ok(None) };
        let k = k128(key);
        if self.leases.lock().contains(&k) {
            return Ok(None); // this node fetches; Pingora's local lock orders local requests
        }
        // Decide under the lock, await outside it.
        let role = {
            let mut polls = self.polls.lock();
            match polls.get(&k) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(false);
                    polls.insert(k, rx);
                    Ok(tx)
                }
            }
        };
        let tx = match role {
            Ok(tx) => tx,
            Err(mut rx) => {
                let _ = tokio::time::timeout(self.lock_timeout, rx.wait_for(|done| *done)).await;
                return self.lookup_tiers(key, trace).await;
            }
        };
        let result = self.wait_for_fleet(l2, key, trace).await;
        self.polls.lock().remove(&k);
        let _ = tx.send(true);
        result
    }

    async fn wait_for_fleet(
        &'static self,
        l2: &'static MemcachedStorage,
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let combined = key.combined();
        let deadline = Instant::now() + self.lock_timeout;
        loop {
            match l2.try_lease(&combined, self.node, self.lock_timeout).await {
                Ok(true) => {
                    self.leases.lock().insert(k128(key));
                    crate::metrics::FLEET_LEASES
                        .with_label_values(&["won"])
                        .inc();
                    return Ok(None);
                }
                Ok(false) => {}
                Err(e) => {
                    // memcached unavailable: per-node coalescing only.
                    log::debug!("fleet lease for {combined}: {e}");
                    return Ok(None);
                }
            }
            crate::metrics::FLEET_LEASES
                .with_label_values(&["waited"])
                .inc();
            // Another node fetches: wait until its lease ends, then read what it stored.
            loop {
                if Instant::now() >= deadline {
                    crate::metrics::FLEET_LEASES
                        .with_label_values(&["timed_out"])
                        .inc();
                    return Ok(None);
                }
                tokio::time::sleep(POLL).await;
                match l2.lease_state(&combined).await {
                    Ok(Lease::Busy) => continue,
                    Ok(Lease::Pass) => return Ok(None),
                    Ok(Lease::Free) => break,
                    Err(_) => return Ok(None),
                }
            }
            if let Some(found) = self.lookup_tiers(key, trace).await? {
                crate::metrics::FLEET_FETCHES_AVOIDED.inc();
                return Ok(Some(found));
            }
            // The lease lapsed without a fill (its node died): compete for it again.
        }
    }

    /// For a background refresh (stale-while-revalidate): true if this node may go to the
    /// origin, i.e. it holds or wins the object's fleet lease. Another node refreshing means
    /// this one keeps serving stale until that refresh lands in memcached.
    pub async fn may_refresh(&'static self, key: &CacheKey) -> bool {
        let Some(l2) = self.l2 else { return true };
        if self.leases.lock().contains(&k128(key)) {
            return true;
        }
        match l2
            .try_lease(&key.combined(), self.node, self.lock_timeout)
            .await
        {
            Ok(true) => {
                self.leases.lock().insert(k128(key));
                crate::metrics::FLEET_LEASES
                    .with_label_values(&["won"])
                    .inc();
                true
            }
            Ok(false) => {
                crate::metrics::FLEET_LEASES
                    .with_label_values(&["waited"])
                    .inc();
                false
            }
            Err(_) => true, // memcached unavailable: refresh per node
        }
    }

    /// Ends this node's lease on `key` if it holds one: `pass` when no fill will follow, so
    /// waiting nodes go to the origin at once.
    pub fn release(&'static self, key: &CacheKey, pass: bool) {
        let (Some(l2), true) = (self.l2, self.leases.lock().remove(&k128(key))) else {
            return;
        };
        let combined = key.combined();
        let pass_for = pass.then_some(self.lock_timeout);
        tokio::spawn(async move {
            if let Err(e) = l2.release_lease(&combined, pass_for).await {
                log::debug!("releasing lease {combined}: {e}");
            }
        });
    }

    /// Removes `key` and its variants from every tier and, through the purge marker, from every
    /// other node's L1 within `purge_check`. `Err` when the shared tier could not be told.
    pub async fn purge_all(&'static self, key: &CacheKey) -> std::result::Result<bool, String> {
        let compact = key.to_compact();
        let mut found = self.l1.is_some_and(|l1| l1.purge_all(&compact));
        if let Some(l2) = self.l2 {
            l2.set_purge_marker(&key.primary(), SystemTime::now())
                .await
                .map_err(|e| e.to_string())?;
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
        match self.lookup_tiers(key, trace).await? {
            Some(found) => Ok(Some(found)),
            None => self.coalesce(key, trace).await,
        }
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let l1 = match self.l1 {
            Some(l1) => Some(l1.get_miss_handler(key, meta, trace).await?),
            None => None,
        };
        let l2 = match self.l2 {
            Some(l2) => l2.get_miss_handler(key, meta, trace).await.ok(),
            None => None,
        };
        if l1.is_none() && l2.is_none() {
            return Error::e_explain(ErrorType::InternalError, "no tier can store this object");
        }
        Ok(Box::new(TieredMiss {
            tiered: self,
            key: key.clone(),
            l1,
            l2,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        ty: PurgeType,
        trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let mut found = false;
        if let Some(l1) = self.l1 {
            found |= matches!(l1.purge(target, ty, trace).await?, PurgeOutcome::Purged(_));
        }
        if let Some(l2) = self.l2 {
            found |= matches!(l2.purge(target, ty, trace).await?, PurgeOutcome::Purged(_));
        }
        Ok(super::purge_outcome(found))
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
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

struct TieredMiss {
    tiered: &'static Tiered,
    key: CacheKey,
    l1: Option<MissHandler>,
    l2: Option<MissHandler>,
}

#[async_trait]
impl HandleMiss for TieredMiss {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        // A tier that refuses (too large, memcached down) drops out; the other carries on.
        if let Some(m) = &mut self.l1 {
            if m.write_body(data.clone(), eof).await.is_err() {
                self.l1 = None;
            }
        }
        if let Some(m) = &mut self.l2 {
            if m.write_body(data, eof).await.is_err() {
                self.l2 = None;
            }
        }
        if self.l1.is_none() && self.l2.is_none() {
            return Error::e_explain(ErrorType::InternalError, "no tier accepted the body");
        }
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<MissFinishType> {
        let TieredMiss {
            tiered,
            key,
            l1,
            l2,
        } = *self;
        let mut created = None;
        if let Some(m) = l1 {
            created = m.finish().await.ok();
        }
        if let Some(m) = l2 {
            if let Some(done) = created {
                // L1 already serves this node; memcached is for the rest of the fleet.
                tokio::spawn(async move {
                    let ok = m.finish().await.is_ok();
                    tiered.release(&key, !ok);
                });
                return Ok(done);
            }
            let r = m.finish().await;
            tiered.release(&key, r.is_err());
            return r;
        }
        tiered.release(&key, created.is_none());
        created.ok_or_else(|| Error::explain(ErrorType::InternalError, "no tier stored the object"))
    }
}

/// An L2 hit that copies its body into L1 as it is read (no extra read from memcached). Only a
/// complete, unranged read is promoted.
struct Promote {
    inner: HitHandler,
    l1: &'static MemoryStore,
    key: CacheKey,
    meta: Option<StoredMeta>,
    chunks: Vec<Bytes>,
    len: usize,
}

#[async_trait]
impl HandleHit for Promote {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        let chunk = self.inner.read_body().await?;
        match &chunk {
            Some(b) if self.meta.is_some() => {
                self.len += b.len();
                if self.len > self.l1.max_object() {
                    self.meta = None;
                    self.chunks = Vec::new();
                } else {
                    self.chunks.push(b.clone());
                }
            }
            None => {
                if let Some(meta) = self.meta.take() {
                    self.l1.insert_complete(
                        &self.key,
                        meta,
                        std::mem::take(&mut self.chunks),
                        self.len,
                    );
                }
            }
            _ => {}
        }
        Ok(chunk)
    }

    async fn finish(
        self: Box<Self>,
        storage: &'static (dyn Storage + Sync),
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<()> {
        self.inner.finish(storage, key, trace).await
    }

    fn can_seek(&self) -> bool {
        self.inner.can_seek()
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        self.meta = None; // a partial read cannot be promoted
        self.inner.seek(start, end)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
