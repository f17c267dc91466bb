//! How a head item holds its `CacheMeta`: Pingora's msgpack internal meta as Pingora writes it,
//! and the response header as plain length-prefixed fields instead of Pingora's zstd frame.
//!
//! Why not Pingora's header form: every memcached hit decodes the header, and decompressing it
//! (plus an allocation per field name) was about 3 % of a 1 KiB memcached hit's CPU. The plain
//! form is decoded without copying: names and values are slices of the item that was read.
//!
//! Header field, format version 2 (integers big-endian):
//!
//! ```text
//!   2 status
//!   2 field count
//!   then per field, in order: 2 name length, name (as the origin spelled it),
//!                             4 value length, value
//! ```
//!
//! Version 1 heads (Pingora's zstd header) are still read, so a fleet can be upgraded node by
//! node: older nodes see version 2 heads as misses and refill them, newer nodes read both.

use super::entry::Head;
use bytes::{BufMut, Bytes};
use http::HeaderValue;
use pingora::cache::CacheMeta;
use pingora::http::{HeaderNameVariant, ResponseHeader};
use pingora::{Error, ErrorType, Result};
use std::sync::LazyLock;
use std::time::UNIX_EPOCH;

/// Pingora's serialized form of a header with no fields: `CacheMeta::deserialize` needs one,
/// and the real header replaces it.
static EMPTY_HEADER: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let header = ResponseHeader::build(200, Some(0)).expect("a 200 header");
    CacheMeta::new(UNIX_EPOCH, UNIX_EPOCH, 0, 0, header)
        .serialize()
        .map(|(_, h)| h)
        .expect("an empty header serializes")
});

/// The (internal, header) blobs a head item stores for `meta`.
pub fn encode(meta: &CacheMeta) -> Result<(Vec<u8>, Vec<u8>)> {
    let (internal, _) = meta.serialize()?;
    let resp = meta.response_header();
    let mut out = Vec::with_capacity(4 + resp.headers.len() * 48);
    out.put_u16(resp.status.as_u16());
    let count = u16::try_from(resp.headers.len()).map_err(|_| invalid("too many fields"))?;
    out.put_u16(count);
    resp.map(|name, value| {
        let name = match &name {
            HeaderNameVariant::Case(c) => c.as_slice(),
            HeaderNameVariant::Titled(t) => t.as_bytes(),
        };
        let len = u16::try_from(name.len()).map_err(|_| invalid("field name too long"))?;
        out.put_u16(len);
        out.put_slice(name);
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
        Ok(())
    })?;
    Ok((internal, out))
}

/// The meta of a decoded head, of either format version.
pub fn decode(head: &Head) -> Result<CacheMeta> {
    if head.version == 1 {
        return CacheMeta::deserialize(&head.internal, &head.header);
    }
    with_plain_header(&head.internal, &head.header)
}

/// The meta of blobs [`encode`] made on this node (a fill's own, not read from memcached).
pub fn decode_current(internal: &[u8], header: &[u8]) -> Result<CacheMeta> {
    with_plain_header(internal, &Bytes::copy_from_slice(header))
}

fn with_plain_header(internal: &[u8], header: &Bytes) -> Result<CacheMeta> {
    let mut meta = CacheMeta::deserialize(internal, &EMPTY_HEADER)?;
    *meta.response_header_mut() = decode_header(header)?;
    Ok(meta)
}

fn decode_header(b: &Bytes) -> Result<ResponseHeader> {
    let mut at = 0;
    let mut take = |n: usize| -> Result<Bytes> {
        let end = at + n;
        if end > b.len() {
            return Err(invalid("header truncated"));
        }
        let s = b.slice(at..end);
        at = end;
        Ok(s)
    };
    let be16 = |s: Bytes| u16::from_be_bytes([s[0], s[1]]);
    let status = be16(take(2)?);
    let count = be16(take(2)?) as usize;
    let mut resp = ResponseHeader::build(status, Some(count))?;
    for _ in 0..count {
        let name_len = be16(take(2)?) as usize;
        let name = take(name_len)?;
        let v = take(4)?;
        let value_len = u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize;
        let value = HeaderValue::from_maybe_shared(take(value_len)?)
            .map_err(|_| invalid("invalid field value"))?;
        resp.append_header(name, value)?;
    }
    if at != b.len() {
        return Err(invalid("trailing bytes after the header"));
    }
    Ok(resp)
}

fn invalid(why: &'static str) -> Box<Error> {
    Error::explain(ErrorType::InternalError, why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::memcached::entry::{Body, FORMAT_VERSION};
    use std::time::{Duration, SystemTime};

    fn head(internal: Vec<u8>, header: Vec<u8>, version: u8) -> Head {
        Head {
            version,
            write_id: 1,
            body_len: 0,
            internal: internal.into(),
            header: header.into(),
            body: Body::Inline(Bytes::new()),
        }
    }

    fn sample() -> CacheMeta {
        let mut h = ResponseHeader::build(203, None).unwrap();
        h.append_header("Content-Type", "text/plain").unwrap();
        h.append_header("x-LOWER-upper", "a").unwrap();
        h.append_header("Set-Cookie", "a=1").unwrap();
        h.append_header("Set-Cookie", "b=2").unwrap();
        h.append_header("Cache-Control", "max-age=60").unwrap();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        CacheMeta::new(now + Duration::from_secs(60), now, 5, 7, h)
    }

    fn wire(meta: &CacheMeta) -> Vec<u8> {
        let mut out = Vec::new();
        meta.response_header().header_to_h1_wire(&mut out);
        out
    }

    #[test]
    fn the_plain_header_round_trips_with_spelling_order_and_repeats() {
        let meta = sample();
        let (internal, header) = encode(&meta).unwrap();
        let back = decode(&head(internal, header, FORMAT_VERSION)).unwrap();
        assert_eq!(back.response_header().status.as_u16(), 203);
        assert_eq!(wire(&back), wire(&meta));
        assert_eq!(back.fresh_until(), meta.fresh_until());
        assert_eq!(back.created(), meta.created());
        assert_eq!(back.stale_while_revalidate_sec(), 5);
        assert_eq!(back.stale_if_error_sec(), 7);
    }

    #[test]
    fn version_1_heads_are_read_as_pingora_wrote_them() {
        let meta = sample();
        let (internal, header) = meta.serialize().unwrap();
        let back = decode(&head(internal, header, 1)).unwrap();
        assert_eq!(wire(&back), wire(&meta));
    }

    #[test]
    fn a_damaged_header_is_an_error_not_a_panic() {
        let (internal, header) = encode(&sample()).unwrap();
        for cut in 0..header.len() {
            let h = head(internal.clone(), header[..cut].to_vec(), FORMAT_VERSION);
            assert!(decode(&h).is_err(), "cut at {cut}");
        }
        let mut bad = header.clone();
        bad.push(0);
        assert!(decode(&head(internal.clone(), bad, FORMAT_VERSION)).is_err());
        let mut ctl = header;
        let last = ctl.len() - 1;
        ctl[last] = b'\n';
        assert!(decode(&head(internal, ctl, FORMAT_VERSION)).is_err());
    }
}
