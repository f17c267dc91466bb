//! The shared tier under load and faults: clients that give up, memcached servers that die or
//! hang mid-body, and many readers of large objects. Real memcached, real origins.

mod common;

use common::http::{Origin, Reply, Request};
use common::memcached::Memcached;
use common::{simple_config, Shellac};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

fn cache_section(mcs: &[&Memcached], memory: &str) -> String {
    let mut s = format!("cache:\n  lock_timeout: 10s\n  memory: {{size: {memory}}}\n");
    if !mcs.is_empty() {
        let list: Vec<String> = mcs.iter().map(|m| format!("\"{}\"", m.addr)).collect();
        s += &format!(
            "  memcached: {{servers: [{}], timeout: 300ms, purge_check: 500ms}}\n",
            list.join(", ")
        );
    }
    s
}

fn config(origin: &Origin, mcs: &[&Memcached], memory: &str) -> String {
    format!(
        "{}{}",
        simple_config(&[origin], "", ", cache: true"),
        cache_section(mcs, memory)
    )
}

/// A client that sends its request and hangs up after `after`, before any answer.
async fn impatient(addr: SocketAddr, target: &str, after: Duration) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let req = format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    tokio::time::sleep(after).await;
    drop(s);
}

fn slow_origin_reply(delay: Duration) -> impl Fn(&common::http::Request) -> Reply {
    move |req| {
        Reply::ok(format!("body of {}", req.path()))
            .header("Cache-Control", "max-age=300")
            .delay(delay)
    }
}

