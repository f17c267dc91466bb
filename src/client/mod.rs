//! Who the client is. One answer, computed once per request in `request_filter` and used by
//! the PURGE ACL, the access log and the mirror; the per-IP connection cap uses the
//! connection-level half of it ([`Clients::cap_key`]), and `X-Forwarded-For` is appended with
//! the connection's source ([`hop`]).
//!
//! - The connection's source is the TCP peer, or on a `proxy_protocol: true` listener the
//!   source in the PROXY header ([`proxy_protocol`]), which `conn` installs as the stream's
//!   peer address before Pingora reads a byte, so `Session::client_addr` already returns it.
//! - If that source is in `trusted_proxies`, the client is the rightmost `X-Forwarded-For`
//!   entry that is not trusted (each trusted hop appended the address it saw). Otherwise the
//!   client's own `X-Forwarded-For` says nothing about who it is: anyone can write one.

pub mod proxy_protocol;

use crate::config::Cidr;
use pingora::proxy::Session;
use std::net::{IpAddr, SocketAddr};

pub struct Clients {
    trusted: Vec<Cidr>,
}

impl Clients {
    pub fn new(trusted_proxies: Vec<Cidr>) -> Clients {
        Clients {
            trusted: trusted_proxies,
        }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|c| c.contains(ip))
    }

    /// The real client of this request.
    pub fn resolve(&self, session: &Session) -> Option<IpAddr> {
        let source = hop(session)?;
        if !self.is_trusted(source) {
            return Some(source);
        }
        let chain = session.req_header().headers.get_all("x-forwarded-for");
        Some(self.walk_chain(source, chain.iter().map(|v| v.as_bytes())))
    }

    /// Walks `X-Forwarded-For` (all fields, in order) from the right, starting at a trusted
    /// `source`: each trusted address vouches for the one to its left. Stops at the first
    /// untrusted entry (the client); an entry that is not an address ends the walk at the last
    /// address that was vouched for, and so does a chain made only of trusted proxies.
    fn walk_chain<'a>(&self, source: IpAddr, fields: impl Iterator<Item = &'a [u8]>) -> IpAddr {
        let entries: Vec<&[u8]> = fields
            .flat_map(|v| v.split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .collect();
        let mut client = source;
        for entry in entries.iter().rev() {
            let Some(ip) = parse_entry(entry) else {
                break;
            };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        client
    }

    /// The address a connection counts against in `limits.max_connections_per_ip`: its source
    /// (PROXY or TCP), or `None` (not capped) for a trusted proxy, which carries many clients
    /// on its connections and names them only per request.
    pub fn cap_key(&self, source: Option<IpAddr>) -> Option<IpAddr> {
        source
            .map(|ip| ip.to_canonical())
            .filter(|ip| !self.is_trusted(*ip))
    }
}

/// The connection's source: the TCP peer, or the PROXY header's source.
pub fn hop(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical())
}

/// `203.0.113.7`, `2001:db8::1`, `[2001:db8::1]:443` or `203.0.113.7:443` (some proxies add the
/// port).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(entry).ok()?;
    s.parse::<IpAddr>()
        .or_else(|_| s.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients(trusted: &[&str]) -> Clients {
        Clients::new(trusted.iter().map(|c| Cidr::parse(c).unwrap()).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rightmost_untrusted_entry_wins() {
        let c = clients(&["10.0.0.0/8", "127.0.0.1"]);
        let walk = |xff: &[&str]| c.walk_chain(ip("127.0.0.1"), xff.iter().map(|s| s.as_bytes()));
        assert_eq!(walk(&["203.0.113.9"]), ip("203.0.113.9"));
        // A client-written entry to the left of the real one is not believed.
        assert_eq!(walk(&["6.6.6.6, 203.0.113.9, 10.1.1.1"]), ip("203.0.113.9"));
        assert_eq!(walk(&["6.6.6.6", "203.0.113.9:5000"]), ip("203.0.113.9"));
        assert_eq!(walk(&["[2001:db8::1]:443"]), ip("2001:db8::1"));
        assert_eq!(walk(&["6.6.6.6, garbage, 10.1.1.1"]), ip("10.1.1.1"));
        assert_eq!(walk(&["10.2.2.2, 10.1.1.1"]), ip("10.2.2.2"));
        assert_eq!(walk(&[]), ip("127.0.0.1"));
        assert_eq!(walk(&["::ffff:203.0.113.9"]), ip("203.0.113.9"));
    }

    #[test]
    fn trusted_proxies_are_not_capped() {
        let c = clients(&["10.0.0.0/8"]);
        assert_eq!(c.cap_key(Some(ip("10.0.0.1"))), None);
        assert_eq!(
            c.cap_key(Some(ip("::ffff:192.0.2.1"))),
            Some(ip("192.0.2.1"))
        );
    }
}
