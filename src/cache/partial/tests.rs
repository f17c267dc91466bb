//! Table tests for partial content: range parsing and resolution (RFC 9110 §14), containment
//! (RFC 9111 §3.3) and combination (§3.4).

use super::*;

fn resp(status: u16, fields: &[(&str, &str)]) -> ResponseHeader {
    let mut r = ResponseHeader::build(status, None).unwrap();
    for (k, v) in fields {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

fn req(method: &str, fields: &[(&str, &str)]) -> RequestHeader {
    let mut r = RequestHeader::build(method, b"/x", None).unwrap();
    for (k, v) in fields {
        r.append_header(k.to_string(), *v).unwrap();
    }
    r
}

/// A span expected of a row, as (first, last), or none.
type Want = Option<(u64, u64)>;
/// Header fields of one message in a row.
type Fields<'a> = &'a [(&'a str, &'a str)];

fn span(first: u64, last: u64) -> Span {
    Span { first, last }
}

fn part(first: u64, last: u64, complete: u64) -> Part {
    Part {
        span: span(first, last),
        complete,
    }
}

#[test]
fn single_ranges_parse_and_resolve_rfc_9110_14_1() {
    // (Range value, complete length, selected span)
    let table: &[(&str, u64, Want)] = &[
        ("bytes=0-1", 10, Some((0, 1))),
        ("bytes=4-", 10, Some((4, 9))),
        ("bytes=-5", 10, Some((5, 9))),
        ("bytes=-50", 10, Some((0, 9))), // §14.1.2: a longer suffix is the whole
        ("bytes=5-500", 10, Some((5, 9))), // a last position past the end is clamped
        ("BYTES = 2-3", 10, Some((2, 3))), // the unit is case-insensitive
        ("bytes=10-", 10, None),         // first position at the end: unsatisfiable
        ("bytes=-0", 10, None),          // an empty suffix selects nothing
        ("bytes=0-0", 0, None),          // nothing is in an empty representation
    ];
    for (v, complete, want) in table {
        let spec = single_range(v.as_bytes()).unwrap_or_else(|| panic!("{v} parses"));
        assert_eq!(
            spec.resolve(*complete),
            want.map(|(a, b)| span(a, b)),
            "{v}"
        );
    }
    // Not one byte range: multipart ranges, other units, malformed or inverted (§14.1.1).
    for v in [
        "bytes=0-1,5-6",
        "items=0-1",
        "bytes=a-b",
        "bytes=5-2",
        "bytes=-",
        "bytes 0-1",
        "bytes=+1-2",
    ] {
        assert_eq!(single_range(v.as_bytes()), None, "{v}");
    }
}

#[test]
fn content_range_needs_a_known_complete_length_rfc_9110_14_4() {
    let table: &[(&str, Option<Part>)] = &[
        ("bytes 4-9/10", Some(part(4, 9, 10))),
        ("bytes 0-0/1", Some(part(0, 0, 1))),
        ("bytes 0-4/*", None), // unknown length: suffixes could not be resolved
        ("bytes */10", None),  // the 416 form
        ("bytes 5-4/10", None), // inverted
        ("bytes 0-10/10", None), // past the end
        ("items 0-1/2", None),
        ("bytes 0-1", None),
    ];
    for (v, want) in table {
        assert_eq!(content_range(v.as_bytes()), *want, "{v}");
    }
    assert!(part(0, 9, 10).is_whole());
    assert!(!part(1, 9, 10).is_whole());
}

#[test]
fn strong_comparison_rfc_9110_8_8_3_2() {
    let table: &[(Option<&str>, Option<&str>, bool)] = &[
        (Some("\"a\""), Some("\"a\""), true),
        (Some("\"a\""), Some("\"b\""), false),
        (Some("W/\"a\""), Some("W/\"a\""), false), // weak tags never match strongly
        (Some("W/\"a\""), Some("\"a\""), false),
        (Some("\"a\""), None, false),
        (None, None, false), // no validator: nothing proves it is the same representation
        (Some("a"), Some("a"), false), // not an entity tag
    ];
    for (a, b, want) in table {
        assert_eq!(
            strong_match(a.map(str::as_bytes), b.map(str::as_bytes)),
            *want,
            "{a:?} {b:?}"
        );
    }
}

#[test]
fn a_stored_partial_answers_only_ranges_wholly_inside_it_rfc_9111_3_3() {
    let stored = resp(
        206,
        &[("Content-Range", "bytes 4-9/10"), ("ETag", "\"v1\"")],
    );
    // (request fields, the span answered)
    let table: &[(Fields, Want)] = &[
        (&[("Range", "bytes=-5")], Some((5, 9))),
        (&[("Range", "bytes=6-8")], Some((6, 8))),
        (&[("Range", "bytes=6-")], Some((6, 9))),
        (&[("Range", "bytes=-1")], Some((9, 9))),
        (&[("Range", "bytes=4-100")], Some((4, 9))), // clamped to the complete length
        (&[("Range", "bytes=3-5")], None),           // starts before the part
        (&[("Range", "bytes=-7")], None),            // suffix reaching before the part
        (&[("Range", "bytes=0-")], None),
        (&[("Range", "bytes=10-")], None), // unsatisfiable: the origin says 416
        (&[], None),                       // §3.3: never for a request without Range
        (&[("Range", "bytes=5-6,8-9")], None),
        (
            &[("Range", "bytes=5-6"), ("If-Range", "\"v1\"")],
            Some((5, 6)),
        ),
        (&[("Range", "bytes=5-6"), ("If-Range", "\"v2\"")], None),
        (&[("Range", "bytes=5-6"), ("If-Range", "W/\"v1\"")], None),
        (
            &[
                ("Range", "bytes=5-6"),
                ("If-Range", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ],
            None,
        ),
        (&[("Range", "bytes=5-6"), ("If-None-Match", "\"v1\"")], None),
        (
            &[
                ("Range", "bytes=5-6"),
                ("If-Modified-Since", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ],
            None,
        ),
    ];
    for (fields, want) in table {
        assert_eq!(
            answers(&req("GET", fields), &stored),
            want.map(|(a, b)| span(a, b)),
            "{fields:?}"
        );
    }
    // RFC 9110 §14.2: Range is defined for GET only; a HEAD never gets a part.
    assert_eq!(
        answers(&req("HEAD", &[("Range", "bytes=5-6")]), &stored),
        None
    );
    assert!(forwardable(&req("GET", &[("Range", "bytes=5-6")])));
    assert!(!forwardable(&req("HEAD", &[("Range", "bytes=5-6")])));
    assert!(!forwardable(&req("GET", &[("Range", "bytes=0-1,4-5")])));
    assert!(!forwardable(&req("GET", &[])));
}

#[test]
fn only_matching_strong_validators_and_touching_spans_combine_rfc_9111_3_4() {
    let v1 = resp(206, &[("ETag", "\"v1\"")]);
    let v2 = resp(206, &[("ETag", "\"v2\"")]);
    let weak = resp(206, &[("ETag", "W/\"v1\"")]);
    let none = resp(206, &[]);
    let table: &[(&ResponseHeader, Part, &ResponseHeader, Part, Want)] = &[
        (&v1, part(0, 4, 10), &v1, part(5, 9, 10), Some((0, 9))), // adjacent
        (&v1, part(5, 9, 10), &v1, part(0, 6, 10), Some((0, 9))), // overlapping
        (&v1, part(2, 3, 10), &v1, part(0, 9, 10), Some((0, 9))), // contained
        (&v1, part(0, 3, 10), &v1, part(5, 9, 10), None),         // a gap
        (&v1, part(0, 4, 10), &v2, part(5, 9, 10), None),         // another representation
        (&weak, part(0, 4, 10), &weak, part(5, 9, 10), None),     // weak: not byte-equal
        (&none, part(0, 4, 10), &none, part(5, 9, 10), None),     // no validator
        (&v1, part(0, 4, 10), &v1, part(5, 9, 11), None),         // lengths disagree
    ];
    for (sh, old, nh, new, want) in table {
        assert_eq!(
            combine(sh, *old, nh, *new),
            want.map(|(a, b)| span(a, b)),
            "{old:?} + {new:?}"
        );
    }
}

#[test]
fn merged_bytes_take_the_newer_part_where_they_overlap() {
    let m = merge(span(0, 9), span(0, 5), b"abcdef", span(4, 9), b"EFGHIJ").unwrap();
    assert_eq!(m, b"abcdEFGHIJ");
    let m = merge(span(2, 7), span(5, 7), b"fgh", span(2, 4), b"cde").unwrap();
    assert_eq!(m, b"cdefgh");
    assert_eq!(
        merge(span(0, 9), span(0, 5), b"abc", span(4, 9), b"EFGHIJ"),
        None
    );
}

#[test]
fn stored_served_and_completed_headers_frame_their_bytes() {
    let origin = resp(
        206,
        &[
            ("Content-Range", "bytes 4-9/10"),
            ("Content-Length", "6"),
            ("ETag", "\"v1\""),
            ("Cache-Control", "max-age=60"),
        ],
    );
    let get =
        |h: &ResponseHeader, n: &str| h.headers.get(n).map(|v| v.to_str().unwrap().to_string());
    let served = served_header(&origin, 10, span(6, 8));
    assert_eq!(served.status.as_u16(), 206);
    assert_eq!(
        get(&served, "content-range").as_deref(),
        Some("bytes 6-8/10")
    );
    assert_eq!(get(&served, "content-length").as_deref(), Some("3"));
    assert_eq!(get(&served, "etag").as_deref(), Some("\"v1\""));
    let stored = partial_header(&origin, part(0, 9, 10));
    assert_eq!(
        get(&stored, "content-range").as_deref(),
        Some("bytes 0-9/10")
    );
    let whole = complete_header(&origin, 10);
    assert_eq!(whole.status.as_u16(), 200);
    assert_eq!(whole.get_reason_phrase(), Some("OK"));
    assert_eq!(get(&whole, "content-range"), None);
    assert_eq!(get(&whole, "content-length").as_deref(), Some("10"));
    assert_eq!(as_complete(&origin).status.as_u16(), 200);
}

#[test]
fn only_single_known_length_unvaried_parts_within_the_size_limit_are_kept() {
    let table: &[(Fields, Result<Part, Unstorable>)] = &[
        (&[("Content-Range", "bytes 4-9/10")], Ok(part(4, 9, 10))),
        (
            &[("Content-Range", "bytes 4-9/10"), ("Content-Length", "6")],
            Ok(part(4, 9, 10)),
        ),
        (&[], Err(Unstorable::ContentRange)),
        (
            &[("Content-Type", "multipart/byteranges; boundary=x")],
            Err(Unstorable::ContentRange),
        ),
        (
            &[("Content-Range", "bytes 0-4/*")],
            Err(Unstorable::ContentRange),
        ),
        (
            &[
                ("Content-Range", "bytes 4-9/10"),
                ("Vary", "Accept-Encoding"),
            ],
            Err(Unstorable::Vary),
        ),
        (
            &[("Content-Range", "bytes 4-9/10"), ("Content-Length", "5")],
            Err(Unstorable::Length),
        ),
        (
            &[("Content-Range", "bytes 0-100/1000")],
            Err(Unstorable::TooLarge),
        ),
    ];
    for (fields, want) in table {
        assert_eq!(storable_part(&resp(206, fields), 100), *want, "{fields:?}");
    }
}

#[test]
fn a_partial_has_its_own_key_under_the_same_url() {
    use pingora::cache::key::CacheHashKey;
    let full = crate::cache::key::build("a.test", b"/x");
    let p = key_of(&full);
    assert_eq!(
        p.primary_bin(),
        full.primary_bin(),
        "purges of the URL reach it"
    );
    assert_ne!(
        p.combined_bin(),
        full.combined_bin(),
        "lookups of the object never find it"
    );
    assert_eq!(key_of(&p).combined_bin(), p.combined_bin());
}
