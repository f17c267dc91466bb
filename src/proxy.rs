//! The `ProxyHttp` implementation. Each hook is a few lines that call the module owning the
//! concern; per-request facts live in [`Ctx`].

use crate::access_log;
use crate::authority::Authority;
use crate::cache::{Cache, CacheCtx};
use crate::client::Clients;
use crate::config::Limits;
use crate::forward;
use crate::limits;
use crate::metrics;
use crate::mirror::{self, Mirror};
use crate::reload;
use crate::request_id;
use crate::route::Router;
use crate::rules::{Decisions, Rules};
use crate::upstream::{self, Group};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora::lb::Backend;
use pingora::prelude::*;
use pingora::proxy::{range_header_filter, ProxyHttp, RangeType, Session};
use pingora::ErrorType;
use prometheus::{Histogram, IntCounter};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

pub struct Proxy {
    router: Router,
    groups: Vec<Group>,
    /// One per route, then one for requests no route matched.
    route_stats: Vec<RouteStats>,
    cache: Cache,
    limits: Limits,
    mirror: Mirror,
    rules: Rules,
    clients: Arc<Clients>,
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
    /// The real client ([`crate::client`]), set first thing in `request_filter`.
    client: Option<IpAddr>,
    route: Option<usize>,
    /// The backend of the current attempt and when it was chosen.
    backend: Option<(Backend, Instant)>,
    /// Backends whose connection already failed in this request; filled only on retries.
    failed: Vec<SocketAddr>,
    attempts: u32,
    /// Attempts lost to a pooled connection the origin had closed; they spend no retry.
    stale_reuses: u32,
    upstream_status: u16,
    /// Request body bytes seen so far (for bodies without Content-Length).
    body_bytes: u64,
    cache: CacheCtx,
    /// `X-Request-Id`, set in `request_filter`.
    pub request_id: String,
    /// The access log's cache field; `-` until the cache sets it.
    pub cache_status: &'static str,
    /// Set when this request is being forked to a staging upstream.
    mirror: Option<mirror::Fork>,
    /// What the rules and plugins decided for this request.
    rules: Decisions,
}

impl Ctx {
    /// Attempts that count against `retries`: all but those lost to stale pooled connections.
    fn retries_spent(&self) -> u32 {
        self.attempts - self.stale_reuses
    }
}

impl Proxy {
    pub fn new(
        router: Router,
        groups: Vec<Group>,
        cache: Cache,
        limits: Limits,
        clients: Arc<Clients>,
    ) -> Proxy {
        let mut route_stats: Vec<RouteStats> =
            router.iter().map(|r| RouteStats::new(&r.name)).collect();
        route_stats.push(RouteStats::new("none"));
        Proxy {
            router,
            groups,
            route_stats,
            cache,
            limits,
            mirror: Mirror::off(),
            rules: Rules::default(),
            clients,
        }
    }

    pub fn with_rules(mut self, rules: Rules) -> Proxy {
        self.rules = rules;
        self
    }

    pub fn with_mirror(mut self, mirror: Mirror) -> Proxy {
        self.mirror = mirror;
        self
    }

    fn route(&self, ctx: &Ctx) -> &crate::route::Route {
        self.router.get(
            ctx.route
                .expect("cache and upstream phases run only after a route matched"),
        )
    }

    fn group(&self, ctx: &Ctx) -> &Group {
        let route = ctx
            .route
            .expect("upstream phases run only after a route matched");
        let chosen = ctx.rules.upstream();
        &self.groups[chosen.unwrap_or_else(|| self.router.get(route).upstream)]
    }
}

/// Answers locally with `code` and closes: whatever the client sent after the header is never
/// read, so the connection cannot be trusted to frame a next request.
async fn refuse(session: &mut Session, code: u16) -> Result<bool> {
    session.set_keepalive(None);
    session.respond_error(code).await?;
    Ok(true)
}

/// Every backend is down or refused: to the cache this is an unreachable origin, for which a
/// stale copy may stand in (`cache.stale_on_disconnect`); the client gets a 502.
fn no_backend() -> Box<Error> {
    Error::create(
        ErrorType::ConnectNoRoute,
        pingora::ErrorSource::Upstream,
        Some("no healthy backend left to try".into()),
        None,
    )
}

