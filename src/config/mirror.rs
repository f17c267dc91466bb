//! `routes[].mirror` and the global `mirror_limits`: which requests are copied to a staging
//! upstream, and how the copies and their comparison are bounded.

use super::{err, values, ConfigError};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Per route: fork sampled requests to another upstream group and compare its answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMirror {
    /// An upstream group defined under `upstreams`; never the route's own.
    pub upstream: String,
    /// Fraction of requests forked, 0..=1.
    #[serde(default = "one")]
    pub sample: f64,
    /// Requests with a larger body (declared or streamed) are not forked; also the bound on
    /// bodies held for JSON comparison.
    #[serde(default = "mib1", deserialize_with = "values::size")]
    pub max_body: u64,
    /// Methods forked. Safe methods only by default: replaying POST/PUT/DELETE to staging is a
    /// product decision (staging may share a database or send mail), so it must be opted into.
    #[serde(default = "safe_methods")]
    pub methods: Vec<String>,
    #[serde(default)]
    pub compare: Compare,
    /// Send the client's `Authorization`, `Cookie` and `Proxy-Authorization` to staging too.
    /// Off by default: staging is rarely guarded like production, and its logs are not either.
    #[serde(default)]
    pub forward_credentials: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compare {
    /// Response fields not compared (case-insensitive). Framing and hop-by-hop fields are never
    /// compared; the body comparison covers length.
    #[serde(default = "volatile_headers")]
    pub ignore_headers: Vec<String>,
    /// Compare bodies: JSON structurally when both sides are JSON and within `max_body`, else
    /// by length and hash.
    #[serde(default = "yes")]
    pub body: bool,
    /// Dotted paths from the JSON root dropped before comparing (`meta.generated_at`,
    /// `items.*.id`; `*` matches every key or array element at that level).
    #[serde(default)]
    pub ignore_json_fields: Vec<String>,
}

impl Default for Compare {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("every compare key has a default")
    }
}

/// Global bounds on mirroring, shared by every route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorLimits {
    /// Forks in flight at once (staging exchange plus waiting for the production response);
    /// further sampled requests are not forked and count as `dropped`.
    #[serde(default = "inflight")]
    pub max_inflight: usize,
    /// Whole life of one fork; a staging answer later than this counts as `error`.
    #[serde(default = "five_secs", deserialize_with = "values::duration")]
    pub timeout: Duration,
    /// Where sampled mismatches and staging errors are written; omit for none.
    pub log: Option<MirrorLog>,
}

impl Default for MirrorLimits {
    fn default() -> Self {
        serde_yaml::from_str("{}").expect("every mirror limit has a default")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorLog {
    /// Absolute path, created and appended to.
    pub path: PathBuf,
    #[serde(default = "sixty")]
    pub max_lines_per_minute: u32,
}

fn one() -> f64 {
    1.0
}
fn mib1() -> u64 {
    1 << 20
}
fn yes() -> bool {
    true
}
fn safe_methods() -> Vec<String> {
    ["GET", "HEAD", "OPTIONS"].map(String::from).to_vec()
}
fn volatile_headers() -> Vec<String> {
    ["date", "age"].map(String::from).to_vec()
}
fn inflight() -> usize {
    256
}
fn five_secs() -> Duration {
    Duration::from_secs(5)
}
fn sixty() -> u32 {
    60
}

pub(super) fn validate_route(
    p: &str,
    m: &RouteMirror,
    route_upstream: &str,
    upstream_exists: impl Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    let p = format!("{p}.mirror");
    if !upstream_exists(&m.upstream) {
        return err(
            format!("{p}.upstream"),
            format!(
                "no upstream named {:?}; define the staging group under upstreams",
                m.upstream
            ),
        );
    }
    if m.upstream == route_upstream {
        return err(
            format!("{p}.upstream"),
            "is the route's own upstream, which would send production every request twice; name a staging group",
        );
    }
    if !(0.0..=1.0).contains(&m.sample) {
        return err(
            format!("{p}.sample"),
            "must be between 0 and 1 (0.1 forks one request in ten)",
        );
    }
    for (i, method) in m.methods.iter().enumerate() {
        let token = !method.is_empty()
            && method
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_');
        if !token {
            return err(
                format!("{p}.methods[{i}]"),
                format!("{method:?} is not a method; write it in capitals, like GET or POST"),
            );
        }
        if method == "PURGE" {
            return err(
                format!("{p}.methods[{i}]"),
                "PURGE is answered by Shellac itself and never forked; remove it",
            );
        }
    }
    for (i, f) in m.compare.ignore_json_fields.iter().enumerate() {
        if f.is_empty() || f.split('.').any(str::is_empty) {
            return err(
                format!("{p}.compare.ignore_json_fields[{i}]"),
                format!(
                    "{f:?} is not a dotted path; write it like meta.generated_at or items.*.id"
                ),
            );
        }
    }
    Ok(())
}

pub(super) fn validate_limits(l: &MirrorLimits) -> Result<(), ConfigError> {
    if l.max_inflight == 0 {
        return err(
            "mirror_limits.max_inflight",
            "must be at least 1 (turn mirroring off by removing routes[].mirror)",
        );
    }
    if l.timeout.is_zero() {
        return err("mirror_limits.timeout", "must be greater than 0");
    }
    if let Some(log) = &l.log {
        if !log.path.is_absolute() {
            return err(
                "mirror_limits.log.path",
                format!(
                    "{:?} is not absolute; write it like /var/log/shellac/mirror.log",
                    log.path
                ),
            );
        }
        if log.max_lines_per_minute == 0 {
            return err(
                "mirror_limits.log.max_lines_per_minute",
                "must be at least 1 (omit mirror_limits.log for no log)",
            );
        }
    }
    Ok(())
}
