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

mod batch;
pub mod breaker;
pub mod entry;
pub mod fleet;
mod hit;
mod io;
mod meta;
mod miss;
pub mod peek;
pub mod seal;
mod stream;

/// The shared tier's settings are the config section itself: one definition, one set of defaults.
pub use crate::config::Memcached as MemcachedSettings;

use io::McError;

use crate::metrics;
use async_trait::async_trait;
use breaker::{BreakerState, Breakers};

use entry::Head;
use memcache::exp::{AsyncMetaClient, MutationStatus};
use pingora::cache::key::CacheHashKey;
use pingora::cache::storage::{MissHandler, PurgeType};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{
    CacheEntryKey, CacheKey, CacheMeta, HitHandler, PurgeOutcome, PurgeTarget, Storage,
};
use pingora::{Error, ErrorType, Result};
use std::any::Any;

use std::net::SocketAddr;
use std::time::SystemTime;
use tokio::sync::OnceCell;

/// The memcached [`Storage`]. Use it as `&'static` (`Box::leak`), as Pingora requires.
pub struct MemcachedStorage {
    settings: MemcachedSettings,
    /// Server identities as the router sees them (`SocketAddr` display form).
    ids: Vec<String>,
    client: OnceCell<AsyncMetaClient>,
    /// Body chunk reads get connections of their own, so a lookup never queues behind a
    /// large value and the large read buffers stay on a few reused connections.
    bulk: OnceCell<AsyncMetaClient>,
    /// Head and purge-marker reads of concurrent lookups, sent together ([`batch`]).
    lookups: OnceCell<batch::Batcher>,
    breakers: std::sync::Arc<Breakers>,
    /// Authenticates every value written and read (a no-op without `key_file`).
    seal: seal::Sealer,
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
            breakers: std::sync::Arc::new(Breakers::new(
                &ids,
                settings.breaker_failures,
                settings.breaker_open_for,
            )),
            ids,
            seal: seal::Sealer::new(settings.mac_key.clone()),
            settings,
            client: OnceCell::new(),
            bulk: OnceCell::new(),
            lookups: OnceCell::new(),
        }
    }

    pub fn settings(&self) -> &MemcachedSettings {
        &self.settings
    }

    /// Whether values are authenticated (`key_file` set).
    pub fn is_keyed(&self) -> bool {
        self.seal.is_keyed()
    }

    /// `value` as written to item `key`: with its MAC when keyed. For items other modules
    /// write through the client themselves; [`Self::set_item`] seals on its own.
    pub(crate) fn seal_value(&self, key: &str, value: Vec<u8>) -> Vec<u8> {
        self.seal.seal(key, value)
    }

    /// The plain value read from item `key`, or `None` when it fails authentication (counted
    /// and logged; the caller deletes it).
    pub(crate) fn open_value(
        &self,
        kind: seal::Kind,
        key: &str,
        value: Vec<u8>,
    ) -> Option<Vec<u8>> {
        self.seal.open(kind, key, value).ok()
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
        let Ok(old) = meta::decode(&head) else {
            return Ok(false);
        };
        let Some(mut meta) = new(old) else {
            return Ok(false);
        };
        crate::cache::stored::frame(meta.response_header_mut(), head.body_len);
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
        let (internal, header) =
            meta::encode(&meta).map_err(|_| McError::Invalid("meta does not serialize"))?;
        let value = Head {
            version: entry::FORMAT_VERSION,
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
        let primary = key.primary();
        let (read, marker) = match self.read_head_and_marker(&hex, &primary).await {
            Some(Ok((head, marker))) => (head, Some(marker)),
            Some(Err(e)) => (Err(e), None),
            // Boxed, as the rare branches below: a lookup's future is as large as its
            // largest state, and 1000 lookups waiting for memcached held ~4 KiB each.
            None => (Box::pin(self.read_head(&hex)).await, None),
        };
        let (head, cas) = match read {
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
        let meta = match meta::decode(&head) {
            Ok(m) => m,
            Err(e) => {
                count_lookup("corrupt");
                log::warn!(
                    "memcached: head for {hex} has an unreadable meta: {e}; treated as a miss"
                );
                return Ok(None);
            }
        };
        // Every head is checked against its URL's purge marker, which retires every copy
        // created before it: Vary variants (a purge cannot list their keys) and fills that were
        // in flight during the purge. Unknown (memcached could not say) serves the copy, as the
        // memory tier does. The marker came with the head when one server holds both; otherwise
        // it goes out with the chunk check.
        // An inline body has no chunks to check: no boxed future for it on every small hit.
        let inline = matches!(head.body, entry::Body::Inline(_));
        let (purged, chunks) = match marker {
            Some(m) if inline => (m, Ok(None)),
            Some(m) => (
                m,
                Box::pin(self.check_chunks_reading_first(&hex, &head)).await,
            ),
            None => {
                Box::pin(async {
                    tokio::join!(
                        self.purge_marker(&primary),
                        self.check_chunks_reading_first(&hex, &head)
                    )
                })
                .await
            }
        };
        if let Ok(Some(purged)) = purged {
            // A plain copy that was already stale at the purge (a soft purge expires it in
            // place) stays, to be revalidated: it can no longer be served as fresh. Variants
            // were never expired (they cannot be listed), so the marker retires them. The
            // second of slack: stored times are whole seconds.
            let stale_at_purge = meta.fresh_until() <= purged + std::time::Duration::from_secs(1);
            let retired = meta.variance().is_some() || !stale_at_purge;
            let at = crate::cache::stored::millis(purged);
            if crate::cache::stored::retires(at, meta.created()) && retired {
                count_lookup("miss");
                self.drop_head_later(&hex, cas);
                return Ok(None);
            }
        }
        let first = match chunks {
            Ok(first) => first,
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
        };
        count_lookup("hit");
        let hit = hit::McHit::new(self, hex, cas, head, first);
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
        let (internal, header) = meta::encode(meta)?;
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

/// Checks memcached once at start-up (reachable, and `chunk_size` fits its item size limit)
/// and says so in the log. Never fatal: the shared tier is a cache, and the breaker keeps a
/// failing server out of the request path.
pub struct Probe(pub &'static MemcachedStorage);

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Probe {
    async fn start(&self, _shutdown: pingora::server::ShutdownWatch) {
        if !self.0.is_keyed() {
            log::warn!("memcached: no cache.memcached.key_file, so values are not authenticated: anyone who can reach these servers can serve content to every client, stall fills with leases and purge entries (see docs/shared-tier.md, Security)");
        }
        match self.0.probe().await {
            Ok(()) => log::info!("memcached: every server answers and accepts full-size chunks"),
            Err(e) => log::error!("memcached: {e}; requests go to the origin while it fails"),
        }
    }
}
