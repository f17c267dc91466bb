//! Partial content (RFC 9111 §3.3, §3.4; RFC 9110 §14): storing a 206, answering ranges inside
//! it, and combining it with later parts of the same representation. Pure functions of the
//! request and the stored or arriving response; [`flow`] wires them to the hooks and the tiers.
//!
//! The model:
//! - A stored partial is one contiguous span of one representation, kept under its own key
//!   ([`key_of`]: the full object's key with a variance no Vary hash can produce), so a lookup
//!   of the full object never finds it. It answers only a GET whose single range lies wholly
//!   inside it (§3.3: "MUST NOT use an incomplete response to answer requests unless ... the
//!   request is partial and specifies a range wholly within the incomplete response").
//! - Two parts combine only when both carry the same strong `ETag` (§3.4, RFC 9110 §8.8.3.2),
//!   name the same complete length and touch or overlap; the newer bytes win where they
//!   overlap. A union that covers the whole representation is stored as an ordinary 200.
//! - Everything is bounded by the tiers' `max_object`: a part or a union larger than that is
//!   passed through and not stored.

pub mod flow;
#[cfg(test)]
mod tests;

use pingora::cache::key::{hash_key, CacheKey, HashBinary};
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::LazyLock;

/// A satisfiable span of a representation, both ends inclusive (RFC 9110 §14.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub first: u64,
    pub last: u64,
}

impl Span {
    pub fn size(self) -> u64 {
        self.last - self.first + 1
    }

    pub fn contains(self, o: Span) -> bool {
        self.first <= o.first && o.last <= self.last
    }
}

/// One `range-spec` of a request (RFC 9110 §14.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// `first-` or `first-last`.
    From { first: u64, last: Option<u64> },
    /// `-suffix`: the last `suffix` bytes.
    Suffix(u64),
}

impl Spec {
    /// The span this selects in a representation of `complete` bytes, `None` when it is not
    /// satisfiable (§14.1.2: a last position past the end is clamped; a zero suffix or a first
    /// position at or past the end selects nothing).
    pub fn resolve(self, complete: u64) -> Option<Span> {
        if complete == 0 {
            return None;
        }
        match self {
            Spec::From { first, last } if first < complete => Some(Span {
                first,
                last: last.map_or(complete - 1, |l| l.min(complete - 1)),
            }),
            Spec::From { .. } => None,
            Spec::Suffix(0) => None,
            Spec::Suffix(n) => Some(Span {
                first: complete.saturating_sub(n),
                last: complete - 1,
            }),
        }
    }
}

/// A `Range` value with exactly one byte range (RFC 9110 §14.2); `None` for other units,
/// several ranges (multipart answers come from complete responses only) or a malformed value.
pub fn single_range(v: &[u8]) -> Option<Spec> {
    let v = std::str::from_utf8(v).ok()?.trim();
    let (unit, set) = v.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return None;
    }
    let (a, b) = set.trim().split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        return Some(Spec::Suffix(num(b)?));
    }
    let first = num(a)?;
    let last = if b.is_empty() { None } else { Some(num(b)?) };
    if last.is_some_and(|l| l < first) {
        return None; // §14.1.1: invalid, the field is ignored
    }
    Some(Spec::From { first, last })
}

/// What a 206's `Content-Range` says (RFC 9110 §14.4): the span sent and the complete length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub span: Span,
    pub complete: u64,
}

impl Part {
    /// The part is the whole representation.
    pub fn is_whole(self) -> bool {
        self.span.first == 0 && self.span.last + 1 == self.complete
    }
}

/// `bytes first-last/complete`; `None` for an unknown complete length (`/*`), an unsatisfied
/// range (`*/len`), other units or positions that contradict each other.
pub fn content_range(v: &[u8]) -> Option<Part> {
    let v = std::str::from_utf8(v).ok()?.trim();
    let (unit, rest) = v.split_once(' ')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let (range, complete) = rest.trim().split_once('/')?;
    let (first, last) = range.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (first, last, complete) = (num(first)?, num(last)?, num(complete)?);
    (first <= last && last < complete).then_some(Part {
        span: Span { first, last },
        complete,
    })
}

/// A strong entity tag, as its bytes with quotes: `None` for a weak or malformed one.
fn strong_tag(v: &[u8]) -> Option<&[u8]> {
    let v = v.trim_ascii();
    (v.len() >= 2 && v[0] == b'"' && v[v.len() - 1] == b'"').then_some(v)
}

