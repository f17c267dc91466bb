//! Upstream groups: backend selection through pingora-load-balancing, active health checks run
//! as background services, and the per-backend connection settings.

use crate::config::{self, CheckKind, ConfigError, Selection};
use crate::metrics;
use async_trait::async_trait;
use pingora::lb::health_check::{HealthCheck, HealthObserve, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{consistent::KetamaHashing, BackendIter, BackendSelection};
use pingora::lb::selection::{Random, RoundRobin};
use pingora::lb::{discovery, Backend, Backends, LoadBalancer};
use pingora::prelude::HttpPeer;
use pingora::server::Server;
use pingora::services::background::background_service;
use prometheus::{Histogram, IntCounter};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How far selection walks the ring or weight table looking for a usable backend.
const MAX_SELECT_ITERATIONS: usize = 256;

enum Balancer {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Random(Arc<LoadBalancer<Random>>),
    Consistent(Arc<LoadBalancer<KetamaHashing>>),
}

/// Metric handles resolved once at start-up so the request path does no label lookups.
pub struct BackendStats {
    pub addr: SocketAddr,
    /// Indexed by status class: 1xx, 2xx, 3xx, 4xx, 5xx, error.
    pub responses: [IntCounter; 6],
    pub duration: Histogram,
}

impl BackendStats {
    pub fn record(&self, status: u16, elapsed: Duration) {
        let i = match status {
            100..=599 => (status / 100 - 1) as usize,
            _ => 5,
        };
        self.responses[i].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

pub struct Group {
    pub name: String,
    balancer: Balancer,
    pub consistent: bool,
    pub retries: u32,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    idle_timeout: Duration,
    /// Pingora's `work_stealing: false`: each worker thread keeps its own origin connections
    /// (see [`Group::peer`]).
    per_thread_pool: bool,
    stats: Vec<BackendStats>,
}

impl Group {
    /// Builds the group and registers its health checks with the server. Everything that can
    /// fail fails here, as an error naming the key (`-t` runs this same code, so a config that
    /// passes `-t` cannot fail or panic at start).
    pub fn new(
        server: &mut Server,
        name: &str,
        conf: &config::Upstream,
    ) -> Result<Group, ConfigError> {
        let mut backends = BTreeSet::new();
        for (i, b) in conf
            .backends
            .iter()
            .enumerate()
            .filter(|(_, b)| b.weight > 0)
        {
            let backend = Backend::new_with_weight(&b.addr.to_string(), b.weight as usize)
                .map_err(|e| ConfigError {
                    path: format!("upstreams.{name}.backends[{i}]"),
                    message: format!("not usable as a backend: {e}"),
                })?;
            backends.insert(backend);
        }
        let check = match &conf.health_check {
            Some(hc) => Some((health_check(name, hc)?, hc.interval)),
            None => None,
        };
        let balancer = match conf.selection {
            Selection::RoundRobin => Balancer::RoundRobin(spawn(server, name, check, &backends)),
            Selection::Random => Balancer::Random(spawn(server, name, check, &backends)),
            Selection::Consistent => Balancer::Consistent(spawn(server, name, check, &backends)),
        };
        let stats = conf
            .backends
            .iter()
            .map(|b| {
                let label = b.addr.to_string();
                let l =
                    |class| metrics::UPSTREAM_REQUESTS.with_label_values(&[name, &label, class]);
                metrics::BACKEND_HEALTHY
                    .with_label_values(&[name, &label])
                    .set(1);
                BackendStats {
                    addr: b.addr,
                    responses: [l("1xx"), l("2xx"), l("3xx"), l("4xx"), l("5xx"), l("error")],
                    duration: metrics::UPSTREAM_DURATION.with_label_values(&[name, &label]),
                }
            })
            .collect();
        Ok(Group {
            name: name.to_string(),
            balancer,
            consistent: conf.selection == Selection::Consistent,
            retries: conf.retries,
            connect_timeout: conf.connect_timeout,
            read_timeout: conf.read_timeout,
            write_timeout: conf.write_timeout,
            idle_timeout: conf.idle_timeout,
            per_thread_pool: !server.configuration.work_stealing,
            stats,
        })
    }

    /// The first healthy backend for `key` that `skip` does not exclude.
    pub fn select(&self, key: &[u8], skip: impl Fn(&Backend) -> bool) -> Option<Backend> {
        let accept = |b: &Backend, healthy: bool| healthy && !skip(b);
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Balancer::Random(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
            Balancer::Consistent(lb) => lb.select_with(key, MAX_SELECT_ITERATIONS, accept),
        }
    }

    /// The backend for `req`: Ketama groups hash host + path + query, the others ignore the key.
    pub fn select_for(
        &self,
        req: &pingora::http::RequestHeader,
        skip: impl Fn(&Backend) -> bool,
    ) -> Option<Backend> {
        if !self.consistent {
            return self.select(b"", skip);
        }
        let authority = crate::authority::Authority::of(req);
        let host = authority.host().as_bytes();
        let pq = req
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes();
        let mut key = Vec::with_capacity(host.len() + pq.len());
        key.extend_from_slice(host);
        key.extend_from_slice(pq);
        self.select(&key, skip)
    }

    pub fn peer(&self, backend: &Backend) -> HttpPeer {
        let mut peer = HttpPeer::new(backend, false, String::new());
        let o = &mut peer.options;
        o.connection_timeout = Some(self.connect_timeout);
        o.read_timeout = Some(self.read_timeout);
        o.write_timeout = Some(self.write_timeout);
        o.idle_timeout = Some(self.idle_timeout);
        if self.per_thread_pool {
            // Without work stealing each worker thread is its own runtime, and a pooled socket
            // is driven only by the reactor of the thread that dialled it: reused from another
            // thread, its reads wait until that thread is idle (a 968 ms p99 on pass-through
            // in docs/performance.md). The group key puts the thread into the pool's key.
            peer.group_key = worker_slot();
        }
        peer
    }

    pub fn stats(&self, backend: &Backend) -> Option<&BackendStats> {
        let addr = backend.addr.as_inet()?;
        self.stats.iter().find(|s| s.addr == *addr)
    }
}

/// A number for the calling thread, fixed for its lifetime: its share of the origin pool.
fn worker_slot() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    thread_local! {
        static SLOT: u64 = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    SLOT.with(|s| *s)
}

/// Creates the load balancer and, when health checks are configured, the background service
/// that runs them. Without the service checks never run and every backend stays "healthy".
fn spawn<S>(
    server: &mut Server,
    name: &str,
    check: Option<(Box<dyn HealthCheck + Send + Sync>, Duration)>,
    backends: &BTreeSet<Backend>,
) -> Arc<LoadBalancer<S>>
where
    S: BackendSelection + Send + Sync + 'static,
    S::Iter: BackendIter,
    S::Config: Send + Sync,
{
    let discovery = discovery::Static::new(backends.clone());
    let mut lb = LoadBalancer::<S>::from_backends(Backends::new(discovery));
    // Static discovery: one update fills the selector; it never blocks or fails.
    now_or_never(lb.update()).expect("static discovery cannot fail");
    let Some((check, interval)) = check else {
        return Arc::new(lb);
    };
    lb.set_health_check(check);
    lb.health_check_frequency = Some(interval);
    lb.parallel_health_check = true;
    let service = background_service(&format!("health checks for {name}"), lb);
    let lb = service.task();
    server.add_service(service);
    lb
}

fn now_or_never<F: std::future::Future>(f: F) -> F::Output {
    // The future is ready immediately (static discovery); poll it once without a runtime.
    let mut f = std::pin::pin!(f);
    let waker = std::task::Waker::noop();
    match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => unreachable!("static discovery does not block"),
    }
}

/// The configured check. Pingora's `HttpHealthCheck::new` unwraps the Host header and the
/// request target is parsed here: both are checked first, so a bad value is an error naming the
/// key instead of a panic at start.
fn health_check(
    upstream: &str,
    hc: &config::HealthCheck,
) -> Result<Box<dyn HealthCheck + Send + Sync>, ConfigError> {
    let at = |key: &str, message: String| ConfigError {
        path: format!("upstreams.{upstream}.health_check.{key}"),
        message,
    };
    let observer = Box::new(HealthGauge(upstream.to_string()));
    Ok(match hc.kind {
        CheckKind::Tcp => {
            let mut c = TcpHealthCheck::new();
            c.consecutive_failure = hc.failures;
            c.consecutive_success = hc.successes;
            c.peer_template.options.connection_timeout = Some(hc.timeout);
            c.health_changed_callback = Some(observer);
            c
        }
        CheckKind::Http => {
            if http::HeaderValue::from_str(&hc.host).is_err()
                || !crate::authority::valid(hc.host.as_bytes())
                || hc.host.is_empty()
            {
                return Err(at(
                    "host",
                    format!("{:?} is not a host[:port] for the Host header", hc.host),
                ));
            }
            let path = hc.path.as_str();
            let uri: http::Uri = match path.parse() {
                Ok(u) if path.starts_with('/') => u,
                _ => {
                    return Err(at(
                        "path",
                        format!("{path:?} is not a request path (percent-encode spaces and other reserved bytes)"),
                    ))
                }
            };
            let mut c = HttpHealthCheck::new(&hc.host, false);
            c.consecutive_failure = hc.failures;
            c.consecutive_success = hc.successes;
            c.peer_template.options.connection_timeout = Some(hc.timeout);
            c.peer_template.options.read_timeout = Some(hc.timeout);
            c.req.set_uri(uri);
            c.validator = Some(Box::new(|resp| {
                if resp.status.is_success() {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::CustomCode("health check status", resp.status.as_u16()),
                        "health check answered with a non-2xx status",
                    )
                }
            }));
            c.health_changed_callback = Some(observer);
            Box::new(c)
        }
    })
}

struct HealthGauge(String);

#[async_trait]
impl HealthObserve for HealthGauge {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let backend = target.addr.to_string();
        log::warn!(
            "upstream {} backend {backend} is now {}",
            self.0,
            if healthy { "healthy" } else { "unhealthy" }
        );
        metrics::BACKEND_HEALTHY
            .with_label_values(&[&self.0, &backend])
            .set(healthy as i64);
    }
}
/// Whether a request whose upstream connection failed after it was sent may go again, to
/// another backend: only an idempotent method (RFC 9110 §9.2.2) whose body Pingora still holds,
/// when the connection closed or reset before any answer: a pooled connection the origin closed
/// as it was reused, or a new one accepted by a dying origin's backlog (nginx's default
/// `proxy_next_upstream error` does the same). A timeout is not retried: the origin may still be
/// working on the request.
pub fn retry_after_send(
    method: &http::Method,
    answered: bool,
    body_truncated: bool,
    error: &pingora::ErrorType,
) -> bool {
    use pingora::ErrorType::*;
    method.is_idempotent()
        && !answered
        && !body_truncated
        && matches!(error, ConnectionClosed | ReadError | WriteError)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_slot_and_threads_get_their_own() {
        let here = worker_slot();
        assert_eq!(worker_slot(), here);
        let there = std::thread::spawn(worker_slot).join().unwrap();
        assert_ne!(there, here);
    }

    #[test]
    fn only_idempotent_unanswered_requests_on_dead_connections_go_again() {
        use pingora::ErrorType::*;
        let get = http::Method::GET;
        assert!(retry_after_send(&get, false, false, &ConnectionClosed));
        assert!(retry_after_send(&get, false, false, &ReadError));
        assert!(!retry_after_send(
            &http::Method::POST,
            false,
            false,
            &ReadError
        ));
        assert!(
            !retry_after_send(&get, true, false, &ReadError),
            "already answered"
        );
        assert!(
            !retry_after_send(&get, false, true, &ReadError),
            "body not held"
        );
        assert!(!retry_after_send(&get, false, false, &ReadTimedout));
    }
}
