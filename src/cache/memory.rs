//! The embedded memory store: a Pingora `Storage` bounded in bytes by construction.
//!
//! Entries live in sharded maps keyed by the full cache key hash; a byte-weighted LRU
//! (pingora-lru) decides eviction. Admission and eviction happen together under one short
//! mutex, so the bytes in use never exceed the limit once an insert returns. Hits clone an
//! `Arc` and hand out `Bytes` slices of the stored chunks: no body copies on the hit path.
//!
//! An entry's weight counts its body, its header fields, a fixed per-entry overhead and a
//! per-chunk overhead. Bodies are copied into chunks of at least [`MIN_CHUNK`] bytes as they
//! are stored, so what is weighed is what is held: a body the origin streamed in tiny pieces
//! neither pins the (larger) read buffers those pieces were sliced from nor costs a hit one
//! step per piece.
//!
//! The LRU (pingora-lru) keys on 64 bits; the maps are keyed by those same 64 bits and hold the
//! full 128-bit key beside each entry, so two keys that share their low 64 bits are one slot:
//! the newer replaces the older (a lookup of the older is a miss), and map and LRU never
//! disagree on what is held.

use super::stored::millis;
use crate::metrics;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use pingora::cache::key::{CacheHashKey, CacheKey, CompactCacheKey, HashBinary};
use pingora::cache::storage::{
    HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler, PurgeOutcome, PurgeTarget,
    PurgeType,
};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheMeta, Storage};
use pingora::http::ResponseHeader;
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

const SHARDS: usize = 16;
/// Map slot, LRU node, Arc and meta bookkeeping per entry, measured roughly; erring high keeps
/// the real footprint under the configured size.
const ENTRY_OVERHEAD: usize = 512;
/// A `Bytes` handle and its shared allocation's header, per stored chunk.
const CHUNK_OVERHEAD: usize = 64;
/// Vary variants kept per URL; a new one beyond this evicts the oldest.
pub const MAX_VARIANTS: usize = 32;
/// Stored chunks are at least this large (but the last): small pieces are coalesced.
pub const MIN_CHUNK: usize = 64 << 10;

/// What a stored response is, minus its body: enough to rebuild a `CacheMeta` per hit without
/// re-parsing anything.
pub(crate) struct StoredMeta {
    fresh_until: SystemTime,
    created: SystemTime,
    updated: SystemTime,
    swr: u32,
    sie: u32,
    variance: Option<HashBinary>,
    header: ResponseHeader,
}

impl StoredMeta {
    pub(crate) fn from_meta(meta: &CacheMeta) -> StoredMeta {
        StoredMeta {
            fresh_until: meta.fresh_until(),
            created: meta.created(),
            updated: meta.updated(),
            swr: meta.stale_while_revalidate_sec(),
            sie: meta.stale_if_error_sec(),
            variance: meta.variance(),
            header: meta.response_header_copy(),
        }
    }

    fn to_meta(&self) -> CacheMeta {
        let mut m = CacheMeta::new(
            self.fresh_until,
            self.created,
            self.swr,
            self.sie,
            self.header.clone(),
        );
        if self.updated != self.created {
            // CacheMeta::new has no `updated`; the epoch override carries the last validation
            // time, which is what freshness and Age are measured from.
            m.set_epoch_override(self.updated);
        }
        if let Some(v) = self.variance {
            m.set_variance(v);
        }
        m
    }

    fn weight(&self) -> usize {
        self.header
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum::<usize>()
            + 64
    }
}

pub(crate) struct Entry {
    primary: u128,
    meta: StoredMeta,
    body: Arc<[Bytes]>,
    body_len: usize,
    /// When a tier above last confirmed this copy was not purged fleet-wide (ms since epoch).
    checked_ms: AtomicU64,
}

