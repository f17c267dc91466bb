//! The fleet lease ends on every path a fill can take, and only its owner ends it; a purge
//! that races a fill never lets the old copy be served afterwards. Two real nodes on one real
//! memcached; a lease that leaked would make the second node wait the whole `lock_timeout`.

mod common;

use common::http::{Origin, Reply};
use common::memcached::Memcached;
use common::Shellac;
use pingora::cache::key::CacheHashKey;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOCK_TIMEOUT: &str = "5s";

/// Memcached-only caching nodes over `backends` (a YAML list), sharing `mc`.
fn config(backends: &str, mc: &Memcached, memory: &str, extra: &str) -> String {
    format!(
        "upstreams:\n  app:\n    backends: {backends}\n    retries: 1\nroutes:\n  - {{host: \"*\", path_prefix: /, upstream: app, cache: true}}\ncache:\n  memory: {{size: {memory}}}\n  lock_timeout: {LOCK_TIMEOUT}\n  memcached: {{servers: [\"{}\"], timeout: 500ms, purge_check: 500ms{extra}}}\n",
        mc.addr
    )
}

/// The lease item of `path` on Host `test` (what the test client sends).
fn lease_key(path: &str) -> String {
    let key = shellac::cache::key::build("test", path.as_bytes());
    format!("shellac1:l:{}", key.combined())
}

