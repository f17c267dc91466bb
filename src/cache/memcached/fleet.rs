//! What makes N nodes one cache, kept in memcached next to the entries: fill leases (one
//! origin fetch per object across the fleet) and purge markers (a purge reaches every node's
//! memory tier and every Vary variant without listing keys).
//!
//! Keys: `NS:l:<combined hex>` holds a lease, `NS:p:<primary hex>` the time of the last purge of
//! a URL. Both are tiny. A lease's value is the owning node's id, or [`PASS`] when the owner
//! found the response uncacheable, which tells waiting nodes to stop waiting. Leases expire by
//! TTL, so a node that dies mid-fetch delays the others by at most the lease time.

use super::io::McError;
use super::seal::Kind;
use super::MemcachedStorage;
use memcache::exp::{GetResult, Meta, MutationStatus, Ttl};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A lease released without a fill: waiters go to the origin themselves.
pub const PASS: &[u8] = b"pass";

/// What a lease holds, as seen by another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Nobody is fetching.
    Free,
    /// A node is fetching; wait for its fill.
    Busy,
    /// The fetch ended without a fill (uncacheable or failed): do not wait.
    Pass,
}

impl MemcachedStorage {
    fn lease_key(&self, combined: &str) -> String {
        format!("{}:l:{combined}", self.settings.namespace)
    }

    pub(super) fn marker_key(&self, primary: &str) -> String {
        format!("{}:p:{primary}", self.settings.namespace)
    }

    /// Tries to become the fleet's one fetcher of `combined` for `ttl`. `Ok(false)` when another
    /// node holds it.
    pub(crate) async fn try_lease(
        &self,
        combined: &str,
        node: u64,
        ttl: Duration,
    ) -> Result<bool, McError> {
        let key = self.lease_key(combined);
        let client = self.client().await?;
        let value = self.seal.seal(&key, node.to_be_bytes().to_vec());
        let fut = client.set(&key, value).ttl(ttl_of(ttl)).add().send();
        let r = self.exchange("lease", &[&key], fut, |_| vec![]).await?;
        Ok(r.status == MutationStatus::Applied)
    }

    /// Whether an item is stored under the head key of `combined`, its value unread: after
    /// winning a lease, whether another node committed the object since this node's miss.
    pub(crate) async fn head_stored(&'static self, combined: &str) -> Result<bool, McError> {
        let key = self.head_key(combined);
        let client = self.client().await?;
        let fut = client.get(&key).without_value().send();
        let r = self.exchange("get_head", &[&key], fut, |_| vec![]).await?;
        Ok(r.hit())
    }

    /// The lease's value and CAS; `None` when there is none. A value that fails authentication
    /// is deleted and reads as none: a planted lease must not stall every node's misses.
    async fn read_lease(&'static self, key: &str) -> Result<Option<(Vec<u8>, u64)>, McError> {
        let client = self.client().await?;
        let fut = client.get(key).meta(Meta::NONE.cas()).send();
        let r = self.exchange("lease", &[key], fut, |_| vec![]).await?;
        let (hit, cas) = (r.hit(), r.item.cas);
        let Some(v) = r.value.filter(|_| hit) else {
            return Ok(None);
        };
        match self.seal.open(Kind::Lease, key, v) {
            Ok(v) => Ok(Some((v, cas.unwrap_or(0)))),
            Err(_) => {
                self.delete_later(key.to_string(), cas);
                Ok(None)
            }
        }
    }

    pub(crate) async fn lease_state(&'static self, combined: &str) -> Result<Lease, McError> {
        Ok(match self.read_lease(&self.lease_key(combined)).await? {
            Some((v, _)) if v == PASS => Lease::Pass,
            Some(_) => Lease::Busy,
            None => Lease::Free,
        })
    }

    /// Ends `node`'s lease: deleted after a fill (waiters then find the entry), or turned into
    /// [`PASS`] for `pass_for` so waiters go to the origin instead of timing out. Only a lease
    /// that still holds `node`'s id is touched, and only in the state it was read in (CAS): a
    /// lease that lapsed and was won by another node meanwhile is that node's to end.
    pub(crate) async fn release_lease(
        &'static self,
        combined: &str,
        node: u64,
        pass_for: Option<Duration>,
    ) -> Result<bool, McError> {
        let key = self.lease_key(combined);
        let Some((value, cas)) = self.read_lease(&key).await? else {
            return Ok(false);
        };
        if value != node.to_be_bytes() {
            return Ok(false);
        }
        let client = self.client().await?;
        let r = match pass_for {
            Some(ttl) => {
                let pass = self.seal.seal(&key, PASS.to_vec());
                let fut = client
                    .set(&key, pass)
                    .ttl(ttl_of(ttl))
                    .compare_cas(cas)
                    .send();
                self.exchange("lease", &[&key], fut, |_| vec![]).await?
            }
            None => {
                let fut = client.delete(&key).compare_cas(cas).send();
                self.exchange("lease", &[&key], fut, |_| vec![]).await?
            }
        };
        Ok(r.status == MutationStatus::Applied)
    }

    /// Records that everything stored for `primary` before `at` is gone. Kept for the longest
    /// an entry can live in memcached (30 days), so no older entry can outlive its marker.
    pub(crate) async fn set_purge_marker(
        &self,
        primary: &str,
        at: SystemTime,
    ) -> Result<(), McError> {
        let key = self.marker_key(primary);
        let value = crate::cache::stored::millis(at).to_string();
        self.set_item("purge_marker", &key, value.as_bytes(), 30 * 86400, None)
            .await
            .map(|_| ())
    }

    /// When `primary` was last purged, if ever (within the marker's lifetime): compare with
    /// [`crate::cache::stored::retires`].
    pub(crate) async fn purge_marker(
        &'static self,
        primary: &str,
    ) -> Result<Option<SystemTime>, McError> {
        let key = self.marker_key(primary);
        let client = self.client().await?;
        let fut = client.get(&key).meta(Meta::NONE.cas()).send();
        let r = self
            .exchange("purge_marker", &[&key], fut, |_| vec![])
            .await?;
        Ok(self.decode_marker_reply(key, r))
    }

    pub(super) fn decode_marker_reply(
        &'static self,
        key: String,
        r: GetResult,
    ) -> Option<SystemTime> {
        let (hit, cas) = (r.hit(), r.item.cas);
        let v = r.value.filter(|_| hit)?;
        // A forged marker could retire every entry of a URL at will: it counts as none.
        let Ok(v) = self.seal.open(Kind::PurgeMarker, &key, v) else {
            self.delete_later(key, cas);
            return None;
        };
        let millis = std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        millis.map(|m| UNIX_EPOCH + Duration::from_millis(m))
    }
}

fn ttl_of(d: Duration) -> Ttl {
    // memcached counts whole seconds; round up so a lease never lapses early.
    Ttl::secs(d.as_secs().max(1) as u32 + u32::from(d.subsec_nanos() > 0))
}
