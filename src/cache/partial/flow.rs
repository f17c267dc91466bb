//! Partial content through the hooks (with `cache.range_misses: forward`). The rules are
//! [`super`]'s pure functions; this reads their inputs from the session, keeps the per-request
//! state in [`Flow`] and reads and writes the partials through the tiers like any entry.
//!
//! 1. `proxy_upstream_filter`, on a miss of the full object for a single-range GET: a fresh
//!    stored partial that holds the range answers it ([`Cache::partial_lookup`],
//!    [`Cache::serve_partial`]); otherwise the client's `Range` (and `If-Range`) will be sent
//!    on ([`Cache::forward_range`]).
//! 2. `response_cache_filter`: the origin's 206 is judged as the 200 it is part of and, when it
//!    may be kept, captured as it streams ([`Cache::partial_decide`],
//!    [`Cache::partial_body`]); it is never stored under the full object's key.
//! 3. `logging`, once the body is complete: the part is combined with the stored one when
//!    their strong validators match, and written, as a 200 under the full object's key when it
//!    is now whole ([`Cache::partial_done`]).

use super::{Part, Span, Unstorable};
use crate::cache::policy::{self, Timing};
use crate::cache::{tags, Cache, CacheCtx};
use crate::config;
use crate::metrics;
use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use pingora::cache::key::CacheKey;
use pingora::cache::storage::{MissFinishType, PurgeType};
use pingora::cache::trace::Span as Trace;
use pingora::cache::{
    CacheEntryKey, CacheMeta, CachePhase, HitHandler, NoCacheReason, PurgeTarget, RespCacheable,
    Storage,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use std::time::SystemTime;

/// Per-request partial-content facts, in [`CacheCtx`].
#[derive(Default)]
pub struct Flow {
    /// The client's `Range` and `If-Range`, sent on with this miss.
    forward: Option<(HeaderValue, Option<HeaderValue>)>,
    /// The key of the full object this request missed.
    key: Option<CacheKey>,
    /// A stored partial existed but could not answer (RFC 9211 `fwd=partial`).
    pub had: bool,
    /// Answered from a stored partial: its age and remaining freshness, in seconds.
    pub served: Option<(u64, i64)>,
    /// The origin's 206, being kept as it streams.
    capture: Option<Capture>,
    /// Why the origin's answer to the forwarded range is not kept.
    pub unstorable: Option<Unstorable>,
}

impl Flow {
    /// The origin's 206 is being kept (`Cache-Status: stored`).
    pub fn storing(&self) -> bool {
        self.capture.is_some()
    }
}

struct Capture {
    /// Freshness and the stored fields, from the 206 judged as a 200.
    meta: CacheMeta,
    part: Part,
    body: Vec<Bytes>,
    len: u64,
}

/// A stored partial that answers this request.
pub struct Hit {
    key: CacheKey,
    meta: CacheMeta,
    hit: HitHandler,
    part: Part,
    span: Span,
}

impl Hit {
    /// The 206 for the span, before `response_filter` adds what every response gets.
    pub fn header(&self) -> ResponseHeader {
        super::served_header(self.meta.response_header(), self.part.complete, self.span)
    }
}

/// What became of a part, the `result` of `shellac_cache_partials_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    Stored,
    Combined,
    Completed,
    Failed,
}

impl Kept {
    fn label(self) -> &'static str {
        match self {
            Kept::Stored => "stored",
            Kept::Combined => "combined",
            Kept::Completed => "completed",
            Kept::Failed => "failed",
        }
    }
}

fn meta_with(m: &CacheMeta, header: ResponseHeader) -> CacheMeta {
    CacheMeta::new(
        m.fresh_until(),
        m.created(),
        m.stale_while_revalidate_sec(),
        m.stale_if_error_sec(),
        header,
    )
}

impl Cache {
    fn forwarding(&self, session: &Session, cx: &CacheCtx) -> bool {
        self.range_misses == config::RangeMisses::Forward
            && cx.enabled
            && matches!(session.cache.phase(), CachePhase::Miss)
            && session.subrequest_ctx.is_none()
            && super::forwardable(session.req_header())
    }

