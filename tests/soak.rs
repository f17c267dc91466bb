//! Soak scenarios of the hostile-input plan (shared/reference/hostile-input.md rows 5 and 10),
//! run by `scripts/soak`, not by `scripts/test`: each takes 20–60 s and hundreds of MiB of
//! traffic. Everything stays on 127.0.0.0/8. Each prints a pass/fail table, then fails if any
//! row failed.

mod common;

use common::http::{Client, Origin, Reply};
use common::{simple_config, Shellac};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

struct Table(Vec<(String, String, String, bool)>);

impl Table {
    fn row(&mut self, what: &str, measured: String, want: &str, pass: bool) {
        self.0.push((what.into(), measured, want.into(), pass));
    }

    /// Prints the table and fails the test if any row failed.
    fn finish(self, title: &str) {
        println!("\n{title}\n| result | criterion | measured | pass if |\n|---|---|---|---|");
        for (what, measured, want, pass) in &self.0 {
            let verdict = if *pass { "PASS" } else { "FAIL" };
            println!("| {verdict} | {what} | {measured} | {want} |");
        }
        let failed: Vec<&str> = self
            .0
            .iter()
            .filter(|r| !r.3)
            .map(|r| r.0.as_str())
            .collect();
        assert!(failed.is_empty(), "{title}: failed: {failed:?}");
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Samples VmRSS every 200 ms until `stop`; returns the peak in KiB.
fn watch_rss(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        peak
    })
}

