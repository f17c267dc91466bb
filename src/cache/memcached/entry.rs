//! How a cached object is laid out in memcached: item keys, the binary entry format, and the
//! item TTLs. Everything here is pure (no I/O), so the decoder can be fuzzed and unit-tested.
//!
//! # Keys
//!
//! `H` is `CacheKey::combined()` (32 hex digits of Pingora's blake2 hash), `NS` the configured
//! namespace. No request bytes ever reach a key, so keys are fixed-length printable ASCII and
//! nothing from a client can inject a memcached command.
//!
//! - head: `NS:h:H`
//! - chunk `i` of write `W`: `NS:c:H:W:i` (`W` as 16 hex digits, `i` decimal)
//!
//! # Head item, format version 2 (all integers big-endian)
//!
//! ```text
//! offset size field
//!      0    4 magic          b"SHLC"
//!      4    1 version        2 (1 is still read: its header is Pingora's zstd form); another
//!                            version is a miss
//!      5    1 flags          bit 0: the body is inline in this item; other bits must be 0
//!      6    2 reserved       0
//!      8    8 write_id       random per fill; names this fill's chunks
//!     16    8 body_len       body bytes
//!     24    4 chunk_size     body bytes per chunk (last one shorter); 0 when inline
//!     28    4 internal_len
//!     32    n internal       CacheMeta::serialize().0 (msgpack)
//!           4 header_len
//!           m header         the response header, plain ([`super::meta`])
//!           b body           body_len bytes, only when inline
//!           4 crc32          CRC-32 (IEEE) of every byte above
//! ```
//!
//! # Chunk item
//!
//! ```text
//!      0    8 write_id       must equal the head's
//!      8    4 index          must equal the key's `i`
//!     12    4 crc32          CRC-32 of data
//!     16    … data           chunk_size bytes, except the last chunk
//! ```
//!
//! Chunks are written before the head and the head is the only pointer to a write id, so a
//! reader sees one complete fill or none: two fills never mix and a half-written fill is never
//! visible. Anything that does not decode exactly is reported as a [`DecodeError`], which the
//! storage turns into a miss.

use bytes::Bytes;
use std::time::{Duration, SystemTime};

pub const MAGIC: [u8; 4] = *b"SHLC";
pub const FORMAT_VERSION: u8 = 2;
/// The oldest version still read.
const OLDEST_VERSION: u8 = 1;
const FLAG_INLINE: u8 = 1;
const FIXED_LEN: usize = 32;
const CRC_LEN: usize = 4;
pub const CHUNK_HEADER_LEN: usize = 16;

/// An upper bound on chunks per object: a hostile head (valid CRC, absurd `body_len`) must not
/// make a reader plan millions of requests.
pub const MAX_CHUNKS: u64 = crate::config::MAX_CHUNKS as u64;

/// Why a stored value was rejected. Only logged and counted: the caller treats it as a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for DecodeError {}

/// Where the body of an object lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Inline(Bytes),
    Chunked { chunk_size: usize },
}

/// A decoded head item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Which form `header` has ([`super::meta::decode`]); heads are written at [`FORMAT_VERSION`].
    pub version: u8,
    pub write_id: u64,
    pub body_len: usize,
    pub internal: Bytes,
    pub header: Bytes,
    pub body: Body,
}

impl Head {
    pub fn n_chunks(&self) -> u32 {
        match self.body {
            Body::Inline(_) => 0,
            // decode() bounds this by MAX_CHUNKS.
            Body::Chunked { chunk_size } => n_chunks(self.body_len, chunk_size) as u32,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        encode_version(
            self.version,
            self.write_id,
            self.body_len,
            &self.internal,
            &self.header,
            match &self.body {
                Body::Inline(b) => HeadBody::Inline(b),
                Body::Chunked { chunk_size } => HeadBody::Chunked(*chunk_size),
            },
        )
    }
}

pub enum HeadBody<'a> {
    Inline(&'a [u8]),
    Chunked(usize),
}

pub fn n_chunks(body_len: usize, chunk_size: usize) -> u64 {
    (body_len as u64).div_ceil(chunk_size.max(1) as u64)
}

/// Body bytes held by chunk `index`.
pub fn chunk_len(body_len: usize, chunk_size: usize, index: u32) -> usize {
    let start = index as usize * chunk_size;
    body_len.saturating_sub(start).min(chunk_size)
}

pub fn encode_head(
    write_id: u64,
    body_len: usize,
    internal: &[u8],
    header: &[u8],
    body: HeadBody<'_>,
) -> Vec<u8> {
    encode_version(FORMAT_VERSION, write_id, body_len, internal, header, body)
}

fn encode_version(
    version: u8,
    write_id: u64,
    body_len: usize,
    internal: &[u8],
    header: &[u8],
    body: HeadBody<'_>,
) -> Vec<u8> {
    let (flags, chunk_size, inline) = match body {
        HeadBody::Inline(b) => (FLAG_INLINE, 0u32, b),
        HeadBody::Chunked(cs) => (0, cs as u32, &[][..]),
    };
    let mut out =
        Vec::with_capacity(FIXED_LEN + internal.len() + 4 + header.len() + inline.len() + CRC_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(version);
    out.push(flags);
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&write_id.to_be_bytes());
    out.extend_from_slice(&(body_len as u64).to_be_bytes());
    out.extend_from_slice(&chunk_size.to_be_bytes());
    out.extend_from_slice(&(internal.len() as u32).to_be_bytes());
    out.extend_from_slice(internal);
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(header);
    out.extend_from_slice(inline);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// A bounds-checked reader; every accessor fails instead of panicking on short input.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError(what))?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError(what))?;
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        let s = self.take(4, what)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        let s = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(u64::from_be_bytes(a))
    }
}

