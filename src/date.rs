//! `Date` is the origin's. RFC 9110 §6.6.1 has the origin set it and RFC 9111 §4 serves a
//! stored response with the header it was stored with, so a hit says when the origin made the
//! response (and clients computing age from it agree with `Age`). Pingora 0.9.1's HTTP/1 writer
//! overwrites `Date` with the time of sending on every response and has no switch for it, so:
//!
//! 1. The response filter hands the response's `Date` (the stored one on a hit, the origin's on
//!    a miss or pass) to the client connection: [`keep`].
//! 2. When Pingora writes that response's header, the connection (`conn`) writes the
//!    kept value over the one Pingora put in: [`Kept::patch`].
//!
//! Only an IMF-fixdate is kept (RFC 9110 §5.6.7, the form every sender must use): Pingora's
//! value is one too, so both are 29 bytes and the header's length does not change. A response
//! without a `Date` of that form (Shellac's own answers, an origin without a clock) goes out with
//! Pingora's. A kept value is dropped when the connection reads its next request, so it never
//! reaches another response.

use parking_lot::Mutex;
use pingora::http::ResponseHeader;

/// Length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
const LEN: usize = 29;

/// Step 1: the `Date` of `resp`, kept for the client connection's next header write
/// (`kept`: the connection's slot, from `conn::kept_date`).
pub fn keep(kept: Option<&Kept>, resp: &ResponseHeader) {
    let (Some(kept), Some(value)) = (kept, resp.headers.get(http::header::DATE)) else {
        return;
    };
    let Ok(value) = <[u8; LEN]>::try_from(value.as_bytes()) else {
        return;
    };
    if is_imf_fixdate(&value) {
        *kept.next.lock() = Some(value);
    }
}

/// `Ddd, DD Mmm YYYY HH:MM:SS GMT` by shape: the digits, separators and zone where they belong.
fn is_imf_fixdate(v: &[u8; LEN]) -> bool {
    const DIGITS: [usize; 12] = [5, 6, 12, 13, 14, 15, 17, 18, 20, 21, 23, 24];
    v[..3].iter().all(u8::is_ascii_alphabetic)
        && v[8..11].iter().all(u8::is_ascii_alphabetic)
        && DIGITS.iter().all(|&i| v[i].is_ascii_digit())
        && &v[3..5] == b", "
        && v[7] == b' '
        && v[11] == b' '
        && v[16] == b' '
        && v[19] == b':'
        && v[22] == b':'
        && &v[25..] == b" GMT"
}

/// Per client connection: the `Date` kept for the next response header, and one being written
/// over a header Pingora writes in more than one piece.
#[derive(Default)]
pub struct Kept {
    next: Mutex<Option<[u8; LEN]>>,
    /// The value, and where it goes relative to the start of the next write (negative once
    /// part of it is written).
    writing: Option<([u8; LEN], isize)>,
    scratch: Vec<u8>,
}

impl Kept {
    /// A new request: whatever was kept belonged to the previous response.
    pub fn forget(&mut self) {
        *self.next.get_mut() = None;
        self.writing = None;
    }

    /// A header's `Date` is half written: the next write must go through [`Kept::patch`].
    pub fn pending(&self) -> bool {
        self.writing.is_some()
    }

    /// Step 2, on every write to the client: what to offer instead of `buf`. That is `buf`
    /// itself, unless it carries (part of) a header whose `Date` is to be replaced; then a
    /// patched copy of its start, up to the value's end (the rest follows in the next write).
    /// `header` says `buf` starts a final response header.
    pub fn patch<'a>(&'a mut self, buf: &'a [u8], header: bool) -> &'a [u8] {
        if header {
            if let Some(value) = self.next.get_mut().take() {
                self.writing = date_value_at(buf).map(|at| (value, at as isize));
            }
        }
        let Some((value, at)) = self.writing else {
            return buf;
        };
        // Only the bytes up to the value's end are copied and offered: the rest of the header
        // goes out unchanged in the next write (Pingora's `write_all` offers what is left).
        let end = ((at + LEN as isize).max(0) as usize).min(buf.len());
        if end == 0 {
            return buf;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&buf[..end]);
        for (i, b) in value.iter().enumerate() {
            let pos = at + i as isize;
            if pos >= 0 && (pos as usize) < end {
                self.scratch[pos as usize] = *b;
            }
        }
        &self.scratch
    }