impl Entry {
    pub(crate) fn is_fresh(&self, now: SystemTime) -> bool {
        self.meta.fresh_until >= now
    }
    pub(crate) fn created(&self) -> SystemTime {
        self.meta.created
    }
    pub(crate) fn updated(&self) -> SystemTime {
        self.meta.updated
    }
    pub(crate) fn header(&self) -> &ResponseHeader {
        &self.meta.header
    }
    /// True at most once per `every`, for one caller: the one that moves the check time to
    /// `now`. Concurrent hits on a hot entry then send one purge-marker read per `every`, not
    /// one each, and a read that fails is retried after `every` too, not by every next hit.
    pub(crate) fn claim_check(&self, now: SystemTime, every: Duration) -> bool {
        let now_ms = millis(now);
        let last = self.checked_ms.load(Ordering::Relaxed);
        now_ms.saturating_sub(last) >= every.as_millis() as u64
            && self
                .checked_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// The stored meta as Pingora sees it on a hit (for inspection).
    pub(crate) fn cache_meta(&self) -> CacheMeta {
        self.meta.to_meta()
    }
    pub(crate) fn body_len(&self) -> usize {
        self.body_len
    }

    fn weight(&self) -> usize {
        self.body_len + self.meta.weight() + ENTRY_OVERHEAD + self.body.len() * CHUNK_OVERHEAD
    }
}

/// One map slot: the full key and its entry (see the module docs on collisions).
type Slot = (u128, Arc<Entry>);

pub struct MemoryStore {
    shards: Vec<RwLock<HashMap<u64, Slot>>>,
    lru: pingora_lru::Lru<u128, SHARDS>,
    /// Primary key → keys of its Vary variants, so a purge removes them all.
    variants: Mutex<HashMap<u128, Vec<u128>>>,
    /// Serialises admit + evict so the limit holds whenever the lock is free.
    admission: Mutex<()>,
    limit: usize,
    max_object: usize,
}

fn key128(b: HashBinary) -> u128 {
    u128::from_be_bytes(b)
}

impl MemoryStore {
    pub fn new(limit: usize, max_object: usize) -> MemoryStore {
        metrics::CACHE_MEMORY_LIMIT.set(limit as i64);
        MemoryStore {
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            lru: pingora_lru::Lru::with_capacity(limit, 1024),
            variants: Mutex::new(HashMap::new()),
            admission: Mutex::new(()),
            limit,
            max_object,
        }
    }

    fn shard(&self, k: u128) -> &RwLock<HashMap<u64, Slot>> {
        &self.shards[(k as u64 as usize) % SHARDS]
    }

    fn get(&self, k: u128) -> Option<Arc<Entry>> {
        let e = match self.shard(k).read().get(&(k as u64)) {
            Some((full, e)) if *full == k => e.clone(),
            _ => return None,
        };
        self.lru.promote(k as u64);
        Some(e)
    }

    fn insert(&self, k: u128, entry: Entry) {
        let weight = entry.weight();
        if weight > self.limit {
            return;
        }
        let variance = entry.meta.variance.is_some();
        let primary = entry.primary;
        let _guard = self.admission.lock();
        let replaced = self.shard(k).write().insert(k as u64, (k, Arc::new(entry)));
        if let Some((other, old)) = replaced {
            if other != k {
                self.unindex_variant(other, &old);
            }
        }
        if variance {
            let oldest = {
                let mut v = self.variants.lock();
                let list = v.entry(primary).or_default();
                if list.contains(&k) {
                    None
                } else {
                    list.push(k);
                    (list.len() > MAX_VARIANTS).then(|| list[0])
                }
            };
            // A client choosing Vary'd header values must not grow one URL's variant list (and
            // the scans over it under this lock) without bound: the oldest variant goes.
            if let Some(oldest) = oldest {
                if self.forget(oldest).is_some() {
                    self.lru.remove(oldest as u64);
                    metrics::CACHE_EVICTIONS.inc();
                }
            }
        }
        self.lru.admit(k as u64, k, weight);
        for (victim, _) in self.lru.evict_to_limit() {
            self.forget(victim);
            metrics::CACHE_EVICTIONS.inc();
        }
        metrics::CACHE_MEMORY_USED.set(self.lru.weight() as i64);
    }

    /// Drops `k` from the map and the variant index (not from the LRU); a slot holding another
    /// key is left alone.
    fn forget(&self, k: u128) -> Option<Arc<Entry>> {
        let e = {
            let mut shard = self.shard(k).write();
            match shard.get(&(k as u64)) {
                Some((full, _)) if *full == k => shard.remove(&(k as u64))?.1,
                _ => return None,
            }
        };
        self.unindex_variant(k, &e);
        Some(e)
    }

