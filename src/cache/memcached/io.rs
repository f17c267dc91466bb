//! Talking to memcached: the lazily built client, one bounded and breaker-gated exchange at a
//! time, and the item-level operations the storage is built from.

use super::batch;
use super::breaker::{self, StableRendezvous};
use super::entry::{self, Body, Head};
use super::seal::Kind;
use super::stream;
use super::MemcachedStorage;
use crate::metrics;
use bytes::Bytes;
use memcache::exp::{AsyncMetaClient, Get, GetResult, Meta, MutationStatus, Ttl};
use pingora::{Error, ErrorType};
use std::future::Future;
use std::time::Instant;
use std::time::SystemTime;

/// A head read: the decoded head and its CAS, `None` when absent.
pub(super) type HeadRead = std::result::Result<Option<(Head, u64)>, McError>;
/// A purge marker read: when the URL was last purged, `None` when never.
pub(super) type MarkerRead = std::result::Result<Option<SystemTime>, McError>;

/// What a chunk batch does besides checking that every chunk exists with its size.
#[derive(Clone, Copy)]
enum Chunks {
    Check,
    /// Also extends the chunks' TTL, in seconds.
    Touch(u32),
    /// Also reads chunk 0 (a lookup about to serve it).
    ReadFirst,
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
    pub(super) fn into_pingora(self, context: &'static str) -> Box<Error> {
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

/// The client's own deadlines (its io timeout, or waiting for a pooled connection while all are
/// busy): load in this process unless the server went silent (see [`breaker::Breakers::timed_out`]).
fn is_timeout(e: &memcache::exp::Error) -> bool {
    use memcache::exp::Error as E;
    match e {
        E::Timeout { .. } => true,
        E::Io(e) => e.kind() == std::io::ErrorKind::TimedOut,
        _ => false,
    }
}

/// Idle connections kept per memcached server by each node's lookup client.
pub const IDLE_CONNECTIONS: usize = 1024;

impl MemcachedStorage {
    pub(super) fn builder(&self) -> memcache::exp::MetaClientBuilder {
        AsyncMetaClient::builder()
            .router(StableRendezvous(self.breakers.clone()))
            // The client bounds the longest exchange; `exchange` enforces each one's own deadline.
            .io_timeout(Some(self.settings.timeout.max(self.settings.body_timeout)))
            .connect_timeout(Some(self.settings.timeout))
            // An exchange holds a connection, so a node keeps open as many as it has exchanges
            // in flight, up to this many per server. At 256 (before lookups were batched),
            // 1000 client connections made the pool close and reopen about 450 connections a
            // second: lookups timed out while connecting and p99 rose from 0.15 s to 4 s
            // (docs/shared-tier.md).
            .max_idle(IDLE_CONNECTIONS)
    }

    /// The client for body chunk reads (see [`MemcachedStorage`]'s `bulk`): as many idle
    /// connections kept as the chunk budget lets reads run at once.
    pub(super) async fn bulk_client(&self) -> std::result::Result<&AsyncMetaClient, McError> {
        let reads = (stream::CHUNK_BUDGET / self.settings.chunk_size.max(1)).clamp(8, 256);
        self.bulk
            .get_or_try_init(|| {
                self.builder()
                    .max_idle(reads)
                    .connect_multiple_async(self.settings.servers.iter().copied())
            })
            .await
            .map_err(McError::Client)
    }

    /// The lookup batcher ([`super::batch`]), started on first use on the caller's runtime.
    pub(super) async fn lookups(
        &'static self,
    ) -> std::result::Result<&'static batch::Batcher, McError> {
        let client = self.client().await?;
        Ok(self
            .lookups
            .get_or_init(|| async {
                batch::Batcher::start(client, self.breakers.clone(), self.settings.timeout)
            })
            .await)
    }

    pub(crate) async fn client(&self) -> std::result::Result<&AsyncMetaClient, McError> {
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
        let value =
            vec![0x5a; self.settings.chunk_size + entry::CHUNK_HEADER_LEN + self.seal.overhead()];
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

    /// The server `key` goes to now: its rendezvous server, or the next one while that one's
    /// breaker is open.
    pub(super) fn server_of(&self, key: &str) -> usize {
        breaker::route_where(key.as_bytes(), &self.ids, |i| self.breakers.routable(i))
    }

    pub(super) fn label(&self, server: usize) -> &str {
        self.ids.get(server).map(String::as_str).unwrap_or("?")
    }

    /// One exchange with the servers holding `keys`: refused at once if any of their breakers
    /// is open, bounded by `timeout`, timed, and reported to the breakers.
    ///
    /// `outcome` classifies a finished exchange per key index: `Some(true)` ok, `Some(false)`
    /// transport failure of that key's server, `None` no information.
    pub(crate) async fn exchange<T, F>(
        &self,
        op: &'static str,
        keys: &[&str],
        fut: F,
        outcome: impl Fn(&T) -> Vec<Option<bool>>,
    ) -> std::result::Result<T, McError>
    where
        F: Future<Output = memcache::exp::Result<T>>,
    {
        self.exchange_within(self.settings.timeout, op, keys, fut, outcome)
            .await
    }

    /// [`Self::exchange`] with its own deadline (body chunks: `body_timeout`).
    pub(crate) async fn exchange_within<T, F>(
        &self,
        deadline: std::time::Duration,
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
        let result = tokio::time::timeout(deadline, fut).await;
        metrics::MEMCACHED_EXCHANGE_DURATION
            .with_label_values(&[op])
            .observe(start.elapsed().as_secs_f64());
        let fail_all = |e: McError| {
            for &s in &servers {
                match e {
                    McError::Timeout => self.breakers.timed_out(s, start),
                    _ => self.breakers.failure(s),
                }
                metrics::MEMCACHED_ERRORS
                    .with_label_values(&[op, self.label(s)])
                    .inc();
            }
            Err(e)
        };
        match result {
            Err(_) => fail_all(McError::Timeout),
            // The client's own deadlines (its io timeout, or waiting for a pooled connection
            // while all are busy) are timeouts too: load here, unless the server went silent.
            Ok(Err(e)) if is_timeout(&e) => fail_all(McError::Timeout),
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
                        // A key that failed in an exchange that completed: counted only if the
                        // server has answered nothing since (as a timed-out exchange).
                        self.breakers.timed_out(s, start);
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

    pub(super) fn batch_outcome<T>(v: &[memcache::exp::Result<T>]) -> Vec<Option<bool>> {
        v.iter()
            .map(|r| match r {
                Ok(_) => Some(true),
                Err(e) => Some(!is_transport(e)),
            })
            .collect()
    }

    pub(super) fn head_key(&self, hex: &str) -> String {
        entry::head_key(&self.settings.namespace, hex)
    }

    pub(super) fn chunk_key(&self, hex: &str, write_id: u64, index: u32) -> String {
        entry::chunk_key(&self.settings.namespace, hex, write_id, index)
    }

    /// The decoded head and its CAS; `Ok(None)` when absent or undecodable (logged, counted as
    /// corrupt when it exists but does not decode).
    pub(super) async fn read_head(
        &'static self,
        hex: &str,
    ) -> std::result::Result<Option<(Head, u64)>, McError> {
        let key = self.head_key(hex);
        let lookups = self.lookups().await?;
        let fut = async {
            let mut r = lookups.get(self.server_of(&key), vec![key.clone()]).await?;
            r.pop()
                .unwrap_or_else(|| Err(memcache::exp::Error::Protocol("no answer".into())))
        };
        let wait = batch::whole_wait(self.settings.timeout);
        let r = self
            .exchange_within(wait, "get_head", &[&key], fut, |_| vec![])
            .await?;
        self.decode_head_reply(key, r)
    }

    /// A head and its URL's purge marker in one exchange when one server holds both (one round
    /// trip instead of two on every lookup); `None` when they live on different servers, where
    /// one exchange would make either server's breaker refuse both reads.
    pub(super) async fn read_head_and_marker(
        &'static self,
        hex: &str,
        primary: &str,
    ) -> Option<std::result::Result<(HeadRead, MarkerRead), McError>> {
        let (head_key, marker_key) = (self.head_key(hex), self.marker_key(primary));
        let server = self.server_of(&head_key);
        if server != self.server_of(&marker_key) {
            return None;
        }
        let lookups = match self.lookups().await {
            Ok(b) => b,
            Err(e) => return Some(Err(e)),
        };
        let keys = [head_key.as_str(), marker_key.as_str()];
        let fut = lookups.get(server, vec![head_key.clone(), marker_key.clone()]);
        let wait = batch::whole_wait(self.settings.timeout);
        let results = match self
            .exchange_within(wait, "get_head", &keys, fut, |r| Self::batch_outcome(r))
            .await
        {
            Ok(r) => r,
            Err(e) => return Some(Err(e)),
        };
        let mut results = results.into_iter();
        let (Some(head), Some(marker)) = (results.next(), results.next()) else {
            return Some(Err(McError::Invalid("memcached batch answered short")));
        };
        let head = match head {
            Ok(r) => self.decode_head_reply(head_key, r),
            Err(e) => return Some(Err(McError::Client(e))),
        };
        let marker = marker
            .map_err(McError::Client)
            .map(|r| self.decode_marker_reply(marker_key, r));
        Some(Ok((head, marker)))
    }

    fn decode_head_reply(&'static self, key: String, r: GetResult) -> HeadRead {
        // An empty value is a lease placeholder, not an entry.
        let value = match r.value {
            Some(v) if r.hit() && !v.is_empty() => v,
            _ => return Ok(None),
        };
        let cas = r.item.cas.unwrap_or(0);
        metrics::MEMCACHED_READ_BYTES.inc_by(value.len() as u64);
        let Ok(value) = self.seal.open(Kind::Head, &key, value) else {
            self.delete_later(key, Some(cas));
            return Err(McError::Corrupt(entry::DecodeError(
                "failed authentication",
            )));
        };
        // The work one head can make a reader do is what this node would ever store.
        let max_chunks = self.settings.max_object.div_ceil(self.settings.chunk_size);
        match entry::decode_head(Bytes::from(value)) {
            Ok(head) if head.body_len > self.settings.max_object => Err(McError::Corrupt(
                entry::DecodeError("body larger than max_object"),
            )),
            Ok(head) if head.n_chunks() as usize > max_chunks => Err(McError::Corrupt(
                entry::DecodeError("more chunks than max_object / chunk_size"),
            )),
            Ok(head) => Ok(Some((head, cas))),
            Err(e) => Err(McError::Corrupt(e)),
        }
    }

    /// Every chunk of `head` exists with the right size; optionally extends their TTL.
    pub(super) async fn check_chunks(
        &'static self,
        hex: &str,
        head: &Head,
        touch: Option<u32>,
    ) -> std::result::Result<(), McError> {
        let mode = match touch {
            Some(ttl) => Chunks::Touch(ttl),
            None => Chunks::Check,
        };
        self.chunk_batch(hex, head, mode).await.map(|_| ())
    }

    /// [`Self::check_chunks`] for a lookup, with chunk 0's value read in the same exchange (inside
    /// the chunk budget, under the body deadline: the head was just read, so the server is up).
    /// A hit that is served then starts streaming without another round trip; a HEAD or a 304
    /// answered from the entry wastes that one read.
    pub(super) async fn check_chunks_reading_first(
        &'static self,
        hex: &str,
        head: &Head,
    ) -> std::result::Result<Option<Bytes>, McError> {
        self.chunk_batch(hex, head, Chunks::ReadFirst).await
    }

    /// One batch over every chunk of `head`: each must exist with its size; `mode` says what
    /// else. Chunk 0's bytes when `mode` reads them.
    async fn chunk_batch(
        &'static self,
        hex: &str,
        head: &Head,
        mode: Chunks,
    ) -> std::result::Result<Option<Bytes>, McError> {
        let Body::Chunked { chunk_size } = head.body else {
            return Ok(None);
        };
        let n = head.n_chunks();
        if n == 0 {
            return Ok(None);
        }
        let read_first = matches!(mode, Chunks::ReadFirst);
        let permit = match read_first {
            true => Some(stream::reserve(entry::chunk_len(head.body_len, chunk_size, 0)).await?),
            false => None,
        };
        let keys: Vec<String> = (0..n)
            .map(|i| self.chunk_key(hex, head.write_id, i))
            .collect();
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let ops = keys.iter().enumerate().map(|(i, k)| {
            let g = Get::new(k).meta(Meta::NONE.size());
            match mode {
                Chunks::ReadFirst if i == 0 => g,
                Chunks::Touch(ttl) => g.without_value().touch(Ttl::secs(ttl)),
                _ => g.without_value(),
            }
        });
        let (client, op, deadline) = match mode {
            Chunks::Touch(_) => (self.client().await?, "touch_chunks", self.settings.timeout),
            Chunks::Check => (self.client().await?, "check_chunks", self.settings.timeout),
            Chunks::ReadFirst => (
                self.bulk_client().await?,
                "check_chunks",
                self.settings.body_timeout,
            ),
        };
        let results = self
            .exchange_within(deadline, op, &key_refs, client.run_many(ops), |r| {
                Self::batch_outcome(r)
            })
            .await?;
        let mut first = None;
        for (i, r) in results.into_iter().enumerate() {
            let r = r.map_err(McError::Client)?;
            if !r.hit() {
                return Err(McError::Missing);
            }
            let len = entry::chunk_len(head.body_len, chunk_size, i as u32);
            let want = entry::CHUNK_HEADER_LEN + len + self.seal.overhead();
            if r.item.size != Some(want as u64) {
                return Err(McError::Corrupt(entry::DecodeError("chunk size mismatch")));
            }
            if read_first && i == 0 {
                let value = r.value.ok_or(McError::Missing)?;
                first = Some(self.decode_chunk_reply(&keys[0], value, head.write_id, 0, len)?);
            }
        }
        Ok(first.zip(permit).map(|(data, p)| stream::held(data, p)))
    }

    /// Chunk `index` of a committed write, checked against the head.
    pub(super) async fn fetch_chunk(
        &'static self,
        hex: String,
        write_id: u64,
        index: u32,
        expected_len: usize,
    ) -> std::result::Result<Bytes, McError> {
        let key = self.chunk_key(&hex, write_id, index);
        let client = self.bulk_client().await?;
        let r = self
            .exchange_within(
                self.settings.body_timeout,
                "get_chunk",
                &[&key],
                client.get(&key).send(),
                |_| vec![],
            )
            .await?;
        let value = match r.value {
            Some(v) if r.hit() => v,
            _ => return Err(McError::Missing),
        };
        self.decode_chunk_reply(&key, value, write_id, index, expected_len)
    }

    fn decode_chunk_reply(
        &'static self,
        key: &str,
        value: Vec<u8>,
        write_id: u64,
        index: u32,
        expected_len: usize,
    ) -> std::result::Result<Bytes, McError> {
        metrics::MEMCACHED_READ_BYTES.inc_by(value.len() as u64);
        let Ok(value) = self.seal.open(Kind::Chunk, key, value) else {
            self.delete_later(key.to_string(), None);
            return Err(McError::Corrupt(entry::DecodeError(
                "failed authentication",
            )));
        };
        entry::decode_chunk(Bytes::from(value), write_id, index, expected_len)
            .map_err(McError::Corrupt)
    }

    pub(crate) async fn set_item(
        &self,
        op: &'static str,
        key: &str,
        value: &[u8],
        ttl: u32,
        cas: Option<u64>,
    ) -> std::result::Result<MutationStatus, McError> {
        let client = self.client().await?;
        let sealed;
        let value = if self.seal.is_keyed() {
            sealed = self.seal.seal(key, value.to_vec());
            &sealed[..]
        } else {
            value
        };
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

    pub(crate) async fn delete_item(
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
    pub(super) fn drop_head_later(&'static self, hex: &str, cas: u64) {
        self.delete_later(self.head_key(hex), Some(cas));
    }

    /// Deletes item `key` (only if unchanged since read, with `cas`) in the background: for
    /// items found broken or forged, which must not cost the next reader again.
    pub(super) fn delete_later(&'static self, key: String, cas: Option<u64>) {
        tokio::spawn(async move {
            if let Err(e) = self.delete_item(&key, cas).await {
                log::debug!("memcached: deleting broken item {key}: {e}");
            }
        });
    }
}