/// RFC 9110 §8.8.3.2 strong comparison: both tags strong and identical.
pub fn strong_match(a: Option<&[u8]>, b: Option<&[u8]>) -> bool {
    match (a.and_then(strong_tag), b.and_then(strong_tag)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn etag(h: &ResponseHeader) -> Option<&[u8]> {
    h.headers.get(http::header::ETAG).map(|v| v.as_bytes())
}

/// Why a 206 was not stored as a partial (besides the rules any response must pass): a closed
/// set, shown in `Cache-Status` and counted in `shellac_cache_not_stored_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unstorable {
    /// No single `bytes first-last/complete` range with a known complete length.
    ContentRange,
    /// The response varies: a part of one variant could be served for another.
    Vary,
    /// Larger than the tiers' `max_object`.
    TooLarge,
    /// The body's length differs from its `Content-Range`.
    Length,
    /// A 416 answers one request's range, never another's.
    Unsatisfiable,
}

impl Unstorable {
    pub fn label(self) -> &'static str {
        match self {
            Unstorable::ContentRange => "partial-content-range",
            Unstorable::Vary => "partial-vary",
            Unstorable::TooLarge => "too-large",
            Unstorable::Length => "partial-length",
            Unstorable::Unsatisfiable => "range-not-satisfiable",
        }
    }
}

/// The reason Pingora is given for not storing a forwarded range's answer under the full
/// object's key: request-specific, so the URL is never remembered as uncacheable for it.
pub const FORWARDED: &str = "partial";

/// §3.3: whether this 206 may be kept as a partial, and which part it is. The storage rules
/// every response passes (§3) are checked by the caller.
pub fn storable_part(resp: &ResponseHeader, max_object: u64) -> Result<Part, Unstorable> {
    let part = resp
        .headers
        .get(http::header::CONTENT_RANGE)
        .and_then(|v| content_range(v.as_bytes()))
        .ok_or(Unstorable::ContentRange)?;
    if resp.headers.contains_key(http::header::VARY) {
        return Err(Unstorable::Vary);
    }
    if let Some(len) = resp.headers.get(http::header::CONTENT_LENGTH) {
        if std::str::from_utf8(len.as_bytes())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            != Some(part.span.size())
        {
            return Err(Unstorable::Length);
        }
    }
    if part.span.size() > max_object {
        return Err(Unstorable::TooLarge);
    }
    Ok(part)
}

/// The request conditions a stored partial cannot evaluate on the origin's behalf; such
/// requests go to the origin (RFC 9110 §13.2.2 evaluates them before Range).
const CONDITIONS: [http::header::HeaderName; 4] = [
    http::header::IF_MATCH,
    http::header::IF_NONE_MATCH,
    http::header::IF_MODIFIED_SINCE,
    http::header::IF_UNMODIFIED_SINCE,
];

/// Whether a miss for `req` should ask the origin for the client's range instead of the whole
/// object: a GET (Range is defined for GET only, RFC 9110 §14.2; HEAD ignores it) with exactly
/// one byte range.
pub fn forwardable(req: &RequestHeader) -> bool {
    req.method == http::Method::GET
        && req
            .headers
            .get(http::header::RANGE)
            .and_then(|v| single_range(v.as_bytes()))
            .is_some()
}

/// §3.3: the span of the stored partial `stored` that answers `req`, when the request is a
/// single-range GET wholly inside it. `If-Range` must match the stored strong `ETag` (a date
/// cannot be checked against a part); other conditions go to the origin.
pub fn answers(req: &RequestHeader, stored: &ResponseHeader) -> Option<Span> {
    if req.method != http::Method::GET || CONDITIONS.iter().any(|h| req.headers.contains_key(h)) {
        return None;
    }
    let spec = single_range(req.headers.get(http::header::RANGE)?.as_bytes())?;
    if let Some(tag) = req.headers.get(http::header::IF_RANGE) {
        if !strong_match(Some(tag.as_bytes()), etag(stored)) {
            return None;
        }
    }
    let part = stored_part(stored)?;
    let span = spec.resolve(part.complete)?;
    part.span.contains(span).then_some(span)
}

/// The part a stored partial holds, from its `Content-Range`.
pub fn stored_part(stored: &ResponseHeader) -> Option<Part> {
    content_range(stored.headers.get(http::header::CONTENT_RANGE)?.as_bytes())
}

