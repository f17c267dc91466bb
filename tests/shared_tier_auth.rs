//! `cache.memcached.key_file`: with a key, every value Shellac writes to memcached carries a
//! keyed MAC, and whatever anyone else put there (a forged head, a planted lease, an unsealed
//! value) is a miss, is deleted and is counted. Real memcached, real binary, values planted
//! over memcached's own protocol as an attacker on the network would.

mod common;

use common::http::{Origin, Reply};
use common::memcached::Memcached;
use common::{simple_config, Shellac};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A memcached-only caching node; `key` is the key file's path, or none.
fn node(origin: &Origin, mc: &Memcached, key: Option<&std::path::Path>, extra: &str) -> String {
    let key = key.map_or(String::new(), |k| {
        format!(", key_file: \"{}\"", k.display())
    });
    format!(
        "{}cache:\n  memory: {{size: 0}}\n  lock_timeout: 5s\n  memcached: {{servers: [\"{}\"], timeout: 500ms{key}{extra}}}\n",
        simple_config(&[origin], "", ", cache: true"),
        mc.addr
    )
}

fn key_file(bytes: &[u8]) -> std::path::PathBuf {
    let path = common::temp_dir().join("memcached.key");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn heads(mc: &Memcached) -> Vec<String> {
    mc.keys()
        .into_iter()
        .filter(|k| k.contains(":h:"))
        .collect()
}

async fn rejected(node: &Shellac, kind: &str, reason: &str) -> f64 {
    node.metric(
        "shellac_memcached_rejected_total",
        &[("kind", kind), ("reason", reason)],
    )
    .await
}

/// Waits until `f` holds (memcached writes and deletes land in the background).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The origin answers cacheable first, then uncacheable: a later copy in memcached can only
/// be the first fill (or a forgery), never a refill.
fn once_cacheable() -> (Arc<AtomicUsize>, impl Fn(&common::http::Request) -> Reply) {
    let n = Arc::new(AtomicUsize::new(0));
    let c = n.clone();
    (n, move |req: &common::http::Request| {
        let cc = if c.fetch_add(1, Ordering::SeqCst) == 0 {
            "max-age=300"
        } else {
            "no-store"
        };
        Reply::ok(format!("real {}", req.target)).header("Cache-Control", cc)
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_head_is_a_miss_is_deleted_and_is_counted() {
    let mc = Memcached::start();
    let (_n, handler) = once_cacheable();
    let origin = Origin::start(handler).await;
    let key = key_file(&[7u8; 32]);
    let shellac = Shellac::start(&node(&origin, &mc, Some(&key), "")).await;
    assert_eq!(shellac.get("/a").await.text(), "real /a");
    until("the head", || heads(&mc).len() == 1).await;
    let r = shellac.get("/a").await;
    assert!(r.header("cache-status").unwrap().contains("hit"));
    // An attacker rewrites the stored body (inline in the head) to their own, same length,
    // fixing the CRC is not enough: flip a byte of the body and see the MAC refuse it.
    let head = heads(&mc).remove(0);
    let mut value = mc.get(&head).unwrap();
    let at = value
        .windows(7)
        .position(|w| w == b"real /a")
        .expect("inline body");
    value[at..at + 4].copy_from_slice(b"evil");
    mc.set(&head, &value);
    let r = shellac.get("/a").await;
    assert_eq!(r.text(), "real /a", "the forged body is never served");
    assert_eq!(origin.count(), 2, "a miss: the origin was asked again");
    assert_eq!(rejected(&shellac, "head", "bad_tag").await, 1.0);
    until("the forged head deleted", || mc.get(&head).is_none()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn values_written_without_the_key_are_ignored_by_a_keyed_node() {
    let mc = Memcached::start();
    let (_n, handler) = once_cacheable();
    let origin = Origin::start(handler).await;
    // An unkeyed node (or anyone) fills memcached; the keyed node must not trust it.
    let open = Shellac::start(&node(&origin, &mc, None, "")).await;
    assert_eq!(open.get("/b").await.status, 200);
    until("the unsealed head", || heads(&mc).len() == 1).await;
    let keyed = Shellac::start(&node(&origin, &mc, Some(&key_file(&[9u8; 40])), "")).await;
    let r = keyed.get("/b").await;
    assert_eq!(r.status, 200);
    assert!(
        !r.header("cache-status").unwrap().contains("hit"),
        "{:?}",
        r.header("cache-status")
    );
    assert_eq!(origin.count(), 2);
    assert_eq!(rejected(&keyed, "head", "bad_tag").await, 1.0);
    until("the unsealed head deleted", || heads(&mc).is_empty()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planted_lease_does_not_stall_a_keyed_node() {
    let mc = Memcached::start();
    let origin = Origin::start(|r| {
        Reply::ok(format!("real {}", r.target)).header("Cache-Control", "max-age=300")
    })
    .await;
    let shellac = Shellac::start(&node(&origin, &mc, Some(&key_file(&[3u8; 32])), "")).await;
    // Learn the object's key hash from a fill, then remove it and plant a lease that never
    // expires, as anyone on memcached's network could.
    assert_eq!(shellac.get("/c").await.status, 200);
    until("the head", || heads(&mc).len() == 1).await;
    let head = heads(&mc).remove(0);
    assert!(mc.delete(&head));
    let lease = head.replace(":h:", ":l:");
    mc.set(&lease, &42u64.to_be_bytes());
    let start = Instant::now();
    let r = shellac.get("/c").await;
    assert_eq!(r.status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "waited {:?} on a forged lease (lock_timeout is 5s)",
        start.elapsed()
    );
    assert_eq!(origin.count(), 2);
    assert_eq!(rejected(&shellac, "lease", "short").await, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_purge_marker_does_not_retire_entries() {
    let mc = Memcached::start();
    let origin = Origin::start(|r| {
        Reply::ok(format!("real {}", r.target)).header("Cache-Control", "max-age=300")
    })
    .await;
    // With a memory tier, the L1 copy re-checks the URL's purge marker every purge_check.
    let config = node(
        &origin,
        &mc,
        Some(&key_file(&[5u8; 32])),
        ", purge_check: 10ms",
    )
    .replace(
        "memory: {size: 0}",
        "memory: {size: 1MiB, max_object: 64KiB}",
    );
    let shellac = Shellac::start(&config).await;
    assert_eq!(shellac.get("/d").await.status, 200);
    until("the head", || heads(&mc).len() == 1).await;
    // The marker key is `NS:p:<primary hash>`; a purge of /d through Shellac names it.
    let before: Vec<String> = mc.keys();
    let purge = shellac.request("PURGE", "/d", &[]).await;
    assert_eq!(purge.status, 200);
    let marker = mc
        .keys()
        .into_iter()
        .find(|k| k.contains(":p:") && !before.contains(k))
        .expect("purge marker");
    assert_eq!(
        shellac.get("/d").await.status,
        200,
        "refill after the purge"
    );
    assert_eq!(origin.count(), 2);
    // Forge a marker far in the future: unsealed, it must be ignored (and deleted).
    mc.set(&marker, b"99999999999999");
    tokio::time::sleep(Duration::from_millis(30)).await; // past purge_check, so L1 re-checks
    let r = shellac.get("/d").await;
    assert!(
        r.header("cache-status").unwrap().contains("hit"),
        "{:?}",
        r.header("cache-status")
    );
    assert_eq!(origin.count(), 2, "the forged marker retired nothing");
    assert_eq!(rejected(&shellac, "purge_marker", "short").await, 1.0);
    until("the forged marker deleted", || mc.get(&marker).is_none()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_cannot_make_a_reader_plan_more_chunks_than_max_object_allows() {
    use shellac::cache::memcached::entry;
    let mc = Memcached::start();
    let origin = Origin::start(|r| {
        Reply::ok(format!("real {}", r.target)).header("Cache-Control", "max-age=300")
    })
    .await;
    // No key: the bound holds for well-formed (CRC-valid) heads anyone can write.
    let shellac = Shellac::start(&node(&origin, &mc, None, "")).await;
    assert_eq!(shellac.get("/e").await.status, 200);
    until("the head", || heads(&mc).len() == 1).await;
    let head = heads(&mc).remove(0);
    let real = entry::decode_head(mc.get(&head).unwrap().into()).unwrap();
    // 64 MiB (the default max_object) in 1 KiB chunks: 65,536 chunk lookups per request.
    let forged = entry::encode_head(
        real.write_id,
        64 << 20,
        &real.internal,
        &real.header,
        entry::HeadBody::Chunked(1024),
    );
    mc.set(&head, &forged);
    let gets = mc.stat("cmd_get");
    let r = shellac.get("/e").await;
    assert_eq!(r.status, 200);
    assert_eq!(origin.count(), 2, "the forged head is a miss");
    let planned = mc.stat("cmd_get") - gets;
    assert!(planned < 20, "{planned} gets for one request");
    // Read twice, and refused both times: as the miss, and again after this node won the
    // fleet lease, since a head is stored (it might have been committed meanwhile).
    assert_eq!(
        shellac
            .metric("shellac_cache_l2_lookups_total", &[("result", "corrupt")])
            .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sealed_chunked_objects_round_trip_byte_for_byte() {
    let mc = Memcached::start();
    let body: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i * 7 % 251) as u8).collect();
    let b = body.clone();
    let origin =
        Origin::start(move |_| Reply::ok(b.clone()).header("Cache-Control", "max-age=300")).await;
    let shellac = Shellac::start(&node(&origin, &mc, Some(&key_file(&[1u8; 32])), "")).await;
    assert_eq!(shellac.get("/big").await.body, body);
    until("the head", || heads(&mc).len() == 1).await;
    let r = shellac.get("/big").await;
    assert!(r.header("cache-status").unwrap().contains("hit"));
    assert_eq!(r.body, body, "every chunk opened and in order");
    assert_eq!(origin.count(), 1);
    // Tamper with one chunk: the hit that reads it fails instead of serving forged bytes.
    let chunk = mc.keys().into_iter().find(|k| k.contains(":c:")).unwrap();
    let mut v = mc.get(&chunk).unwrap();
    v[20] ^= 0xff;
    mc.set(&chunk, &v);
    let r = common::http::get(shellac.addr, "/big").await;
    // Chunk 0 is read with the lookup, so a forged chunk 0 is caught before the response
    // begins and the object comes from the origin, whole. A later chunk is caught mid-body:
    // the body then ends early (or the connection drops). Never the forged bytes.
    assert!(
        r.map_or(true, |r| r.body.len() < body.len() || r.body == body),
        "a forged chunk is never served as part of the object"
    );
    assert_eq!(rejected(&shellac, "chunk", "bad_tag").await, 1.0);
}

#[test]
fn t_checks_the_key_file() {
    let dir = common::temp_dir();
    let base = "listen: [\"127.0.0.1:1\"]\nadmin: {listen: \"127.0.0.1:2\"}\nupstreams:\n  app:\n    backends: [\"127.0.0.1:3\"]\nroutes:\n  - {upstream: app, cache: true}\ncache:\n  memcached: {servers: [\"127.0.0.1:4\"], key_file: KEY}\n";
    let check = |key: &str| {
        let path = dir.join("shellac.yaml");
        std::fs::write(&path, base.replace("KEY", key)).unwrap();
        common::run(&["-t", "-c", path.to_str().unwrap()])
    };
    let (code, out) = check("missing.key");
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("cache.memcached.key_file") && out.contains("cannot read"),
        "{out}"
    );
    std::fs::write(dir.join("short.key"), b"too short").unwrap();
    let (code, out) = check("short.key");
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("cache.memcached.key_file") && out.contains("at least 32"),
        "{out}"
    );
    // Relative to the config file's directory, not the working directory.
    std::fs::write(dir.join("good.key"), [0u8; 32]).unwrap();
    let (code, out) = check("good.key");
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tag_purges_work_sealed_and_a_forged_tag_marker_retires_nothing() {
    let mc = Memcached::start();
    let origin = Origin::start(|r| {
        Reply::ok(format!("real {}", r.target))
            .header("Cache-Control", "max-age=300")
            .header("Surrogate-Key", "t1")
    })
    .await;
    let shellac = Shellac::start(&node(&origin, &mc, Some(&key_file(&[4u8; 32])), "")).await;
    shellac.get("/t").await;
    until("the head", || heads(&mc).len() == 1).await;
    assert!(shellac
        .get("/t")
        .await
        .header("cache-status")
        .unwrap()
        .contains("hit"));
    // A sealed tag purge is written and read back: the next request refetches.
    let before: Vec<String> = mc.keys();
    let p = shellac
        .request("PURGE", "/", &[("Shellac-Purge-Tags", "t1")])
        .await;
    assert_eq!(p.status, 200);
    let marker = mc
        .keys()
        .into_iter()
        .find(|k| k.contains(":i:") && !before.contains(k))
        .expect("the tag's marker");
    assert!(!shellac
        .get("/t")
        .await
        .header("cache-status")
        .unwrap()
        .contains("hit"));
    assert_eq!(origin.count(), 2);
    until("the refill", || heads(&mc).len() == 1).await;
    assert!(shellac
        .get("/t")
        .await
        .header("cache-status")
        .unwrap()
        .contains("hit"));
    // A forged marker for the same tag, dated far in the future, is ignored and deleted.
    mc.set(&marker, b"99999999999999 0");
    tokio::time::sleep(Duration::from_millis(600)).await; // past any marker cache
    assert!(shellac
        .get("/t")
        .await
        .header("cache-status")
        .unwrap()
        .contains("hit"));
    assert_eq!(origin.count(), 2, "the forged marker retired nothing");
    assert_eq!(rejected(&shellac, "invalidation", "short").await, 1.0);
}
