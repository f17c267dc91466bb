//! The settings of the memcached tier, and their validation.

use super::entry;
use std::net::SocketAddr;
use std::time::Duration;

/// Settings of the memcached tier. Build with `..Default::default()` and check with
/// [`MemcachedSettings::validate`] before [`MemcachedStorage::new`](super::MemcachedStorage::new).
#[derive(Debug, Clone)]
pub struct MemcachedSettings {
    /// The memcached servers; keys are spread over them by [`breaker::route`](super::breaker::route).
    pub servers: Vec<SocketAddr>,
    /// The most one exchange (connect, write, read) may take before it counts as failed.
    pub timeout: Duration,
    /// Body bytes per chunk item; with its 16-byte header and key it must fit memcached's item
    /// size limit (`-I`, 1 MiB by default). [`MemcachedStorage::probe`](super::MemcachedStorage::probe) checks it.
    pub chunk_size: usize,
    /// Larger bodies are not stored (the write is aborted with an error).
    pub max_object: usize,
    /// Prefix of every key. Change it to invalidate everything (e.g. on a format change);
    /// all nodes sharing memcached must use the same one.
    pub namespace: String,
    /// Bodies up to this size are stored inside the head item: one round trip per hit.
    pub inline_max: usize,
    /// How long memcached keeps an entry after it can no longer be served stale, so it can
    /// still be revalidated (304) instead of refetched.
    pub keep_stale_for: Duration,
    /// Consecutive failed exchanges that open a server's circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker fails fast before it lets one probe through.
    pub breaker_open_for: Duration,
    /// Chunk writes in flight per object being stored.
    pub write_concurrency: usize,
}

impl Default for MemcachedSettings {
    fn default() -> Self {
        MemcachedSettings {
            servers: Vec::new(),
            timeout: Duration::from_millis(100),
            chunk_size: 512 * 1024,
            max_object: 64 * 1024 * 1024,
            namespace: "shellac1".into(),
            inline_max: 64 * 1024,
            keep_stale_for: Duration::from_secs(3600),
            breaker_failures: 5,
            breaker_open_for: Duration::from_millis(1500),
            write_concurrency: 4,
        }
    }
}

impl MemcachedSettings {
    /// Every problem with the settings, phrased for an operator; `Ok` when usable.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.servers.is_empty() {
            return Err("no memcached servers".into());
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = self.servers.iter().find(|s| !seen.insert(**s)) {
            return Err(format!("memcached server {dup} is listed twice"));
        }
        if self.timeout.is_zero() {
            return Err("timeout must be greater than 0".into());
        }
        if !(4096..=(128 << 20)).contains(&self.chunk_size) {
            return Err("chunk_size must be between 4KiB and 128MiB".into());
        }
        if self.inline_max > self.chunk_size {
            return Err("inline_max must not exceed chunk_size".into());
        }
        let n = entry::n_chunks(self.max_object, self.chunk_size);
        if n > entry::MAX_CHUNKS {
            return Err(format!(
                "max_object / chunk_size is {n} chunks; at most {} are supported",
                entry::MAX_CHUNKS
            ));
        }
        if self.namespace.is_empty()
            || self.namespace.len() > 64
            || !self
                .namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err("namespace must be 1-64 characters of A-Z a-z 0-9 _ . -".into());
        }
        if self.write_concurrency == 0 || self.breaker_failures == 0 {
            return Err("write_concurrency and breaker_failures must be at least 1".into());
        }
        Ok(())
    }
}
