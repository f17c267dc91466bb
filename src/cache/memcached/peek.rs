//! Reading one object's head for inspection (`GET /cache` on the admin listener): what a
//! lookup would read, plus the item's remaining memcached TTL, without serving, touching or
//! deleting anything.

use super::entry::{self, Body};
use super::fleet::Lease;
use super::seal::Kind;
use super::MemcachedStorage;
use bytes::Bytes;
use memcache::exp::Meta;
use pingora::cache::CacheMeta;

/// One head as stored.
pub struct Peeked {
    pub meta: CacheMeta,
    pub body_len: usize,
    /// The body is inside the head item (else in chunks).
    pub inline: bool,
    /// Body chunks the head names, and whether every one is present.
    pub chunks: u32,
    pub complete: bool,
    /// The head item's remaining TTL in memcached, seconds (`-1`: none).
    pub item_ttl: Option<i64>,
}

/// What memcached holds under one head key.
pub enum Found {
    Absent,
    /// An item is there but is no usable head (forged, another format, corrupt): the reason.
    Unusable(String),
    Head(Box<Peeked>),
}

impl MemcachedStorage {
    /// The head stored for `hex` (a `CacheKey::combined()`). `Err` when memcached could not
    /// be asked.
    pub async fn peek(&'static self, hex: &str) -> Result<Found, String> {
        let key = self.head_key(hex);
        let client = self.client().await.map_err(|e| e.to_string())?;
        let fut = client.get(&key).meta(Meta::NONE.ttl()).send();
        let r = self
            .exchange("get_head", &[&key], fut, |_| vec![])
            .await
            .map_err(|e| e.to_string())?;
        let value = match r.value {
            Some(v) if r.hit() && !v.is_empty() => v,
            _ => return Ok(Found::Absent),
        };
        let item_ttl = r.item.ttl;
        let Ok(value) = self.seal.open(Kind::Head, &key, value) else {
            return Ok(Found::Unusable("fails authentication (key_file)".into()));
        };
        let head = match entry::decode_head(Bytes::from(value)) {
            Ok(h) => h,
            Err(e) => return Ok(Found::Unusable(e.to_string())),
        };
        let meta = match super::meta::decode(&head) {
            Ok(m) => m,
            Err(e) => return Ok(Found::Unusable(format!("unreadable meta: {e}"))),
        };
        let complete = self.check_chunks(hex, &head, None).await.is_ok();
        Ok(Found::Head(Box::new(Peeked {
            meta,
            body_len: head.body_len,
            inline: matches!(head.body, Body::Inline(_)),
            chunks: head.n_chunks(),
            complete,
            item_ttl,
        })))
    }

    /// Whether a node holds the fleet's fill lease for `hex` right now.
    pub async fn filling(&'static self, hex: &str) -> Option<bool> {
        self.lease_state(hex).await.ok().map(|l| l == Lease::Busy)
    }

    /// When the URL with primary key `primary` (hex) was last purged, if ever.
    pub async fn url_purged_at(
        &'static self,
        primary: &str,
    ) -> Result<Option<std::time::SystemTime>, String> {
        self.purge_marker(primary).await.map_err(|e| e.to_string())
    }
}