/// Waits until the lease is gone or a pass: the fill's end has reached memcached.
async fn lease_ended(mc: &Memcached, path: &str) {
    let key = lease_key(path);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match mc.get(&key) {
            None => return,
            Some(v) if v == b"pass" => return,
            Some(v) => assert!(
                Instant::now() < deadline,
                "lease {key} still held ({v:?}) after the fill ended"
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The second node's request for `path` does not wait for a leaked lease.
async fn answers_promptly(node: &Shellac, path: &str) -> common::http::Response {
    let start = Instant::now();
    let r = node.get(path).await;
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{path}: waited {:?} (lock_timeout {LOCK_TIMEOUT}): the lease leaked",
        start.elapsed()
    );
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn an_object_over_max_object_by_content_length_releases_the_lease() {
    let mc = Memcached::start();
    let origin =
        Origin::start(|_| Reply::ok(vec![b'x'; 100 << 10]).header("Cache-Control", "max-age=300"))
            .await;
    let cfg = config(
        &format!("[\"{}\"]", origin.addr),
        &mc,
        "0",
        ", chunk_size: 16KiB, inline_max: 4KiB, max_object: 64KiB",
    );
    let (a, b) = (Shellac::start(&cfg).await, Shellac::start(&cfg).await);
    let r = a.get("/big").await;
    assert_eq!(
        (r.status, r.body.len()),
        (200, 100 << 10),
        "streamed through"
    );
    lease_ended(&mc, "/big").await;
    let r = answers_promptly(&b, "/big").await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_backend_refusing_releases_the_lease() {
    let mc = Memcached::start();
    // Two ports nobody listens on: both attempts are refused.
    let dead = format!(
        "[\"127.0.0.1:{}\", \"127.0.0.1:{}\"]",
        common::free_port(),
        common::free_port()
    );
    let cfg = config(&dead, &mc, "0", "");
    let (a, b) = (Shellac::start(&cfg).await, Shellac::start(&cfg).await);
    let r = a.get("/down").await;
    assert_eq!(r.status, 502);
    lease_ended(&mc, "/down").await;
    assert_eq!(answers_promptly(&b, "/down").await.status, 502);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_failing_mid_fill_releases_the_lease() {
    let mc = Memcached::start();
    // An origin that promises 100,000 bytes, sends half and closes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let n = served.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\nCache-Control: max-age=300\r\nContent-Length: 100000\r\n\r\n";
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&[b'y'; 50_000]).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let cfg = config(&format!("[\"{addr}\"]"), &mc, "0", "");
    let (a, b) = (Shellac::start(&cfg).await, Shellac::start(&cfg).await);
    let r = common::http::get(a.addr, "/torn").await;
    assert!(
        r.map_or(true, |r| r.body.len() < 100_000),
        "a torn body is never completed"
    );
    lease_ended(&mc, "/torn").await;
    let _ = tokio::time::timeout(Duration::from_secs(2), common::http::get(b.addr, "/torn"))
        .await
        .expect("the second node did not wait for a leaked lease");
    assert_eq!(served.load(Ordering::SeqCst), 2, "each node fetched once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_only_releases_its_own_lease() {
    let mc = Memcached::start();
    // The fetch outlives the lease (lock_timeout 1s): meanwhile another node may win it.
    let origin = Origin::start(|_| {
        Reply::ok("late")
            .header("Cache-Control", "no-store")
            .delay(Duration::from_millis(2500))
    })
    .await;
    let cfg = config(&format!("[\"{}\"]", origin.addr), &mc, "0", "")
        .replace(&format!("lock_timeout: {LOCK_TIMEOUT}"), "lock_timeout: 1s");
    let a = Shellac::start(&cfg).await;
    let key = lease_key("/slow");
    let fetch = tokio::spawn(async move {
        let r = a.get("/slow").await;
        (a, r)
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while mc.get(&key).is_some() || origin.count() == 0 {
        assert!(Instant::now() < deadline, "the lease never lapsed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another node's lease (8 bytes of node id), won after ours lapsed.
    let other = 0x0123_4567_89ab_cdefu64.to_be_bytes();
    mc.set(&key, &other);
    let (_a, r) = fetch.await.unwrap();
    assert_eq!(r.text(), "late");
    // The uncacheable answer would end our lease with a pass; the lease is no longer ours.
    tokio::time::sleep(Duration::from_millis(200)).await; // the release runs after the response
    assert_eq!(
        mc.get(&key).as_deref(),
        Some(&other[..]),
        "another node's lease is untouched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purge_racing_a_fill_does_not_resurrect_the_old_copy() {
    let mc = Memcached::start();
    let version = Arc::new(AtomicUsize::new(1));
    let v = version.clone();
    // v1 is slow: the purge lands while it is being fetched.
    let origin = Origin::start(move |_| {
        let n = v.load(Ordering::SeqCst);
        let delay = if n == 1 { 800 } else { 0 };
        Reply::ok(format!("v{n}"))
            .header("Cache-Control", "max-age=300")
            .delay(Duration::from_millis(delay))
    })
    .await;
    let cfg = config(&format!("[\"{}\"]", origin.addr), &mc, "1MiB", "").replace(
        "memory: {size: 1MiB}",
        "memory: {size: 1MiB, max_object: 64KiB}",
    );
    let (a, b) = (Shellac::start(&cfg).await, Shellac::start(&cfg).await);
    let fill = {
        let addr = a.addr;
        tokio::spawn(async move { common::http::get(addr, "/r").await })
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while origin.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the fill never reached the origin"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The origin changes, then the operator purges (on the other node), mid-fill.
    version.store(2, Ordering::SeqCst);
    let purge = b.request("PURGE", "/r", &[]).await;
    assert!(matches!(purge.status, 200 | 404), "{}", purge.status);
    assert_eq!(
        fill.await.unwrap().unwrap().text(),
        "v1",
        "the fill's own client"
    );
    // Let the fill's memcached commit land, then ask both nodes (both tiers).
    let head = lease_key("/r").replace(":l:", ":h:");
    let deadline = Instant::now() + Duration::from_secs(3);
    while mc.get(&head).is_none() {
        assert!(Instant::now() < deadline, "the fill never committed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        b.get("/r").await.text(),
        "v2",
        "node b (memcached): not the pre-purge fill"
    );
    assert_eq!(
        a.get("/r").await.text(),
        "v2",
        "node a (its memory tier): not the pre-purge fill"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_wins_the_lease_just_after_another_committed_serves_that_copy() {
    let mc = Memcached::start();
    let origin = Origin::start(|r| {
        let slow = if r.path() == "/x" { 600 } else { 0 };
        Reply::ok(format!("made for {}", r.path()))
            .header("Cache-Control", "max-age=300")
            .delay(Duration::from_millis(slow))
    })
    .await;
    let backends = format!("[\"{}\"]", origin.addr);
    let a = Shellac::start(&config(&backends, &mc, "0", "")).await;
    // Node b reads memcached's answers 900 ms late: its miss on /x is read before a commits
    // (600 ms into a's fetch) and reaches b after a has ended its lease, so b wins the lease.
    let relay = common::memcached::delay_line(mc.addr, Duration::from_millis(900)).await;
    let b_cfg = config(&backends, &mc, "0", "")
        .replace(&mc.addr.to_string(), &relay.to_string())
        .replace(
            "timeout: 500ms, purge_check: 500ms",
            "timeout: 3s, purge_check: 1s",
        );
    let b = Shellac::start(&b_cfg).await;
    // b's first request reads the host's markers, so its lookup of /x is one exchange.
    assert_eq!(b.get("/warm").await.text(), "made for /warm");
    let a_fetch = tokio::spawn(async move {
        let r = a.get("/x").await;
        (a, r)
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while origin.count_path("/x") == 0 {
        assert!(Instant::now() < deadline, "a never asked the origin");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let r = b.get("/x").await;
    let (_a, first) = a_fetch.await.unwrap();
    assert_eq!(first.text(), "made for /x");
    assert_eq!(r.text(), "made for /x");
    assert!(
        r.header("cache-status").unwrap().contains("hit"),
        "{:?}",
        r.header("cache-status")
    );
    assert_eq!(
        origin.count_path("/x"),
        1,
        "one origin request for the fleet"
    );
}