pub fn decode_head(value: Bytes) -> Result<Head, DecodeError> {
    if value.len() < FIXED_LEN + 4 + CRC_LEN {
        return Err(DecodeError("head shorter than its fixed part"));
    }
    let (payload, crc) = value.split_at(value.len() - CRC_LEN);
    if crc32fast::hash(payload).to_be_bytes() != crc {
        return Err(DecodeError("head checksum mismatch"));
    }
    let mut c = Cursor {
        buf: payload,
        pos: 0,
    };
    if c.take(4, "magic")? != MAGIC {
        return Err(DecodeError("bad magic"));
    }
    let version = c.take(1, "version")?[0];
    if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(DecodeError("unknown format version"));
    }
    let flags = c.take(1, "flags")?[0];
    if flags & !FLAG_INLINE != 0 || c.take(2, "reserved")? != [0, 0] {
        return Err(DecodeError("unknown flags"));
    }
    let write_id = c.u64("write id")?;
    let body_len =
        usize::try_from(c.u64("body length")?).map_err(|_| DecodeError("body length overflows"))?;
    let chunk_size = c.u32("chunk size")? as usize;
    let internal_len = c.u32("internal length")? as usize;
    let internal_at = c.pos;
    c.take(internal_len, "internal meta truncated")?;
    let header_len = c.u32("header length")? as usize;
    let header_at = c.pos;
    c.take(header_len, "header truncated")?;
    let body = if flags & FLAG_INLINE != 0 {
        if chunk_size != 0 {
            return Err(DecodeError("inline body with a chunk size"));
        }
        let at = c.pos;
        c.take(body_len, "inline body truncated")?;
        Body::Inline(value.slice(at..at + body_len))
    } else {
        if chunk_size == 0 {
            return Err(DecodeError("chunked body without a chunk size"));
        }
        if n_chunks(body_len, chunk_size) > MAX_CHUNKS {
            return Err(DecodeError("too many chunks"));
        }
        Body::Chunked { chunk_size }
    };
    if c.pos != payload.len() {
        return Err(DecodeError("trailing bytes in head"));
    }
    Ok(Head {
        version,
        write_id,
        body_len,
        internal: value.slice(internal_at..internal_at + internal_len),
        header: value.slice(header_at..header_at + header_len),
        body,
    })
}

