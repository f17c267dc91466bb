//! Never a short body that looks complete: a hit from the shared tier whose body fails after
//! the header went out (a chunk evicted, late or unreadable, memcached hung or dead) continues
//! from the origin with `Range` guarded by `If-Range` (the stored validator). The origin's
//! answer is used only if it is provably the same representation: a 206 whose `Content-Range`
//! is exactly the missing part, or a 200 carrying the stored strong validator (whose first bytes
//! are skipped). Anything else, or no validator, or an origin error, ends the response with an
//! error: the connection is aborted and the client sees a truncated transfer, never a wrong or
//! silently short object. Both outcomes are counted (`shellac_cache_body_resumes_total`).

use crate::metrics;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::cache::storage::{HandleHit, HitHandler};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, Storage};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::any::Any;
use std::sync::LazyLock;

static CONNECTOR: LazyLock<Connector> = LazyLock::new(|| Connector::new(None));

fn content_length(meta: &CacheMeta) -> Option<usize> {
    let v = meta.headers().get(header::CONTENT_LENGTH)?;
    crate::limits::parse_content_length(v).map(|n| n as usize)
}

/// How to ask the origin for the rest of a stored body.
pub struct Source {
    peer: HttpPeer,
    request: RequestHeader,
    /// `If-Range` value and the response header that must carry it on a 200.
    validator: (HeaderName, HeaderValue),
    total: usize,
}

impl Source {
    /// `None` when the stored response cannot be resumed safely: no strong validator, or no
    /// known length.
    pub fn new(peer: HttpPeer, req: &RequestHeader, meta: &CacheMeta) -> Option<Source> {
        let h = meta.headers();
        let total = content_length(meta)?;
        let validator = match (h.get(header::ETAG), h.get(header::LAST_MODIFIED)) {
            (Some(e), _) if !e.as_bytes().starts_with(b"W/") => (header::ETAG, e.clone()),
            (_, Some(lm)) => (header::LAST_MODIFIED, lm.clone()),
            _ => return None,
        };
        let mut request =
            RequestHeader::build("GET", req.uri.path_and_query()?.as_str().as_bytes(), None)
                .ok()?;
        // The same representation: the request fields the stored response varies on.
        let mut copy: Vec<HeaderName> = vec![header::HOST, header::ACCEPT_ENCODING];
        for v in h.get_all(header::VARY) {
            for name in v.to_str().unwrap_or("").split(',') {
                if let Ok(n) = HeaderName::from_bytes(name.trim().as_bytes()) {
                    copy.push(n);
                }
            }
        }
        for name in copy {
            for v in req.headers.get_all(&name) {
                request.append_header(name.clone(), v.clone()).ok()?;
            }
        }
        Some(Source {
            peer,
            request,
            validator,
            total,
        })
    }

    /// The origin's body from `from` to `end` (exclusive), checked to be the stored object's.
    async fn open(&self, from: usize, end: usize) -> Result<OriginBody> {
        let mut req = self.request.clone();
        req.insert_header(header::RANGE, format!("bytes={from}-{}", end - 1))?;
        req.insert_header(header::IF_RANGE, self.validator.1.clone())?;
        let (mut session, _) = CONNECTOR.get_http_session(&self.peer).await?;
        session.write_request_header(Box::new(req)).await?;
        session.finish_request_body().await?;
        session.read_response_header().await?;
        let resp = session
            .response_header()
            .ok_or_else(|| Error::explain(ErrorType::InvalidHTTPHeader, "no response header"))?;
        let want_range = format!("bytes {from}-{}/{}", end - 1, self.total);
        let skip = match resp.status.as_u16() {
            206 if resp
                .headers
                .get(header::CONTENT_RANGE)
                .is_some_and(|v| v.as_bytes() == want_range.as_bytes()) =>
            {
                0
            }
            200 if resp.headers.get(&self.validator.0) == Some(&self.validator.1) => from,
            s => {
                return Error::e_explain(
                    ErrorType::HTTPStatus(s),
                    "the origin's answer is not the stored representation",
                )
            }
        };
        Ok(OriginBody {
            session,
            skip,
            left: end - from,
        })
    }
}

struct OriginBody {
    session: HttpSession,
    /// Leading bytes to drop (a 200 with the whole body) and bytes still owed.
    skip: usize,
    left: usize,
}

impl OriginBody {
    async fn next(&mut self) -> Result<Option<Bytes>> {
        while self.left > 0 {
            let Some(mut b) = self.session.read_response_body().await? else {
                return Error::e_explain(ErrorType::ReadError, "the origin's body ended short");
            };
            if self.skip > 0 {
                let n = self.skip.min(b.len());
                self.skip -= n;
                b = b.slice(n..);
            }
            if b.is_empty() {
                continue;
            }
            b.truncate(self.left);
            self.left -= b.len();
            return Ok(Some(b));
        }
        Ok(None)
    }
}

