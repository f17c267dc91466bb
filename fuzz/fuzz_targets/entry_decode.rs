//! Whatever memcached hands back (another client's item, a bit flip, a truncated value) must
//! decode to an error or to a head that re-encodes to the same bytes, and never panic; the same
//! for the CacheMeta blobs a lookup deserializes next.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shellac::cache::memcached::entry;

fuzz_target!(|data: &[u8]| {
    let value = bytes::Bytes::copy_from_slice(data);
    if let Ok(head) = entry::decode_head(value.clone()) {
        assert_eq!(head.encode(), data);
        let _ = pingora::cache::CacheMeta::deserialize(&head.internal, &head.header);
    }
    if let Some(split) = data.first().map(|b| *b as usize % (data.len() + 1)) {
        let _ = pingora::cache::CacheMeta::deserialize(&data[..split], &data[split..]);
    }
    let _ = entry::decode_chunk(value, 0, 0, data.len().saturating_sub(entry::CHUNK_HEADER_LEN));
});