    fn unindex_variant(&self, k: u128, e: &Entry) {
        if e.meta.variance.is_some() {
            let mut v = self.variants.lock();
            if let Some(list) = v.get_mut(&e.primary) {
                list.retain(|x| *x != k);
                if list.is_empty() {
                    v.remove(&e.primary);
                }
            }
        }
    }

    fn remove(&self, k: u128) -> bool {
        let _guard = self.admission.lock();
        let found = self.forget(k).is_some();
        if found {
            self.lru.remove(k as u64);
        }
        metrics::CACHE_MEMORY_USED.set(self.lru.weight() as i64);
        found
    }

    /// Removes the entry for `key` and every Vary variant of it. True if anything was removed.
    pub fn purge_all(&self, key: &CompactCacheKey) -> bool {
        let primary = key128(key.primary);
        let mut keys = vec![key128(key.combined_bin()), primary];
        if let Some(list) = self.variants.lock().get(&primary) {
            keys.extend_from_slice(list);
        }
        keys.sort_unstable();
        keys.dedup();
        let mut any = false;
        for k in keys {
            any |= self.remove(k);
        }
        any
    }

    pub fn bytes_used(&self) -> usize {
        self.lru.weight()
    }

    pub fn max_object(&self) -> usize {
        self.max_object
    }

    /// The entry for `key`, for tiers that decide before serving it.
    pub(crate) fn entry(&self, key: &CacheKey) -> Option<Arc<Entry>> {
        self.get(key128(key.combined_bin()))
    }

    /// Every copy held for `key`'s URL, without touching the LRU: the primary slot and each
    /// indexed Vary variant, as (full key hash, entry). For inspection only.
    pub(crate) fn peek_all(&self, key: &CacheKey) -> Vec<(u128, Arc<Entry>)> {
        let primary = key128(key.primary_bin());
        let mut keys = vec![primary];
        if let Some(list) = self.variants.lock().get(&primary) {
            keys.extend(list.iter().filter(|k| **k != primary));
        }
        keys.into_iter()
            .filter_map(|k| match self.shard(k).read().get(&(k as u64)) {
                Some((full, e)) if *full == k => Some((k, e.clone())),
                _ => None,
            })
            .collect()
    }

    /// What `lookup` returns for `entry`.
    pub(crate) fn hit(entry: &Entry) -> (CacheMeta, HitHandler) {
        let hit = MemoryHit {
            body: entry.body.clone(),
            len: entry.body_len,
            pos: 0,
            end: entry.body_len,
            idx: 0,
            offset: 0,
        };
        (entry.meta.to_meta(), Box::new(hit))
    }

    pub(crate) fn remove_key(&self, key: &CacheKey) {
        self.remove(key128(key.combined_bin()));
    }

    /// Stores a complete object read from another tier.
    pub(crate) fn insert_complete(
        &self,
        key: &CacheKey,
        mut meta: StoredMeta,
        body: Vec<Bytes>,
        len: usize,
    ) {
        if len > self.max_object {
            return;
        }
        super::stored::frame(&mut meta.header, len);
        let entry = Entry {
            primary: key128(key.primary_bin()),
            meta,
            body: coalesce(body).into(),
            body_len: len,
            checked_ms: AtomicU64::new(millis(SystemTime::now())),
        };
        self.insert(key128(key.combined_bin()), entry);
    }
}

#[async_trait]
impl Storage for MemoryStore {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _t: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        Ok(self.entry(key).map(|e| MemoryStore::hit(&e)))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _t: &SpanHandle,
    ) -> Result<MissHandler> {
        Ok(Box::new(MemoryMiss {
            store: self,
            key: key128(key.combined_bin()),
            primary: key128(key.primary_bin()),
            meta: Some(StoredMeta::from_meta(meta)),
            chunks: Vec::new(),
            pending: Vec::new(),
            len: 0,
        }))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _ty: PurgeType,
        _t: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        let found = match target {
            PurgeTarget::Active(k) => self.purge_all(k),
            PurgeTarget::Exact(e) => self.remove(key128(e.key().combined_bin())),
        };
        Ok(super::purge::outcome(found))
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _t: &SpanHandle,
    ) -> Result<bool> {
        let k = key128(key.combined_bin());
        let Some(old) = self.get(k) else {
            return Ok(false);
        };
        let mut stored = StoredMeta::from_meta(meta);
        super::stored::frame(&mut stored.header, old.body_len);
        let entry = Entry {
            primary: old.primary,
            meta: stored,
            body: old.body.clone(),
            body_len: old.body_len,
            checked_ms: AtomicU64::new(old.checked_ms.load(Ordering::Relaxed)),
        };
        self.insert(k, entry);
        Ok(true)
    }

