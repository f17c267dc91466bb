//! The status page at `GET /` on the admin listener, in a real headless Chromium (the OS's
//! `chromium` package; scripts/test installs it, and a missing browser fails the test): after
//! traffic its numbers, charts and tables show data, and a screenshot lands in the test's
//! directory.

mod common;

use common::http::{get, Origin, Reply};
use common::memcached::Memcached;
use common::{simple_config, Shellac};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `chromium --headless … extra… url`, returning stdout. Virtual time runs the page's polling
/// for 5 s of page time without waiting 5 s.
fn chromium(dir: &Path, extra: &[&str], url: &str) -> String {
    let profile = dir.join(format!("chromium-profile-{}", extra.len()));
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("chromium not found: apt-get install chromium (scripts/test does)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text of the element with `id` (no nested tags), from a dumped DOM.
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let open = format!("id=\"{id}\"");
    let at = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    let end = rest[start..].find('<').unwrap();
    &rest[start..start + end]
}

/// The dumped DOM of the element with `id`, up to its closing `</tag>`.
fn element<'a>(dom: &'a str, id: &str, tag: &str) -> &'a str {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap();
    let end = dom[at..].find(&format!("</{tag}>")).unwrap();
    &dom[at..at + end]
}

#[tokio::test(flavor = "multi_thread")]
async fn status_page_shows_live_data_in_headless_chromium() {
    let mc = Memcached::start();
    let origin = Origin::start(|req| {
        if req.path() == "/nostore" {
            Reply::ok("n").header("Cache-Control", "no-store")
        } else {
            Reply::ok("cached body").header("Cache-Control", "max-age=300")
        }
    })
    .await;
    let config = format!(
        "{}cache:\n  memory: {{size: 16MiB}}\n  memcached: {{servers: [\"{}\"], timeout: 500ms}}\n",
        simple_config(&[&origin], "", ", cache: true"),
        mc.addr
    );
    let shellac = Shellac::start(&config).await;

    let page = get(shellac.admin, "/").await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    let html = page.text();
    for external in ["src=\"http", "href=\"http", "@import", "<link"] {
        assert!(
            !html.contains(external),
            "the page loads no assets: {external}"
        );
    }

    // Steady traffic while the browser polls: hits from memory, some misses and no-stores.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic: Vec<_> = (0..4u64)
        .map(|worker| {
            tokio::spawn({
                let (stop, addr) = (stop.clone(), shellac.addr);
                async move {
                    let mut i = worker;
                    while !stop.load(Ordering::Relaxed) {
                        let path = match i % 10 {
                            0 => "/nostore".to_string(),
                            9 => format!("/new/{i}"),
                            n => format!("/p/{}", n % 3),
                        };
                        let _ = get(addr, &path).await;
                        i += 4;
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while shellac.metric("shellac_requests_total", &[]).await < 50.0 {
        assert!(Instant::now() < deadline, "traffic did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let dir = shellac.dir.clone();
    let url = format!("http://{}/", shellac.admin);
    // Chromium runs the page on virtual time, so its polls can land within one second of the
    // server's clock and show no interval yet: load the page again until the tiles have data
    // (the fact the test waits for), a few times at most.
    let mut dom = String::new();
    for _ in 0..5 {
        dom = tokio::task::spawn_blocking({
            let (dir, url) = (dir.clone(), url.clone());
            move || chromium(&dir, &["--dump-dom"], &url)
        })
        .await
        .unwrap();
        let ready = ["hit-all", "hit-memory", "hit-since", "mem-fill"]
            .iter()
            .all(|id| text_of(&dom, id).ends_with('%'));
        if ready {
            break;
        }
    }
    let shot = dir.join("status.png");
    tokio::task::spawn_blocking({
        let (shot, url) = (shot.clone(), url.clone());
        move || {
            chromium(
                &dir,
                &[
                    "--hide-scrollbars",
                    "--window-size=1280,1000",
                    &format!("--screenshot={}", shot.display()),
                ],
                &url,
            )
        }
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for t in traffic {
        t.await.unwrap();
    }

    let rate: f64 = text_of(&dom, "req-rate").parse().expect(&dom);
    assert!(rate > 0.0, "requests/s: {rate}\n{dom}");
    for id in ["hit-all", "hit-memory", "hit-since", "mem-fill"] {
        assert!(
            text_of(&dom, id).ends_with('%'),
            "#{id}: {}",
            text_of(&dom, id)
        );
    }
    let since: f64 = text_of(&dom, "hit-since")
        .trim_end_matches('%')
        .parse()
        .unwrap();
    assert!(since > 30.0, "most traffic hits: {since}%");
    assert!(text_of(&dom, "origin-latency").ends_with(" ms"));

    let chart = element(&dom, "chart-requests", "svg");
    let points: usize = chart
        .split("data-points=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(points >= 2, "{chart}");
    // Some point of the client requests/s line is above the chart's zero line.
    let line = chart.split("data-series=\"requests\"").nth(1).unwrap();
    let coords = line
        .split("points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let ys: Vec<f64> = coords
        .split(' ')
        .filter_map(|p| p.split(',').nth(1)?.parse().ok())
        .collect();
    // The chart is 150 high with a 16 px bottom margin: y = 134 is zero.
    let zero = 134.0 - 0.5;
    assert!(
        ys.iter().any(|y| *y < zero),
        "requests/s line is flat: {chart}"
    );
    let hits = element(&dom, "chart-hits", "svg");
    let memory_line = hits.split("data-series=\"memory\"").nth(1).unwrap();
    let coords = memory_line.split("points=\"").nth(1).unwrap();
    assert!(
        coords.contains(','),
        "the memory hit-ratio line has points: {hits}"
    );

    let backends = element(&dom, "backends", "table");
    assert!(backends.contains(&origin.addr.to_string()), "{backends}");
    assert!(backends.contains("class=\"up\""), "{backends}");
    let servers = element(&dom, "memcached", "table");
    assert!(servers.contains(&mc.addr.to_string()), "{servers}");
    assert!(servers.contains("closed"), "{servers}");
    assert!(element(&dom, "not-stored", "table").contains("no-store"));

    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    if let Ok(to) = std::env::var("SHELLAC_STATUS_SCREENSHOT") {
        std::fs::copy(&shot, to).unwrap();
    }
}
