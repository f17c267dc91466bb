//! Zero-downtime reload with real processes: `shellac reload` under steady load, slow requests
//! in flight across the hand-over, a broken config that must change nothing, and SIGHUP.

mod common;

use common::http::{Origin, Reply};
use common::load::{fetch, Load, Stats};
use common::{run, simple_config, Shellac};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

const SLOW: Duration = Duration::from_secs(3);
/// Longer than SLOW, so a slow request that starts just before the shutdown broadcast finishes.
const GRACE: u64 = 4;
/// Pingora's fixed time between SIGQUIT's hand-over and the old process's shutdown broadcast.
const CLOSE_TIMEOUT: u64 = 5;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i + seed as usize) % 26) as u8)
        .collect()
}

fn fast_body() -> Arc<Vec<u8>> {
    Arc::new(pattern(1024, 0))
}

fn slow_body() -> Arc<Vec<u8>> {
    Arc::new(pattern(64 * 1024, 7))
}

async fn origin() -> Origin {
    let (fast, slow) = (fast_body(), slow_body());
    Origin::start(move |r| match r.path() {
        "/slow" => Reply::ok(slow.as_slice()).delay(SLOW),
        _ => Reply::ok(fast.as_slice()),
    })
    .await
}

/// `n` slow requests: half on fresh connections, half on keep-alive connections that served a
/// fast request first, so they are reused connections with a request in flight.
fn slow_requests(
    addr: std::net::SocketAddr,
    n: usize,
    slow: &Arc<Stats>,
    warm: &Arc<Stats>,
) -> Vec<JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let (slow, warm) = (slow.clone(), warm.clone());
            tokio::spawn(async move {
                let mut conn = None;
                if i % 2 == 1 {
                    fetch(addr, &mut conn, "/fast", &fast_body(), &warm).await;
                }
                fetch(addr, &mut conn, "/slow", &slow_body(), &slow).await;
            })
        })
        .collect()
}

async fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    common::wait_for(what, Duration::from_secs(10), cond).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_reloads_under_load_drop_nothing() {
    let origin = origin().await;
    let config = simple_config(&[&origin], "", "") + "access_log: {target: \"{DIR}/access.log\"}\n";
    let mut shellac = Shellac::start_with_grace(&config, GRACE).await;
    let addr = shellac.addr;
    let load = Load::start(addr, 200, 4, "/fast", fast_body());
    let slow = Arc::new(Stats::default());
    let mut slow_tasks = Vec::new();
    let mut replaced = Vec::new();
    let started = Instant::now();
    let limit = Duration::from_secs(CLOSE_TIMEOUT + GRACE + 3);
    tokio::time::sleep(Duration::from_millis(500)).await;

    for round in 0..5 {
        // 20 slow requests in flight at the old process when the reload starts.
        let before = origin.count_path("/slow");
        slow_tasks.extend(slow_requests(addr, 20, &slow, &load.stats));
        wait_for("20 slow requests at the origin", || {
            origin.count_path("/slow") >= before + 20
        })
        .await;
        let old_pid = shellac.pid();
        let old = shellac.reload().await;
        eprintln!(
            "round {round}: pid {old_pid} -> {} in {:?}",
            shellac.pid(),
            old.since.elapsed()
        );
        // 10 more just before the old process stops accepting: those it accepts are in flight
        // during its shutdown broadcast and must finish within the grace period.
        let late_at = old.since + Duration::from_millis(CLOSE_TIMEOUT * 1000 - 400);
        tokio::time::sleep_until(late_at.into()).await;
        slow_tasks.extend(slow_requests(addr, 10, &slow, &load.stats));
        let next = old.since + Duration::from_secs(6);
        replaced.push((old_pid, old.watch(limit)));
        tokio::time::sleep_until(next.into()).await;
    }

    for (pid, old) in replaced {
        let exit = old.await.expect("watch task");
        eprintln!("old pid {pid}: exited {exit:?} after its reload started");
        let (after, code) =
            exit.unwrap_or_else(|| panic!("pid {pid} still running {limit:?} after its reload"));
        assert_eq!(code, Some(0), "pid {pid} exit status");
        assert!(
            after >= Duration::from_secs(CLOSE_TIMEOUT),
            "pid {pid} left too early: {after:?}"
        );
    }
    // Keep the load on the last process for a moment after the last hand-over completed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = load.stop().await;
    for t in slow_tasks {
        t.await.expect("slow request task");
    }
    let elapsed = started.elapsed();
    eprintln!(
        "load: {} ok, {} failed, {} retried (idle keep-alive close race) in {elapsed:?}; slow: {} ok, {} failed",
        stats.ok(),
        stats.failures().len(),
        stats.retried(),
        slow.ok(),
        slow.failures().len()
    );
    assert_eq!(stats.failures(), Vec::<String>::new());
    assert_eq!(slow.failures(), Vec::<String>::new());
    assert_eq!(
        slow.ok(),
        5 * 30,
        "every slow request completed with its full body"
    );
    // 200 req/s nominal; a loaded 2-core machine may fall behind, but not by half.
    let floor = (elapsed.as_secs_f64() * 100.0) as usize;
    assert!(
        stats.ok() > floor,
        "only {} requests in {elapsed:?}",
        stats.ok()
    );

    // Every answered request is in the access log exactly once, whichever process served it
    // (each flushes its queue before exiting).
    let mut ids: Vec<String> = stats.ids.lock().unwrap().clone();
    ids.extend(slow.ids.lock().unwrap().iter().cloned());
    let path = shellac.dir.join("access.log");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut counts;
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        counts = std::collections::HashMap::<String, usize>::new();
        for line in text.lines() {
            let id = line.rsplit(' ').next().unwrap_or("").to_string();
            *counts.entry(id).or_default() += 1;
        }
        if ids.iter().all(|id| counts.contains_key(id)) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let missing: Vec<&String> = ids.iter().filter(|id| !counts.contains_key(*id)).collect();
    let twice: Vec<&String> = ids.iter().filter(|id| counts.get(*id) > Some(&1)).collect();
    eprintln!(
        "access log: {} lines for {} answered requests",
        counts.values().sum::<usize>(),
        ids.len()
    );
    assert!(missing.is_empty(), "not logged: {missing:?}");
    assert!(twice.is_empty(), "logged twice: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broken_config_is_reported_and_changes_nothing() {
    let origin = origin().await;
    let config = simple_config(&[&origin], "", "");
    let mut shellac = Shellac::start(&config).await;
    let pid = shellac.pid();
    let load = Load::start(shellac.addr, 100, 2, "/fast", fast_body());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let good = std::fs::read_to_string(&shellac.config_path).unwrap();
    let cases = [
        (
            good.replace("upstream: app}", "upstream: nope}"),
            "routes[0].upstream",
        ),
        (format!("{good}bogus_key: 1\n"), "unknown field `bogus_key`"),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let broken = shellac.dir.join(format!("broken{i}.yaml"));
        std::fs::write(&broken, text).unwrap();
        let path = broken.to_str().unwrap().to_string();
        let (code, out) = tokio::task::spawn_blocking(move || run(&["reload", "-c", &path]))
            .await
            .unwrap();
        assert_eq!(code, 1, "{out}");
        assert!(out.contains(expected), "{out}");
    }
    assert!(shellac.is_running());
    assert_eq!(
        std::fs::read_to_string(shellac.pid_file()).unwrap().trim(),
        pid.to_string()
    );
    assert!(
        !shellac.log().contains("SIGQUIT received"),
        "{}",
        shellac.log()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(shellac.is_running());
    let stats = load.stop().await;
    eprintln!(
        "load during broken reloads: {} ok, {} failed, {} retried",
        stats.ok(),
        stats.failures().len(),
        stats.retried()
    );
    assert_eq!(stats.failures(), Vec::<String>::new());
    assert!(stats.ok() > 100);
    assert_eq!(stats.retried(), 0, "nothing closed a connection");

    // And the good file still reloads afterwards.
    let mut old = shellac.reload().await;
    assert_ne!(shellac.pid(), pid);
    assert_eq!(shellac.get("/fast").await.body, *fast_body());
    let exit = old
        .exited_within(Duration::from_secs(CLOSE_TIMEOUT + 1 + 3))
        .await;
    assert!(matches!(exit, Some((_, Some(0)))), "{exit:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_without_a_running_process_starts_nothing() {
    let origin = origin().await;
    let dir = common::temp_dir();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let path = dir.join("shellac.yaml");
    let yaml = Shellac::render(&simple_config(&[&origin], "", ""), &dir, addr, admin, 1);
    std::fs::write(&path, yaml).unwrap();
    let (code, out) = run(&["reload", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("no running shellac found"), "{out}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_is_logged_and_ignored() {
    let origin = origin().await;
    let mut shellac = Shellac::start(&simple_config(&[&origin], "", "")).await;
    shellac.signal(libc::SIGHUP);
    wait_for("the SIGHUP log line", || {
        shellac
            .log()
            .contains("SIGHUP ignored: reload with `shellac reload -c")
    })
    .await;
    assert!(shellac.is_running());
    assert_eq!(shellac.get("/fast").await.status, 200);
}

/// The cost of a reload to the cache, measured: the new process starts with an empty memory
/// tier. With memcached configured it refills from there (no origin requests: the dip is one
/// memcached round trip per object); memory-only, every object is fetched from the origin once.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_keeps_the_shared_tier_and_refills_memory_from_it() {
    let mc = common::memcached::Memcached::start();
    let origin = Origin::start(|r| {
        Reply::ok(format!("object {}", r.path())).header("Cache-Control", "max-age=600")
    })
    .await;
    let config = format!(
        "{}cache:\n  memcached: {{servers: [\"{}\"], timeout: 300ms}}\n",
        simple_config(&[&origin], "", ", cache: true"),
        mc.addr
    );
    let mut node = Shellac::start(&config).await;
    const N: usize = 100;
    for i in 0..N {
        node.get(&format!("/o/{i}")).await;
    }
    common::memcached::wait_for_heads(&[&mc], N).await; // memcached commits follow answers
    assert_eq!(origin.count(), N);
    let mut old = node.reload().await;
    // Both processes accept during Pingora's 5 s hand-over; measure the new one alone.
    assert!(old.exited_within(Duration::from_secs(15)).await.is_some());
    for i in 0..N {
        let r = node.get(&format!("/o/{i}")).await;
        assert_eq!(r.text(), format!("object /o/{i}"));
    }
    assert_eq!(
        origin.count(),
        N,
        "no object went back to the origin after the reload"
    );
    let l2_hits = new_process_metric(&node, &[("result", "hit")]).await;
    assert_eq!(
        l2_hits, N as f64,
        "first pass after reload: every object from memcached"
    );
    for i in 0..N {
        node.get(&format!("/o/{i}")).await;
    }
    let l2_after = new_process_metric(&node, &[]).await;
    assert_eq!(
        l2_after, N as f64,
        "second pass: all from the refilled memory tier"
    );
}

/// `shellac_cache_l2_lookups_total` from the new process: for 5 s after a reload both processes
/// accept on the admin socket, and the draining one answers 503.
async fn new_process_metric(node: &Shellac, labels: &[(&str, &str)]) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = common::http::get(node.admin, "/metrics").await.unwrap();
        if r.status == 200 {
            return common::sum_metric(&r.text(), "shellac_cache_l2_lookups_total", labels);
        }
        assert!(Instant::now() < deadline, "no 200 from /metrics");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
