//! Serving a stored body: inline from the head, or chunk by chunk with a small read-ahead.
//! Only the chunks overlapping the requested range are fetched.

use super::entry::{self, Body, Head};
use super::stream;
use super::{McError, MemcachedStorage};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::storage::HandleHit;
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, Storage};
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::collections::VecDeque;
use tokio::task::JoinHandle;

/// Chunks fetched ahead of the one being sent: the next one is read while the current one is
/// written, so a reader holds at most two chunks (reads are paced by [`super::stream`]).
const READ_AHEAD: u32 = 1;

type ChunkFetch = JoinHandle<std::result::Result<Bytes, McError>>;

pub(super) struct McHit {
    storage: &'static MemcachedStorage,
    hex: String,
    head_cas: u64,
    write_id: u64,
    body_len: usize,
    body: Body,
    /// Next body byte to send and the end (exclusive) of the requested range.
    pos: usize,
    end: usize,
    ahead: VecDeque<(u32, ChunkFetch)>,
    /// Chunk 0, read with the lookup (until a read or a seek past it takes or drops it).
    first: Option<Bytes>,
    failed: bool,
}

impl McHit {
    pub(super) fn new(
        storage: &'static MemcachedStorage,
        hex: String,
        cas: u64,
        head: Head,
        first: Option<Bytes>,
    ) -> Self {
        McHit {
            storage,
            hex,
            head_cas: cas,
            write_id: head.write_id,
            body_len: head.body_len,
            end: head.body_len,
            body: head.body,
            pos: 0,
            ahead: VecDeque::new(),
            first,
            failed: false,
        }
    }

    fn spawn_fetch(&self, chunk_size: usize, index: u32) -> ChunkFetch {
        let len = entry::chunk_len(self.body_len, chunk_size, index);
        tokio::spawn(stream::fetch_chunk(
            self.storage,
            self.hex.clone(),
            self.write_id,
            index,
            len,
        ))
    }

    fn cancel_read_ahead(&mut self) {
        for (_, h) in self.ahead.drain(..) {
            h.abort();
        }
    }

    async fn chunk(
        &mut self,
        chunk_size: usize,
        index: u32,
    ) -> std::result::Result<Bytes, McError> {
        // Reads move forward only (seek clears the queue), so older entries are dead.
        while let Some((i, h)) = self.ahead.front() {
            if *i >= index {
                break;
            }
            h.abort();
            self.ahead.pop_front();
        }
        let first = self.first.take().filter(|_| index == 0);
        let current = match self.ahead.front() {
            Some((i, _)) if *i == index => self.ahead.pop_front().map(|(_, h)| h),
            _ => None,
        };
        // pos < end here, so end >= 1.
        let last = ((self.end - 1) / chunk_size) as u32;
        let mut next = self.ahead.back().map_or(index + 1, |(i, _)| i + 1);
        while next <= index.saturating_add(READ_AHEAD).min(last) {
            let f = self.spawn_fetch(chunk_size, next);
            self.ahead.push_back((next, f));
            next += 1;
        }
        if let Some(data) = first {
            return Ok(data);
        }
        match current {
            Some(h) => h
                .await
                .map_err(|_| McError::Invalid("chunk fetch task failed"))?,
            None => {
                let len = entry::chunk_len(self.body_len, chunk_size, index);
                stream::fetch_chunk(self.storage, self.hex.clone(), self.write_id, index, len).await
            }
        }
    }
}

impl Drop for McHit {
    fn drop(&mut self) {
        self.cancel_read_ahead();
    }
}

#[async_trait]
impl HandleHit for McHit {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if self.failed {
            return Error::e_explain(ErrorType::InternalError, "memcached body already failed");
        }
        if self.pos >= self.end {
            return Ok(None);
        }
        let chunk_size = match &self.body {
            Body::Inline(b) => {
                let out = b.slice(self.pos..self.end);
                self.pos = self.end;
                return Ok(Some(out));
            }
            Body::Chunked { chunk_size } => *chunk_size,
        };
        let index = (self.pos / chunk_size) as u32;
        match self.chunk(chunk_size, index).await {
            Ok(data) => {
                let base = index as usize * chunk_size;
                let from = self.pos - base;
                let to = (self.end - base).min(data.len());
                if from >= to {
                    // decode_chunk checked the length, so this is unreachable; still no panic.
                    self.failed = true;
                    return Error::e_explain(ErrorType::InternalError, "memcached chunk too short");
                }
                self.pos = base + to;
                Ok(Some(data.slice(from..to)))
            }
            Err(e) => {
                // The body is already partly sent, so this can only be an error (the client
                // sees a truncated response). Drop the head so the next request refetches.
                self.failed = true;
                self.cancel_read_ahead();
                log::warn!(
                    "memcached: chunk {index} of {} unreadable mid-body: {e}",
                    self.hex
                );
                if matches!(e, McError::Missing | McError::Corrupt(_)) {
                    self.storage.drop_head_later(&self.hex, self.head_cas);
                }
                Err(e.into_pingora("memcached read_body"))
            }
        }
    }

    async fn finish(
        self: Box<Self>,
        _storage: &'static (dyn Storage + Sync),
        _key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }

    fn can_seek(&self) -> bool {
        true
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        if start >= self.body_len {
            return Error::e_explain(
                ErrorType::InternalError,
                format!("seek start out of range {start} >= {}", self.body_len),
            );
        }
        self.pos = start;
        self.end = end.unwrap_or(self.body_len).min(self.body_len);
        // Pending read-ahead belongs to the previous range.
        self.cancel_read_ahead();
        if matches!(self.body, Body::Chunked { chunk_size } if start >= chunk_size) {
            self.first = None;
        }
        Ok(())
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}
