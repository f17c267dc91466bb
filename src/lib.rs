//! Shellac: a caching HTTP reverse proxy on Pingora.
//!
//! # Layout, along the request path
//! - [`config`]: the YAML file, parsed into typed values and validated before anything binds.
//! - [`app`]: wiring: builds the Pingora server, listeners, upstream groups and admin service.
//! - [`conn`]: accept side: PROXY protocol, open connections, per-IP cap, whole-request-header
//!   deadline.
//! - [`client`]: who the client is (PROXY source, trusted proxies' X-Forwarded-For), for every
//!   module that asks.
//! - [`proxy`]: the `ProxyHttp` hooks; each is a few lines calling the module that owns it.
//! - [`authority`]: the request's host and port: one parser, one validator, one normal form.
//! - [`path`]: the request path in normal form (RFC 3986 §6.2.2), before routing.
//! - [`route`]: host and path prefix → upstream group and cache rule.
//! - [`upstream`]: backend selection, health checks, connection settings.
//! - [`cache`]: RFC 9111 policy, cache keys, `Cache-Status`, purge, and the two tiers: the
//!   memory store and [`cache::memcached`], the fleet-shared L2, coordinated by [`cache::fleet`].
//! - [`limits`]: request and response bounds (414/431/413/502), range caps.
//! - [`mirror`]: forks sampled requests to a staging upstream and compares its answers.
//! - [`forward`]: header rewriting between client and origin (hop-by-hop, X-Forwarded-*, Via).
//! - [`date`]: the origin's `Date` put back over the one Pingora writes.
//! - [`admin`]: `/metrics`, `/healthz`, `/status.json` and the status page on the admin listener;
//!   [`readiness`]: `/readyz`.
//! - [`cli`]: `shellac stat` and the other tools that talk to a running instance.
//! - [`metrics`]: every metric, declared in one place.
//! - [`access_log`], [`request_id`]: one log line per request, and the id that ties logs together.
//! - [`reload`]: `shellac reload`, signals, zero-downtime hand-over to a new process.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod authority;
pub mod cache;
pub mod cli;
pub mod client;
pub mod config;
pub mod conn;
pub mod date;
pub mod forward;
/// Fuzz harnesses: test support, compiled only for tests and the `fuzz/` crate.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod metrics;
pub mod mirror;
pub mod path;
pub mod proxy;
pub mod readiness;
pub mod reload;
pub mod request_id;
pub mod route;
pub mod rules;
pub mod upstream;
