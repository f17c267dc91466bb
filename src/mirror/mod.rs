//! Traffic mirroring: sampled requests are forked to a staging upstream group, and staging's
//! answer is compared with what the client was served.
//!
//! Production never waits for staging. A fork is an out-of-band task ([`task`]) with its own
//! connection pool; the proxy hooks only hand it data through channels that never block:
//! - `request_filter` → [`Mirror::fork`]: the sampling draw, then (sampled only) the method and
//!   size checks, a permit from the global `max_inflight` semaphore, the staging backend, and the
//!   spawn. The header is sent to staging at once.
//! - `request_body_filter` → [`Fork::request_body`]: body chunks, `try_send` only; a full channel
//!   means staging is slower than production and the fork is abandoned (`dropped`).
//! - `response_filter`/`response_body_filter` → [`Fork::response`]/[`Fork::response_body`]: the
//!   production status and headers, and a streaming digest of the body (hits included).
//! - `logging` → [`Fork::finish`]: hands the production side to the task, which compares once
//!   both are complete ([`compare`]), counts the result and logs a sample of mismatches.
//!
//! Requests that are not sampled cost one thread-local xorshift draw and nothing else.

pub mod compare;
mod request;
mod task;

use crate::config::{self, MirrorLimits};
use crate::limits::content_length as declared_length;
use crate::metrics;
use crate::upstream::Group;
use bytes::Bytes;
use http::{HeaderMap, Method};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use prometheus::IntCounter;
use request::{describe, staging_request};
use std::cell::Cell;
use std::sync::Arc;
use task::{Msg, Production};
use tokio::sync::{mpsc, oneshot};

/// Body chunks queued towards staging before the fork is abandoned. Pingora reads request bodies
/// in chunks of up to 64 KiB, so this is at most ~4 MiB per fork and far less in practice.
const BODY_QUEUE: usize = 64;

/// Mirroring for every route (or none), built once from the config.
pub struct Mirror {
    /// Indexed like the router's routes.
    routes: Vec<Option<Arc<Route>>>,
    shared: Arc<task::Shared>,
}

/// One route's compiled `mirror` section.
struct Route {
    name: String,
    /// Index of the staging group in the proxy's upstream groups.
    upstream: usize,
    /// A draw of 53 random bits below this is sampled.
    threshold: u64,
    max_body: u64,
    methods: Vec<Method>,
    rules: compare::Rules,
    stats: Stats,
    /// Send Authorization, Cookie and Proxy-Authorization to staging.
    forward_credentials: bool,
}

/// Metric handles resolved at start-up, so counting does no label lookup.
struct Stats {
    results: [IntCounter; 5],
    kinds: [IntCounter; 3],
}

/// How a fork ended; each sampled request is counted under exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Match,
    Mismatch,
    /// Staging failed: no healthy backend, connect or I/O error, timeout.
    Error,
    /// Not forked to protect production: `max_inflight` reached, or staging read the body
    /// slower than production.
    Dropped,
    /// Excluded by rule: method, body over `max_body`, or no complete production answer to
    /// compare with (the client went away, or the request failed before a response).
    Skipped,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Match,
        Outcome::Mismatch,
        Outcome::Error,
        Outcome::Dropped,
        Outcome::Skipped,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Match => "match",
            Outcome::Mismatch => "mismatch",
            Outcome::Error => "error",
            Outcome::Dropped => "dropped",
            Outcome::Skipped => "skipped",
        }
    }
}

impl Stats {
    fn new(route: &str) -> Stats {
        Stats {
            results: Outcome::ALL
                .map(|o| metrics::MIRROR_FORKS.with_label_values(&[route, o.label()])),
            kinds: compare::Kind::ALL
                .map(|k| metrics::MIRROR_MISMATCHES.with_label_values(&[route, k.label()])),
        }
    }

    fn count(&self, o: Outcome) {
        self.results[o as usize].inc();
    }

    fn count_kind(&self, k: compare::Kind) {
        self.kinds[k as usize].inc();
    }
}

