//! Upstream selection and health: spread, weights, Ketama stability, dead backends, checks.

mod common;

use common::http::{Origin, Reply};
use common::{backends, Shellac};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn named(name: &'static str) -> impl Fn(&common::http::Request) -> Reply {
    move |_| Reply::ok(name)
}

fn group(list: &str, extra: &str) -> String {
    format!("upstreams:\n  app:\n    backends: {list}\n{extra}\nroutes:\n  - {{upstream: app}}\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn round_robin_spreads_evenly() {
    let a = Origin::start(named("a")).await;
    let b = Origin::start(named("b")).await;
    let shellac = Shellac::start(&group(&backends(&[&a, &b]), "    selection: round_robin")).await;
    for i in 0..100 {
        assert_eq!(shellac.get(&format!("/{i}")).await.status, 200);
    }
    assert_eq!(a.count() + b.count(), 100);
    assert!(
        a.count().abs_diff(50) <= 1,
        "a={} b={}",
        a.count(),
        b.count()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn weights_shape_the_spread() {
    let a = Origin::start(named("a")).await;
    let b = Origin::start(named("b")).await;
    let list = format!(
        "[{{addr: \"{}\", weight: 1}}, {{addr: \"{}\", weight: 3}}]",
        a.addr, b.addr
    );
    let shellac = Shellac::start(&group(&list, "")).await;
    for i in 0..200 {
        shellac.get(&format!("/{i}")).await;
    }
    assert!(
        a.count().abs_diff(50) <= 2,
        "weight 1 of 4 got {} of 200",
        a.count()
    );
    assert!(
        b.count().abs_diff(150) <= 2,
        "weight 3 of 4 got {} of 200",
        b.count()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn random_uses_every_backend() {
    let a = Origin::start(named("a")).await;
    let b = Origin::start(named("b")).await;
    let shellac = Shellac::start(&group(&backends(&[&a, &b]), "    selection: random")).await;
    for i in 0..200 {
        shellac.get(&format!("/{i}")).await;
    }
    // Binomial(200, 0.5): below 60 has probability < 1e-8.
    assert!(
        a.count() > 60 && b.count() > 60,
        "a={} b={}",
        a.count(),
        b.count()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consistent_hashing_keeps_each_url_on_one_backend() {
    let a = Origin::start(named("a")).await;
    let b = Origin::start(named("b")).await;
    let c = Origin::start(named("c")).await;
    let shellac = Shellac::start(&group(
        &backends(&[&a, &b, &c]),
        "    selection: consistent",
    ))
    .await;
    let mut first = Vec::new();
    for i in 0..60 {
        first.push(shellac.get(&format!("/item/{i}?v=1")).await.text());
    }
    for round in 0..2 {
        for (i, was) in first.iter().enumerate() {
            let again = shellac.get(&format!("/item/{i}?v=1")).await.text();
            assert_eq!(&again, was, "round {round}: /item/{i} moved");
        }
    }
    for name in ["a", "b", "c"] {
        let n = first.iter().filter(|x| *x == name).count();
        assert!(n >= 5, "backend {name} got only {n} of 60 URLs");
    }
    // The host is part of the key too: the same path on many hosts spreads out.
    let mut hosts = std::collections::HashSet::new();
    for i in 0..30 {
        let host = format!("h{i}.test");
        hosts.insert(
            shellac
                .request("GET", "/same", &[("Host", &host)])
                .await
                .text(),
        );
    }
    assert!(hosts.len() > 1, "host is not part of the Ketama key");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_backend_causes_no_client_error() {
    let a = Origin::start(named("a")).await;
    let b = Origin::start(named("b")).await;
    // No health check: only the connect retry protects clients.
    let shellac = Shellac::start(&group(&backends(&[&a, &b]), "    retries: 2")).await;
    assert_eq!(shellac.get("/warm").await.status, 200);
    b.kill();
    for i in 0..50 {
        let r = shellac.get(&format!("/{i}")).await;
        assert_eq!((r.status, r.text().as_str()), (200, "a"), "request {i}");
    }
    // The logging hook counts a request just after its response is written: wait for it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let ok = loop {
        let ok = shellac
            .metric(
                "shellac_upstream_requests_total",
                &[("upstream", "app"), ("status_class", "2xx")],
            )
            .await;
        if ok >= 51.0 || Instant::now() > deadline {
            break ok;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(ok >= 51.0, "{ok}");
    let b_addr = b.addr.to_string();
    let errors = shellac
        .metric(
            "shellac_upstream_requests_total",
            &[("backend", &b_addr), ("status_class", "error")],
        )
        .await;
    assert!(errors >= 1.0, "refused connects are counted per backend");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_checks_take_a_backend_out_and_bring_it_back() {
    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let a = Origin::start(named("a")).await;
    let b = Origin::start(move |req| {
        if req.path() == "/healthz" && !h.load(Ordering::SeqCst) {
            Reply::new(503, "down")
        } else {
            Reply::ok("b")
        }
    })
    .await;
    let check = "    health_check: {kind: http, path: /healthz, interval: 500ms, failures: 2, successes: 2}";
    let shellac = Shellac::start(&group(&backends(&[&a, &b]), check)).await;
    let b_addr = b.addr.to_string();
    let labels = [("upstream", "app"), ("backend", b_addr.as_str())];
    let gauge = || shellac.metric("shellac_backend_healthy", &labels);
    assert_eq!(gauge().await, 1.0);

    // Bound from the issue: interval × failures plus a second = 2 s.
    healthy.store(false, Ordering::SeqCst);
    let t = Instant::now();
    while gauge().await != 0.0 {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "still in rotation after {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = b.count_path("/x");
    for _ in 0..20 {
        assert_eq!(shellac.get("/x").await.text(), "a");
    }
    assert_eq!(
        b.count_path("/x"),
        before,
        "an unhealthy backend got traffic"
    );

    healthy.store(true, Ordering::SeqCst);
    let t = Instant::now();
    while gauge().await != 1.0 {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "not back after {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..10 {
        shellac.get("/x").await;
    }
    assert!(
        b.count_path("/x") > before,
        "a recovered backend gets traffic again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn all_backends_down_gives_502_within_the_connect_timeout() {
    let a = Origin::start(named("a")).await;
    let b = Origin::start(named("b")).await;
    let shellac = Shellac::start(&group(&backends(&[&a, &b]), "    connect_timeout: 1s")).await;
    a.kill();
    b.kill();
    let t = Instant::now();
    let r = shellac.get("/").await;
    assert_eq!(r.status, 502);
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );

    // With health checks that have marked everything down: answered at once.
    let c = Origin::start(named("c")).await;
    let check = "    health_check: {kind: tcp, interval: 200ms, failures: 1, successes: 1}";
    let shellac = Shellac::start(&group(&backends(&[&c]), check)).await;
    c.kill();
    let c_addr = c.addr.to_string();
    let labels = [("backend", c_addr.as_str())];
    let gauge = || shellac.metric("shellac_backend_healthy", &labels);
    let t = Instant::now();
    while gauge().await != 0.0 {
        assert!(t.elapsed() < Duration::from_secs(3));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = Instant::now();
    assert_eq!(shellac.get("/").await.status, 502);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "took {:?}",
        t.elapsed()
    );
}

/// An origin that answers the first request on each connection and closes the connection when a
/// second one arrives on it, unanswered: the keep-alive race of an origin whose idle timeout is
/// shorter than the proxy's, made certain. Counts answered and dropped requests.
async fn one_request_per_connection_origin(
) -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answered = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let (a, d) = (answered.clone(), dropped.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (a, d) = (a.clone(), d.clone());
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let Ok(Some(req)) = common::http::read_request(&mut s).await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let reply = Reply::ok(format!("{} {}", req.method, req.target));
                if common::http::write_reply(s.get_mut(), &req, &reply)
                    .await
                    .is_err()
                {
                    return;
                }
                let _ = s.get_mut().flush().await;
                // The next request is read, then the connection closes without an answer.
                if let Ok(Some(_)) = common::http::read_request(&mut s).await {
                    d.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, answered, dropped)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_connection_the_origin_closed_is_retried_on_a_new_one_even_with_one_backend() {
    let (addr, answered, dropped) = one_request_per_connection_origin().await;
    // No retries configured: a stale pooled connection must not need one.
    let shellac = Shellac::start(&group(&format!("[\"{addr}\"]"), "    retries: 0")).await;
    for i in 0..6 {
        for method in ["GET", "PUT"] {
            let r = shellac.request(method, &format!("/r{i}"), &[]).await;
            assert_eq!(r.status, 200, "{method} /r{i}: {}", r.text());
            assert_eq!(r.text(), format!("{method} /r{i}"));
        }
    }
    assert_eq!(answered.load(Ordering::SeqCst), 12);
    // Requests did go out on reused connections that the origin then dropped.
    assert!(dropped.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_work_stealing_origin_connections_are_still_pooled() {
    // `work_stealing: false` gives each worker thread its own share of the origin pool (a
    // pooled socket is driven by the thread that dialled it); the shares must still be reused.
    let origin = Origin::start(named("a")).await;
    let shellac = Shellac::start_with_pingora(
        &group(&backends(&[&origin]), ""),
        1,
        "  work_stealing: false\n",
    )
    .await;
    for i in 0..40 {
        // A new client connection each time: each lands on a worker thread at random.
        let r = shellac.get(&format!("/w{i}")).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "a");
    }
    assert_eq!(origin.count(), 40);
    // Two worker threads, one share each. Without work stealing a connection is back in its
    // share a moment after the client has its answer, so a next request can dial anew (6-8 of
    // 40 seen, with and without the per-thread shares); a key that missed the pool would dial
    // all 40.
    assert!(
        origin.connections() <= 12,
        "{} origin connections for 40 requests",
        origin.connections()
    );
}
