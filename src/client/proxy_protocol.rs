//! The PROXY protocol header (HAProxy's proxy-protocol.txt, v1 text and v2 binary) that a load
//! balancer sends before anything else on a connection, naming the client it accepted.
//!
//! [`parse`] is pure and sees the bytes read so far; [`read`] reads a connection until the
//! header is complete and hands back the bytes after it (the start of the first HTTP request,
//! when the sender did not wait), which the caller must replay before further reads.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// v1's longest line (spec §2.1), CRLF included.
const V1_MAX: usize = 107;
/// The largest v2 header accepted: addresses plus a generous allowance of TLVs. HAProxy's
/// `send-proxy-v2` sends well under this; a larger one is refused rather than buffered.
const V2_MAX: usize = 16 + 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// `len` bytes are the header; `source` is the client, or `None` for a `LOCAL` (v2) or
    /// `UNKNOWN` (v1) header, where the spec says to use the connection's own addresses: the
    /// load balancer's health checks.
    Done {
        len: usize,
        source: Option<SocketAddr>,
    },
    Invalid(&'static str),
}

pub fn parse(buf: &[u8]) -> Parsed {
    if buf.first() == Some(&b'P') {
        return v1(buf);
    }
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Parsed::Invalid("no PROXY header");
    }
    v2(buf)
}

fn v1(buf: &[u8]) -> Parsed {
    let n = buf.len().min(6);
    if buf[..n] != b"PROXY "[..n] {
        return Parsed::Invalid("no PROXY header");
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Parsed::Invalid("v1 line too long")
        } else {
            Parsed::Incomplete
        };
    };
    if end + 2 > V1_MAX {
        return Parsed::Invalid("v1 line too long");
    }
    let Ok(line) = std::str::from_utf8(&buf[6..end]) else {
        return Parsed::Invalid("v1 line not ASCII");
    };
    let len = end + 2;
    let mut f = line.split(' ');
    let family = f.next().unwrap_or("");
    if family == "UNKNOWN" {
        return Parsed::Done { len, source: None };
    }
    let fields: Vec<&str> = f.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Parsed::Invalid("v1 needs four fields after the family");
    };
    let (Ok(src), Ok(dst)) = (src.parse::<IpAddr>(), dst.parse::<IpAddr>()) else {
        return Parsed::Invalid("v1 address is not an IP");
    };
    let family_ok = match family {
        "TCP4" => src.is_ipv4() && dst.is_ipv4(),
        "TCP6" => src.is_ipv6() && dst.is_ipv6(),
        _ => false,
    };
    if !family_ok {
        return Parsed::Invalid("v1 family is not TCP4, TCP6 or UNKNOWN, or does not match");
    }
    // The spec allows no leading zeros and no sign; `u16::from_str` would take "+80" and "080".
    let port = |p: &str| {
        (!p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u16>().ok())
            .flatten()
            .filter(|_| p == "0" || !p.starts_with('0'))
    };
    let (Some(sport), Some(_)) = (port(sport), port(dport)) else {
        return Parsed::Invalid("v1 port is not 0..65535");
    };
    Parsed::Done {
        len,
        source: Some(SocketAddr::new(src, sport)),
    }
}

fn v2(buf: &[u8]) -> Parsed {
    if buf.len() < 16 {
        return Parsed::Incomplete;
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Parsed::Invalid("v2 version is not 2");
    }
    let body = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let len = 16 + body;
    if len > V2_MAX {
        return Parsed::Invalid("v2 header too long");
    }
    if buf.len() < len {
        return Parsed::Incomplete;
    }
    let addrs = &buf[16..len];
    match ver_cmd & 0x0f {
        0 => return Parsed::Done { len, source: None }, // LOCAL
        1 => {}
        _ => return Parsed::Invalid("v2 command is neither LOCAL nor PROXY"),
    }
    let source = match family {
        // TCP over IPv4: src, dst, sport, dport.
        0x11 if addrs.len() >= 12 => {
            let ip = Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([addrs[8], addrs[9]]),
            ))
        }
        0x21 if addrs.len() >= 36 => {
            let octets: [u8; 16] = addrs[..16].try_into().expect("16 bytes");
            Some(SocketAddr::new(
                Ipv6Addr::from(octets).into(),
                u16::from_be_bytes([addrs[32], addrs[33]]),
            ))
        }
        0x11 | 0x21 => return Parsed::Invalid("v2 address block too short"),
        // UNSPEC, UDP and unix sockets name no TCP client: the spec says to use the real
        // connection's addresses.
        0x00 | 0x12 | 0x22 | 0x31 | 0x32 => None,
        _ => return Parsed::Invalid("v2 unknown address family"),
    };
    Parsed::Done { len, source }
}

