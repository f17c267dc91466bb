//! Invalidation by tag, host, host + path prefix and everything, hard (gone) or soft (stale),
//! fleet-wide and O(1): a purge writes one small marker ([`marks::Marks`]: the times of the last
//! hard and soft purge) per name, never touching the objects. A hit checks the markers that
//! apply to its object (its tags, host, matching prefixes, "all") against the time it was
//! stored: hard-purged since ⇒ a miss, soft-purged since ⇒ stale (Pingora revalidates with the
//! stored validators, or serves stale within stale-while-revalidate / stale-if-error).
//!
//! The storage's lookup skips hard-purged copies on both tiers (so the refetch is coalesced
//! fleet-wide like any miss, and a soft-purged memory copy yields to a newer memcached one); the
//! hit filter applies soft purges.
//!
//! With memcached the markers live there ([`remote`]), so every node, including one started
//! after the purge, sees them; each node caches what it read for `purge_check`, so hits do not
//! pay a round trip each (the same bound URL purges have). Memory tier alone: the markers live
//! in this process.

pub mod marks;
mod remote;
pub mod url;

use super::memcached::MemcachedStorage;
use super::memory::Entry;
use crate::authority::Authority;
use crate::metrics;
use marks::{Marks, Registry, Verdict};
use parking_lot::Mutex;
use pingora::cache::key::CacheKey;
use pingora::cache::{CacheMeta, ForcedFreshness};
use pingora::http::{RequestHeader, ResponseHeader};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// The most names one purge request may carry (tags, hosts, prefixes and URLs together).
pub const MAX_ITEMS: usize = 256;
/// Cached marker reads per node before stale ones are dropped (they are re-read on need).
const CACHE_MAX: usize = 65536;

/// The process's invalidator, for the storage's lookups (process-wide, like the metrics).
static GLOBAL: OnceLock<&'static Invalidator> = OnceLock::new();

/// Makes `inv` the one [`verdict`] consults. The first call wins.
pub fn install(inv: &'static Invalidator) {
    let _ = GLOBAL.set(inv);
}

/// For a storage lookup: the markers' verdict on the object stored at `key` with `header`,
/// last validated at `stored`. A hard-purged copy is skipped there (so the fleet coalesces the
/// refetch); soft purges are applied by [`Invalidator::on_hit`].
pub async fn verdict(key: &CacheKey, header: &ResponseHeader, stored: SystemTime) -> Verdict {
    let (Some(inv), Some((host, path))) = (GLOBAL.get(), parts(key.primary_key())) else {
        return Verdict::Keep;
    };
    let v = inv
        .check(host, path, super::tags::of_stored(header), stored)
        .await;
    if v == Verdict::Purged {
        metrics::CACHE_INVALIDATED_ON_LOOKUP
            .with_label_values(&["purged"])
            .inc();
    }
    v
}

/// For the memory tier's copy: its verdict, and whether it is hard-purged (to be skipped).
pub(crate) async fn on_lookup(key: &CacheKey, e: &Entry) -> (Verdict, bool) {
    let v = verdict(key, e.header(), e.updated()).await;
    (v, v == Verdict::Purged)
}

/// For the memcached tier's answer: a hard-purged copy becomes a miss (so the fleet lease
/// coalesces the refetch); anything else passes through.
pub async fn unpurged<H>(
    key: &CacheKey,
    found: pingora::Result<Option<(CacheMeta, H)>>,
) -> pingora::Result<Option<(CacheMeta, H)>> {
    if let Ok(Some((meta, _))) = &found {
        if verdict(key, meta.response_header(), meta.updated()).await == Verdict::Purged {
            return Ok(None);
        }
    }
    found
}

/// Host and path-and-query from a primary key built by [`super::key::of`] (length-prefixed
/// scheme, host, port, path).
fn parts(primary: &[u8]) -> Option<(&str, &[u8])> {
    let mut fields = [&[][..]; 4];
    let mut rest = primary;
    for f in &mut fields {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let n = u32::from_be_bytes(*len) as usize;
        *f = tail.get(..n)?;
        rest = &tail[n..];
    }
    Some((std::str::from_utf8(fields[1]).ok()?, fields[3]))
}

