//! `cache:` — the memory tier (L1), the memcached tier (L2) and the cache-wide rules. The
//! memcached section is the one definition of the shared tier's settings: the adapter takes
//! [`Memcached`] as it is, so defaults and validation live here only.

use super::{err, values, ConfigError};
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

/// The most body chunks one stored object may have: the head format's limit, and the bound on
/// the work one head can make a reader do.
pub const MAX_CHUNKS: usize = 1 << 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    #[serde(default)]
    pub memory: Memory,
    /// How long requests for an object being fetched wait for that fetch before going to the
    /// origin themselves.
    #[serde(default = "secs::<5>", deserialize_with = "values::duration")]
    pub lock_timeout: Duration,
    /// RFC 9111 §4.2.2: freshness = this fraction of (Date − Last-Modified); 0 disables.
    #[serde(default = "tenth")]
    pub heuristic_fraction: f64,
    /// Upper bound on heuristic freshness.
    #[serde(default = "secs::<86400>", deserialize_with = "values::duration")]
    pub heuristic_max: Duration,
    /// RFC 9111 §4.2.4: how long past its freshness a stored response may answer when the
    /// origin cannot be reached at all (connect failed, closed or reset before answering),
    /// unless the origin forbade stale. Varnish's default grace; an origin 5xx is governed by
    /// stale-if-error only.
    #[serde(default = "secs::<10>", deserialize_with = "values::duration")]
    pub stale_on_disconnect: Duration,
    /// The shared tier (L2); omit for memory only.
    pub memcached: Option<Memcached>,
    /// RFC 9213 targeted fields, first present and valid wins over `Cache-Control` for this
    /// cache's decisions. Put `shellac-cache-control` first for a field only Shellac obeys.
    #[serde(default = "targeted", deserialize_with = "values::header_names")]
    pub targeted_fields: Vec<http::HeaderName>,
    /// Send targeted fields on to clients (they steer this cache, so by default they stop here;
    /// on for a CDN in front that should obey `CDN-Cache-Control` too, RFC 9213 §3).
    #[serde(default)]
    pub forward_targeted_fields: bool,
    /// Request fields whose list members are normalised (order, case, whitespace) before Vary
    /// matching, so equivalent requests share a variant.
    #[serde(default = "vary_normalize", deserialize_with = "values::header_names")]
    pub vary_normalize: Vec<http::HeaderName>,
    /// Methods whose successful responses invalidate the stored target URI (RFC 9111 §4.4).
    /// Exact, case-sensitive names (RFC 9110 §9.1): `post` or an unknown extension method
    /// invalidates nothing unless listed.
    #[serde(default = "unsafe_methods")]
    pub invalidate_on: Vec<String>,
    /// Surrogate keys: the origin's tags on a response, for purging by tag.
    #[serde(default)]
    pub tags: Tags,
    /// What a single-range GET that finds no stored response asks the origin for.
    #[serde(default)]
    pub range_misses: RangeMisses,
}

/// `cache.range_misses`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RangeMisses {
    /// The whole object: it is stored and the range carved from it, so later ranges and whole
    /// requests are hits (best for objects under `max_object`, as Varnish and nginx do).
    #[default]
    Whole,
    /// The client's range: the 206 is stored as a partial (RFC 9111 §3.3), answers later
    /// ranges inside it, and combines with later parts of the same strong `ETag` (§3.4) until
    /// the whole object is stored (for large objects: video, downloads).
    Forward,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tags {
    /// The response header naming the tags (`Cache-Tag` is read too).
    #[serde(default = "surrogate_key")]
    pub header: String,
    /// Send the tag headers on to clients (they are removed by default).
    #[serde(default)]
    pub expose: bool,
}

impl Default for Tags {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("every tags key has a default")
    }
}

fn surrogate_key() -> String {
    "Surrogate-Key".into()
}

fn unsafe_methods() -> Vec<String> {
    ["POST", "PUT", "DELETE", "PATCH"]
        .map(String::from)
        .to_vec()
}

/// `routes[].client_cache_control`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCacheControl {
    /// A client's `no-cache`, `max-age` and `Pragma: no-cache` do not force revalidation (as
    /// Varnish and nginx): otherwise every client could multiply origin load at will.
    #[default]
    Ignore,
    /// They do, and concurrent forced revalidations of one object share one origin request.
    Honor,
}

impl Default for Cache {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("every cache key has a default")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    /// Bytes the store may hold: bodies, headers and per-entry metadata.
    #[serde(default = "mib::<256>", deserialize_with = "values::size")]
    pub size: u64,
    /// Larger responses are streamed through and not stored.
    #[serde(default = "mib::<16>", deserialize_with = "values::size")]
    pub max_object: u64,
}

impl Default for Memory {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("every memory key has a default")
    }
}

/// The 32-byte MAC key, derived from the key file's bytes. Its Debug never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct MacKey([u8; 32]);

