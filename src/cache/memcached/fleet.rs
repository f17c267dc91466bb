//! What makes N nodes one cache, kept in memcached next to the entries: fill leases (one
//! origin fetch per object across the fleet) and purge markers (a purge reaches every node's
//! memory tier and every Vary variant without listing keys).
//!
//! Keys: `NS:l:<combined hex>` holds a lease, `NS:p:<primary hex>` the time of the last purge of
//! a URL. Both are tiny. A lease's value is the owning node's id, or [`PASS`] when the owner
//! found the response uncacheable, which tells waiting nodes to stop waiting. Leases expire by
//! TTL, so a node that dies mid-fetch delays the others by at most the lease time.

use super::io::McError;
use super::MemcachedStorage;
use memcache::exp::{Meta, MutationStatus, Ttl};
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

    fn marker_key(&self, primary: &str) -> String {
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
        let value = node.to_be_bytes();
        let fut = client.set(&key, value).ttl(ttl_of(ttl)).add().send();
        let r = self.exchange("lease", &[&key], fut, |_| vec![]).await?;
        Ok(r.status == MutationStatus::Applied)
    }

    pub(crate) async fn lease_state(&self, combined: &str) -> Result<Lease, McError> {
        let key = self.lease_key(combined);
        let client = self.client().await?;
        let fut = client.get(&key).send();
        let r = self.exchange("lease", &[&key], fut, |_| vec![]).await?;
        Ok(match r.value {
            Some(v) if r.hit() && v == PASS => Lease::Pass,
            Some(_) if r.hit() => Lease::Busy,
            _ => Lease::Free,
        })
    }

    /// Ends this node's lease: deleted after a fill (waiters then find the entry), or turned
    /// into [`PASS`] for `pass_for` so waiters go to the origin instead of timing out.
    pub(crate) async fn release_lease(
        &self,
        combined: &str,
        pass_for: Option<Duration>,
    ) -> Result<(), McError> {
        let key = self.lease_key(combined);
        let client = self.client().await?;
        match pass_for {
            Some(ttl) => {
                let fut = client.set(&key, PASS).ttl(ttl_of(ttl)).send();
                self.exchange("lease", &[&key], fut, |_| vec![]).await?;
            }
            None => {
                let fut = client.delete(&key).send();
                self.exchange("lease", &[&key], fut, |_| vec![]).await?;
            }
        }
        Ok(())
    }

    /// Records that everything stored for `primary` before `at` is gone. Kept for the longest
    /// an entry can live in memcached (30 days), so no older entry can outlive its marker.
    pub(crate) async fn set_purge_marker(
        &self,
        primary: &str,
        at: SystemTime,
    ) -> Result<(), McError> {
        let key = self.marker_key(primary);
        let millis = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let value = millis.to_string();
        self.set_item("purge_marker", &key, value.as_bytes(), 30 * 86400, None)
            .await
            .map(|_| ())
    }

    /// When `primary` was last purged, if ever (within the marker's lifetime).
    pub(crate) async fn purge_marker(&self, primary: &str) -> Result<Option<SystemTime>, McError> {
        let key = self.marker_key(primary);
        let client = self.client().await?;
        let fut = client.get(&key).meta(Meta::NONE).send();
        let r = self
            .exchange("purge_marker", &[&key], fut, |_| vec![])
            .await?;
        let hit = r.hit();
        let Some(v) = r.value.filter(|_| hit) else {
            return Ok(None);
        };
        let millis = std::str::from_utf8(&v)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        Ok(millis.map(|m| UNIX_EPOCH + Duration::from_millis(m)))
    }
}

fn ttl_of(d: Duration) -> Ttl {
    // memcached counts whole seconds; round up so a lease never lapses early.
    Ttl::secs(d.as_secs().max(1) as u32 + u32::from(d.subsec_nanos() > 0))
}