/// What a purge names, besides exact URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    All,
    Host(String),
    Tag(String),
    /// A normalised host and a path prefix starting with `/`.
    Prefix {
        host: String,
        path: String,
    },
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::All => "all",
            Target::Host(_) => "host",
            Target::Tag(_) => "tag",
            Target::Prefix { .. } => "prefix",
        }
    }

    /// The marker item's name (a prefix is recorded in its host's registry).
    fn item(&self) -> String {
        match self {
            Target::All => "all".into(),
            Target::Host(h) => format!("h:{h}"),
            Target::Tag(t) => format!("t:{t}"),
            Target::Prefix { host, .. } => format!("x:{host}"),
        }
    }
}

#[derive(Clone)]
enum Value {
    Marks(Marks),
    Registry(Arc<Registry>),
}

pub struct Invalidator {
    l2: Option<&'static MemcachedStorage>,
    purge_check: Duration,
    /// Item name → its value and when it was read (memory-only: the authority itself).
    cache: Mutex<HashMap<String, (Value, Instant)>>,
    /// Names being read for the first time on this node → the channel their reader drops when
    /// done. Concurrent requests wait for that one read (they have no earlier value to go by):
    /// each used to send its own, and with 400 concurrent first hits 60–320 of those reads
    /// timed out and pushed memcached lookups past their deadline too. Locked after `cache`.
    first_reads: Mutex<HashMap<String, tokio::sync::watch::Receiver<()>>>,
}

impl Invalidator {
    pub fn new(l2: Option<&'static MemcachedStorage>, purge_check: Duration) -> Invalidator {
        Invalidator {
            l2,
            purge_check,
            cache: Mutex::new(HashMap::new()),
            first_reads: Mutex::new(HashMap::new()),
        }
    }

    /// `cache_hit_filter`: what the markers make of this hit. `ForceMiss` when hard-purged,
    /// `ForceExpiredServeStale` (stale since the purge) when soft-purged while fresh.
    pub async fn on_hit(&self, req: &RequestHeader, meta: &CacheMeta) -> Option<ForcedFreshness> {
        let authority = Authority::of(req);
        let path = super::key::path_and_query(req);
        let tags = super::tags::of_stored(meta.response_header());
        // When the origin last vouched for it: `updated` after a revalidation (the memory tier
        // carries it as the epoch override).
        let stored = meta.epoch().max(meta.updated());
        match self.check(authority.host(), path, tags, stored).await {
            Verdict::Keep => None,
            // Normally skipped by the lookup already (counted there); a purge racing this hit.
            Verdict::Purged => Some(ForcedFreshness::ForceMiss),
            Verdict::Stale(at) if meta.fresh_until() > at => {
                metrics::CACHE_INVALIDATED_ON_LOOKUP
                    .with_label_values(&["stale"])
                    .inc();
                Some(ForcedFreshness::ForceExpiredServeStale {
                    expired_at: Some(at),
                })
            }
            Verdict::Stale(_) => None, // already stale by its own clock
        }
    }

