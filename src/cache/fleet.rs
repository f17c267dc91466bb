//! What makes N nodes one cache: this node's side of the fleet protocol. One fetch per object
//! per fleet (a lease in memcached; one poller per object per node while another node fills),
//! one stale-while-revalidate refresh per object per fleet, and purge markers that reach every
//! node's memory tier. The wire operations are in [`super::memcached::fleet`].

use super::memcached::fleet::Lease;
use super::memcached::MemcachedStorage;
use crate::metrics;
use parking_lot::Mutex;
use pingora::cache::key::{CacheHashKey, CacheKey};
use pingora::Result;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// How often a node waiting for another node's fill asks memcached whether it is done.
const POLL: Duration = Duration::from_millis(15);

pub struct Fleet {
    l2: &'static MemcachedStorage,
    /// This node's id in lease values.
    node: u64,
    lock_timeout: Duration,
    /// Objects this node holds the fleet lease for.
    leases: Mutex<HashSet<u128>>,
    /// One poller per object per node; local waiters watch it instead of asking memcached.
    polls: Mutex<HashMap<u128, watch::Receiver<bool>>>,
}

fn k128(key: &CacheKey) -> u128 {
    u128::from_be_bytes(key.combined_bin())
}

fn lease_metric(outcome: &str) {
    metrics::FLEET_LEASES.with_label_values(&[outcome]).inc();
}

impl Fleet {
    pub fn new(l2: &'static MemcachedStorage, lock_timeout: Duration) -> Fleet {
        Fleet {
            l2,
            node: rand::random(),
            lock_timeout,
            leases: Mutex::new(HashSet::new()),
            polls: Mutex::new(HashMap::new()),
        }
    }

    /// Nothing in any tier: make sure only one node of the fleet goes to the origin. `lookup`
    /// reads the tiers again once another node's fill has landed. `Ok(None)` = fetch.
    pub async fn coalesce<T, F, Fut>(&self, key: &CacheKey, lookup: F) -> Result<Option<T>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        let k = k128(key);
        if self.leases.lock().contains(&k) {
            return Ok(None); // this node fetches; Pingora's local lock orders local requests
        }
        // Decide under the lock, await outside it.
        let role = {
            let mut polls = self.polls.lock();
            match polls.get(&k) {
                Some(rx) => Err(rx.clone()),
                None => {
                    let (tx, rx) = watch::channel(false);
                    polls.insert(k, rx);
                    Ok(tx)
                }
            }
        };
        let tx = match role {
            Ok(tx) => tx,
            Err(mut rx) => {
                let _ = tokio::time::timeout(self.lock_timeout, rx.wait_for(|done| *done)).await;
                return lookup().await;
            }
        };
        let result = self.wait_for_fleet(key, lookup).await;
        self.polls.lock().remove(&k);
        let _ = tx.send(true);
        result
    }

    async fn wait_for_fleet<T, F, Fut>(&self, key: &CacheKey, lookup: F) -> Result<Option<T>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        let combined = key.combined();
        let deadline = Instant::now() + self.lock_timeout;
        loop {
            match self
                .l2
                .try_lease(&combined, self.node, self.lock_timeout)
                .await
            {
                Ok(true) => {
                    self.leases.lock().insert(k128(key));
                    lease_metric("won");
                    return self.committed_meanwhile(key, &combined, &lookup).await;
                }
                Ok(false) => {}
                Err(e) => {
                    // memcached unavailable: per-node coalescing only.
                    log::debug!("fleet lease for {combined}: {e}");
                    return Ok(None);
                }
            }
            lease_metric("waited");
            // Another node fetches: wait until its lease ends, then read what it stored.
            loop {
                if Instant::now() >= deadline {
                    lease_metric("timed_out");
                    return Ok(None);
                }
                tokio::time::sleep(POLL).await;
                match self.l2.lease_state(&combined).await {
                    Ok(Lease::Busy) => continue,
                    Ok(Lease::Pass) => return Ok(None),
                    Ok(Lease::Free) => break,
                    Err(_) => return Ok(None),
                }
            }
            if let Some(found) = lookup().await? {
                metrics::FLEET_FETCHES_AVOIDED.inc();
                return Ok(Some(found));
            }
            // The lease lapsed without a fill (its node died): compete for it again.
        }
    }

    /// Just after winning the lease: another node may have committed the object and ended its
    /// lease between this node's miss and its lease, which would otherwise be fetched twice.
    /// Only when a head is stored (one cheap read, value unread) is the object looked up again,
    /// so the second lookup is counted only then; found, the lease ends at once (waiters read
    /// the object). A stored head that is no use (purged, incomplete) reads as a miss, and this
    /// node fetches under the lease as before.
    async fn committed_meanwhile<T, F, Fut>(
        &self,
        key: &CacheKey,
        combined: &str,
        lookup: &F,
    ) -> Result<Option<T>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<T>>>,
    {
        if !self.l2.head_stored(combined).await.unwrap_or(false) {
            return Ok(None);
        }
        let found = lookup().await?;
        if found.is_some() {
            self.release(key, false);
            metrics::FLEET_FETCHES_AVOIDED.inc();
        }
        Ok(found)
    }

    /// For a background refresh (stale-while-revalidate): true if this node may go to the
    /// origin, i.e. it holds or wins the object's fleet lease. Another node refreshing means
    /// this one keeps serving stale until that refresh lands in memcached.
    pub async fn may_refresh(&self, key: &CacheKey) -> bool {
        if self.leases.lock().contains(&k128(key)) {
            return true;
        }
        match self
            .l2
            .try_lease(&key.combined(), self.node, self.lock_timeout)
            .await
        {
            Ok(true) => {
                self.leases.lock().insert(k128(key));
                lease_metric("won");
                true
            }
            Ok(false) => {
                lease_metric("waited");
                false
            }
            Err(_) => true, // memcached unavailable: refresh per node
        }
    }

    /// Ends this node's lease on `key` if it holds one: `pass` when no fill will follow, so
    /// waiting nodes go to the origin at once.
    pub fn release(&self, key: &CacheKey, pass: bool) {
        if !self.leases.lock().remove(&k128(key)) {
            return;
        }
        let (l2, node) = (self.l2, self.node);
        let combined = key.combined();
        let pass_for = pass.then_some(self.lock_timeout);
        tokio::spawn(async move {
            match l2.release_lease(&combined, node, pass_for).await {
                Ok(true) => {}
                Ok(false) => log::debug!("lease {combined} was no longer this node's"),
                Err(e) => log::debug!("releasing lease {combined}: {e}"),
            }
        });
    }

    /// Whether the URL of `key` was purged anywhere in the fleet after `stored`. `None` when
    /// memcached cannot tell (keep serving, ask again next time).
    pub async fn purged_since(&self, key: &CacheKey, stored: SystemTime) -> Option<bool> {
        match self.l2.purge_marker(&key.primary()).await {
            Ok(Some(at)) => Some(super::stored::retires(super::stored::millis(at), stored)),
            Ok(None) => Some(false),
            Err(_) => None,
        }
    }

    /// Tells every node that the URL of `key` was purged now.
    pub async fn mark_purged(&self, key: &CacheKey) -> std::result::Result<(), String> {
        self.l2
            .set_purge_marker(&key.primary(), SystemTime::now())
            .await
            .map_err(|e| e.to_string())
    }
}
