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
/// Last-Modified, Age and Vary; the first byte picks the status and the clock.
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
    for name in [
        "Cache-Control",
        "Expires",
        "Date",
        "Last-Modified",
        "Age",
        "Vary",
    ] {
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
        Ok(c) => assert!(c.validate().is_ok()),
        Err(e) => assert!(!e.to_string().is_empty()),
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
            b"Sun, 06 Nov 1994 08:49:37 GMT",
            b"Tue, 14 Nov 2023 22:13:20 GMT",
            b"*",
            b"accept-encoding",
            b"\xff",
        ];
        run("cache_control", cache_control, inputs(3, 3000, dict));
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
