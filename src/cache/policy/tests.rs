//! Table tests for the RFC 9111 rules: each row is (request headers, response, expected).

use super::invalidate::invalidates;
use super::*;
use std::time::UNIX_EPOCH;

pub(super) const NOW: u64 = 1_700_000_000;

/// Header fields of one message in a table row.
pub(super) type Fields<'a> = &'a [(&'a str, &'a str)];

pub(super) fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

pub(super) fn date(secs: u64) -> String {
    httpdate::fmt_http_date(at(secs))
}

pub(super) fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build(method, b"/x", None).unwrap();
    for (k, v) in headers {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

pub(super) fn resp(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
    let mut r = ResponseHeader::build(status, None).unwrap();
    for (k, v) in headers {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

pub(super) const H: Heuristic = Heuristic {
    fraction: 0.1,
    max: Duration::from_secs(86400),
};

pub(super) fn timing() -> Timing {
    Timing {
        request_sent: at(NOW),
        response_received: at(NOW),
    }
}

fn decide(rq: &RequestHeader, rs: &ResponseHeader) -> Result<CacheMeta, &'static str> {
    storable(rq, rs, timing(), H, StaleDefaults::default(), &[]).map_err(Refusal::label)
}

/// Seconds of freshness the stored response gets, or the refusal.
pub(super) fn ttl(
    rq: &[(&str, &str)],
    status: u16,
    rs: &[(&str, &str)],
) -> Result<i64, &'static str> {
    decide(&req("GET", rq), &resp(status, rs)).map(|m| ttl_secs(&m, at(NOW)))
}

#[test]
fn storing_rules_section_3() {
    let d = date(NOW);
    let table: &[(Fields, u16, Fields, Result<i64, &str>)] = &[
        (&[], 200, &[("Cache-Control", "max-age=60")], Ok(60)),
        (&[], 500, &[("Cache-Control", "max-age=60")], Ok(60)), // explicit freshness: any final status
        (&[], 206, &[("Cache-Control", "max-age=60")], Err("status")),
        (
            &[],
            200,
            &[("Cache-Control", "no-store, max-age=60")],
            Err("no-store"),
        ),
        (
            &[("Cache-Control", "no-store")],
            200,
            &[("Cache-Control", "max-age=60")],
            Err("request-no-store"),
        ),
        (
            &[],
            200,
            &[("Cache-Control", "private, max-age=60")],
            Err("private"),
        ),
        (
            &[],
            200,
            &[("Cache-Control", "private=\"x-user\", max-age=60")],
            Ok(60),
        ),
        (
            &[("Authorization", "Basic a")],
            200,
            &[("Cache-Control", "max-age=60")],
            Err("authorization"),
        ),
        (
            &[("Authorization", "Basic a")],
            200,
            &[("Cache-Control", "public, max-age=60")],
            Ok(60),
        ),
        (
            &[("Authorization", "Basic a")],
            200,
            &[("Cache-Control", "s-maxage=60")],
            Ok(60),
        ),
        (
            &[("Authorization", "Basic a")],
            200,
            &[("Cache-Control", "must-revalidate, max-age=60")],
            Ok(60),
        ),
        (
            &[],
            200,
            &[("Cache-Control", "max-age=60"), ("Set-Cookie", "a=b")],
            Err("set-cookie"),
        ),
        (
            &[],
            200,
            &[
                ("Cache-Control", "public, max-age=60"),
                ("Set-Cookie", "a=b"),
            ],
            Ok(60),
        ),
        (
            &[],
            200,
            &[("Cache-Control", "max-age=60"), ("Vary", "Accept, *")],
            Err("vary-star"),
        ),
        (&[], 200, &[], Err("no-freshness")),
        (&[], 200, &[("ETag", "\"a\"")], Err("no-freshness")), // no default TTL
        (&[], 200, &[("Cache-Control", "no-cache")], Err("no-cache")), // nothing to revalidate with
        (
            &[],
            200,
            &[("Cache-Control", "no-cache"), ("ETag", "\"a\"")],
            Ok(0),
        ),
        (&[], 200, &[("Cache-Control", "max-age=0")], Err("stale")),
        (
            &[],
            200,
            &[("Cache-Control", "max-age=0"), ("ETag", "\"a\"")],
            Ok(0),
        ),
        (
            &[],
            200,
            &[("Cache-Control", "max-age=0, stale-while-revalidate=30")],
            Ok(0),
        ),
        (
            &[],
            200,
            &[("Date", &d), ("Cache-Control", "max-age=60")],
            Ok(60),
        ),
    ];
    for (i, (rq, status, rs, want)) in table.iter().enumerate() {
        assert_eq!(
            ttl(rq, *status, rs),
            *want,
            "row {i}: {rq:?} {status} {rs:?}"
        );
    }
    assert_eq!(
        decide(
            &req("POST", &[]),
            &resp(200, &[("Cache-Control", "max-age=60")])
        )
        .err(),
        Some("method")
    );
}

#[test]
fn freshness_order_section_4_2_1() {
    let d = date(NOW);
    let exp = date(NOW + 300);
    let past = date(NOW - 10);
    let table: &[(Fields, Result<i64, &str>)] = &[
        // s-maxage beats max-age beats Expires.
        (
            &[
                ("Cache-Control", "max-age=60, s-maxage=120"),
                ("Expires", &exp),
                ("Date", &d),
            ],
            Ok(120),
        ),
        (
            &[
                ("Cache-Control", "max-age=60"),
                ("Expires", &exp),
                ("Date", &d),
            ],
            Ok(60),
        ),
        (&[("Expires", &exp), ("Date", &d)], Ok(300)),
        (
            &[("Expires", &past), ("Date", &d), ("ETag", "\"e\"")],
            Ok(-10 + 10),
        ), // expired: 0 lifetime
        // A malformed Expires means already expired.
        (&[("Expires", "0"), ("ETag", "\"e\"")], Ok(0)),
        (&[("Expires", "0")], Err("stale")),
        // Invalid max-age: explicit but unusable, so stale.
        (
            &[("Cache-Control", "max-age=soon"), ("ETag", "\"e\"")],
            Ok(0),
        ),
    ];
    for (i, (rs, want)) in table.iter().enumerate() {
        assert_eq!(ttl(&[], 200, rs), *want, "row {i}: {rs:?}");
    }
}

#[test]
fn heuristic_freshness_section_4_2_2() {
    let d = date(NOW);
    let lm = date(NOW - 1000);
    assert_eq!(
        ttl(&[], 200, &[("Date", &d), ("Last-Modified", &lm)]),
        Ok(100)
    );
    assert_eq!(
        ttl(&[], 404, &[("Date", &d), ("Last-Modified", &lm)]),
        Ok(100)
    );
    // Not heuristically cacheable, unless public.
    assert_eq!(
        ttl(&[], 302, &[("Date", &d), ("Last-Modified", &lm)]),
        Err("no-freshness")
    );
    assert_eq!(
        ttl(
            &[],
            302,
            &[
                ("Date", &d),
                ("Last-Modified", &lm),
                ("Cache-Control", "public")
            ]
        ),
        Ok(100)
    );
    // Capped.
    let old = date(NOW - 100 * 86400);
    assert_eq!(
        ttl(&[], 200, &[("Date", &d), ("Last-Modified", &old)]),
        Ok(86400)
    );
    // Disabled by a zero fraction.
    let off = Heuristic { fraction: 0.0, ..H };
    let r = storable(
        &req("GET", &[]),
        &resp(200, &[("Date", &d), ("Last-Modified", &lm)]),
        timing(),
        off,
        StaleDefaults::default(),
        &[],
    );
    assert_eq!(r.err(), Some(Refusal::NoFreshness));
}

#[test]
fn age_is_corrected_and_stored_section_4_2_3() {
    // The origin says Age: 10 and the fetch took 2 s: initial age 12, lifetime 60 → 48 left.
    let t = Timing {
        request_sent: at(NOW - 2),
        response_received: at(NOW),
    };
    let d = date(NOW - 2);
    let m = storable(
        &req("GET", &[]),
        &resp(
            200,
            &[("Cache-Control", "max-age=60"), ("Age", "10"), ("Date", &d)],
        ),
        t,
        H,
        StaleDefaults::default(),
        &[],
    )
    .unwrap();
    assert_eq!(ttl_secs(&m, at(NOW)), 48);
    assert_eq!(current_age(&m, at(NOW)).as_secs(), 12);
    assert_eq!(current_age(&m, at(NOW + 5)).as_secs(), 17);
    // The copy dates from its request, so a purge during the fetch retires it.
    assert_eq!(m.created(), at(NOW - 2));
    // A Date in the past raises the apparent age even without an Age header.
    let d = date(NOW - 30);
    let m = storable(
        &req("GET", &[]),
        &resp(200, &[("Cache-Control", "max-age=60"), ("Date", &d)]),
        timing(),
        H,
        StaleDefaults::default(),
        &[],
    )
    .unwrap();
    assert_eq!(ttl_secs(&m, at(NOW)), 30);
    // The Date header itself is kept as received.
    assert_eq!(m.headers()["date"], d.as_str());
}

#[test]
fn stale_windows_section_4_2_4() {
    let defaults = StaleDefaults {
        while_revalidate: 5,
        if_error: 50,
        on_disconnect: 0,
    };
    let m = |cc: &str| {
        storable(
            &req("GET", &[]),
            &resp(200, &[("Cache-Control", cc)]),
            timing(),
            H,
            defaults,
            &[],
        )
        .unwrap()
    };
    let w = |m: CacheMeta| (m.stale_while_revalidate_sec(), m.stale_if_error_sec());
    assert_eq!(w(m("max-age=60")), (5, 50));
    assert_eq!(
        w(m(
            "max-age=60, stale-while-revalidate=30, stale-if-error=300"
        )),
        (30, 300)
    );
    for forbids in [
        "max-age=60, must-revalidate",
        "max-age=60, proxy-revalidate",
        "s-maxage=60",
        "max-age=60, stale-if-error=300, must-revalidate",
    ] {
        assert_eq!(w(m(forbids)), (0, 0), "{forbids}");
    }
}

#[test]
fn named_private_and_no_cache_fields_are_not_stored() {
    let r = resp(
        200,
        &[
            (
                "Cache-Control",
                "max-age=60, private=\"X-User\", no-cache=\"X-Token\"",
            ),
            ("X-User", "alice"),
            ("X-Token", "t"),
            ("X-Keep", "k"),
        ],
    );
    let m = decide(&req("GET", &[]), &r).unwrap();
    assert!(m.headers().get("x-user").is_none());
    assert!(m.headers().get("x-token").is_none());
    assert_eq!(m.headers()["x-keep"], "k");
}

fn stored(cc: &str, age_secs: u64, ttl: i64) -> CacheMeta {
    // Stored `age_secs` ago with `ttl` seconds of freshness left now.
    let created = at(NOW - age_secs);
    let fresh_until = if ttl >= 0 {
        at(NOW) + Duration::from_secs(ttl as u64)
    } else {
        at(NOW) - Duration::from_secs((-ttl) as u64)
    };
    CacheMeta::new(
        fresh_until,
        created,
        0,
        0,
        resp(200, &[("Cache-Control", cc)]),
    )
}

#[test]
fn request_directives_on_hits_section_5_2_1() {
    let f = |rq: &[(&str, &str)], m: &CacheMeta| on_hit(&req("GET", rq), m, at(NOW), true, &[]);
    let fresh = stored("max-age=100", 40, 60);
    let stale = stored("max-age=100", 130, -30);
    let stale_mr = stored("max-age=100, must-revalidate", 130, -30);
    use ForcedFreshness::*;
    let table: &[(Fields, &CacheMeta, Option<ForcedFreshness>)] = &[
        (&[], &fresh, None),
        (&[("Cache-Control", "no-cache")], &fresh, Some(ForceExpired)),
        (&[("Pragma", "no-cache")], &fresh, Some(ForceExpired)),
        (
            &[("Pragma", "no-cache"), ("Cache-Control", "max-age=1000")],
            &fresh,
            None,
        ),
        (&[("Cache-Control", "max-age=50")], &fresh, None),
        (
            &[("Cache-Control", "max-age=30")],
            &fresh,
            Some(ForceExpired),
        ),
        (&[("Cache-Control", "min-fresh=30")], &fresh, None),
        (
            &[("Cache-Control", "min-fresh=90")],
            &fresh,
            Some(ForceExpired),
        ),
        (&[("Cache-Control", "max-stale")], &stale, Some(ForceFresh)),
        (
            &[("Cache-Control", "max-stale=60")],
            &stale,
            Some(ForceFresh),
        ),
        (&[("Cache-Control", "max-stale=10")], &stale, None),
        (&[("Cache-Control", "max-stale")], &stale_mr, None),
        (&[("Cache-Control", "max-stale")], &fresh, None),
    ];
    for (i, (rq, m, want)) in table.iter().enumerate() {
        assert_eq!(
            format!("{:?}", f(rq, m)),
            format!("{want:?}"),
            "row {i}: {rq:?}"
        );
    }
    assert!(only_if_cached(&req(
        "GET",
        &[("Cache-Control", "only-if-cached")]
    )));
}

#[test]
fn client_reloads_are_ignored_unless_honoured() {
    let ignore =
        |rq: &[(&str, &str)], m: &CacheMeta| on_hit(&req("GET", rq), m, at(NOW), false, &[]);
    let fresh = stored("max-age=100", 40, 60);
    let stale = stored("max-age=100", 130, -30);
    use ForcedFreshness::*;
    for rq in [
        &[("Cache-Control", "no-cache")][..],
        &[("Cache-Control", "max-age=0")],
        &[("Cache-Control", "max-age=30")],
        &[("Pragma", "no-cache")],
    ] {
        assert!(ignore(rq, &fresh).is_none(), "{rq:?}");
    }
    // The directives that cannot add origin load still count.
    assert!(matches!(
        ignore(&[("Cache-Control", "min-fresh=90")], &fresh),
        Some(ForceExpired)
    ));
    assert!(matches!(
        ignore(&[("Cache-Control", "max-stale")], &stale),
        Some(ForceFresh)
    ));
}

#[test]
fn unsafe_methods_invalidate_section_4_4() {
    use http::Method;
    let on = [Method::POST, Method::PUT, Method::DELETE, Method::PATCH];
    assert!(invalidates(&Method::POST, 200, &on));
    assert!(invalidates(&Method::DELETE, 204, &on));
    assert!(invalidates(&Method::PUT, 302, &on));
    assert!(!invalidates(
        &Method::from_bytes(b"FROB").unwrap(),
        200,
        &on
    ));
    assert!(!invalidates(
        &Method::from_bytes(b"post").unwrap(),
        200,
        &on
    ));
    assert!(!invalidates(&Method::POST, 500, &on));
    assert!(!invalidates(&Method::POST, 404, &on));
    assert!(!invalidates(&Method::GET, 200, &on));
    assert!(!invalidates(&Method::OPTIONS, 200, &on));
}

#[test]
fn operator_overrides() {
    let d = date(NOW);
    let with = |rs: Fields, o: Overrides| {
        storable_with(
            &req("GET", &[]),
            &resp(200, rs),
            timing(),
            H,
            StaleDefaults::default(),
            &[],
            o,
        )
        .map(|m| {
            (
                ttl_secs(&m, at(NOW)),
                m.serve_stale_if_error(at(NOW + 80_000)),
            )
        })
        .map_err(Refusal::label)
    };
    let ttl = Overrides {
        ttl: Some(Duration::from_secs(600)),
        ..Overrides::default()
    };
    let force = Overrides {
        force_ttl: Some(Duration::from_secs(3600)),
        ..Overrides::default()
    };
    let lm = date(NOW - 86400);
    type Row<'a> = (Fields<'a>, Overrides, Result<(i64, bool), &'a str>);
    let table: &[Row] = &[
        // ttl: only without explicit freshness, ahead of the heuristic.
        (&[("Date", &d)], ttl, Ok((600, false))),
        (
            &[("Date", &d), ("Last-Modified", &lm)],
            ttl,
            Ok((600, false)),
        ),
        (
            &[("Date", &d), ("Cache-Control", "max-age=5")],
            ttl,
            Ok((5, false)),
        ),
        (
            &[("Date", &d), ("Cache-Control", "private")],
            ttl,
            Err("private"),
        ),
        // force_ttl: over freshness, no-cache and private; never over no-store or Set-Cookie.
        (
            &[("Date", &d), ("Cache-Control", "private, no-cache")],
            force,
            Ok((3600, false)),
        ),
        (
            &[("Date", &d), ("Cache-Control", "max-age=5")],
            force,
            Ok((3600, false)),
        ),
        (
            &[("Date", &d), ("Cache-Control", "no-store")],
            force,
            Err("no-store"),
        ),
        (
            &[("Date", &d), ("Set-Cookie", "a=b")],
            force,
            Err("set-cookie"),
        ),
        // stale: replaces the route's defaults; the response's own windows still win.
        (
            &[("Date", &d), ("Cache-Control", "max-age=5")],
            Overrides {
                stale: Some(StaleDefaults {
                    while_revalidate: 0,
                    if_error: 86400,
                    on_disconnect: 0,
                }),
                ..Overrides::default()
            },
            Ok((5, true)),
        ),
    ];
    for (rs, o, want) in table {
        assert_eq!(&with(rs, *o), want, "{rs:?} {o:?}");
    }
}
