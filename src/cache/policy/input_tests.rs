//! Table tests for the inputs the freshness rules read: targeted fields (RFC 9213),
//! must-understand, the three date formats, Age lists.

use super::tests::{at, date, req, resp, timing, ttl, Fields, H, NOW};
use super::*;
use std::time::UNIX_EPOCH;

fn with_targeted(rs: &[(&str, &str)]) -> Result<i64, &'static str> {
    let names = [http::HeaderName::from_static("cdn-cache-control")];
    storable(
        &req("GET", &[]),
        &resp(200, rs),
        timing(),
        H,
        StaleDefaults::default(),
        &names,
    )
    .map(|m| ttl_secs(&m, at(NOW)))
    .map_err(Refusal::label)
}

#[test]
fn targeted_cache_control_rfc_9213() {
    let table: &[(Fields, Result<i64, &str>)] = &[
        // The targeted field replaces Cache-Control for this cache.
        (
            &[
                ("Cache-Control", "no-store"),
                ("CDN-Cache-Control", "max-age=60"),
            ],
            Ok(60),
        ),
        (
            &[
                ("Cache-Control", "max-age=60"),
                ("CDN-Cache-Control", "no-store"),
            ],
            Err("no-store"),
        ),
        (
            &[
                ("Cache-Control", "max-age=5"),
                ("CDN-Cache-Control", "private"),
            ],
            Err("private"),
        ),
        (&[("CDN-Cache-Control", "s-maxage=30, max-age=5")], Ok(30)),
        // Unknown extensions are ignored; an invalid field as a whole.
        (&[("CDN-Cache-Control", "max-age=20, x-ext=1")], Ok(20)),
        (
            &[
                ("Cache-Control", "max-age=60"),
                ("CDN-Cache-Control", "Max-Age=1"),
            ],
            Ok(60),
        ),
        // §2.1: delta-seconds must be Integers; a wrongly typed member invalidates the field.
        (
            &[
                ("Cache-Control", "no-store"),
                ("CDN-Cache-Control", "max-age=\"10000\""),
            ],
            Err("no-store"),
        ),
        (
            &[
                ("Cache-Control", "no-store"),
                ("CDN-Cache-Control", "max-age=10000, &&&&&"),
            ],
            Err("no-store"),
        ),
    ];
    for (rs, want) in table {
        assert_eq!(with_targeted(rs), *want, "{rs:?}");
    }
    // Without the field configured it is just another header.
    assert_eq!(
        ttl(
            &[],
            200,
            &[
                ("Cache-Control", "no-store"),
                ("CDN-Cache-Control", "max-age=60")
            ]
        ),
        Err("no-store")
    );
}

#[test]
fn must_understand_overrides_no_store_section_5_2_2_3() {
    let mu = "max-age=60, no-store, must-understand";
    assert_eq!(ttl(&[], 200, &[("Cache-Control", mu)]), Ok(60));
    assert_eq!(ttl(&[], 299, &[("Cache-Control", mu)]), Err("no-store"));
    assert_eq!(
        ttl(&[], 200, &[("Cache-Control", "max-age=60, no-store")]),
        Err("no-store")
    );
}

#[test]
fn expires_in_all_three_formats_section_5_3() {
    // NOW + 100 s in each format, with names in odd case.
    let t = at(NOW + 100);
    let imf = httpdate::fmt_http_date(t);
    let dt: std::time::SystemTime = t;
    let secs = dt.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(secs, NOW + 100);
    // 2023-11-14T22:15:00Z is NOW + 100 (NOW = 1_700_000_000 = Tue, 14 Nov 2023 22:13:20 GMT).
    for expires in [
        imf.as_str(),
        "tue, 14 NOV 2023 22:15:00 GMT",
        "Tuesday, 14-Nov-23 22:15:00 GMT",
        "tuesday, 14-nov-23 22:15:00 GMT",
        "Tue Nov 14 22:15:00 2023",
        "TUE NOV 14 22:15:00 2023",
        // A wrong day name does not change the date it names (the name is redundant).
        "Fri, 14 Nov 2023 22:15:00 GMT",
        "Sunday, 14-Nov-23 22:15:00 GMT",
        "Thu Nov 14 22:15:00 2023",
    ] {
        assert_eq!(
            ttl(&[], 200, &[("Date", &date(NOW)), ("Expires", expires)]),
            Ok(100),
            "{expires}"
        );
    }
    for invalid in [
        "0",
        "Tue, 14 Nov 2023 22:15:00 UTC",
        "yesterday",
        // Day-name leniency fixes nothing else: no comma, a two-digit year, a one-digit hour.
        "Fri 14 Nov 2023 22:15:00 GMT",
        "Fri, 14 Nov 23 22:15:00 GMT",
        "Fri, 14 Nov 2023 2:15:00 GMT",
        "Frid, 14 Nov 2023 22:15:00 GMT",
    ] {
        assert_eq!(
            ttl(
                &[],
                200,
                &[
                    ("Date", &date(NOW)),
                    ("Expires", invalid),
                    ("ETag", "\"a\"")
                ]
            ),
            Ok(0),
            "{invalid} means already expired"
        );
    }
}

#[test]
fn age_lists_count_their_first_member_section_5_1() {
    let d = date(NOW);
    // Age: 7200, 0 is 7200: with max-age=3600 the response is stale on arrival.
    assert_eq!(
        ttl(
            &[],
            200,
            &[
                ("Cache-Control", "max-age=3600"),
                ("Age", "7200, 0"),
                ("Date", &d),
                ("ETag", "\"a\"")
            ]
        ),
        Ok(-3600)
    );
    assert_eq!(
        ttl(
            &[],
            200,
            &[
                ("Cache-Control", "max-age=3600"),
                ("Age", "9223372036854775807"),
                ("Date", &d),
                ("ETag", "\"a\"")
            ]
        ),
        Ok(3600 - (1_i64 << 31))
    );
}
