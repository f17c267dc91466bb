//! Seeing the cache: lookups per answering tier, `/status.json` and `shellac stat`, checked
//! against what the origin saw.

mod common;

use common::http::{Origin, Reply};
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