/// §3.4: the span two parts of one representation make together, when they may be combined:
/// both strong `ETag`s match, the complete lengths agree, and the spans overlap or touch.
pub fn combine(
    stored: &ResponseHeader,
    old: Part,
    new_header: &ResponseHeader,
    new: Part,
) -> Option<Span> {
    if !strong_match(etag(stored), etag(new_header)) || old.complete != new.complete {
        return None;
    }
    let (a, b) = (old.span, new.span);
    let touch = a.first <= b.last.saturating_add(1) && b.first <= a.last.saturating_add(1);
    touch.then_some(Span {
        first: a.first.min(b.first),
        last: a.last.max(b.last),
    })
}

/// The bytes of `union` from the stored part's and the new part's bodies (each starting at
/// its span's first byte); the new bytes win where they overlap (§3.4: the newer response's
/// content is the current one). `None` if a body is not as long as its span.
pub fn merge(
    union: Span,
    old: Span,
    old_body: &[u8],
    new: Span,
    new_body: &[u8],
) -> Option<Vec<u8>> {
    if old_body.len() as u64 != old.size() || new_body.len() as u64 != new.size() {
        return None;
    }
    let mut out = vec![0u8; union.size() as usize];
    let at = |s: Span| (s.first - union.first) as usize;
    out[at(old)..at(old) + old_body.len()].copy_from_slice(old_body);
    out[at(new)..at(new) + new_body.len()].copy_from_slice(new_body);
    Some(out)
}

/// The header a stored partial keeps: the origin's 206 header, with its `Content-Range` and
/// `Content-Length` naming `part` (after a combination they name the union).
pub fn partial_header(h: &ResponseHeader, part: Part) -> ResponseHeader {
    let mut h = h.clone();
    set_status(&mut h, 206);
    let Span { first, last } = part.span;
    let _ = h.insert_header(
        http::header::CONTENT_RANGE,
        format!("bytes {first}-{last}/{}", part.complete),
    );
    let _ = h.insert_header(http::header::CONTENT_LENGTH, part.span.size());
    h.remove_header(&http::header::TRANSFER_ENCODING);
    h
}

/// The 206 sent for `span` of a stored partial (RFC 9110 §15.3.7: the stored fields, with
/// `Content-Range` and `Content-Length` for the span sent).
pub fn served_header(stored: &ResponseHeader, complete: u64, span: Span) -> ResponseHeader {
    partial_header(stored, Part { span, complete })
}

/// The 200 a combination that covers the whole representation becomes (§3.4): the newest
/// part's fields without `Content-Range`, framed by the complete length.
pub fn complete_header(h: &ResponseHeader, complete: u64) -> ResponseHeader {
    let mut h = h.clone();
    set_status(&mut h, 200);
    h.remove_header(&http::header::CONTENT_RANGE);
    h.remove_header(&http::header::TRANSFER_ENCODING);
    let _ = h.insert_header(http::header::CONTENT_LENGTH, complete);
    h
}

/// The 206 judged as the complete response it is part of (§3.3: incomplete responses are stored
/// under the same requirements; RFC 9110 §15.3.7: a 206 is heuristically cacheable as a 200 is).
pub fn as_complete(resp: &ResponseHeader) -> ResponseHeader {
    let mut h = resp.clone();
    set_status(&mut h, 200);
    h
}

/// A status with its standard reason phrase (the origin's "Partial Content" must not follow).
fn set_status(h: &mut ResponseHeader, status: u16) {
    let _ = h.set_status(status);
    let _ = h.set_reason_phrase(None);
}

/// The variance that marks a stored partial. Vary hashes are hashes of request fields, never of
/// this text, so no variant of the full object can share it.
static VARIANCE: LazyLock<HashBinary> =
    LazyLock::new(|| hash_key("shellac: RFC 9111 §3.3 stored partial content, v1"));

/// The key a partial of the object at `full` is stored under: the same URL (so purges of the
/// URL, its tags and every Vary variant reach it), another entry.
pub fn key_of(full: &CacheKey) -> CacheKey {
    let mut k = full.clone();
    k.set_variance_key(*VARIANCE);
    k
}

/// [`VARIANCE`], for the stored partial's metadata.
pub fn variance() -> HashBinary {
    *VARIANCE
}
