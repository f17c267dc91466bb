//! Seeing the cache: lookups per answering tier, `/status.json` and `shellac stat`, checked
//! against what the origin saw.

mod common;

use common::http::{get, Origin, Reply};
use common::memcached::Memcached;
use common::{simple_config, Shellac};
use std::time::{Duration, Instant};

fn origin_reply() -> impl Fn(&common::http::Request) -> Reply + Send + Sync + 'static {
    |req| {
        if req.path().starts_with("/nostore") {
            Reply::ok("n").header("Cache-Control", "no-store")
        } else {
            Reply::ok(format!("body of {}", req.path())).header("Cache-Control", "max-age=300")
        }
    }
}

fn two_tier_config(origin: &Origin, mc: &Memcached) -> String {
    format!(
        "{}cache:\n  memory: {{size: 16MiB}}\n  lock_timeout: 1s\n  memcached: {{servers: [\"{}\"], timeout: 500ms}}\n",
        simple_config(&[origin], "", ", cache: true"),
        mc.addr
    )
}

/// Waits until memcached holds at least `n` object heads (the L2 commit finishes after the
/// client is answered).
async fn wait_for_heads(mc: &Memcached, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while mc.keys().iter().filter(|k| k.contains(":h:")).count() < n {
        assert!(Instant::now() < deadline, "memcached holds {:?}", mc.keys());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Node A fills memcached with 4 objects; node B (empty memory) then gets them: 4 memcached
/// hits, promoted to memory, so 4 more requests are memory hits, plus 2 misses of its own.
async fn known_traffic(origin: &Origin, mc: &Memcached) -> Shellac {
    let a = Shellac::start(&two_tier_config(origin, mc)).await;
    for i in 0..4 {
        a.get(&format!("/t/{i}")).await;
    }
    wait_for_heads(mc, 4).await;
    drop(a);
    let b = Shellac::start(&two_tier_config(origin, mc)).await;
    for i in 0..4 {
        let r = b.get(&format!("/t/{i}")).await;
        assert!(r.header("cache-status").unwrap().contains("hit"));
    }
    for i in 0..4 {
        b.get(&format!("/t/{i}")).await;
    }
    b.get("/new").await;
    b.get("/nostore").await;
    assert_eq!(
        origin.count(),
        6,
        "4 fills by A, /new and /nostore by B: {:?}",
        origin.requests()
    );
    // Requests are counted by the logging hook, just after the answer: wait until all ten are,
    // so none lands in a later interval.
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::sum_metric(&b.metrics().await, "shellac_requests_total", &[]) < 10.0 {
        assert!(Instant::now() < deadline, "requests never counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b
}

#[tokio::test(flavor = "multi_thread")]
async fn lookups_are_counted_by_the_tier_that_answered() {
    let mc = Memcached::start();
    let origin = Origin::start(origin_reply()).await;
    let b = known_traffic(&origin, &mc).await;
    let text = b.metrics().await;
    let m =
        |labels: &[(&str, &str)]| common::sum_metric(&text, "shellac_cache_lookups_total", labels);
    assert_eq!(
        m(&[("result", "hit"), ("tier", "memcached")]),
        4.0,
        "{text}"
    );
    assert_eq!(m(&[("result", "hit"), ("tier", "memory")]), 4.0);
    assert_eq!(m(&[("result", "miss"), ("tier", "none")]), 2.0);
    assert_eq!(m(&[]), 10.0);
}

/// `shellac stat ARGS` to completion in a blocking thread: (exit code, stdout + stderr).
async fn stat(args: &[&str]) -> (i32, String) {
    let mut all = vec!["stat".to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        common::run(&refs)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn stat_json_reports_hit_ratio_per_tier() {
    let mc = Memcached::start();
    let origin = Origin::start(origin_reply()).await;
    let b = known_traffic(&origin, &mc).await;
    let admin = b.admin.to_string();

    let (code, out) = stat(&["--admin", &admin, "-1", "--json"]).await;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    // 10 lookups: 4 memcached hits, 4 memory hits, 2 misses (the origin saw exactly those 2).
    let since = &v["hit_ratio"]["since_start"];
    assert_eq!(since["all"], 0.8, "{v:#}");
    assert_eq!(since["memory"], 0.4);
    assert_eq!(since["memcached"], 0.4);
    // Nothing happened in the one-second interval.
    assert_eq!(v["requests_per_second"], 0.0);
    assert_eq!(v["hit_ratio"]["interval"]["all"], serde_json::Value::Null);
    assert_eq!(v["not_stored"][0]["reason"], "no-store");
    assert_eq!(v["backends"][0]["healthy"], true);
    assert_eq!(v["memcached"]["servers"][0]["breaker"], "closed");
    assert_eq!(v["memcached"]["servers"][0]["addr"], mc.addr.to_string());
    assert!(v["memory"]["used"].as_f64().unwrap() > 0.0);
    assert!(v["origin"]["since_start_mean_seconds"].as_f64().unwrap() > 0.0);

    // The status endpoint the view was computed from agrees with the Prometheus counters.
    let s: serde_json::Value =
        serde_json::from_slice(&get(b.admin, "/status.json").await.unwrap().body).unwrap();
    assert_eq!(s["cache"]["hits_by_tier"]["memory"], 4.0);
    assert_eq!(s["cache"]["hits_by_tier"]["memcached"], 4.0);
    assert_eq!(s["cache"]["lookups"]["miss"]["none"], 2.0);
    assert_eq!(
        s["requests"]["total"].as_f64().unwrap(),
        b.metric("shellac_requests_total", &[]).await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stat_shows_rates_over_the_interval() {
    let origin = Origin::start(origin_reply()).await;
    let shellac = Shellac::start(&simple_config(&[&origin], "", ", cache: true")).await;
    shellac.get("/a").await;
    let admin = shellac.admin.to_string();
    let child = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || common::run(&["stat", "--admin", &admin, "-1"])
    });
    // Traffic while stat waits between its two snapshots: hits on /a, counted as rates.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until && !child.is_finished() {
        shellac.get("/a").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, out) = child.await.unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("shellac stat"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("hit ratio now"))
        .unwrap();
    assert!(line.contains("memory 100.0%"), "{out}");
    let req = out.lines().find(|l| l.starts_with("requests")).unwrap();
    let rate: f64 = req
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches("/s")
        .parse()
        .unwrap();
    assert!(rate > 1.0, "{out}");
    assert!(
        out.contains(&origin.addr.to_string()),
        "backends listed: {out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stat_against_an_unreachable_admin_is_a_clear_error() {
    let port = common::free_port();
    let (code, out) = stat(&["--admin", &format!("127.0.0.1:{port}"), "-1"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("cannot read the admin listener"), "{out}");
    assert!(out.contains(&port.to_string()), "{out}");
    let (code, out) = stat(&["--bogus"]).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("usage: shellac stat"), "{out}");
}