/// A shared-tier hit that continues from the origin when its body fails mid-way.
pub struct Resumable {
    inner: HitHandler,
    source: Option<Source>,
    total: Option<usize>,
    /// Next byte to deliver and the end (exclusive) of the requested range.
    pos: usize,
    end: usize,
    origin: Option<OriginBody>,
}

impl Resumable {
    fn wrap(inner: HitHandler, source: Option<Source>, meta: &CacheMeta) -> HitHandler {
        let total = content_length(meta);
        Box::new(Resumable {
            inner,
            pos: 0,
            end: total.unwrap_or(usize::MAX),
            total,
            source,
            origin: None,
        })
    }
}

/// `cache_hit_filter`, after [`super::Cache::on_hit`]: makes a shared-tier hit resumable from the origin (see the module docs); `peer` picks the
/// origin the rest would come from. A hit that cannot be resumed safely is still wrapped, so its
/// abort is counted.
pub fn guard(
    cx: &super::CacheCtx,
    hit: &mut HitHandler,
    req: &RequestHeader,
    meta: &CacheMeta,
    peer: impl FnOnce() -> Option<HttpPeer>,
) {
    if cx.tier != Some("memcached") {
        return; // memory hits cannot fail mid-body
    }
    let source = peer().and_then(|p| Source::new(p, req, meta));
    let inner = std::mem::replace(hit, Box::new(Taken));
    *hit = Resumable::wrap(inner, source, meta);
}

/// Stands in for a hit handler while it is being wrapped.
struct Taken;

#[async_trait]
impl HandleHit for Taken {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        Ok(None)
    }
    async fn finish(
        self: Box<Self>,
        _s: &'static (dyn Storage + Sync),
        _k: &CacheKey,
        _t: &SpanHandle,
    ) -> Result<()> {
        Ok(())
    }
    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }
    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

fn count(result: &str) {
    metrics::CACHE_BODY_RESUMES
        .with_label_values(&[result])
        .inc();
}

#[async_trait]
impl HandleHit for Resumable {
    async fn read_body(&mut self) -> Result<Option<Bytes>> {
        if let Some(o) = &mut self.origin {
            let b = o.next().await?;
            if let Some(b) = &b {
                self.pos += b.len();
            }
            return Ok(b);
        }
        match self.inner.read_body().await {
            Ok(Some(b)) => {
                self.pos += b.len();
                Ok(Some(b))
            }
            Ok(None) if self.total.is_none() || self.pos >= self.end => Ok(None),
            // A store that ends early is as broken as one that fails.
            Ok(None) => self.resume(None).await,
            Err(e) => self.resume(Some(e)).await,
        }
    }

    async fn finish(
        self: Box<Self>,
        storage: &'static (dyn Storage + Sync),
        key: &CacheKey,
        trace: &SpanHandle,
    ) -> Result<()> {
        self.inner.finish(storage, key, trace).await
    }

    fn can_seek(&self) -> bool {
        self.inner.can_seek()
    }

    fn seek(&mut self, start: usize, end: Option<usize>) -> Result<()> {
        self.pos = start;
        let total = self.total.unwrap_or(usize::MAX);
        self.end = end.unwrap_or(total).min(total);
        self.inner.seek(start, end)
    }

    fn as_any(&self) -> &(dyn Any + Send + Sync) {
        self
    }

    fn as_any_mut(&mut self) -> &mut (dyn Any + Send + Sync) {
        self
    }
}

impl Resumable {
    async fn resume(&mut self, cause: Option<Box<Error>>) -> Result<Option<Bytes>> {
        let opened = match &self.source {
            Some(s) if self.pos < self.end => s.open(self.pos, self.end).await,
            _ => Error::e_explain(ErrorType::InternalError, "no strong validator or length"),
        };
        match opened {
            Ok(o) => {
                log::info!(
                    "shared tier body failed at byte {} ({}); the rest comes from the origin",
                    self.pos,
                    cause
                        .as_ref()
                        .map_or("ended early".into(), |e| e.to_string())
                );
                count("resumed");
                self.origin = Some(o);
                Box::pin(self.read_body()).await
            }
            Err(e) => {
                log::warn!(
                    "shared tier body failed at byte {} and the origin cannot continue it ({e}); aborting the response",
                    self.pos
                );
                count("aborted");
                Err(cause.unwrap_or(e))
            }
        }
    }
}
