//! Shellac behind a load balancer, with real processes on loopback: 1000 connections from one
//! address with the shipped defaults, PROXY protocol listeners, trusted proxies, who may purge,
//! which methods invalidate, client cache-busting, internal headers, and `/readyz`.

mod common;

use common::http::{Client, Origin, Reply};
use common::{free_port, simple_config, temp_dir, Shellac};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, mut cond: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn cacheable() -> Reply {
    Reply::ok("stored").header("Cache-Control", "max-age=300")
}

/// A PROXY protocol v1 line naming `src` as the client.
fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let fam = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {fam} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// A PROXY protocol v2 header (PROXY command, TCP over IPv4) naming `src` as the client.
fn v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("v4 only")
    };
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&s.ip().octets());
    h.extend_from_slice(&d.ip().octets());
    h.extend_from_slice(&s.port().to_be_bytes());
    h.extend_from_slice(&d.port().to_be_bytes());
    h
}

async fn via_proxy_header(addr: SocketAddr, header: &[u8]) -> Client {
    let mut c = Client::connect(addr).await.unwrap();
    c.send_raw(header).await.unwrap();
    c
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on this process with a valid struct; shellac inherits it.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        assert!(
            l.rlim_cur >= 4096,
            "RLIMIT_NOFILE hard limit {} is too low for 1000 connections",
            l.rlim_max
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_keepalive_connections_from_one_address_with_shipped_defaults() {
    raise_fd_limit();
    let origin = Origin::start(|_| cacheable()).await;
    // No `limits:` section: the shipped defaults.
    let shellac = Shellac::start(&simple_config(&[&origin], "", ", cache: true")).await;
    shellac.get("/hit").await;
    const N: usize = 1000;
    // Every connection opens and completes a request before any closes, then each sends a
    // second request on the same (kept-alive) connection.
    let opened = Arc::new(tokio::sync::Barrier::new(N));
    let tasks: Vec<_> = (0..N)
        .map(|_| {
            let (addr, opened) = (shellac.addr, opened.clone());
            tokio::spawn(async move {
                let first = async {
                    let mut c = Client::connect(addr).await?;
                    let r = c.request("GET", "/hit", &[], b"").await?;
                    Ok::<_, std::io::Error>((c, r.status))
                }
                .await;
                opened.wait().await;
                let (mut c, status) = first?;
                let again = c.request("GET", "/hit", &[], b"").await?;
                Ok::<_, std::io::Error>((status, again.status))
            })
        })
        .collect();
    let mut ok = 0;
    let mut failures = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok((200, 200)) => ok += 1,
            other => failures.push(format!("{other:?}")),
        }
    }
    let refused = shellac
        .metric(
            "shellac_connections_refused_total",
            &[("reason", "per_ip_cap")],
        )
        .await;
    eprintln!("1000 keep-alive connections from 127.0.0.1: {ok} served twice, {} failed, {refused} refused by the per-IP cap", failures.len());
    assert_eq!(refused, 0.0);
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(ok, N);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_protocol_source_is_the_client_everywhere() {
    let origin = Origin::start(|_| cacheable()).await;
    let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let body = format!(
        "listen: [{{addr: \"{{LISTEN}}\", proxy_protocol: true}}, \"{plain}\"]\naccess_log: {{target: \"{{DIR}}/access.log\"}}\n{}",
        simple_config(&[&origin], "", ", cache: true")
    );
    let shellac = Shellac::start(&body).await;
    let pp = shellac.addr;
    let client_v1: SocketAddr = "203.0.113.7:41000".parse().unwrap();
    let client_v2: SocketAddr = "198.51.100.9:42000".parse().unwrap();

    // v1 and v2: the PROXY source is what the origin sees in X-Forwarded-For.
    for (i, header) in [v1(client_v1, pp), v2(client_v2, pp)].iter().enumerate() {
        let mut c = via_proxy_header(pp, header).await;
        let r = c
            .request("GET", &format!("/who/{i}"), &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        // A second request on the same connection is the same client.
        c.request("GET", &format!("/again/{i}"), &[], b"")
            .await
            .unwrap();
    }
    let seen = origin.requests();
    let xff = |path: &str| {
        seen.iter()
            .find(|r| r.path() == path)
            .and_then(|r| r.header("x-forwarded-for"))
            .map(String::from)
    };
    assert_eq!(xff("/who/0").as_deref(), Some("203.0.113.7"));
    assert_eq!(xff("/again/0").as_deref(), Some("203.0.113.7"));
    assert_eq!(xff("/who/1").as_deref(), Some("198.51.100.9"));

    // The access log names the PROXY source.
    let log = shellac.dir.join("access.log");
    wait_for("access log lines", || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        async move { text.contains(" /who/0 ") && text.contains(" /who/1 ") }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    for (path, ip) in [("/who/0", "203.0.113.7"), ("/who/1", "198.51.100.9")] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!(" {path} ")))
            .unwrap();
        assert_eq!(line.split(' ').nth(1), Some(ip), "{line}");
    }

    // The PURGE ACL (loopback by default) decides on the PROXY source, not the TCP peer
    // (which is 127.0.0.1 for every connection here).
    let mut c = via_proxy_header(pp, &v2(client_v2, pp)).await;
    let r = c.request("PURGE", "/who/1", &[], b"").await.unwrap();
    assert_eq!(
        r.status, 403,
        "a remote client behind the balancer may not purge"
    );
    let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let mut c = via_proxy_header(pp, &v1(local, pp)).await;
    let r = c.request("PURGE", "/who/1", &[], b"").await.unwrap();
    assert_eq!(r.status, 200, "a loopback PROXY source may");

    // A bare HTTP request on the PROXY listener is closed unanswered and never forwarded.
    let before = origin.count();
    let mut c = Client::connect(pp).await.unwrap();
    c.send_raw(b"GET /bare HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    assert!(c.is_closed(Duration::from_secs(5)).await);
    assert_eq!(
        shellac
            .metric(
                "shellac_connections_refused_total",
                &[("reason", "proxy_protocol_invalid")]
            )
            .await,
        1.0
    );
    // A header spoofing a client on the plain listener is just a malformed request.
    let mut c = Client::connect(plain).await.unwrap();
    c.send_raw(&v1(client_v1, plain)).await.unwrap();
    c.send_raw(b"GET /forged HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(c.read_response(false).await.unwrap().status, 400);
    assert_eq!(origin.count(), before, "neither reached the origin");
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let origin = Origin::start(|_| cacheable()).await;
    let body = format!(
        "trusted_proxies: [\"127.0.0.2/32\"]\nadmin: {{listen: \"{{ADMIN}}\", purge_allow: [\"198.51.100.0/24\"]}}\nlimits: {{max_connections_per_ip: 2}}\naccess_log: {{target: \"{{DIR}}/access.log\"}}\n{}",
        simple_config(&[&origin], "", ", cache: true")
    );
    let shellac = Shellac::start(&body).await;
    shellac.get("/p").await;
    let lb: IpAddr = "127.0.0.2".parse().unwrap();
    let stranger: IpAddr = "127.0.0.1".parse().unwrap();
    // The balancer vouches for 198.51.100.5 (an operator); a client-written entry to its left
    // is not believed.
    let xff = [("X-Forwarded-For", "6.6.6.6, 198.51.100.5")];
    let mut c = Client::connect_from(stranger, shellac.addr).await.unwrap();
    let r = c.request("PURGE", "/p", &xff, b"").await.unwrap();
    assert_eq!(
        r.status, 403,
        "an untrusted peer's X-Forwarded-For is ignored"
    );
    let mut c = Client::connect_from(lb, shellac.addr).await.unwrap();
    let r = c.request("PURGE", "/p", &xff, b"").await.unwrap();
    assert_eq!(r.status, 200, "the trusted balancer's is believed");
    let r = c
        .request(
            "PURGE",
            "/p",
            &[("X-Forwarded-For", "198.51.100.5, 6.6.6.6")],
            b"",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403, "the rightmost untrusted entry is the client");
    // The access log agrees.
    let mut c = Client::connect_from(lb, shellac.addr).await.unwrap();
    c.request("GET", "/logged", &[("X-Forwarded-For", "192.0.2.44")], b"")
        .await
        .unwrap();
    let log = shellac.dir.join("access.log");
    wait_for("the access log line", || {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        async move { t.contains(" /logged ") }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text.lines().find(|l| l.contains(" /logged ")).unwrap();
    assert_eq!(line.split(' ').nth(1), Some("192.0.2.44"), "{line}");
    // The origin still gets the appended chain.
    let last = origin
        .requests()
        .into_iter()
        .find(|r| r.path() == "/logged")
        .unwrap();
    assert_eq!(
        last.header("x-forwarded-for"),
        Some("192.0.2.44, 127.0.0.2")
    );

    // The per-IP cap (2 here) does not count a trusted balancer's connections.
    let mut lbs = Vec::new();
    for _ in 0..5 {
        let mut c = Client::connect_from(lb, shellac.addr).await.unwrap();
        assert_eq!(c.request("GET", "/p", &[], b"").await.unwrap().status, 200);
        lbs.push(c);
    }
    // A fresh address, so no connection left from above counts against it.
    let capped: IpAddr = "127.0.0.3".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect_from(capped, shellac.addr).await.unwrap();
        assert_eq!(c.request("GET", "/p", &[], b"").await.unwrap().status, 200);
        held.push(c);
    }
    let mut third = Client::connect_from(capped, shellac.addr).await.unwrap();
    assert!(third.request("GET", "/p", &[], b"").await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn purge_by_token_from_anywhere_and_methods_are_case_sensitive() {
    let origin = Origin::start(|_| cacheable()).await;
    let secrets = temp_dir();
    let token_file = secrets.join("purge.token");
    std::fs::write(&token_file, "0123456789abcdef-secret\n").unwrap();
    let body = format!(
        "admin: {{listen: \"{{ADMIN}}\", purge_allow: [\"10.0.0.0/8\"], purge_token_file: \"{}\"}}\n{}",
        token_file.display(),
        simple_config(&[&origin], "", ", cache: true")
    );
    let shellac = Shellac::start(&body).await;
    shellac.get("/t").await;
    shellac.get("/t").await;
    assert_eq!(origin.count_path("/t"), 1);

    let r = shellac.request("PURGE", "/t", &[]).await;
    assert_eq!(r.status, 403, "127.0.0.1 is not in purge_allow");
    let r = shellac
        .request(
            "PURGE",
            "/t",
            &[("Authorization", "Bearer wrong-token-wrong-token")],
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        shellac
            .metric("shellac_cache_purges_total", &[("result", "bad_token")])
            .await,
        1.0
    );
    // Lower-case `purge` is another method: forwarded to the origin, purging nothing.
    let r = shellac
        .request(
            "purge",
            "/t",
            &[("Authorization", "Bearer 0123456789abcdef-secret")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(origin.requests().iter().any(|r| r.method == "purge"));
    shellac.get("/t").await;
    assert_eq!(origin.count_path("/t"), 2, "1 GET + the forwarded `purge`");
    let r = shellac
        .request(
            "PURGE",
            "/t",
            &[("Authorization", "Bearer 0123456789abcdef-secret")],
        )
        .await;
    assert_eq!(r.status, 200, "the right token purges from any address");
    shellac.get("/t").await;
    assert_eq!(origin.count_path("/t"), 3, "purged, so fetched again");

    // `shellac -t` refuses an empty token file.
    std::fs::write(&token_file, "\n").unwrap();
    let path = shellac.config_path.to_str().unwrap().to_string();
    let (code, out) = common::run(&["-t", "-c", &path]);
    assert_ne!(code, 0);
    assert!(out.contains("admin.purge_token_file"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn only_listed_methods_invalidate() {
    let origin = Origin::start(|r| match r.method.as_str() {
        "GET" => cacheable(),
        _ => Reply::ok("done"),
    })
    .await;
    let shellac = Shellac::start(&simple_config(&[&origin], "", ", cache: true")).await;
    let gets = |o: &Origin| o.requests().iter().filter(|r| r.method == "GET").count();
    shellac.get("/doc").await;
    for m in ["FROBNICATE", "post", "delete", "PURGEALL"] {
        let mut c = Client::connect(shellac.addr).await.unwrap();
        let r = c.request(m, "/doc", &[], b"body").await.unwrap();
        assert_eq!(r.status, 200, "{m} answered by the origin");
        shellac.get("/doc").await;
        assert_eq!(gets(&origin), 1, "the stored copy survives {m}");
    }
    let mut c = Client::connect(shellac.addr).await.unwrap();
    assert_eq!(
        c.request("POST", "/doc", &[], b"x").await.unwrap().status,
        200
    );
    shellac.get("/doc").await;
    assert_eq!(gets(&origin), 2, "POST invalidated it");
}

/// 200 concurrent requests for a stored URL, each with a client reload directive.
async fn reload_flood(shellac: &Shellac, path: &str) {
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let addr = shellac.addr;
            let path = path.to_string();
            tokio::spawn(async move {
                let h = match i % 3 {
                    0 => ("Cache-Control", "no-cache"),
                    1 => ("Cache-Control", "max-age=0"),
                    _ => ("Pragma", "no-cache"),
                };
                common::http::request(addr, "GET", &path, &[h])
                    .await
                    .unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 200);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn client_cache_busting_cannot_multiply_origin_load() {
    let origin = Origin::start(|r| {
        let reply = Reply::ok("v").header("Cache-Control", "max-age=300");
        if r.path() == "/honor" {
            reply.delay(Duration::from_millis(400))
        } else {
            reply
        }
    })
    .await;
    let routes = format!(
        "upstreams:\n  app:\n    backends: [\"{}\"]\nroutes:\n  - {{host: \"*\", path_prefix: /honor, upstream: app, cache: true, client_cache_control: honor}}\n  - {{host: \"*\", path_prefix: /, upstream: app, cache: true}}\n",
        origin.addr
    );
    let shellac = Shellac::start(&routes).await;
    shellac.get("/ignore").await;
    reload_flood(&shellac, "/ignore").await;
    assert_eq!(
        origin.count_path("/ignore"),
        1,
        "ignore: the flood never reached the origin"
    );

    shellac.get("/honor").await;
    let before = origin.count_path("/honor");
    let started = Instant::now();
    reload_flood(&shellac, "/honor").await;
    let flood = origin.count_path("/honor") - before;
    // Each origin answer takes 400 ms, so the flood spans at most this many coalesced batches.
    let batches = started.elapsed().as_millis() as usize / 400 + 1;
    eprintln!(
        "honor: {flood} origin requests for 200 forced revalidations in {batches} batch windows"
    );
    assert!(flood >= 1, "honor: reloads do reach the origin");
    assert!(
        flood <= batches,
        "honor: {flood} origin requests in {batches} batches"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_headers_and_credentials_stay_internal() {
    let prod = Origin::start(|_| Reply::ok("p")).await;
    let staging = Origin::start(|_| Reply::ok("p")).await;
    let body = format!(
        "upstreams:\n  app:\n    backends: [\"{}\"]\n  staging:\n    backends: [\"{}\"]\nroutes:\n  - {{host: \"*\", path_prefix: /creds/, upstream: app, mirror: {{upstream: staging, forward_credentials: true}}}}\n  - {{host: \"*\", path_prefix: /, upstream: app, mirror: {{upstream: staging}}}}\n",
        prod.addr, staging.addr
    );
    let shellac = Shellac::start(&body).await;
    let headers = [
        ("X-Shellac-Mirror", "1"),
        ("X-Shellac-Debug", "1"),
        ("Authorization", "Bearer user"),
        ("Cookie", "session=abc"),
    ];
    for path in ["/plain", "/creds/x"] {
        let r = shellac.request("GET", path, &headers).await;
        assert_eq!(r.status, 200);
    }
    wait_for("both forks at staging", || {
        let n = staging.count();
        async move { n >= 2 }
    })
    .await;
    for r in prod.requests() {
        assert!(r.header("x-shellac-mirror").is_none(), "{r:?}");
        assert!(r.header("x-shellac-debug").is_none(), "{r:?}");
        assert_eq!(r.header("authorization"), Some("Bearer user"));
    }
    for r in staging.requests() {
        assert_eq!(
            r.header("x-shellac-mirror"),
            Some("1"),
            "set by Shellac itself"
        );
        assert!(r.header("x-shellac-debug").is_none());
        let creds = (r.header("authorization"), r.header("cookie"));
        if r.path() == "/plain" {
            assert_eq!(creds, (None, None), "credentials kept from staging");
        } else {
            assert_eq!(creds, (Some("Bearer user"), Some("session=abc")));
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_turns_503_while_draining_and_ignores_dead_origins() {
    let origin = Origin::start(|_| Reply::ok("x")).await;
    let dead = format!("127.0.0.1:{}", free_port());
    let body = format!(
        "upstreams:\n  app:\n    backends: [\"{}\"]\n  gone:\n    backends: [\"{dead}\"]\n    health_check: {{kind: tcp, interval: 100ms, failures: 1, successes: 1}}\nroutes:\n  - {{host: \"*\", path_prefix: /, upstream: app}}\n",
        origin.addr
    );
    let mut shellac = Shellac::start_with_grace(&body, 3).await;
    // Dead origins do not make the node unready; the body says how they are.
    let admin = shellac.admin;
    wait_for("the dead backend to be marked down", || async move {
        common::http::get(admin, "/readyz")
            .await
            .is_ok_and(|r| r.status == 200 && r.text().contains("gone 0/1 healthy"))
    })
    .await;
    let r = common::http::get(admin, "/readyz").await.unwrap();
    assert!(
        r.text().starts_with("ready; upstreams: app 1/1 healthy"),
        "{}",
        r.text()
    );

    // A keep-alive connection to the old process's admin listener sees it drain.
    let mut old_admin = Client::connect(admin).await.unwrap();
    assert_eq!(
        old_admin
            .request("GET", "/readyz", &[], b"")
            .await
            .unwrap()
            .status,
        200
    );
    let mut old = shellac.reload().await;
    let r = old_admin.request("GET", "/readyz", &[], b"").await.unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().starts_with("draining"), "{}", r.text());
    assert_eq!(
        common::http::get(admin, "/healthz").await.unwrap().status,
        200
    );
    // Once the old process is gone, every answer is the new process's: ready.
    assert!(old.exited_within(Duration::from_secs(20)).await.is_some());
    for _ in 0..5 {
        assert_eq!(
            common::http::get(admin, "/readyz").await.unwrap().status,
            200
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_flood_writes_a_bounded_number_of_fleet_invalidations() {
    let origin = Origin::start(|r| match r.method.as_str() {
        "GET" => cacheable(),
        _ => Reply::ok("done"),
    })
    .await;
    let body = format!(
        "{}cache: {{memcached: {{servers: [\"{}\"], timeout: 1s, namespace: \"lb{}\", invalidations_per_second: 5}}}}\n",
        simple_config(&[&origin], "", ", cache: true"),
        common::memcached::shared(),
        std::process::id()
    );
    let shellac = Shellac::start(&body).await;
    shellac.get("/cached").await;
    let mut c = Client::connect(shellac.addr).await.unwrap();
    for _ in 0..40 {
        assert_eq!(
            c.request("POST", "/hot", &[], b"x").await.unwrap().status,
            200
        );
    }
    let local = shellac
        .metric(
            "shellac_cache_purges_total",
            &[("result", "marker_dropped")],
        )
        .await;
    // A 5/s bucket holds 5 and refills 5 a second; 40 sequential POSTs on loopback take far
    // less than the 5 s that would let 30 more through.
    assert!(
        local >= 10.0,
        "only {local} of 40 invalidations wrote no marker"
    );
    eprintln!("40 POSTs at invalidations_per_second: 5 -> {local} without a fleet marker");
    // Over the rate the object is still removed here and from memcached: a stored object does
    // not survive a POST on the node that forwarded it.
    c.request("POST", "/cached", &[], b"x").await.unwrap();
    shellac.get("/cached").await;
    let gets = origin
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path() == "/cached")
        .count();
    assert_eq!(gets, 2, "invalidated on this node even over the rate");
}
