//! An L2 hit promoted into L1 as its body streams out.

use super::memory::{MemoryStore, StoredMeta};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::CacheKey;
use pingora::cache::storage::{HandleHit, HitHandler};
use pingora::cache::trace::SpanHandle;
use pingora::cache::Storage;
use pingora::Result;
use std::any::Any;

/// An L2 hit that copies its body into L1 as it is read (no extra read from memcached). Only a
/// complete, unranged read is promoted.
pub(super) struct Promote {
    inner: HitHandler,
    l1: &'static MemoryStore,
    key: CacheKey,
    meta: Option<StoredMeta>,
    chunks: Vec<Bytes>,
    len: usize,
}

impl Promote {
    pub(super) fn new(
        inner: HitHandler,
        l1: &'static MemoryStore,
        key: &CacheKey,
        meta: StoredMeta,
    ) -> Promote {
        Promote {
            inner,
            l1,
            key: key.clone(),
            meta: Some(meta),
            chunks: Vec::new(),
            len: 0,
        }
    }
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
                    // A copy, once per promotion: memcached chunks carry a share of the read
                    // budget until dropped (memcached/stream.rs), which L1 must not keep.
                    self.chunks.push(Bytes::copy_from_slice(b));
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