    /// `proxy_upstream_filter`: on a miss of the full object, the stored partial that answers
    /// this single-range GET (fresh, not purged, satisfying the client's own directives and
    /// wholly holding the range), or `None`; then the range goes to the origin. `bypass` (a
    /// rule's): nothing stored answers, but the origin's part is still kept.
    pub async fn partial_lookup(
        &self,
        session: &Session,
        cx: &mut CacheCtx,
        bypass: bool,
    ) -> Option<Hit> {
        if !self.forwarding(session, cx) {
            return None;
        }
        let req = session.req_header();
        let key = session.cache.maybe_cache_key()?;
        let range = req.headers.get(http::header::RANGE)?.clone();
        let if_range = req.headers.get(http::header::IF_RANGE).cloned();
        cx.partial.forward = Some((range, if_range));
        cx.partial.key = Some(key.clone());
        if bypass {
            return None;
        }
        let pkey = super::key_of(key);
        let (meta, hit) = self.storage.peek(&pkey).await.ok().flatten()?;
        cx.partial.had = true;
        let now = SystemTime::now();
        let honor = cx.rule.client_cache_control == config::ClientCacheControl::Honor;
        if !meta.is_fresh(now)
            || policy::on_hit(req, &meta, now, honor, &self.targeted).is_some()
            || self.inv.on_hit(req, &meta).await.is_some()
        {
            return None;
        }
        let span = super::answers(req, meta.response_header())?;
        let part = super::stored_part(meta.response_header())?;
        cx.partial = Flow {
            served: Some((
                policy::current_age(&meta, now).as_secs(),
                policy::ttl_secs(&meta, now),
            )),
            ..Flow::default()
        };
        cx.tier = Some(self.storage.tier_of(&hit));
        cx.from_cache = true;
        Some(Hit {
            key: pkey,
            meta,
            hit,
            part,
            span,
        })
    }

    /// Sends `header` (from [`Hit::header`], through `response_filter`) and the span's bytes,
    /// each also shown to `on_body` (what `response_body_filter` would see).
    pub async fn serve_partial(
        &self,
        session: &mut Session,
        found: Hit,
        header: ResponseHeader,
        mut on_body: impl FnMut(&Bytes),
    ) -> Result<()> {
        if let Some(full) = session.cache.maybe_cache_key() {
            // The fleet lease this miss may have won: no fill of the full object follows.
            self.storage.release(full, true);
        }
        metrics::CACHE_PARTIALS.with_label_values(&["hit"]).inc();
        session
            .write_response_header(Box::new(header), false)
            .await?;
        let Hit {
            key,
            mut hit,
            part,
            span,
            ..
        } = found;
        // Offsets in the stored body, end exclusive.
        let (from, to) = (
            span.first - part.span.first,
            span.last - part.span.first + 1,
        );
        let mut pos = 0;
        if hit.can_seek() && hit.seek(from as usize, Some(to as usize)).is_ok() {
            pos = from;
        }
        while pos < to {
            let Some(chunk) = hit.read_body().await? else {
                break;
            };
            let (start, n) = (pos, chunk.len() as u64);
            pos += n;
            let lo = from.saturating_sub(start).min(n) as usize;
            let hi = to.saturating_sub(start).min(n) as usize;
            if lo < hi {
                let out = chunk.slice(lo..hi);
                metrics::CACHE_SERVED_BYTES.inc_by(out.len() as u64);
                on_body(&out);
                session.write_response_body(Some(out), false).await?;
            }
        }
        if pos < to {
            return Error::e_explain(ErrorType::InternalError, "a stored partial ended early");
        }
        session.write_response_body(None, true).await?;
        let trace = Trace::inactive().handle();
        let _ = hit.finish(self.storage, &key, &trace).await;
        Ok(())
    }

    /// `upstream_request_filter`: the client's range, which Pingora removed to fetch the whole
    /// object, goes to the origin after all (with its `If-Range`).
    pub fn forward_range(&self, req: &mut RequestHeader, cx: &CacheCtx) -> Result<()> {
        if let Some((range, if_range)) = &cx.partial.forward {
            req.insert_header(http::header::RANGE, range.clone())?;
            if let Some(v) = if_range {
                req.insert_header(http::header::IF_RANGE, v.clone())?;
            }
        }
        Ok(())
    }

    /// `response_cache_filter` for the answer to a forwarded range. A 206 is never stored under
    /// the full object's key; it is kept as a partial when it passes the rules a complete
    /// response would (§3.3) and [`super::storable_part`]. A 416 is not stored. `None` for any
    /// other answer: a 200 is the whole object, and the ordinary rules decide.
    pub(in crate::cache) fn partial_decide(
        &self,
        req: &RequestHeader,
        resp: &ResponseHeader,
        cx: &mut CacheCtx,
        t: Timing,
    ) -> Option<RespCacheable> {
        cx.partial.forward.as_ref()?;
        match resp.status.as_u16() {
            206 => {
                let (h, o) = (self.heuristic, cx.overrides);
                let whole = super::as_complete(resp);
                match policy::storable_with(req, &whole, t, h, cx.rule.stale, &self.targeted, o) {
                    Err(reason) => {
                        cx.refusal = Some(reason);
                        metrics::CACHE_NOT_STORED
                            .with_label_values(&[reason.label()])
                            .inc();
                    }
                    Ok(meta) => match super::storable_part(resp, self.max_object as u64) {
                        Ok(part) => {
                            cx.partial.capture = Some(Capture {
                                meta,
                                part,
                                body: Vec::new(),
                                len: 0,
                            })
                        }
                        Err(u) => self.unstorable(cx, u),
                    },
                }
            }
            416 => self.unstorable(cx, Unstorable::Unsatisfiable),
            _ => return None,
        }
        if let Some(key) = &cx.partial.key {
            self.storage.release(key, true); // the full object is not being filled
        }
        Some(RespCacheable::Uncacheable(NoCacheReason::Custom(
            super::FORWARDED,
        )))
    }