/// Whether the client of a request whose body is complete has closed its connection. Polls the
/// connection once, as Pingora's own body pump does (pipelined bytes are kept for later).
async fn client_gone(session: &mut Session) -> bool {
    if !session.is_body_done() || session.subrequest_ctx.is_some() {
        return false;
    }
    let poll = session.downstream_session.read_body_or_idle(true);
    // A zero timeout polls the read once: ready only if the client closed (or misbehaved).
    matches!(
        tokio::time::timeout(std::time::Duration::ZERO, poll).await,
        Ok(Err(_))
    )
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            client: None,
            route: None,
            backend: None,
            failed: Vec::new(),
            attempts: 0,
            stale_reuses: 0,
            upstream_status: 0,
            body_bytes: 0,
            cache: CacheCtx::default(),
            request_id: String::new(),
            cache_status: "-",
            mirror: None,
            rules: Decisions::default(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        forward::strip_internal(session.req_header_mut());
        forward::skip_pingora_interim(session);
        ctx.client = self.clients.resolve(session);
        ctx.request_id = request_id::for_request(session.req_header());
        if let Some(code) = limits::check_request(session.req_header(), &self.limits) {
            return refuse(session, code).await;
        }
        // Before routing: the route, the key and the forwarded request read the normal form.
        let req = session.req_header_mut();
        if crate::authority::adopt_target(req).is_err()
            || crate::path::normalise_request(req).is_err()
        {
            return refuse(session, 400).await;
        }
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(self.limits.keepalive_timeout.as_secs()));
        }
        let req = session.req_header();
        ctx.route = self.router.find(Authority::of(req).host(), req.uri.path());
        if let Some(answer) = self
            .rules
            .request(session, ctx.client, ctx.route, &mut ctx.rules)
            .await
        {
            let answered = self
                .rules
                .answer(session, &answer, ctx.route, &mut ctx.rules);
            return answered.await.map(|_| true);
        }
        if ctx.route.is_none() {
            if !session.is_body_empty() {
                return refuse(session, 404).await;
            }
            session.respond_error(404).await?;
            return Ok(true);
        }
        if session.req_header().method.as_str() == "PURGE" {
            self.cache.purge(session, ctx.client).await?;
            return Ok(true);
        }
        if let Some(route) = ctx.route {
            ctx.mirror = self
                .mirror
                .fork(session, route, &self.groups, &ctx.request_id);
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<Bytes>,
        eos: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(fork) = &mut ctx.mirror {
            fork.request_body(body, eos, ctx.attempts);
        }
        // Retries replay the buffered body through here again; count it once.
        if let (Some(b), 1) = (body, ctx.attempts) {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > self.limits.max_body {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body over limits.max_body",
                );
            }
        }
        Ok(())
    }

    fn range_header_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        _ctx: &mut Ctx,
    ) -> RangeType {
        let req = session.req_header();
        if let Some(range) = req.headers.get(http::header::RANGE) {
            if !limits::range_acceptable(range.as_bytes(), self.limits.max_ranges) {
                return RangeType::None; // the whole representation, 200
            }
        }
        range_header_filter(req, resp, Some(self.limits.max_ranges))
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let rule = ctx.rules.cache_rule(self.route(ctx).cache);
        self.cache.enable(session, &rule, &mut ctx.cache);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        let by_rules = ctx.rules.cache_key(session.req_header());
        Ok(by_rules.unwrap_or_else(|| self.cache.key(session)))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<HashBinary> {
        self.cache.vary(meta, req)
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        meta: &CacheMeta,
        hit: &mut HitHandler,
        _is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        if ctx.rules.bypass() {
            return Ok(Some(ForcedFreshness::ForceMiss));
        }
        let forced = self.cache.on_hit(session, meta, hit, &mut ctx.cache).await;
        // A memcached body that fails after the header continues from the origin, or is aborted.
        let group = self.group(ctx);
        let req = session.req_header();
        crate::cache::resume::guard(&ctx.cache, hit, req, meta, || {
            group.select_for(req, |_| false).map(|b| group.peer(&b))
        });
        Ok(forced)
    }

    fn cache_not_modified_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        _ctx: &mut Ctx,
    ) -> Result<bool> {
        Ok(self.cache.not_modified(session.req_header(), resp))
    }

    async fn proxy_upstream_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        if session.cache.lock_duration().is_some() && client_gone(session).await {
            // A waiter elected writer after a failed fill, for a client that left: nobody to
            // fetch for. The next request with a client fetches instead.
            return Error::e_explain(
                ErrorType::ConnectionClosed,
                "the client left while waiting for a fill; not fetching for nobody",
            );
        }
        // A range held by a stored partial is answered from it, dressed as any response.
        let bypass = ctx.rules.bypass();
        if let Some(hit) = self
            .cache
            .partial_lookup(session, &mut ctx.cache, bypass)
            .await
        {
            let mut resp = hit.header();
            self.response_filter(session, &mut resp, ctx).await?;
            let fork = &mut ctx.mirror;
            let on_body = |b: &Bytes| {
                fork.iter_mut()
                    .for_each(|f| f.response_body(&Some(b.clone())))
            };
            self.cache
                .serve_partial(session, hit, resp, on_body)
                .await?;
            return Ok(false);
        }
        self.cache.before_upstream(session, &mut ctx.cache).await
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        Ok(self.cache.decide(session, resp, &mut ctx.cache))
    }

    fn should_serve_stale(&self, s: &mut Session, ctx: &mut Ctx, error: Option<&Error>) -> bool {
        let by_rules = error.and_then(|_| self.rules.stored_stale(s, ctx.route, &ctx.rules));
        let serve = self
            .cache
            .may_serve_stale(s, &mut ctx.cache, error, by_rules);
        // A stale copy standing in for a failed exchange (not a 5xx answer) is written on a
        // connection Pingora then closes: say so, or a client reusing it meets a dead socket.
        if serve && error.is_some_and(|e| !matches!(e.etype(), ErrorType::HTTPStatus(_))) {
            s.set_keepalive(None);
        }
        serve
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let group = self.group(ctx);
        ctx.attempts += 1;
        let failed = &ctx.failed;
        let skip = |b: &Backend| b.addr.as_inet().is_some_and(|a| failed.contains(a));
        let backend = group
            .select_for(session.req_header(), skip)
            .ok_or_else(no_backend)?;
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
        if ctx.retries_spent() <= group.retries {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let group = self.group(ctx);
        let resend = upstream::retry_after_send(
            &session.req_header().method,
            ctx.upstream_status != 0,
            session.as_ref().retry_buffer_truncated(),
            e.etype(),
        );
        // A pooled connection that dies as it is reused was closed by the origin while idle
        // (its keep-alive timeout raced ours): that says nothing about the backend, so the
        // request goes again on a new connection, to the same backend if it is the only one,
        // without spending a retry (nginx treats its cached connections the same way).
        // Pingora's `max_retries` still bounds the attempts.
        let retry = resend && (reused || ctx.retries_spent() <= group.retries);
        if retry && reused {
            ctx.stale_reuses += 1;
        } else if retry {
            // This backend just dropped us: the next attempt goes elsewhere if it can.
            if let Some(addr) = ctx.backend.as_ref().and_then(|(b, _)| b.addr.as_inet()) {
                ctx.failed.push(*addr);
            }
        }
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        self.cache.request_sent(&mut ctx.cache);
        self.cache.forward_range(req, &ctx.cache)?;
        request_id::forward(req, &ctx.request_id)?;
        forward::upstream_request(req, crate::client::hop(session))
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_status = resp.status.as_u16();
        if limits::response_too_large(resp, &self.limits) {
            return Error::e_explain(
                ErrorType::HTTPStatus(502),
                "origin response header over limits.max_response_header_bytes",
            );
        }
        forward::upstream_response(resp);
        if forward::is_interim(resp) {
            // Not the answer: the cache, the rules and the status wait for the final header.
            return forward::relay_interim(session, resp).await;
        }
        if ctx.cache.enabled {
            crate::cache::fill::measure_in_tiers(session, resp);
        }
        ctx.cache.overrides = self
            .rules
            .origin_response(session, resp, ctx.route, &mut ctx.rules);
        self.cache
            .upstream_response(session, resp, &mut ctx.cache)
            .await;
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if forward::is_interim(resp) {
            // Relayed as it arrived (upstream_response_filter), or a 100 Continue Pingora sends.
            return Ok(());
        }
        if let Some(fork) = &mut ctx.mirror {
            fork.response(resp);
        }
        ctx.cache_status =
            self.cache
                .respond(session, resp, &mut ctx.cache, ctx.upstream_status)?;
        resp.append_header(http::header::VIA, forward::VIA)?;
        request_id::echo(resp, &ctx.request_id)?;
        let (req, client) = (session.req_header(), ctx.client);
        self.rules
            .deliver(req, client, resp, ctx.route, &mut ctx.rules);
        let conn = session.downstream_session.stream();
        crate::date::keep(conn.and_then(crate::conn::kept_date), resp);
        reload::close_when_draining(session);
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<Bytes>,
        _eos: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        self.cache.partial_body(body, &mut ctx.cache);
        Ok(None)
    }

    fn response_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<Bytes>,
        _eos: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(fork) = &mut ctx.mirror {
            fork.response_body(body);
        }
        if ctx.cache.from_cache {
            if let Some(b) = body {
                crate::metrics::CACHE_SERVED_BYTES.inc_by(b.len() as u64);
            }
        }
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        // `attempts`, not `backend`: a refused connection clears the backend but still fetched.
        self.cache.done(session, &ctx.cache, ctx.attempts > 0);
        self.cache.partial_done(&mut ctx.cache, e.is_none()).await;
        if let Some(fork) = ctx.mirror.take() {
            fork.finish(e.is_some());
        }
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
        if !access_log::enabled() {
            return;
        }
        let facts = access_log::Facts {
            // Requests refused before `request_filter` (unparsable) log the connection source.
            client: ctx.client.or_else(|| crate::client::hop(session)),
            status,
            started: ctx.started,
            upstream: ctx.backend.as_ref().and_then(|(b, _)| b.addr.as_inet()),
            cache_status: ctx.cache_status,
            request_id: &ctx.request_id,
            rules: &self.rules.applied(&ctx.rules),
        };
        access_log::record(session, &facts);
    }
}