async fn abandoned_storm(nodes: &[Shellac], origin: &Origin) {
    let mut tasks = Vec::new();
    for i in 0..300 {
        let addr = nodes[i % nodes.len()].addr;
        tasks.push(tokio::spawn(impatient(
            addr,
            "/storm",
            Duration::from_millis(500),
        )));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // The fill goes on without any client: the origin answers at 2 s.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        origin.count(),
        1,
        "one origin request although every client left"
    );
    for n in nodes {
        let r = n.get("/storm").await;
        assert_eq!(r.text(), "body of /storm");
        let status = r.header("cache-status").unwrap_or("");
        assert!(status.contains("hit"), "a hit after the storm: {status}");
    }
    assert_eq!(origin.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_client_leaving_a_fill_costs_one_origin_request_and_the_fill_completes() {
    let origin = Origin::start(slow_origin_reply(Duration::from_secs(2))).await;
    let node = Shellac::start(&config(&origin, &[], "64MiB")).await;
    abandoned_storm(std::slice::from_ref(&node), &origin).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_client_leaving_a_fill_costs_one_origin_request_with_memcached_alone() {
    let mc = Memcached::start();
    let origin = Origin::start(slow_origin_reply(Duration::from_secs(2))).await;
    let node = Shellac::start(&config(&origin, &[&mc], "0")).await;
    abandoned_storm(std::slice::from_ref(&node), &origin).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_client_leaving_a_fill_over_three_nodes_costs_one_origin_request() {
    let (a, b) = (Memcached::start(), Memcached::start());
    let origin = Origin::start(slow_origin_reply(Duration::from_secs(2))).await;
    let conf = config(&origin, &[&a, &b], "64MiB");
    let nodes = vec![
        Shellac::start(&conf).await,
        Shellac::start(&conf).await,
        Shellac::start(&conf).await,
    ];
    abandoned_storm(&nodes, &origin).await;
}

/// One round over `paths`; returns how many the origin had to answer.
async fn round(node: &Shellac, origin: &Origin, paths: &[String]) -> usize {
    let before = origin.count();
    for p in paths {
        let r = node.get(p).await;
        assert_eq!((r.status, r.text()), (200, format!("body of {p}")));
    }
    origin.count() - before
}

fn heads(mc: &Memcached) -> usize {
    mc.keys().iter().filter(|k| k.contains(":h:")).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_servers_keys_are_served_from_the_next_server_and_move_back() {
    let (mut a, b) = (Memcached::start(), Memcached::start());
    let origin = Origin::start(slow_origin_reply(Duration::ZERO)).await;
    let conf = format!(
        "{}cache:\n  memory: {{size: 0}}\n  memcached: {{servers: [\"{}\", \"{}\"], timeout: 100ms, breaker_open_for: 1s}}\n",
        simple_config(&[&origin], "", ", cache: true"),
        a.addr,
        b.addr
    );
    let node = Shellac::start(&conf).await;
    let paths: Vec<String> = (0..40).map(|i| format!("/k/{i}")).collect();
    assert_eq!(round(&node, &origin, &paths).await, 40);
    assert_eq!(round(&node, &origin, &paths).await, 0, "all memcached hits");
    let on_a = heads(&a);
    assert!(on_a >= 5 && heads(&b) >= 5, "both servers hold keys");
    a.kill();
    // The first rounds find a's keys nowhere (the first few while its breaker opens, which
    // also fail to store); they are stored on b.
    round(&node, &origin, &paths).await;
    round(&node, &origin, &paths).await;
    let refetched = round(&node, &origin, &paths).await;
    // At most a probe of the dead server per round misses.
    assert!(
        refetched <= 2,
        "a's {on_a} keys are hits on b while a is down: {refetched} origin requests"
    );
    assert!(heads(&b) >= 40 - 2, "b holds a's keys too: {}", heads(&b));
    // Back (empty, as a restarted memcached is): a's keys go home once its probe succeeds.
    a.restart();
    let t = std::time::Instant::now();
    loop {
        let misses = round(&node, &origin, &paths).await;
        if misses == 0 && heads(&a) >= on_a {
            break; // every key of a is stored on a again, and a round is all hits
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "a's keys did not come back: {} of {on_a} heads on a",
            heads(&a)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const BIG: usize = 20 << 20;

fn big_body() -> Arc<Vec<u8>> {
    Arc::new(common::pseudo_random(BIG, 7))
}

/// An origin for `/big` that honours `Range` + `If-Range` against its ETag, or (`validator`
/// false) sends no validator at all.
fn ranged_origin(body: Arc<Vec<u8>>, validator: bool) -> impl Fn(&Request) -> Reply {
    move |req| {
        let etag = "\"v1\"";
        let whole = || {
            let r = Reply::ok(body.as_slice().to_vec()).header("Cache-Control", "max-age=300");
            if validator {
                r.header("ETag", etag)
            } else {
                r
            }
        };
        let Some(range) = req.header("range") else {
            return whole();
        };
        if !validator || req.header("if-range") != Some(etag) {
            return whole();
        }
        let (a, b) = range
            .trim_start_matches("bytes=")
            .split_once('-')
            .expect("a single range");
        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        Reply::new(206, body[a..=b].to_vec())
            .header("ETag", etag)
            .header("Content-Range", format!("bytes {a}-{b}/{}", body.len()))
    }
}

/// Reads a response on a raw connection, calling `mid_body` once `at` body bytes are in.
/// Returns the Content-Length and the body bytes received before the stream ended.
async fn read_with_pause(addr: SocketAddr, at: usize, mid_body: impl FnOnce()) -> (usize, Vec<u8>) {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut s = tokio::io::BufReader::new(s);
    s.get_mut()
        .write_all(b"GET /big HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut len = None;
    loop {
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = Some(v.trim().parse::<usize>().unwrap());
            }
        }
    }
    let len = len.expect("a Content-Length");
    let mut body = vec![0; at];
    s.read_exact(&mut body).await.unwrap();
    mid_body();
    let mut buf = vec![0; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => body.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the response neither finished nor ended"),
        }
    }
    (len, body)
}

fn stream_config(origin: &Origin, mc: &Memcached, timeout: &str, body_timeout: &str) -> String {
    format!(
        "{}cache:\n  memory: {{size: 0}}\n  memcached: {{servers: [\"{}\"], timeout: {timeout}, body_timeout: {body_timeout}, chunk_size: 256KiB}}\n",
        simple_config(&[origin], "", ", cache: true"),
        mc.addr
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn memcached_hung_mid_body_the_rest_comes_from_the_origin_byte_exact() {
    let mc = Memcached::start();
    let body = big_body();
    let origin = Origin::start(ranged_origin(body.clone(), true)).await;
    let node = Shellac::start(&stream_config(&origin, &mc, "100ms", "300ms")).await;
    assert_eq!(node.get("/big").await.body.len(), BIG);
    common::memcached::wait_for_heads(&[&mc], 1).await;
    let (len, got) = read_with_pause(node.addr, 1 << 20, || mc.pause()).await;
    mc.resume();
    assert_eq!(len, BIG);
    assert_eq!(got.len(), BIG, "the whole body");
    assert!(got == *body, "byte-exact");
    let ranged: Vec<_> = origin
        .requests()
        .into_iter()
        .filter(|r| r.header("range").is_some())
        .collect();
    assert_eq!(ranged.len(), 1, "the rest came from the origin");
    assert_eq!(ranged[0].header("if-range"), Some("\"v1\""));
    let resumed = node
        .metric("shellac_cache_body_resumes_total", &[("result", "resumed")])
        .await;
    assert_eq!(resumed, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn memcached_hung_mid_body_without_a_validator_aborts_never_short() {
    let mc = Memcached::start();
    let body = big_body();
    let origin = Origin::start(ranged_origin(body.clone(), false)).await;
    let node = Shellac::start(&stream_config(&origin, &mc, "100ms", "300ms")).await;
    assert_eq!(node.get("/big").await.body.len(), BIG);
    common::memcached::wait_for_heads(&[&mc], 1).await;
    let (len, got) = read_with_pause(node.addr, 1 << 20, || mc.pause()).await;
    mc.resume();
    assert_eq!(len, BIG);
    // Cut: the client can tell (fewer bytes than Content-Length, connection closed), and what
    // it got is a true prefix.
    assert!(got.len() < BIG, "aborted");
    assert!(got[..] == body[..got.len()], "a true prefix");
    let aborted = node
        .metric("shellac_cache_body_resumes_total", &[("result", "aborted")])
        .await;
    assert_eq!(aborted, 1.0);
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Reads a whole response on a raw connection and keeps only its byte count and a checksum.
async fn drain(addr: SocketAddr, target: &str) -> (usize, u64) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0; 64 * 1024];
    let (mut head, mut n, mut sum) = (Vec::new(), 0usize, 0u64);
    let mut in_body = false;
    loop {
        let got = s.read(&mut buf).await.unwrap();
        if got == 0 {
            break;
        }
        let mut data = &buf[..got];
        if !in_body {
            head.extend_from_slice(data);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let body_start = end + 4 - (head.len() - got);
            data = &buf[body_start..got];
            in_body = true;
        }
        n += data.len();
        sum = data
            .iter()
            .fold(sum, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64));
    }
    (n, sum)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_readers_of_a_20_mib_memcached_object_hold_a_few_chunks_each() {
    let mc = Memcached::start();
    let body = big_body();
    let expect = body
        .iter()
        .fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64));
    let origin = Origin::start(ranged_origin(body.clone(), true)).await;
    let node = Shellac::start(&stream_config(&origin, &mc, "1s", "5s")).await;
    assert_eq!(drain(node.addr, "/big").await, (BIG, expect));
    common::memcached::wait_for_heads(&[&mc], 1).await;
    assert_eq!(drain(node.addr, "/big").await, (BIG, expect), "warm");
    let baseline = vm_rss_kib(node.pid());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, pid) = (stop.clone(), node.pid());
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(vm_rss_kib(pid));
                std::thread::sleep(Duration::from_millis(10));
            }
            peak
        })
    };
    let readers: Vec<_> = (0..200)
        .map(|_| tokio::spawn(drain(node.addr, "/big")))
        .collect();
    for r in readers {
        assert_eq!(
            r.await.unwrap(),
            (BIG, expect),
            "every reader gets the object"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    assert_eq!(origin.count(), 1, "all from memcached");
    let grown_mib = peak.saturating_sub(baseline) / 1024;
    // Held whole, 200 readers would need 4000 MiB; two 256 KiB chunks each (the one being
    // sent and the next) plus the paced reads in flight is ~120 MiB.
    eprintln!("peak RSS grew {grown_mib} MiB for 200 readers");
    assert!(
        grown_mib < 200,
        "peak RSS grew {grown_mib} MiB for 200 readers"
    );
}

/// An origin that sends `body` over about `over`, in 40 pieces; counts its requests.
async fn trickling_origin(
    body: Arc<Vec<u8>>,
    over: Duration,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let (body, c) = (body.clone(), c.clone());
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                if !req.starts_with(b"GET ") {
                    return; // health checks and the like
                }
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nCache-Control: max-age=300\r\n\r\n",
                    body.len()
                );
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for piece in body.chunks(body.len().div_ceil(40)) {
                    if s.write_all(piece).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(over / 40).await;
                }
            });
        }
    });
    (addr, count)
}

