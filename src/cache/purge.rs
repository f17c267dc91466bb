//! Removing stored responses: the `PURGE` method (operators) and §4.4 invalidation after
//! unsafe methods (the origin's own writes). Both remove every Vary variant from every tier
//! and, through the fleet's purge marker, from every other node within `purge_check`.

use super::policy::invalidate::{invalidates, same_origin_path};
use super::tiered::Tiered;
use super::{key, CacheRule};
use crate::authority::Authority;
use crate::config::Cidr;
use crate::metrics;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

pub struct Purger {
    pub(super) storage: &'static Tiered,
    pub(super) inv: &'static super::invalidation::Invalidator,
    pub(super) allow: Vec<Cidr>,
}

impl Purger {
    /// A `PURGE` on the public listener: allowed by TCP peer address only (a forwarded-for
    /// header is never trusted for this), answered here and never forwarded. 200 if something
    /// was removed, 404 if not, 403 for other clients, 503 if the fleet could not be told.
    pub async fn purge(&self, session: &mut Session) -> Result<()> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let allowed = peer.is_some_and(|ip| self.allow.iter().any(|c| c.contains(ip)));
        let (code, result) = if !allowed {
            (403, "forbidden")
        } else {
            match self.by_headers(session.req_header()).await {
                Ok(true) => (200, "purged"),
                Ok(false) => (404, "not_found"),
                Err(e) => {
                    // This node's copy is gone but the fleet was not told: the operator must
                    // retry, so this is not reported as done.
                    log::warn!("purge did not reach memcached: {e}");
                    (503, "failed")
                }
            }
        };
        metrics::CACHE_PURGES.with_label_values(&[result]).inc();
        if !session.is_body_empty() {
            // We never read a PURGE body; the connection cannot carry another request.
            session.set_keepalive(None);
        }
        let mut resp = ResponseHeader::build(code, Some(3))?;
        resp.insert_header(http::header::CONTENT_LENGTH, 0)?;
        resp.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        session.write_response_header(Box::new(resp), true).await
    }

    /// `Shellac-Purge-Tags: a b` purges those tags instead of the URL; `Shellac-Purge-Soft: 1`
    /// marks stale instead of removing (see [`super::invalidation`]).
    async fn by_headers(&self, req: &pingora::http::RequestHeader) -> Result<bool, String> {
        let header = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
        let soft = header("shellac-purge-soft").is_some_and(|v| v.trim() == "1");
        let Some(list) = header("shellac-purge-tags") else {
            return super::invalidation::url::purge(self.storage, &key::for_request(req), soft)
                .await;
        };
        let tags: Vec<&str> = list.split([' ', ',']).filter(|t| !t.is_empty()).collect();
        if tags.is_empty() || tags.len() > super::invalidation::MAX_ITEMS {
            return Ok(false);
        }
        for t in tags {
            self.inv
                .purge(&super::invalidation::Target::Tag(t.to_string()), soft)
                .await?;
        }
        Ok(true)
    }

    /// §4.4: after an unsafe method's non-error response, the target URI and same-origin
    /// `Location`/`Content-Location` URIs are invalidated.
    pub async fn after_unsafe(&self, session: &Session, resp: &ResponseHeader, rule: &CacheRule) {
        let req = session.req_header();
        if !rule.enabled || !invalidates(&req.method, resp.status.as_u16()) {
            return;
        }
        let authority = Authority::of(req);
        let raw = crate::authority::raw(req);
        let mut n = self.invalidate(&authority, key::path_and_query(req)).await;
        for h in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
            if let Some(path) = resp
                .headers
                .get(&h)
                .and_then(|v| same_origin_path(v.as_bytes(), raw))
            {
                n += self.invalidate(&authority, path).await;
            }
        }
        metrics::CACHE_PURGES
            .with_label_values(&["invalidated"])
            .inc_by(n);
    }

    async fn invalidate(&self, authority: &Authority<'_>, path: &[u8]) -> u64 {
        match self.storage.purge_all(&key::of(authority, path)).await {
            Ok(found) => found as u64,
            Err(e) => {
                log::warn!("invalidation did not reach the shared tier: {e}");
                0
            }
        }
    }
}

/// What a store reports to Pingora for a purge that did or did not remove something (we hand
/// out no entry ids).
pub(super) fn outcome(found: bool) -> pingora::cache::PurgeOutcome {
    if found {
        pingora::cache::PurgeOutcome::Purged(None)
    } else {
        pingora::cache::PurgeOutcome::NotFound
    }
}
