//! Why a response was not stored: a closed set, used as a metric label and in `Cache-Status`.

/// A reason the policy refused to store a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// §3: the method's responses are never reused.
    Method,
    /// §3: a status the cache does not store (1xx, 206, 304).
    Status,
    /// §5.2.1.5: the request said `no-store`.
    RequestNoStore,
    /// §5.2.2.5.
    NoStore,
    /// §5.2.2.7: a shared cache must not store it.
    Private,
    /// §3.5: an authenticated request without explicit permission to share the answer.
    Authorization,
    /// `Set-Cookie` without `public` (a Shellac choice: cookies are per user).
    SetCookie,
    /// §4.1: `Vary: *` can never match.
    VaryStar,
    /// Neither explicit nor heuristic freshness.
    NoFreshness,
    /// A 5xx without explicit freshness: an origin failure, not a property of the URL.
    ServerError,
    /// `no-cache` and nothing to revalidate with.
    NoCache,
    /// Stale on arrival with no validator and no stale window.
    Stale,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Method => "method",
            Refusal::Status => "status",
            Refusal::RequestNoStore => "request-no-store",
            Refusal::NoStore => "no-store",
            Refusal::Private => "private",
            Refusal::Authorization => "authorization",
            Refusal::SetCookie => "set-cookie",
            Refusal::VaryStar => "vary-star",
            Refusal::NoFreshness => "no-freshness",
            Refusal::ServerError => "server-error",
            Refusal::NoCache => "no-cache",
            Refusal::Stale => "stale",
        }
    }

    /// The refusal came from this request or a passing origin failure, not from the URL: the
    /// Predictor must not remember the URL as uncacheable because of it (a single 500 would
    /// otherwise turn the URL into a pass-through with no stale copy to fall back on).
    pub fn request_specific(self) -> bool {
        matches!(
            self,
            Refusal::RequestNoStore
                | Refusal::Authorization
                | Refusal::Method
                | Refusal::ServerError
        )
    }

    /// Every reason, for tests and documentation.
    pub const ALL: [Refusal; 12] = [
        Refusal::Method,
        Refusal::Status,
        Refusal::RequestNoStore,
        Refusal::NoStore,
        Refusal::Private,
        Refusal::Authorization,
        Refusal::SetCookie,
        Refusal::VaryStar,
        Refusal::NoFreshness,
        Refusal::ServerError,
        Refusal::NoCache,
        Refusal::Stale,
    ];

    /// The reason whose label is `label`, for Pingora's `NoCacheReason::Custom(&str)`, which is
    /// all the Predictor hands back.
    pub fn from_label(label: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.label() == label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip_and_are_unique() {
        for r in Refusal::ALL {
            assert_eq!(Refusal::from_label(r.label()), Some(r));
        }
        let mut labels: Vec<_> = Refusal::ALL.iter().map(|r| r.label()).collect();
        labels.sort();
        labels.dedup();
        assert_eq!(labels.len(), Refusal::ALL.len());
    }
}