/// Time to the first body byte, then the whole body's length and checksum.
async fn first_byte_then_drain(addr: SocketAddr, target: &str) -> (Duration, usize, u64) {
    let t = std::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0; 64 * 1024];
    let (mut head, mut n, mut sum, mut first) = (Vec::new(), 0usize, 0u64, None);
    loop {
        let got = s.read(&mut buf).await.unwrap();
        if got == 0 {
            break;
        }
        let mut data = &buf[..got];
        if first.is_none() {
            head.extend_from_slice(data);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            data = &buf[end + 4 - (head.len() - got)..got];
            if data.is_empty() {
                head.clear();
                head.extend_from_slice(b"\r\n\r\n"); // header done, body not yet
                continue;
            }
            first = Some(t.elapsed());
        }
        n += data.len();
        sum = data
            .iter()
            .fold(sum, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64));
    }
    (first.unwrap_or(t.elapsed()), n, sum)
}

#[tokio::test(flavor = "multi_thread")]
async fn coalesced_waiters_get_the_body_as_it_arrives_not_at_its_end() {
    let body = Arc::new(common::pseudo_random(4 << 20, 3));
    let expect = body
        .iter()
        .fold(0u64, |a, &b| a.wrapping_mul(31).wrapping_add(b as u64));
    let (origin, count) = trickling_origin(body.clone(), Duration::from_secs(2)).await;
    let conf = format!(
        "upstreams:\n  app:\n    backends: [\"{origin}\"]\nroutes:\n  - {{host: \"*\", path_prefix: /, upstream: app, cache: true}}\ncache:\n  lock_timeout: 10s\n  memory: {{size: 64MiB, max_object: 8MiB}}\n"
    );
    let node = Shellac::start(&conf).await;
    let readers: Vec<_> = (0..50)
        .map(|_| tokio::spawn(first_byte_then_drain(node.addr, "/slow")))
        .collect();
    let mut firsts = Vec::new();
    for r in readers {
        let (first, n, sum) = r.await.unwrap();
        assert_eq!(
            (n, sum),
            (body.len(), expect),
            "every waiter gets the whole body"
        );
        firsts.push(first);
    }
    firsts.sort();
    let median = firsts[firsts.len() / 2];
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one fill"
    );
    // Without streaming to waiters they would all wait for the 2 s fill to end.
    assert!(
        median < Duration::from_millis(1000),
        "median first byte after {median:?}"
    );
    eprintln!("median time to first body byte: {median:?}");
}