impl MacKey {
    /// The key file must hold at least this many bytes (of random data: `head -c 32
    /// /dev/urandom`); anything longer is fine, it is hashed down.
    pub const MIN_SECRET: usize = 32;

    /// The key itself, for the keyed hash.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn derive(secret: &[u8]) -> Option<MacKey> {
        (secret.len() >= Self::MIN_SECRET)
            .then(|| MacKey(blake3::derive_key("shellac memcached item MAC v1", secret)))
    }
}

impl std::fmt::Debug for MacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MacKey(..)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memcached {
    /// The memcached servers; keys are spread over them by rendezvous hashing.
    #[serde(default, deserialize_with = "values::socket_addrs")]
    pub servers: Vec<SocketAddr>,
    /// Each memcached exchange (connect, write, read) gives up after this. A batched lookup's
    /// clock starts when its batch is sent; queued behind this node's other lookups, it waits
    /// at most 4 × this in all.
    #[serde(default = "ms::<50>", deserialize_with = "values::duration")]
    pub timeout: Duration,
    /// A body chunk read while a hit streams (the header is already sent) gives up after this:
    /// a separate, longer deadline, so load does not cut a progressing stream. A chunk that
    /// misses it is continued from the origin (or the response aborted), never cut short.
    #[serde(default = "ms::<500>", deserialize_with = "values::duration")]
    pub body_timeout: Duration,
    /// Body chunk size; with its 16-byte header and key it must stay under memcached's item
    /// size limit (`-I`, 1MiB by default). Checked against the servers at start-up.
    #[serde(default = "kib::<512>", deserialize_with = "values::size_usize")]
    pub chunk_size: usize,
    /// Larger bodies are not stored in memcached.
    #[serde(default = "mib_usize::<64>", deserialize_with = "values::size_usize")]
    pub max_object: usize,
    /// Key prefix; nodes sharing entries must agree on it. Change it to drop every entry.
    #[serde(default = "namespace")]
    pub namespace: String,
    /// How often a node's memory copy re-checks whether it was purged elsewhere: the bound on
    /// how long a purge on one node can leave another node serving the object (plus the one
    /// memcached read that re-checks; concurrent hits go by the last answer meanwhile).
    #[serde(default = "ms::<500>", deserialize_with = "values::duration")]
    pub purge_check: Duration,
    /// Bodies up to this size are stored inside the head item: one round trip per hit.
    #[serde(default = "kib::<64>", deserialize_with = "values::size_usize")]
    pub inline_max: usize,
    /// How long memcached keeps an entry after it can no longer be served stale, so it can
    /// still be revalidated (304) instead of refetched.
    #[serde(default = "secs::<3600>", deserialize_with = "values::duration")]
    pub keep_stale_for: Duration,
    /// Consecutive failed exchanges that open a server's circuit breaker.
    #[serde(default = "five")]
    pub breaker_failures: u32,
    /// How long an open breaker fails fast before it lets one probe through.
    #[serde(default = "ms::<1500>", deserialize_with = "values::duration")]
    pub breaker_open_for: Duration,
    /// Chunk writes in flight per object being stored.
    #[serde(default = "four")]
    pub write_concurrency: usize,
    /// Purge markers for invalidations by unsafe methods (§4.4) this node writes to memcached
    /// per second (a token bucket holding one second's worth). Beyond it the object is removed
    /// from this node and memcached but other nodes are not told, so a flood of POSTs cannot
    /// fill the shared tier with markers. PURGE is not limited.
    #[serde(default = "hundred")]
    pub invalidations_per_second: u32,
    /// A file of at least 32 secret bytes, the same on every node: every value written to
    /// memcached is then authenticated with a keyed hash and anything else is ignored. Relative
    /// to the config file's directory. Read when the config is loaded, so `-t` checks it.
    #[serde(default)]
    pub key_file: Option<std::path::PathBuf>,
    /// The MAC key derived from `key_file` by [`Config::load`](super::Config::load).
    #[serde(skip)]
    pub mac_key: Option<MacKey>,
}

impl Default for Memcached {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("every memcached key but servers has a default")
    }
}

