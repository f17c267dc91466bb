//! Pacing of body chunk reads: how a memcached hit streams with O(chunk_size) memory and
//! without its deadline turning load into failures.
//!
//! Every body chunk read in the process takes a permit first ([`MAX_CHUNK_READS`] at once).
//! The chunk's own deadline (`body_timeout`) starts when its exchange starts, after the permit:
//! time spent queueing behind other readers is load, not a failing server, so it neither cuts a
//! stream nor counts against a server's breaker. Memory for chunk reads in flight is bounded by
//! `MAX_CHUNK_READS × chunk_size` whatever the number of readers, and each reader holds at most
//! the chunk it is sending plus its read-ahead.

use super::{McError, MemcachedStorage};
use bytes::Bytes;
use std::sync::LazyLock;
use tokio::sync::Semaphore;

/// Chunk exchanges in flight per process. Enough to keep every memcached server busy on a
/// LAN; more only queues inside memcached, where the deadline would count it.
pub(super) const MAX_CHUNK_READS: usize = 64;

static PERMITS: LazyLock<Semaphore> = LazyLock::new(|| Semaphore::new(MAX_CHUNK_READS));

/// [`MemcachedStorage::fetch_chunk`] once a read permit is free.
pub(super) async fn fetch_chunk(
    storage: &'static MemcachedStorage,
    hex: String,
    write_id: u64,
    index: u32,
    len: usize,
) -> std::result::Result<Bytes, McError> {
    let _permit = PERMITS
        .acquire()
        .await
        .map_err(|_| McError::Invalid("chunk read permits closed"))?;
    storage.fetch_chunk(hex, write_id, index, len).await
}
