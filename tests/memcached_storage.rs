//! The memcached `Storage` against real memcached processes: round trips, ranges, corruption,
//! several servers, and outages (killed, hung).

mod common;

use common::memcached::Memcached;
use pingora::cache::key::CacheHashKey;
use pingora::cache::storage::{MissFinishType, PurgeType};
use pingora::cache::trace::SpanHandle;
use pingora::cache::{CacheKey, CacheMeta, HitHandler, PurgeOutcome, PurgeTarget, Storage};
use pingora::http::ResponseHeader;
use shellac::cache::memcached::breaker::BreakerState;
use shellac::cache::memcached::{MemcachedSettings, MemcachedStorage};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

const NS: &str = "t1";
const TIMEOUT: Duration = Duration::from_millis(200);

fn storage(
    servers: &[SocketAddr],
    tweak: impl FnOnce(&mut MemcachedSettings),
) -> &'static MemcachedStorage {
    let mut s = MemcachedSettings {
        servers: servers.to_vec(),
        timeout: TIMEOUT,
        namespace: NS.into(),
        ..Default::default()
    };
    tweak(&mut s);
    s.validate().unwrap();
    Box::leak(Box::new(MemcachedStorage::new(s)))
}

fn span() -> SpanHandle {
    pingora::cache::trace::Span::inactive().handle()
}

fn meta(content_length: Option<usize>, fresh: Duration) -> CacheMeta {
    let mut h = ResponseHeader::build(200, None).unwrap();
    h.insert_header("x-test", "yes").unwrap();
    if let Some(n) = content_length {
        h.insert_header("content-length", n.to_string()).unwrap();
    }
    let now = SystemTime::now();
    CacheMeta::new(now + fresh, now, 10, 20, h)
}

fn body(len: usize, seed: u64) -> Vec<u8> {
    common::pseudo_random(len, seed)
}

/// Stores `data`, written in pieces of `piece` bytes, and returns the finish size.
async fn put(s: &'static MemcachedStorage, key: &CacheKey, data: &[u8], piece: usize) -> usize {
    let mut miss = s
        .get_miss_handler(
            key,
            &meta(Some(data.len()), Duration::from_secs(60)),
            &span(),
        )
        .await
        .unwrap();
    let pieces: Vec<&[u8]> = data.chunks(piece).collect();
    for (i, p) in pieces.iter().enumerate() {
        miss.write_body(p.to_vec().into(), i + 1 == pieces.len())
            .await
            .unwrap();
    }
    match miss.finish().await.unwrap() {
        MissFinishType::Created(n) => n,
        MissFinishType::Appended(..) => panic!("appended"),
    }
}

async fn read_all(hit: &mut HitHandler) -> pingora::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(b) = hit.read_body().await? {
        assert!(!b.is_empty(), "empty body chunk");
        out.extend_from_slice(&b);
    }
    Ok(out)
}

async fn get(s: &'static MemcachedStorage, key: &CacheKey) -> Option<(CacheMeta, Vec<u8>)> {
    let (meta, mut hit) = s.lookup(key, &span()).await.unwrap()?;
    let data = read_all(&mut hit).await.unwrap();
    Some((meta, data))
}

fn head_key(key: &CacheKey) -> String {
    format!("{NS}:h:{}", key.combined())
}

fn chunk_keys(m: &Memcached) -> Vec<String> {
    let mut k: Vec<String> = m
        .keys()
        .into_iter()
        .filter(|k| k.starts_with(&format!("{NS}:c:")))
        .collect();
    // Sort by chunk index, not lexically.
    k.sort_by_key(|k| k.rsplit(':').next().and_then(|i| i.parse::<u32>().ok()));
    k
}

#[tokio::test]
async fn small_body_round_trips_inline() {
    let m = Memcached::start();
    let s = storage(&[m.addr], |_| {});
    let key = CacheKey::new("small", "");
    let data = body(1000, 1);
    put(s, &key, &data, 300).await;
    let (meta, got) = get(s, &key).await.unwrap();
    assert_eq!(got, data);
    assert_eq!(meta.response_header().status.as_u16(), 200);
    assert_eq!(meta.headers().get("x-test").unwrap(), "yes");
    assert!(meta.is_fresh(SystemTime::now()));
    assert_eq!(m.keys(), vec![head_key(&key)], "inline: one item only");
}

#[tokio::test]
async fn five_mib_body_round_trips_in_chunks() {
    let m = Memcached::start();
    let s = storage(&[m.addr], |s| s.chunk_size = 512 * 1024);
    let key = CacheKey::new("large", "");
    let data = body(5 << 20, 2);
    let t = Instant::now();
    let created = put(s, &key, &data, 100_000).await;
    eprintln!("stored 5 MiB in {:?}", t.elapsed());
    assert!(created >= data.len());
    assert_eq!(chunk_keys(&m).len(), 10);
    let t = Instant::now();
    let (_, got) = get(s, &key).await.unwrap();
    eprintln!("read 5 MiB in {:?}", t.elapsed());
    assert!(got == data, "body differs");
}

