//! Fills in progress, readable while they are written (Pingora's streaming partial write).
//!
//! A miss registers its fill here before the first body byte. Every request for the object that
//! arrives meanwhile (the writer itself, and the readers Pingora's cache lock released when the
//! header arrived) reads the body from the fill as it comes from the origin, so a slow large
//! response does not make its waiters wait for its end.
//!
//! This is also what keeps a fill alive when its client leaves: Pingora 0.9.1 ignores a
//! downstream error during a fill only when the storage supports streaming partial writes
//! (`proxy_h1.rs`, "ignore downstream error so that upstream can continue to write cache");
//! without it the writer's task ends with its client, the fill is dropped, the lock reports a
//! transient error and every waiter, client gone or not, is elected writer in turn.
//!
//! Guarantees: a reader gets exactly the bytes the origin sent, then `Ok(None)` once the fill
//! finished; if the fill is abandoned (origin error, writer dropped) every reader gets an `Err`
//! (its client sees an aborted response, never a short "complete" one). Memory: the chunks are
//! shared (`Bytes`) with the memory tier's copy; a fill holds at most the object (Pingora's
//! `max_file_size` bounds it) and lives until it is committed.

use super::memory::MemoryStore;
use super::tiered::Tiered;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora::cache::key::{CacheHashKey, CacheKey};
use pingora::cache::storage::{HandleHit, HandleMiss, HitHandler, MissFinishType, MissHandler};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheMeta, Storage};
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::watch;

