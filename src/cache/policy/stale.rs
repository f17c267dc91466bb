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

/// The stale-while-revalidate and stale-if-error windows to store, in seconds: the response's
/// own, else the route's defaults; none when the origin forbids stale.
pub fn windows(cc: Option<&CacheControl>, defaults: StaleDefaults) -> (u32, u32) {
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

/// Which failures a stored stale-if-error window may mask: the origin's (it failed to connect,
/// reset, timed out or answered 5xx). Shellac's own refusals and client errors are never masked.
pub fn error_may_serve_stale(error: Option<&pingora::Error>) -> bool {
    error.is_none_or(|e| {
        e.esource() == &pingora::ErrorSource::Upstream
            || matches!(e.etype(), pingora::ErrorType::HTTPStatus(500..=599))
    })
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
    fn only_origin_failures_are_masked() {
        use pingora::{Error, ErrorSource, ErrorType};
        assert!(error_may_serve_stale(None));
        let upstream = Error::new_up(ErrorType::ConnectRefused);
        assert!(error_may_serve_stale(Some(&upstream)));
        let status = Error::new(ErrorType::HTTPStatus(503));
        assert!(error_may_serve_stale(Some(&status)));
        let ours = Error::create(
            ErrorType::HTTPStatus(413),
            ErrorSource::Internal,
            None,
            None,
        );
        assert!(!error_may_serve_stale(Some(&ours)));
        let client = Error::new_down(ErrorType::ReadError);
        assert!(!error_may_serve_stale(Some(&client)));
    }
}
