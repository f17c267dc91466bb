//! The `ProxyHttp` implementation. Each hook is a few lines that call the module owning the
//! concern; per-request facts live in [`Ctx`].

use crate::access_log;
use crate::forward;
use crate::metrics;
use crate::reload;
use crate::request_id;
use crate::route::{self, Router};
use crate::upstream::Group;
use async_trait::async_trait;
use pingora::lb::Backend;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::ErrorType;
use prometheus::{Histogram, IntCounter};
use std::net::SocketAddr;
use std::time::Instant;

pub struct Proxy {
    router: Router,
    groups: Vec<Group>,
    /// One per route, then one for requests no route matched.
    route_stats: Vec<RouteStats>,
}

struct RouteStats {
    /// 1xx, 2xx, 3xx, 4xx, 5xx, none.
    responses: [IntCounter; 6],
    duration: Histogram,
}

impl RouteStats {
    fn new(route: &str) -> RouteStats {
        let c = |class| metrics::REQUESTS.with_label_values(&[route, class]);
        RouteStats {
            responses: [c("1xx"), c("2xx"), c("3xx"), c("4xx"), c("5xx"), c("none")],
            duration: metrics::REQUEST_DURATION.with_label_values(&[route]),
        }
    }
}

/// Per-request state.
pub struct Ctx {
    started: Instant,
    route: Option<usize>,
    /// The backend of the current attempt and when it was chosen.
    backend: Option<(Backend, Instant)>,
    /// Backends whose connection already failed in this request; filled only on retries.
    failed: Vec<SocketAddr>,
    attempts: u32,
    upstream_status: u16,
    /// `X-Request-Id`, set in `request_filter`.
    pub request_id: String,
    /// The access log's cache field; `-` until the cache sets it.
    pub cache_status: &'static str,
}

impl Proxy {
    pub fn new(router: Router, groups: Vec<Group>) -> Proxy {
        let mut route_stats: Vec<RouteStats> =
            router.iter().map(|r| RouteStats::new(&r.name)).collect();
        route_stats.push(RouteStats::new("none"));
        Proxy {
            router,
            groups,
            route_stats,
        }
    }

    fn group(&self, ctx: &Ctx) -> &Group {
        let route = ctx
            .route
            .expect("upstream phases run only after a route matched");
        &self.groups[self.router.get(route).upstream]
    }
}

fn no_backend() -> Box<Error> {
    Error::explain(ErrorType::HTTPStatus(502), "no healthy backend left to try")
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            route: None,
            backend: None,
            failed: Vec::new(),
            attempts: 0,
            upstream_status: 0,
            request_id: String::new(),
            cache_status: "-",
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header();
        ctx.request_id = request_id::for_request(req);
        ctx.route = self.router.find(route::request_host(req), req.uri.path());
        if ctx.route.is_none() {
            session.respond_error(404).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let group = self.group(ctx);
        ctx.attempts += 1;
        let failed = &ctx.failed;
        let skip = |b: &Backend| b.addr.as_inet().is_some_and(|a| failed.contains(a));
        let backend = if group.consistent {
            let req = session.req_header();
            let host = route::request_host(req).as_bytes();
            let pq = req
                .uri
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .as_bytes();
            let mut key = Vec::with_capacity(host.len() + pq.len());
            key.extend_from_slice(host);
            key.extend_from_slice(pq);
            group.select(&key, skip)
        } else {
            group.select(b"", skip)
        };
        let backend = backend.ok_or_else(no_backend)?;
        let peer = group.peer(&backend);
        ctx.backend = Some((backend, Instant::now()));
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _s: &mut Session,
        _p: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let group = self.group(ctx);
        if let Some((backend, at)) = ctx.backend.take() {
            if let Some(stats) = group.stats(&backend) {
                stats.record(0, at.elapsed());
            }
            if let Some(addr) = backend.addr.as_inet() {
                ctx.failed.push(*addr);
            }
        }
        // Nothing was sent yet, so any method is safe to try on another backend.
        if ctx.attempts <= group.retries {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let client = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        request_id::forward(req, &ctx.request_id)?;
        forward::upstream_request(req, client)
    }

    async fn upstream_response_filter(
        &self,
        _s: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_status = resp.status.as_u16();
        forward::upstream_response(resp);
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        resp.append_header(http::header::VIA, forward::VIA)?;
        request_id::echo(resp, &ctx.request_id)?;
        reload::close_when_draining(session);
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let stats = &self.route_stats[ctx.route.unwrap_or(self.route_stats.len() - 1)];
        let class = match status {
            100..=599 => (status / 100 - 1) as usize,
            _ => 5,
        };
        stats.responses[class].inc();
        stats.duration.observe(ctx.started.elapsed().as_secs_f64());
        if let Some((backend, at)) = &ctx.backend {
            if let Some(s) = self.group(ctx).stats(backend) {
                s.record(ctx.upstream_status, at.elapsed());
            }
        }
        let facts = access_log::Facts {
            status,
            started: ctx.started,
            upstream: ctx.backend.as_ref().and_then(|(b, _)| b.addr.as_inet()),
            cache_status: ctx.cache_status,
            request_id: &ctx.request_id,
        };
        access_log::record(session, &facts);
    }
}
