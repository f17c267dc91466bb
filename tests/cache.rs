//! HTTP caching through the real binary: every rule is proven by what the origin saw and by
//! the headers the client got.

mod common;

use common::config::{Route, TestConfig};
use common::http::{Client, Origin, Reply, Request};
use common::{simple_config, Shellac};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A caching route over `origin`, typed (tests/common/config.rs); `route` adds route keys.
/// With `SHELLAC_TEST_TIER=memcached` the cache is memcached alone (no memory tier), so every
/// rule below is also proven on the shared tier.
fn tier(origin: &Origin, route: Route) -> TestConfig {
    tier_at(origin.addr, route)
}

/// [`tier`] over an origin the test serves itself.
fn tier_at(origin: std::net::SocketAddr, route: Route) -> TestConfig {
    let c = TestConfig::new()
        .upstream("app", &[origin])
        .route(route.cached());
    if !on_memcached() {
        return c;
    }
    static N: AtomicUsize = AtomicUsize::new(0);
    let ns = format!(
        "t{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    c.memory("0")
        .memcached(&[common::memcached::shared()], &ns)
        .set("cache.memcached.timeout", "1s")
}

/// [`tier`] with the catch-all route as is.
fn cached(origin: &Origin) -> TestConfig {
    tier(origin, Route::to("app"))
}

fn on_memcached() -> bool {
    std::env::var("SHELLAC_TEST_TIER").is_ok_and(|v| v == "memcached")
}

fn cc(v: &'static str) -> impl Fn(&Request) -> Reply {
    move |req| Reply::ok(format!("body of {}", req.target)).header("Cache-Control", v)
}

fn status_of(r: &common::http::Response) -> String {
    r.header("cache-status").unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn miss_then_hit_with_age_and_cache_status() {
    let origin = Origin::start(cc("max-age=60")).await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    let r1 = shellac.get("/a").await;
    assert_eq!(r1.status, 200);
    assert_eq!(status_of(&r1), "shellac; fwd=miss; fwd-status=200; stored");
    let r2 = shellac.get("/a").await;
    assert_eq!(r2.text(), "body of /a");
    assert!(
        status_of(&r2).starts_with("shellac; hit; ttl="),
        "{}",
        status_of(&r2)
    );
    assert!(r2.header("age").is_some(), "Age on every hit");
    let r3 = shellac.request("HEAD", "/a", &[]).await;
    assert_eq!(r3.status, 200);
    assert_eq!(
        r3.header("content-length"),
        Some("10"),
        "HEAD answered from the stored GET"
    );
    assert_eq!(origin.count(), 1);
    assert_eq!(
        shellac
            .metric("shellac_cache_lookups_total", &[("result", "hit")])
            .await,
        2.0
    );
    assert_eq!(
        shellac
            .metric("shellac_cache_lookups_total", &[("result", "miss")])
            .await,
        1.0
    );
    assert!(
        shellac
            .metric("shellac_cache_served_bytes_total", &[])
            .await
            >= 10.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn uncached_routes_and_unsafe_methods_pass_through() {
    let origin = Origin::start(cc("max-age=60")).await;
    let shellac = Shellac::start(&simple_config(&[&origin], "", "")).await;
    shellac.get("/a").await;
    let r = shellac.get("/a").await;
    assert_eq!(origin.count(), 2, "route without cache: true never caches");
    assert_eq!(r.header("cache-status"), Some("shellac; fwd=bypass"));
    let cached = Shellac::start(&cached(&origin).yaml()).await;
    let r = cached.request("POST", "/a", &[]).await;
    assert_eq!(r.header("cache-status"), Some("shellac; fwd=method"));
}

#[tokio::test(flavor = "multi_thread")]
async fn freshness_expires() {
    let origin = Origin::start(cc("max-age=1")).await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    shellac.get("/e").await;
    shellac.get("/e").await;
    assert_eq!(origin.count(), 1);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = shellac.get("/e").await;
    assert_eq!(origin.count(), 2, "an expired entry is fetched again");
    assert!(status_of(&r).contains("fwd=stale"), "{}", status_of(&r));
}

#[tokio::test(flavor = "multi_thread")]
async fn response_directives_decide_storage() {
    let origin = Origin::start(|req| {
        let r = Reply::ok("x");
        match req.path() {
            "/no-store" => r.header("Cache-Control", "no-store, max-age=60"),
            "/private" => r.header("Cache-Control", "private, max-age=60"),
            "/cookie" => r
                .header("Cache-Control", "max-age=60")
                .header("Set-Cookie", "s=1"),
            "/public-cookie" => r
                .header("Cache-Control", "public, max-age=60")
                .header("Set-Cookie", "s=1"),
            "/none" => r,
            "/heuristic" => r.header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            "/expires" => r.header("Expires", "Thu, 01 Jan 2037 00:00:00 GMT"),
            "/bad-expires" => r.header("Expires", "0"),
            "/s-maxage" => r.header("Cache-Control", "max-age=0, s-maxage=60"),
            "/error" => Reply::new(503, "down"),
            "/error-cacheable" => Reply::new(503, "down").header("Cache-Control", "max-age=60"),
            "/vary-star" => r.header("Cache-Control", "max-age=60").header("Vary", "*"),
            _ => r.header("Cache-Control", "max-age=60"),
        }
    })
    .await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    let table = [
        ("/no-store", false),
        ("/private", false),
        ("/cookie", false),
        ("/public-cookie", true),
        ("/none", false),
        ("/heuristic", true),
        ("/expires", true),
        ("/bad-expires", false),
        ("/s-maxage", true),
        ("/error", false),
        ("/error-cacheable", true),
        ("/vary-star", false),
    ];
    for (path, stored) in table {
        shellac.get(path).await;
        let r = shellac.get(path).await;
        let seen = origin.count_path(path);
        assert_eq!(
            seen,
            if stored { 1 } else { 2 },
            "{path}: origin saw {seen}, cache-status {}",
            status_of(&r)
        );
    }
    assert!(
        shellac
            .metric("shellac_cache_not_stored_total", &[("reason", "private")])
            .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn authorization_needs_explicit_permission() {
    let origin = Origin::start(|req| {
        Reply::ok("secret").header(
            "Cache-Control",
            if req.path() == "/shared" {
                "public, max-age=60"
            } else {
                "max-age=60"
            },
        )
    })
    .await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    for path in ["/mine", "/shared"] {
        shellac
            .request("GET", path, &[("Authorization", "Bearer a")])
            .await;
        shellac
            .request("GET", path, &[("Authorization", "Bearer a")])
            .await;
    }
    assert_eq!(origin.count_path("/mine"), 2);
    assert_eq!(origin.count_path("/shared"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn request_directives() {
    let origin = Origin::start(|req| {
        if req.header("if-none-match") == Some("\"v1\"") {
            return Reply::new(304, "")
                .header("ETag", "\"v1\"")
                .header("Cache-Control", "max-age=60");
        }
        Reply::ok("fresh")
            .header("Cache-Control", "max-age=60")
            .header("ETag", "\"v1\"")
    })
    .await;
    // The route honours client reloads; by default they are ignored (tests/load_balancer.rs).
    let shellac = Shellac::start(
        &tier(
            &origin,
            Route::to("app").with("client_cache_control", "honor"),
        )
        .yaml(),
    )
    .await;
    // only-if-cached on a miss: 504 without asking the origin.
    let r = shellac
        .request("GET", "/d", &[("Cache-Control", "only-if-cached")])
        .await;
    assert_eq!(r.status, 504);
    assert_eq!(origin.count(), 0);
    shellac.get("/d").await;
    let r = shellac
        .request("GET", "/d", &[("Cache-Control", "only-if-cached")])
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "fresh"));
    assert_eq!(origin.count(), 1);
    // no-cache: validated with the origin first (a conditional request), then served.
    let r = shellac
        .request("GET", "/d", &[("Cache-Control", "no-cache")])
        .await;
    assert_eq!(r.text(), "fresh");
    assert_eq!(origin.count(), 2);
    assert_eq!(origin.requests()[1].header("if-none-match"), Some("\"v1\""));
    assert!(
        status_of(&r).contains("fwd=request; fwd-status=304"),
        "{}",
        status_of(&r)
    );
    // max-age=0 from the client also forces validation; a generous max-age does not.
    shellac
        .request("GET", "/d", &[("Cache-Control", "max-age=0")])
        .await;
    assert_eq!(origin.count(), 3);
    shellac
        .request("GET", "/d", &[("Cache-Control", "max-age=600")])
        .await;
    shellac
        .request("GET", "/d", &[("Cache-Control", "min-fresh=10")])
        .await;
    assert_eq!(origin.count(), 3);
    shellac
        .request("GET", "/d", &[("Cache-Control", "min-fresh=3600")])
        .await;
    assert_eq!(origin.count(), 4);
    // A client's no-store: the response is not stored, but other clients' entries survive.
    shellac
        .request("GET", "/ns", &[("Cache-Control", "no-store")])
        .await;
    shellac.get("/ns").await;
    assert_eq!(origin.count_path("/ns"), 2);
    shellac.get("/ns").await;
    assert_eq!(origin.count_path("/ns"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_stale_serves_stale_unless_forbidden() {
    let origin = Origin::start(|req| {
        let v = if req.path() == "/mr" {
            "max-age=1, must-revalidate"
        } else {
            "max-age=1"
        };
        Reply::ok("v").header("Cache-Control", v)
    })
    .await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    shellac.get("/ms").await;
    shellac.get("/mr").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = shellac
        .request("GET", "/ms", &[("Cache-Control", "max-stale=60")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        origin.count_path("/ms"),
        1,
        "served stale as the client allowed"
    );
    shellac
        .request("GET", "/mr", &[("Cache-Control", "max-stale=60")])
        .await;
    assert_eq!(origin.count_path("/mr"), 2, "must-revalidate forbids it");
}

#[tokio::test(flavor = "multi_thread")]
async fn vary_keeps_one_variant_per_selecting_header() {
    let origin = Origin::start(|req| {
        Reply::ok(format!(
            "enc={}",
            req.header("accept-encoding").unwrap_or("none")
        ))
        .header("Cache-Control", "max-age=60")
        .header("Vary", "Accept-Encoding")
    })
    .await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    for _ in 0..2 {
        for enc in ["gzip", "br", ""] {
            let h: Vec<(&str, &str)> = if enc.is_empty() {
                vec![]
            } else {
                vec![("Accept-Encoding", enc)]
            };
            let r = shellac.request("GET", "/v", &h).await;
            assert_eq!(
                r.text(),
                format!("enc={}", if enc.is_empty() { "none" } else { enc })
            );
        }
    }
    assert_eq!(origin.count(), 3, "three variants, each fetched once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_304_refreshes_the_stored_response() {
    let version = Arc::new(AtomicUsize::new(1));
    let v = version.clone();
    let origin = Origin::start(move |req| {
        let n = v.load(Ordering::SeqCst);
        if req.header("if-none-match") == Some("\"e\"") {
            return Reply::new(304, "")
                .header("ETag", "\"e\"")
                .header("Cache-Control", "max-age=60")
                .header("X-Version", n.to_string());
        }
        Reply::ok("stored body")
            .header("Cache-Control", "max-age=1")
            .header("ETag", "\"e\"")
            .header("X-Version", n.to_string())
    })
    .await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    assert_eq!(shellac.get("/r").await.header("x-version"), Some("1"));
    version.store(2, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = shellac.get("/r").await;
    assert_eq!(r.text(), "stored body");
    assert_eq!(
        r.header("x-version"),
        Some("2"),
        "304 headers replace stored ones (§4.3.4)"
    );
    assert!(
        status_of(&r).contains("fwd=stale; fwd-status=304"),
        "{}",
        status_of(&r)
    );
    assert_eq!(origin.requests()[1].header("if-none-match"), Some("\"e\""));
    // Now fresh for 60 s per the 304.
    let r = shellac.get("/r").await;
    assert!(
        status_of(&r).starts_with("shellac; hit"),
        "{}",
        status_of(&r)
    );
    assert_eq!(r.header("x-version"), Some("2"));
    assert_eq!(origin.count(), 2);
    // A client's own conditional request is answered 304 from the cache.
    let r = shellac
        .request("GET", "/r", &[("If-None-Match", "\"e\"")])
        .await;
    assert_eq!(r.status, 304);
    assert_eq!(origin.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn unsafe_methods_invalidate_the_uri_and_its_location() {
    let origin = Origin::start(|req| match req.method.as_str() {
        "POST" => Reply::new(201, "made").header("Location", "/items/7"),
        "DELETE" => Reply::new(500, "failed"),
        _ => Reply::ok("item").header("Cache-Control", "max-age=60"),
    })
    .await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    for p in ["/items", "/items/7"] {
        shellac.get(p).await;
        shellac.get(p).await;
    }
    assert_eq!(origin.count(), 2);
    let mut c = Client::connect(shellac.addr).await.unwrap();
    assert_eq!(
        c.request("POST", "/items", &[], b"new")
            .await
            .unwrap()
            .status,
        201
    );
    shellac.get("/items").await;
    shellac.get("/items/7").await;
    assert_eq!(origin.count_path("/items"), 3, "POST invalidated /items");
    assert_eq!(origin.count_path("/items/7"), 2, "and its Location");
    // An error response invalidates nothing.
    shellac.request("DELETE", "/items/7", &[]).await;
    shellac.get("/items/7").await;
    assert_eq!(origin.count_path("/items/7"), 3, "(2 GETs + the DELETE)");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_concurrent_cold_requests_cause_one_origin_request() {
    let origin = Origin::start(|_| {
        Reply::ok("slow")
            .header("Cache-Control", "max-age=60")
            .delay(Duration::from_millis(300))
    })
    .await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let addr = shellac.addr;
        tasks.push(tokio::spawn(async move {
            common::http::get(addr, "/cold").await.unwrap()
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "slow"));
    }
    assert_eq!(origin.count(), 1);
    assert!(
        shellac
            .metric("shellac_cache_lookups_total", &[("result", "coalesced")])
            .await
            >= 50.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_uncacheable_url_is_not_serialised() {
    let origin = Origin::start(|_| {
        Reply::ok("dynamic")
            .header("Cache-Control", "no-store")
            .delay(Duration::from_millis(500))
    })
    .await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    shellac.get("/dyn").await; // learns that /dyn is uncacheable
    let t = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let addr = shellac.addr;
        tasks.push(tokio::spawn(async move {
            common::http::get(addr, "/dyn").await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
    assert!(
        t.elapsed() < Duration::from_millis(1400),
        "20 requests took {:?}: queued behind each other",
        t.elapsed()
    );
    assert_eq!(origin.count(), 21);
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_while_revalidate_refreshes_once_in_the_background() {
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    let origin = Origin::start(move |_| {
        let v = c.fetch_add(1, Ordering::SeqCst);
        Reply::ok(format!("v{v}"))
            .header("Cache-Control", "max-age=1, stale-while-revalidate=30")
            .delay(Duration::from_millis(200))
    })
    .await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    assert_eq!(shellac.get("/s").await.text(), "v0");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let t = Instant::now();
    let mut stale = Vec::new();
    for _ in 0..5 {
        stale.push(shellac.get("/s").await);
    }
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "stale answers do not wait for the origin"
    );
    for r in &stale {
        assert_eq!(r.text(), "v0");
        assert!(
            status_of(r).contains("stale-while-revalidate"),
            "{}",
            status_of(r)
        );
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        origin.count(),
        2,
        "one background refresh for five stale hits"
    );
    let r = shellac.get("/s").await;
    assert_eq!(r.text(), "v1");
    assert!(status_of(&r).starts_with("shellac; hit"));
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_if_error_covers_a_dead_or_failing_origin() {
    let failing = Arc::new(AtomicUsize::new(0));
    let f = failing.clone();
    let origin = Origin::start(move |req| {
        if f.load(Ordering::SeqCst) == 1 {
            return Reply::new(503, "origin error");
        }
        let v = if req.path() == "/mr" {
            "max-age=1, stale-if-error=60, must-revalidate"
        } else {
            "max-age=1, stale-if-error=60"
        };
        Reply::ok("good").header("Cache-Control", v)
    })
    .await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    shellac.get("/sie").await;
    shellac.get("/mr").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    failing.store(1, Ordering::SeqCst);
    let r = shellac.get("/sie").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "good"),
        "5xx answered with the stale copy"
    );
    assert!(
        status_of(&r).contains("stale-if-error"),
        "{}",
        status_of(&r)
    );
    let r = shellac.get("/mr").await;
    assert_eq!(r.status, 503, "must-revalidate forbids stale-if-error");
    origin.kill();
    let r = shellac.get("/sie").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "good"),
        "dead origin: stale copy"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn route_defaults_for_stale_windows() {
    let failing = Arc::new(AtomicUsize::new(0));
    let f = failing.clone();
    let origin = Origin::start(move |_| {
        if f.load(Ordering::SeqCst) == 1 {
            Reply::new(500, "x")
        } else {
            Reply::ok("ok").header("Cache-Control", "max-age=1")
        }
    })
    .await;
    let shellac =
        Shellac::start(&tier(&origin, Route::to("app").with("stale_if_error", "1m")).yaml()).await;
    shellac.get("/d").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    failing.store(1, Ordering::SeqCst);
    assert_eq!(shellac.get("/d").await.text(), "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_are_served_from_the_stored_full_response() {
    let body: String = (0..1000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let b = body.clone();
    let origin = Origin::start(move |req| {
        let r = Reply::ok(b.clone()).header("Cache-Control", "max-age=60");
        // A chunked origin: the stored copy still gets a length, so hits can be ranged.
        if req.path() == "/range" {
            r.chunked()
        } else {
            r
        }
    })
    .await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    let r = shellac
        .request("GET", "/sized", &[("Range", "bytes=10-19")])
        .await;
    assert_eq!(
        r.status, 206,
        "a range on a miss is carved from the full fetch"
    );
    assert_eq!(r.text(), &body[10..20]);
    assert!(
        origin.requests()[0].header("range").is_none(),
        "the origin is asked for the whole object"
    );
    assert_eq!(
        shellac
            .request("GET", "/sized", &[("Range", "bytes=20-29")])
            .await
            .text(),
        &body[20..30]
    );
    assert_eq!(origin.count(), 1);

    let r = shellac
        .request("GET", "/range", &[("Range", "bytes=10-19")])
        .await;
    // A chunked miss has no length to range against while it streams: the whole object, 200
    // (RFC 9110 §14.2 lets a server ignore Range). The stored copy is length-framed, so the
    // next ranged request is a 206 from the cache.
    assert_eq!(r.status, 200, "a chunked miss answers whole");
    let r = shellac
        .request("GET", "/range", &[("Range", "bytes=100-199")])
        .await;
    assert_eq!((r.status, r.text()), (206, body[100..200].to_string()));
    assert_eq!(r.header("content-range"), Some("bytes 100-199/1000"));
    let r = shellac
        .request("GET", "/range", &[("Range", "bytes=-5")])
        .await;
    assert_eq!(r.text(), &body[995..]);
    let r = shellac
        .request("GET", "/range", &[("Range", "bytes=0-1,500-501")])
        .await;
    assert_eq!(r.status, 206);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("multipart/byteranges"));
    assert!(r.text().contains(&body[500..502]));
    let r = shellac
        .request("GET", "/range", &[("Range", "bytes=5000-")])
        .await;
    assert_eq!(r.status, 416);
    assert_eq!(origin.count_path("/range"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_from_allowed_sources_only_and_never_forwarded() {
    let origin = Origin::start(|req| {
        Reply::ok(req.header("accept-encoding").unwrap_or("-").to_string())
            .header("Cache-Control", "max-age=60")
            .header("Vary", "Accept-Encoding")
    })
    .await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    shellac.get("/p").await;
    shellac
        .request("GET", "/p", &[("Accept-Encoding", "gzip")])
        .await;
    assert_eq!(origin.count(), 2);
    let r = shellac.request("PURGE", "/p", &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        shellac.request("PURGE", "/p", &[]).await.status,
        404,
        "nothing left"
    );
    shellac.get("/p").await;
    shellac
        .request("GET", "/p", &[("Accept-Encoding", "gzip")])
        .await;
    assert_eq!(origin.count(), 4, "both variants were purged");
    assert!(origin.requests().iter().all(|r| r.method != "PURGE"));

    // A proxy that only allows 10.0.0.0/8: our loopback client is refused, XFF or not.
    let config = cached(&origin).yaml().replace("admin:", "x:")
        + "admin: {listen: \"{ADMIN}\", purge_allow: [\"10.0.0.0/8\"]}\n";
    let strict = Shellac::start(&config).await;
    strict.get("/q").await;
    let r = strict
        .request("PURGE", "/q", &[("X-Forwarded-For", "10.1.2.3")])
        .await;
    assert_eq!(r.status, 403);
    strict.get("/q").await;
    assert_eq!(
        origin.count_path("/q"),
        1,
        "a refused purge leaves the entry"
    );
    assert!(origin.requests().iter().all(|r| r.method != "PURGE"));
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_within_its_limit_under_a_large_working_set() {
    if on_memcached() {
        return; // a memory-tier property
    }
    let origin = Origin::start(|req| {
        Reply::ok(vec![b'm'; 64 * 1024 - req.target.len()]).header("Cache-Control", "max-age=600")
    })
    .await;
    let limit = 4 << 20;
    let config = cached(&origin)
        .memory("4MiB")
        .set("cache.memory.max_object", "1MiB");
    let shellac = Shellac::start(&config.yaml()).await;
    let baseline = vm_rss_kib(shellac.pid());
    // 64 MiB of distinct objects: sixteen times the store, so a store that kept them would
    // grow far past the bound below, while allocator and runtime noise stays well under it.
    for i in 0..1024 {
        let r = shellac.get(&format!("/obj/{i}")).await;
        assert_eq!(r.status, 200);
        if i % 128 == 127 {
            let used = shellac.metric("shellac_cache_memory_bytes", &[]).await;
            assert!(used <= limit as f64, "store at {used} bytes, limit {limit}");
            assert!(used > 0.0);
        }
    }
    assert_eq!(
        shellac
            .metric("shellac_cache_memory_limit_bytes", &[])
            .await,
        limit as f64
    );
    assert!(shellac.metric("shellac_cache_evictions_total", &[]).await > 900.0);
    let grown = vm_rss_kib(shellac.pid()).saturating_sub(baseline) / 1024;
    eprintln!("RSS grew {grown} MiB for a 4 MiB store after 64 MiB of objects");
    assert!(grown < 32, "RSS grew {grown} MiB for a 4 MiB store");
    // The most recent objects are still cached.
    let before = origin.count();
    shellac.get("/obj/1023").await;
    assert_eq!(origin.count(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_age_near_two_to_the_63_neither_panics_nor_stops_later_hits() {
    // RFC 9111 §1.2.2: too large to represent counts as 2^31. Before the clamp the age sum
    // overflowed and panicked the request task (the client saw its connection drop).
    let origin = Origin::start(|req| {
        let age = if req.path() == "/huge" {
            "9223372036854775807"
        } else {
            "2147483000"
        };
        Reply::ok(format!("body of {}", req.target))
            .header("Cache-Control", "max-age=2147483647")
            .header("Age", age)
    })
    .await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    for i in 0..3 {
        let r = shellac.get("/huge").await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.text(), "body of /huge", "request {i}");
        // 2^31 s old is past any lifetime: never a fresh hit. (Whether it is kept for a stale
        // window depends on cache.stale_on_disconnect; either way the stored Age is read again
        // on the next lookup, the path that panicked on every hit.)
        assert!(
            !status_of(&r).contains("hit"),
            "request {i}: {}",
            status_of(&r)
        );
    }
    // An Age just under 2^31 with a lifetime just over it is stored, and its hits add the
    // resident time to the stored Age without overflowing.
    let r = shellac.get("/large").await;
    assert_eq!(status_of(&r), "shellac; fwd=miss; fwd-status=200; stored");
    for i in 0..2 {
        let r = shellac.get("/large").await;
        assert_eq!(r.text(), "body of /large");
        assert!(
            status_of(&r).starts_with("shellac; hit"),
            "hit {i}: {}",
            status_of(&r)
        );
        let age: u64 = r.header("age").expect("Age on a hit").parse().unwrap();
        assert!((2147483000..=1 << 31).contains(&age), "hit {i}: Age {age}");
    }
    assert_eq!(origin.count(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn cdn_cache_control_governs_this_cache_and_stops_here_unless_forwarded() {
    // Browsers are told not to store; this cache is told one minute (RFC 9213).
    let origin = Origin::start(|req| {
        Reply::ok(format!("body of {}", req.target))
            .header("Cache-Control", "no-store")
            .header("CDN-Cache-Control", "max-age=60")
    })
    .await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    shellac.get("/t").await;
    let r = shellac.get("/t").await;
    assert!(status_of(&r).contains("hit"), "{}", status_of(&r));
    assert_eq!(origin.count(), 1);
    assert_eq!(
        r.header("cache-control"),
        Some("no-store"),
        "sent on unchanged"
    );
    assert_eq!(r.header("cdn-cache-control"), None, "stops here by default");
    // With forward_targeted_fields on they reach the CDNs in front of this one (RFC 9213 §3).
    let config = cached(&origin).set("cache.forward_targeted_fields", true);
    let shellac = Shellac::start(&config.yaml()).await;
    let r = shellac.get("/t").await;
    assert_eq!(r.header("cdn-cache-control"), Some("max-age=60"));

    // An invalid targeted field is ignored as a whole: Cache-Control decides. A delta-seconds
    // directive must be an Integer, so a quoted or decimal max-age makes the field invalid.
    for (i, bad) in ["Max-Age=60", "max-age=\"60\"", "max-age=60.0"]
        .into_iter()
        .enumerate()
    {
        let origin = Origin::start(move |_| {
            Reply::ok("x")
                .header("Cache-Control", "no-store")
                .header("CDN-Cache-Control", bad)
        })
        .await;
        let shellac = Shellac::start(&cached(&origin).yaml()).await;
        let path = format!("/i{i}");
        shellac.get(&path).await;
        let r = shellac.get(&path).await;
        assert_eq!(origin.count(), 2, "{bad}: not stored");
        assert!(
            status_of(&r).contains("no-store"),
            "{bad}: {}",
            status_of(&r)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn must_understand_stores_despite_no_store() {
    let origin = Origin::start(cc("max-age=60, no-store, must-understand")).await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    shellac.get("/m").await;
    let r = shellac.get("/m").await;
    assert!(status_of(&r).contains("hit"), "{}", status_of(&r));
    assert_eq!(origin.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn equivalent_accept_encodings_share_a_variant() {
    let origin = Origin::start(|req| {
        Reply::ok(format!(
            "enc={}",
            req.header("accept-encoding").unwrap_or("")
        ))
        .header("Cache-Control", "max-age=60")
        .header("Vary", "Accept-Encoding")
    })
    .await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    for enc in ["gzip, br", "br,gzip", "BR , GZIP", "gzip,br,gzip"] {
        let r = shellac
            .request("GET", "/ae", &[("Accept-Encoding", enc)])
            .await;
        assert_eq!(r.text(), "enc=gzip, br");
    }
    assert_eq!(origin.count(), 1, "one variant for four spellings");
    shellac
        .request("GET", "/ae", &[("Accept-Encoding", "identity")])
        .await;
    assert_eq!(
        origin.count(),
        2,
        "a different preference is another variant"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn if_modified_since_is_answered_from_the_stored_date() {
    let now = std::time::SystemTime::now();
    let date = httpdate::fmt_http_date(now);
    let origin = Origin::start(move |_| {
        Reply::ok("dated")
            .header("Cache-Control", "max-age=60")
            .header("Date", date.clone())
    })
    .await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    shellac.get("/d").await;
    let hour = Duration::from_secs(3600);
    let later = httpdate::fmt_http_date(now + hour);
    let r = shellac
        .request("GET", "/d", &[("If-Modified-Since", &later)])
        .await;
    assert_eq!(r.status, 304, "no Last-Modified: the stored Date answers");
    let earlier = httpdate::fmt_http_date(now - hour);
    let earlier = [("If-Modified-Since", earlier.as_str())];
    let r = shellac.request("GET", "/d", &earlier).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "dated");
    assert_eq!(origin.count(), 1, "both answered from the cache");
}

#[tokio::test(flavor = "multi_thread")]
async fn whitespace_around_list_members_selects_no_variant() {
    let origin = Origin::start(|req| {
        Reply::ok(format!("foo={}", req.header("foo").unwrap_or("none")))
            .header("Cache-Control", "max-age=60")
            .header("Vary", "Foo")
    })
    .await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    shellac.request("GET", "/w", &[("Foo", "1,2")]).await;
    for same in [&[("Foo", " 1 , 2 ")][..], &[("Foo", "1"), ("Foo", "2")]] {
        let r = shellac.request("GET", "/w", same).await;
        assert!(status_of(&r).contains("hit"), "{same:?}: {}", status_of(&r));
    }
    assert_eq!(origin.count(), 1, "one variant");
    let r = shellac.request("GET", "/w", &[("Foo", "1 2")]).await;
    assert!(status_of(&r).contains("miss"), "{}", status_of(&r));
    assert_eq!(origin.count(), 2, "inner spacing still selects");
}

#[tokio::test(flavor = "multi_thread")]
async fn expires_in_rfc_850_and_asctime_forms() {
    for (i, expires) in [
        "Sunday, 06-Nov-44 08:49:37 GMT",
        "Sun Nov  6 08:49:37 2044",
        "sun, 06 nov 2044 08:49:37 GMT",
        "Thu Nov  6 08:49:37 2044", // a wrong day name: the date still says which day
    ]
    .into_iter()
    .enumerate()
    {
        let origin = Origin::start(move |_| Reply::ok("e").header("Expires", expires)).await;
        let shellac = Shellac::start(&cached(&origin).yaml()).await;
        let target = format!("/e{i}");
        shellac.get(&target).await;
        let r = shellac.get(&target).await;
        assert!(
            status_of(&r).contains("hit"),
            "{expires}: {}",
            status_of(&r)
        );
        assert_eq!(origin.count(), 1, "{expires}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_stands_in_for_an_unreachable_origin_but_not_for_its_5xx() {
    let failing = Arc::new(AtomicUsize::new(0));
    let f = failing.clone();
    let origin = Origin::start(move |req| {
        if f.load(Ordering::SeqCst) == 1 {
            return Reply::new(500, "origin error");
        }
        let v = if req.path() == "/mr" {
            "max-age=1, must-revalidate"
        } else {
            "max-age=1"
        };
        Reply::ok("good").header("Cache-Control", v)
    })
    .await;
    // No stale-if-error anywhere: only cache.stale_on_disconnect (default 10s) applies.
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    shellac.get("/d").await;
    shellac.get("/mr").await;
    tokio::time::sleep(Duration::from_millis(2100)).await; // both are stale now
    failing.store(1, Ordering::SeqCst);
    let r = shellac.get("/d").await;
    assert_eq!(
        r.status, 500,
        "an origin 5xx is governed by stale-if-error only"
    );
    origin.kill();
    let r = shellac.get("/d").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "good"),
        "unreachable origin: the stale copy answers"
    );
    assert!(
        status_of(&r).contains("detail=stale-on-disconnect"),
        "{}",
        status_of(&r)
    );
    // Pingora closes the client connection after a stale copy stood in for a failed exchange;
    // the response must say so, or a keep-alive client's next request meets a dead socket.
    assert_eq!(r.header("connection"), Some("close"));
    let r = shellac.get("/mr").await;
    assert_eq!(
        r.status, 502,
        "must-revalidate forbids stale even when disconnected"
    );

    // With the window set to zero, a dead origin is a 502.
    let origin = Origin::start(cc("max-age=1")).await;
    let config = cached(&origin).set("cache.stale_on_disconnect", "0s");
    let shellac = Shellac::start(&config.yaml()).await;
    shellac.get("/z").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    origin.kill();
    assert_eq!(shellac.get("/z").await.status, 502);
}

/// A caching route that forwards single ranges on a miss (`cache.range_misses: forward`).
fn forwarding(origin: &Origin) -> TestConfig {
    cached(origin).set("cache.range_misses", "forward")
}

/// An origin serving `body` with `etag` and `Cache-Control: max-age=60` that honours a single
/// byte range itself (206 with `Content-Range`), as a file server does.
fn ranged(
    body: &'static [u8],
    etag: impl Fn(&Request) -> String + Send + Sync + 'static,
) -> impl Fn(&Request) -> Reply {
    move |req| {
        let full = body.len() as u64;
        let base = |r: Reply| {
            r.header("Cache-Control", "max-age=60")
                .header("ETag", etag(req))
        };
        let Some(spec) = req.header("range").and_then(|v| v.strip_prefix("bytes=")) else {
            return base(Reply::ok(body));
        };
        let (a, b) = spec.split_once('-').expect("a single range");
        let (first, last) = match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(a), Ok(b)) => (a, b.min(full - 1)),
            (Ok(a), Err(_)) => (a, full - 1),
            (Err(_), Ok(n)) => (full.saturating_sub(n), full - 1),
            _ => panic!("unexpected range {spec}"),
        };
        base(Reply::new(206, &body[first as usize..=last as usize]))
            .header("Content-Range", format!("bytes {first}-{last}/{full}"))
    }
}

const BODY20: &[u8] = b"abcdefghijklmnopqrst";

/// Waits until `shellac_cache_partials_total{result}` reaches `n`: parts are written once
/// their response is complete, just after the client has it.
async fn partials_reach(shellac: &Shellac, result: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = shellac
            .metric_or_zero("shellac_cache_partials_total", &[("result", result)])
            .await;
        if seen >= n {
            return;
        }
        assert!(Instant::now() < deadline, "partials {result}: {seen} < {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn range(shellac: &Shellac, path: &str, r: &str) -> common::http::Response {
    shellac.request("GET", path, &[("Range", r)]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_partial_answers_ranges_inside_it_and_nothing_else() {
    let origin = Origin::start(ranged(BODY20, |_| "\"v1\"".into())).await;
    let shellac = Shellac::start(&forwarding(&origin).yaml()).await;

    let r = range(&shellac, "/p", "bytes=-5").await;
    assert_eq!((r.status, r.text().as_str()), (206, "pqrst"));
    assert_eq!(r.header("content-range"), Some("bytes 15-19/20"));
    assert_eq!(status_of(&r), "shellac; fwd=miss; fwd-status=206; stored");
    assert_eq!(
        origin.requests()[0].header("range"),
        Some("bytes=-5"),
        "the client's range went to the origin"
    );
    partials_reach(&shellac, "stored", 1.0).await;

    // Ranges wholly inside the stored part (byte range, open end, suffix): from the cache.
    for (spec, text, content_range) in [
        ("bytes=16-18", "qrs", "bytes 16-18/20"),
        ("bytes=17-", "rst", "bytes 17-19/20"),
        ("bytes=-1", "t", "bytes 19-19/20"),
        ("bytes=15-19", "pqrst", "bytes 15-19/20"),
    ] {
        let r = range(&shellac, "/p", spec).await;
        assert_eq!((r.status, r.text().as_str()), (206, text), "{spec}");
        assert_eq!(r.header("content-range"), Some(content_range), "{spec}");
        assert_eq!(r.header("etag"), Some("\"v1\""), "{spec}");
        assert!(r.header("age").is_some(), "{spec}");
        assert!(
            status_of(&r).starts_with("shellac; hit; ttl=")
                && status_of(&r).ends_with("; detail=partial"),
            "{spec}: {}",
            status_of(&r)
        );
    }
    assert_eq!(origin.count(), 1, "every range inside the part was a hit");
    assert_eq!(
        shellac
            .metric("shellac_cache_partials_total", &[("result", "hit")])
            .await,
        4.0
    );
    assert_eq!(
        shellac
            .metric("shellac_cache_lookups_total", &[("result", "hit")])
            .await,
        4.0
    );

    // If-Range with the stored strong ETag is answered from the part; any other validator,
    // and conditions a part cannot evaluate, go to the origin with the range.
    let hit = [("Range", "bytes=16-18"), ("If-Range", "\"v1\"")];
    let r = shellac.request("GET", "/p", &hit).await;
    assert_eq!((r.status, r.text().as_str()), (206, "qrs"));
    assert_eq!(origin.count(), 1);
    for cond in [("If-Range", "\"v0\""), ("If-None-Match", "\"v0\"")] {
        let r = shellac
            .request("GET", "/p", &[("Range", "bytes=16-18"), cond])
            .await;
        assert_eq!(r.status, 206, "{cond:?}");
        assert!(
            status_of(&r).starts_with("shellac; fwd=partial"),
            "{cond:?}: {}",
            status_of(&r)
        );
    }
    assert_eq!(origin.count(), 3);
    assert_eq!(origin.requests()[1].header("if-range"), Some("\"v0\""));
    assert_eq!(origin.requests()[2].header("range"), Some("bytes=16-18"));

    // A HEAD never gets a part (Range is for GET only): the origin is asked for the whole.
    let r = shellac
        .request("HEAD", "/p", &[("Range", "bytes=16-18")])
        .await;
    assert_eq!(
        status_of(&r),
        "shellac; fwd=miss; fwd-status=200; stored",
        "HEAD is filled as a whole GET"
    );
    assert_eq!(origin.count(), 4);
    assert_eq!(origin.requests()[3].header("range"), None);

    // A range the part does not hold goes to the origin, as does a request without Range.
    let origin2 = Origin::start(ranged(BODY20, |_| "\"v1\"".into())).await;
    let shellac = Shellac::start(&forwarding(&origin2).yaml()).await;
    range(&shellac, "/q", "bytes=10-14").await;
    partials_reach(&shellac, "stored", 1.0).await;
    let r = range(&shellac, "/q", "bytes=2-3").await;
    assert_eq!((r.status, r.text().as_str()), (206, "cd"));
    assert_eq!(
        status_of(&r),
        "shellac; fwd=partial; fwd-status=206; stored",
        "RFC 9211: a partial was stored, not enough for this range"
    );
    assert_eq!(origin2.requests()[1].header("range"), Some("bytes=2-3"));
    let r = shellac.get("/q").await;
    assert_eq!((r.status, r.text().as_str()), (200, "abcdefghijklmnopqrst"));
    assert_eq!(r.header("content-range"), None);
    assert!(
        status_of(&r).starts_with("shellac; fwd=miss; fwd-status=200"),
        "{}",
        status_of(&r)
    );
    assert_eq!(
        origin2.count(),
        3,
        "a request without Range never gets a part"
    );
    assert_eq!(origin2.requests()[2].header("range"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn parts_with_one_strong_etag_combine_into_the_whole_object() {
    // /v changes its ETag on every response; /w has a weak one.
    let n = Arc::new(AtomicUsize::new(0));
    let origin = Origin::start(ranged(BODY20, move |req| match req.path() {
        "/v" => format!("\"v{}\"", n.fetch_add(1, Ordering::SeqCst)),
        "/w" => "W/\"w1\"".into(),
        _ => "\"s1\"".into(),
    }))
    .await;
    let shellac = Shellac::start(&forwarding(&origin).yaml()).await;

    range(&shellac, "/c", "bytes=0-9").await;
    partials_reach(&shellac, "stored", 1.0).await;
    let r = range(&shellac, "/c", "bytes=8-19").await;
    assert_eq!((r.status, r.text().as_str()), (206, "ijklmnopqrst"));
    partials_reach(&shellac, "completed", 1.0).await;
    // The combination covers the whole: an ordinary stored 200, for every request.
    let r = shellac.get("/c").await;
    assert_eq!((r.status, r.text().as_str()), (200, "abcdefghijklmnopqrst"));
    assert_eq!(r.header("content-length"), Some("20"));
    assert!(
        status_of(&r).starts_with("shellac; hit; ttl="),
        "{}",
        status_of(&r)
    );
    let r = range(&shellac, "/c", "bytes=5-14").await;
    assert_eq!((r.status, r.text().as_str()), (206, "fghijklmno"));
    assert_eq!(r.header("content-range"), Some("bytes 5-14/20"));
    assert_eq!(origin.count_path("/c"), 2);

    // One request for the whole of it is complete at once.
    range(&shellac, "/o", "bytes=0-").await;
    partials_reach(&shellac, "completed", 2.0).await;
    assert_eq!(shellac.get("/o").await.text(), "abcdefghijklmnopqrst");
    assert_eq!(origin.count_path("/o"), 1);

    // Different or weak validators never combine: the newer part replaces the older, and the
    // whole object is still fetched whole.
    for path in ["/v", "/w"] {
        range(&shellac, path, "bytes=0-9").await;
        range(&shellac, path, "bytes=10-19").await;
        let r = shellac.get(path).await;
        assert_eq!(r.status, 200);
        assert_eq!(origin.count_path(path), 3, "{path}");
    }
    partials_reach(&shellac, "stored", 5.0).await;
    assert_eq!(
        shellac
            .metric("shellac_cache_partials_total", &[("result", "completed")])
            .await,
        2.0
    );
    assert_eq!(
        shellac
            .metric("shellac_cache_partials_total", &[("result", "combined")])
            .await,
        0.0,
        "a combination that completes the object counts as completed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn parts_that_vary_or_exceed_max_object_are_not_kept() {
    static BIG: [u8; 4096] = [b'x'; 4096];
    let origin = Origin::start(move |req| {
        let r = ranged(&BIG, |_| "\"b1\"".into())(req);
        if req.path() == "/vary" {
            r.header("Vary", "Accept-Encoding")
        } else {
            r
        }
    })
    .await;
    let config = forwarding(&origin).set(
        if on_memcached() {
            "cache.memcached.max_object"
        } else {
            "cache.memory.max_object"
        },
        "1KiB",
    );
    let shellac = Shellac::start(&config.yaml()).await;
    for (path, spec, detail) in [
        ("/big", "bytes=0-2047", "too-large"),
        ("/vary", "bytes=0-9", "partial-vary"),
    ] {
        let r = range(&shellac, path, spec).await;
        assert_eq!(r.status, 206, "{path}: passed through");
        assert_eq!(
            status_of(&r),
            format!("shellac; fwd=miss; fwd-status=206; detail={detail}")
        );
        let r = range(&shellac, path, spec).await;
        assert_eq!(r.status, 206);
        assert_eq!(origin.count_path(path), 2, "{path}: not kept");
    }
    // A small part of the same large object is kept (the limit is on what is stored).
    range(&shellac, "/big", "bytes=100-199").await;
    partials_reach(&shellac, "stored", 1.0).await;
    let r = range(&shellac, "/big", "bytes=150-159").await;
    assert_eq!((r.status, r.text().as_str()), (206, "xxxxxxxxxx"));
    assert_eq!(origin.count_path("/big"), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn parts_combine_short_of_whole_and_purges_reach_them() {
    let origin = Origin::start(ranged(BODY20, |_| "\"g1\"".into())).await;
    let shellac = Shellac::start(&forwarding(&origin).yaml()).await;
    range(&shellac, "/g", "bytes=0-4").await;
    partials_reach(&shellac, "stored", 1.0).await;
    range(&shellac, "/g", "bytes=3-9").await;
    partials_reach(&shellac, "combined", 1.0).await;
    // 0-9 is held now: a range across both parts is a hit.
    let r = range(&shellac, "/g", "bytes=2-8").await;
    assert_eq!((r.status, r.text().as_str()), (206, "cdefghi"));
    assert!(
        status_of(&r).ends_with("detail=partial"),
        "{}",
        status_of(&r)
    );
    assert_eq!(origin.count(), 2);

    // A purge of the URL, hard or soft, removes its part: the next range goes to the origin.
    for (i, soft) in ["0", "1"].into_iter().enumerate() {
        let purge = shellac
            .request("PURGE", "/g", &[("Shellac-Purge-Soft", soft)])
            .await;
        assert_eq!(purge.status, 200, "soft={soft}");
        let r = range(&shellac, "/g", "bytes=2-8").await;
        assert_eq!(r.status, 206);
        assert_eq!(status_of(&r), "shellac; fwd=miss; fwd-status=206; stored");
        assert_eq!(origin.count(), 3 + i, "soft={soft}");
        partials_reach(&shellac, "stored", 2.0 + i as f64).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_ranges_and_whole_requests_each_get_their_own_answer() {
    let origin = Origin::start(move |req| {
        ranged(BODY20, |_| "\"k1\"".into())(req).delay(Duration::from_millis(100))
    })
    .await;
    let shellac = Arc::new(Shellac::start(&forwarding(&origin).yaml()).await);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..24 {
        let s = shellac.clone();
        tasks.spawn(async move {
            if i % 4 == 0 {
                let r = s.get("/k").await;
                assert_eq!((r.status, r.text().as_str()), (200, "abcdefghijklmnopqrst"));
            } else {
                // A range that meets the whole object's fill in progress gets the whole 200
                // (its length is not known yet; RFC 9110 §14.2 lets a server ignore Range).
                let r = range(&s, "/k", "bytes=3-6").await;
                match r.status {
                    206 => {
                        assert_eq!(r.text(), "defg");
                        assert_eq!(r.header("content-range"), Some("bytes 3-6/20"));
                    }
                    _ => assert_eq!((r.status, r.text().as_str()), (200, "abcdefghijklmnopqrst")),
                }
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    // Nobody waited out the cache lock (5s) behind a range that filled nothing.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// An origin that answers every request with `103 Early Hints` and then a cacheable 200, in one
/// write (so both reach the proxy in one read, as over a fast link); counts its requests.
async fn early_hints_origin() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                while let Ok(Some(req)) = common::http::read_request(&mut s).await {
                    c.fetch_add(1, Ordering::SeqCst);
                    let body = format!("body of {}", req.target);
                    let both = format!(
                        "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n\
                         HTTP/1.1 200 OK\r\nCache-Control: max-age=300\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.get_mut().write_all(both.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread")]
async fn interim_answers_reach_the_client_on_every_miss_and_are_never_stored() {
    let (addr, count) = early_hints_origin().await;
    let c = tier_at(addr, Route::to("app"));
    let shellac = Shellac::start(&c.yaml()).await;
    let mut client = Client::connect(shellac.addr).await.unwrap();
    for i in 0..20 {
        let target = format!("/early/{i}");
        // A miss: the 103 first, as the origin sent it, without the cache's fields.
        let interim = client.request("GET", &target, &[], b"").await.unwrap();
        assert_eq!(
            interim.status, 103,
            "{target}: the interim answer was dropped"
        );
        assert_eq!(interim.header("link"), Some("</style.css>; rel=preload"));
        assert_eq!(interim.header("cache-status"), None);
        let fin = client.read_response(false).await.unwrap();
        assert_eq!(fin.status, 200);
        assert_eq!(fin.text(), format!("body of {target}"));
        assert!(status_of(&fin).contains("stored"), "{}", status_of(&fin));
        assert_eq!(
            fin.header("link"),
            None,
            "the interim fields are not the answer's"
        );
        // A hit: the stored 200 alone (RFC 9111 §3: 1xx answers are not stored).
        let hit = client.request("GET", &target, &[], b"").await.unwrap();
        assert_eq!(hit.status, 200, "{target}: a hit sent an interim answer");
        assert!(status_of(&hit).contains("hit"), "{}", status_of(&hit));
        assert_eq!(hit.header("link"), None);
    }
    assert_eq!(count.load(Ordering::SeqCst), 20);
    // One lookup per request: the 103 is not counted as an answer.
    let lookups = shellac.metric("shellac_cache_lookups_total", &[]).await;
    assert_eq!(lookups, 40.0);
    // An HTTP/1.0 client is never sent a 1xx (RFC 9110 §15.2).
    let mut old = Client::connect(shellac.addr).await.unwrap();
    old.send_raw(b"GET /early/old HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(old.read_response(false).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn date_is_the_origins_on_misses_hits_and_passes() {
    // The origin's clock runs 10 minutes behind: every answer says it was made then.
    let dated = |req: &Request| {
        let made = std::time::SystemTime::now() - Duration::from_secs(600);
        let cc = match req.path() {
            "/expires" => {
                return Reply::ok("e")
                    .header("Date", httpdate::fmt_http_date(made))
                    .header(
                        "Expires",
                        httpdate::fmt_http_date(made + Duration::from_secs(3600)),
                    )
            }
            "/pass" => "no-store",
            _ => "max-age=3600",
        };
        Reply::ok("d")
            .header("Date", httpdate::fmt_http_date(made))
            .header("Cache-Control", cc)
    };
    let origin = Origin::start(dated).await;
    let shellac = Shellac::start(&cached(&origin).yaml()).await;
    let date_of = |r: &common::http::Response| {
        httpdate::parse_http_date(r.header("date").expect("a Date")).unwrap()
    };
    let behind = |r: &common::http::Response| {
        std::time::SystemTime::now()
            .duration_since(date_of(r))
            .unwrap_or_default()
    };
    for path in ["/max-age", "/expires"] {
        let miss = shellac.get(path).await;
        assert!(status_of(&miss).contains("stored"), "{}", status_of(&miss));
        assert!(
            behind(&miss) >= Duration::from_secs(595),
            "a miss carries the origin's Date"
        );
        // A hit in a later second still says when the origin made it.
        let made = date_of(&miss);
        let deadline = Instant::now() + Duration::from_secs(3);
        while httpdate::fmt_http_date(std::time::SystemTime::now() - Duration::from_secs(600))
            == httpdate::fmt_http_date(made)
        {
            assert!(Instant::now() < deadline, "the clock did not move on");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let hit = shellac.get(path).await;
        assert!(
            status_of(&hit).contains("hit"),
            "{path}: {}",
            status_of(&hit)
        );
        assert_eq!(
            hit.header("date"),
            miss.header("date"),
            "{path}: the stored Date"
        );
        assert!(hit.header("age").is_some());
    }
    let pass = shellac.get("/pass").await;
    assert!(
        behind(&pass) >= Duration::from_secs(595),
        "a pass carries the origin's Date"
    );
    // An answer of Shellac's own (a purge of nothing) says when it was sent.
    let own = shellac.request("PURGE", "/nothing", &[]).await;
    assert_eq!(own.status, 404);
    assert!(behind(&own) < Duration::from_secs(5));
    assert_eq!(origin.count(), 3);
}
