//! The extension trait: what a YAML rule can do, a Rust [`Plugin`] can do too, plus anything
//! async on the request (call an auth service, read a body). YAML rules are plugins of this
//! trait; both run through one list, in order: the rules of the file, then the plugins given
//! to `app::build_with`.
//!
//! Phases, as Varnish's `vcl_recv`/`vcl_hash`, `vcl_backend_response` and `vcl_deliver`:
//! - [`Plugin::request`]: before the upstream is chosen and before the cache lookup. Headers
//!   set here are forwarded and can be part of the key; a rewrite changes the key and what the
//!   origin sees; a synthetic answer never reaches the cache or the origin.
//! - [`Plugin::origin_response`]: on the origin's answer, before the cache decides to store
//!   it. Not called for hits.
//! - [`Plugin::deliver`]: on every response to the client, hits and synthetic answers included.
//!
//! Later plugins see what earlier ones changed and win where they set the same thing;
//! [`Verdict::Final`] stops every later plugin, in this and later phases, for this request.
//!
//! ```no_run
//! use shellac::rules::{async_trait, DeliverCx, Phases, Plugin, Verdict};
//! struct Stamp;
//! #[async_trait]
//! impl Plugin for Stamp {
//!     fn name(&self) -> &str { "stamp" }
//!     fn phases(&self) -> Phases { Phases::DELIVER }
//!     fn deliver(&self, cx: &mut DeliverCx<'_>) -> Verdict {
//!         let _ = cx.resp_mut().insert_header("x-stamp", "1");
//!         Verdict::Applied
//!     }
//! }
//! ```

use super::key::KeySpec;
use super::matcher::Facts;
use crate::cache::policy::StaleDefaults;
pub use crate::config::rules::CacheMode;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// What a hook did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Did not apply to this request.
    NoMatch,
    /// Applied; later plugins still run. Its name goes into `Cache-Status`.
    Applied,
    /// Applied, and no later plugin runs for this request, in any phase.
    Final,
}

/// The phases a plugin takes part in; the others are never called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases(u8);

impl Phases {
    pub const NONE: Phases = Phases(0);
    pub const REQUEST: Phases = Phases(1);
    pub const ORIGIN_RESPONSE: Phases = Phases(2);
    pub const DELIVER: Phases = Phases(4);
    pub const ALL: Phases = Phases(7);

    pub fn contains(self, other: Phases) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Phases {
    type Output = Phases;
    fn bitor(self, o: Phases) -> Phases {
        Phases(self.0 | o.0)
    }
}

#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// Shown in `Cache-Status` detail when the plugin applied.
    fn name(&self) -> &str;

    fn phases(&self) -> Phases {
        Phases::ALL
    }

    /// A cheap synchronous test before [`Plugin::request`]: `false` skips it, so plugins that
    /// do not apply cost no future on the request path.
    fn request_matches(&self, _cx: &RequestCx<'_>) -> bool {
        true
    }

    async fn request(&self, _cx: &mut RequestCx<'_>) -> Verdict {
        Verdict::NoMatch
    }

    fn origin_response(&self, _cx: &mut OriginCx<'_>) -> Verdict {
        Verdict::NoMatch
    }

    fn deliver(&self, _cx: &mut DeliverCx<'_>) -> Verdict {
        Verdict::NoMatch
    }
}

/// A response made by Shellac itself (`respond`, `redirect`).
#[derive(Debug, Clone)]
pub struct Synthetic {
    pub status: u16,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: Bytes,
}

/// Per-request decisions of the plugins, read by the cache, the router and the proxy.
#[derive(Default)]
pub struct Decisions {
    /// The real client address ([`crate::client`]), set by the proxy before the first phase.
    pub(crate) client: Option<std::net::IpAddr>,
    pub(crate) cache: Option<CacheMode>,
    pub(crate) upstream: Option<usize>,
    pub(crate) key: KeySpec,
    pub(crate) respond: Option<Arc<Synthetic>>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) force_ttl: Option<Duration>,
    pub(crate) stale: Option<StaleDefaults>,
    /// Plugins that applied, by index, in order; up to eight without an allocation.
    pub(crate) applied: smallvec::SmallVec<[u16; 8]>,
    /// A final plugin applied: no plugin after this index runs.
    pub(crate) limit: Option<usize>,
}

/// Names the proxy and plugins share: routes and upstream groups by index.
#[derive(Debug, Default)]
pub(crate) struct Names {
    pub routes: Vec<String>,
    pub upstreams: Vec<String>,
}

/// The request phase's view: the whole session (async access), and the decisions.
pub struct RequestCx<'a> {
    pub session: &'a mut Session,
    pub(crate) route: Option<usize>,
    pub(crate) client: Option<IpAddr>,
    pub(crate) names: &'a Names,
    pub(crate) d: &'a mut Decisions,
}