/// Row 5: slowloris over many source addresses, a per-IP cap under attack, idle keep-alive
/// connections, and a probe client from 127.0.0.2 that must keep getting fast cached answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run with scripts/soak"]
async fn soak_slowloris_cap_and_idle_connections() {
    let slow_conns = env_or("SOAK_SLOWLORIS", 2000) as usize;
    let idle_conns = env_or("SOAK_IDLE", 1000) as usize;
    let (header_timeout, keepalive) = (Duration::from_secs(10), Duration::from_secs(5));
    let cap = 256;
    let origin = Origin::start(|_| Reply::ok("hot").header("Cache-Control", "max-age=600")).await;
    let shellac = Shellac::start(&format!(
        "{}limits: {{header_timeout: 10s, keepalive_timeout: 5s, max_connections_per_ip: {cap}}}\n",
        simple_config(&[&origin], "", ", cache: true")
    ))
    .await;
    let addr = shellac.addr;
    assert_eq!(shellac.get("/hot").await.status, 200);
    let baseline_rss = rss_kib(shellac.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let rss = watch_rss(shellac.pid(), stop.clone());
    let started = Instant::now();

    // Slowloris: 200 new connections a second, spread over 8 addresses (under the cap), one
    // header byte every 2 s each.
    let mut slow = Vec::new();
    for i in 0..slow_conns {
        let from = ip(&format!("127.0.1.{}", 1 + i % 8));
        slow.push(tokio::spawn(async move {
            let mut c = Client::connect_from(from, addr).await.ok()?;
            let opened = Instant::now();
            let header = b"GET /slow HTTP/1.1\r\nHost: soak\r\nX-Pad: ";
            for n in 0.. {
                let b = header.get(n).copied().unwrap_or(b'a');
                if c.send_raw(&[b]).await.is_err() || c.is_closed(Duration::from_secs(2)).await {
                    return Some(opened.elapsed());
                }
                if opened.elapsed() > Duration::from_secs(30) {
                    return None;
                }
            }
            None
        }));
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The cap: 300 silent connections from one address; 256 stay (until the header deadline).
    let mut capped = Vec::new();
    for _ in 0..300 {
        capped.push(tokio::spawn(async move {
            let mut c = Client::connect_from(ip("127.0.2.1"), addr).await.ok()?;
            let opened = Instant::now();
            c.is_closed(Duration::from_secs(20))
                .await
                .then(|| opened.elapsed())
        }));
    }
    // Idle keep-alive: one request each, then silence.
    let mut idle = Vec::new();
    for i in 0..idle_conns {
        let from = ip(&format!("127.0.3.{}", 1 + i % 8));
        idle.push(tokio::spawn(async move {
            let mut c = Client::connect_from(from, addr).await.ok()?;
            c.request("GET", "/hot", &[], b"").await.ok()?;
            let answered = Instant::now();
            c.is_closed(Duration::from_secs(15))
                .await
                .then(|| answered.elapsed())
        }));
    }
    // The probe: a cached URL from 127.0.0.2, four times a second, for the whole attack.
    let mut probes = Vec::new();
    let mut probe_failures = 0;
    let mut peak_open = 0.0f64;
    while started.elapsed() < Duration::from_secs(24) {
        let t = Instant::now();
        let ok = match Client::connect_from(ip("127.0.0.2"), addr).await {
            Ok(mut c) => c
                .request("GET", "/hot", &[], b"")
                .await
                .is_ok_and(|r| r.status == 200 && r.text() == "hot"),
            Err(_) => false,
        };
        if ok {
            probes.push(t.elapsed());
        } else {
            probe_failures += 1;
        }
        peak_open = peak_open.max(shellac.metric("shellac_open_connections", &[]).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut slow_closed = Vec::new();
    for t in slow {
        slow_closed.push(t.await.unwrap());
    }
    let mut cap_closed = Vec::new();
    for t in capped {
        cap_closed.push(t.await.unwrap());
    }
    let mut idle_closed = Vec::new();
    for t in idle {
        idle_closed.push(t.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let peak_rss = rss.await.unwrap();
    let mut settled = f64::NAN;
    for _ in 0..60 {
        settled = shellac.metric("shellac_open_connections", &[]).await;
        if settled == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut t = Table(Vec::new());
    probes.sort();
    let p99 = percentile(&probes, 0.99);
    t.row(
        "probe from 127.0.0.2 answered (cached URL)",
        format!("{} ok, {probe_failures} failed", probes.len()),
        "0 failed",
        probe_failures == 0 && !probes.is_empty(),
    );
    t.row(
        "probe latency p50 / p99 / max",
        format!(
            "{:?} / {p99:?} / {:?}",
            percentile(&probes, 0.5),
            probes.last().copied().unwrap_or_default()
        ),
        "p99 < 100ms",
        p99 < Duration::from_millis(100),
    );
    let timed: Vec<Duration> = slow_closed.iter().flatten().copied().collect();
    let (lo, hi) = (
        timed.iter().min().copied().unwrap_or_default(),
        timed.iter().max().copied().unwrap_or_default(),
    );
    t.row(
        "slowloris connections closed at the header deadline",
        format!(
            "{} of {slow_conns} closed, after {lo:.1?} … {hi:.1?}",
            timed.len()
        ),
        "all, within 10 s … 11 s",
        timed.len() == slow_conns
            && lo >= header_timeout - Duration::from_millis(500)
            && hi <= header_timeout + Duration::from_secs(1),
    );
    let refused = cap_closed
        .iter()
        .filter(|c| c.is_some_and(|d| d < Duration::from_millis(500)))
        .count();
    let held = cap_closed
        .iter()
        .filter(|c| c.is_some_and(|d| d >= header_timeout - Duration::from_millis(500)))
        .count();
    let refused_metric = shellac
        .metric(
            "shellac_connections_refused_total",
            &[("reason", "per_ip_cap")],
        )
        .await;
    t.row(
        "per-IP cap: 300 connections from 127.0.2.1",
        format!("{held} held to the deadline, {refused} closed at once, metric {refused_metric}"),
        "256 held, 44 closed at once, metric 44",
        held == cap && refused == 300 - cap && refused_metric == (300 - cap) as f64,
    );
    let idle_t: Vec<Duration> = idle_closed.iter().flatten().copied().collect();
    let (ilo, ihi) = (
        idle_t.iter().min().copied().unwrap_or_default(),
        idle_t.iter().max().copied().unwrap_or_default(),
    );
    t.row(
        "idle keep-alive connections closed at keepalive_timeout",
        format!(
            "{} of {idle_conns}, after {ilo:.1?} … {ihi:.1?}",
            idle_t.len()
        ),
        "all, within 4.5 s … 6.5 s",
        idle_t.len() == idle_conns
            && ilo >= keepalive - Duration::from_millis(500)
            && ihi <= keepalive + Duration::from_millis(1500),
    );
    let per_conn = (peak_rss.saturating_sub(baseline_rss)) as f64 / peak_open.max(1.0);
    t.row(
        "RSS growth per open connection",
        format!(
            "{per_conn:.1} KiB ({baseline_rss} → {peak_rss} KiB peak, {peak_open} open at peak)"
        ),
        "≤ 32 KiB",
        per_conn <= 32.0,
    );
    t.row(
        "shellac_open_connections back to baseline",
        format!("{settled}"),
        "0",
        settled == 0.0,
    );
    t.row(
        "no slow request reached the origin",
        format!("{}", origin.count_path("/slow")),
        "0",
        origin.count_path("/slow") == 0,
    );
    t.finish("row 5: slowloris, per-IP cap, idle keep-alive");
}

/// Row 10: a working set several times the memory store, with a hot set taking half the
/// traffic; the store's gauge and the process's RSS must stay bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "soak: run with scripts/soak"]
async fn soak_memory_bounded_under_a_large_working_set() {
    let size_mib = env_or("SOAK_CACHE_MIB", 128);
    let object = 64 * 1024;
    let urls = env_or("SOAK_URLS", size_mib * 1024 * 1024 * 6 / object as u64) as usize;
    let passes = env_or("SOAK_PASSES", 3) as usize;
    // The plan's hot set (500 of the 4096 objects a 256 MiB store holds) scaled to the store.
    let hot = ((size_mib as usize * 1024 * 1024 / object) / 8).max(1);
    let body = Arc::new(vec![b'm'; object]);
    let origin = Origin::start(move |_| {
        Reply::ok(body.as_slice().to_vec()).header("Cache-Control", "max-age=3600")
    })
    .await;
    let shellac = Shellac::start(&format!(
        "{}cache: {{memory: {{size: {size_mib}MiB, max_object: 1MiB}}}}\n",
        simple_config(&[&origin], "", ", cache: true")
    ))
    .await;
    let limit = size_mib as f64 * 1024.0 * 1024.0;
    assert_eq!(
        shellac
            .metric("shellac_cache_memory_limit_bytes", &[])
            .await,
        limit
    );
    // Warm the allocator and the connection pools before taking the baseline.
    for i in 0..20 {
        shellac.get(&format!("/warm/{i}")).await;
    }
    let baseline = rss_kib(shellac.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let rss = watch_rss(shellac.pid(), stop.clone());
    let gauge = {
        let (stop, admin) = (stop.clone(), shellac.admin);
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = common::http::get(admin, "/metrics").await {
                    samples.push(common::sum_metric(
                        &r.text(),
                        "shellac_cache_memory_bytes",
                        &[],
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            samples
        })
    };
    // 8 keep-alive workers; every other request goes to the hot set.
    let started = Instant::now();
    let workers = 8;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let addr = shellac.addr;
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(addr).await.unwrap();
            let (mut hot_hits, mut hot_total, mut errors, mut n) = (0usize, 0usize, 0usize, 0u64);
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1);
            for pass in 0..passes {
                for i in (w..urls).step_by(workers) {
                    for target in [format!("/cold/{i}"), {
                        x = common::xorshift(x);
                        format!("/hot/{}", x % hot as u64)
                    }] {
                        n += 1;
                        let r = match c.request("GET", &target, &[], b"").await {
                            Ok(r) => r,
                            Err(_) => {
                                errors += 1;
                                c = Client::connect(addr).await.unwrap();
                                continue;
                            }
                        };
                        if r.status != 200 || r.body.len() != object {
                            errors += 1;
                        }
                        if target.starts_with("/hot") && pass > 0 {
                            hot_total += 1;
                            if r.header("cache-status").is_some_and(|s| s.contains("hit")) {
                                hot_hits += 1;
                            }
                        }
                    }
                }
            }
            (hot_hits, hot_total, errors, n)
        }));
    }
    let (mut hot_hits, mut hot_total, mut errors, mut requests) = (0, 0, 0, 0);
    for t in tasks {
        let (a, b, c, d) = t.await.unwrap();
        hot_hits += a;
        hot_total += b;
        errors += c;
        requests += d;
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let peak = rss.await.unwrap();
    let samples = gauge.await.unwrap();
    let evictions = shellac.metric("shellac_cache_evictions_total", &[]).await;

    let mut t = Table(Vec::new());
    t.row(
        "load",
        format!(
            "{requests} requests in {took:.1?}, {urls} URLs × 64 KiB = {} MiB working set, {passes} passes, hot set {hot} URLs",
            urls * object / (1 << 20)
        ),
        "-",
        true,
    );
    t.row("errors", format!("{errors}"), "0", errors == 0);
    let max_gauge = samples.iter().copied().fold(0.0, f64::max);
    t.row(
        "shellac_cache_memory_bytes at every sample",
        format!(
            "max {:.1} MiB over {} samples",
            max_gauge / 1048576.0,
            samples.len()
        ),
        &format!("≤ {size_mib} MiB"),
        !samples.is_empty() && samples.iter().all(|s| *s <= limit),
    );
    let bound = baseline + size_mib * 1024 * 5 / 4;
    t.row(
        "RSS peak",
        format!("{} MiB (baseline {} MiB)", peak / 1024, baseline / 1024),
        &format!("≤ baseline + {size_mib} MiB × 1.25 = {} MiB", bound / 1024),
        peak <= bound,
    );
    t.row("evictions", format!("{evictions}"), "> 0", evictions > 0.0);
    let ratio = hot_hits as f64 / hot_total.max(1) as f64;
    t.row(
        "hot-set hit ratio after the first pass",
        format!("{:.1} % ({hot_hits}/{hot_total})", ratio * 100.0),
        "≥ 90 %",
        ratio >= 0.9,
    );
    t.finish("row 10: memory bounded under a large working set");
}
