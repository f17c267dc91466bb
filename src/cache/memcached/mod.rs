//! A Pingora cache [`Storage`] in memcached, shared by every node of the fleet.
//!
//! An object is a head item (the serialized `CacheMeta`, the body length, and either the body
//! itself when small or a pointer to body chunks) plus body chunks of at most `chunk_size`
//! bytes; [`entry`] defines the format. Chunks are written first and the head last, so the
//! head `set` is the commit point: readers see a whole object or none.
//!
//! Failure policy: memcached is a cache, so it may lose anything at any time. A missing, short
//! or undecodable item is a miss (counted and logged), never an error page or a wrong body. A
//! chunk that disappears while a body is being streamed ends the body with an `Err` (the client
//! sees a truncated response, never a short "complete" one) and deletes the head. Every
//! exchange gives up after `timeout`, and a per-server circuit breaker ([`breaker`]) stops
//! asking a server that keeps failing, so an outage costs a few timeouts, not one per request.

pub mod breaker;
pub mod entry;
mod hit;
mod miss;

use crate::metrics;
use async_trait::async_trait;
use breaker::{BreakerState, Breakers, StableRendezvous};
use bytes::Bytes;
use entry::{Body, Head};
use memcache::exp::{AsyncMetaClient, Get, Meta, MutationStatus, Ttl};
use pingora::cache::key::CacheHashKey;
use pingora::cache::storage::{MissHandler, PurgeType};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{
    CacheEntryKey, CacheKey, CacheMeta, HitHandler, PurgeOutcome, PurgeTarget, Storage,
};
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::OnceCell;

