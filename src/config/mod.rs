//! The one YAML file Shellac runs from.
//!
//! Pipeline: YAML text → [`Config`] (serde, every struct `deny_unknown_fields`, scalars parsed
//! straight into `SocketAddr`, `Duration`, byte counts and enums) → [`Config::validate`] (rules
//! that span keys). Every error names its key path and how to fix it. Pingora's own `ServerConf`
//! sits under `pingora:` and keeps Pingora's rules: it ignores unknown keys inside that section.

mod cache;
mod edge;
mod mirror;
pub mod rules;
pub(crate) mod values;

pub use cache::{
    Cache, ClientCacheControl, MacKey, Memcached, Memory, RangeMisses, Tags, MAX_CHUNKS,
};
pub use edge::{Listener, PurgeToken};
pub use mirror::{Compare, MirrorLimits, MirrorLog, RouteMirror};
pub use values::{parse_duration, parse_size, Cidr};

use pingora::server::configuration::ServerConf;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Pingora's `ServerConf` (threads, pid_file, upgrade_sock, grace periods…), passed through.
    #[serde(default = "default_pingora", deserialize_with = "pingora_conf")]
    pub pingora: ServerConf,
    /// Public HTTP listeners, plain or PROXY protocol.
    pub listen: Vec<Listener>,
    /// Load balancers and TLS terminators whose `X-Forwarded-For` is believed (see
    /// the `client` module); empty: nobody's.
    #[serde(default, deserialize_with = "values::cidrs")]
    pub trusted_proxies: Vec<Cidr>,
    pub admin: Admin,
    pub upstreams: BTreeMap<String, Upstream>,
    /// Evaluated in order; the first match wins.
    pub routes: Vec<Route>,
    #[serde(default)]
    pub cache: Cache,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub access_log: AccessLog,
    /// Bounds shared by every route's `mirror`.
    #[serde(default)]
    pub mirror_limits: MirrorLimits,
    /// Evaluated in order on every request; see docs/rules.md.
    #[serde(default)]
    pub rules: Vec<rules::RuleConf>,
}

/// Bounds on what one client or one origin can make Shellac read or hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Longest request target (path and query); longer gets 414.
    #[serde(default = "kib::<8>", deserialize_with = "values::size")]
    pub max_request_target: u64,
    /// Request header fields, names and values together; more gets 431.
    #[serde(default = "kib::<32>", deserialize_with = "values::size")]
    pub max_header_bytes: u64,
    /// Number of request header fields; more gets 431.
    #[serde(default = "hundred")]
    pub max_headers: usize,
    /// Request body; a larger Content-Length gets 413 before any of the body is read.
    #[serde(default = "mib::<1024>", deserialize_with = "values::size")]
    pub max_body: u64,
    /// An origin response header larger than this is a 502 and is never stored.
    #[serde(default = "kib::<64>", deserialize_with = "values::size")]
    pub max_response_header_bytes: u64,
    /// Multi-range requests with more ranges than this, or with overlapping ranges, get the
    /// whole representation instead (RFC 9110 §14.2 allows ignoring Range).
    #[serde(default = "sixteen")]
    pub max_ranges: usize,
    /// A client must send a whole request header within this time of its first byte (and a new
    /// connection its first request), or the connection is closed.
    #[serde(default = "secs::<10>", deserialize_with = "values::duration")]
    pub header_timeout: Duration,
    /// How long an idle keep-alive client connection is kept.
    #[serde(default = "secs::<60>", deserialize_with = "values::duration")]
    pub keepalive_timeout: Duration,
    /// Open connections one client IP may hold; further ones are closed at once. 0 (the
    /// default): no cap, because behind a load balancer every connection has one address.
    #[serde(default)]
    pub max_connections_per_ip: usize,
}

impl Default for Limits {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("every limit has a default")
    }
}

fn kib<const N: u64>() -> u64 {
    N << 10
}
fn hundred() -> usize {
    100
}
fn sixteen() -> usize {
    16
}

