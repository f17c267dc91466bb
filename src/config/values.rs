//! Scalar value syntax shared by every config key: durations (`50ms`, `1s`, `5m`), byte sizes
//! (`512KiB`, `256MiB`), `IP:port` addresses and CIDR blocks. Each parser names what it expected,
//! so that serde_yaml can prefix the key path and the operator sees key, value and fix together.

use serde::de::{Deserialize, Deserializer, Error, Visitor};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Parses `250ms`, `1s`, `1.5s`, `5m`, `1h`, `2d`. A bare number is refused: units are mandatory
/// because `timeout: 50` is ambiguous and a silent factor of 1000 is worse than an error.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} has no unit; write it like 50ms, 1s, 5m or 1h"))?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration; write it like 50ms, 1s, 5m or 1h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "{s:?} has unknown unit {unit:?}; use ms, s, m, h or d"
            ))
        }
    };
    if !secs.is_finite() || secs > 10.0 * 365.0 * 86400.0 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses byte sizes with binary units (`512KiB`, `16MiB`, `1GiB`) or plain bytes (`4096`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write it like 512KiB, 256MiB or 1GiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        u => {
            return Err(format!(
                "{s:?} has unknown unit {u:?}; use B, KiB, MiB or GiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("{s:?} is not an IP:port; write it like 127.0.0.1:8080 or [::1]:8080 (host names are not resolved)")
    })
}

/// An IP network in CIDR notation; a bare address means that one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let bad = || format!("{s:?} is not a CIDR block; write it like 10.0.0.0/8 or ::1/128");
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Runs a string parser inside serde's visitor, so serde_yaml reports the exact key path
/// (`upstreams.app.connect_timeout`) rather than the enclosing map. Numbers are handed to the
/// parser as text: `timeout: 50` gets "has no unit", `size: 4096` parses as bytes.
struct Parse<T>(fn(&str) -> Result<T, String>, &'static str);

impl<'de, T> Visitor<'de> for Parse<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.1)
    }
    fn visit_str<E: Error>(self, s: &str) -> Result<T, E> {
        (self.0)(s).map_err(E::custom)
    }
    fn visit_u64<E: Error>(self, n: u64) -> Result<T, E> {
        self.visit_str(&n.to_string())
    }
    fn visit_i64<E: Error>(self, n: i64) -> Result<T, E> {
        self.visit_str(&n.to_string())
    }
    fn visit_f64<E: Error>(self, n: f64) -> Result<T, E> {
        self.visit_str(&n.to_string())
    }
}

pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(Parse(parse_duration, "a duration like 50ms, 1s or 5m"))
}

pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(Parse(parse_size, "a size like 512KiB or 256MiB"))
}

pub fn size_usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = size(d)?;
    usize::try_from(n).map_err(|_| serde::de::Error::custom("too large for this machine"))
}

/// A list of header field names, lower-cased.
pub fn header_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<http::HeaderName>, D::Error> {
    let names = Vec::<String>::deserialize(d)?;
    names
        .iter()
        .map(|n| {
            http::HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes())
                .map_err(|_| serde::de::Error::custom(format!("{n:?} is not a header field name")))
        })
        .collect()
}

pub fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    d.deserialize_any(Parse(
        parse_socket_addr,
        "an IP:port such as 127.0.0.1:8080",
    ))
}

/// A list of addresses, each parsed by [`socket_addr`] so the error names the index.
pub fn socket_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    Vec::<Addr>::deserialize(d).map(|v| v.into_iter().map(|a| a.0).collect())
}

pub fn cidrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Cidr>, D::Error> {
    struct C(Cidr);
    impl<'de> Deserialize<'de> for C {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Parse(Cidr::parse, "a CIDR block like 10.0.0.0/8"))
                .map(C)
        }
    }
    Vec::<C>::deserialize(d).map(|v| v.into_iter().map(|c| c.0).collect())
}

struct Addr(SocketAddr);
impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        socket_addr(d).map(Addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("50").unwrap_err().contains("no unit"));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512KiB"), Ok(512 * 1024));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1MB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("99999999999GiB").is_err());
    }

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("127.0.0.1/32").unwrap();
        assert!(c.contains("127.0.0.1".parse().unwrap()));
        assert!(!c.contains("127.0.0.2".parse().unwrap()));
        assert!(c.contains("::ffff:127.0.0.1".parse().unwrap()));
        let n = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.200.1.1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("::1/128")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }
}