impl Cache {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let (memory, c) = (&self.memory, self);
        if memory.size > 0 && memory.max_object > memory.size {
            return err("cache.memory.max_object", format!("{} bytes is larger than cache.memory.size ({} bytes); lower it or raise the size", memory.max_object, memory.size));
        }
        if !(0.0..=1.0).contains(&c.heuristic_fraction) {
            return err(
                "cache.heuristic_fraction",
                "must be between 0 (off) and 1; RFC 9111 suggests 0.1",
            );
        }
        for (i, m) in c.invalidate_on.iter().enumerate() {
            let p = format!("cache.invalidate_on[{i}]");
            if http::Method::from_bytes(m.as_bytes()).is_err() {
                return err(p, format!("{m:?} is not a method name"));
            }
            if matches!(m.as_str(), "GET" | "HEAD" | "OPTIONS" | "TRACE") {
                return err(
                    p,
                    format!(
                        "{m} is a safe method and never invalidates (RFC 9111 §4.4); remove it"
                    ),
                );
            }
            if m.bytes().any(|b| b.is_ascii_lowercase()) {
                return err(p, format!("methods are case-sensitive (RFC 9110 §9.1) and clients send them in upper case; write {:?}", m.to_ascii_uppercase()));
            }
        }
        if c.lock_timeout.is_zero() {
            return err("cache.lock_timeout", "must be greater than 0");
        }
        if memory.size == 0 && c.memcached.is_none() {
            return err("cache.memory.size", "0 turns the memory tier off, which needs cache.memcached; give it a size or configure memcached");
        }
        if http::HeaderName::from_bytes(c.tags.header.as_bytes()).is_err() {
            return err("cache.tags.header", "must be a valid HTTP header name");
        }
        match &c.memcached {
            Some(m) => m.validate(),
            None => Ok(()),
        }
    }
}

impl Memcached {
    /// Reads `key_file` (relative to `dir`) into `mac_key`.
    pub(super) fn load_key(&mut self, dir: &std::path::Path) -> Result<(), ConfigError> {
        let Some(file) = &self.key_file else {
            return Ok(());
        };
        let path = dir.join(file);
        let secret = std::fs::read(&path).or_else(|e| {
            err(
                "cache.memcached.key_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        self.mac_key = Some(MacKey::derive(&secret).ok_or_else(|| ConfigError {
            path: "cache.memcached.key_file".into(),
            message: format!(
                "{} holds {} bytes; it needs at least {} random bytes (e.g. `head -c 32 /dev/urandom > {}`), the same file on every node",
                path.display(),
                secret.len(),
                MacKey::MIN_SECRET,
                path.display()
            ),
        })?);
        Ok(())
    }

    /// Every rule of the `cache.memcached` section, with the key path of the first broken one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let p = "cache.memcached";
        if self.servers.is_empty() {
            return err(
                format!("{p}.servers"),
                "the list is empty; add at least one IP:port",
            );
        }
        let mut seen = std::collections::HashSet::new();
        if let Some((i, dup)) = self
            .servers
            .iter()
            .enumerate()
            .find(|(_, s)| !seen.insert(**s))
        {
            return err(
                format!("{p}.servers[{i}]"),
                format!("{dup} is listed twice; remove the duplicate"),
            );
        }
        if self.timeout.is_zero() {
            return err(format!("{p}.timeout"), "must be greater than 0");
        }
        if self.invalidations_per_second == 0 {
            return err(
                format!("{p}.invalidations_per_second"),
                "must be at least 1; 0 would keep every POST from reaching other nodes",
            );
        }
        if !(4096..=(128 << 20)).contains(&self.chunk_size) {
            return err(
                format!("{p}.chunk_size"),
                "must be between 4KiB and 128MiB (and fit memcached's -I item size limit)",
            );
        }
        if self.inline_max > self.chunk_size {
            return err(
                format!("{p}.inline_max"),
                "must not exceed chunk_size; lower it",
            );
        }
        let n = self.max_object.div_ceil(self.chunk_size);
        if n > MAX_CHUNKS {
            return err(
                format!("{p}.max_object"),
                format!("max_object / chunk_size is {n} chunks; at most {MAX_CHUNKS} are supported, raise chunk_size or lower max_object"),
            );
        }
        if self.namespace.is_empty()
            || self.namespace.len() > 64
            || !self
                .namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return err(
                format!("{p}.namespace"),
                "must be 1-64 characters of A-Z a-z 0-9 _ . -",
            );
        }
        if self.write_concurrency == 0 {
            return err(format!("{p}.write_concurrency"), "must be at least 1");
        }
        if self.breaker_failures == 0 {
            return err(format!("{p}.breaker_failures"), "must be at least 1");
        }
        if self.purge_check > Duration::from_secs(1) {
            return err(
                format!("{p}.purge_check"),
                "at most 1s: it bounds how long a purged object may still be served",
            );
        }
        Ok(())
    }
}

fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}
fn ms<const N: u64>() -> Duration {
    Duration::from_millis(N)
}
fn kib<const N: usize>() -> usize {
    N << 10
}
fn mib<const N: u64>() -> u64 {
    N << 20
}
fn mib_usize<const N: usize>() -> usize {
    N << 20
}
fn tenth() -> f64 {
    0.1
}
fn five() -> u32 {
    5
}
fn hundred() -> u32 {
    100
}
fn four() -> usize {
    4
}
fn targeted() -> Vec<http::HeaderName> {
    vec![http::HeaderName::from_static("cdn-cache-control")]
}
fn vary_normalize() -> Vec<http::HeaderName> {
    vec![http::header::ACCEPT_ENCODING, http::header::ACCEPT_LANGUAGE]
}
fn namespace() -> String {
    "shellac1".into()
}