impl Mirror {
    /// No route mirrors.
    pub fn off() -> Mirror {
        Mirror::new(&[], &MirrorLimits::default(), |_| 0)
    }

    /// `routes` in router order; `upstream_index` maps a group name to its index (validation
    /// guarantees it exists).
    pub fn new(
        routes: &[config::Route],
        limits: &MirrorLimits,
        upstream_index: impl Fn(&str) -> usize,
    ) -> Mirror {
        let routes: Vec<Option<Arc<Route>>> = routes
            .iter()
            .map(|r| {
                let m = r.mirror.as_ref()?;
                let name = r
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{}{}", r.host, r.path_prefix));
                Some(Arc::new(Route {
                    stats: Stats::new(&name),
                    name,
                    upstream: upstream_index(&m.upstream),
                    threshold: (m.sample * (1u64 << 53) as f64) as u64,
                    max_body: m.max_body,
                    methods: m
                        .methods
                        .iter()
                        .filter_map(|s| Method::from_bytes(s.as_bytes()).ok())
                        .collect(),
                    rules: compare::Rules::new(&m.compare),
                    forward_credentials: m.forward_credentials,
                }))
            })
            .collect();
        if routes.iter().any(Option::is_some) {
            metrics::init_mirror();
        }
        Mirror {
            routes,
            shared: Arc::new(task::Shared::new(limits)),
        }
    }

    /// Starts a fork of this request if its route mirrors and it is sampled. Call once the route
    /// is known and the request will be proxied or served from the cache.
    pub fn fork(
        &self,
        session: &mut Session,
        route: usize,
        groups: &[Group],
        request_id: &str,
    ) -> Option<Fork> {
        let m = self.routes.get(route)?.as_ref()?;
        // A background revalidation re-runs the pipeline for a request already forked.
        if session.subrequest_ctx.is_some() || !sampled(m.threshold) {
            return None;
        }
        let req = session.req_header();
        if !m.methods.contains(&req.method) || declared_length(req).is_some_and(|l| l > m.max_body)
        {
            m.stats.count(Outcome::Skipped);
            return None;
        }
        let Ok(permit) = self.shared.permits.clone().try_acquire_owned() else {
            m.stats.count(Outcome::Dropped);
            return None;
        };
        let group = &groups[m.upstream];
        let Some(backend) = group.select_for(req, |_| false) else {
            m.stats.count(Outcome::Error);
            self.shared
                .log_line(&m.name, &describe(req, request_id), || {
                    format!("error: no healthy backend in upstream {}", group.name)
                });
            return None;
        };
        let peer = group.peer(&backend);
        let hop = crate::client::hop(session);
        let fwd = match staging_request(req, hop, request_id, m.forward_credentials) {
            Ok(fwd) => fwd,
            Err(_) => {
                m.stats.count(Outcome::Skipped);
                return None;
            }
        };
        let line = describe(req, request_id);
        let (body_tx, body_rx) = if session.is_body_empty() {
            (None, None)
        } else {
            let (tx, rx) = mpsc::channel(BODY_QUEUE);
            (Some(tx), Some(rx))
        };
        let (prod_tx, prod_rx) = oneshot::channel();
        tokio::spawn(task::run(task::Job {
            peer,
            req: fwd,
            body: body_rx,
            prod: prod_rx,
            permit,
            route: m.clone(),
            shared: self.shared.clone(),
            line,
        }));
        Some(Fork(Box::new(State {
            body: body_tx,
            attempt: 0,
            pos: 0,
            forwarded: 0,
            max_body: m.max_body,
            aborted: None,
            status: 0,
            headers: HeaderMap::new(),
            digest: None,
            body_rules: m.rules.body,
            prod: Some(prod_tx),
        })))
    }
}

/// A request being forked; lives in the proxy's per-request context.
pub struct Fork(Box<State>);

