//! When a stored response may be served stale (RFC 9111 §4.2.4, RFC 5861).

use super::StaleDefaults;
use pingora::cache::cache_control::CacheControl;

/// §5.2.2.2, §5.2.2.4, §5.2.2.8, §5.2.2.10: `must-revalidate`, `no-cache`, `proxy-revalidate`
/// and `s-maxage` (even an invalid one) each forbid serving stale without validation.
pub fn origin_forbids_stale(cc: Option<&CacheControl>) -> bool {
    cc.is_some_and(|c| {
        c.no_cache()
            || c.must_revalidate()
            || c.proxy_revalidate()
            || !matches!(c.s_maxage(), Ok(None))
    })
}

/// The stale-while-revalidate and stale-if-error windows the origin grants, in seconds: the
/// response's own, else the route's defaults; none when the origin forbids stale.
pub fn origin_windows(cc: Option<&CacheControl>, defaults: StaleDefaults) -> (u32, u32) {
    if origin_forbids_stale(cc) {
        return (0, 0);
    }
    let pick = |v: Option<pingora::Result<Option<u32>>>, d: u32| match v {
        Some(Ok(Some(s))) => s,
        _ => d,
    };
    (
        pick(
            cc.map(|c| c.stale_while_revalidate()),
            defaults.while_revalidate,
        ),
        pick(cc.map(|c| c.stale_if_error()), defaults.if_error),
    )
}

/// The windows to store: the origin's, with the error window widened to `on_disconnect` so a
/// copy is still at hand when the origin is unreachable ([`may_serve_stale`] keeps 5xx answers
/// to the origin's own window). Nothing when the origin forbids stale.
pub fn windows(cc: Option<&CacheControl>, defaults: StaleDefaults) -> (u32, u32) {
    if origin_forbids_stale(cc) {
        return (0, 0);
    }
    let (swr, sie) = origin_windows(cc, defaults);
    (swr, sie.max(defaults.on_disconnect))
}

/// Why the origin could not give an answer, as far as serving stale is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Connecting failed, or the origin closed or reset before answering.
    Disconnect,
    /// The origin answered 5xx, or failed otherwise (a timeout mid-exchange).
    Origin,
    /// Shellac's own refusal or the client's failure: never masked.
    Local,
}

/// Classifies a proxy error for [`may_serve_stale`].
pub fn classify(error: &pingora::Error) -> Failure {
    use pingora::ErrorType::*;
    match error.etype() {
        HTTPStatus(500..=599) => Failure::Origin,
        _ if error.esource() != &pingora::ErrorSource::Upstream => Failure::Local,
        ConnectTimedout | ConnectRefused | ConnectNoRoute | ConnectError | ConnectionClosed
        | ReadError | TLSHandshakeFailure | TLSHandshakeTimedout => Failure::Disconnect,
        _ => Failure::Origin,
    }
}

/// Which stale answer a failure allows for a copy `stale_for` seconds past its freshness: the
/// origin's stale-if-error window for origin errors (RFC 5861), and, when the origin is not
/// reachable at all, also up to `on_disconnect` (RFC 9111 §4.2.4: a disconnected cache may
/// serve stale). `None`: answer with the error.
pub fn may_serve_stale(
    failure: Failure,
    stale_for: u64,
    origin_if_error: u32,
    on_disconnect: u32,
) -> Option<StaleReason> {
    match failure {
        Failure::Local => None,
        _ if stale_for <= u64::from(origin_if_error) => Some(StaleReason::IfError),
        Failure::Disconnect if stale_for <= u64::from(on_disconnect) => {
            Some(StaleReason::Disconnected)
        }
        _ => None,
    }
}

/// Why a stale copy answered instead of the origin, for `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleReason {
    IfError,
    Disconnected,
}

impl StaleReason {
    pub fn label(self) -> &'static str {
        match self {
            StaleReason::IfError => "stale-if-error",
            StaleReason::Disconnected => "stale-on-disconnect",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cc(v: &str) -> Option<CacheControl> {
        let mut r = pingora::http::ResponseHeader::build(200, None).unwrap();
        r.insert_header("Cache-Control", v).unwrap();
        CacheControl::from_resp_headers(&r)
    }

    #[test]
    fn forbidding_directives() {
        let d = StaleDefaults {
            while_revalidate: 5,
            if_error: 9,
            on_disconnect: 0,
        };
        for (v, want) in [
            ("max-age=1", (5, 9)),
            ("max-age=1, stale-if-error=60", (5, 60)),
            ("max-age=1, must-revalidate", (0, 0)),
            ("max-age=1, proxy-revalidate", (0, 0)),
            ("no-cache", (0, 0)),
            ("s-maxage=5", (0, 0)),
            ("s-maxage=x", (0, 0)),
        ] {
            assert_eq!(windows(cc(v).as_ref(), d), want, "{v}");
        }
    }

    #[test]
    fn disconnects_widen_the_stored_window_not_the_origins() {
        let d = StaleDefaults {
            while_revalidate: 0,
            if_error: 0,
            on_disconnect: 10,
        };
        assert_eq!(windows(cc("max-age=1").as_ref(), d), (0, 10));
        assert_eq!(
            windows(cc("max-age=1, stale-if-error=60").as_ref(), d),
            (0, 60)
        );
        assert_eq!(
            windows(cc("max-age=1, must-revalidate").as_ref(), d),
            (0, 0)
        );
        use Failure::*;
        assert_eq!(
            may_serve_stale(Disconnect, 5, 0, 10),
            Some(StaleReason::Disconnected)
        );
        assert_eq!(may_serve_stale(Disconnect, 11, 0, 10), None);
        assert_eq!(
            may_serve_stale(Origin, 5, 0, 10),
            None,
            "5xx: stale-if-error only"
        );
        assert_eq!(
            may_serve_stale(Origin, 5, 60, 10),
            Some(StaleReason::IfError)
        );
        assert_eq!(
            may_serve_stale(Disconnect, 30, 60, 10),
            Some(StaleReason::IfError)
        );
        assert_eq!(may_serve_stale(Local, 0, 60, 10), None);
    }

    #[test]
    fn failures_are_classified_by_source() {
        use pingora::{Error, ErrorSource, ErrorType};
        let up = |t| Error::create(t, ErrorSource::Upstream, None, None);
        assert_eq!(
            classify(&up(ErrorType::ConnectRefused)),
            Failure::Disconnect
        );
        assert_eq!(
            classify(&up(ErrorType::ConnectionClosed)),
            Failure::Disconnect
        );
        assert_eq!(classify(&up(ErrorType::ReadTimedout)), Failure::Origin);
        assert_eq!(classify(&up(ErrorType::HTTPStatus(503))), Failure::Origin);
        let ours = Error::create(
            ErrorType::HTTPStatus(413),
            ErrorSource::Internal,
            None,
            None,
        );
        assert_eq!(classify(&ours), Failure::Local);
        let client = Error::new_down(ErrorType::ReadError);
        assert_eq!(classify(&client), Failure::Local);
    }
}
