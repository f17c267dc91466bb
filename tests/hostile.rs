//! Hostile input (issue 9 / shared/reference/hostile-input.md rows 6–14): raw-socket clients
//! against the real binary and an origin that records every request it receives.

mod common;

use common::http::{Client, Origin, Reply, Request};
use common::{simple_config, Shellac};
use std::time::{Duration, Instant};

fn recorder(req: &Request) -> Reply {
    Reply::ok(format!("{} {}", req.method, req.target)).header("Cache-Control", "max-age=60")
}

async fn start() -> (Origin, Shellac) {
    let origin = Origin::start(recorder).await;
    let shellac = Shellac::start(&format!(
        "{}limits: {{max_body: 1MiB}}\n",
        simple_config(&[&origin], "", ", cache: true")
    ))
    .await;
    (origin, shellac)
}

/// Sends raw bytes; returns every response status read before the connection closed or went
/// quiet, and whether it closed.
async fn exchange(shellac: &Shellac, raw: &[u8]) -> (Vec<u16>, bool) {
    let mut c = Client::connect(shellac.addr).await.unwrap();
    c.send_raw(raw).await.unwrap();
    let mut statuses = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(800), c.read_response(false)).await {
            Ok(Ok(r)) => statuses.push(r.status),
            Ok(Err(_)) => return (statuses, true),
            Err(_) => return (statuses, c.is_closed(Duration::from_millis(10)).await),
        }
    }
}