    /// The verdict for an object of `host` + `path` with `tags`, stored at `stored`.
    pub async fn check<'a>(
        &self,
        host: &str,
        path: &[u8],
        tags: impl Iterator<Item = &'a str>,
        stored: SystemTime,
    ) -> Verdict {
        if self.l2.is_none() && self.cache.lock().is_empty() {
            return Verdict::Keep; // memory only and nothing ever purged: the common case
        }
        let now = Instant::now();
        let mut total = Marks::default();
        // Names read from memcached by this request: never read yet, or due. A due name is
        // claimed (its time moved to now) so that concurrent requests go by the value it
        // replaces instead of reading too: one read per name per `purge_check` and node, where
        // every hit reading a due name at once had memcached's connections churn, the reads
        // time out under load, and the names stay due for every following hit.
        let mut due: Vec<(String, Option<Value>)> = Vec::new();
        // Names another request is reading for the first time, and the drops to close ours.
        let mut awaited: Vec<(String, tokio::sync::watch::Receiver<()>)> = Vec::new();
        let mut reading: Vec<tokio::sync::watch::Sender<()>> = Vec::new();
        let mut name = String::with_capacity(64);
        {
            let mut cache = self.cache.lock();
            let fixed = [("all", ""), ("h:", host), ("x:", host)];
            for (kind, of) in fixed.into_iter().chain(tags.map(|t| ("t:", t))) {
                name.clear();
                name.push_str(kind);
                name.push_str(of);
                match cache.get_mut(name.as_str()) {
                    Some((v, at)) if self.l2.is_none() || now - *at < self.purge_check => {
                        total = total.merge(apply(v, path));
                    }
                    Some((v, at)) => {
                        *at = now;
                        due.push((name.clone(), Some(v.clone())));
                    }
                    None if self.l2.is_none() => {}
                    None => {
                        let mut first = self.first_reads.lock();
                        match first.get(name.as_str()) {
                            // A reader that gave up (its client left) closed its sender.
                            Some(rx) if rx.has_changed().is_ok() => {
                                awaited.push((name.clone(), rx.clone()));
                            }
                            _ => {
                                let (tx, rx) = tokio::sync::watch::channel(());
                                first.insert(name.clone(), rx);
                                reading.push(tx);
                                due.push((name.clone(), None));
                            }
                        }
                    }
                }
            }
        }
        if let (Some(l2), false) = (self.l2, due.is_empty()) {
            let mut set = tokio::task::JoinSet::new();
            for (i, (n, _)) in due.iter().enumerate() {
                let n = n.clone();
                set.spawn(async move { (i, remote::read(l2, &n).await) });
            }
            let mut fresh: Vec<Option<Value>> = vec![None; due.len()];
            while let Some(Ok((i, r))) = set.join_next().await {
                match r {
                    Ok(item) => fresh[i] = Some(decode(&due[i].0, item.map(|(v, _)| v))),
                    // memcached cannot tell: go by what was last read, ask again next time.
                    Err(e) => log::debug!("invalidation marker {}: {e}", due[i].0),
                }
            }
            let mut cache = self.cache.lock();
            if cache.len() > CACHE_MAX {
                let limit = self.purge_check;
                cache.retain(|_, (_, at)| now - *at < limit);
            }
            for ((n, old), new) in due.into_iter().zip(fresh) {
                match new {
                    Some(v) => {
                        total = total.merge(apply(&v, path));
                        cache.insert(n, (v, now));
                    }
                    // memcached could not say: go by what was last read (nothing, for a name
                    // never read, which is then asked again after purge_check like any other).
                    None => match old {
                        Some(v) => total = total.merge(apply(&v, path)),
                        None => {
                            cache
                                .entry(n.clone())
                                .or_insert_with(|| (decode(&n, None), now));
                        }
                    },
                }
            }
        }
        if !reading.is_empty() {
            // Our claims close here, and are cleared with any left by readers that gave up.
            drop(reading);
            self.first_reads
                .lock()
                .retain(|_, rx| rx.has_changed().is_ok());
        }
        for (n, mut rx) in awaited {
            // Returns when the reader is done (it drops its sender), read or not.
            let _ = rx.changed().await;
            if let Some((v, _)) = self.cache.lock().get(n.as_str()) {
                total = total.merge(apply(v, path));
            }
        }
        total.verdict(stored)
    }

    /// Records a purge of `target` now: in memcached first (every node), then here. `Err`
    /// when memcached could not be told; nothing was recorded for this target then.
    pub async fn purge(&self, target: &Target, soft: bool) -> Result<(), String> {
        let m = Marks::now(soft);
        let name = target.item();
        let value = match (self.l2, target) {
            (Some(l2), Target::Prefix { path, .. }) => {
                let written = remote::update(l2, &name, |cur| {
                    let mut r = cur.and_then(Registry::decode).unwrap_or_default();
                    r.add(path, m)?;
                    Ok(r.encode().into_bytes())
                })
                .await?;
                decode(&name, Some(written))
            }
            (Some(l2), _) => {
                let written = remote::update(l2, &name, |cur| {
                    let old = cur.and_then(Marks::decode).unwrap_or_default();
                    Ok(old.merge(m).encode().into_bytes())
                })
                .await?;
                decode(&name, Some(written))
            }
            (None, Target::Prefix { path, .. }) => {
                let mut r = match self.cache.lock().get(&name) {
                    Some((Value::Registry(r), _)) => (**r).clone(),
                    _ => Registry::default(),
                };
                r.add(path, m)?;
                Value::Registry(Arc::new(r))
            }
            (None, _) => {
                let old = match self.cache.lock().get(&name) {
                    Some((Value::Marks(o), _)) => *o,
                    _ => Marks::default(),
                };
                Value::Marks(old.merge(m))
            }
        };
        self.cache.lock().insert(name, (value, Instant::now()));
        metrics::CACHE_INVALIDATIONS
            .with_label_values(&[target.kind(), if soft { "soft" } else { "hard" }])
            .inc();
        marks::past_millisecond(m.soft).await;
        Ok(())
    }
}

