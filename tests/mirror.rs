//! Traffic mirroring through the real binary: what staging receives, what the client sees while
//! staging is slow or dead, and how differences are counted and logged.

mod common;

use common::http::{Client, Origin, Reply, Request};
use common::{free_port, Shellac};
use std::time::{Duration, Instant};

/// Upstreams `app` (production) and `staging`, and `routes` (YAML list items) plus `extra`.
fn config(prod: &Origin, staging: &str, routes: &str, extra: &str) -> String {
    format!(
        "upstreams:\n  app: {{backends: [\"{}\"]}}\n  staging: {{backends: [\"{staging}\"]}}\nroutes:\n{routes}{extra}",
        prod.addr
    )
}

/// One catch-all route mirrored with `mirror` (inside the braces after `upstream: staging`).
fn mirrored(prod: &Origin, staging: &str, mirror: &str, extra: &str) -> String {
    config(
        prod,
        staging,
        &format!("  - {{host: \"*\", path_prefix: /, upstream: app, name: main, mirror: {{upstream: staging{mirror}}}}}\n"),
        extra,
    )
}

fn echo(req: &Request) -> Reply {
    Reply::ok(format!("body of {}", req.target)).header("Content-Type", "text/plain")
}

async fn forks(s: &Shellac, result: &str) -> f64 {
    s.metric("shellac_mirror_forks_total", &[("result", result)])
        .await
}

async fn route_forks(s: &Shellac, route: &str, result: &str) -> f64 {
    s.metric(
        "shellac_mirror_forks_total",
        &[("route", route), ("result", result)],
    )
    .await
}

async fn mismatches(s: &Shellac, kind: &str) -> f64 {
    s.metric("shellac_mirror_mismatches_total", &[("kind", kind)])
        .await
}

async fn all_forks(s: &Shellac) -> f64 {
    s.metric("shellac_mirror_forks_total", &[]).await
}

