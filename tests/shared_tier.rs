//! The memcached tier (L2) through the real binary: real memcached processes, real origins.

mod common;

use common::http::{Origin, Reply, Request};
use common::memcached::Memcached;
use common::{simple_config, Shellac};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Held by the tests that load the machine, so the one that measures lookups under a long
/// queue is not measuring the others' load.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn body_for(path: &str) -> Vec<u8> {
    let size = match path {
        "/big" => 5 << 20,
        "/256k" => 256 << 10,
        p if p.starts_with("/k/") => 1024,
        _ => 2000,
    };
    (0..size).map(|i| (i * 7 % 251) as u8).collect()
}

fn origin_handler(req: &Request) -> Reply {
    Reply::ok(body_for(req.path())).header("Cache-Control", "max-age=300")
}

/// A caching node on `servers`; `memory` is the L1 size (`0` = memcached only).
fn node_config(origin: &Origin, servers: &[&Memcached], memory: &str, timeout: &str) -> String {
    let list: Vec<String> = servers.iter().map(|m| format!("\"{}\"", m.addr)).collect();
    format!(
        "{}cache:\n  memory: {{size: {memory}}}\n  lock_timeout: 2s\n  memcached: {{servers: [{}], timeout: {timeout}}}\n",
        simple_config(&[origin], "", ", cache: true"),
        list.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn memcached_alone_stores_large_objects_byte_for_byte_and_serves_ranges() {
    let _heavy = HEAVY.lock().await;
    let mc = Memcached::start();
    let origin = Origin::start(origin_handler).await;
    let node = Shellac::start(&node_config(&origin, &[&mc], "0", "200ms")).await;
    for path in ["/small", "/big"] {
        let first = node.get(path).await;
        assert_eq!(first.body, body_for(path));
        let again = node.get(path).await;
        assert_eq!(
            again.body,
            body_for(path),
            "{path} from memcached is byte-exact"
        );
        assert!(
            again.header("cache-status").unwrap().contains("hit"),
            "{:?}",
            again.header("cache-status")
        );
        assert_eq!(origin.count_path(path), 1);
    }
    // 5 MiB in 512 KiB chunks: a head plus 10 chunks, each under memcached's 1 MiB item limit.
    let keys = mc.keys();
    assert!(
        keys.iter().filter(|k| k.contains(":c:")).count() >= 10,
        "{keys:?}"
    );
    let r = node
        .request("GET", "/big", &[("Range", "bytes=2621000-2700000")])
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &body_for("/big")[2621000..=2700000]);
    assert_eq!(origin.count(), 2);
    assert!(
        node.metric("shellac_cache_l2_lookups_total", &[("result", "hit")])
            .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_memcached_hit_is_one_exchange_inline_and_two_chunked() {
    // One server holds a head and its purge marker, so they are read together; a chunked
    // body's chunk 0 comes with the chunk check. Before: two and three exchanges.
    let mc = Memcached::start();
    let origin = Origin::start(origin_handler).await;
    let node = Shellac::start(&node_config(&origin, &[&mc], "0", "200ms")).await;
    let exchanges = || node.metric_or_zero("shellac_memcached_exchange_seconds_count", &[]);
    for (i, (path, per_hit)) in [("/small", 1.0), ("/256k", 2.0)].into_iter().enumerate() {
        assert_eq!(node.get(path).await.body, body_for(path));
        common::memcached::wait_for_heads(&[&mc], i + 1).await;
        let hits = 20.0;
        let before = exchanges().await;
        for _ in 0..hits as usize {
            let r = node.get(path).await;
            assert_eq!(r.body, body_for(path), "{path} byte-exact");
            assert!(r.header("cache-status").unwrap().contains("hit"));
        }
        let spent = exchanges().await - before;
        // Slack: the host-wide invalidation markers are re-read once per purge_check.
        assert!(
            spent <= per_hit * hits + 8.0,
            "{path}: {spent} exchanges for {hits} hits"
        );
        assert_eq!(
            origin.count_path(path),
            1,
            "{path}: every later request a hit"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_node_answers_from_memcached_without_the_origin() {
    let mc = Memcached::start();
    let origin = Origin::start(origin_handler).await;
    let first = Shellac::start(&node_config(&origin, &[&mc], "16MiB", "200ms")).await;
    for i in 0..5 {
        first.get(&format!("/k/{i}")).await;
    }
    // The memcached commit runs after the client is answered.
    common::memcached::wait_for_heads(&[&mc], 5).await;
    drop(first);
    let fresh = Shellac::start(&node_config(&origin, &[&mc], "16MiB", "200ms")).await;
    for i in 0..5 {
        let r = fresh.get(&format!("/k/{i}")).await;
        assert_eq!(r.body, body_for("/k/"));
    }
    assert_eq!(
        origin.count(),
        5,
        "the new process's empty memory tier filled from memcached"
    );
    // Promoted into L1: memcached is not asked again.
    let before = fresh.metric("shellac_cache_l2_lookups_total", &[]).await;
    fresh.get("/k/0").await;
    assert_eq!(
        fresh.metric("shellac_cache_l2_lookups_total", &[]).await,
        before
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_or_truncated_value_is_a_miss() {
    let mc = Memcached::start();
    let origin = Origin::start(origin_handler).await;
    let node = Shellac::start(&node_config(&origin, &[&mc], "0", "200ms")).await;
    node.get("/small").await;
    node.get("/big").await;
    let keys = mc.keys();
    let head = keys.iter().find(|k| k.contains(":h:")).unwrap().clone();
    for (i, garbage) in [b"SHLC\x01garbage".to_vec(), vec![0xffu8; 40], Vec::new()]
        .into_iter()
        .enumerate()
    {
        for k in keys.iter().filter(|k| k.contains(":h:")) {
            mc.set(k, &garbage);
        }
        let before = origin.count();
        for path in ["/small", "/big"] {
            let r = node.get(path).await;
            assert_eq!(
                (r.status, r.body.len()),
                (200, body_for(path).len()),
                "round {i} {path}"
            );
            assert_eq!(r.body, body_for(path));
        }
        assert_eq!(
            origin.count(),
            before + 2,
            "round {i}: undecodable heads are misses"
        );
    }
    // A chunk evicted behind our back: a miss, refetched, never a short body.
    // (Refills above left older write generations behind; drop every chunk of every one.)
    for chunk in mc.keys().into_iter().filter(|k| k.contains(":c:")) {
        mc.delete(&chunk);
    }
    let before = origin.count();
    let r = node.get("/big").await;
    assert_eq!(r.body, body_for("/big"));
    assert_eq!(origin.count(), before + 1);
    let _ = head;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_memcached_servers_share_the_keys() {
    let a = Memcached::start();
    let b = Memcached::start();
    let origin = Origin::start(origin_handler).await;
    let node = Shellac::start(&node_config(&origin, &[&a, &b], "0", "200ms")).await;
    for i in 0..40 {
        node.get(&format!("/k/{i}")).await;
    }
    let (na, nb) = (a.keys().len(), b.keys().len());
    assert!(na >= 5 && nb >= 5, "a={na} b={nb}");
    for i in 0..40 {
        node.get(&format!("/k/{i}")).await;
    }
    assert_eq!(origin.count(), 40);
}

/// Fixed-concurrency load over `urls` for `dur`; returns (ok, failed) counts.
async fn load(addr: std::net::SocketAddr, urls: usize, dur: Duration) -> (usize, usize) {
    let ok = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + dur;
    let mut tasks = Vec::new();
    for w in 0..10 {
        let (ok, bad) = (ok.clone(), bad.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < end {
                i = (i * 7 + 3) % urls;
                match common::http::get(addr, &format!("/k/{i}")).await {
                    Ok(r) if r.status == 200 && r.body.len() == 1024 => {
                        ok.fetch_add(1, Ordering::SeqCst)
                    }
                    _ => bad.fetch_add(1, Ordering::SeqCst),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (ok.load(Ordering::SeqCst), bad.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread")]
async fn memcached_killed_under_load_costs_no_client_errors_and_recovers() {
    let _heavy = HEAVY.lock().await;
    let mut mc = Memcached::start();
    let origin = Origin::start(origin_handler).await;
    // memcached only, so every request depends on it.
    let node = Shellac::start(&node_config(&origin, &[&mc], "0", "100ms")).await;
    let (ok, bad) = load(node.addr, 50, Duration::from_millis(800)).await;
    assert!(ok > 50 && bad == 0, "warm-up ok={ok} bad={bad}");
    let origin_before = origin.count();
    let load_task = tokio::spawn(load(node.addr, 50, Duration::from_secs(3)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    mc.kill();
    let (ok, bad) = load_task.await.unwrap();
    assert_eq!(bad, 0, "client errors while memcached died ({ok} ok)");
    assert!(origin.count() > origin_before + 50, "the origin took over");
    // Back: hits return once the breaker lets a probe through.
    mc.restart();
    let t = Instant::now();
    loop {
        node.get("/k/1").await;
        let hits_before = node
            .metric("shellac_cache_l2_lookups_total", &[("result", "hit")])
            .await;
        node.get("/k/1").await;
        if node
            .metric("shellac_cache_l2_lookups_total", &[("result", "hit")])
            .await
            > hits_before
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no memcached hits 10 s after restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hung_memcached_costs_at_most_its_timeout() {
    let mc = Memcached::start();
    let origin = Origin::start(origin_handler).await;
    let node = Shellac::start(&node_config(&origin, &[&mc], "0", "100ms")).await;
    node.get("/k/1").await;
    mc.pause();
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let t = Instant::now();
        let r = node.get(&format!("/k/{i}")).await;
        assert_eq!(r.status, 200);
        worst = worst.max(t.elapsed());
    }
    mc.resume();
    // A lookup, a lease attempt and a write may each meet the timeout before the breaker
    // opens: bounded by a few timeouts, never the origin's or memcached's own.
    assert!(
        worst < Duration::from_millis(700),
        "worst request {worst:?} with memcached hung"
    );
}

/// A memcached-only node (lookup `timeout`) with `/small` stored in memcached.
async fn small_object_in_memcached(timeout: &str) -> (Memcached, Origin, Shellac) {
    let mc = Memcached::start();
    let origin = Origin::start(origin_handler).await;
    let node = Shellac::start(&node_config(&origin, &[&mc], "0", timeout)).await;
    assert_eq!(node.get("/small").await.body, body_for("/small"));
    common::memcached::wait_for_heads(&[&mc], 1).await;
    (mc, origin, node)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_lookups_share_pipelined_exchanges_and_a_few_connections() {
    let _heavy = HEAVY.lock().await;
    // Lookups of concurrent hits are queued per server and sent together: the node keeps a
    // couple of lookup connections busy instead of one per hit in flight, and the batches grow
    // with the queue. Before: about one connection per concurrent hit (hundreds, reopened as
    // the idle pool overflowed) and one exchange per hit.
    let (mc, origin, node) = small_object_in_memcached("200ms").await;
    // A first hit reads the host's invalidation markers, which are then read once per
    // purge_check, not by each hit.
    assert!(node
        .get("/small")
        .await
        .header("cache-status")
        .unwrap()
        .contains("hit"));
    let connections = mc.stat("total_connections");
    let got = common::load::sequential_clients(node.addr, "/small", 100, |n| n < 20).await;
    assert_eq!(got.len(), 2000);
    for r in &got {
        assert_eq!(r.body, body_for("/small"), "byte-exact");
    }
    let opened = mc.stat("total_connections") - connections;
    let batches = node
        .metric("shellac_memcached_lookup_batch_size_count", &[])
        .await;
    let lookups = node
        .metric("shellac_memcached_lookup_batch_size_sum", &[])
        .await;
    assert!(lookups >= 2000.0, "{lookups} lookups batched");
    assert!(
        batches < lookups,
        "{batches} batches for {lookups} lookups: some went together"
    );
    // Two lookup batches in flight and the marker reads, with room for connections dropped by
    // a timeout on a loaded machine; one per concurrent client (100) without batches.
    assert!(
        opened <= 40,
        "{opened} memcached connections opened for 2000 hits"
    );
    assert_eq!(origin.count_path("/small"), 1, "every later request a hit");
}

#[tokio::test(flavor = "multi_thread")]
async fn lookups_queued_behind_other_lookups_are_not_timed_out() {
    let _heavy = HEAVY.lock().await;
    // A lookup's `timeout` is its exchange's, counted from when its batch is sent. Counted from
    // the enqueue, as before, a lookup queued behind other batches spent the wait for theirs:
    // here every exchange takes 60 ms (a delay line in front of memcached) against a 150 ms
    // timeout, and 400 concurrent clients keep several batches queued behind the two in flight,
    // so queued lookups ran out of time while their own exchange never did: 1300-1900 errors
    // of 4000 when the caller's wait was the timeout itself. The delay keeps the node's CPU
    // from deciding the outcome, as it did with memcached's own sub-millisecond exchanges.
    let mc = Memcached::start();
    let origin = Origin::start(origin_handler).await;
    let relay = common::memcached::delay_line(mc.addr, Duration::from_millis(60)).await;
    let config = node_config(&origin, &[&mc], "0", "150ms")
        .replace(&mc.addr.to_string(), &relay.to_string());
    let node = Shellac::start(&config).await;
    assert_eq!(node.get("/small").await.body, body_for("/small"));
    common::memcached::wait_for_heads(&[&mc], 1).await;
    let got = common::load::sequential_clients(node.addr, "/small", 400, |n| n < 10).await;
    assert_eq!(got.len(), 4000);
    for r in &got {
        assert_eq!(r.status, 200);
        assert_eq!(r.body, body_for("/small"), "byte-exact");
    }
    let errors = node
        .metric_or_zero("shellac_cache_l2_lookups_total", &[("result", "error")])
        .await;
    let batched = node
        .metric("shellac_memcached_lookup_batch_size_sum", &[])
        .await;
    // Room for a batch (up to 64 lookups) that a loaded debug build still makes late.
    assert!(
        errors <= 192.0,
        "{errors} of 4000 lookups failed: they timed out while queued"
    );
    assert!(batched >= 4000.0, "{batched} lookups batched: they queued");
    assert_eq!(origin.count_path("/small"), 1, "every later request a hit");
}
