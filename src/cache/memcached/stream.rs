//! Pacing of body chunk reads: how a memcached hit streams with bounded memory and without its
//! deadline turning load into failures.
//!
//! Every body chunk read takes its size from a process-wide byte budget ([`CHUNK_BUDGET`])
//! before its exchange starts, and gives it back only when the chunk's bytes are dropped, that
//! is once Pingora has written them to the client. So the chunks held for memcached hits, read
//! or being sent, never exceed the budget, whatever the number of readers: 1000 clients reading
//! 256 KiB objects queue for the budget instead of holding 250 MiB. The chunk's own deadline
//! (`body_timeout`) starts after the budget is granted: time spent queueing behind other readers
//! is load, not a failing server, so it neither cuts a stream nor counts against a breaker.

use super::{McError, MemcachedStorage};
use bytes::Bytes;
use std::sync::{Arc, LazyLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of body chunks held for memcached hits per process (read in flight, or waiting to be
/// written to a client). 4 MiB is 8 default-size (512 KiB) chunks in flight. On 256 KiB
/// memcached-only hits at 1000 connections (loopback, wrk) it served 6.7–6.8k hits/s against
/// 5.6–5.7k with 32 MiB (less memory touched per hit), at 70–74 MiB peak RSS against 92–98;
/// 8 MiB fell between, 2 MiB was no better (docs/performance.md).
pub(super) const CHUNK_BUDGET: usize = 4 << 20;
/// Budget accounting unit: one permit per KiB.
const UNIT: usize = 1024;

static BUDGET: LazyLock<Arc<Semaphore>> =
    LazyLock::new(|| Arc::new(Semaphore::new(CHUNK_BUDGET / UNIT)));

/// Waits until `len` bytes of the budget are free (a chunk larger than the whole budget waits
/// for all of it, so it still proceeds, alone).
pub(super) async fn reserve(len: usize) -> std::result::Result<OwnedSemaphorePermit, McError> {
    let units = len.div_ceil(UNIT).clamp(1, CHUNK_BUDGET / UNIT) as u32;
    BUDGET
        .clone()
        .acquire_many_owned(units)
        .await
        .map_err(|_| McError::Invalid("chunk budget closed"))
}

/// `data` carrying its share of the budget: the share returns when the last slice of it drops.
pub(super) fn held(data: Bytes, permit: OwnedSemaphorePermit) -> Bytes {
    Bytes::from_owner(Held {
        data,
        _permit: permit,
    })
}

struct Held {
    data: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

/// [`MemcachedStorage::fetch_chunk`] once its bytes fit the budget.
pub(super) async fn fetch_chunk(
    storage: &'static MemcachedStorage,
    hex: String,
    write_id: u64,
    index: u32,
    len: usize,
) -> std::result::Result<Bytes, McError> {
    let permit = reserve(len).await?;
    let data = storage.fetch_chunk(hex, write_id, index, len).await?;
    Ok(held(data, permit))
}