/// Waits until no fork is in flight and the fork count stopped moving.
async fn settle(s: &Shellac) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = -1.0;
    loop {
        let inflight = s.metric("shellac_mirror_inflight", &[]).await;
        let total = all_forks(s).await;
        if inflight == 0.0 && total == last {
            return;
        }
        last = total;
        assert!(Instant::now() < deadline, "forks still in flight");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_forked_at_sample_1_with_hop_by_hop_stripped() {
    let prod = Origin::start(echo).await;
    let staging = Origin::start(echo).await;
    let s = Shellac::start(&mirrored(
        &prod,
        &staging.addr.to_string(),
        ", sample: 1.0",
        "",
    ))
    .await;
    let mut c = Client::connect(s.addr).await.unwrap();
    for i in 0..40 {
        let target = format!("/item/{i}?q=1");
        let r = c
            .request(
                "GET",
                &target,
                &[
                    ("Connection", "keep-alive, X-Secret"),
                    ("X-Secret", "s"),
                    ("Keep-Alive", "timeout=5"),
                    ("TE", "trailers"),
                    ("X-Kept", "k"),
                ],
                b"",
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), format!("body of {target}"));
        assert!(r.header("x-shellac-mirror").is_none());
    }
    let r = c.request("HEAD", "/head", &[], b"").await.unwrap();
    assert_eq!(r.status, 200);
    settle(&s).await;
    assert_eq!(forks(&s, "match").await, 41.0);
    assert_eq!(all_forks(&s).await, 41.0);
    assert_eq!(prod.count(), 41);
    let mut seen = staging.requests();
    assert_eq!(seen.len(), 41);
    let head = seen
        .iter()
        .position(|r| r.method == "HEAD")
        .expect("HEAD forked");
    assert_eq!(seen.remove(head).target, "/head");
    let prod_seen = prod.requests();
    for req in &seen {
        assert_eq!(req.header("x-shellac-mirror"), Some("1"));
        for h in ["connection", "x-secret", "keep-alive", "te"] {
            assert!(req.header(h).is_none(), "{h} reached staging: {req:?}");
        }
        assert_eq!(req.header("x-kept"), Some("k"));
        assert_eq!(req.header("x-forwarded-for"), Some("127.0.0.1"));
        let id = req.header("x-request-id").expect("request id");
        let twin = prod_seen
            .iter()
            .find(|p| p.header("x-request-id") == Some(id))
            .expect("production request with the same id");
        assert_eq!(twin.target, req.target);
        assert!(twin.header("x-shellac-mirror").is_none());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sample_fraction_within_three_sigma() {
    let prod = Origin::start(echo).await;
    let staging = Origin::start(echo).await;
    let s = Shellac::start(&mirrored(
        &prod,
        &staging.addr.to_string(),
        ", sample: 0.25",
        "",
    ))
    .await;
    let n = 400;
    let mut c = Client::connect(s.addr).await.unwrap();
    for i in 0..n {
        let r = c.request("GET", &format!("/{i}"), &[], b"").await.unwrap();
        assert_eq!(r.status, 200);
    }
    settle(&s).await;
    let forked = staging.count();
    // Binomial(400, 0.25): mean 100, σ ≈ 8.66.
    let (mean, sigma) = (100.0, (n as f64 * 0.25 * 0.75).sqrt());
    assert!(
        (forked as f64 - mean).abs() <= 3.0 * sigma,
        "{forked} of {n} forked at sample 0.25"
    );
    assert_eq!(forks(&s, "match").await, forked as f64);
    assert_eq!(all_forks(&s).await, forked as f64);
    eprintln!("sample 0.25: {forked} of {n} forked");
}

use common::pseudo_random;

fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn post_bodies_forked_byte_exact_only_when_configured() {
    let reply = |req: &Request| Reply::ok(format!("{} bytes", req.body.len()));
    let prod = Origin::start(reply).await;
    let staging = Origin::start(reply).await;
    let routes = "  - {host: \"*\", path_prefix: /default/, upstream: app, name: default, mirror: {upstream: staging}}\n  - {host: \"*\", path_prefix: /, upstream: app, name: post, mirror: {upstream: staging, methods: [GET, POST], max_body: 512KiB}}\n";
    let s = Shellac::start(&config(&prod, &staging.addr.to_string(), routes, "")).await;
    let mut c = Client::connect(s.addr).await.unwrap();

    // Larger than Pingora's 64 KiB retry buffer and many read chunks.
    let body = pseudo_random(300 * 1024, 7);
    let r = c.request("POST", "/upload", &[], &body).await.unwrap();
    assert_eq!(r.text(), format!("{} bytes", body.len()));
    let body2 = pseudo_random(200 * 1024 + 13, 9);
    let r = c
        .request(
            "POST",
            "/chunked",
            &[("Transfer-Encoding", "chunked")],
            &chunked(&body2, 10_000),
        )
        .await
        .unwrap();
    assert_eq!(r.text(), format!("{} bytes", body2.len()));
    // Over max_body, declared and streamed: production is served, staging never sees it.
    let big = pseudo_random(600 * 1024, 11);
    let r = c.request("POST", "/big", &[], &big).await.unwrap();
    assert_eq!(r.text(), format!("{} bytes", big.len()));
    let r = c
        .request(
            "POST",
            "/big-chunked",
            &[("Transfer-Encoding", "chunked")],
            &chunked(&big, 32 * 1024),
        )
        .await
        .unwrap();
    assert_eq!(r.text(), format!("{} bytes", big.len()));
    // The default method list forks GET but not POST.
    let r = c.request("POST", "/default/p", &[], b"x=1").await.unwrap();
    assert_eq!(r.status, 200);
    let r = c.request("GET", "/default/g", &[], b"").await.unwrap();
    assert_eq!(r.status, 200);
    settle(&s).await;

    let seen = staging.requests();
    let by_path = |p: &str| seen.iter().find(|r| r.path() == p);
    let up = by_path("/upload").expect("POST forked");
    assert_eq!(up.method, "POST");
    assert!(up.body == body, "forked body differs from the client's");
    let ch = by_path("/chunked").expect("chunked POST forked");
    assert!(ch.body == body2, "forked chunked body differs");
    assert!(
        by_path("/big").is_none(),
        "declared body over max_body forked"
    );
    assert!(by_path("/default/p").is_none(), "POST forked by default");
    assert!(by_path("/default/g").is_some(), "GET not forked by default");
    assert_eq!(route_forks(&s, "post", "match").await, 2.0);
    // /big refused up front; /big-chunked abandoned once it passed max_body.
    assert_eq!(route_forks(&s, "post", "skipped").await, 2.0);
    assert_eq!(route_forks(&s, "default", "skipped").await, 1.0);
    assert_eq!(route_forks(&s, "default", "match").await, 1.0);
}

/// The answer comes in a header with an empty body: the origin then writes once, so Nagle and
/// delayed ACKs (40 ms) do not drown the latencies being compared.
fn quick(req: &Request) -> Reply {
    Reply::ok("").header("X-Target", req.target.clone())
}

/// Sequential requests on one keep-alive connection: (p50, max) latency; every answer checked.
async fn measure(s: &Shellac, n: usize) -> (Duration, Duration) {
    let mut c = Client::connect(s.addr).await.unwrap();
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let target = format!("/m/{i}");
        let t = Instant::now();
        let r = c.request("GET", &target, &[], b"").await.unwrap();
        times.push(t.elapsed());
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-target"), Some(target.as_str()));
    }
    times.sort();
    (times[n / 2], times[n - 1])
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_or_dead_staging_changes_nothing_for_clients() {
    let n = 150;
    let prod = Origin::start(quick).await;
    let baseline = Shellac::start(&common::simple_config(&[&prod], "", "")).await;
    // Warm up, then measure without mirroring.
    measure(&baseline, 20).await;
    let (base_p50, base_max) = measure(&baseline, n).await;
    drop(baseline);

    let slow = Origin::start(|req| quick(req).delay(Duration::from_secs(5))).await;
    let s = Shellac::start(&mirrored(
        &prod,
        &slow.addr.to_string(),
        "",
        "mirror_limits: {max_inflight: 64, timeout: 10s}\n",
    ))
    .await;
    measure(&s, 20).await;
    let (slow_p50, slow_max) = measure(&s, n).await;
    let inflight = s.metric("shellac_mirror_inflight", &[]).await;
    let dropped = forks(&s, "dropped").await;
    // Every fork that got a permit is answered within the 10 s timeout, and matches.
    settle(&s).await;
    let slow_matched = forks(&s, "match").await;
    drop(s);

    let dead = format!("127.0.0.1:{}", free_port());
    let s = Shellac::start(&mirrored(&prod, &dead, "", "")).await;
    measure(&s, 20).await;
    let (dead_p50, dead_max) = measure(&s, n).await;
    settle(&s).await;
    let errors = forks(&s, "error").await;

    eprintln!(
        "p50/max: baseline {base_p50:?}/{base_max:?}, slow staging {slow_p50:?}/{slow_max:?} \
         ({inflight} in flight, {dropped} dropped, {slow_matched} matched), dead staging {dead_p50:?}/{dead_max:?} ({errors} errors)"
    );
    // A client that waited for staging would take 5 s (slow) or at least a connect attempt.
    let margin = |base: Duration| base * 2 + Duration::from_millis(3);
    assert!(
        slow_p50 <= margin(base_p50),
        "slow staging p50 {slow_p50:?} vs {base_p50:?}"
    );
    assert!(
        dead_p50 <= margin(base_p50),
        "dead staging p50 {dead_p50:?} vs {base_p50:?}"
    );
    assert!(
        slow_max < Duration::from_secs(1),
        "slow staging max {slow_max:?}"
    );
    assert!(
        dead_max < Duration::from_secs(1),
        "dead staging max {dead_max:?}"
    );
    // The slow forks were bounded and the excess counted, not queued.
    assert!(inflight <= 64.0 && dropped > 0.0, "{inflight} {dropped}");
    assert_eq!(slow_matched + dropped, (n + 20) as f64);
    assert_eq!(errors, (n + 20) as f64);
}

#[tokio::test(flavor = "multi_thread")]
async fn differences_counted_by_kind_ignored_fields_ignored_and_logged() {
    fn answer(req: &Request, staging: bool) -> Reply {
        let json = |body: &str| {
            Reply::ok(body.to_string()).header("Content-Type", "application/json; charset=utf-8")
        };
        match req.path() {
            "/hdr" => Reply::ok("same").header("X-Version", if staging { "2" } else { "1" }),
            "/json" if staging => json(r#"{"user": {"name": "bob"}, "meta": {"generated": 2}}"#),
            "/json" => json(r#"{"user": {"name": "alice"}, "meta": {"generated": 1}}"#),
            // Only ignored things differ: a header, a JSON field, key order and spacing.
            "/ignored" if staging => {
                json(r#"{"meta":{"generated":99},"user":{"name":"alice"}}"#).header("X-Noise", "b")
            }
            "/ignored" => json(r#"{"user": {"name": "alice"}, "meta": {"generated": 1}}"#)
                .header("X-Noise", "a"),
            "/status" => Reply::new(if staging { 503 } else { 200 }, "same"),
            _ => Reply::ok("same"),
        }
    }
    let prod = Origin::start(|r| answer(r, false)).await;
    let staging = Origin::start(|r| answer(r, true)).await;
    let log = common::temp_dir().join("mirror.log");
    let s = Shellac::start(&mirrored(
        &prod,
        &staging.addr.to_string(),
        ", compare: {ignore_headers: [date, x-noise], ignore_json_fields: [meta.generated]}",
        &format!("mirror_limits: {{log: {{path: {}}}}}\n", log.display()),
    ))
    .await;
    for p in ["/hdr", "/json", "/ignored", "/status", "/same"] {
        let r = s.get(p).await;
        assert_eq!(r.status, 200, "{p}: the client always gets production");
    }
    settle(&s).await;
    assert_eq!(mismatches(&s, "header").await, 1.0);
    assert_eq!(mismatches(&s, "body").await, 1.0);
    assert_eq!(mismatches(&s, "status").await, 1.0);
    assert_eq!(forks(&s, "mismatch").await, 3.0);
    assert_eq!(forks(&s, "match").await, 2.0);

    let text = std::fs::read_to_string(&log).unwrap_or_default();
    eprintln!("mirror log:\n{text}");
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line for {needle}:\n{text}"))
            .to_string()
    };
    let hdr = line("GET ");
    assert!(hdr.contains("route=main"), "{hdr}");
    let hdr = line("/hdr");
    assert!(
        hdr.contains(r#"header x-version: ["1"] vs ["2"]"#) && hdr.contains("mismatch=header"),
        "{hdr}"
    );
    let json = line("/json");
    assert!(
        json.contains(r#"body json $.user.name: "alice" vs "bob""#),
        "{json}"
    );
    assert!(!json.contains("generated"), "{json}");
    let status = line("/status");
    assert!(
        status.contains("production=200 staging=503 mismatch=status"),
        "{status}"
    );
    assert!(
        !text.contains("/ignored") && !text.contains("/same"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_hits_are_forked_and_compared() {
    let cc = |req: &Request| echo(req).header("Cache-Control", "max-age=60");
    let prod = Origin::start(cc).await;
    let staging = Origin::start(cc).await;
    let routes = "  - {host: \"*\", path_prefix: /, upstream: app, cache: true, mirror: {upstream: staging}}\n";
    let log = common::temp_dir().join("mirror.log");
    let s = Shellac::start(&config(
        &prod,
        &staging.addr.to_string(),
        routes,
        &format!("mirror_limits: {{log: {{path: {}}}}}\n", log.display()),
    ))
    .await;
    for i in 0..5 {
        let r = s.get("/cached").await;
        assert_eq!(r.text(), "body of /cached");
        if i > 0 {
            let cs = r.header("cache-status").unwrap_or("");
            assert!(cs.starts_with("shellac; hit"), "{cs}");
        }
    }
    settle(&s).await;
    eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
    assert_eq!(prod.count(), 1, "hits did not reach production");
    assert_eq!(staging.count(), 5, "every hit forked");
    assert_eq!(forks(&s, "match").await, 5.0);
}

#[test]
fn config_errors_name_the_key() {
    let base = |mirror: &str, extra: &str| {
        format!(
            "listen: [\"127.0.0.1:8080\"]\nadmin: {{listen: \"127.0.0.1:9091\"}}\nupstreams:\n  app: {{backends: [\"127.0.0.1:9001\"]}}\n  staging: {{backends: [\"127.0.0.1:9002\"]}}\nroutes:\n  - {{upstream: app, mirror: {{{mirror}}}}}\n{extra}"
        )
    };
    let parse = |m: &str, e: &str| shellac::config::Config::parse(&base(m, e));
    let c = parse("upstream: staging", "").unwrap();
    let m = c.routes[0].mirror.as_ref().unwrap();
    assert_eq!((m.sample, m.max_body), (1.0, 1 << 20));
    assert_eq!(m.methods, ["GET", "HEAD", "OPTIONS"]);
    assert_eq!(c.mirror_limits.max_inflight, 256);
    let err = |m: &str, e: &str| parse(m, e).unwrap_err().to_string();
    let cases = [
        ("upstream: nope", "", "routes[0].mirror.upstream"),
        ("upstream: app", "", "route's own upstream"),
        (
            "upstream: staging, sample: 1.5",
            "",
            "routes[0].mirror.sample",
        ),
        (
            "upstream: staging, methods: [post]",
            "",
            "routes[0].mirror.methods[0]",
        ),
        ("upstream: staging, sampel: 1", "", "unknown field `sampel`"),
        (
            "upstream: staging",
            "mirror_limits: {log: {path: mirror.log}}",
            "mirror_limits.log.path",
        ),
        (
            "upstream: staging",
            "mirror_limits: {max_inflight: 0}",
            "mirror_limits.max_inflight",
        ),
    ];
    for (m, e, want) in cases {
        let got = err(m, e);
        assert!(got.contains(want), "{m} {e}: {got}");
    }
}
