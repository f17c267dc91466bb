//! What the cache did for one response, as `Cache-Status` (RFC 9211) and the lookup metric's
//! label. Pure: the hooks gather the facts, this decides the words.

use super::partial::Unstorable;
use super::policy::stale::StaleReason;
use super::policy::Refusal;
use std::fmt::Write;

/// The field's name as written on the wire. As `Bytes` over static text it is inserted without
/// copying; Pingora copies a name given as text or as an `http::HeaderName` it has no spelling for.
pub static FIELD: bytes::Bytes = bytes::Bytes::from_static(b"Cache-Status");

/// The lookup outcome, a closed set: the `result` label of `shellac_cache_lookups_total` and
/// the access log's cache field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    /// A hit on an object another request was filling while this one waited.
    Coalesced,
    Stale,
    Revalidated,
    Miss,
    /// Not looked up: the method or a remembered uncacheable URL sends it straight through.
    Pass,
}

impl Lookup {
    pub fn label(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Coalesced => "coalesced",
            Lookup::Stale => "stale",
            Lookup::Revalidated => "revalidated",
            Lookup::Miss => "miss",
            Lookup::Pass => "pass",
        }
    }
}

/// Where the response came from, as far as `Cache-Status` tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// A fresh stored response; `coalesced` when this request waited for its fill.
    Hit { coalesced: bool },
    /// A range answered from a stored partial response (RFC 9111 §3.3).
    PartialHit,
    /// Stale, while a background refresh runs (RFC 5861 stale-while-revalidate).
    StaleWhileRevalidate,
    /// Stale because the origin failed (stale-if-error) or could not be reached.
    StaleOnError(StaleReason),
    /// Stored, validated by the origin's 304.
    Revalidated,
    /// From the origin; `bypass` when the lookup was skipped.
    Origin { bypass: bool },
}

/// The facts `Cache-Status` is built from.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub served: Served,
    /// Freshness left of the stored response (only meaningful when served from storage).
    pub ttl: i64,
    /// The origin's status, 0 when the origin was not asked.
    pub upstream_status: u16,
    /// The client's directives forced validation (§5.2.1).
    pub forced: bool,
    /// A stale copy existed when the request went to the origin.
    pub had_stale: bool,
    pub stored: bool,
    pub refusal: Option<Refusal>,
    /// A stored partial existed but did not hold the range asked for.
    pub had_partial: bool,
    /// Why the origin's answer to a forwarded range was not kept.
    pub unstorable: Option<Unstorable>,
    /// Why Pingora disabled caching for this request, when it did.
    pub disabled: Option<&'static str>,
}

/// `Cache-Status` for a request on a route that does not cache (`bypass`), or for a method
/// whose responses are never reused (`method`).
pub fn uncached(route_caches: bool) -> (&'static str, Option<Lookup>) {
    if route_caches {
        ("shellac; fwd=method", Some(Lookup::Pass))
    } else {
        ("shellac; fwd=bypass", None)
    }
}