fn default_pingora() -> ServerConf {
    with_shellac_defaults(ServerConf::default(), false, false)
}

/// Pingora's `ServerConf`, with Shellac's defaults where the file leaves a key out: one worker
/// thread per CPU (Pingora's own default is 1) and an upstream pool of 1024 idle connections
/// (Pingora's 128 makes a busy node reconnect to its origins under 1000 clients).
fn pingora_conf<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ServerConf, D::Error> {
    let v = serde_yaml::Value::deserialize(d)?;
    let has = |k: &str| v.get(k).is_some();
    let (threads, pool) = (has("threads"), has("upstream_keepalive_pool_size"));
    let conf: ServerConf = serde_yaml::from_value(v).map_err(serde::de::Error::custom)?;
    Ok(with_shellac_defaults(conf, threads, pool))
}

fn with_shellac_defaults(mut c: ServerConf, threads_set: bool, pool_set: bool) -> ServerConf {
    if !threads_set {
        c.threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    }
    if !pool_set {
        c.upstream_keepalive_pool_size = 1024;
    }
    c
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// `/metrics` and `/healthz` are served here and only here.
    #[serde(deserialize_with = "values::socket_addr")]
    pub listen: SocketAddr,
    /// Clients allowed to send PURGE on the public listener, by their real address.
    #[serde(default = "loopback", deserialize_with = "values::cidrs")]
    pub purge_allow: Vec<Cidr>,
    /// A file holding a secret; `PURGE` with `Authorization: Bearer <secret>` is allowed from
    /// any address.
    pub purge_token_file: Option<PathBuf>,
    /// The secret, read from `purge_token_file` at load.
    #[serde(skip)]
    pub purge_token: Option<PurgeToken>,
}

fn loopback() -> Vec<Cidr> {
    vec![
        Cidr::parse("127.0.0.1/32").unwrap(),
        Cidr::parse("::1/128").unwrap(),
    ]
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessLog {
    #[serde(default)]
    pub target: LogTarget,
}

/// Where access-log lines go: `off`, `stderr`, or an absolute file path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LogTarget {
    #[default]
    Off,
    Stderr,
    File(std::path::PathBuf),
}