pub fn encode_chunk(write_id: u64, index: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + data.len());
    out.extend_from_slice(&write_id.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(data).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The data of chunk `index` of write `write_id`, which must be exactly `expected_len` bytes.
pub fn decode_chunk(
    value: Bytes,
    write_id: u64,
    index: u32,
    expected_len: usize,
) -> Result<Bytes, DecodeError> {
    let mut c = Cursor {
        buf: &value,
        pos: 0,
    };
    if c.u64("chunk header truncated")? != write_id {
        return Err(DecodeError("chunk of another write"));
    }
    if c.u32("chunk header truncated")? != index {
        return Err(DecodeError("chunk index mismatch"));
    }
    let crc = c.u32("chunk header truncated")?;
    let data = value.slice(CHUNK_HEADER_LEN..);
    if data.len() != expected_len {
        return Err(DecodeError("chunk length mismatch"));
    }
    if crc32fast::hash(&data) != crc {
        return Err(DecodeError("chunk checksum mismatch"));
    }
    Ok(data)
}

pub fn head_key(namespace: &str, hex: &str) -> String {
    format!("{namespace}:h:{hex}")
}

pub fn chunk_key(namespace: &str, hex: &str, write_id: u64, index: u32) -> String {
    format!("{namespace}:c:{hex}:{write_id:016x}:{index}")
}

/// memcached expiry, in seconds, for a head and for its chunks.
///
/// memcached must keep an entry at least as long as Pingora may still use it: while fresh, then
/// while it may be served stale (`max(swr, sie)`), then `keep_stale_for` more so an expired
/// entry can still be revalidated with a 304 instead of refetched. Chunks live a minute longer
/// than their head so a head never points at chunks that expired first.
pub fn ttls(
    fresh_until: SystemTime,
    swr_sec: u32,
    sie_sec: u32,
    keep_stale_for: Duration,
    now: SystemTime,
) -> (u32, u32) {
    const MAX: u64 = 30 * 24 * 3600;
    let fresh = fresh_until
        .duration_since(now)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let head = fresh
        .saturating_add(u64::from(swr_sec.max(sie_sec)))
        .saturating_add(keep_stale_for.as_secs())
        .clamp(1, MAX) as u32;
    (head, head + 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(inline: bool) -> Vec<u8> {
        if inline {
            encode_head(7, 5, b"meta", b"hdr", HeadBody::Inline(b"hello"))
        } else {
            encode_head(7, 1_000_000, b"meta", b"hdr", HeadBody::Chunked(4096))
        }
    }

    #[test]
    fn head_round_trips() {
        let h = decode_head(Bytes::from(sample(true))).unwrap();
        assert_eq!(h.write_id, 7);
        assert_eq!(&h.internal[..], b"meta");
        assert_eq!(&h.header[..], b"hdr");
        assert_eq!(h.body, Body::Inline(Bytes::from_static(b"hello")));
        assert_eq!(h.encode(), sample(true));

        let h = decode_head(Bytes::from(sample(false))).unwrap();
        assert_eq!(h.body, Body::Chunked { chunk_size: 4096 });
        assert_eq!(h.n_chunks(), 245);
        assert_eq!(chunk_len(h.body_len, 4096, 244), 1_000_000 - 244 * 4096);
    }

    #[test]
    fn chunk_round_trips_and_rejects_mismatches() {
        let v = Bytes::from(encode_chunk(9, 3, b"abc"));
        assert_eq!(&decode_chunk(v.clone(), 9, 3, 3).unwrap()[..], b"abc");
        assert!(decode_chunk(v.clone(), 8, 3, 3).is_err());
        assert!(decode_chunk(v.clone(), 9, 2, 3).is_err());
        assert!(decode_chunk(v.clone(), 9, 3, 4).is_err());
        assert!(decode_chunk(v.slice(..18), 9, 3, 2).is_err());
    }

    #[test]
    fn ttls_cover_freshness_stale_windows_and_margin() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let keep = Duration::from_secs(3600);
        let (h, c) = ttls(now + Duration::from_secs(100), 30, 60, keep, now);
        assert_eq!((h, c), (100 + 60 + 3600, 100 + 60 + 3600 + 60));
        // Already stale: only the stale windows and the margin remain.
        let (h, _) = ttls(now - Duration::from_secs(100), 0, 0, keep, now);
        assert_eq!(h, 3600);
        let (h, _) = ttls(now, 0, 0, Duration::ZERO, now);
        assert_eq!(h, 1);
    }

    /// xorshift64*: deterministic, so a failure reproduces.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn decoder_survives_random_truncated_and_bit_flipped_input() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let seeds = [sample(true), sample(false)];
        let mut accepted_mutants = 0;
        for round in 0..20_000 {
            let mut v = seeds[round % 2].clone();
            match next(&mut rng) % 4 {
                0 => v.truncate((next(&mut rng) as usize) % (v.len() + 1)),
                1 => {
                    for _ in 0..1 + next(&mut rng) % 4 {
                        let bit = (next(&mut rng) as usize) % (v.len() * 8);
                        v[bit / 8] ^= 1 << (bit % 8);
                    }
                }
                2 => {
                    let n = (next(&mut rng) % 200) as usize;
                    v = (0..n).map(|_| next(&mut rng) as u8).collect();
                }
                _ => {
                    // A structurally valid head with random lengths and a recomputed CRC: the
                    // checks behind the checksum must hold on their own.
                    v.truncate(v.len() - CRC_LEN);
                    let at = (next(&mut rng) as usize) % v.len();
                    v[at] = next(&mut rng) as u8;
                    let crc = crc32fast::hash(&v);
                    v.extend_from_slice(&crc.to_be_bytes());
                }
            }
            if let Ok(h) = decode_head(Bytes::from(v.clone())) {
                accepted_mutants += 1;
                assert_eq!(h.encode(), v, "a decoded head re-encodes to the same bytes");
                let _ = super::super::meta::decode(&h);
                // Whatever decodes must be self-consistent.
                if let Body::Inline(b) = &h.body {
                    assert_eq!(b.len(), h.body_len);
                }
                assert!(u64::from(h.n_chunks()) <= MAX_CHUNKS);
            }
            // The meta blobs come from the same hostile bytes on a real lookup.
            let split = (next(&mut rng) as usize) % (v.len() + 1);
            let v = Bytes::from(v);
            for version in [1, FORMAT_VERSION] {
                let _ = super::super::meta::decode(&Head {
                    version,
                    write_id: 0,
                    body_len: 0,
                    internal: v.slice(..split),
                    header: v.slice(split..),
                    body: Body::Inline(Bytes::new()),
                });
            }
            let _ = decode_chunk(v, 7, 0, 5);
        }
        // Only the "recomputed CRC" mutants can decode, and only when they hit a field with no
        // check (write id, body length of a chunked head, payload bytes).
        assert!(accepted_mutants < 5_000, "{accepted_mutants}");
    }
}
