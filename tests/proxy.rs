//! Transparent reverse proxying: methods, headers, framing, keep-alive, streaming, bad input.

mod common;

use common::http::{Client, Origin, Reply, Request};
use common::{simple_config, Shellac};

fn echo(req: &Request) -> Reply {
    Reply::ok(format!("{} {} {}", req.method, req.target, req.body.len()))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_method_is_forwarded_with_its_body_and_host() {
    let origin = Origin::start(echo).await;
    let shellac = Shellac::start(&simple_config(&[&origin], "", "")).await;
    let methods = [
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "DELETE",
        "PATCH",
        "OPTIONS",
        "PROPFIND",
        "FROBNICATE",
    ];
    for m in methods {
        let mut c = Client::connect(shellac.addr).await.unwrap();
        let body: &[u8] = if matches!(m, "GET" | "HEAD") {
            b""
        } else {
            b"payload"
        };
        let r = c
            .request(m, "/m?x=1", &[("Host", "App.Example:8080")], body)
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{m}");
        if m != "HEAD" {
            assert_eq!(r.text(), format!("{m} /m?x=1 {}", body.len()));
        }
    }
    let seen = origin.requests();
    assert_eq!(
        seen.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(),
        methods
    );
    for r in &seen {
        assert_eq!(r.header("host"), Some("App.Example:8080"), "Host preserved");
        if !matches!(r.method.as_str(), "GET" | "HEAD") {
            assert_eq!(r.body, b"payload");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_are_set_by_shellac() {
    let origin = Origin::start(echo).await;
    let shellac = Shellac::start(&simple_config(&[&origin], "", "")).await;
    let r = shellac
        .request(
            "GET",
            "/",
            &[
                ("X-Forwarded-For", "203.0.113.7"),
                ("X-Forwarded-Proto", "https"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers_named("via")
            .iter()
            .any(|v| v.contains("1.1 shellac")),
        "Via on the response: {:?}",
        r.headers
    );
    let req = &origin.requests()[0];
    assert_eq!(
        req.header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
    assert_eq!(
        req.header("x-forwarded-proto"),
        Some("http"),
        "client value never passed on"
    );
    assert!(req.header("via").unwrap().contains("1.1 shellac"));
}

#[tokio::test(flavor = "multi_thread")]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let origin = Origin::start(|_| {
        Reply::ok("x")
            .header("Connection", "X-Origin-Private")
            .header("X-Origin-Private", "secret")
            .header("Keep-Alive", "timeout=5")
            .header("Upgrade", "h2c")
            .header("Trailer", "X-T")
    })
    .await;
    let shellac = Shellac::start(&simple_config(&[&origin], "", "")).await;
    let r = shellac
        .request(
            "GET",
            "/",
            &[
                ("Connection", "keep-alive, X-Client-Private"),
                ("X-Client-Private", "secret"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
                ("Proxy-Connection", "keep-alive"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let req = &origin.requests()[0];
    for h in [
        "x-client-private",
        "keep-alive",
        "te",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert_eq!(req.header(h), None, "{h} reached the origin");
    }
    for h in ["x-origin-private", "keep-alive", "upgrade", "trailer"] {
        assert_eq!(r.header(h), None, "{h} reached the client");
    }
    assert!(r
        .header("connection")
        .is_none_or(|v| !v.contains("X-Origin-Private")));
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_on_both_sides() {
    let origin = Origin::start(echo).await;
    let shellac = Shellac::start(&simple_config(&[&origin], "", "")).await;
    let mut c = Client::connect(shellac.addr).await.unwrap();
    for i in 0..20 {
        let r = c.request("GET", &format!("/k{i}"), &[], b"").await.unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(origin.count(), 20);
    // Pingora's upstream pool reuses connections; two worker threads may each open one.
    assert!(
        origin.connections() <= 2,
        "{} upstream connections for 20 requests",
        origin.connections()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_bodies_pass_both_ways() {
    let origin = Origin::start(|req| Reply::ok(req.body.repeat(3)).chunked()).await;
    let shellac = Shellac::start(&simple_config(&[&origin], "", "")).await;
    let mut c = Client::connect(shellac.addr).await.unwrap();
    c.send_raw(b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        .await
        .unwrap();
    let r = c.read_response(false).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello worldhello worldhello world");
    assert_eq!(origin.requests()[0].body, b"hello world");
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_100_mib_body_streams_through_with_bounded_memory() {
    const SIZE: usize = 100 << 20;
    let origin = Origin::start(|req| {
        if req.method == "POST" {
            Reply::ok(format!("got {}", req.body.len()))
        } else {
            Reply::ok(vec![b'z'; SIZE])
        }
    })
    .await;
    let shellac = Shellac::start(&simple_config(&[&origin], "", "")).await;
    let before = vm_hwm_kib(shellac.pid());

    let r = shellac.get("/big").await;
    assert_eq!(r.body.len(), SIZE);
    assert!(r.body.iter().all(|b| *b == b'z'));

    let mut c = Client::connect(shellac.addr).await.unwrap();
    let r = c
        .request("POST", "/upload", &[], &vec![b'u'; SIZE])
        .await
        .unwrap();
    assert_eq!(r.text(), format!("got {SIZE}"));

    let grown_mib = (vm_hwm_kib(shellac.pid()) - before) / 1024;
    assert!(
        grown_mib < 48,
        "peak RSS grew by {grown_mib} MiB moving 200 MiB: bodies are being buffered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_400_and_the_connection_closes() {
    let origin = Origin::start(echo).await;
    let shellac = Shellac::start(&simple_config(&[&origin], "", "")).await;
    let cases: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n",
    ];
    for raw in cases {
        let mut c = Client::connect(shellac.addr).await.unwrap();
        c.send_raw(raw).await.unwrap();
        // A 4xx, or a close without any response: both refuse the request.
        // Every one of them is answered (never a bare close) with 400, RFC 9112 §3 / §6.3.
        let r = c
            .read_response(false)
            .await
            .unwrap_or_else(|e| panic!("{:?}: no answer ({e})", String::from_utf8_lossy(raw)));
        assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(raw));
        assert!(
            c.is_closed(std::time::Duration::from_secs(2)).await,
            "{:?} left the connection open",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(origin.count(), 0, "nothing malformed reached the origin");
    // Still serving.
    assert_eq!(shellac.get("/after").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn routes_by_host_and_path_prefix() {
    let api = Origin::start(|_| Reply::ok("api")).await;
    let sub = Origin::start(|_| Reply::ok("sub")).await;
    let rest = Origin::start(|_| Reply::ok("rest")).await;
    let config = format!(
        "upstreams:\n  api: {{backends: [\"{}\"]}}\n  sub: {{backends: [\"{}\"]}}\n  rest: {{backends: [\"{}\"]}}\n\
routes:\n  - {{host: api.test, path_prefix: /v1/, upstream: api}}\n  - {{host: \"*.example.test\", upstream: sub}}\n  - {{host: rest.test, upstream: rest}}\n",
        api.addr, sub.addr, rest.addr
    );
    let shellac = Shellac::start(&config).await;
    let via = |host: &'static str, path: &'static str| {
        let s = &shellac;
        async move { s.request("GET", path, &[("Host", host)]).await }
    };
    assert_eq!(via("api.test", "/v1/users").await.text(), "api");
    assert_eq!(via("API.TEST:80", "/v1/users").await.text(), "api");
    assert_eq!(via("a.b.example.test", "/x").await.text(), "sub");
    assert_eq!(via("rest.test", "/v1/users").await.text(), "rest");
    assert_eq!(via("api.test", "/v2/users").await.status, 404, "no route");
    assert_eq!(
        via("example.test", "/").await.status,
        404,
        "bare domain is not *.example.test"
    );
    assert_eq!((api.count(), sub.count(), rest.count()), (2, 1, 1));
}
