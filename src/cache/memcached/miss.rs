//! Storing a response: full chunks are written as they fill (a few at a time, in the
//! background), and the head is written last by `finish`, which is the commit point.

use super::entry::{self, HeadBody};
use super::{McError, MemcachedStorage};
use crate::cache::stored;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora::cache::storage::{HandleMiss, MissFinishType};
use pingora::cache::CacheMeta;
use pingora::Result;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

type ChunkWrite = JoinHandle<std::result::Result<(), McError>>;

pub(super) struct McMiss {
    storage: &'static MemcachedStorage,
    hex: String,
    write_id: u64,
    internal: Vec<u8>,
    header: Vec<u8>,
    /// The origin's Content-Length, if any; the stored body must match it.
    pub(super) declared_len: Option<usize>,
    /// What the origin header says about framing, to decide whether it must be rewritten.
    status: u16,
    chunked: bool,
    head_ttl: u32,
    chunk_ttl: u32,
    buf: BytesMut,
    total: usize,
    next_index: u32,
    writes: Vec<ChunkWrite>,
    permits: Arc<Semaphore>,
    failed: bool,
}

/// Whether a response with this status carries a body whose length belongs in the header.
impl McMiss {
    pub(super) fn new(
        storage: &'static MemcachedStorage,
        hex: String,
        meta: &CacheMeta,
        internal: Vec<u8>,
        header: Vec<u8>,
        head_ttl: u32,
        chunk_ttl: u32,
    ) -> Self {
        let h = meta.response_header();
        let declared_len = h
            .headers
            .get(CONTENT_LENGTH)
            .and_then(crate::limits::parse_content_length)
            .map(|n| n as usize);
        McMiss {
            storage,
            hex,
            write_id: rand::random(),
            internal,
            header,
            declared_len,
            status: h.status.as_u16(),
            chunked: h.headers.contains_key(TRANSFER_ENCODING),
            head_ttl,
            chunk_ttl,
            buf: BytesMut::new(),
            total: 0,
            next_index: 0,
            writes: Vec::new(),
            permits: Arc::new(Semaphore::new(storage.settings.write_concurrency)),
            failed: false,
        }
    }

    fn fail(&mut self, why: &'static str) -> Box<pingora::Error> {
        self.failed = true;
        for w in self.writes.drain(..) {
            w.abort();
        }
        McError::Invalid(why).into_pingora("memcached write")
    }

    /// Surfaces a chunk write that already failed, so the caller stops streaming into a write
    /// that can never commit.
    async fn check_finished_writes(&mut self) -> std::result::Result<(), McError> {
        let mut i = 0;
        while i < self.writes.len() {
            if self.writes[i].is_finished() {
                let w = self.writes.swap_remove(i);
                w.await
                    .map_err(|_| McError::Invalid("chunk write task failed"))??;
            } else {
                i += 1;
            }
        }
        Ok(())
    }

    async fn write_chunk(&mut self, data: Bytes) -> std::result::Result<(), McError> {
        self.check_finished_writes().await?;
        // Waiting for a permit is the back-pressure that bounds memory per write; each holder
        // finishes within the exchange timeout.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| McError::Invalid("write semaphore closed"))?;
        let storage = self.storage;
        let index = self.next_index;
        self.next_index += 1;
        let key = storage.chunk_key(&self.hex, self.write_id, index);
        let value = entry::encode_chunk(self.write_id, index, &data);
        let ttl = self.chunk_ttl;
        self.writes.push(tokio::spawn(async move {
            let _permit = permit;
            match storage
                .set_item("set_chunk", &key, &value, ttl, None)
                .await?
            {
                memcache::exp::MutationStatus::Applied => Ok(()),
                _ => Err(McError::Invalid("chunk not stored")),
            }
        }));
        Ok(())
    }
}

impl Drop for McMiss {
    fn drop(&mut self) {
        // Not finished: nothing was committed, and the chunks already written are unreachable
        // without a head; they expire on their own.
        for w in self.writes.drain(..) {
            w.abort();
        }
    }
}

#[async_trait]
impl HandleMiss for McMiss {
    async fn write_body(&mut self, data: Bytes, _eof: bool) -> Result<()> {
        if self.failed {
            return Err(self.fail("write already failed"));
        }
        self.total = self.total.saturating_add(data.len());
        if self.total > self.storage.settings.max_object {
            return Err(self.fail("body larger than max_object; not cached"));
        }
        self.buf.extend_from_slice(&data);
        let chunk_size = self.storage.settings.chunk_size;
        while self.buf.len() >= chunk_size {
            let chunk = self.buf.split_to(chunk_size).freeze();
            if let Err(e) = self.write_chunk(chunk).await {
                self.failed = true;
                return Err(e.into_pingora("memcached write_body"));
            }
        }
        Ok(())
    }

    /// Waits for every chunk, then commits the head. The size reported is what was stored in
    /// memcached: the head item plus the chunked body bytes.
    async fn finish(mut self: Box<Self>) -> Result<MissFinishType> {
        if self.failed {
            return Err(self.fail("write already failed"));
        }
        if let Some(declared) = self.declared_len {
            if declared != self.total {
                return Err(self.fail("body length differs from Content-Length; not cached"));
            }
        }
        let inline = self.next_index == 0 && self.total <= self.storage.settings.inline_max;
        if !inline && !self.buf.is_empty() {
            let rest = self.buf.split().freeze();
            if let Err(e) = self.write_chunk(rest).await {
                return Err(e.into_pingora("memcached finish"));
            }
        }
        for w in std::mem::take(&mut self.writes) {
            let r = w
                .await
                .map_err(|_| McError::Invalid("chunk write task failed"))
                .and_then(|r| r);
            if let Err(e) = r {
                return Err(e.into_pingora("memcached finish"));
            }
        }
        if stored::needs_framing(self.status, self.declared_len, self.chunked, self.total) {
            let mut meta = super::meta::decode_current(&self.internal, &self.header)?;
            stored::frame(meta.response_header_mut(), self.total);
            (self.internal, self.header) = super::meta::encode(&meta)?;
        }
        let body = if inline {
            HeadBody::Inline(&self.buf)
        } else {
            HeadBody::Chunked(self.storage.settings.chunk_size)
        };
        let value = entry::encode_head(
            self.write_id,
            self.total,
            &self.internal,
            &self.header,
            body,
        );
        let key = self.storage.head_key(&self.hex);
        match self
            .storage
            .set_item("set_head", &key, &value, self.head_ttl, None)
            .await
        {
            Ok(memcache::exp::MutationStatus::Applied) => {}
            Ok(_) => return Err(self.fail("head not stored")),
            Err(e) => return Err(e.into_pingora("memcached commit")),
        }
        let body_stored = if inline { 0 } else { self.total };
        Ok(MissFinishType::Created(value.len() + body_stored))
    }
}
