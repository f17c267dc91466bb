//! Rules for the header as stored, shared by both tiers so a hit looks the same from either.

use pingora::http::ResponseHeader;
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch: the resolution of purge markers, and of the stored times
/// they are compared with.
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Whether a purge at `marker` (milliseconds) retires a copy stored at `stored`. A copy stored
/// in the marker's own millisecond counts as purged: it may predate the purge, and one refetch
/// too many is safe where a copy served after its purge is not.
pub fn retires(marker: u64, stored: SystemTime) -> bool {
    marker >= millis(stored)
}

/// RFC 9110 §6.3, §8.6: statuses that never carry content.
pub fn has_body(status: u16) -> bool {
    !(status < 200 || status == 204 || status == 304)
}

/// The stored header always carries the real length of what was stored: a chunked origin
/// response becomes length-framed, so hits can be ranged (Pingora requires Content-Length)
/// and HEAD is exact. A status without content carries no length at all (§8.6: a 204 must
/// not send Content-Length).
pub fn frame(header: &mut ResponseHeader, body_len: usize) {
    header.remove_header(&http::header::TRANSFER_ENCODING);
    if has_body(header.status.as_u16()) {
        // insert_header only fails on an invalid value; a number is always valid.
        let _ = header.insert_header(http::header::CONTENT_LENGTH, body_len);
    } else {
        header.remove_header(&http::header::CONTENT_LENGTH);
    }
}

/// Whether [`frame`] would change a header with this status, declared length and coding, for
/// a body of `body_len` bytes (lets a tier skip re-encoding a header that is already right).
pub fn needs_framing(
    status: u16,
    declared_len: Option<usize>,
    chunked: bool,
    body_len: usize,
) -> bool {
    chunked
        || if has_body(status) {
            declared_len != Some(body_len)
        } else {
            declared_len.is_some()
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_stored_in_the_markers_millisecond_is_retired() {
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let micros = std::time::Duration::from_micros;
        let retires = |marker: SystemTime, stored| retires(millis(marker), stored);
        assert!(
            retires(t + micros(700), t + micros(300)),
            "stored before, same ms"
        );
        assert!(
            retires(t + micros(300), t + micros(700)),
            "same ms: may predate it"
        );
        assert!(retires(t + micros(1500), t), "stored in an earlier ms");
        assert!(!retires(t, t + micros(1000)), "stored in a later ms");
    }

    #[test]
    fn one_length_rule() {
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("Transfer-Encoding", "chunked").unwrap();
        frame(&mut h, 5);
        assert_eq!(h.headers["content-length"], "5");
        assert!(h.headers.get("transfer-encoding").is_none());
        let mut h = ResponseHeader::build(204, None).unwrap();
        h.insert_header("Content-Length", "0").unwrap();
        frame(&mut h, 0);
        assert!(h.headers.get("content-length").is_none());
        assert!(!needs_framing(200, Some(5), false, 5));
        assert!(needs_framing(200, Some(5), false, 4));
        assert!(needs_framing(200, Some(5), true, 5));
        assert!(needs_framing(204, Some(0), false, 0));
        assert!(!needs_framing(204, None, false, 0));
    }
}
