//! The out-of-band half of a fork: send the copy to staging, read its answer, wait for the
//! production side, compare, count, log. Everything here runs in its own task under the fork's
//! deadline; nothing on the production path ever awaits it.

use super::compare::{self, Side};
use super::{Outcome, Route};
use crate::config::MirrorLimits;
use crate::metrics;
use bytes::Bytes;
use parking_lot::Mutex;
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::upstreams::peer::Peer;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

/// State shared by every fork of every route.
pub(super) struct Shared {
    pub permits: Arc<Semaphore>,
    timeout: Duration,
    /// Its own keep-alive pool: staging connections never compete with production ones.
    connector: Connector,
    log: Option<Log>,
}

impl Shared {
    pub fn new(limits: &MirrorLimits) -> Shared {
        Shared {
            permits: Arc::new(Semaphore::new(limits.max_inflight)),
            timeout: limits.timeout,
            connector: Connector::new(None),
            log: limits.log.as_ref().map(|l| Log {
                path: l.path.clone(),
                per_minute: l.max_lines_per_minute,
                window: Mutex::new((0, 0)),
            }),
        }
    }

    /// Writes `request` + `detail()` to the mismatch log if the rate allows; `detail` is only
    /// formatted when the line will be written.
    pub fn log_line(&self, route: &str, request: &str, detail: impl FnOnce() -> String) {
        let Some(log) = &self.log else {
            return;
        };
        if !log.admit() {
            metrics::MIRROR_LOG_LINES
                .with_label_values(&["suppressed"])
                .inc();
            return;
        }
        let line = sanitize(&format!(
            "{} route={route} {request} {}",
            httpdate::fmt_http_date(SystemTime::now()),
            detail()
        ));
        let path = log.path.clone();
        // File I/O off the async workers; the rate limit bounds how many of these exist.
        tokio::task::spawn_blocking(move || {
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
            let result = if written.is_ok() { "written" } else { "failed" };
            metrics::MIRROR_LOG_LINES.with_label_values(&[result]).inc();
        });
    }
}

/// The mismatch log: opened per line (so rotation needs no signal), at most `per_minute` lines
/// in each wall-clock minute.
struct Log {
    path: PathBuf,
    per_minute: u32,
    /// (minute number, lines written in it); the lock is never held across an await.
    window: Mutex<(u64, u32)>,
}

impl Log {
    fn admit(&self) -> bool {
        let minute = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 60);
        let mut w = self.window.lock();
        if w.0 != minute {
            *w = (minute, 0);
        }
        w.1 += 1;
        w.1 <= self.per_minute
    }
}

/// Control characters (from request targets or header values) never break a log line.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

pub(super) enum Msg {
    Chunk(Bytes),
    End,
}

/// The production side of a fork, sent once the request is over.
pub(super) struct Production {
    /// Set when there is nothing to compare: the outcome to count instead.
    pub aborted: Option<Outcome>,
    pub side: Side,
}

pub(super) struct Job {
    pub peer: HttpPeer,
    pub req: RequestHeader,
    pub body: Option<mpsc::Receiver<Msg>>,
    pub prod: oneshot::Receiver<Production>,
    pub permit: OwnedSemaphorePermit,
    pub route: Arc<Route>,
    pub shared: Arc<Shared>,
    /// Request line and id, for the log.
    pub line: String,
}

enum Failure {
    /// Production stopped feeding the body; its side says why.
    Aborted,
    Staging(String),
}

