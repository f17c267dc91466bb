//! Item authentication (`cache.memcached.key_file`). memcached has no access control, so
//! anyone who can reach it could plant heads (content served to the whole fleet), leases (every
//! miss stalls), purge markers (every entry retired) or huge heads (work for every reader).
//! With a key, every value Shellac writes ends in a BLAKE3 keyed hash over the item's key and
//! value; a value without a valid tag is a miss, is deleted, and is counted by reason. Binding
//! the item key stops a valid value being copied under another key (one URL's head replayed as
//! another's). Replaying an item's own older value under its key stays possible; the write id
//! and the purge marker check bound what that gains.

pub use crate::config::MacKey;
use crate::metrics;

pub const TAG_LEN: usize = blake3::OUT_LEN;

/// Why a value was refused; the label of `shellac_memcached_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Too short to hold a tag (a value written without a key is usually longer, and fails as
    /// `BadTag`).
    Short,
    /// The tag does not match: a different key, another item's value, or a forgery.
    BadTag,
}

impl Rejected {
    fn reason(self) -> &'static str {
        match self {
            Rejected::Short => "short",
            Rejected::BadTag => "bad_tag",
        }
    }
}

/// The kinds of item, the other label of the metric.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Head,
    Chunk,
    Lease,
    PurgeMarker,
    /// Tag, host, prefix and "all" invalidation markers ([`crate::cache::invalidation`]).
    Invalidation,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Head => "head",
            Kind::Chunk => "chunk",
            Kind::Lease => "lease",
            Kind::PurgeMarker => "purge_marker",
            Kind::Invalidation => "invalidation",
        }
    }
}

/// Seals and opens values; a no-op without a key.
#[derive(Debug, Clone, Default)]
pub struct Sealer {
    key: Option<MacKey>,
}

impl Sealer {
    pub fn new(key: Option<MacKey>) -> Sealer {
        Sealer { key }
    }

    pub fn is_keyed(&self) -> bool {
        self.key.is_some()
    }

    /// Bytes a sealed value has beyond the plain one.
    pub fn overhead(&self) -> usize {
        if self.key.is_some() {
            TAG_LEN
        } else {
            0
        }
    }

    fn tag(key: &MacKey, item: &str, value: &[u8]) -> blake3::Hash {
        let mut h = blake3::Hasher::new_keyed(key.bytes());
        // Length-prefixed: no (item, value) pair frames to the same input as another.
        h.update(&(item.len() as u64).to_be_bytes());
        h.update(item.as_bytes());
        h.update(value);
        h.finalize()
    }

    /// `value` with its tag for item `item` appended.
    pub fn seal(&self, item: &str, mut value: Vec<u8>) -> Vec<u8> {
        if let Some(key) = &self.key {
            let tag = Self::tag(key, item, &value);
            value.extend_from_slice(tag.as_bytes());
        }
        value
    }

    /// The plain value of a sealed `value` read from item `item`; a refusal is counted.
    pub fn open(&self, kind: Kind, item: &str, mut value: Vec<u8>) -> Result<Vec<u8>, Rejected> {
        let Some(key) = &self.key else {
            return Ok(value);
        };
        let verdict = match value.len().checked_sub(TAG_LEN) {
            None => Err(Rejected::Short),
            Some(n) => {
                let tag = blake3::Hash::from_bytes(value[n..].try_into().expect("TAG_LEN bytes"));
                // Hash equality is constant-time: no timing oracle for forging a tag.
                if Self::tag(key, item, &value[..n]) == tag {
                    value.truncate(n);
                    Ok(())
                } else {
                    Err(Rejected::BadTag)
                }
            }
        };
        match verdict {
            Ok(()) => Ok(value),
            Err(r) => {
                metrics::MEMCACHED_REJECTED
                    .with_label_values(&[kind.label(), r.reason()])
                    .inc();
                log::warn!(
                    "memcached: {} item {item} failed authentication ({}); treated as absent and deleted",
                    kind.label(),
                    r.reason()
                );
                Err(r)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed(b: u8) -> Sealer {
        Sealer::new(MacKey::derive(&[b; 32]))
    }

    #[test]
    fn sealed_values_open_only_under_their_key_and_item() {
        let s = keyed(1);
        let v = s.seal("ns:h:a", b"value".to_vec());
        assert_eq!(v.len(), 5 + TAG_LEN);
        assert_eq!(s.open(Kind::Head, "ns:h:a", v.clone()).unwrap(), b"value");
        assert_eq!(
            s.open(Kind::Head, "ns:h:b", v.clone()),
            Err(Rejected::BadTag)
        );
        assert_eq!(
            keyed(2).open(Kind::Head, "ns:h:a", v.clone()),
            Err(Rejected::BadTag)
        );
        let mut flipped = v.clone();
        flipped[0] ^= 1;
        assert_eq!(s.open(Kind::Head, "ns:h:a", flipped), Err(Rejected::BadTag));
        assert_eq!(
            s.open(Kind::Lease, "ns:l:a", b"x".to_vec()),
            Err(Rejected::Short)
        );
        // Without a key nothing is added or checked.
        let plain = Sealer::default();
        assert_eq!(plain.seal("k", b"v".to_vec()), b"v");
        assert_eq!(plain.open(Kind::Chunk, "k", b"v".to_vec()).unwrap(), b"v");
    }

    #[test]
    fn short_secrets_are_refused_and_debug_hides_the_key() {
        assert!(MacKey::derive(&[0; 31]).is_none());
        assert_eq!(
            format!("{:?}", MacKey::derive(&[7; 40]).unwrap()),
            "MacKey(..)"
        );
    }
}
