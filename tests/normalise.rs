//! One normal form decides the route, the cache key and what the origin is sent: the authority
//! (lower case, no trailing dot, no default port) and the path (RFC 3986 §6.2.2). Each test
//! would fail if routing and the key read different spellings.

mod common;

use common::http::{Origin, Reply};
use common::Shellac;

/// A caching `api.example.com` route (and an uncached `/api/` route on any host) before a
/// caching catch-all, each upstream with its own origin that names itself in the body.
async fn two_routes() -> (Origin, Origin, Shellac) {
    let api = Origin::start(|r| {
        Reply::ok(format!("api {}", r.target)).header("Cache-Control", "max-age=60")
    })
    .await;
    let web = Origin::start(|r| {
        Reply::ok(format!("web {}", r.target)).header("Cache-Control", "max-age=60")
    })
    .await;
    let config = format!(
        "upstreams:\n  api:\n    backends: [\"{}\"]\n  web:\n    backends: [\"{}\"]\nroutes:\n  - {{host: api.example.com, path_prefix: /, upstream: api, cache: true}}\n  - {{host: \"*\", path_prefix: /api/, upstream: api}}\n  - {{host: \"*\", path_prefix: /, upstream: web, cache: true}}\n",
        api.addr, web.addr
    );
    let shellac = Shellac::start(&config).await;
    (api, web, shellac)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trailing_dot_host_goes_to_its_own_route_and_never_shares_a_key() {
    let (api, web, shellac) = two_routes().await;
    // Before the fix the dotted spelling went to the catch-all and its copy was stored under the
    // api key, which every later api request then read.
    for host in [
        "api.example.com.",
        "api.example.com",
        "API.Example.com.",
        "api.example.com:80",
    ] {
        let r = shellac.request("GET", "/x", &[("Host", host)]).await;
        assert_eq!(r.status, 200, "{host}");
        assert_eq!(r.text(), "api /x", "{host}: the api route's own answer");
    }
    assert_eq!(api.count(), 1, "one fill, read by every spelling");
    assert_eq!(web.count(), 0, "the catch-all never saw an api request");
    let r = shellac.request("GET", "/x", &[("Host", "www.test")]).await;
    assert_eq!(
        r.text(),
        "web /x",
        "the catch-all's copy is under its own key"
    );
    assert_eq!(web.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn path_spellings_cannot_dodge_a_route() {
    let (api, web, shellac) = two_routes().await;
    for target in [
        "/api/users",
        "/%61pi/users",
        "//api/users",
        "/./api/users",
        "/x/../api/users",
        "/x/%2E%2E/api/users",
        "/api//users",
    ] {
        let r = shellac
            .request("GET", target, &[("Host", "www.test")])
            .await;
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(
            r.text(),
            "api /api/users",
            "{target}: routed to /api/ and forwarded in normal form"
        );
    }
    assert_eq!(api.count(), 7);
    assert_eq!(web.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn spellings_of_one_path_share_one_cache_entry_and_the_query_is_kept() {
    let (_api, web, shellac) = two_routes().await;
    let r = shellac.get("/a/b?q=//x/../%61").await;
    assert_eq!(
        r.text(),
        "web /a/b?q=//x/../%61",
        "query forwarded byte for byte"
    );
    for target in [
        "/a/./b?q=//x/../%61",
        "//a/b?q=//x/../%61",
        "/%61/b?q=//x/../%61",
    ] {
        let r = shellac.get(target).await;
        assert_eq!(r.text(), "web /a/b?q=//x/../%61", "{target}");
        assert!(
            r.header("cache-status")
                .unwrap_or("")
                .starts_with("shellac; hit"),
            "{target}: {:?}",
            r.header("cache-status")
        );
    }
    assert_eq!(web.count(), 1);
    let r = shellac.get("/a/b?q=other").await;
    assert_eq!(
        r.text(),
        "web /a/b?q=other",
        "a different query is another entry"
    );
    assert_eq!(web.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn encoded_slash_nul_and_malformed_escapes_are_refused() {
    let (api, web, shellac) = two_routes().await;
    for target in ["/api%2Fusers", "/a%2fb", "/a%00b", "/a%zz", "/a%4"] {
        let r = shellac.get(target).await;
        assert_eq!(r.status, 400, "{target}");
    }
    assert_eq!(api.count() + web.count(), 0, "nothing reached an origin");
    let r = shellac.get("/a?x=%2F%00").await;
    assert_eq!(r.status, 200, "the query is the origin's business");
}

#[tokio::test(flavor = "multi_thread")]
async fn absolute_form_names_the_host_for_the_route_the_key_and_the_origin() {
    let origin = Origin::start(|r| {
        Reply::ok(format!("{} {}", r.header("host").unwrap_or("-"), r.target))
            .header("Cache-Control", "max-age=60")
    })
    .await;
    let shellac = Shellac::start(&common::simple_config(&[&origin], "", ", cache: true")).await;
    let raw = |req: &'static str| {
        let addr = shellac.addr;
        async move {
            let mut c = common::http::Client::connect(addr).await.unwrap();
            c.send_raw(req.as_bytes()).await.unwrap();
            c.read_response(false).await.unwrap()
        }
    };
    // Without Host: each target's host is its own key (before, both keyed on an empty host).
    let a = raw("GET http://a.test/x HTTP/1.1\r\n\r\n").await;
    let b = raw("GET http://b.test/x HTTP/1.1\r\n\r\n").await;
    // Pingora forwards the absolute-form target as received (origins must accept it).
    assert_eq!(a.text(), "a.test http://a.test/x");
    assert_eq!(b.text(), "b.test http://b.test/x", "not a.test's copy");
    assert_eq!(origin.count(), 2);
    // With the same Host it is the same entry; a different Host is a 400 (Pingora: RFC 9112
    // §3.2.2 makes them one authority).
    let c = raw("GET http://a.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert_eq!(
        (c.status, c.text().as_str()),
        (200, "a.test http://a.test/x")
    );
    assert!(c.header("cache-status").unwrap().contains("hit"));
    assert_eq!(origin.count(), 2);
    let mismatch = raw("GET http://a.test/x HTTP/1.1\r\nHost: b.test\r\n\r\n").await;
    assert_eq!(mismatch.status, 400);
    let bad = raw("GET http://a%20b/x HTTP/1.1\r\n\r\n").await;
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_if_cached_is_ignored_where_nothing_is_cached() {
    let origin = Origin::start(|_| Reply::ok("fresh from the origin")).await;
    let shellac = Shellac::start(&common::simple_config(&[&origin], "", "")).await;
    let r = shellac
        .request("GET", "/x", &[("Cache-Control", "only-if-cached")])
        .await;
    assert_eq!(
        r.status, 200,
        "a route without a cache is not a cache (§5.2.1.7)"
    );
    assert_eq!(r.text(), "fresh from the origin");
    assert_eq!(origin.count(), 1);
}