    fn support_streaming_partial_write(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}

struct MemoryMiss {
    store: &'static MemoryStore,
    key: u128,
    primary: u128,
    meta: Option<StoredMeta>,
    chunks: Vec<Bytes>,
    /// Small pieces waiting to be copied into one chunk of at least [`MIN_CHUNK`].
    pending: Vec<u8>,
    len: usize,
}

#[async_trait]
impl HandleMiss for MemoryMiss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        self.len += data.len();
        if self.len > self.store.max_object {
            // Abandon the write; Pingora keeps streaming to the client and stores nothing.
            return Error::e_explain(
                ErrorType::InternalError,
                "object larger than cache.memory.max_object",
            );
        }
        if data.len() >= MIN_CHUNK && self.pending.is_empty() {
            self.chunks.push(data);
        } else {
            self.pending.extend_from_slice(&data);
            if self.pending.len() >= MIN_CHUNK {
                self.chunks.push(Bytes::copy_from_slice(&self.pending));
                self.pending.clear();
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        let mut meta = self.meta.take().expect("finish runs once");
        super::stored::frame(&mut meta.header, self.len);
        if !self.pending.is_empty() {
            self.chunks.push(Bytes::copy_from_slice(&self.pending));
        }
        let entry = Entry {
            primary: self.primary,
            meta,
            body: std::mem::take(&mut self.chunks).into(),
            body_len: self.len,
            // Never confirmed: a fill that began before a fleet purge may finish after it, so
            // the first lookup on a fleet node reads the purge marker.
            checked_ms: AtomicU64::new(0),
        };
        let weight = entry.weight();
        self.store.insert(self.key, entry);
        Ok(MissFinishType::Created(weight))
    }
}

/// `body` with runs of small chunks copied into chunks of at least [`MIN_CHUNK`].
fn coalesce(body: Vec<Bytes>) -> Vec<Bytes> {
    if body.iter().all(|c| c.len() >= MIN_CHUNK) {
        return body;
    }
    let mut out = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    for c in body {
        if c.len() >= MIN_CHUNK && pending.is_empty() {
            out.push(c);
            continue;
        }
        pending.extend_from_slice(&c);
        if pending.len() >= MIN_CHUNK {
            out.push(Bytes::from(std::mem::take(&mut pending)));
        }
    }
    if !pending.is_empty() {
        out.push(Bytes::from(pending));
    }
    out
}

struct MemoryHit {
    body: Arc<[Bytes]>,
    len: usize,
    /// Next byte to send and the end (exclusive) of the requested range.
    pos: usize,
    end: usize,
    /// The chunk holding `pos` and where it starts: reads move forward, so a whole body costs
    /// one pass over the chunks, not one per read.
    idx: usize,
    offset: usize,
}

#[async_trait]
impl HandleHit for MemoryHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        while self.pos < self.end {
            let Some(chunk) = self.body.get(self.idx) else {
                break;
            };
            let chunk_end = self.offset + chunk.len();
            if self.pos < chunk_end {
                let from = self.pos - self.offset;
                let to = chunk.len().min(self.end - self.offset);
                self.pos = self.offset + to;
                return Ok(Some(chunk.slice(from..to)));
            }
            self.offset = chunk_end;
            self.idx += 1;
        }
        Ok(None)
    }

    async fn finish(
        self: Box<Self>,
        _s: &'static (dyn Storage + Sync),
        _k: &CacheKey,
        _t: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.len {
            return Error::e_explain(ErrorType::InternalError, "seek past the end of the body");
        }
        self.pos = start;
        self.end = end.unwrap_or(self.len).min(self.len);
        // The cursor walks forward from the first chunk again: once per seek.
        (self.idx, self.offset) = (0, 0);
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(limit: usize) -> &'static MemoryStore {
        Box::leak(Box::new(MemoryStore::new(limit, limit / 2)))
    }

    fn meta() -> CacheMeta {
        let now = SystemTime::now();
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("Transfer-Encoding", "chunked").unwrap();
        CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h)
    }

    async fn put(s: &'static MemoryStore, name: &str, body: &[u8]) {
        let key = CacheKey::new(name.as_bytes().to_vec(), "");
        let mut miss = s
            .get_miss_handler(
                &key,
                &meta(),
                &pingora::cache::trace::Span::inactive().handle(),
            )
            .await
            .unwrap();
        for part in body.chunks(1000) {
            miss.write_body(Bytes::copy_from_slice(part), false)
                .await
                .unwrap();
        }
        miss.finish().await.unwrap();
    }

    async fn read(
        s: &'static MemoryStore,
        name: &str,
        range: Option<(usize, usize)>,
    ) -> Option<(CacheMeta, Vec<u8>)> {
        let key = CacheKey::new(name.as_bytes().to_vec(), "");
        let (meta, mut hit) = s
            .lookup(&key, &pingora::cache::trace::Span::inactive().handle())
            .await
            .unwrap()?;
        if let Some((a, b)) = range {
            hit.seek(a, Some(b)).unwrap();
        }
        let mut out = Vec::new();
        while let Some(b) = hit.read_body().await.unwrap() {
            out.extend_from_slice(&b);
        }
        Some((meta, out))
    }

    fn entry(body: Vec<Bytes>) -> Entry {
        let body_len = body.iter().map(Bytes::len).sum();
        Entry {
            primary: 0,
            meta: StoredMeta::from_meta(&meta()),
            body: body.into(),
            body_len,
            checked_ms: AtomicU64::new(0),
        }
    }

    fn held(s: &MemoryStore) -> usize {
        s.shards.iter().map(|m| m.read().len()).sum()
    }

    #[test]
    fn keys_sharing_their_low_64_bits_share_one_slot_and_the_accounting_holds() {
        let s = store(1 << 20);
        let (k1, k2) = ((1u128 << 64) | 5, (2u128 << 64) | 5);
        s.insert(k1, entry(vec![Bytes::from(vec![1u8; 1000])]));
        s.insert(k2, entry(vec![Bytes::from(vec![2u8; 3000])]));
        assert!(
            s.get(k1).is_none(),
            "the older key is a miss, never the newer's body"
        );
        assert_eq!(s.get(k2).unwrap().body_len, 3000);
        assert_eq!(held(s), 1, "map and LRU agree on what is held");
        assert_eq!(s.lru.len(), 1);
        assert_eq!(s.bytes_used(), s.get(k2).unwrap().weight());
        assert!(
            !s.remove(k1),
            "removing the older key leaves the newer alone"
        );
        assert!(s.get(k2).is_some());
        assert!(s.remove(k2));
        assert_eq!((held(s), s.bytes_used()), (0, 0));
    }

    #[tokio::test]
    async fn tiny_pieces_are_coalesced_and_every_chunk_is_weighed() {
        let s = store(4 << 20);
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
        let key = CacheKey::new("tiny", "");
        let span = pingora::cache::trace::Span::inactive().handle();
        let mut miss = s.get_miss_handler(&key, &meta(), &span).await.unwrap();
        for b in &body {
            miss.write_body(Bytes::copy_from_slice(&[*b]), false)
                .await
                .unwrap();
        }
        miss.finish().await.unwrap();
        let e = s.entry(&key).unwrap();
        assert_eq!(
            e.body.len(),
            body.len().div_ceil(MIN_CHUNK),
            "200,000 pieces, 4 chunks"
        );
        assert!(e.weight() >= body.len() + ENTRY_OVERHEAD + e.body.len() * CHUNK_OVERHEAD);
        assert_eq!(read(s, "tiny", None).await.unwrap().1, body);
        let (a, b) = (MIN_CHUNK - 10, 2 * MIN_CHUNK + 10);
        assert_eq!(read(s, "tiny", Some((a, b))).await.unwrap().1, &body[a..b]);
    }

    #[test]
    fn a_variant_flood_keeps_at_most_max_variants_per_url() {
        let s = store(16 << 20);
        let mut meta = meta();
        for i in 0..(MAX_VARIANTS as u128 * 4) {
            meta.set_variance([i as u8; 16]);
            let mut e = entry(vec![Bytes::from_static(b"v")]);
            e.primary = 99;
            e.meta = StoredMeta::from_meta(&meta);
            s.insert(1000 + i, e);
        }
        assert_eq!(s.variants.lock()[&99].len(), MAX_VARIANTS);
        assert_eq!(
            held(s),
            MAX_VARIANTS,
            "the evicted variants are gone, not just unindexed"
        );
        assert!(s.get(1000).is_none(), "the oldest went first");
        assert!(s.get(1000 + MAX_VARIANTS as u128 * 4 - 1).is_some());
    }

    #[tokio::test]
    async fn a_hit_over_many_chunks_is_one_pass() {
        // Bypasses coalescing to hold 50,000 chunks: walking from the first chunk on every
        // read (the old hit) is 1.25e9 steps here: seconds in a test build.
        let s = store(64 << 20);
        let body: Vec<Bytes> = (0..50_000u32)
            .map(|i| Bytes::from(vec![i as u8; 3]))
            .collect();
        s.insert(7, entry(body));
        let (_, mut hit) = MemoryStore::hit(&s.get(7).unwrap());
        let start = std::time::Instant::now();
        let mut n = 0;
        while let Some(b) = hit.read_body().await.unwrap() {
            assert_eq!(b[..], [(n / 3) as u8; 3][..(b.len())]);
            n += b.len();
        }
        assert_eq!(n, 150_000);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn round_trip_ranges_and_length_framing() {
        let s = store(1 << 20);
        let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        put(s, "a", &body).await;
        let (meta, got) = read(s, "a", None).await.unwrap();
        assert_eq!(got, body);
        assert_eq!(meta.headers()["content-length"], "5000");
        assert!(meta.headers().get("transfer-encoding").is_none());
        let (_, part) = read(s, "a", Some((1500, 3700))).await.unwrap();
        assert_eq!(part, &body[1500..3700]);
        assert!(read(s, "b", None).await.is_none());
    }

    #[tokio::test]
    async fn never_exceeds_its_byte_limit() {
        // Enough entries per LRU shard (~17) for shard-level eviction to behave like LRU.
        let limit = 1 << 20;
        let s = store(limit);
        for i in 0..1000 {
            put(s, &format!("k{i}"), &[7u8; 3000]).await;
            assert!(
                s.bytes_used() <= limit,
                "{} > {limit} after {i}",
                s.bytes_used()
            );
        }
        assert!(read(s, "k999", None).await.is_some(), "newest entry kept");
        assert!(read(s, "k0", None).await.is_none(), "oldest entry evicted");
    }

    #[tokio::test]
    async fn oversized_objects_are_refused_mid_stream() {
        let s = store(16 * 1024); // max_object 8 KiB
        let key = CacheKey::new(b"big".to_vec(), "");
        let mut miss = s
            .get_miss_handler(
                &key,
                &meta(),
                &pingora::cache::trace::Span::inactive().handle(),
            )
            .await
            .unwrap();
        assert!(miss
            .write_body(Bytes::from(vec![0u8; 6000]), false)
            .await
            .is_ok());
        assert!(miss
            .write_body(Bytes::from(vec![0u8; 6000]), false)
            .await
            .is_err());
        drop(miss);
        assert!(read(s, "big", None).await.is_none());
    }

    #[tokio::test]
    async fn purge_removes_every_variant() {
        let s = store(1 << 20);
        let mut key = CacheKey::new(b"v".to_vec(), "");
        for variant in [[1u8; 16], [2u8; 16]] {
            key.set_variance_key(variant);
            let mut m = meta();
            m.set_variance(variant);
            let mut miss = s
                .get_miss_handler(&key, &m, &pingora::cache::trace::Span::inactive().handle())
                .await
                .unwrap();
            miss.write_body(Bytes::from_static(b"x"), true)
                .await
                .unwrap();
            miss.finish().await.unwrap();
        }
        assert_eq!(
            s.variants
                .lock()
                .get(&key128(key.primary_bin()))
                .map(Vec::len),
            Some(2)
        );
        let plain = CacheKey::new(b"v".to_vec(), "").to_compact();
        assert!(s.purge_all(&plain));
        assert!(s
            .lookup(&key, &pingora::cache::trace::Span::inactive().handle())
            .await
            .unwrap()
            .is_none());
        assert!(!s.purge_all(&plain), "second purge finds nothing");
        assert_eq!(s.bytes_used(), 0);
    }
}