#[derive(Debug)]
pub enum ReadError {
    Invalid(&'static str),
    TimedOut,
    Io(io::Error),
}

impl ReadError {
    /// The `reason` label of `shellac_connections_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            ReadError::Invalid(_) => "proxy_protocol_invalid",
            ReadError::TimedOut => "proxy_protocol_timeout",
            ReadError::Io(_) => "proxy_protocol_closed",
        }
    }
}

/// Reads until the header is complete, within `timeout` for the whole header (a load balancer
/// sends it at once; a trickle is a slowloris). Returns the source and the bytes read past it.
pub async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(Option<SocketAddr>, Vec<u8>), ReadError> {
    let work = async {
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        loop {
            let n = stream.read(&mut chunk).await.map_err(ReadError::Io)?;
            if n == 0 {
                return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            buf.extend_from_slice(&chunk[..n]);
            match parse(&buf) {
                Parsed::Incomplete => continue,
                Parsed::Invalid(why) => return Err(ReadError::Invalid(why)),
                Parsed::Done { len, source } => return Ok((source, buf.split_off(len))),
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(ReadError::TimedOut))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(buf: &[u8]) -> (usize, Option<SocketAddr>) {
        match parse(buf) {
            Parsed::Done { len, source } => (len, source),
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(buf)),
        }
    }

    #[test]
    fn v1_lines() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 80\r\nGET /";
        assert_eq!(done(h), (42, Some("203.0.113.7:51000".parse().unwrap())));
        let h = b"PROXY TCP6 2001:db8::1 ::1 1 443\r\n";
        assert_eq!(done(h).1, Some("[2001:db8::1]:1".parse().unwrap()));
        assert_eq!(done(b"PROXY UNKNOWN\r\n"), (15, None));
        assert_eq!(done(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n").1, None);
        assert_eq!(parse(b"PROXY TCP4 1.2"), Parsed::Incomplete);
        assert_eq!(parse(b"PRO"), Parsed::Incomplete);
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51000\r\n",
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 +1 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n",
            b"PROXY UDP4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXY  TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Parsed::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(parse(&[b'P'; 1][..]), Parsed::Incomplete));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(200, b'1');
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
    }

    fn v2_header(cmd: u8, fam: u8, addrs: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
        h.extend_from_slice(addrs);
        h
    }

    #[test]
    fn v2_headers() {
        let mut a = vec![198, 51, 100, 9, 10, 0, 0, 1];
        a.extend_from_slice(&4242u16.to_be_bytes());
        a.extend_from_slice(&80u16.to_be_bytes());
        a.extend_from_slice(&[0x04, 0, 1, 0]); // a TLV after the addresses is skipped
        let mut h = v2_header(1, 0x11, &a);
        let len = h.len();
        h.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(done(&h), (len, Some("198.51.100.9:4242".parse().unwrap())));
        assert_eq!(parse(&h[..len - 1]), Parsed::Incomplete);
        assert_eq!(parse(&h[..5]), Parsed::Incomplete);

        let mut a6 = vec![0u8; 36];
        a6[0] = 0x20;
        a6[1] = 0x01;
        a6[15] = 5;
        a6[32..34].copy_from_slice(&7u16.to_be_bytes());
        let h = v2_header(1, 0x21, &a6);
        assert_eq!(done(&h).1, Some("[2001::5]:7".parse().unwrap()));

        assert_eq!(done(&v2_header(0, 0x00, &[])).1, None, "LOCAL");
        assert!(matches!(
            parse(&v2_header(1, 0x11, &[1, 2])),
            Parsed::Invalid(_)
        ));
        assert!(matches!(parse(&v2_header(2, 0x11, &a)), Parsed::Invalid(_)));
        let mut bad = v2_header(1, 0x11, &a);
        bad[12] = 0x11;
        assert!(
            matches!(parse(&bad), Parsed::Invalid(_)),
            "version 1 in a v2 header"
        );
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&huge), Parsed::Invalid(_)));
        assert!(matches!(parse(b"\r\n\r\nX"), Parsed::Invalid(_)));
    }
}