fn smuggled(origin: &Origin) -> bool {
    origin.requests().iter().any(|r| r.path().contains("admin"))
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_framing_is_refused_or_forwarded_once() {
    let (origin, shellac) = start().await;
    let vectors: &[(&str, &[u8])] = &[
        ("CL+TE", b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("TE.CL", b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("dup CL differing", b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabcGET /admin HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("CL +", b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc"),
        ("CL empty", b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: \r\n\r\n"),
        ("TE chunked, identity", b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ("TE xchunked", b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ("space before colon", b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ("leading space name", b"POST /a HTTP/1.1\r\nHost: t\r\n Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ("TE \\x08", b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: \x08chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ("obs-fold TE", b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding:\r\n chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ("obs-fold other", b"GET /a HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n 2\r\n\r\n"),
        ("chunk size overflow", b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFED\r\nabc\r\n0\r\n\r\n"),
        ("chunk size -1", b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n"),
        ("chunk size 0x", b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n"),
        ("chunk missing CRLF", b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcGET /admin HTTP/1.1\r\n\r\n"),
        ("HTTP/1.0 + TE", b"POST /a HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ("NUL in value", b"GET /a HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n"),
        ("CR in value", b"GET /a HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n"),
        ("space in name", b"GET /a HTTP/1.1\r\nHost: t\r\nX A: b\r\n\r\n"),
        ("two Host", b"GET /a HTTP/1.1\r\nHost: t\r\nHost: u\r\n\r\n"),
        ("no Host", b"GET /a HTTP/1.1\r\n\r\n"),
        ("absolute-form other host", b"GET http://evil.test/a HTTP/1.1\r\nHost: t\r\n\r\n"),
    ];
    for (name, raw) in vectors {
        let before = origin.count();
        let (statuses, closed) = exchange(&shellac, raw).await;
        let reached = origin.count() - before;
        let refused = statuses.first().is_some_and(|s| (400..500).contains(s)) && closed;
        let forwarded_once = reached <= 1 && statuses.len() <= 1;
        assert!(
            refused || forwarded_once,
            "{name}: statuses {statuses:?}, closed {closed}, origin saw {reached}"
        );
        assert!(
            !smuggled(&origin),
            "{name}: a smuggled request reached the origin"
        );
    }
    // What did get through carries exactly one framing header and one Content-Length.
    for r in origin.requests() {
        let cl = r
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .count();
        let te = r.header("transfer-encoding").is_some();
        assert!(cl <= 1 && !(cl == 1 && te), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_on_a_cached_get_never_becomes_a_second_request() {
    let (origin, shellac) = start().await;
    shellac.get("/hot").await;
    let hidden = "GET /admin HTTP/1.1\r\nHost: test\r\n\r\n";
    let smuggle = format!(
        "GET /hot HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n{hidden}",
        hidden.len()
    );
    let mut c = Client::connect(shellac.addr).await.unwrap();
    c.send_raw(smuggle.as_bytes()).await.unwrap();
    // The hit is answered and the connection declared closed (the body is drained, never
    // parsed as a request).
    {
        let r = c.read_response(false).await.expect("the hit is answered");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("connection"),
            Some("close"),
            "a connection with an unread body must not be reused"
        );
        let next = tokio::time::timeout(Duration::from_millis(500), c.read_response(false)).await;
        assert!(
            !matches!(next, Ok(Ok(_))),
            "the body was parsed as a second request"
        );
    }
    assert!(!smuggled(&origin));
    // Identical duplicated Content-Length reaches the origin as one canonical value.
    let (statuses, _) = exchange(
        &shellac,
        b"POST /dup HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 03\r\n\r\nabc",
    )
    .await;
    assert_eq!(statuses, [200]);
    let r = origin
        .requests()
        .into_iter()
        .find(|r| r.path() == "/dup")
        .unwrap();
    let cls: Vec<&str> = r
        .headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(cls, ["3"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn unkeyed_headers_never_reach_the_origin() {
    let origin = Origin::start(|req| {
        // A reflecting origin: it would build links from any of these.
        let reflected: Vec<String> = req
            .headers
            .iter()
            .filter(|(k, _)| {
                k.to_ascii_lowercase().starts_with('x') || k.eq_ignore_ascii_case("forwarded")
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        Reply::ok(reflected.join(";")).header("Cache-Control", "max-age=60")
    })
    .await;
    let shellac = Shellac::start(&simple_config(&[&origin], "", ", cache: true")).await;
    let poison = [
        ("X-Forwarded-Host", "evil.test"),
        ("X-Forwarded-Scheme", "nothttp"),
        ("X-Forwarded-Port", "1337"),
        ("X-Forwarded-Server", "evil"),
        ("Forwarded", "host=evil.test"),
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
        ("X-Forwarded-Uri", "/admin"),
        ("X-Forwarded-Path", "/admin"),
        ("X-Original-Uri", "/admin"),
        ("X-Original-Path", "/admin"),
        ("X-Envoy-Original-Path", "/admin"),
        ("X-Envoy-Original-Host", "evil.test"),
        ("X-HTTP-Method-Override", "DELETE"),
        ("X-Host", "evil.test"),
    ];
    let r = shellac.request("GET", "/page", &poison).await;
    let clean = shellac.get("/page").await;
    for (k, _) in poison {
        assert!(
            origin.requests()[0].header(k).is_none(),
            "{k} reached the origin"
        );
    }
    assert!(
        !clean.text().contains("evil") && !clean.text().contains("admin"),
        "poisoned: {}",
        clean.text()
    );
    assert_eq!(r.text(), clean.text());
    // Host spellings that mean the same map to one key; other hosts never share it.
    for host in ["T.example", "t.example:80", "t.example."] {
        shellac.request("GET", "/h", &[("Host", host)]).await;
    }
    shellac.request("GET", "/h", &[("Host", "u.example")]).await;
    assert_eq!(origin.count_path("/h"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn error_responses_are_not_stored() {
    let origin = Origin::start(|req| {
        if req.header("x-bad").is_some() {
            Reply::new(400, "bad")
        } else {
            Reply::ok("good").header("Cache-Control", "max-age=60")
        }
    })
    .await;
    let shellac = Shellac::start(&simple_config(&[&origin], "", ", cache: true")).await;
    assert_eq!(
        shellac
            .request("GET", "/cpdos", &[("X-Bad", "1")])
            .await
            .status,
        400
    );
    assert_eq!(shellac.get("/cpdos").await.text(), "good");
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_deception_follows_response_headers_only() {
    let origin = Origin::start(|req| {
        let user = req.header("cookie").unwrap_or("anonymous").to_string();
        // Fresh for a minute, so only `private` (or the Set-Cookie) keeps them out of a shared
        // cache: a cache keyed on the `.css` extension would store and leak them.
        if req.path().starts_with("/account") {
            Reply::ok(format!("account of {user}")).header("Cache-Control", "private, max-age=60")
        } else if req.path().starts_with("/static/") {
            Reply::ok("shared stylesheet").header("Cache-Control", "public, max-age=60")
        } else {
            Reply::ok(format!("page for {user}"))
                .header("Cache-Control", "max-age=60")
                .header("Set-Cookie", "seen=1")
        }
    })
    .await;
    let shellac = Shellac::start(&simple_config(&[&origin], "", ", cache: true")).await;
    // The control: this cache does store what the origin allows.
    shellac.get("/static/app.css").await;
    let r = shellac.get("/static/app.css").await;
    assert!(
        r.header("cache-status").unwrap().contains("hit"),
        "the cache is on"
    );
    for path in [
        "/account/x.css",
        "/account;x.css",
        "/account%2fx.css",
        "/account%3fx.css",
        "/account/.css",
        "/static/..%2faccount",
        "/profile.css",
    ] {
        let before = origin.count();
        let mine = shellac.request("GET", path, &[("Cookie", "alice")]).await;
        let r = shellac.get(path).await;
        assert!(!r.text().contains("alice"), "{path} leaked: {}", r.text());
        if !path.to_ascii_lowercase().contains("%2f") {
            assert!(mine.text().contains("alice"), "{path}: {}", mine.text());
            assert_eq!(
                origin.count(),
                before + 2,
                "{path}: both went to the origin"
            );
        } else {
            // `%2F` in a path is refused before anything is cached or forwarded.
            assert_eq!((mine.status, r.status), (400, 400), "{path}");
            assert_eq!(origin.count(), before, "{path}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn oversize_requests_and_responses() {
    let origin = Origin::start(|req| {
        if req.path() == "/big-header" {
            Reply::ok("x")
                .header("X-Huge", "h".repeat(70 * 1024))
                .header("Cache-Control", "max-age=60")
        } else {
            Reply::ok(format!("{}", req.body.len()))
        }
    })
    .await;
    let shellac = Shellac::start(&format!(
        "{}limits: {{max_body: 1MiB}}\n",
        simple_config(&[&origin], "", ", cache: true")
    ))
    .await;
    let long_target = format!("/{}", "a".repeat(9 * 1024));
    let (s, closed) = exchange(
        &shellac,
        format!("GET {long_target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!((s.as_slice(), closed), (&[414][..], true));
    let big = "v".repeat(40 * 1024);
    let (s, _) = exchange(
        &shellac,
        format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(s, [431]);
    let many: String = (0..150).map(|i| format!("X-{i}: v\r\n")).collect();
    let (s, _) = exchange(
        &shellac,
        format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(s, [431]);
    let (s, closed) = exchange(
        &shellac,
        b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 5000000\r\n\r\nabc",
    )
    .await;
    assert_eq!((s.as_slice(), closed), (&[413][..], true));
    // Chunked: refused once the running total passes the limit.
    let mut c = Client::connect(shellac.addr).await.unwrap();
    c.send_raw(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = vec![b'z'; 256 * 1024];
    for _ in 0..6 {
        let mut part = format!("{:x}\r\n", chunk.len()).into_bytes();
        part.extend_from_slice(&chunk);
        part.extend_from_slice(b"\r\n");
        if c.send_raw(&part).await.is_err() {
            break;
        }
    }
    let _ = c.send_raw(b"0\r\n\r\n").await;
    let r = c
        .read_response(false)
        .await
        .expect("the refusal is answered");
    assert_eq!(r.status, 413, "a 1.5 MiB chunked body over a 1 MiB limit");
    assert_eq!(
        origin
            .requests()
            .iter()
            .filter(|r| r.path() == "/up" && r.body.len() > 1 << 20)
            .count(),
        0
    );
    // An origin header over the limit: 502, and nothing is stored.
    assert_eq!(shellac.get("/big-header").await.status, 502);
    assert_eq!(shellac.get("/big-header").await.status, 502);
    assert_eq!(origin.count_path("/big-header"), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_are_capped_and_filled_once() {
    let body = vec![b'r'; 100_000];
    let b = body.clone();
    let origin = Origin::start(move |_| {
        Reply::ok(b.clone())
            .header("Cache-Control", "max-age=60")
            .delay(Duration::from_millis(200))
    })
    .await;
    let shellac = Shellac::start(&simple_config(&[&origin], "", ", cache: true")).await;
    // 50 concurrent single-byte ranges of an uncached object: one origin fill.
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let addr = shellac.addr;
        tasks.push(tokio::spawn(async move {
            common::http::request(addr, "GET", "/obj", &[("Range", "bytes=0-0")])
                .await
                .unwrap()
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert!(r.status == 206 || r.status == 200);
    }
    assert_eq!(origin.count(), 1);
    let many: Vec<String> = (0..1000).map(|i| format!("{i}-{i}")).collect();
    let r = shellac
        .request(
            "GET",
            "/obj",
            &[("Range", &format!("bytes={}", many.join(",")))],
        )
        .await;
    assert_eq!(
        (r.status, r.body.len()),
        (200, 100_000),
        "1000 ranges: the whole object, not 1000 parts"
    );
    let r = shellac
        .request("GET", "/obj", &[("Range", "bytes=0-50000,100-60000")])
        .await;
    assert_eq!(r.status, 200, "overlapping ranges are served whole");
    let r = shellac.request("GET", "/obj", &[("Range", "bytes=")]).await;
    // RFC 9110 §15.5.17: a Range that names no range is rejected; Pingora answers 416.
    assert_eq!(r.status, 416, "an empty range set is unsatisfiable");
    assert!(r.body.len() < body.len());
    assert_eq!(origin.count(), 1);
}

// --- row 5: slowloris, idle keep-alive, per-IP cap ------------------------------------------

async fn start_limited(limits: &str) -> (Origin, Shellac) {
    let origin = Origin::start(recorder).await;
    let shellac = Shellac::start(&format!(
        "{}limits: {{{limits}}}\n",
        simple_config(&[&origin], "", ", cache: true")
    ))
    .await;
    (origin, shellac)
}

/// Polls `shellac_open_connections` until it equals `want` (3 s at most); returns the last value.
async fn open_connections_settle(shellac: &Shellac, want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let v = shellac.metric("shellac_open_connections", &[]).await;
        if v == want || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_is_closed_at_the_header_deadline_while_others_are_served() {
    let (origin, shellac) = start_limited("header_timeout: 2s").await;
    assert_eq!(shellac.get("/hot").await.status, 200);
    assert_eq!(open_connections_settle(&shellac, 0.0).await, 0.0);
    let opened = Instant::now();
    let mut slow = Client::connect(shellac.addr).await.unwrap();
    let mut silent = Client::connect(shellac.addr).await.unwrap();
    // One header byte per second: each read resets Pingora's own per-read timeout.
    let trickle = tokio::spawn(async move {
        for b in b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Padding: aaaaaaaaaaaaaaaa" {
            if slow.send_raw(&[*b]).await.is_err() || slow.is_closed(Duration::from_secs(1)).await {
                return Some(opened.elapsed());
            }
        }
        None
    });
    let quiet = tokio::spawn(async move {
        silent
            .is_closed(Duration::from_secs(5))
            .await
            .then(|| opened.elapsed())
    });
    // Meanwhile other clients are answered from the cache at once.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let t = Instant::now();
        let r = shellac.get("/hot").await;
        let took = t.elapsed();
        assert_eq!(r.status, 200);
        assert!(
            r.header("cache-status").is_some_and(|s| s.contains("hit")),
            "{:?}",
            r.header("cache-status")
        );
        assert!(took < Duration::from_millis(100), "probe took {took:?}");
    }
    let slow_closed = trickle
        .await
        .unwrap()
        .expect("the trickling client was never closed");
    let silent_closed = quiet
        .await
        .unwrap()
        .expect("the silent client was never closed");
    for (who, t) in [("trickling", slow_closed), ("silent", silent_closed)] {
        assert!(
            t >= Duration::from_millis(1800) && t <= Duration::from_secs(3),
            "{who} client closed after {t:?}, want header_timeout (2 s) to 3 s"
        );
    }
    assert_eq!(
        shellac.metric("shellac_header_timeouts_total", &[]).await,
        2.0
    );
    assert_eq!(origin.count_path("/slow"), 0);
    assert_eq!(
        open_connections_settle(&shellac, 0.0).await,
        0.0,
        "timed-out connections are released"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keepalive_is_closed_at_keepalive_timeout_not_at_the_header_deadline() {
    let (_origin, shellac) = start_limited("header_timeout: 1s, keepalive_timeout: 3s").await;
    let mut c = Client::connect(shellac.addr).await.unwrap();
    assert_eq!(c.request("GET", "/a", &[], b"").await.unwrap().status, 200);
    // Idle time between requests is keepalive_timeout's, not the header deadline's.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.request("GET", "/a", &[], b"").await.unwrap().status, 200);
    let idle = Instant::now();
    assert!(c.is_closed(Duration::from_secs(6)).await);
    let t = idle.elapsed();
    assert!(
        t >= Duration::from_millis(2800) && t <= Duration::from_secs(4),
        "idle connection closed after {t:?}, want keepalive_timeout (3 s)"
    );
    assert_eq!(
        shellac.metric("shellac_header_timeouts_total", &[]).await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn per_ip_cap_closes_extra_connections_and_spares_other_ips() {
    let (_origin, shellac) = start_limited("max_connections_per_ip: 5").await;
    assert_eq!(open_connections_settle(&shellac, 0.0).await, 0.0);
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut c = Client::connect(shellac.addr).await.unwrap();
        assert_eq!(c.request("GET", "/a", &[], b"").await.unwrap().status, 200);
        held.push(c);
    }
    let mut sixth = Client::connect(shellac.addr).await.unwrap();
    let t = Instant::now();
    assert!(sixth.is_closed(Duration::from_secs(2)).await);
    assert!(t.elapsed() < Duration::from_millis(500), "closed at once");
    let other: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut c2 = Client::connect_from(other, shellac.addr).await.unwrap();
    assert_eq!(c2.request("GET", "/a", &[], b"").await.unwrap().status, 200);
    assert_eq!(shellac.metric("shellac_open_connections", &[]).await, 6.0);
    assert_eq!(
        shellac
            .metric(
                "shellac_connections_refused_total",
                &[("reason", "per_ip_cap")]
            )
            .await,
        1.0
    );
    // A closed connection gives its slot back.
    drop(held.pop());
    assert_eq!(open_connections_settle(&shellac, 5.0).await, 5.0);
    let mut again = Client::connect(shellac.addr).await.unwrap();
    assert_eq!(
        again.request("GET", "/a", &[], b"").await.unwrap().status,
        200
    );
    drop((held, c2, again));
    assert_eq!(open_connections_settle(&shellac, 0.0).await, 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_is_not_an_authority_is_refused() {
    // Found by the cache-key fuzz harness: the key dropped what followed an IPv6 literal, so
    // `[::1]evil` shared `[::1]`'s entries while the origin saw (and could reflect) the junk.
    let (origin, shellac) = start().await;
    for host in ["[::1]evil", "a b", "a@b", "t:8o"] {
        let (statuses, closed) = exchange(
            &shellac,
            format!("GET /k HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!((statuses.as_slice(), closed), (&[400][..], true), "{host}");
    }
    assert_eq!(origin.count_path("/k"), 0);
    let r = shellac.request("GET", "/k", &[("Host", "[::1]:80")]).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn row6_content_length_with_transfer_encoding_is_read_as_chunked_and_closes() {
    // RFC 9112 §6.1: Transfer-Encoding overrides Content-Length and the connection must close
    // after the response. Pingora drops the Content-Length, so the origin sees one framing;
    // what follows the chunked body is never read as a request.
    let (origin, shellac) = start().await;
    for raw in [
        &b"POST /a HTTP/1.1\r\nHost: t\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        &b"POST /a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n3\r\nabc\r\n0\r\n\r\n"[..],
    ] {
        let before = origin.count();
        let (statuses, closed) = exchange(&shellac, raw).await;
        let what = String::from_utf8_lossy(raw);
        assert_eq!((statuses.as_slice(), closed), (&[200][..], true), "{what}");
        assert_eq!(origin.count(), before + 1, "{what}");
        let seen = origin.requests().pop().unwrap();
        assert_eq!(seen.body, b"abc", "{what}: the chunked body, not Content-Length's");
        assert!(seen.header("content-length").is_none(), "{what}: one framing header");
    }
    assert!(!smuggled(&origin));
}