fn key128(b: pingora::cache::key::HashBinary) -> u128 {
    u128::from_be_bytes(b)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    Complete,
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Progress {
    len: usize,
    end: End,
}

/// How far behind the origin a reader of a pass-through fill may fall before it is cut off.
const PASS_WINDOW: usize = 16 << 20;

#[derive(Default)]
struct Chunks {
    list: VecDeque<Bytes>,
    /// Dropped from the front (pass-through only): every reader is past them.
    trimmed_bytes: usize,
    trimmed_chunks: usize,
}

pub(super) struct Fill {
    tag: u64,
    key: u128,
    internal: Vec<u8>,
    header: Vec<u8>,
    chunks: Mutex<Chunks>,
    progress: watch::Sender<Progress>,
    /// Where each reader is, so a pass-through fill can drop what all of them sent.
    readers: Mutex<Vec<Weak<AtomicUsize>>>,
    /// No tier stores this fill any more (over their size limits): it only streams.
    passing: AtomicBool,
}

impl Fill {
    fn new(tag: u64, key: u128, internal: Vec<u8>, header: Vec<u8>) -> Fill {
        let (tx, _) = watch::channel(Progress {
            len: 0,
            end: End::Open,
        });
        Fill {
            tag,
            key,
            internal,
            header,
            chunks: Mutex::new(Chunks::default()),
            progress: tx,
            readers: Mutex::new(Vec::new()),
            passing: AtomicBool::new(false),
        }
    }

    fn push(&self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        let n = data.len();
        let mut c = self.chunks.lock();
        c.list.push_back(data);
        if self.passing.load(Ordering::Relaxed) {
            self.trim(&mut c);
        }
        drop(c);
        self.progress.send_modify(|p| p.len += n);
    }

    /// Pass-through: drops the chunks every live reader has sent, so memory follows the
    /// slowest reader, and that one may fall at most [`PASS_WINDOW`] behind.
    fn trim(&self, c: &mut Chunks) {
        let written = c.trimmed_bytes + c.list.iter().map(Bytes::len).sum::<usize>();
        let mut readers = self.readers.lock();
        readers.retain(|r| r.strong_count() > 0);
        let min = readers
            .iter()
            .filter_map(Weak::upgrade)
            .map(|p| p.load(Ordering::Relaxed))
            .filter(|&p| written - p <= PASS_WINDOW) // laggards are cut off
            .min()
            .unwrap_or(written);
        while let Some(front) = c.list.front() {
            if c.trimmed_bytes + front.len() > min {
                break;
            }
            c.trimmed_bytes += front.len();
            c.trimmed_chunks += 1;
            c.list.pop_front();
        }
    }

    fn end(&self, end: End) {
        self.progress.send_if_modified(|p| {
            let open = p.end == End::Open;
            if open {
                p.end = end;
            }
            open
        });
    }

    fn reader(self: &Arc<Self>) -> Result<(CacheMeta, HitHandler)> {
        let meta = CacheMeta::deserialize(&self.internal, &self.header)?;
        Ok((meta, Box::new(FillReader::new(self))))
    }
}

#[derive(Default)]
struct Registry {
    /// The fill a lookup of the key finds (the newest).
    by_key: HashMap<u128, Arc<Fill>>,
    /// Every fill still being written, for the writer's own reader.
    by_tag: HashMap<u64, Arc<Fill>>,
}

/// The fills this node is writing.
#[derive(Default)]
pub(super) struct Fills {
    registry: Mutex<Registry>,
}

impl Fills {
    fn start(&self, key: &CacheKey, meta: &CacheMeta) -> Result<Arc<Fill>> {
        let (internal, header) = meta.serialize()?;
        let fill = Arc::new(Fill::new(
            rand::random(),
            key128(key.combined_bin()),
            internal,
            header,
        ));
        let mut r = self.registry.lock();
        r.by_key.insert(fill.key, fill.clone());
        r.by_tag.insert(fill.tag, fill.clone());
        Ok(fill)
    }

    /// A reader of the fill in progress for `key`, if any.
    pub(super) fn lookup(&self, key: &CacheKey) -> Option<(CacheMeta, HitHandler)> {
        let fill = self
            .registry
            .lock()
            .by_key
            .get(&key128(key.combined_bin()))
            .cloned()?;
        fill.reader().ok()
    }

    /// For a miss about to take Pingora's lock and fetch: a fill of this node that started or
    /// ended while the lookup waited for memcached (streaming, or its copy in `l1`). The lock
    /// orders only requests that reach it while the fill runs, and a lookup still reading a
    /// purged copy from memcached could reach it just after: a burst on a purged object then
    /// cost 2–4 origin requests instead of 1.
    pub(super) async fn landed(
        &self,
        l1: Option<&'static MemoryStore>,
        key: &CacheKey,
    ) -> Option<(CacheMeta, HitHandler)> {
        if let Ok(Some(found)) = super::invalidation::unpurged(key, Ok(self.lookup(key))).await {
            return Some(found);
        }
        let e = l1?.entry(key)?;
        let (v, purged) = super::invalidation::on_lookup(key, &e).await;
        let usable = !purged && v.is_keep() && e.is_fresh(std::time::SystemTime::now());
        usable.then(|| MemoryStore::hit(&e))
    }

    /// The writer's own reader: the fill named by `tag`, whatever replaced it for lookups.
    pub(super) fn lookup_tagged(&self, tag: Option<&[u8]>) -> Option<(CacheMeta, HitHandler)> {
        let tag = u64::from_be_bytes(tag?.try_into().ok()?);
        let fill = self.registry.lock().by_tag.get(&tag).cloned()?;
        fill.reader().ok()
    }

    /// Lookups stop finding the fill for `key` (a purge); its readers and writer carry on.
    pub(super) fn forget(&self, combined: u128) {
        self.registry.lock().by_key.remove(&combined);
    }

    fn remove(&self, fill: &Arc<Fill>) {
        let mut r = self.registry.lock();
        r.by_tag.remove(&fill.tag);
        if r.by_key
            .get(&fill.key)
            .is_some_and(|f| Arc::ptr_eq(f, fill))
        {
            r.by_key.remove(&fill.key);
        }
    }

    /// No tier will store `fill`: it goes on streaming to the readers it has (and its writer's
    /// client), new requests go to the origin, and it keeps only what its readers still need.
    fn pass_through(&self, fill: &Arc<Fill>) {
        {
            let mut r = self.registry.lock();
            if r.by_key
                .get(&fill.key)
                .is_some_and(|f| Arc::ptr_eq(f, fill))
            {
                r.by_key.remove(&fill.key);
            }
        }
        if !fill.passing.swap(true, Ordering::Relaxed) {
            fill.trim(&mut fill.chunks.lock());
        }
    }
}

/// `upstream_response_filter`: a response of unknown length is measured by the tiers (each
/// drops out past its `max_object`, and the fill then passes through), not by Pingora's
/// `max_file_size`, which would fail it mid-body for the writer and every reader of its fill.
/// A declared `Content-Length` over the limit is still refused up front by Pingora.
pub fn measure_in_tiers(
    session: &mut pingora::proxy::Session,
    resp: &pingora::http::ResponseHeader,
) {
    use pingora::cache::CachePhase;
    let miss = matches!(
        session.cache.phase(),
        CachePhase::Miss | CachePhase::Expired
    );
    if miss && !resp.headers.contains_key(http::header::CONTENT_LENGTH) {
        session.cache.set_max_file_size_bytes(usize::MAX);
    }
}

/// A miss written to both tiers and readable, as it arrives, from its [`Fill`].
pub(super) struct TieredMiss {
    tiered: &'static Tiered,
    key: CacheKey,
    l1: Option<MissHandler>,
    l2: Option<MissHandler>,
    fill: Arc<Fill>,
    tag: [u8; 8],
    finished: bool,
}

impl TieredMiss {
    /// `None` for a tier that cannot store this object: the fill still streams to its readers
    /// and `finish` reports that nothing was stored.
    pub(super) fn start(
        tiered: &'static Tiered,
        key: &CacheKey,
        meta: &CacheMeta,
        l1: Option<MissHandler>,
        l2: Option<MissHandler>,
    ) -> Result<MissHandler> {
        let fill = tiered.fills.start(key, meta)?;
        Ok(Box::new(TieredMiss {
            tiered,
            key: key.clone(),
            l1,
            l2,
            tag: fill.tag.to_be_bytes(),
            fill,
            finished: false,
        }))
    }
}

impl Drop for TieredMiss {
    fn drop(&mut self) {
        if !self.finished {
            // Never finished: readers must see an error, not a short body; other nodes waiting
            // for this fill must not wait for it any longer.
            self.fill.end(End::Failed);
            self.tiered.fills.remove(&self.fill);
            self.tiered.release(&self.key, true);
        }
    }
}

#[async_trait]
impl HandleMiss for TieredMiss {
    async fn write_body(&mut self, data: Bytes, eof: bool) -> Result<()> {
        self.fill.push(data.clone());
        // A tier that refuses (too large, memcached down) drops out; the other carries on, and
        // with neither the fill still streams to its readers (pass-through).
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
            self.tiered.fills.pass_through(&self.fill);
        }
        Ok(())
    }

    fn streaming_write_tag(&self) -> Option<&[u8]> {
        Some(&self.tag)
    }

    /// Never `Err`: readers (the writer's own client among them) already have the whole body,
    /// and Pingora answers a failed finish by dropping the writer's body reader. Storing
    /// nothing is reported as an empty object.
    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        self.finished = true;
        // Every body byte is in: readers may end their responses now.
        self.fill.end(End::Complete);
        let (tiered, key) = (self.tiered, self.key.clone());
        let mut created = None;
        if let Some(m) = self.l1.take() {
            created = m.finish().await.ok();
        }
        if let Some(m) = self.l2.take() {
            if created.is_some() {
                // L1 already serves this node; memcached is for the rest of the fleet.
                tokio::spawn(async move {
                    let ok = m.finish().await.is_ok();
                    tiered.release(&key, !ok);
                });
            } else {
                created = m.finish().await.ok();
                tiered.release(&key, created.is_none());
            }
        } else {
            tiered.release(&key, created.is_none());
        }
        tiered.fills.remove(&self.fill);
        if created.is_none() {
            log::debug!("a fill completed but no tier stored it");
        }
        Ok(created.unwrap_or(MissFinishType::Created(0)))
    }
}

