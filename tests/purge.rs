//! Invalidation like a CDN (issue 17): purge by tag, host, prefix and everything, hard or soft,
//! through `POST /purge`, the `PURGE` method and `shellac purge`, fleet-wide with a constant
//! number of memcached operations. Real binaries, real memcached, real origins; origin request
//! counts prove what was and was not served from cache.

mod common;

use common::http::{Client, Origin, Reply, Request};
use common::memcached::Memcached;
use common::{simple_config, Shellac};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bodies carry the path and a version bumped by the test; `/t/…` is tagged `t` plus the
/// path's last segment, `/u/…` is tagged `other`, the rest is untagged.
fn tagged(v: Arc<AtomicUsize>) -> impl Fn(&Request) -> Reply {
    move |req| {
        let path = req.path().to_string();
        let mut r = Reply::ok(format!("{path} v{}", v.load(Ordering::SeqCst)))
            .header("Cache-Control", "max-age=300");
        if path.starts_with("/t/") {
            let last = path.rsplit('/').next().unwrap_or("");
            r = r.header("Surrogate-Key", format!("t {last}"));
        } else if path.starts_with("/u/") {
            r = r.header("Cache-Tag", "other");
        }
        r
    }
}

fn mc_config(origin: &Origin, mcs: &[&Memcached], extra: &str) -> String {
    let list: Vec<String> = mcs.iter().map(|m| format!("\"{}\"", m.addr)).collect();
    format!(
        "{}cache:\n  memcached: {{servers: [{}], timeout: 300ms, purge_check: 500ms}}\n{extra}",
        simple_config(&[origin], "", ", cache: true"),
        list.join(", ")
    )
}

async fn post(admin: SocketAddr, body: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Host", "admin"), ("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let r = Client::connect(admin)
        .await
        .unwrap()
        .request("POST", "/purge", &headers, body.as_bytes())
        .await
        .unwrap();
    let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
    (r.status, v)
}

fn is_hit(r: &common::http::Response) -> bool {
    r.header("cache-status").is_some_and(|s| s.contains("hit"))
}

async fn get_host(addr: SocketAddr, host: &str, path: &str) -> common::http::Response {
    common::http::request(addr, "GET", path, &[("Host", host)])
        .await
        .unwrap()
}

