//! `X-Request-Id`: kept from the client when it is a sane token, otherwise generated, then sent
//! to the origin, echoed on the response and written to the access log, so one id follows a
//! request through every log.
//!
//! Generated ids are a per-process random prefix plus a counter: unique across processes and
//! reloads without a syscall or a lock per request.

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

pub const HEADER: &str = "x-request-id";

/// Longest client-supplied id kept; longer ones are replaced, so a client cannot bloat every log
/// line and origin request.
const MAX_LEN: usize = 128;

static PREFIX: LazyLock<u64> = LazyLock::new(|| {
    // RandomState is seeded from the OS once per thread; mixing in pid and time keeps prefixes
    // apart even if two processes drew the same seed.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() & 0xffff_ffff_ffff
});
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// The id for this request: the client's if acceptable, else a fresh one.
pub fn for_request(req: &RequestHeader) -> String {
    match req.headers.get(HEADER) {
        Some(v) if acceptable(v.as_bytes()) => {
            // Checked above to be visible ASCII, hence valid UTF-8.
            String::from_utf8_lossy(v.as_bytes()).into_owned()
        }
        _ => generate(),
    }
}

fn acceptable(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= MAX_LEN && v.iter().all(|b| (0x21..=0x7e).contains(b))
}

pub fn generate() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{:012x}-{n:x}", *PREFIX)
}

/// Sets the id on the request to the origin (replacing any the client sent).
pub fn forward(req: &mut RequestHeader, id: &str) -> Result<()> {
    req.insert_header(HEADER, id)
}

pub fn echo(resp: &mut ResponseHeader, id: &str) -> Result<()> {
    resp.insert_header(HEADER, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        if let Some(id) = id {
            r.insert_header(HEADER, id).unwrap();
        }
        r
    }

    #[test]
    fn keeps_sane_client_ids_and_replaces_others() {
        assert_eq!(for_request(&req(Some("abc-123"))), "abc-123");
        let long = "x".repeat(MAX_LEN + 1);
        for bad in [None, Some(""), Some("a b"), Some(long.as_str())] {
            let id = for_request(&req(bad));
            assert_ne!(Some(id.as_str()), bad);
            assert!(acceptable(id.as_bytes()), "{id}");
        }
    }

    #[test]
    fn generated_ids_are_unique_and_share_the_process_prefix() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert_eq!(a.split('-').next(), b.split('-').next());
    }
}