impl RequestCx<'_> {
    pub fn req(&self) -> &RequestHeader {
        self.session.req_header()
    }
    /// Changes here are forwarded to the origin and seen by later plugins and phases.
    pub fn req_mut(&mut self) -> &mut RequestHeader {
        self.session.req_header_mut()
    }
    pub fn route(&self) -> Option<&str> {
        self.route.map(|i| self.names.routes[i].as_str())
    }
    /// The client's address (the real client: PROXY source or trusted X-Forwarded-For).
    pub fn client(&self) -> Option<IpAddr> {
        self.client
    }
    /// Sends the request to another upstream group; `false` if there is none by that name.
    pub fn set_upstream(&mut self, name: &str) -> bool {
        let i = self.names.upstreams.iter().position(|n| n == name);
        self.d.upstream = i.or(self.d.upstream);
        i.is_some()
    }
    pub fn set_cache(&mut self, mode: CacheMode) {
        self.d.cache = Some(mode);
    }
    /// What the cache key is made of, beyond host and path.
    pub fn key(&mut self) -> &mut KeySpec {
        &mut self.d.key
    }
    /// Answers with `r` instead of the cache or the origin.
    pub fn respond(&mut self, r: Arc<Synthetic>) {
        self.d.respond = Some(r);
    }
    /// Replaces the path and query (before the key and forwarding); `false` if not a valid
    /// origin-form target.
    pub fn rewrite(&mut self, path_and_query: &str) -> bool {
        match http::Uri::try_from(path_and_query) {
            Ok(uri) if path_and_query.starts_with('/') => {
                self.req_mut().set_uri(uri);
                true
            }
            _ => false,
        }
    }
    pub(crate) fn facts(&self) -> Facts<'_> {
        Facts {
            req: self.session.req_header(),
            route: self.route,
            client: self.client,
            status: None,
        }
    }
}

/// The origin response phase's view: the request as forwarded, the origin's answer.
pub struct OriginCx<'a> {
    pub(crate) req: &'a RequestHeader,
    pub(crate) resp: &'a mut ResponseHeader,
    /// The status the cache will store: a revalidating 304 counts as the stored status.
    pub(crate) status: u16,
    pub(crate) route: Option<usize>,
    pub(crate) client: Option<IpAddr>,
    pub(crate) names: &'a Names,
    pub(crate) d: &'a mut Decisions,
}

impl OriginCx<'_> {
    pub fn req(&self) -> &RequestHeader {
        self.req
    }
    /// Changes here are what the cache decides on and stores.
    pub fn resp_mut(&mut self) -> &mut ResponseHeader {
        self.resp
    }
    pub fn status(&self) -> u16 {
        self.status
    }
    pub fn route(&self) -> Option<&str> {
        self.route.map(|i| self.names.routes[i].as_str())
    }
    /// Freshness when the origin gives no explicit one (`max-age`, `s-maxage`, `Expires`).
    pub fn set_ttl(&mut self, ttl: Duration) {
        self.d.ttl = Some(ttl);
    }
    /// Freshness regardless of the origin's, and despite `no-cache` and `private`.
    pub fn force_ttl(&mut self, ttl: Duration) {
        self.d.force_ttl = Some(ttl);
    }
    /// Stale windows for this response when it names none (replacing the route's).
    pub fn set_stale(&mut self, while_revalidate: Duration, if_error: Duration) {
        let s = |d: Duration| d.as_secs().min(u32::MAX as u64) as u32;
        self.d.stale = Some(StaleDefaults {
            while_revalidate: s(while_revalidate),
            if_error: s(if_error),
            on_disconnect: 0, // the route's; rules do not set it
        });
    }
    pub(crate) fn facts(&self) -> Facts<'_> {
        Facts {
            req: self.req,
            route: self.route,
            client: self.client,
            status: Some(self.status),
        }
    }
}

/// The deliver phase's view: the response about to be sent, from cache or origin.
pub struct DeliverCx<'a> {
    pub(crate) req: &'a RequestHeader,
    pub(crate) resp: &'a mut ResponseHeader,
    pub(crate) route: Option<usize>,
    pub(crate) client: Option<IpAddr>,
    pub(crate) names: &'a Names,
}

impl DeliverCx<'_> {
    pub fn req(&self) -> &RequestHeader {
        self.req
    }
    pub fn resp_mut(&mut self) -> &mut ResponseHeader {
        self.resp
    }
    pub fn status(&self) -> u16 {
        self.resp.status.as_u16()
    }
    pub fn route(&self) -> Option<&str> {
        self.route.map(|i| self.names.routes[i].as_str())
    }
    pub(crate) fn facts(&self) -> Facts<'_> {
        Facts {
            req: self.req,
            route: self.route,
            client: self.client,
            status: Some(self.resp.status.as_u16()),
        }
    }
}