impl Invalidator {
    /// For inspection: every marker on record that names an object of `host` + `path` with
    /// `tags`, read afresh from memcached when there is one (else this process's record), as
    /// (kind, name, marks). `Err` when memcached could not be read.
    pub async fn markers_for(
        &self,
        host: &str,
        path: &[u8],
        tags: &[String],
    ) -> Result<Vec<(&'static str, String, Marks)>, String> {
        let mut names = vec![
            ("all", String::new(), "all".to_string()),
            ("host", host.to_string(), format!("h:{host}")),
            ("prefix", host.to_string(), format!("x:{host}")),
        ];
        names.extend(tags.iter().map(|t| ("tag", t.clone(), format!("t:{t}"))));
        let mut out = Vec::new();
        for (kind, name, item) in names {
            let v = match self.l2 {
                Some(l2) => decode(&item, remote::read(l2, &item).await?.map(|(v, _)| v)),
                None => match self.cache.lock().get(&item) {
                    Some((v, _)) => v.clone(),
                    None => continue,
                },
            };
            match v {
                Value::Marks(m) if m != Marks::default() => out.push((kind, name, m)),
                Value::Marks(_) => {}
                Value::Registry(r) => out.extend(
                    r.0.iter()
                        .filter(|(p, _)| path.starts_with(p.as_bytes()))
                        .map(|(p, m)| (kind, format!("{host}{p}"), *m)),
                ),
            }
        }
        Ok(out)
    }
}

fn apply(v: &Value, path: &[u8]) -> Marks {
    match v {
        Value::Marks(m) => *m,
        Value::Registry(r) => r.marks_for(path),
    }
}

fn decode(name: &str, item: Option<Vec<u8>>) -> Value {
    let Some(v) = item else {
        return if name.starts_with("x:") {
            Value::Registry(Arc::default())
        } else {
            Value::Marks(Marks::default())
        };
    };
    if name.starts_with("x:") {
        let r = Registry::decode(&v).unwrap_or_else(|| {
            log::warn!("invalidation: unreadable prefix registry {name}; ignored");
            Registry::default()
        });
        Value::Registry(Arc::new(r))
    } else {
        Value::Marks(Marks::decode(&v).unwrap_or_else(|| {
            log::warn!("invalidation: unreadable marker {name}; ignored");
            Marks::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_path_come_back_out_of_the_cache_key() {
        let k = crate::cache::key::build("Example.com:8080", b"/a/b?c");
        assert_eq!(
            parts(k.primary_key()),
            Some(("example.com", &b"/a/b?c"[..]))
        );
        assert_eq!(parts(b"\0\0\0\x09short"), None);
    }

    #[tokio::test]
    async fn memory_only_markers_apply_at_once_to_what_they_name() {
        let inv = Invalidator::new(None, Duration::from_millis(500));
        let before = SystemTime::now() - Duration::from_secs(1);
        let check = |host: &'static str, path: &'static str, tags: &'static [&'static str]| {
            inv.check(host, path.as_bytes(), tags.iter().copied(), before)
        };
        assert_eq!(check("a", "/x", &["t"]).await, Verdict::Keep);
        inv.purge(&Target::Tag("t".into()), true).await.unwrap();
        assert!(matches!(check("a", "/x", &["t"]).await, Verdict::Stale(_)));
        assert_eq!(check("a", "/x", &["u"]).await, Verdict::Keep);
        let prefix = Target::Prefix {
            host: "a".into(),
            path: "/s/".into(),
        };
        inv.purge(&prefix, false).await.unwrap();
        assert_eq!(check("a", "/s/1", &[]).await, Verdict::Purged);
        assert_eq!(check("a", "/t/1", &[]).await, Verdict::Keep);
        assert_eq!(check("b", "/s/1", &[]).await, Verdict::Keep);
        inv.purge(&Target::Host("b".into()), false).await.unwrap();
        assert_eq!(check("b", "/t/1", &[]).await, Verdict::Purged);
        inv.purge(&Target::All, false).await.unwrap();
        assert_eq!(check("c", "/", &[]).await, Verdict::Purged);
        // Stored after the purges: untouched.
        let after = SystemTime::now() + Duration::from_millis(5);
        let v = inv.check("c", b"/", ["t"].into_iter(), after).await;
        assert_eq!(v, Verdict::Keep);
    }
}