/// Sum of memcached's command counters over `servers`: every get, set and delete it served.
fn mc_ops(servers: &[&Memcached]) -> u64 {
    servers
        .iter()
        .map(|m| {
            [
                "cmd_get",
                "cmd_set",
                "cmd_touch",
                "delete_hits",
                "delete_misses",
            ]
            .iter()
            .map(|s| m.stat(s))
            .sum::<u64>()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_purge_on_one_node_stops_every_node_serving_the_tag_and_spares_the_rest() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let v = Arc::new(AtomicUsize::new(1));
    let origin = Origin::start(tagged(v.clone())).await;
    let config = mc_config(&origin, &[&a, &b], "");
    let nodes = [
        Shellac::start(&config).await,
        Shellac::start(&config).await,
        Shellac::start(&config).await,
    ];
    let paths = ["/t/1", "/t/2", "/u/1", "/plain"];
    for p in paths {
        nodes[0].get(p).await;
    }
    common::memcached::wait_for_heads(&[&a, &b], paths.len()).await;
    for n in &nodes {
        for p in paths {
            let r = n.get(p).await;
            assert!(is_hit(&r), "{p}: {:?}", r.header("cache-status"));
            assert_eq!(r.text(), format!("{p} v1"));
            assert!(r.header("surrogate-key").is_none() && r.header("cache-tag").is_none());
            assert!(r.header("shellac-internal-tags").is_none());
        }
    }
    assert_eq!(origin.count(), paths.len());
    v.store(2, Ordering::SeqCst);
    let (status, body) = post(nodes[0].admin, r#"{"tags": ["t"]}"#, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["result"], "purged");
    // The bound: purge_check (500ms) plus slack.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for n in &nodes {
        for p in ["/t/1", "/t/2"] {
            assert_eq!(
                n.get(p).await.text(),
                format!("{p} v2"),
                "{p} after the purge"
            );
        }
        for p in ["/u/1", "/plain"] {
            let r = n.get(p).await;
            assert!(
                is_hit(&r) && r.text() == format!("{p} v1"),
                "{p} must stay a hit"
            );
        }
    }
    // One refetch per tagged object for the whole fleet; none for the rest.
    assert_eq!(origin.count_path("/u/1") + origin.count_path("/plain"), 2);
    assert_eq!(
        origin.count_path("/t/1"),
        2,
        "one fill, one refetch fleet-wide"
    );
    assert_eq!(
        origin.count_path("/t/2"),
        2,
        "one fill, one refetch fleet-wide"
    );
    let purged = nodes[1]
        .metric(
            "shellac_cache_invalidated_on_lookup_total",
            &[("result", "purged")],
        )
        .await;
    assert!(purged >= 1.0);
    let done = nodes[0]
        .metric(
            "shellac_cache_invalidations_total",
            &[("kind", "tag"), ("mode", "hard")],
        )
        .await;
    assert_eq!(done, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_purge_costs_the_same_few_memcached_operations_for_ten_or_two_thousand_objects() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let origin = Origin::start(tagged(Arc::new(AtomicUsize::new(1)))).await;
    let node = Shellac::start(&mc_config(&origin, &[&a, &b], "")).await;
    let warm = |from: usize, to: usize| {
        let addr = node.addr;
        async move {
            let mut tasks = Vec::new();
            for w in 0..8 {
                tasks.push(tokio::spawn(async move {
                    for i in (from + w..to).step_by(8) {
                        common::http::get(addr, &format!("/t/{i}")).await.unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        }
    };
    let mut measured = Vec::new();
    for (from, to) in [(0, 10), (10, 2000)] {
        warm(from, to).await;
        common::memcached::wait_for_heads(&[&a, &b], to).await;
        tokio::time::sleep(Duration::from_millis(200)).await; // lease releases settle
        let before = mc_ops(&[&a, &b]);
        let t0 = Instant::now();
        let (status, body) = post(node.admin, r#"{"tags": ["t"]}"#, None).await;
        let took = t0.elapsed();
        let ops = mc_ops(&[&a, &b]) - before;
        assert_eq!(status, 200, "{body}");
        assert!(took < Duration::from_millis(100), "purge took {took:?}");
        measured.push((to, ops, took));
    }
    eprintln!("objects under the tag, memcached ops, duration: {measured:?}");
    assert_eq!(measured[0].1, measured[1].1, "{measured:?}");
    assert!(measured[0].1 <= 3, "{measured:?}");
    let before = origin.count();
    for i in [0, 999, 1999] {
        assert!(!is_hit(&node.get(&format!("/t/{i}")).await));
    }
    assert_eq!(origin.count(), before + 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_soft_purge_serves_stale_at_once_and_one_304_revalidation_keeps_the_body() {
    let mc = Memcached::start();
    let revalidations = Arc::new(AtomicUsize::new(0));
    let r2 = revalidations.clone();
    let origin = Origin::start(move |req: &Request| {
        if req.header("if-none-match") == Some("\"v1\"") {
            r2.fetch_add(1, Ordering::SeqCst);
            return Reply::new(304, "")
                .header("ETag", "\"v1\"")
                .header("Cache-Control", "max-age=300, stale-while-revalidate=60")
                .delay(Duration::from_millis(400));
        }
        Reply::ok("the original body")
            .header("ETag", "\"v1\"")
            .header("Surrogate-Key", "soft")
            .header("Cache-Control", "max-age=300, stale-while-revalidate=60")
    })
    .await;
    let node = Shellac::start(&mc_config(&origin, &[&mc], "")).await;
    node.get("/s").await;
    assert!(is_hit(&node.get("/s").await));
    let (status, body) = post(node.admin, r#"{"tags": ["soft"], "soft": true}"#, None).await;
    assert_eq!(
        (status, &body["results"][0]["result"]),
        (200, &"stale".into())
    );
    let t0 = Instant::now();
    let r = node.get("/s").await;
    let took = t0.elapsed();
    assert_eq!(r.text(), "the original body");
    let cs = r.header("cache-status").unwrap_or("").to_string();
    assert!(cs.contains("detail=stale-while-revalidate"), "{cs}");
    assert!(
        took < Duration::from_millis(300),
        "served in {took:?}, not cache time"
    );
    common::wait_for("one revalidation", Duration::from_secs(5), || {
        revalidations.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..3 {
        let r = node.get("/s").await;
        assert_eq!(r.text(), "the original body");
        assert!(is_hit(&r), "{:?}", r.header("cache-status"));
    }
    assert_eq!(revalidations.load(Ordering::SeqCst), 1);
    assert_eq!(origin.count(), 2, "one fill and one revalidation");
    let stale = node
        .metric(
            "shellac_cache_invalidated_on_lookup_total",
            &[("result", "stale")],
        )
        .await;
    assert!(stale >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn prefix_and_host_purges_touch_nothing_outside_and_all_clears_everything_memory_only() {
    let origin = Origin::start(tagged(Arc::new(AtomicUsize::new(1)))).await;
    let node = Shellac::start(&simple_config(&[&origin], "", ", cache: true")).await;
    let objects = [
        ("a.test", "/static/x"),
        ("a.test", "/static/y"),
        ("a.test", "/app"),
        ("b.test", "/static/x"),
    ];
    for (h, p) in objects {
        get_host(node.addr, h, p).await;
    }
    let hits = |want: [bool; 4]| {
        let addr = node.addr;
        async move {
            for ((h, p), w) in objects.iter().zip(want) {
                let r = get_host(addr, h, p).await;
                assert_eq!(is_hit(&r), w, "{h}{p}: {:?}", r.header("cache-status"));
            }
        }
    };
    hits([true; 4]).await;
    let (s, body) = post(node.admin, r#"{"prefixes": ["A.test/static/"]}"#, None).await;
    assert_eq!(s, 200, "{body}");
    hits([false, false, true, true]).await;
    let (s, _) = post(node.admin, r#"{"hosts": ["b.test"]}"#, None).await;
    assert_eq!(s, 200);
    hits([true, true, true, false]).await;
    let (s, _) = post(node.admin, r#"{"all": true}"#, None).await;
    assert_eq!(s, 200);
    hits([false; 4]).await;
    hits([true; 4]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_started_after_a_purge_does_not_serve_what_it_purged() {
    let mc = Memcached::start();
    let origin = Origin::start(tagged(Arc::new(AtomicUsize::new(1)))).await;
    let config = mc_config(&origin, &[&mc], "");
    let first = Shellac::start(&config).await;
    for p in ["/t/1", "/plain", "/static/a"] {
        first.get(p).await;
    }
    common::memcached::wait_for_heads(&[&mc], 3).await;
    let (s, _) = post(
        first.admin,
        r#"{"tags": ["t"], "prefixes": ["test/static/"]}"#,
        None,
    )
    .await;
    assert_eq!(s, 200);
    drop(first);
    let later = Shellac::start(&config).await;
    assert!(
        !is_hit(&later.get("/t/1").await),
        "tag-purged object served"
    );
    assert!(
        !is_hit(&later.get("/static/a").await),
        "prefix-purged object served"
    );
    assert!(
        is_hit(&later.get("/plain").await),
        "untouched object must come from memcached"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_on_a_new_node_after_a_purge_waits_for_one_marker_read_and_fetches_once() {
    // A new node reads each invalidation marker once, and the requests that arrive while that
    // read is out wait for it: none of them may serve what a purge made elsewhere retired. And
    // one origin request for all of them: a lookup still reading the purged copy from
    // memcached when the refetch lands must serve the refetch, not fetch again.
    let version = Arc::new(AtomicUsize::new(1));
    let mc = Memcached::start();
    let origin = Origin::start(tagged(version.clone())).await;
    let config = mc_config(&origin, &[&mc], "");
    let first = Shellac::start(&config).await;
    first.get("/t/1").await;
    common::memcached::wait_for_heads(&[&mc], 1).await;
    let (s, _) = post(first.admin, r#"{"tags": ["t"]}"#, None).await;
    assert_eq!(s, 200);
    drop(first);
    version.store(2, Ordering::SeqCst);
    let later = Shellac::start(&config).await;
    let got = common::load::sequential_clients(later.addr, "/t/1", 100, |n| n < 1).await;
    assert_eq!(got.len(), 100);
    for r in &got {
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "/t/1 v2", "the purged copy was served");
    }
    assert_eq!(
        origin.count_path("/t/1"),
        2,
        "one fetch before the purge and one after, whatever the lookups were reading"
    );
    let errors = later
        .metric_or_zero("shellac_memcached_errors_total", &[("op", "invalidation")])
        .await;
    assert_eq!(
        errors, 0.0,
        "marker reads timed out: more than one per name"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_and_wrong_tokens_get_the_documented_error_and_purge_nothing() {
    let dir = common::temp_dir();
    let token_file = dir.join("purge.token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").unwrap();
    let origin = Origin::start(tagged(Arc::new(AtomicUsize::new(1)))).await;
    let config = format!(
        "admin: {{listen: \"{{ADMIN}}\", purge_token_file: \"{}\"}}\n{}",
        token_file.display(),
        simple_config(&[&origin], "", ", cache: true")
    );
    let node = Shellac::start(&config).await;
    node.get("/t/1").await;
    let tok = Some("s3cret-token-0123456789");
    let many: Vec<String> = (0..300).map(|i| format!("\"k{i}\"")).collect();
    let too_many = format!("{{\"tags\": [{}]}}", many.join(","));
    let cases: [(&str, Option<&str>, u16, Option<&str>); 7] = [
        (r#"{"tags": ["t"]}"#, None, 401, None),
        (
            r#"{"tags": ["t"]}"#,
            Some("wrong-token-000000000"),
            403,
            None,
        ),
        (r#"{"tags": ["t"]"#, tok, 400, None),
        (r#"{"tags": ["t"], "tagz": ["t"]}"#, tok, 400, None),
        (r#"{"tags": "t"}"#, tok, 400, Some("tags")),
        (too_many.as_str(), tok, 400, Some("tags")),
        (
            r#"{"tags": ["t"], "prefixes": ["no-path"]}"#,
            tok,
            400,
            Some("prefixes"),
        ),
    ];
    for (body, token, want, field) in cases {
        let (s, v) = post(node.admin, body, token).await;
        assert_eq!(s, want, "{body}: {v}");
        if let Some(f) = field {
            assert_eq!(v["field"], f, "{body}: {v}");
        }
        assert!(v["error"].is_string(), "{v}");
    }
    let (_, v) = post(node.admin, r#"{"tagz": []}"#, tok).await;
    assert!(v["error"].as_str().unwrap().contains("tagz"), "{v}");
    assert_eq!(v["field"], "tagz", "{v}");
    assert!(is_hit(&node.get("/t/1").await), "a refused purge purged");
    assert_eq!(origin.count(), 1);
    let errors = node.metric("shellac_purge_api_errors_total", &[]).await;
    assert!(errors >= 8.0, "{errors}");
    let (s, _) = post(node.admin, r#"{"tags": ["t"]}"#, tok).await;
    assert_eq!(s, 200);
    assert!(!is_hit(&node.get("/t/1").await));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_purge_method_takes_tags_and_soft_and_the_cli_reports_by_exit_status() {
    let dir = common::temp_dir();
    let token_file = dir.join("purge.token");
    std::fs::write(&token_file, "cli-token-0123456789abc").unwrap();
    let wrong_file = dir.join("wrong.token");
    std::fs::write(&wrong_file, "not-the-token-000000000").unwrap();
    let origin = Origin::start(tagged(Arc::new(AtomicUsize::new(1)))).await;
    let config = format!(
        "admin: {{listen: \"{{ADMIN}}\", purge_token_file: \"{}\"}}\n{}",
        token_file.display(),
        simple_config(&[&origin], "", ", cache: true")
    );
    let node = Shellac::start(&config).await;
    for p in ["/t/1", "/t/2", "/plain"] {
        node.get(p).await;
    }
    let r = node
        .request("PURGE", "/anything", &[("Shellac-Purge-Tags", "1 nope")])
        .await;
    assert_eq!(r.status, 200);
    assert!(!is_hit(&node.get("/t/1").await));
    assert!(is_hit(&node.get("/t/2").await));

    let cli = |args: &[&str]| {
        let out = std::process::Command::new(common::BIN)
            .arg("purge")
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    };
    let admin = node.admin.to_string();
    let tf = token_file.display().to_string();
    let wf = wrong_file.display().to_string();
    let (code, text) = cli(&["--admin", &admin, "--token-file", &wf, "--tag", "t"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("403"), "{text}");
    assert!(is_hit(&node.get("/t/2").await));
    let (code, text) = cli(&[
        "--admin",
        &admin,
        "--token-file",
        &tf,
        "--tag",
        "t",
        "--url",
        "http://test/plain",
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("tag") && text.contains("purged"), "{text}");
    assert!(!is_hit(&node.get("/t/2").await));
    assert!(!is_hit(&node.get("/plain").await));
    assert_eq!(cli(&["--admin", &admin]).0, 2);
    let (code, _) = cli(&["--admin", "127.0.0.1:1", "--all"]);
    assert_eq!(code, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_soft_url_purge_keeps_the_body_for_a_304_and_hard_url_purges_still_work() {
    let mc = Memcached::start();
    let revalidations = Arc::new(AtomicUsize::new(0));
    let r2 = revalidations.clone();
    let origin = Origin::start(move |req: &Request| {
        let cc = "max-age=300, stale-while-revalidate=60";
        if req.header("if-none-match") == Some("\"e\"") {
            r2.fetch_add(1, Ordering::SeqCst);
            return Reply::new(304, "")
                .header("ETag", "\"e\"")
                .header("Cache-Control", cc);
        }
        Reply::ok(format!("body of {}", req.path()))
            .header("ETag", "\"e\"")
            .header("Cache-Control", cc)
    })
    .await;
    let node = Shellac::start(&mc_config(&origin, &[&mc], "")).await;
    node.get("/soft").await;
    node.get("/hard").await;
    common::memcached::wait_for_heads(&[&mc], 2).await;
    let r = node
        .request("PURGE", "/soft", &[("Shellac-Purge-Soft", "1")])
        .await;
    assert_eq!(r.status, 200);
    let r = node.get("/soft").await;
    assert_eq!(r.text(), "body of /soft");
    let cs = r.header("cache-status").unwrap_or("").to_string();
    assert!(cs.contains("stale-while-revalidate"), "{cs}");
    common::wait_for("one revalidation", Duration::from_secs(5), || {
        revalidations.load(Ordering::SeqCst) == 1
    })
    .await;
    let (s, v) = post(node.admin, r#"{"urls": ["http://test/hard"]}"#, None).await;
    assert_eq!(
        (s, &v["results"][0]["result"]),
        (200, &"purged".into()),
        "{v}"
    );
    let r = node.get("/hard").await;
    assert!(!is_hit(&r), "{:?}", r.header("cache-status"));
    assert_eq!(origin.count_path("/soft"), 2, "one fill, one revalidation");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_memcached_down_a_fleet_purge_answers_503_and_says_what_failed() {
    let mut mc = Memcached::start();
    let origin = Origin::start(tagged(Arc::new(AtomicUsize::new(1)))).await;
    let node = Shellac::start(&mc_config(&origin, &[&mc], "")).await;
    mc.kill();
    let (s, v) = post(node.admin, r#"{"tags": ["t"], "hosts": ["test"]}"#, None).await;
    assert_eq!(s, 503, "{v}");
    assert_eq!(v["failed"], 2, "{v}");
    assert_eq!(v["results"][0]["result"], "failed", "{v}");
    assert!(v["results"][0]["error"].is_string(), "{v}");
    let r = node
        .request("PURGE", "/x", &[("Shellac-Purge-Tags", "t")])
        .await;
    assert_eq!(r.status, 503);
    let (code, _) = {
        let out = std::process::Command::new(common::BIN)
            .args(["purge", "--admin", &node.admin.to_string(), "--tag", "t"])
            .output()
            .unwrap();
        (out.status.code(), ())
    };
    assert_eq!(code, Some(1));
    let unavailable = node
        .metric(
            "shellac_purge_api_errors_total",
            &[("reason", "unavailable")],
        )
        .await;
    assert_eq!(unavailable, 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_soft_purge_on_a_fleet_revalidates_once_and_the_other_node_picks_up_the_refresh() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let revalidations = Arc::new(AtomicUsize::new(0));
    let r2 = revalidations.clone();
    let origin = Origin::start(move |req: &Request| {
        let cc = "max-age=300, stale-while-revalidate=60";
        if req.header("if-none-match") == Some("\"f\"") {
            r2.fetch_add(1, Ordering::SeqCst);
            return Reply::new(304, "")
                .header("ETag", "\"f\"")
                .header("Cache-Control", cc);
        }
        Reply::ok("fleet body")
            .header("ETag", "\"f\"")
            .header("Surrogate-Key", "fleet")
            .header("Cache-Control", cc)
    })
    .await;
    let config = mc_config(&origin, &[&a, &b], "");
    let nodes = [Shellac::start(&config).await, Shellac::start(&config).await];
    nodes[0].get("/f").await;
    common::memcached::wait_for_heads(&[&a, &b], 1).await;
    assert!(is_hit(&nodes[1].get("/f").await)); // now in node 1's memory tier too
    let (s, _) = post(nodes[0].admin, r#"{"tags": ["fleet"], "soft": true}"#, None).await;
    assert_eq!(s, 200);
    let r = nodes[0].get("/f").await;
    assert_eq!(r.text(), "fleet body");
    assert!(r.header("cache-status").unwrap_or("").contains("stale"));
    common::wait_for("one revalidation", Duration::from_secs(5), || {
        revalidations.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await; // node 1's markers are re-read
    for n in &nodes {
        for _ in 0..3 {
            let r = n.get("/f").await;
            assert_eq!(r.text(), "fleet body");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        revalidations.load(Ordering::SeqCst),
        1,
        "one revalidation fleet-wide"
    );
    assert!(is_hit(&nodes[1].get("/f").await));
}

/// Writes `value` under every key in one pipelined connection (quiet sets, then a no-op to
/// know they all landed).
fn plant(mc: &Memcached, keys: impl Iterator<Item = String>, value: &[u8]) {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect(mc.addr).unwrap();
    let mut w = std::io::BufWriter::new(stream.try_clone().unwrap());
    for k in keys {
        write!(w, "ms {k} {} T0 q\r\n", value.len()).unwrap();
        w.write_all(value).unwrap();
        w.write_all(b"\r\n").unwrap();
    }
    w.write_all(b"mn\r\n").unwrap();
    w.flush().unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    assert_eq!(line.trim_end(), "MN", "a planted set failed: {line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tag_on_a_hundred_thousand_cached_objects_is_purged_in_two_memcached_operations() {
    use pingora::cache::key::CacheHashKey;
    const N: usize = 100_000;
    let mc = Memcached::start();
    let origin = Origin::start(|_req: &Request| {
        Reply::ok("bulk body")
            .header("Cache-Control", "max-age=3600")
            .header("Surrogate-Key", "bulk")
    })
    .await;
    let node = Shellac::start(&mc_config(&origin, &[&mc], "")).await;
    // One real fill; its head, byte for byte, becomes the head of 99,999 more URLs (the head
    // names no URL, so each is a valid cached object of its own key).
    node.get("/b/0").await;
    common::memcached::wait_for_heads(&[&mc], 1).await;
    let head_key = mc.keys().into_iter().find(|k| k.contains(":h:")).unwrap();
    let head = mc.get(&head_key).unwrap();
    let ns = head_key.split(":h:").next().unwrap().to_string();
    let key_of = |i: usize| {
        let hex = shellac::cache::key::build("test", format!("/b/{i}").as_bytes()).combined();
        format!("{ns}:h:{hex}")
    };
    assert_eq!(key_of(0), head_key);
    plant(&mc, (1..N).map(key_of), &head);
    assert!(mc.stat("curr_items") >= N as u64);
    let samples = [1, 4_242, 50_000, N - 1];
    for i in samples {
        let r = node.get(&format!("/b/{i}")).await;
        assert!(
            is_hit(&r),
            "/b/{i} planted but {:?}",
            r.header("cache-status")
        );
        assert_eq!(r.text(), "bulk body");
    }
    assert_eq!(origin.count(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = mc_ops(&[&mc]);
    let t0 = Instant::now();
    let (status, body) = post(node.admin, r#"{"tags": ["bulk"]}"#, None).await;
    let took = t0.elapsed();
    let ops = mc_ops(&[&mc]) - before;
    assert_eq!(status, 200, "{body}");
    eprintln!("{N} objects under one tag: purge took {took:?} and {ops} memcached operations");
    assert!(took < Duration::from_millis(100), "{took:?}");
    assert_eq!(ops, 2, "a get and a set of the tag's marker");
    for i in samples {
        assert!(
            !is_hit(&node.get(&format!("/b/{i}")).await),
            "/b/{i} survived"
        );
    }
    assert_eq!(origin.count(), 1 + samples.len());
}