/// One request's read of a [`Fill`]: waits for bytes that have not arrived yet.
struct FillReader {
    fill: Arc<Fill>,
    progress: watch::Receiver<Progress>,
    pos: usize,
    /// `pos` as the fill sees it (for pass-through trimming).
    at: Arc<AtomicUsize>,
    /// The chunk holding `pos` and where it starts (absolute: counting trimmed chunks).
    chunk: usize,
    chunk_start: usize,
}

impl FillReader {
    fn new(fill: &Arc<Fill>) -> FillReader {
        let at = Arc::new(AtomicUsize::new(0));
        fill.readers.lock().push(Arc::downgrade(&at));
        FillReader {
            fill: fill.clone(),
            progress: fill.progress.subscribe(),
            pos: 0,
            at,
            chunk: 0,
            chunk_start: 0,
        }
    }
}

#[async_trait]
impl HandleHit for FillReader {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        let pos = self.pos;
        let p = *self
            .progress
            .wait_for(|p| p.len > pos || p.end != End::Open)
            .await
            .map_err(|_| Error::explain(ErrorType::InternalError, "fill vanished"))?;
        if pos < p.len {
            let c = self.fill.chunks.lock();
            if pos < c.trimmed_bytes {
                return Error::e_explain(
                    ErrorType::InternalError,
                    "this reader fell too far behind an uncacheable fill",
                );
            }
            if self.chunk < c.trimmed_chunks {
                (self.chunk, self.chunk_start) = (c.trimmed_chunks, c.trimmed_bytes);
            }
            let mut local = self.chunk - c.trimmed_chunks;
            while self.chunk_start + c.list[local].len() <= pos {
                self.chunk_start += c.list[local].len();
                self.chunk += 1;
                local += 1;
            }
            let out = c.list[local].slice(pos - self.chunk_start..);
            self.pos += out.len();
            self.at.store(self.pos, Ordering::Relaxed);
            return Ok(Some(out));
        }
        match p.end {
            End::Complete => Ok(None),
            _ => Error::e_explain(
                ErrorType::InternalError,
                "the fill this response streams from was abandoned",
            ),
        }
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
        false // the length is not known until the fill ends; ranges get the whole 200
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