    /// After a write accepted `n` bytes of what [`Kept::patch`] returned.
    pub fn wrote(&mut self, n: usize) {
        if let Some((_, at)) = &mut self.writing {
            *at -= n as isize;
            if *at + LEN as isize <= 0 {
                self.writing = None;
            }
        }
    }
}

/// Where the value of the `Date` line Pingora wrote starts in `header`, if it is an
/// IMF-fixdate (Pingora's always is).
fn date_value_at(header: &[u8]) -> Option<usize> {
    let end = header
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(header.len());
    let head = &header[..end];
    let mut from = 0;
    while let Some(i) = head[from..].windows(2).position(|w| w == b"\r\n") {
        let line = from + i + 2;
        let rest = &head[line..];
        if rest.len() >= 6 + LEN && rest[..6].eq_ignore_ascii_case(b"date: ") {
            let value: &[u8; LEN] = rest[6..6 + LEN].try_into().ok()?;
            return is_imf_fixdate(value).then_some(line + 6);
        }
        from = line;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: Wed, 02 Dec 2026 18:17:07 GMT\r\nConnection: keep-alive\r\n\r\n";
    const KEPT: &[u8; LEN] = b"Sun, 06 Nov 1994 08:49:37 GMT";

    fn kept() -> Kept {
        let k = Kept::default();
        *k.next.lock() = Some(*KEPT);
        k
    }

    /// Writes `buf` as `write_all` does over a stream taking at most `step` bytes a call.
    fn write_all(k: &mut Kept, buf: &[u8], step: usize) -> Vec<u8> {
        let (mut out, mut off) = (Vec::new(), 0);
        while off < buf.len() {
            let offered = k.patch(&buf[off..], off == 0);
            let n = offered.len().min(step);
            assert!(n > 0, "a write offered nothing");
            out.extend_from_slice(&offered[..n]);
            k.wrote(n);
            off += n;
        }
        out
    }

    #[test]
    fn the_kept_date_replaces_pingoras() {
        let mut k = kept();
        let out = write_all(&mut k, HEAD, usize::MAX);
        let want = String::from_utf8_lossy(HEAD).replace(
            "Wed, 02 Dec 2026 18:17:07 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT",
        );
        assert_eq!(String::from_utf8_lossy(&out), want);
        // Only the header up to the value is copied.
        assert!(k.scratch.len() <= HEAD.len() - "\r\nConnection: keep-alive\r\n\r\n".len());
        // Used once: the next header keeps Pingora's date.
        assert_eq!(k.patch(HEAD, true), HEAD);
    }

    #[test]
    fn a_header_written_in_pieces_is_patched_across_them() {
        let mut k = kept();
        let out = String::from_utf8_lossy(&write_all(&mut k, HEAD, 7)).into_owned();
        assert!(
            out.contains("\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"),
            "{out}"
        );
        assert_eq!(out.len(), HEAD.len());
        assert!(!k.pending());
    }

    #[test]
    fn nothing_changes_without_a_kept_date_or_a_date_line() {
        let mut k = Kept::default();
        assert_eq!(k.patch(HEAD, true), HEAD);
        let mut k = kept();
        let no_date =
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nDate: Wed, 02 Dec 2026 18:17:07 GMT";
        assert_eq!(k.patch(no_date, true), no_date, "a body is never patched");
        let mut k = kept();
        k.forget();
        assert_eq!(k.patch(HEAD, true), HEAD);
    }

    #[test]
    fn only_imf_fixdates_are_kept() {
        assert!(is_imf_fixdate(KEPT));
        assert!(!is_imf_fixdate(b"Sunday, 06-Nov-94 08:49:37 GM"));
        assert!(!is_imf_fixdate(b"Sun, 06 Nov 1994 08:49:37 UTC"));
        assert!(!is_imf_fixdate(b"Sun, 06 Nov 1994 08:49:37\r\nGM"));
    }
}