/// An origin whose first GET hangs for `fail_after` and is then dropped unanswered; later
/// GETs get a cacheable answer at once. Counts GETs.
async fn failing_first_origin(
    fail_after: Duration,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let c = c.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                if !req.starts_with(b"GET ") {
                    return;
                }
                if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                    tokio::time::sleep(fail_after).await;
                    return; // dropped unanswered
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=300\r\n\r\nok")
                    .await;
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread")]
async fn waiters_whose_clients_left_do_not_fetch_after_a_failed_fill() {
    let (origin, count) = failing_first_origin(Duration::from_secs(1)).await;
    let conf = format!(
        "upstreams:\n  app:\n    backends: [\"{origin}\"]\nroutes:\n  - {{host: \"*\", path_prefix: /, upstream: app, cache: true}}\ncache:\n  lock_timeout: 10s\n"
    );
    let node = Shellac::start(&conf).await;
    let clients: Vec<_> = (0..100)
        .map(|_| tokio::spawn(impatient(node.addr, "/gone", Duration::from_millis(300))))
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    // The fill fails at 1 s; every waiter is then elected writer in turn, for nobody.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no origin request for clients that left"
    );
    let r = node.get("/gone").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_length_response_over_max_object_reaches_the_writer_and_every_waiter() {
    let body = Arc::new(common::pseudo_random(3 << 20, 5));
    let b = body.clone();
    let origin = Origin::start(move |_| {
        Reply::ok(b.as_slice().to_vec())
            .header("Cache-Control", "max-age=300")
            .chunked()
            .delay(Duration::from_millis(500))
    })
    .await;
    let node = Shellac::start(&format!(
        "{}cache: {{lock_timeout: 10s, memory: {{size: 8MiB, max_object: 1MiB}}}}\n",
        simple_config(&[&origin], "", ", cache: true")
    ))
    .await;
    let clients: Vec<_> = (0..20)
        .map(|_| tokio::spawn(common::http::get(node.addr, "/chunked")))
        .collect();
    for c in clients {
        let r = c
            .await
            .unwrap()
            .expect("a complete response, not an aborted one");
        assert_eq!(r.status, 200);
        assert!(r.body == *body, "the whole body");
    }
    assert_eq!(origin.count(), 1, "the waiters shared the one fetch");
    // Not stored: the next request goes to the origin, and still gets all of it.
    let r = node.get("/chunked").await;
    assert!(r.body == *body);
    assert_eq!(origin.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_hits_read_each_purge_marker_once_per_purge_check_even_when_memcached_is_gone() {
    // A hit checks the host's invalidation markers, and a memory copy its URL's fleet purge
    // marker, when they are older than purge_check (500 ms here). One hit per due marker
    // reads it; the others go by the value it replaces. Before, every hit that found a marker
    // due read it too, and a read that failed left it due for every next hit: with memcached
    // gone (or slow under load), every hit on a hot object paid four memcached reads.
    let mc = Memcached::start();
    let origin = Origin::start(slow_origin_reply(Duration::ZERO)).await;
    let node = Shellac::start(&config(&origin, &[&mc], "16MiB")).await;
    assert_eq!(node.get("/hot").await.status, 200);
    common::memcached::wait_for_heads(&[&mc], 1).await;
    // A hit reads the markers for the first time, while memcached is still there.
    assert!(node
        .get("/hot")
        .await
        .header("cache-status")
        .unwrap()
        .contains("hit"));
    let mut mc = mc;
    mc.kill();
    let reads = || async {
        let mut n = 0.0;
        for op in ["invalidation", "purge_marker"] {
            n += node
                .metric_or_zero("shellac_memcached_errors_total", &[("op", op)])
                .await;
        }
        n
    };
    let before = reads().await;
    let end = tokio::time::Instant::now() + Duration::from_millis(1600);
    let got = common::load::sequential_clients(node.addr, "/hot", 20, move |_| {
        tokio::time::Instant::now() < end
    })
    .await;
    let answers = got.len();
    let hit = |r: &common::http::Response| {
        r.status == 200 && r.header("cache-status").is_some_and(|s| s.contains("hit"))
    };
    let bad = got.iter().filter(|r| !hit(r)).count();
    let spent = reads().await - before;
    assert_eq!(bad, 0, "every answer a hit from memory, memcached or not");
    assert!(answers > 100, "{answers} answers");
    // Four markers (all, host, host prefixes, URL), each due at most once per 500 ms: at most
    // four rounds in 1.6 s, and a round's four reads.
    assert!(
        spent <= 20.0,
        "{spent} failed marker reads for {answers} hits (one per due marker expected)"
    );
    assert_eq!(origin.count(), 1, "no hit went to the origin");
}