struct State {
    /// Until the body has been forwarded in full (or given up).
    body: Option<mpsc::Sender<Msg>>,
    /// The upstream attempt whose body chunks are arriving, and how far into the body they are:
    /// a retry replays the body from its start, and staging must get each byte once.
    attempt: u32,
    pos: u64,
    forwarded: u64,
    max_body: u64,
    aborted: Option<Outcome>,
    /// 0 until `response_filter` ran.
    status: u16,
    headers: HeaderMap,
    digest: Option<compare::Digest>,
    body_rules: bool,
    prod: Option<oneshot::Sender<Production>>,
}

impl Fork {
    /// A request body chunk on its way upstream; `attempt` counts upstream attempts from 1.
    pub fn request_body(&mut self, body: &Option<Bytes>, eos: bool, attempt: u32) {
        let s = &mut *self.0;
        let Some(tx) = &s.body else {
            return;
        };
        if attempt != s.attempt {
            s.attempt = attempt;
            s.pos = 0;
        }
        if let Some(b) = body {
            let end = s.pos + b.len() as u64;
            if end > s.forwarded {
                if end > s.max_body {
                    s.abort(Outcome::Skipped);
                    return;
                }
                let fresh = b.slice((s.forwarded - s.pos) as usize..);
                match tx.try_send(Msg::Chunk(fresh)) {
                    Ok(()) => s.forwarded = end,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        s.abort(Outcome::Dropped);
                        return;
                    }
                    // The task already gave up (staging failed); it counts that itself.
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        s.body = None;
                        return;
                    }
                }
            }
            s.pos = end;
        }
        if eos && s.pos >= s.forwarded {
            if let Some(tx) = s.body.take() {
                // The queue had room for every chunk, and End follows the last one.
                let _ = tx.try_send(Msg::End);
            }
        }
    }

    /// The production response header, before Shellac adds its own fields (Cache-Status, Age
    /// on hits, Via, X-Request-Id), so only what the origin (or the stored copy) said is compared.
    pub fn response(&mut self, resp: &ResponseHeader) {
        let s = &mut *self.0;
        s.status = resp.status.as_u16();
        s.headers = resp.headers.clone();
        if s.body_rules {
            let keep = compare::is_json(&s.headers).then_some(s.max_body);
            s.digest = Some(compare::Digest::new(keep));
        }
    }

    pub fn response_body(&mut self, body: &Option<Bytes>) {
        if let (Some(d), Some(b)) = (&mut self.0.digest, body) {
            d.update(b);
        }
    }

    /// The request is over; `failed`: it ended in an error, so the production side is not a
    /// complete answer to compare with.
    pub fn finish(self, failed: bool) {
        let mut s = self.0;
        if s.body.take().is_some() {
            // The body never went upstream in full (a hit, or an error before it was read).
            s.aborted.get_or_insert(Outcome::Skipped);
        }
        if failed || s.status == 0 {
            s.aborted.get_or_insert(Outcome::Skipped);
        }
        let prod = Production {
            aborted: s.aborted,
            side: compare::Side {
                status: s.status,
                headers: std::mem::take(&mut s.headers),
                body: s.digest.take().map(compare::Digest::finish),
            },
        };
        if let Some(tx) = s.prod.take() {
            let _ = tx.send(prod);
        }
    }
}

impl State {
    /// Stops forwarding the body; dropping the sender without `End` tells the task to give up.
    fn abort(&mut self, why: Outcome) {
        self.body = None;
        self.aborted.get_or_insert(why);
    }
}

/// One xorshift64 draw per request; seeded per thread from the OS-keyed `RandomState`.
fn sampled(threshold: u64) -> bool {
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            use std::hash::{BuildHasher, Hasher};
            x = std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
                | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) < threshold
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_rate_is_close_to_the_fraction() {
        let threshold = (0.25 * (1u64 << 53) as f64) as u64;
        let n = 100_000;
        let hits = (0..n).filter(|_| sampled(threshold)).count();
        // σ of a binomial(100000, 0.25) is about 137; the seed is random, so the bound is 5σ
        // (3σ failed about one run in 400). A fraction off by 1 % still falls outside it.
        assert!((24_315..=25_685).contains(&hits), "{hits}");
        assert!((0..1000).all(|_| sampled(1u64 << 53)));
        assert!(!(0..1000).any(|_| sampled(0)));
    }
}
