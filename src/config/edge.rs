//! The edge facing clients: public listeners (plain HTTP or PROXY protocol first), which peers
//! are trusted proxies, and the operator's purge token. Together they decide who a client is
//! (the `client` module) and who may purge.

use super::{err, values, ConfigError};
use serde::Deserialize;
use std::fmt;
use std::net::SocketAddr;

/// One public listener: `"127.0.0.1:8080"` or `{addr: "127.0.0.1:8080", proxy_protocol: true}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listener {
    pub addr: SocketAddr,
    /// Every connection must start with a PROXY protocol v1 or v2 header, whose source address
    /// is the client's. There is no optional mode: a listener that accepted both would let any
    /// client that can reach it name its own address.
    pub proxy_protocol: bool,
}

impl<'de> Deserialize<'de> for Listener {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Long {
            #[serde(deserialize_with = "values::socket_addr")]
            addr: SocketAddr,
            #[serde(default, deserialize_with = "strict_bool")]
            proxy_protocol: bool,
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Listener;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an IP:port string or a map {addr, proxy_protocol}")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Listener, E> {
                values::parse_socket_addr(s)
                    .map(|addr| Listener {
                        addr,
                        proxy_protocol: false,
                    })
                    .map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<Listener, A::Error> {
                let l = Long::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(Listener {
                    addr: l.addr,
                    proxy_protocol: l.proxy_protocol,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `true` or `false`, with a message that says why `optional` does not exist.
fn strict_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("true or false")
        }
        fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<bool, E> {
            Ok(b)
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<bool, E> {
            Err(E::custom(format!(
                "{s:?} is not offered: write true (every connection must send a PROXY header) or false; a listener accepting both would let any client name its own address, so put plain and PROXY clients on separate listeners"
            )))
        }
    }
    d.deserialize_any(V)
}

/// The secret in `admin.purge_token_file`. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PurgeToken(Vec<u8>);

impl PurgeToken {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Reads the token file: the first line, surrounding whitespace removed. Checked at load so
    /// that `shellac -t` fails on an unreadable or empty file instead of purge silently
    /// accepting no token at all.
    pub fn load(path: &std::path::Path) -> Result<PurgeToken, ConfigError> {
        let key = "admin.purge_token_file";
        let text = std::fs::read(path).or_else(|e| {
            err(
                key,
                format!(
                    "cannot read {}: {e}; create it (e.g. `head -c 32 /dev/urandom | base64 > {0}`) readable by the shellac user",
                    path.display()
                ),
            )
        })?;
        let token = text
            .split(|b| *b == b'\n')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        if token.is_empty() {
            return err(
                key,
                format!(
                    "{} is empty; put a secret of at least 16 characters on its first line",
                    path.display()
                ),
            );
        }
        if token.len() < 16 || !token.iter().all(|b| b.is_ascii_graphic()) {
            return err(key, format!("the token in {} must be at least 16 visible ASCII characters (no spaces), e.g. base64 of 32 random bytes", path.display()));
        }
        Ok(PurgeToken(token.to_vec()))
    }
}

impl fmt::Debug for PurgeToken {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("PurgeToken(<redacted>)")
    }
}

pub(super) fn validate_listeners(
    listen: &[Listener],
    admin: SocketAddr,
) -> Result<(), ConfigError> {
    if listen.is_empty() {
        return err(
            "listen",
            "at least one listener is needed, e.g. [\"127.0.0.1:8080\"]",
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, l) in listen.iter().enumerate() {
        if !seen.insert(l.addr) {
            return err(
                format!("listen[{i}]"),
                format!("{} is listed twice; remove the duplicate", l.addr),
            );
        }
    }
    if seen.contains(&admin) {
        return err(
            "admin.listen",
            format!(
                "{admin} is also a public listener; metrics must not be public, pick another port"
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listeners_short_and_long() {
        let l: Vec<Listener> = serde_yaml::from_str(
            "[\"127.0.0.1:1\", {addr: \"127.0.0.1:2\", proxy_protocol: true}, {addr: \"127.0.0.1:3\"}]",
        )
        .unwrap();
        assert!(!l[0].proxy_protocol && l[1].proxy_protocol && !l[2].proxy_protocol);
        let e = serde_yaml::from_str::<Vec<Listener>>(
            "[{addr: \"127.0.0.1:2\", proxy_protocol: optional}]",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("proxy_protocol") && e.contains("not offered"),
            "{e}"
        );
    }

    #[test]
    fn token_file_rules() {
        let dir = std::env::temp_dir().join(format!("shellac-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t");
        std::fs::write(&p, "  s3cret-s3cret-s3cret\nignored\n").unwrap();
        assert_eq!(
            PurgeToken::load(&p).unwrap().as_bytes(),
            b"s3cret-s3cret-s3cret"
        );
        std::fs::write(&p, "\n").unwrap();
        assert!(PurgeToken::load(&p)
            .unwrap_err()
            .to_string()
            .contains("empty"));
        let e = PurgeToken::load(&dir.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("admin.purge_token_file") && e.contains("cannot read"),
            "{e}"
        );
        assert!(!format!("{:?}", PurgeToken(b"x".to_vec())).contains('x'));
    }
}