pub(super) async fn run(job: Job) {
    let Job {
        peer,
        req,
        body,
        prod,
        permit,
        route,
        shared,
        line,
    } = job;
    metrics::MIRROR_INFLIGHT.inc();
    let deadline = tokio::time::Instant::from_std(Instant::now() + shared.timeout);
    let rules = &route.rules;
    let keep = route.max_body;
    let staged = match tokio::time::timeout_at(
        deadline,
        exchange(&shared.connector, &peer, req, body, rules.body, keep),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(Failure::Staging(format!(
            "no complete answer within mirror_limits.timeout ({:?})",
            shared.timeout
        ))),
    };
    let (outcome, detail) = match staged {
        Err(Failure::Staging(e)) => (Outcome::Error, Some(format!("error: staging {e}"))),
        staged => {
            // The production side may still be streaming to a slow client; it gets the rest of
            // the deadline, after which there is nothing complete to compare with.
            match (tokio::time::timeout_at(deadline, prod).await, staged) {
                (Ok(Ok(p)), Ok(s)) if p.aborted.is_none() => judge(&route, &p.side, &s),
                (Ok(Ok(p)), _) => (p.aborted.unwrap_or(Outcome::Skipped), None),
                _ => (Outcome::Skipped, None),
            }
        }
    };
    route.stats.count(outcome);
    if let Some(d) = detail {
        shared.log_line(&route.name, &line, || d);
    }
    metrics::MIRROR_INFLIGHT.dec();
    drop(permit);
}

fn judge(route: &Route, prod: &Side, staging: &Side) -> (Outcome, Option<String>) {
    let diffs = compare::compare(&route.rules, prod, staging);
    if diffs.is_empty() {
        return (Outcome::Match, None);
    }
    for (k, _) in &diffs {
        route.stats.count_kind(*k);
    }
    let kinds: Vec<&str> = diffs.iter().map(|(k, _)| k.label()).collect();
    let firsts: Vec<&str> = diffs.iter().map(|(_, d)| d.as_str()).collect();
    let detail = format!(
        "production={} staging={} mismatch={} {}",
        prod.status,
        staging.status,
        kinds.join(","),
        firsts.join("; ")
    );
    (Outcome::Mismatch, Some(detail))
}

/// One request to staging and its whole answer, digested like the production side.
async fn exchange(
    connector: &Connector,
    peer: &HttpPeer,
    req: RequestHeader,
    body: Option<mpsc::Receiver<Msg>>,
    digest_body: bool,
    keep: u64,
) -> Result<Side, Failure> {
    let io = |what: &str, e: Box<pingora::Error>| Failure::Staging(format!("{what}: {e}"));
    let (mut s, _reused) = connector
        .get_http_session(peer)
        .await
        .map_err(|e| io("connect", e))?;
    s.write_request_header(Box::new(req))
        .await
        .map_err(|e| io("write", e))?;
    if let Some(mut rx) = body {
        loop {
            match rx.recv().await {
                Some(Msg::Chunk(b)) => s
                    .write_request_body(b, false)
                    .await
                    .map_err(|e| io("write body", e))?,
                Some(Msg::End) => break,
                None => return Err(Failure::Aborted),
            }
        }
    }
    s.finish_request_body()
        .await
        .map_err(|e| io("write body", e))?;
    // Informational answers (100 Continue, 103 Early Hints) precede the real one.
    for _ in 0..8 {
        s.read_response_header().await.map_err(|e| io("read", e))?;
        let status = s.response_header().map_or(0, |h| h.status.as_u16());
        if !(100..200).contains(&status) || status == 101 {
            break;
        }
    }
    let Some(head) = s.response_header() else {
        return Err(Failure::Staging("read: no response header".into()));
    };
    let mut head = head.clone();
    // The production side was captured after the same hop-by-hop removal.
    crate::forward::upstream_response(&mut head);
    let mut digest =
        digest_body.then(|| compare::Digest::new(compare::is_json(&head.headers).then_some(keep)));
    while let Some(chunk) = s
        .read_response_body()
        .await
        .map_err(|e| io("read body", e))?
    {
        if let Some(d) = &mut digest {
            d.update(&chunk);
        }
    }
    connector
        .release_http_session(s, peer, peer.idle_timeout())
        .await;
    Ok(Side {
        status: head.status.as_u16(),
        headers: head.headers.clone(),
        body: digest.map(compare::Digest::finish),
    })
}
