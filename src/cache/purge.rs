//! Removing stored responses: the `PURGE` method (operators) and §4.4 invalidation after
//! unsafe methods (the origin's own writes). Both remove every Vary variant from every tier
//! and, through the fleet's purge marker, from every other node within `purge_check`.
//!
//! Who may purge: a real client address (see [`crate::client`]) in `admin.purge_allow`, or any
//! address with `Authorization: Bearer <admin.purge_token_file's secret>`. The method is
//! matched exactly (`purge` is another, unknown method, and is forwarded).
//!
//! Invalidation is for `cache.invalidate_on` methods only, and the purge markers it writes to
//! memcached are bounded per node by a token bucket (`cache.memcached.invalidations_per_second`):
//! anyone can send POSTs, and each would otherwise add a fleet-wide marker item. Over the rate
//! the object is still removed from this node's memory and from memcached (a delete adds
//! nothing), but other nodes are not told and keep their memory copies until they expire.

use super::policy::invalidate::{invalidates, same_origin_path};
use super::tiered::Tiered;
use super::{key, CacheRule};
use crate::authority::Authority;
use crate::config::{Cidr, PurgeToken};
use crate::metrics;
use parking_lot::Mutex;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;
use std::net::IpAddr;
use std::time::Instant;

pub struct Purger {
    pub(super) storage: &'static Tiered,
    pub(super) inv: &'static super::invalidation::Invalidator,
    pub(super) allow: Vec<Cidr>,
    pub(super) token: Option<PurgeToken>,
    pub(super) invalidate_on: Vec<http::Method>,
    /// Fleet-wide invalidations left this second; `None` without a shared tier.
    pub(super) fleet_budget: Option<Bucket>,
}

/// Who sent a PURGE, as far as the ACL is concerned.
#[derive(Debug, PartialEq, Eq)]
enum Caller {
    Allowed,
    Forbidden,
    BadToken,
}

impl Purger {
    /// A `PURGE` on the public listener, answered here and never forwarded. 200 if something
    /// was removed, 404 if not, 403 for other clients, 503 if the fleet could not be told.
    pub async fn purge(&self, session: &mut Session, client: Option<IpAddr>) -> Result<()> {
        let auth = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION);
        let caller = self.caller(client, auth.map(|v| v.as_bytes()));
        let (code, result) = if caller == Caller::BadToken {
            (403, "bad_token")
        } else if caller == Caller::Forbidden {
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

    /// A bearer token, when one is configured and sent, decides alone: right is allowed from
    /// anywhere, wrong is refused even from an allowed address (it is someone guessing). Else
    /// the real client address decides.
    fn caller(&self, client: Option<IpAddr>, authorization: Option<&[u8]>) -> Caller {
        if let (Some(token), Some(sent)) = (&self.token, authorization.and_then(bearer)) {
            return if constant_time_eq(sent, token.as_bytes()) {
                Caller::Allowed
            } else {
                Caller::BadToken
            };
        }
        if client.is_some_and(|ip| self.allow.iter().any(|c| c.contains(ip))) {
            Caller::Allowed
        } else {
            Caller::Forbidden
        }
    }

    /// §4.4: after an unsafe method's non-error response, the target URI and same-origin
    /// `Location`/`Content-Location` URIs are invalidated.
    pub async fn after_unsafe(&self, session: &Session, resp: &ResponseHeader, rule: &CacheRule) {
        let req = session.req_header();
        if !rule.enabled || !invalidates(&req.method, resp.status.as_u16(), &self.invalidate_on) {
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
        let key = key::of(authority, path);
        let mark = self.fleet_budget.as_ref().is_none_or(Bucket::take);
        if !mark {
            metrics::CACHE_PURGES
                .with_label_values(&["marker_dropped"])
                .inc();
        }
        match self.storage.purge_all(&key, mark).await {
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

/// The credentials of `Authorization: Bearer <token>` (the scheme is case-insensitive, RFC 9110
/// §11.1).
pub(crate) fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// Compares every byte whatever the first difference, so response time does not tell a
/// guesser how much of the token was right. (The length is not secret: it is checked first.)
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// A token bucket refilled at `rate` per second, holding at most one second's worth.
pub(super) struct Bucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub(super) fn per_second(rate: u32) -> Bucket {
        Bucket {
            rate: rate as f64,
            state: Mutex::new((rate as f64, Instant::now())),
        }
    }

    /// Takes one token if there is one.
    pub(super) fn take(&self) -> bool {
        let mut s = self.state.lock();
        let now = Instant::now();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.rate);
        s.1 = now;
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bear"), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }

    #[test]
    fn bucket_allows_a_second_worth_then_refuses() {
        let b = Bucket::per_second(3);
        assert!(b.take() && b.take() && b.take());
        assert!(!b.take());
    }
}