/// The `Cache-Status` value and the lookup outcome for a response of a caching request.
pub fn cache_status(f: &Facts) -> (String, Lookup) {
    let mut s = String::with_capacity(64);
    s.push_str("shellac; ");
    let ttl = f.ttl;
    let lookup = match f.served {
        Served::Hit { coalesced } => {
            let _ = write!(s, "hit; ttl={ttl}");
            if coalesced {
                s.push_str("; detail=coalesced");
                Lookup::Coalesced
            } else {
                Lookup::Hit
            }
        }
        Served::PartialHit => {
            let _ = write!(s, "hit; ttl={ttl}; detail=partial");
            Lookup::Hit
        }
        Served::StaleWhileRevalidate => {
            let _ = write!(s, "hit; ttl={ttl}; detail=stale-while-revalidate");
            Lookup::Stale
        }
        Served::StaleOnError(reason) => {
            s.push_str("fwd=stale");
            if f.upstream_status >= 500 {
                let _ = write!(s, "; fwd-status={}", f.upstream_status);
            }
            let _ = write!(s, "; ttl={ttl}; detail={}", reason.label());
            Lookup::Stale
        }
        Served::Revalidated => {
            let fwd = if f.forced { "request" } else { "stale" };
            let _ = write!(s, "fwd={fwd}; fwd-status=304; ttl={ttl}");
            if !f.stored {
                s.push_str("; detail=not-stored");
            }
            Lookup::Revalidated
        }
        Served::Origin { bypass } => {
            let fwd = if f.forced {
                "request"
            } else if f.had_stale {
                "stale"
            } else if f.had_partial {
                "partial" // RFC 9211 §2.2: a partial was stored, not enough for this request
            } else {
                "miss"
            };
            let _ = write!(s, "fwd={fwd}");
            if f.upstream_status > 0 {
                let _ = write!(s, "; fwd-status={}", f.upstream_status);
            }
            if f.stored {
                s.push_str("; stored");
            } else if let Some(reason) = f.refusal {
                let _ = write!(s, "; detail={}", reason.label());
            } else if let Some(reason) = f.unstorable {
                let _ = write!(s, "; detail={}", reason.label());
            } else if let Some(reason) = f.disabled {
                let _ = write!(s, "; detail={reason}");
            }
            if bypass {
                Lookup::Pass
            } else {
                Lookup::Miss
            }
        }
    };
    (s, lookup)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(served: Served) -> Facts {
        Facts {
            served,
            ttl: 30,
            upstream_status: 0,
            forced: false,
            had_stale: false,
            stored: false,
            refusal: None,
            had_partial: false,
            unstorable: None,
            disabled: None,
        }
    }

    #[test]
    fn rfc_9211_wording() {
        let table: &[(Facts, &str, Lookup)] = &[
            (
                facts(Served::Hit { coalesced: false }),
                "shellac; hit; ttl=30",
                Lookup::Hit,
            ),
            (
                facts(Served::Hit { coalesced: true }),
                "shellac; hit; ttl=30; detail=coalesced",
                Lookup::Coalesced,
            ),
            (
                facts(Served::StaleWhileRevalidate),
                "shellac; hit; ttl=30; detail=stale-while-revalidate",
                Lookup::Stale,
            ),
            (
                Facts {
                    upstream_status: 503,
                    ttl: -5,
                    ..facts(Served::StaleOnError(StaleReason::IfError))
                },
                "shellac; fwd=stale; fwd-status=503; ttl=-5; detail=stale-if-error",
                Lookup::Stale,
            ),
            (
                Facts {
                    ttl: -5,
                    ..facts(Served::StaleOnError(StaleReason::Disconnected))
                },
                "shellac; fwd=stale; ttl=-5; detail=stale-on-disconnect",
                Lookup::Stale,
            ),
            (
                Facts {
                    forced: true,
                    stored: true,
                    ..facts(Served::Revalidated)
                },
                "shellac; fwd=request; fwd-status=304; ttl=30",
                Lookup::Revalidated,
            ),
            (
                facts(Served::Revalidated),
                "shellac; fwd=stale; fwd-status=304; ttl=30; detail=not-stored",
                Lookup::Revalidated,
            ),
            (
                Facts {
                    upstream_status: 200,
                    stored: true,
                    ..facts(Served::Origin { bypass: false })
                },
                "shellac; fwd=miss; fwd-status=200; stored",
                Lookup::Miss,
            ),
            (
                Facts {
                    upstream_status: 200,
                    refusal: Some(Refusal::Private),
                    ..facts(Served::Origin { bypass: false })
                },
                "shellac; fwd=miss; fwd-status=200; detail=private",
                Lookup::Miss,
            ),
            (
                Facts {
                    upstream_status: 200,
                    had_stale: true,
                    disabled: Some("lock-timeout"),
                    ..facts(Served::Origin { bypass: true })
                },
                "shellac; fwd=stale; fwd-status=200; detail=lock-timeout",
                Lookup::Pass,
            ),
            (
                facts(Served::PartialHit),
                "shellac; hit; ttl=30; detail=partial",
                Lookup::Hit,
            ),
            (
                Facts {
                    upstream_status: 206,
                    stored: true,
                    had_partial: true,
                    ..facts(Served::Origin { bypass: false })
                },
                "shellac; fwd=partial; fwd-status=206; stored",
                Lookup::Miss,
            ),
            (
                Facts {
                    upstream_status: 206,
                    unstorable: Some(Unstorable::Vary),
                    disabled: Some("partial"),
                    ..facts(Served::Origin { bypass: false })
                },
                "shellac; fwd=miss; fwd-status=206; detail=partial-vary",
                Lookup::Miss,
            ),
        ];
        for (f, want, lookup) in table {
            assert_eq!(cache_status(f), (want.to_string(), *lookup), "{f:?}");
        }
        assert_eq!(uncached(true), ("shellac; fwd=method", Some(Lookup::Pass)));
        assert_eq!(uncached(false), ("shellac; fwd=bypass", None));
    }
}