#[tokio::test]
async fn range_reads_the_right_bytes_and_only_its_chunks() {
    let m = Memcached::start();
    let s = storage(&[m.addr], |s| s.chunk_size = 512 * 1024);
    let key = CacheKey::new("ranged", "");
    let data = body(5 << 20, 3);
    put(s, &key, &data, 1 << 20).await;

    let (_, mut hit) = s.lookup(&key, &span()).await.unwrap().unwrap();
    assert!(hit.can_seek());
    // Bytes 1_000_000..1_100_000 span chunks 1 and 2 (512 KiB each).
    let before = m.stat("get_hits");
    hit.seek(1_000_000, Some(1_100_000)).unwrap();
    let got = read_all(&mut hit).await.unwrap();
    assert!(got == data[1_000_000..1_100_000], "range bytes differ");
    assert_eq!(m.stat("get_hits") - before, 2, "only chunks 1 and 2 read");

    // The same handler serves another range (multipart), here the tail.
    hit.seek(data.len() - 10, None).unwrap();
    assert_eq!(read_all(&mut hit).await.unwrap(), data[data.len() - 10..]);
    assert!(hit.seek(data.len(), None).is_err());
}

#[tokio::test]
async fn corrupt_or_truncated_head_is_a_miss() {
    let m = Memcached::start();
    let s = storage(&[m.addr], |_| {});
    let key = CacheKey::new("corrupt", "");
    put(s, &key, &body(5000, 4), 5000).await;
    let good = m.get(&head_key(&key)).unwrap();

    let mut flipped = good.clone();
    flipped[40] ^= 0x10;
    let plants: Vec<Vec<u8>> = vec![
        b"garbage".to_vec(),
        good[..good.len() - 10].to_vec(),
        good[..20].to_vec(),
        flipped,
        [good.clone(), b"tail".to_vec()].concat(),
    ];
    for (i, plant) in plants.into_iter().enumerate() {
        m.set(&head_key(&key), &plant);
        assert!(
            s.lookup(&key, &span()).await.unwrap().is_none(),
            "plant {i} must be a miss"
        );
    }
    m.set(&head_key(&key), &good);
    assert!(get(s, &key).await.is_some(), "the intact head still hits");
}

#[tokio::test]
async fn missing_or_corrupt_chunk_is_a_miss_at_lookup() {
    let m = Memcached::start();
    let s = storage(&[m.addr], |s| s.chunk_size = 64 * 1024);
    let key = CacheKey::new("evicted", "");
    let data = body(300_000, 5);
    put(s, &key, &data, 50_000).await;
    let chunks = chunk_keys(&m);
    assert_eq!(chunks.len(), 5);

    // Truncated chunk: same key, shorter value.
    let c2 = m.get(&chunks[2]).unwrap();
    m.set(&chunks[2], &c2[..c2.len() - 1]);
    assert!(s.lookup(&key, &span()).await.unwrap().is_none());
    m.set(&chunks[2], &c2);

    assert!(m.delete(&chunks[3]));
    assert!(s.lookup(&key, &span()).await.unwrap().is_none());
    wait_for(|| m.get(&head_key(&key)).is_none(), "head deleted").await;
}

#[tokio::test]
async fn chunk_lost_mid_stream_is_an_error_not_a_short_body() {
    let m = Memcached::start();
    let s = storage(&[m.addr], |s| s.chunk_size = 64 * 1024);
    let key = CacheKey::new("midstream", "");
    put(s, &key, &body(640 * 1024, 6), 64 * 1024).await;
    let chunks = chunk_keys(&m);
    assert_eq!(chunks.len(), 10);

    let (_, mut hit) = s.lookup(&key, &span()).await.unwrap().unwrap();
    assert!(m.delete(&chunks[7]));
    let mut read = 0;
    let err = loop {
        match hit.read_body().await {
            Ok(Some(b)) => read += b.len(),
            Ok(None) => panic!("body ended after {read} bytes as if complete"),
            Err(e) => break e,
        }
    };
    assert_eq!(
        read,
        7 * 64 * 1024,
        "all bytes before the lost chunk were served"
    );
    eprintln!("mid-stream loss: {err}");
    assert!(hit.read_body().await.is_err(), "stays failed");
    wait_for(|| m.get(&head_key(&key)).is_none(), "head deleted").await;
}