    fn fill() -> Arc<Fill> {
        Arc::new(Fill::new(1, 1, Vec::new(), Vec::new()))
    }

    fn reader(f: &Arc<Fill>) -> FillReader {
        FillReader::new(f)
    }

    #[tokio::test]
    async fn a_pass_through_fill_keeps_only_what_its_readers_still_need() {
        let f = fill();
        let mut a = reader(&f);
        let mut b = reader(&f);
        for _ in 0..4 {
            f.push(Bytes::from(vec![1u8; 1000]));
        }
        f.passing.store(true, Ordering::Relaxed);
        for _ in 0..2 {
            a.read_body().await.unwrap().unwrap();
        }
        b.read_body().await.unwrap().unwrap();
        f.push(Bytes::from(vec![2u8; 1000]));
        // b is at 1000, a at 2000: the first chunk went.
        assert_eq!(f.chunks.lock().trimmed_bytes, 1000);
        drop(b);
        f.push(Bytes::from(vec![3u8; 1000]));
        assert_eq!(
            f.chunks.lock().trimmed_bytes,
            2000,
            "gone readers do not hold memory"
        );
        let mut rest = 0;
        f.end(End::Complete);
        while let Some(x) = a.read_body().await.unwrap() {
            rest += x.len();
        }
        assert_eq!(rest, 4000, "the reader left gets every byte");
        // A reader further behind than the window is cut off with an error.
        let g = fill();
        let mut slow = reader(&g);
        g.passing.store(true, Ordering::Relaxed);
        for _ in 0..=(PASS_WINDOW / 65536) {
            g.push(Bytes::from(vec![0u8; 65536]));
        }
        assert!(slow.read_body().await.is_err());
    }

    #[tokio::test]
    async fn readers_get_bytes_as_they_arrive_then_the_end() {
        let f = fill();
        let mut early = reader(&f);
        f.push(Bytes::from_static(b"ab"));
        assert_eq!(early.read_body().await.unwrap().unwrap(), "ab");
        let waiting = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(b) = early.read_body().await.unwrap() {
                got.extend_from_slice(&b);
            }
            got
        });
        f.push(Bytes::from_static(b"cd"));
        f.push(Bytes::from_static(b"e"));
        f.end(End::Complete);
        assert_eq!(waiting.await.unwrap(), b"cde");
        let mut late = reader(&f);
        let mut all = Vec::new();
        while let Some(b) = late.read_body().await.unwrap() {
            all.extend_from_slice(&b);
        }
        assert_eq!(all, b"abcde");
    }

    #[tokio::test]
    async fn an_abandoned_fill_is_an_error_never_a_short_body() {
        let f = fill();
        let mut r = reader(&f);
        f.push(Bytes::from_static(b"ab"));
        f.end(End::Failed);
        f.end(End::Complete); // the first end wins
        assert_eq!(r.read_body().await.unwrap().unwrap(), "ab");
        assert!(r.read_body().await.is_err());
    }
}
