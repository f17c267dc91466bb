//! Invalidation markers in memcached: one small item per tag, host, host prefix registry and
//! "all", at `NS:i:<hash of the name>` (hashed, so no tag byte reaches a memcached key).
//! Written by a CAS loop (read, merge, compare-and-set or add), so concurrent purges from
//! several nodes never lose one another: a purge costs 2 operations per name, whatever the
//! number of objects it retires.

use crate::cache::memcached::seal::Kind;
use crate::cache::memcached::MemcachedStorage;
use memcache::exp::{Meta, MutationStatus, Ttl};
use pingora::cache::key::hash_key;

/// CAS rounds before a purge gives up (only under a storm of purges of the same name).
const ROUNDS: usize = 8;

fn key(l2: &MemcachedStorage, name: &str) -> String {
    let h = u128::from_be_bytes(hash_key(name));
    format!("{}:i:{h:032x}", l2.settings().namespace)
}

/// The item for `name` and its CAS; `None` when absent.
pub async fn read(l2: &MemcachedStorage, name: &str) -> Result<Option<(Vec<u8>, u64)>, String> {
    let key = key(l2, name);
    let client = l2.client().await.map_err(|e| e.to_string())?;
    let fut = client.get(&key).meta(Meta::NONE.cas()).send();
    let r = l2
        .exchange("invalidation", &[&key], fut, |_| vec![])
        .await
        .map_err(|e| e.to_string())?;
    let hit = r.hit();
    let cas = r.item.cas.unwrap_or(0);
    let Some(v) = r.value.filter(|_| hit) else {
        return Ok(None);
    };
    match l2.open_value(Kind::Invalidation, &key, v) {
        Some(v) => Ok(Some((v, cas))),
        None => {
            // A forged marker could retire anything at will: it goes, and reads as none (so
            // the next purge can `add` a real one).
            let _ = l2.delete_item(&key, Some(cas)).await;
            Ok(None)
        }
    }
}

/// Replaces the item for `name` with `merge(current)`, atomically against other writers.
/// Returns the value written.
pub async fn update(
    l2: &MemcachedStorage,
    name: &str,
    merge: impl Fn(Option<&[u8]>) -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, String> {
    let key = key(l2, name);
    let ttl = super::marks::LIFETIME.as_secs() as u32;
    for _ in 0..ROUNDS {
        let current = read(l2, name).await?;
        let value = merge(current.as_ref().map(|(v, _)| v.as_slice()))?;
        let status = match current {
            Some((_, cas)) => l2
                .set_item("invalidation", &key, &value, ttl, Some(cas))
                .await
                .map_err(|e| e.to_string())?,
            None => {
                let client = l2.client().await.map_err(|e| e.to_string())?;
                let sealed = l2.seal_value(&key, value.clone());
                let fut = client
                    .set(&key, &sealed[..])
                    .ttl(Ttl::secs(ttl))
                    .add()
                    .send();
                l2.exchange("invalidation", &[&key], fut, |_| vec![])
                    .await
                    .map_err(|e| e.to_string())?
                    .status
            }
        };
        if status == MutationStatus::Applied {
            return Ok(value);
        }
    }
    Err(format!(
        "{name}: too many concurrent purges of this name; retry"
    ))
}