#[tokio::test]
async fn keys_are_spread_over_two_servers() {
    let a = Memcached::start();
    let b = Memcached::start();
    let s = storage(&[a.addr, b.addr], |_| {});
    let keys: Vec<CacheKey> = (0..20)
        .map(|i| CacheKey::new(format!("k{i}"), ""))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        put(s, k, &body(100 + i, i as u64), 1000).await;
    }
    let (na, nb) = (a.keys().len(), b.keys().len());
    eprintln!("items: {na} on a, {nb} on b");
    assert!(na > 0 && nb > 0 && na + nb == 20);
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(get(s, k).await.unwrap().1, body(100 + i, i as u64));
    }
}

#[tokio::test]
async fn update_meta_purge_and_expire() {
    let m = Memcached::start();
    let s = storage(&[m.addr], |s| s.chunk_size = 64 * 1024);
    let key = CacheKey::new("revalidated", "");
    let data = body(200_000, 7);
    put(s, &key, &data, 65_536).await;

    let fresh = meta(Some(data.len()), Duration::from_secs(5000));
    assert!(s.update_meta(&key, &fresh, &span()).await.unwrap());
    let (got_meta, got) = get(s, &key).await.unwrap();
    assert_eq!(got, data, "304: body kept");
    assert_eq!(
        got_meta
            .fresh_until()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        fresh
            .fresh_until()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    );

    let compact = key.to_compact();
    assert_eq!(
        s.expire(PurgeTarget::Active(&compact), &span())
            .await
            .unwrap(),
        PurgeOutcome::Expired
    );
    let (expired, got) = get(s, &key).await.unwrap();
    assert!(
        !expired.is_fresh(SystemTime::now()),
        "expired but still returned"
    );
    assert_eq!(got, data);

    let sp = span();
    let purge = || s.purge(PurgeTarget::Active(&compact), PurgeType::Invalidation, &sp);
    assert_eq!(purge().await.unwrap(), PurgeOutcome::Purged(None));
    assert_eq!(purge().await.unwrap(), PurgeOutcome::NotFound);
    assert!(s.lookup(&key, &span()).await.unwrap().is_none());
    assert!(
        !s.update_meta(&key, &fresh, &span()).await.unwrap(),
        "gone: false, no panic"
    );
}

#[tokio::test]
async fn stale_entries_are_returned() {
    let m = Memcached::start();
    let s = storage(&[m.addr], |_| {});
    let key = CacheKey::new("stale", "");
    let mut miss = s
        .get_miss_handler(&key, &meta(Some(3), Duration::ZERO), &span())
        .await
        .unwrap();
    miss.write_body("abc".into(), true).await.unwrap();
    miss.finish().await.unwrap();
    let (meta, got) = get(s, &key).await.unwrap();
    assert!(!meta.is_fresh(SystemTime::now() + Duration::from_secs(1)));
    assert_eq!(got, b"abc");
}

#[tokio::test]
async fn unfinished_or_oversized_writes_commit_nothing() {
    let m = Memcached::start();
    let s = storage(&[m.addr], |s| {
        s.chunk_size = 64 * 1024;
        s.max_object = 200_000;
    });
    let key = CacheKey::new("aborted", "");
    let mut miss = s
        .get_miss_handler(&key, &meta(None, Duration::from_secs(60)), &span())
        .await
        .unwrap();
    miss.write_body(body(150_000, 8).into(), false)
        .await
        .unwrap();
    drop(miss);
    assert!(s.lookup(&key, &span()).await.unwrap().is_none(), "dropped");

    let mut miss = s
        .get_miss_handler(&key, &meta(None, Duration::from_secs(60)), &span())
        .await
        .unwrap();
    miss.write_body(body(150_000, 8).into(), false)
        .await
        .unwrap();
    assert!(miss.write_body(body(60_000, 9).into(), true).await.is_err());
    assert!(miss.finish().await.is_err());
    assert!(
        s.lookup(&key, &span()).await.unwrap().is_none(),
        "too large"
    );
    assert!(m.get(&head_key(&key)).is_none());
}

#[tokio::test]
async fn chunked_origin_gets_a_content_length() {
    let m = Memcached::start();
    let s = storage(&[m.addr], |s| s.chunk_size = 64 * 1024);
    let key = CacheKey::new("chunked-origin", "");
    let mut h = ResponseHeader::build(200, None).unwrap();
    h.insert_header("transfer-encoding", "chunked").unwrap();
    let now = SystemTime::now();
    let meta = CacheMeta::new(now + Duration::from_secs(60), now, 0, 0, h);
    let mut miss = s.get_miss_handler(&key, &meta, &span()).await.unwrap();
    let data = body(100_000, 10);
    miss.write_body(data.clone().into(), true).await.unwrap();
    miss.finish().await.unwrap();
    let (meta, got) = get(s, &key).await.unwrap();
    assert_eq!(got, data);
    assert_eq!(meta.headers().get("content-length").unwrap(), "100000");
    assert!(meta.headers().get("transfer-encoding").is_none());
}