/// Settings of the memcached tier. Build with `..Default::default()` and check with
/// [`MemcachedSettings::validate`] before [`MemcachedStorage::new`].
#[derive(Debug, Clone)]
pub struct MemcachedSettings {
    /// The memcached servers; keys are spread over them by [`breaker::route`].
    pub servers: Vec<SocketAddr>,
    /// The most one exchange (connect, write, read) may take before it counts as failed.
    pub timeout: Duration,
    /// Body bytes per chunk item; with its 16-byte header and key it must fit memcached's item
    /// size limit (`-I`, 1 MiB by default). [`MemcachedStorage::probe`] checks it.
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

/// Why a memcached operation failed (internal; surfaces to Pingora as an `InternalError`).
#[derive(Debug)]
pub(crate) enum McError {
    BreakerOpen,
    Timeout,
    Client(memcache::exp::Error),
    /// An item that must exist (a chunk of a committed head) does not.
    Missing,
    Corrupt(entry::DecodeError),
    /// Our own invariant failed (size limit, length mismatch, aborted task).
    Invalid(&'static str),
}

impl std::fmt::Display for McError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            McError::BreakerOpen => f.write_str("circuit breaker open"),
            McError::Timeout => f.write_str("timed out"),
            McError::Client(e) => write!(f, "{e}"),
            McError::Missing => f.write_str("item missing"),
            McError::Corrupt(e) => write!(f, "corrupt item: {e}"),
            McError::Invalid(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for McError {}

impl McError {
    fn into_pingora(self, context: &'static str) -> Box<Error> {
        Error::because(ErrorType::InternalError, context, self)
    }
}

/// Transport-level failures say the server is unhealthy; answers like "object too large" or a
/// CAS mismatch come from a healthy server and must not trip its breaker.
fn is_transport(e: &memcache::exp::Error) -> bool {
    use memcache::exp::Error as E;
    match e {
        // memcached may answer a too-large value after the client wrote it all; that arrives
        // as Ambiguous around a Server error, and the server is fine.
        E::Ambiguous { source, .. } => is_transport(source),
        E::Io(_) | E::Timeout { .. } | E::Protocol(_) => true,
        _ => false,
    }
}

/// The memcached [`Storage`]. Use it as `&'static` (`Box::leak`), as Pingora requires.
pub struct MemcachedStorage {
    settings: MemcachedSettings,
    /// Server identities as the router sees them (`SocketAddr` display form).
    ids: Vec<String>,
    client: OnceCell<AsyncMetaClient>,
    breakers: Breakers,
}

impl MemcachedStorage {
    /// Needs no tokio runtime and does no I/O (so it is safe before Pingora daemonizes): the
    /// client is built on first use. Settings are assumed validated; out-of-range numbers are
    /// clamped rather than trusted.
    pub fn new(mut settings: MemcachedSettings) -> Self {
        settings.chunk_size = settings.chunk_size.max(1);
        settings.inline_max = settings.inline_max.min(settings.chunk_size);
        settings.write_concurrency = settings.write_concurrency.max(1);
        let ids: Vec<String> = settings.servers.iter().map(|s| s.to_string()).collect();
        MemcachedStorage {
            breakers: Breakers::new(&ids, settings.breaker_failures, settings.breaker_open_for),
            ids,
            settings,
            client: OnceCell::new(),
        }
    }

    pub fn settings(&self) -> &MemcachedSettings {
        &self.settings
    }

    /// The breaker state of each server, for health reporting.
    pub fn server_states(&self) -> Vec<(SocketAddr, BreakerState)> {
        self.settings
            .servers
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((*s, self.breakers.state(i)?)))
            .collect()
    }

    /// False while every server's breaker is open: the caller can skip the cache entirely.
    pub fn is_available(&self) -> bool {
        (0..self.ids.len()).any(|i| self.breakers.state(i) != Some(BreakerState::Open))
    }

    fn builder(&self) -> memcache::exp::MetaClientBuilder {
        AsyncMetaClient::builder()
            .router(StableRendezvous)
            .io_timeout(Some(self.settings.timeout))
            .connect_timeout(Some(self.settings.timeout))
            .max_idle(32)
    }

    async fn client(&self) -> std::result::Result<&AsyncMetaClient, McError> {
        self.client
            .get_or_try_init(|| {
                self.builder()
                    .connect_multiple_async(self.settings.servers.iter().copied())
            })
            .await
            .map_err(McError::Client)
    }

    /// Checks every server with a client of its own (so no pooled connection is tied to the
    /// caller's runtime): a no-op round trip, then a store and delete of a full-size chunk,
    /// which fails if `chunk_size` does not fit the server's item size limit (`-I`). Meant for
    /// start-up, from a background service; it does not touch the breakers.
    pub async fn probe(&self) -> std::result::Result<(), String> {
        let client = self
            .builder()
            .connect_multiple_async(self.settings.servers.iter().copied())
            .await
            .map_err(|e| format!("memcached: {e}"))?;
        let value = vec![0x5a; self.settings.chunk_size + entry::CHUNK_HEADER_LEN];
        let mut covered = vec![false; self.ids.len()];
        // Rendezvous decides where a key goes, so try names until each server got one.
        for n in 0..10_000u32 {
            if covered.iter().all(|c| *c) {
                break;
            }
            let key = format!("{}:probe:{n}", self.settings.namespace);
            let server = breaker::route(key.as_bytes(), &self.ids);
            if covered[server] {
                continue;
            }
            let addr = &self.ids[server];
            let t = self.settings.timeout * 4;
            let run = async {
                client.noop().await?;
                client.set(&key, &value).ttl(Ttl::secs(10)).send().await?;
                client.delete(&key).send().await?;
                Ok::<_, memcache::exp::Error>(())
            };
            match tokio::time::timeout(t, run).await {
                Ok(Ok(())) => covered[server] = true,
                Ok(Err(e)) => return Err(format!(
                    "memcached {addr}: {e} (storing a {} byte chunk; is chunk_size below the server's -I item size limit?)",
                    value.len()
                )),
                Err(_) => return Err(format!("memcached {addr}: no answer within {t:?}")),
            }
        }
        Ok(())
    }

    fn server_of(&self, key: &str) -> usize {
        breaker::route(key.as_bytes(), &self.ids)
    }

    fn label(&self, server: usize) -> &str {
        self.ids.get(server).map(String::as_str).unwrap_or("?")
    }

    /// One exchange with the servers holding `keys`: refused at once if any of their breakers
    /// is open, bounded by `timeout`, timed, and reported to the breakers.
    ///
    /// `outcome` classifies a finished exchange per key index: `Some(true)` ok, `Some(false)`
    /// transport failure of that key's server, `None` no information.
    async fn exchange<T, F>(
        &self,
        op: &'static str,
        keys: &[&str],
        fut: F,
        outcome: impl Fn(&T) -> Vec<Option<bool>>,
    ) -> std::result::Result<T, McError>
    where
        F: Future<Output = memcache::exp::Result<T>>,
    {
        let mut servers: Vec<usize> = keys.iter().map(|k| self.server_of(k)).collect();
        servers.sort_unstable();
        servers.dedup();
        for &s in &servers {
            if !self.breakers.admit(s) {
                metrics::MEMCACHED_ERRORS
                    .with_label_values(&[op, self.label(s)])
                    .inc();
                return Err(McError::BreakerOpen);
            }
        }
        let start = Instant::now();
        let result = tokio::time::timeout(self.settings.timeout, fut).await;
        metrics::MEMCACHED_EXCHANGE_DURATION
            .with_label_values(&[op])
            .observe(start.elapsed().as_secs_f64());
        let fail_all = |e: McError| {
            for &s in &servers {
                self.breakers.failure(s);
                metrics::MEMCACHED_ERRORS
                    .with_label_values(&[op, self.label(s)])
                    .inc();
            }
            Err(e)
        };
        match result {
            Err(_) => fail_all(McError::Timeout),
            Ok(Err(e)) if is_transport(&e) => fail_all(McError::Client(e)),
            Ok(Err(e)) => {
                for &s in &servers {
                    self.breakers.success(s);
                    metrics::MEMCACHED_ERRORS
                        .with_label_values(&[op, self.label(s)])
                        .inc();
                }
                Err(McError::Client(e))
            }
            Ok(Ok(v)) => {
                let per_key = outcome(&v);
                let mut failed: Vec<usize> = Vec::new();
                for (k, o) in keys.iter().zip(per_key) {
                    if o == Some(false) {
                        failed.push(self.server_of(k));
                    }
                }
                for &s in &servers {
                    if failed.contains(&s) {
                        self.breakers.failure(s);
                        metrics::MEMCACHED_ERRORS
                            .with_label_values(&[op, self.label(s)])
                            .inc();
                    } else {
                        self.breakers.success(s);
                    }
                }
                Ok(v)
            }
        }
    }

    fn batch_outcome<T>(v: &[memcache::exp::Result<T>]) -> Vec<Option<bool>> {
        v.iter()
            .map(|r| match r {
                Ok(_) => Some(true),
                Err(e) => Some(!is_transport(e)),
            })
            .collect()
    }

    fn head_key(&self, hex: &str) -> String {
        entry::head_key(&self.settings.namespace, hex)
    }

    fn chunk_key(&self, hex: &str, write_id: u64, index: u32) -> String {
        entry::chunk_key(&self.settings.namespace, hex, write_id, index)
    }

    /// The decoded head and its CAS; `Ok(None)` when absent or undecodable (logged, counted as
    /// corrupt when it exists but does not decode).
    async fn read_head(&self, hex: &str) -> std::result::Result<Option<(Head, u64)>, McError> {
        let key = self.head_key(hex);
        let client = self.client().await?;
        let fut = client.get(&key).meta(Meta::NONE.cas()).send();
        let r = self.exchange("get_head", &[&key], fut, |_| vec![]).await?;
        // An empty value is a lease placeholder, not an entry.
        let value = match r.value {
            Some(v) if r.hit() && !v.is_empty() => v,
            _ => return Ok(None),
        };
        metrics::MEMCACHED_READ_BYTES.inc_by(value.len() as u64);
        match entry::decode_head(Bytes::from(value)) {
            Ok(head) if head.body_len <= self.settings.max_object => {
                Ok(Some((head, r.item.cas.unwrap_or(0))))
            }
            Ok(_) => Err(McError::Corrupt(entry::DecodeError(
                "body larger than max_object",
            ))),
            Err(e) => Err(McError::Corrupt(e)),
        }
    }

    /// Every chunk of `head` exists with the right size; optionally extends their TTL.
    async fn check_chunks(
        &self,
        hex: &str,
        head: &Head,
        touch: Option<u32>,
    ) -> std::result::Result<(), McError> {
        let Body::Chunked { chunk_size } = head.body else {
            return Ok(());
        };
        let n = head.n_chunks();
        if n == 0 {
            return Ok(());
        }
        let keys: Vec<String> = (0..n)
            .map(|i| self.chunk_key(hex, head.write_id, i))
            .collect();
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let ops = keys.iter().map(|k| {
            let g = Get::new(k).without_value().meta(Meta::NONE.size());
            match touch {
                Some(ttl) => g.touch(Ttl::secs(ttl)),
                None => g,
            }
        });
        let client = self.client().await?;
        let op = if touch.is_some() {
            "touch_chunks"
        } else {
            "check_chunks"
        };
        let results = self
            .exchange(op, &key_refs, client.run_many(ops), |r| {
                Self::batch_outcome(r)
            })
            .await?;
        for (i, r) in results.into_iter().enumerate() {
            let r = r.map_err(McError::Client)?;
            if !r.hit() {
                return Err(McError::Missing);
            }
            let want =
                entry::CHUNK_HEADER_LEN + entry::chunk_len(head.body_len, chunk_size, i as u32);
            if r.item.size != Some(want as u64) {
                return Err(McError::Corrupt(entry::DecodeError("chunk size mismatch")));
            }
        }
        Ok(())
    }

    /// Chunk `index` of a committed write, checked against the head.
    async fn fetch_chunk(
        &'static self,
        hex: String,
        write_id: u64,
        index: u32,
        expected_len: usize,
    ) -> std::result::Result<Bytes, McError> {
        let key = self.chunk_key(&hex, write_id, index);
        let client = self.client().await?;
        let r = self
            .exchange("get_chunk", &[&key], client.get(&key).send(), |_| vec![])
            .await?;
        let value = match r.value {
            Some(v) if r.hit() => v,
            _ => return Err(McError::Missing),
        };
        metrics::MEMCACHED_READ_BYTES.inc_by(value.len() as u64);
        entry::decode_chunk(Bytes::from(value), write_id, index, expected_len)
            .map_err(McError::Corrupt)
    }

    async fn set_item(
        &self,
        op: &'static str,
        key: &str,
        value: &[u8],
        ttl: u32,
        cas: Option<u64>,
    ) -> std::result::Result<MutationStatus, McError> {
        let client = self.client().await?;
        let mut req = client.set(key, value).ttl(Ttl::secs(ttl.max(1)));
        if let Some(cas) = cas {
            req = req.compare_cas(cas);
        }
        let r = self.exchange(op, &[key], req.send(), |_| vec![]).await?;
        if r.applied() {
            metrics::MEMCACHED_WRITTEN_BYTES.inc_by(value.len() as u64);
        }
        Ok(r.status)
    }

    async fn delete_item(
        &self,
        key: &str,
        cas: Option<u64>,
    ) -> std::result::Result<MutationStatus, McError> {
        let client = self.client().await?;
        let mut req = client.delete(key);
        if let Some(cas) = cas {
            req = req.compare_cas(cas);
        }
        let r = self
            .exchange("delete", &[key], req.send(), |_| vec![])
            .await?;
        Ok(r.status)
    }

    /// Deletes the head only if it is still the write we read (`cas`), so a newer fill
    /// committed meanwhile survives. Best effort, in the background.
    fn drop_head_later(&'static self, hex: &str, cas: u64) {
        let key = self.head_key(hex);
        tokio::spawn(async move {
            if let Err(e) = self.delete_item(&key, Some(cas)).await {
                log::debug!("memcached: deleting broken head {key}: {e}");
            }
        });
    }

    fn ttls(&self, meta: &CacheMeta) -> (u32, u32) {
        entry::ttls(
            meta.fresh_until(),
            meta.stale_while_revalidate_sec(),
            meta.stale_if_error_sec(),
            self.settings.keep_stale_for,
            SystemTime::now(),
        )
    }

    /// Replaces the head's meta with `new`, keeping its body (the CAS makes a concurrent refill
    /// win). `Ok(false)` when the entry is gone, broken or was replaced meanwhile.
    async fn rewrite_head(
        &'static self,
        hex: &str,
        new: impl FnOnce(CacheMeta) -> Option<CacheMeta>,
    ) -> std::result::Result<bool, McError> {
        let (head, cas) = match self.read_head(hex).await {
            Ok(Some(h)) => h,
            Ok(None) | Err(McError::Corrupt(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let Ok(old) = CacheMeta::deserialize(&head.internal, &head.header) else {
            return Ok(false);
        };
        let Some(mut meta) = new(old) else {
            return Ok(false);
        };
        miss::fix_content_length(&mut meta, head.body_len);
        let (head_ttl, chunk_ttl) = self.ttls(&meta);
        // Chunks first: they must never expire before the head that points at them.
        match self.check_chunks(hex, &head, Some(chunk_ttl)).await {
            Ok(()) => {}
            Err(McError::Missing | McError::Corrupt(_)) => {
                self.drop_head_later(hex, cas);
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let (internal, header) = meta
            .serialize()
            .map_err(|_| McError::Invalid("meta does not serialize"))?;
        let value = Head {
            internal: internal.into(),
            header: header.into(),
            ..head
        }
        .encode();
        let status = self
            .set_item("set_head", &self.head_key(hex), &value, head_ttl, Some(cas))
            .await?;
        Ok(status == MutationStatus::Applied)
    }
}

fn count_lookup(result: &str) {
    metrics::L2_LOOKUPS.with_label_values(&[result]).inc();
}

#[async_trait]
impl Storage for MemcachedStorage {
    async fn lookup(
        &'static self,
        key: &CacheKey,
        _trace: &SpanHandle,
    ) -> Result<Option<(CacheMeta, HitHandler)>> {
        let hex = key.combined();
        let (head, cas) = match self.read_head(&hex).await {
            Ok(Some(h)) => h,
            Ok(None) => {
                count_lookup("miss");
                return Ok(None);
            }
            Err(McError::Corrupt(e)) => {
                count_lookup("corrupt");
                log::warn!("memcached: unusable head for {hex}: {e}; treated as a miss");
                return Ok(None);
            }
            Err(McError::BreakerOpen) => {
                // Known-down server: a quiet, instant miss instead of an error per request.
                count_lookup("error");
                return Ok(None);
            }
            Err(e) => {
                count_lookup("error");
                return Err(e.into_pingora("memcached lookup"));
            }
        };
        let meta = match CacheMeta::deserialize(&head.internal, &head.header) {
            Ok(m) => m,
            Err(e) => {
                count_lookup("corrupt");
                log::warn!(
                    "memcached: head for {hex} has an unreadable meta: {e}; treated as a miss"
                );
                return Ok(None);
            }
        };
        match self.check_chunks(&hex, &head, None).await {
            Ok(()) => {}
            Err(McError::Missing) => {
                count_lookup("incomplete");
                log::info!("memcached: a chunk of {hex} was evicted; treated as a miss");
                self.drop_head_later(&hex, cas);
                return Ok(None);
            }
            Err(McError::Corrupt(e)) => {
                count_lookup("corrupt");
                log::warn!("memcached: a chunk of {hex} is unusable: {e}; treated as a miss");
                self.drop_head_later(&hex, cas);
                return Ok(None);
            }
            Err(McError::BreakerOpen) => {
                count_lookup("error");
                return Ok(None);
            }
            Err(e) => {
                count_lookup("error");
                return Err(e.into_pingora("memcached lookup"));
            }
        }
        count_lookup("hit");
        let hit = hit::McHit::new(self, hex, cas, head);
        Ok(Some((meta, Box::new(hit))))
    }

    async fn get_miss_handler(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<MissHandler> {
        let hex = key.combined();
        let head_server = self.server_of(&self.head_key(&hex));
        if self.breakers.state(head_server) == Some(BreakerState::Open) {
            return Error::e_explain(
                ErrorType::InternalError,
                "memcached server of this key is down (breaker open); not caching",
            );
        }
        let (internal, header) = meta.serialize()?;
        let (head_ttl, chunk_ttl) = self.ttls(meta);
        let miss = miss::McMiss::new(self, hex, meta, internal, header, head_ttl, chunk_ttl);
        if miss
            .declared_len
            .is_some_and(|n| n > self.settings.max_object)
        {
            return Error::e_explain(
                ErrorType::InternalError,
                "Content-Length above memcached max_object; not caching",
            );
        }
        Ok(Box::new(miss))
    }

    async fn purge(
        &'static self,
        target: PurgeTarget<'_>,
        _purge_type: PurgeType,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if let PurgeTarget::Exact(CacheEntryKey::Identified { .. }) = target {
            // We hand out no entry ids, so no such entry can be ours.
            return Ok(PurgeOutcome::NotFound);
        }
        let key = self.head_key(&target.key().combined());
        // Chunks are left to expire: a reader may still be streaming them, and without the
        // head nothing can reach them.
        match self.delete_item(&key, None).await {
            Ok(MutationStatus::Applied) => Ok(PurgeOutcome::Purged(None)),
            Ok(_) => Ok(PurgeOutcome::NotFound),
            Err(e) => Err(e.into_pingora("memcached purge")),
        }
    }

    async fn expire(
        &'static self,
        target: PurgeTarget<'_>,
        _trace: &SpanHandle,
    ) -> Result<PurgeOutcome> {
        if let PurgeTarget::Exact(CacheEntryKey::Identified { .. }) = target {
            return Ok(PurgeOutcome::NotFound);
        }
        let hex = target.key().combined();
        let expired = self
            .rewrite_head(&hex, |mut m| {
                m.expire_at(SystemTime::now());
                Some(m)
            })
            .await
            .map_err(|e| e.into_pingora("memcached expire"))?;
        Ok(if expired {
            PurgeOutcome::Expired
        } else {
            PurgeOutcome::NotFound
        })
    }

    async fn update_meta(
        &'static self,
        key: &CacheKey,
        meta: &CacheMeta,
        _trace: &SpanHandle,
    ) -> Result<bool> {
        let hex = key.combined();
        // CacheMeta is not Clone; its serialized form is the copy.
        let (internal, header) = meta.serialize()?;
        self.rewrite_head(&hex, |_| CacheMeta::deserialize(&internal, &header).ok())
            .await
            .map_err(|e| e.into_pingora("memcached update_meta"))
    }

    fn support_streaming_partial_write(&self) -> bool {
        false
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync + 'static) {
        self
    }
}