    fn unstorable(&self, cx: &mut CacheCtx, u: Unstorable) {
        cx.partial.unstorable = Some(u);
        metrics::CACHE_NOT_STORED
            .with_label_values(&[u.label()])
            .inc();
    }

    /// `upstream_response_body_filter`: the kept 206's bytes, as they pass (a body longer than
    /// its `Content-Range` is not kept).
    pub fn partial_body(&self, body: &Option<Bytes>, cx: &mut CacheCtx) {
        let (Some(c), Some(b)) = (&mut cx.partial.capture, body) else {
            return;
        };
        c.len += b.len() as u64;
        if c.len > c.part.span.size() {
            cx.partial.capture = None;
            self.unstorable(cx, Unstorable::Length);
            return;
        }
        c.body.push(b.clone());
    }

    /// `logging`: a kept 206 whose body arrived whole (`complete`) is combined and written.
    pub async fn partial_done(&self, cx: &mut CacheCtx, complete: bool) {
        let (Some(c), Some(key)) = (cx.partial.capture.take(), cx.partial.key.take()) else {
            return;
        };
        if !complete {
            return; // the origin or the client went away: nothing whole to keep
        }
        if c.len != c.part.span.size() {
            self.unstorable(cx, Unstorable::Length);
            return;
        }
        let kept = self.keep(&key, c).await;
        metrics::CACHE_PARTIALS
            .with_label_values(&[kept.label()])
            .inc();
    }

    async fn keep(&self, key: &CacheKey, c: Capture) -> Kept {
        let pkey = super::key_of(key);
        let mut part = c.part;
        let mut body: Bytes = match c.body.as_slice() {
            [one] => one.clone(),
            many => many
                .iter()
                .fold(BytesMut::with_capacity(c.len as usize), |mut b, x| {
                    b.extend_from_slice(x);
                    b
                })
                .freeze(),
        };
        let mut kept = Kept::Stored;
        if let Some(combined) = self.combine_stored(&pkey, &c.meta, part, &body).await {
            (part.span, body, kept) = (combined.0, combined.1, Kept::Combined);
        }
        let header = c.meta.response_header();
        if part.is_whole() {
            let meta = meta_with(&c.meta, super::complete_header(header, part.complete));
            if !self.write(key, meta, body).await {
                return Kept::Failed;
            }
            // The whole object answers every range now; the part is dead weight.
            let trace = Trace::inactive().handle();
            let exact = CacheEntryKey::key_only(pkey.to_compact());
            let target = PurgeTarget::Exact(&exact);
            let _ = self
                .storage
                .purge(target, PurgeType::Eviction, &trace)
                .await;
            return Kept::Completed;
        }
        let mut meta = meta_with(&c.meta, super::partial_header(header, part));
        meta.set_variance(super::variance());
        match self.write(&pkey, meta, body).await {
            true => kept,
            false => Kept::Failed,
        }
    }

    /// §3.4: the union of the stored part and this one, when they combine and it fits.
    async fn combine_stored(
        &self,
        pkey: &CacheKey,
        new_meta: &CacheMeta,
        new: Part,
        new_body: &Bytes,
    ) -> Option<(Span, Bytes)> {
        let (meta, mut hit) = self.storage.peek(pkey).await.ok().flatten()?;
        let old = super::stored_part(meta.response_header())?;
        let union = super::combine(meta.response_header(), old, new_meta.response_header(), new)?;
        if union == new.span || union.size() > self.max_object as u64 {
            return None; // nothing to add, or too large to keep
        }
        let mut old_body = Vec::with_capacity(old.span.size() as usize);
        while let Some(b) = hit.read_body().await.ok()? {
            if (old_body.len() + b.len()) as u64 > old.span.size() {
                return None;
            }
            old_body.extend_from_slice(&b);
        }
        let merged = super::merge(union, old.span, &old_body, new.span, new_body)?;
        Some((union, merged.into()))
    }

    /// Writes one object through the tiers; whether any stored it.
    async fn write(&self, key: &CacheKey, mut meta: CacheMeta, body: Bytes) -> bool {
        tags::store(meta.response_header_mut(), &self.tags.header);
        let trace = Trace::inactive().handle();
        let Ok(mut miss) = self.storage.get_miss_handler(key, &meta, &trace).await else {
            return false;
        };
        if miss.write_body(body, true).await.is_err() {
            return false;
        }
        matches!(miss.finish().await, Ok(MissFinishType::Created(n)) if n > 0)
    }
}