impl<'de> Deserialize<'de> for LogTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, so that serde_yaml's error names `access_log.target`.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = LogTarget;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("off, stderr or an absolute file path")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<LogTarget, E> {
                match s {
                    "off" => Ok(LogTarget::Off),
                    "stderr" => Ok(LogTarget::Stderr),
                    p if p.starts_with('/') => Ok(LogTarget::File(p.into())),
                    _ => Err(E::custom(format!(
                        "{s:?} is not a log target; write off, stderr or an absolute path like /var/log/shellac/access.log"
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub backends: Vec<Backend>,
    #[serde(default)]
    pub selection: Selection,
    /// Omit for no active checks: backends then stay in rotation and failures are retried.
    pub health_check: Option<HealthCheck>,
    #[serde(default = "secs::<1>", deserialize_with = "values::duration")]
    pub connect_timeout: Duration,
    /// Longest wait for each read from the backend (response header or body chunk).
    #[serde(default = "secs::<30>", deserialize_with = "values::duration")]
    pub read_timeout: Duration,
    #[serde(default = "secs::<30>", deserialize_with = "values::duration")]
    pub write_timeout: Duration,
    /// How long an idle pooled connection to a backend is kept.
    #[serde(default = "secs::<60>", deserialize_with = "values::duration")]
    pub idle_timeout: Duration,
    /// Other backends tried when connecting fails.
    #[serde(default = "two")]
    pub retries: u32,
}

fn mib<const N: u64>() -> u64 {
    N << 20
}

fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}
fn two() -> u32 {
    2
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddr,
    pub weight: u32,
}

impl<'de> Deserialize<'de> for Backend {
    /// Either `"127.0.0.1:9001"` or `{addr: "127.0.0.1:9001", weight: 2}`.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Long {
            #[serde(deserialize_with = "values::socket_addr")]
            addr: SocketAddr,
            #[serde(default = "one")]
            weight: u32,
        }
        fn one() -> u32 {
            1
        }
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Backend;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an IP:port string or a map {addr, weight}")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Backend, E> {
                values::parse_socket_addr(s)
                    .map(|addr| Backend { addr, weight: 1 })
                    .map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, m: A) -> Result<Backend, A::Error> {
                let l = Long::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                Ok(Backend {
                    addr: l.addr,
                    weight: l.weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    #[default]
    RoundRobin,
    Random,
    /// Ketama over host + path + query: one URL sticks to one backend while it is healthy.
    Consistent,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// Requested path for `kind: http`; any 2xx passes. A `tcp` check ignores it.
    #[serde(default = "slash")]
    pub path: String,
    /// Host header for `kind: http`.
    #[serde(default = "localhost")]
    pub host: String,
    #[serde(default = "secs::<1>", deserialize_with = "values::duration")]
    pub interval: Duration,
    /// Per-check connect and read timeout.
    #[serde(default = "secs::<1>", deserialize_with = "values::duration")]
    pub timeout: Duration,
    /// Consecutive failures that take a backend out of rotation.
    #[serde(default = "two_usize")]
    pub failures: usize,
    /// Consecutive successes that bring it back.
    #[serde(default = "two_usize")]
    pub successes: usize,
}

fn localhost() -> String {
    "localhost".into()
}
fn two_usize() -> usize {
    2
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    Http,
    Tcp,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Metric label; defaults to host + path_prefix.
    pub name: Option<String>,
    /// `*` (any), an exact host, or `*.example.com` (any subdomain, not the bare domain).
    #[serde(default = "star")]
    pub host: String,
    #[serde(default = "slash")]
    pub path_prefix: String,
    pub upstream: String,
    /// Answer from the cache where HTTP allows it.
    #[serde(default)]
    pub cache: bool,
    /// Stale windows for responses that name none (RFC 5861); `must-revalidate` and friends
    /// still forbid serving stale.
    #[serde(default, deserialize_with = "values::duration")]
    pub stale_while_revalidate: Duration,
    #[serde(default, deserialize_with = "values::duration")]
    pub stale_if_error: Duration,
    /// Whether a client's `Cache-Control: no-cache`/`max-age` or `Pragma: no-cache` may make
    /// a stored response go back to the origin.
    #[serde(default)]
    pub client_cache_control: ClientCacheControl,
    /// Fork sampled requests to a staging upstream and compare its answers.
    pub mirror: Option<RouteMirror>,
}

impl Route {
    /// The route's name: `name`, else host + path_prefix.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}{}", self.host, self.path_prefix))
    }
}

fn star() -> String {
    "*".into()
}
fn slash() -> String {
    "/".into()
}

/// A config error: where it is and what to do about it.
#[derive(Debug)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

pub(crate) fn err<T>(
    path: impl Into<String>,
    message: impl Into<String>,
) -> Result<T, ConfigError> {
    Err(ConfigError {
        path: path.into(),
        message: message.into(),
    })
}

impl Config {
    pub fn load(path: &str) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).or_else(|e| err("", format!("cannot read: {e}")))?;
        let mut config = Config::parse(&text)?;
        // Files the config names are read now, so `-t` fails on them as start-up would.
        let dir = std::path::Path::new(path)
            .parent()
            .unwrap_or(std::path::Path::new("."));
        if let Some(m) = &mut config.cache.memcached {
            m.load_key(dir)?;
        }
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = serde_yaml::from_str(text).or_else(|e| {
            // serde_yaml already prefixes the key path ("upstreams.app.backends[1]: …") and says
            // where; an error without a location is about the document as a whole.
            let msg = e.to_string();
            let msg = match e.location() {
                Some(_) if msg.contains(" line ") || msg.contains("position ") => msg,
                Some(l) => format!("line {} column {}: {msg}", l.line(), l.column()),
                None => format!(
                    "the top level must be a mapping of keys (listen:, upstreams:, routes:, …): {msg}"
                ),
            };
            err("", rules::with_rule_name(text, msg))
        })?;
        config.validate()?;
        if let Some(path) = &config.admin.purge_token_file {
            config.admin.purge_token = Some(PurgeToken::load(path)?);
        }
        Ok(config)
    }

    /// Rules that span keys, checked before anything is bound.
    pub fn validate(&self) -> Result<(), ConfigError> {
        edge::validate_listeners(&self.listen, self.admin.listen)?;
        if self.upstreams.is_empty() {
            return err("upstreams", "define at least one upstream group");
        }
        for (name, u) in &self.upstreams {
            let p = format!("upstreams.{name}");
            if u.backends.is_empty() {
                return err(
                    format!("{p}.backends"),
                    "the list is empty; add at least one IP:port",
                );
            }
            if u.backends.len() > 65535 {
                return err(format!("{p}.backends"), "at most 65535 backends per group");
            }
            let mut addrs = HashSet::new();
            for (i, b) in u.backends.iter().enumerate() {
                if !addrs.insert(b.addr) {
                    return err(
                        format!("{p}.backends[{i}]"),
                        format!("{} is listed twice; give it a weight instead", b.addr),
                    );
                }
                if b.weight > 1000 {
                    return err(
                        format!("{p}.backends[{i}].weight"),
                        "weights above 1000 are not supported",
                    );
                }
            }
            if u.backends.iter().all(|b| b.weight == 0) {
                return err(format!("{p}.backends"), "every weight is 0, so no backend could ever be chosen; give at least one a weight of 1 or more");
            }
            if u.connect_timeout.is_zero() || u.read_timeout.is_zero() || u.write_timeout.is_zero()
            {
                return err(p, "timeouts must be greater than 0");
            }
            if u.retries > 16 {
                return err(format!("{p}.retries"), "at most 16");
            }
            if let Some(hc) = &u.health_check {
                let hp = format!("{p}.health_check");
                if hc.kind == CheckKind::Http
                    && (!hc.path.starts_with('/') || hc.path.parse::<http::Uri>().is_err())
                {
                    return err(
                        format!("{hp}.path"),
                        format!("{:?} must start with / and be a valid path", hc.path),
                    );
                }
                if hc.interval < Duration::from_millis(100) {
                    return err(format!("{hp}.interval"), "must be at least 100ms");
                }
                if hc.failures == 0 || hc.successes == 0 {
                    return err(hp, "failures and successes must be at least 1");
                }
            }
        }
        self.cache.validate()?;
        let l = &self.limits;
        if l.max_headers == 0 || l.max_header_bytes < 1024 || l.max_request_target < 256 {
            return err("limits", "max_headers must be at least 1, max_header_bytes at least 1KiB and max_request_target at least 256");
        }
        if l.max_headers > 256 || l.max_header_bytes > (1 << 20) {
            return err("limits", "Pingora reads at most 256 header fields and 1MiB of header; keep max_headers and max_header_bytes within that");
        }
        if l.header_timeout.is_zero() || l.keepalive_timeout.is_zero() {
            return err(
                "limits",
                "header_timeout and keepalive_timeout must be greater than 0",
            );
        }
        if self.routes.is_empty() {
            return err(
                "routes",
                "define at least one route, e.g. - {host: \"*\", path_prefix: /, upstream: app}",
            );
        }
        for (i, r) in self.routes.iter().enumerate() {
            let p = format!("routes[{i}]");
            if !self.upstreams.contains_key(&r.upstream) {
                let known: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
                return err(
                    format!("{p}.upstream"),
                    format!(
                        "no upstream named {:?}; define it under upstreams or use one of {known:?}",
                        r.upstream
                    ),
                );
            }
            if !r.path_prefix.starts_with('/') {
                return err(
                    format!("{p}.path_prefix"),
                    format!("{:?} must start with /", r.path_prefix),
                );
            }
            let host = r.host.strip_prefix("*.").unwrap_or(&r.host);
            let valid = r.host == "*"
                || (!host.is_empty()
                    && host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
            if !valid {
                return err(
                    format!("{p}.host"),
                    format!("{:?} is not a host pattern; use \"*\", \"example.com\" or \"*.example.com\" (no port)", r.host),
                );
            }
            if let Some(m) = &r.mirror {
                mirror::validate_route(&p, m, &r.upstream, |n| self.upstreams.contains_key(n))?;
            }
        }
        mirror::validate_limits(&self.mirror_limits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen: ["127.0.0.1:8080"]
admin: {listen: "127.0.0.1:9091"}
upstreams:
  app:
    backends: ["127.0.0.1:9001", {addr: "127.0.0.1:9002", weight: 2}]
    selection: consistent
    health_check: {kind: http, path: /healthz, interval: 1s, failures: 2, successes: 2}
    connect_timeout: 250ms
routes:
  - {host: "*", path_prefix: /, upstream: app}
"#;

    #[test]
    fn parses_the_documented_shape() {
        let c = Config::parse(GOOD).unwrap();
        let app = &c.upstreams["app"];
        assert_eq!(app.backends[1].weight, 2);
        assert_eq!(app.selection, Selection::Consistent);
        assert_eq!(app.connect_timeout, Duration::from_millis(250));
        assert_eq!(app.read_timeout, Duration::from_secs(30));
        assert_eq!(c.admin.purge_allow.len(), 2);
        assert_eq!(c.access_log.target, LogTarget::Off);
    }

    #[test]
    fn pingora_defaults_fit_a_busy_node() {
        let c = Config::parse(GOOD).unwrap();
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(c.pingora.threads, cpus);
        assert_eq!(c.pingora.upstream_keepalive_pool_size, 1024);
        let c = Config::parse(&format!(
            "{GOOD}pingora: {{threads: 3, upstream_keepalive_pool_size: 7}}\n"
        ))
        .unwrap();
        assert_eq!(c.pingora.threads, 3);
        assert_eq!(c.pingora.upstream_keepalive_pool_size, 7);
        let c = Config::parse(&format!("{GOOD}pingora: {{grace_period_seconds: 1}}\n")).unwrap();
        assert_eq!(c.pingora.threads, cpus);
    }

    #[test]
    fn access_log_targets() {
        let c = Config::parse(&format!("{GOOD}access_log: {{target: /var/log/a.log}}\n")).unwrap();
        assert_eq!(
            c.access_log.target,
            LogTarget::File("/var/log/a.log".into())
        );
        let c = Config::parse(&format!("{GOOD}access_log: {{target: stderr}}\n")).unwrap();
        assert_eq!(c.access_log.target, LogTarget::Stderr);
        let e = error_of(&format!("{GOOD}access_log: {{target: logs/a.log}}\n"));
        assert!(
            e.contains("access_log.target") && e.contains("absolute path"),
            "{e}"
        );
        let e = error_of(&format!("{GOOD}access_log: {{taget: off}}\n"));
        assert!(
            e.contains("access_log") && e.contains("unknown field `taget`"),
            "{e}"
        );
    }

    fn error_of(yaml: &str) -> String {
        Config::parse(yaml).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_key_and_fix() {
        let e = error_of(&GOOD.replace("127.0.0.1:9002", "10.0.0.300:80"));
        assert!(
            e.contains("upstreams.app.backends[1]") && e.contains("is not an IP:port"),
            "{e}"
        );
        let e = error_of(&GOOD.replace("upstream: app}", "upstream: nope}"));
        assert!(
            e.contains("routes[0].upstream") && e.contains("no upstream named"),
            "{e}"
        );
        let e = error_of(&GOOD.replace("connect_timeout: 250ms", "connect_timeout: 250"));
        assert!(
            e.contains("upstreams.app.connect_timeout") && e.contains("no unit"),
            "{e}"
        );
        let e = error_of(&GOOD.replace("selection: consistent", "selection: fastest"));
        assert!(
            e.contains("upstreams.app.selection") && e.contains("round_robin"),
            "{e}"
        );
    }

    #[test]
    fn unknown_keys_rejected_at_every_level() {
        let e = error_of(&format!("{GOOD}\nlisten_typo: 1\n"));
        assert!(e.contains("unknown field `listen_typo`"), "{e}");
        let e = error_of(&GOOD.replace("connect_timeout: 250ms", "conect_timeout: 250ms"));
        assert!(
            e.contains("upstreams.app") && e.contains("unknown field `conect_timeout`"),
            "{e}"
        );
        let e = error_of(&GOOD.replace("failures: 2,", "failure: 2,"));
        assert!(e.contains("unknown field `failure`"), "{e}");
    }

    #[test]
    fn load_balancer_keys() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.limits.max_connections_per_ip, 0, "no cap by default");
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.cache.invalidate_on, ["POST", "PUT", "DELETE", "PATCH"]);
        assert_eq!(c.routes[0].client_cache_control, ClientCacheControl::Ignore);
        let c = Config::parse(&format!(
            "{}trusted_proxies: [10.0.0.0/8]\n",
            GOOD.replace(
                "listen: [\"127.0.0.1:8080\"]",
                "listen: [{addr: \"127.0.0.1:8080\", proxy_protocol: true}, \"127.0.0.1:8081\"]"
            )
        ))
        .unwrap();
        assert!(c.listen[0].proxy_protocol && !c.listen[1].proxy_protocol);
        assert_eq!(c.trusted_proxies.len(), 1);
        let e = error_of(&format!("{GOOD}cache: {{invalidate_on: [post]}}\n"));
        assert!(
            e.contains("cache.invalidate_on[0]") && e.contains("\"POST\""),
            "{e}"
        );
        let e = error_of(&format!("{GOOD}cache: {{invalidate_on: [GET]}}\n"));
        assert!(e.contains("safe method"), "{e}");
        let e = error_of(&GOOD.replace(
            "admin: {listen: \"127.0.0.1:9091\"}",
            "admin: {listen: \"127.0.0.1:9091\", purge_token_file: /nonexistent/token}",
        ));
        assert!(
            e.contains("admin.purge_token_file") && e.contains("cannot read"),
            "{e}"
        );
        let e = error_of(&GOOD.replace(
            "upstream: app}",
            "upstream: app, client_cache_control: always}",
        ));
        assert!(
            e.contains("client_cache_control") && e.contains("honor"),
            "{e}"
        );
    }

    #[test]
    fn cross_key_rules() {
        let e = error_of(&GOOD.replace(
            "[\"127.0.0.1:9001\", {addr: \"127.0.0.1:9002\", weight: 2}]",
            "[]",
        ));
        assert!(
            e.contains("upstreams.app.backends") && e.contains("empty"),
            "{e}"
        );
        let e = error_of(&GOOD.replace(
            "\"127.0.0.1:9001\", {addr: \"127.0.0.1:9002\", weight: 2}",
            "{addr: \"127.0.0.1:9001\", weight: 0}",
        ));
        assert!(e.contains("every weight is 0"), "{e}");
        let e = error_of(&GOOD.replace(
            "listen: [\"127.0.0.1:8080\"]",
            "listen: [\"127.0.0.1:8080\", \"127.0.0.1:8080\"]",
        ));
        assert!(e.contains("listen[1]") && e.contains("twice"), "{e}");
        let e = error_of(&GOOD.replace("9091", "8080"));
        assert!(e.contains("admin.listen"), "{e}");
    }
}