#[tokio::test]
async fn killed_server_fails_fast_breaker_opens_and_recovers() {
    let mut m = Memcached::start();
    let s = storage(&[m.addr], |s| {
        s.breaker_failures = 3;
        s.breaker_open_for = Duration::from_millis(500);
    });
    let key = CacheKey::new("outage", "");
    put(s, &key, b"before", 100).await;
    m.kill();

    for i in 0..3 {
        let t = Instant::now();
        let r = s.lookup(&key, &span()).await;
        let took = t.elapsed();
        eprintln!("killed: lookup {i} -> err={} in {took:?}", r.is_err());
        assert!(
            r.is_err(),
            "a failed exchange is an error before the breaker opens"
        );
        assert!(took < TIMEOUT + Duration::from_millis(100), "{took:?}");
    }
    assert_eq!(s.server_states()[0].1, BreakerState::Open);
    assert!(!s.is_available());
    let t = Instant::now();
    for _ in 0..100 {
        assert!(s.lookup(&key, &span()).await.unwrap().is_none());
    }
    let took = t.elapsed();
    eprintln!("breaker open: 100 lookups in {took:?}");
    assert!(took < Duration::from_millis(50), "{took:?}");
    assert!(
        s.get_miss_handler(&key, &meta(Some(1), Duration::from_secs(9)), &span())
            .await
            .is_err(),
        "writes are skipped while open"
    );

    m.restart();
    tokio::time::sleep(Duration::from_millis(550)).await;
    // The restarted memcached is empty: the probe lookup is a miss, and it closes the breaker.
    assert!(s.lookup(&key, &span()).await.unwrap().is_none());
    assert_eq!(s.server_states()[0].1, BreakerState::Closed);
    put(s, &key, b"after", 100).await;
    assert_eq!(get(s, &key).await.unwrap().1, b"after");
}

#[tokio::test]
async fn hung_server_lookups_give_up_at_the_timeout() {
    let m = Memcached::start();
    let s = storage(&[m.addr], |s| s.breaker_failures = 2);
    let key = CacheKey::new("hung", "");
    put(s, &key, b"x", 1).await;
    m.pause();
    for i in 0..2 {
        let t = Instant::now();
        let r = s.lookup(&key, &span()).await;
        let took = t.elapsed();
        eprintln!("hung: lookup {i} -> err={} in {took:?}", r.is_err());
        assert!(r.is_err());
        assert!(
            took >= TIMEOUT - Duration::from_millis(20)
                && took < TIMEOUT + Duration::from_millis(150),
            "{took:?}"
        );
    }
    let t = Instant::now();
    assert!(s.lookup(&key, &span()).await.unwrap().is_none());
    eprintln!("hung, breaker open: lookup in {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_millis(20));
    m.resume();
}

#[tokio::test]
async fn probe_checks_the_chunk_size_against_the_item_limit() {
    let m = Memcached::start();
    let ok = MemcachedStorage::new(MemcachedSettings {
        servers: vec![m.addr],
        ..Default::default()
    });
    ok.probe().await.unwrap();
    let too_big = MemcachedStorage::new(MemcachedSettings {
        servers: vec![m.addr],
        chunk_size: 2 << 20,
        ..Default::default()
    });
    let e = too_big.probe().await.unwrap_err();
    eprintln!("probe: {e}");
    assert!(e.contains("chunk_size"), "{e}");
}

async fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    common::wait_for(what, Duration::from_secs(2), &mut cond).await
}

#[tokio::test]
async fn concurrent_fills_never_mix() {
    let m = Memcached::start();
    let s = storage(&[m.addr], |s| s.chunk_size = 64 * 1024);
    let key = CacheKey::new("racy", "");
    let (a, b) = (body(300_000, 11), body(300_000, 12));
    let fresh = || meta(Some(300_000), Duration::from_secs(60));
    let mut wa = s.get_miss_handler(&key, &fresh(), &span()).await.unwrap();
    let mut wb = s.get_miss_handler(&key, &fresh(), &span()).await.unwrap();
    // Interleave the two fills chunk by chunk, then commit a first and b last.
    for (i, (pa, pb)) in a.chunks(50_000).zip(b.chunks(50_000)).enumerate() {
        let eof = i == 5;
        wa.write_body(pa.to_vec().into(), eof).await.unwrap();
        wb.write_body(pb.to_vec().into(), eof).await.unwrap();
    }
    wa.finish().await.unwrap();
    assert!(get(s, &key).await.unwrap().1 == a, "first commit readable");
    wb.finish().await.unwrap();
    assert!(
        get(s, &key).await.unwrap().1 == b,
        "last commit wins, whole"
    );
}
