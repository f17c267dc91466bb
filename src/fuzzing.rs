//! Fuzz harnesses for the request-facing parsers Shellac owns: the cache key, the Range cap,
//! the Cache-Control rules and the config file. Each takes arbitrary bytes and panics only when
//! an invariant breaks. The cargo-fuzz targets in `fuzz/` call these, and so do the tests below,
//! which feed a few thousand deterministic pseudo-random inputs on every `cargo test` (CI has no
//! nightly toolchain for libFuzzer).

use crate::cache::{key, policy};
use crate::config::Config;
use crate::limits;
use pingora::cache::key::CacheHashKey;
use pingora::cache::CacheMeta;
use pingora::http::{RequestHeader, ResponseHeader};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Splits `data` at the first `sep`: (before, after); all of it before when there is none.
fn split(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// `path::normalise` on an arbitrary target: refused, or a normal form that is one (normalising
/// it again changes nothing), starts with `/`, has no empty or dot segment, and keeps the query.
pub fn path(data: &[u8]) {
    let mut target = b"/".to_vec();
    target.extend_from_slice(data);
    let Ok(normal) = crate::path::normalise(&target) else {
        return;
    };
    let normal = normal.unwrap_or_else(|| target.clone());
    let split = |t: &[u8]| {
        let q = t.iter().position(|b| *b == b'?').unwrap_or(t.len());
        (t[..q].to_vec(), t[q..].to_vec())
    };
    let (path, query) = split(&normal);
    assert_eq!(query, split(&target).1, "the query is kept byte for byte");
    assert!(path.starts_with(b"/"));
    let segs: Vec<&[u8]> = path[1..].split(|b| *b == b'/').collect();
    for (i, seg) in segs.iter().enumerate() {
        assert!(*seg != b"." && *seg != b"..", "a dot segment survived");
        assert!(
            !seg.is_empty() || i == segs.len() - 1,
            "an empty segment survived"
        );
    }
    assert_eq!(
        crate::path::normalise(&normal),
        Ok(None),
        "normal form is a fixed point"
    );
}

/// `key::build` and `key::path_and_query` on an authority and a request target.
pub fn cache_key(data: &[u8]) {
    let (authority, target) = split(data, b' ');
    let authority = String::from_utf8_lossy(authority);
    let k = key::build(&authority, target).primary();
    // Host case never matters for a Host that passes `limits` (only those reach the key);
    // any change to the path does.
    if crate::authority::valid(authority.as_bytes()) {
        assert_eq!(
            key::build(&authority.to_ascii_uppercase(), target).primary(),
            k
        );
        // What follows an IPv6 literal is its port, never junk that the key drops.
        if authority.starts_with('[') {
            let bare = &authority[..authority.find(']').map_or(0, |i| i + 1)];
            let port = authority[bare.len()..].trim_start_matches(':');
            assert!(port.is_empty() || port == "80" || k != key::build(bare, target).primary());
        }
    }
    let mut longer = target.to_vec();
    longer.push(b'x');
    assert_ne!(key::build(&authority, &longer).primary(), k);
    if let Ok(req) = RequestHeader::build("GET", target, None) {
        let pq = key::path_and_query(&req);
        let raw = req.raw_path();
        // Always a suffix of what was received: never decoded or rebuilt.
        assert!(raw.ends_with(pq) || pq == b"/", "{raw:?} gave {pq:?}");
        assert!(matches!(pq.first(), Some(b'/' | b'*')), "{pq:?}");
    }
}

/// `limits::range_acceptable` with a cap from the first byte.
pub fn range(data: &[u8]) {
    let Some((&cap, spec)) = data.split_first() else {
        return;
    };
    let cap = cap as usize % 20;
    // A larger cap never refuses what a smaller one accepts.
    if limits::range_acceptable(spec, cap) {
        assert!(limits::range_acceptable(spec, cap + 1));
    }
    let mut with_prefix = b"bytes=".to_vec();
    with_prefix.extend_from_slice(spec);
    let _ = limits::range_acceptable(&with_prefix, cap);
}

/// `policy::storable` and `policy::on_hit` with header values taken from `data`: lines are the
/// request's Cache-Control and Pragma, then the response's Cache-Control, Expires, Date,
/// Last-Modified, Age and Vary, rotated so any of them can be the first response line (a
/// mutator rarely builds seven newlines, and the Age paths were unreachable without it); the
/// first byte picks the status, the clock and the rotation.
pub fn cache_control(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let mut fields = rest.split(|b| *b == b'\n');
    let mut next = || fields.next().unwrap_or_default().to_vec();
    let mut req = match RequestHeader::build("GET", b"/x", None) {
        Ok(r) => r,
        Err(_) => return,
    };
    for name in ["Cache-Control", "Pragma"] {
        // Values with bytes HTTP forbids are refused by the parser before they reach us.
        let _ = req.append_header(name, next());
    }
    let status = [200, 203, 204, 206, 301, 304, 404, 500, 503][pick as usize % 9];
    let mut resp = match ResponseHeader::build(status, None) {
        Ok(r) => r,
        Err(_) => return,
    };
    let mut names = [
        "Cache-Control",
        "Expires",
        "Date",
        "Last-Modified",
        "Age",
        "Vary",
    ];
    names.rotate_left((pick as usize / 9) % 6);
    for name in names {
        let _ = resp.append_header(name, next());
    }
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let timing = policy::Timing {
        request_sent: now,
        response_received: now + Duration::from_secs((pick % 4) as u64),
    };
    let heuristic = policy::Heuristic {
        fraction: 0.1,
        max: Duration::from_secs(86400),
    };
    let stale = policy::StaleDefaults {
        while_revalidate: (pick % 3) as u32,
        if_error: (pick % 5) as u32,
        on_disconnect: (pick % 7) as u32,
    };
    let later = now + Duration::from_secs((pick as u64) * 7);
    let meta = match policy::storable(&req, &resp, timing, heuristic, stale, &[]) {
        Ok(meta) => meta,
        Err(_) => CacheMeta::new(now, now - Duration::from_secs(30), 0, 0, resp),
    };
    let _ = policy::on_hit(&req, &meta, later, true, &[]);
    let _ = policy::on_hit(&req, &meta, SystemTime::UNIX_EPOCH, false, &[]);
    let _ = policy::ttl_secs(&meta, later);
}

/// `Config::parse` on arbitrary text: an error or a config that validates, never a panic.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text) {
        // What start-up relies on, checked here independently of `validate` (which `parse`
        // already ran, so asking it again would prove nothing).
        Ok(c) => {
            assert!(!c.listen.is_empty(), "a config without a listener");
            assert!(
                !c.listen.iter().any(|l| l.addr == c.admin.listen),
                "admin on a public listener"
            );
            for r in &c.routes {
                assert!(
                    c.upstreams.contains_key(&r.upstream),
                    "route to a missing group"
                );
            }
            for (name, u) in &c.upstreams {
                assert!(
                    u.backends.iter().any(|b| b.weight > 0),
                    "{name}: no usable backend"
                );
            }
            if let Some(m) = &c.cache.memcached {
                assert!(m.chunk_size > 0 && m.inline_max <= m.chunk_size);
                assert!(m.max_object.div_ceil(m.chunk_size) <= crate::config::MAX_CHUNKS);
                assert!(!m.servers.is_empty());
            }
            // The same text parses to the same verdict: no hidden state.
            assert!(Config::parse(&text).is_ok());
        }
        // Every refusal says where: a key path, or serde_yaml's line and column.
        Err(e) => {
            let msg = e.to_string();
            assert!(
                !e.path.is_empty()
                    || msg.contains("line ")
                    || msg.contains("position ")
                    || msg.contains("the top level"),
                "an error that names no place: {msg}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic, so a failure reproduces from its case number.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Inputs built from `dict` tokens and random bytes, the mix that finds parser edges.
    fn inputs<'a>(seed: u64, n: usize, dict: &'a [&[u8]]) -> impl Iterator<Item = Vec<u8>> + 'a {
        let mut rng = Rng(seed);
        (0..n).map(move |_| {
            let mut v = Vec::new();
            for _ in 0..rng.below(24) {
                if rng.below(4) == 0 {
                    v.push(rng.next() as u8);
                } else {
                    v.extend_from_slice(dict[rng.below(dict.len())]);
                }
            }
            v
        })
    }

    fn run(name: &str, f: fn(&[u8]), cases: impl Iterator<Item = Vec<u8>>) {
        for (i, case) in cases.enumerate() {
            if std::panic::catch_unwind(|| f(&case)).is_err() {
                panic!(
                    "{name}: case {i} panicked on {:?}",
                    String::from_utf8_lossy(&case)
                );
            }
        }
    }

    #[test]
    fn path_normal_form_is_a_fixed_point() {
        let dict: &[&[u8]] = &[
            b"/", b"//", b".", b"..", b"./", b"../", b"%2e", b"%2E", b"%2f", b"%00", b"%61",
            b"%7e", b"%3a", b"%", b"%4", b"?", b"a", b"b", b"~", b"-", b"\xff",
        ];
        run("path", path, inputs(4, 6000, dict));
    }

    #[test]
    fn cache_key_survives_pseudo_random_input() {
        let dict: &[&[u8]] = &[
            b"a.test",
            b"A.TEST",
            b":",
            b":80",
            b":8080",
            b".",
            b"[",
            b"]",
            b"::1",
            b" ",
            b"/",
            b"?",
            b"#",
            b"%2f",
            b"%00",
            b"http://",
            b"https://",
            b"*",
            b"@",
            b"\xff",
            b"\xc3\xa9",
        ];
        run("cache_key", cache_key, inputs(1, 4000, dict));
    }

    #[test]
    fn range_survives_pseudo_random_input() {
        let dict: &[&[u8]] = &[
            b"bytes=",
            b"0",
            b"1",
            b"9",
            b"-",
            b",",
            b" ",
            b"18446744073709551615",
            b"99999999999999999999",
            b"\t",
            b"=",
            b"\xff",
        ];
        run("range", range, inputs(2, 4000, dict));
    }

    #[test]
    fn cache_control_survives_pseudo_random_input() {
        let dict: &[&[u8]] = &[
            b"\n",
            b"max-age",
            b"s-maxage",
            b"max-stale",
            b"min-fresh",
            b"no-cache",
            b"no-store",
            b"private",
            b"public",
            b"must-revalidate",
            b"proxy-revalidate",
            b"only-if-cached",
            b"stale-while-revalidate",
            b"stale-if-error",
            b"immutable",
            b"=",
            b",",
            b"\"",
            b" ",
            b"0",
            b"60",
            b"-1",
            b"18446744073709551616",
            // Age and delta-seconds at the edges of 2^31, 2^32, 2^63 and 2^64.
            b"2147483647",
            b"2147483648",
            b"4294967296",
            b"9223372036854775807",
            b"9223372036854775808",
            b"18446744073709551615",
            b"\n\n\n\n\n\n",
            b"Sun, 06 Nov 1994 08:49:37 GMT",
            b"Fri, 31 Dec 9999 23:59:59 GMT",
            b"Thu, 01 Jan 1970 00:00:00 GMT",
            b"Tue, 14 Nov 2023 22:13:20 GMT",
            b"*",
            b"accept-encoding",
            b"\xff",
        ];
        run("cache_control", cache_control, inputs(3, 3000, dict));
    }

    /// The values that panicked before age arithmetic saturated, on the Age line (rotation 4:
    /// pick 36..45) and through every status and clock; the random run above may miss them.
    #[test]
    fn cache_control_survives_huge_ages() {
        let ages = [
            "9223372036854775807",
            "18446744073709551615",
            "2147483648",
            "99999999999999999999",
        ];
        let cases = ages.iter().flat_map(|age| {
            (36u8..45).flat_map(move |pick| {
                [
                    "max-age=60",
                    "max-age=2147483648, stale-while-revalidate=9223372036854775807",
                    "",
                ]
                .into_iter()
                .map(move |cc| {
                    let mut v = vec![pick];
                    v.extend_from_slice(
                        format!("max-stale=9223372036854775807\n\n{age}\n{cc}").as_bytes(),
                    );
                    v
                })
            })
        });
        run("cache_control", cache_control, cases);
    }

    #[test]
    fn config_survives_mutated_files() {
        let seed = include_str!("../conf/shellac.yaml").as_bytes();
        let dict: &[&[u8]] = &[
            b"\n",
            b"  ",
            b": ",
            b"- ",
            b"{",
            b"}",
            b"[",
            b"]",
            b"\"",
            b"0",
            b"1s",
            b"0s",
            b"1GiB",
            b"limits:",
            b"header_timeout: ",
            b"max_connections_per_ip: ",
            b"127.0.0.1:1",
            b"*",
            b"&a",
            b"*a",
            b"!!binary",
            b"~",
            b"\t",
            b"\xff",
        ];
        let mut rng = Rng(4);
        let mutated = (0..2500).map(move |_| {
            let mut v = seed.to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(v.len() + 1);
                match rng.below(3) {
                    0 => {
                        let end = (at + rng.below(16)).min(v.len());
                        v.drain(at..end);
                    }
                    1 => {
                        let tok = dict[rng.below(dict.len())];
                        v.splice(at..at, tok.iter().copied());
                    }
                    _ => {
                        if at < v.len() {
                            v[at] = rng.next() as u8;
                        }
                    }
                }
            }
            v
        });
        run("config", config, mutated);
        // The unmutated seed must parse, or the mutations test nothing deep.
        config(seed);
        assert!(Config::parse(include_str!("../conf/shellac.yaml")).is_ok());
    }
}
