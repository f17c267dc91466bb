//! N nodes sharing memcached behave as one cache: one origin fetch per object across the fleet,
//! purges that reach every node within the documented bound, and graceful degradation.

mod common;

use common::http::{Origin, Reply, Request};
use common::memcached::Memcached;
use common::{simple_config, Shellac};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn fleet_config(origin: &Origin, mcs: &[&Memcached], lock_timeout: &str) -> String {
    let list: Vec<String> = mcs.iter().map(|m| format!("\"{}\"", m.addr)).collect();
    format!(
        "{}cache:\n  lock_timeout: {lock_timeout}\n  memcached: {{servers: [{}], timeout: 300ms, purge_check: 500ms}}\n",
        simple_config(&[origin], "", ", cache: true"),
        list.join(", ")
    )
}

async fn three_nodes(config: &str) -> Vec<Shellac> {
    vec![
        Shellac::start(config).await,
        Shellac::start(config).await,
        Shellac::start(config).await,
    ]
}

fn versioned(v: Arc<AtomicUsize>, delay: Duration) -> impl Fn(&Request) -> Reply {
    move |req| {
        Reply::ok(format!("{} v{}", req.path(), v.load(Ordering::SeqCst)))
            .header("Cache-Control", "max-age=300")
            .delay(delay)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_miss_on_one_node_is_a_hit_on_the_others() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let origin = Origin::start(versioned(Arc::new(AtomicUsize::new(1)), Duration::ZERO)).await;
    let nodes = three_nodes(&fleet_config(&origin, &[&a, &b], "2s")).await;
    assert_eq!(nodes[0].get("/x").await.text(), "/x v1");
    common::memcached::wait_for_heads(&[&a, &b], 1).await; // the commit follows the answer
    for n in &nodes[1..] {
        let r = n.get("/x").await;
        assert_eq!(r.text(), "/x v1");
        assert!(
            r.header("cache-status").unwrap().contains("hit"),
            "{:?}",
            r.header("cache-status")
        );
    }
    assert_eq!(origin.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hundred_concurrent_cold_requests_over_three_nodes_cause_one_origin_request() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let origin = Origin::start(versioned(
        Arc::new(AtomicUsize::new(1)),
        Duration::from_millis(300),
    ))
    .await;
    let nodes = three_nodes(&fleet_config(&origin, &[&a, &b], "5s")).await;
    let mut tasks = Vec::new();
    for i in 0..300 {
        let addr = nodes[i % 3].addr;
        tasks.push(tokio::spawn(async move {
            common::http::get(addr, "/storm").await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap().expect("no client error");
        assert_eq!((r.status, r.text().as_str()), (200, "/storm v1"));
    }
    assert_eq!(origin.count(), 1, "one origin fetch for the whole fleet");
    let mut won = 0.0;
    let mut avoided = 0.0;
    for n in &nodes {
        won += n
            .metric("shellac_fleet_leases_total", &[("result", "won")])
            .await;
        avoided += n.metric("shellac_fleet_fetches_avoided_total", &[]).await;
    }
    assert_eq!(won, 1.0);
    assert!(
        avoided >= 2.0,
        "the two other nodes were served by the winner's fill: {avoided}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_purge_on_one_node_reaches_every_node_within_the_bound() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let version = Arc::new(AtomicUsize::new(1));
    let origin = Origin::start(versioned(version.clone(), Duration::ZERO)).await;
    let nodes = three_nodes(&fleet_config(&origin, &[&a, &b], "2s")).await;
    nodes[0].get("/p").await;
    common::memcached::wait_for_heads(&[&a, &b], 1).await;
    for n in &nodes {
        assert_eq!(n.get("/p").await.text(), "/p v1"); // now in every node's memory tier
    }
    version.store(2, Ordering::SeqCst);
    let r = nodes[1].request("PURGE", "/p", &[]).await;
    assert_eq!(r.status, 200);
    let purged_at = Instant::now();
    // Bound: purge_check (500 ms). Every node must answer v2 within it (plus scheduling slack).
    for (i, n) in nodes.iter().enumerate() {
        loop {
            let body = n.get("/p").await.text();
            if body == "/p v2" {
                break;
            }
            assert!(
                purged_at.elapsed() < Duration::from_millis(700),
                "node {i} still serves {body:?} {:?} after the purge",
                purged_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let purges: f64 = nodes[1]
        .metric("shellac_cache_purges_total", &[("result", "purged")])
        .await;
    assert_eq!(purges, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_killed_while_holding_the_lease_delays_the_others_by_the_lease_only() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let origin = Origin::start(versioned(
        Arc::new(AtomicUsize::new(1)),
        Duration::from_millis(1500),
    ))
    .await;
    let config = fleet_config(&origin, &[&a, &b], "2s");
    let doomed = Shellac::start(&config).await;
    let survivor = Shellac::start(&config).await;
    let addr = doomed.addr;
    let first = tokio::spawn(async move { common::http::get(addr, "/lease").await });
    tokio::time::sleep(Duration::from_millis(300)).await; // it holds the lease and is fetching
    drop(doomed); // SIGKILL: the lease is never released
    let _ = first.await;
    let t = Instant::now();
    let r = survivor.get("/lease").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "/lease v1"),
        "no client error"
    );
    // Lease TTL (2 s from when it was taken) plus one origin fetch (1.5 s), with slack.
    assert!(
        t.elapsed() < Duration::from_millis(4500),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_memcached_down_every_node_still_serves() {
    let (mut a, mut b) = (Memcached::start(), Memcached::start());
    let origin = Origin::start(versioned(
        Arc::new(AtomicUsize::new(1)),
        Duration::from_millis(200),
    ))
    .await;
    let nodes = three_nodes(&fleet_config(&origin, &[&a, &b], "2s")).await;
    a.kill();
    b.kill();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let addr = nodes[i % 3].addr;
        tasks.push(tokio::spawn(async move {
            common::http::get(addr, "/down").await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap().expect("no client error");
        assert_eq!(r.status, 200);
    }
    // Coalescing falls back to per node: at most one fetch per node.
    assert!(origin.count() <= 3, "origin saw {}", origin.count());
    // And PURGE says it could not reach the fleet rather than pretending.
    assert_eq!(nodes[0].request("PURGE", "/down", &[]).await.status, 503);
}

#[test]
fn the_local_cluster_script_starts_and_stops_a_fleet() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let origin = rt.block_on(Origin::start(|_| {
        Reply::ok("demo").header("Cache-Control", "max-age=60")
    }));
    let dir = common::temp_dir();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/cluster");
    let port_base = free_port_block();
    let out = std::process::Command::new(script)
        .args(["start", dir.to_str().unwrap()])
        .env("SHELLAC_BIN", common::BIN)
        .env("CLUSTER_PORT_BASE", port_base.to_string())
        .env("CLUSTER_ORIGINS", origin.addr.to_string())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let stop = || {
        std::process::Command::new(script)
            .args(["stop", dir.to_str().unwrap()])
            .status()
            .unwrap()
    };
    if !out.status.success() {
        stop();
        panic!("cluster start failed:\n{text}");
    }
    let nodes: Vec<std::net::SocketAddr> = text
        .lines()
        .filter_map(|l| l.strip_prefix("node "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|a| a.trim_start_matches("http://").parse().ok())
        .collect();
    let result = std::panic::catch_unwind(|| {
        assert_eq!(nodes.len(), 3, "{text}");
        rt.block_on(async {
            let r = common::http::get(nodes[0], "/cacheable").await.unwrap();
            assert_eq!(r.status, 200);
            tokio::time::sleep(Duration::from_millis(200)).await;
            let r = common::http::get(nodes[2], "/cacheable").await.unwrap();
            assert!(
                r.header("cache-status").unwrap().contains("hit"),
                "{:?}",
                r.header("cache-status")
            );
        });
    });
    assert!(stop().success());
    result.unwrap();
    for n in &nodes {
        assert!(
            std::net::TcpStream::connect(n).is_err(),
            "node {n} still up after stop"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_while_revalidate_refreshes_once_per_fleet() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let version = Arc::new(AtomicUsize::new(1));
    let v = version.clone();
    let origin = Origin::start(move |req| {
        Reply::ok(format!("{} v{}", req.path(), v.load(Ordering::SeqCst)))
            .header("Cache-Control", "max-age=1, stale-while-revalidate=60")
            .delay(Duration::from_millis(100))
    })
    .await;
    let nodes = three_nodes(&fleet_config(&origin, &[&a, &b], "2s")).await;
    nodes[0].get("/swr").await;
    common::memcached::wait_for_heads(&[&a, &b], 1).await;
    for n in &nodes {
        assert_eq!(n.get("/swr").await.text(), "/swr v1"); // warm every node's memory tier
    }
    version.store(2, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // One stale hit on each node at once: each would refresh on its own without the lease.
    let mut tasks = Vec::new();
    for n in &nodes {
        let addr = n.addr;
        tasks.push(tokio::spawn(async move {
            common::http::get(addr, "/swr").await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().text(), "/swr v1", "served stale at once");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        origin.count(),
        2,
        "one fill and one background refresh for the whole fleet"
    );
    // The refresh reaches every node through memcached.
    let t = Instant::now();
    for (i, n) in nodes.iter().enumerate() {
        loop {
            if n.get("/swr").await.text() == "/swr v2" {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(3),
                "node {i} never saw the refresh"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(origin.count(), 2);
}

/// A base port below the kernel's ephemeral range (32768+, where client sockets land) whose
/// every offset deploy/cluster uses (+0..+33) is free right now.
fn free_port_block() -> u16 {
    let start = 20000 + (std::process::id() % 300) as u16 * 40;
    (0..300u16)
        .map(|i| 20000 + (start - 20000 + i * 40) % 12000)
        .find(|base| (0..34).all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok()))
        .expect("a free block of 34 ports below 32000")
}
