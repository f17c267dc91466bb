//! `shellac warm (FILE | --sitemap PATH_OR_URL) [--concurrency N] [--rate N] [--proxy URL]`:
//! requests every URL through the proxy so the cache is warm after a deploy or a purge, then
//! says what happened to each, read from `Cache-Status`: stored, already cached, not stored
//! (by reason), errors. Exits 1 when any request failed (the proxy is down, say).

use super::http_client;
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// conf/shellac.yaml's public listener.
pub const DEFAULT_PROXY: &str = "http://127.0.0.1:8080";

const USAGE: &str =
    "usage: shellac warm (FILE | --sitemap PATH_OR_URL) [--concurrency N] [--rate N] [--proxy URL]
  FILE            one URL per line (http://host/path, or /path for the proxy's own host)
  --sitemap S     a sitemap.xml file or http:// URL (sitemap indexes are followed one level)
  --concurrency N requests in flight at once (default 8)
  --rate N        at most N requests per second in all (default: no limit)
  --proxy URL     the proxy's public listener (default http://127.0.0.1:8080)";

/// The most URLs one run takes: a bound on memory for a hostile or broken sitemap.
const MAX_URLS: usize = 1_000_000;

struct Args {
    source: Source,
    concurrency: usize,
    rate: Option<f64>,
    proxy: String,
}

enum Source {
    File(String),
    Sitemap(String),
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut source = None;
    let mut a = Args {
        source: Source::File(String::new()),
        concurrency: 8,
        rate: None,
        proxy: DEFAULT_PROXY.into(),
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--sitemap" => source = Some(Source::Sitemap(value("--sitemap")?)),
            "--concurrency" | "-j" => {
                a.concurrency = value("--concurrency")?
                    .parse()
                    .ok()
                    .filter(|n| (1..=1024).contains(n))
                    .ok_or("--concurrency takes 1 to 1024")?;
            }
            "--rate" => {
                a.rate = Some(
                    value("--rate")?
                        .parse()
                        .ok()
                        .filter(|r: &f64| *r > 0.0)
                        .ok_or("--rate takes a positive number of requests per second")?,
                );
            }
            "--proxy" => a.proxy = value("--proxy")?,
            "-h" | "--help" => return Err(String::new()),
            f if !f.starts_with('-') && source.is_none() => source = Some(Source::File(f.into())),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    a.source = source.ok_or("give a FILE of URLs or --sitemap")?;
    Ok(a)
}

/// A URL split for sending through the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    path: String,
}

/// `http://host[:port]/path?q` or `/path?q`; other schemes are refused.
fn target(url: &str, default_host: &str) -> Result<Target, String> {
    if url.starts_with('/') {
        return Ok(Target {
            host: default_host.into(),
            path: url.into(),
        });
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs and /paths can be warmed"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.is_empty() {
        return Err(format!("{url:?}: no host"));
    }
    Ok(Target {
        host: host.into(),
        path: path.into(),
    })
}

/// The `<loc>` values of a sitemap (or sitemap index), entities decoded.
fn locs(xml: &str) -> Vec<String> {
    xml.split("<loc>")
        .skip(1)
        .filter_map(|s| s.split("</loc>").next())
        .map(|s| {
            s.trim()
                .replace("&amp;", "&")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
        })
        .collect()
}

fn fetch_text(source: &str) -> Result<String, String> {
    if source.starts_with("http://") {
        let t = target(source, "")?;
        let r = http_client::get(&t.host, &t.host, &t.path, Duration::from_secs(30))?;
        if r.status != 200 {
            return Err(format!("{source}: HTTP {}", r.status));
        }
        return String::from_utf8(r.body).map_err(|_| format!("{source}: not UTF-8"));
    }
    std::fs::read_to_string(source).map_err(|e| format!("{source}: {e}"))
}

fn urls(source: &Source) -> Result<Vec<String>, String> {
    let mut out = match source {
        Source::File(path) => fetch_text(path)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(String::from)
            .collect(),
        Source::Sitemap(s) => {
            let xml = fetch_text(s)?;
            if xml.contains("<sitemapindex") {
                let mut all = Vec::new();
                for child in locs(&xml) {
                    all.extend(locs(&fetch_text(&child)?));
                }
                all
            } else {
                locs(&xml)
            }
        }
    };
    out.truncate(MAX_URLS);
    Ok(out)
}

/// What the proxy did with one URL, from its `Cache-Status`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Stored,
    AlreadyCached,
    NotStored(String),
    Error(String),
}

fn outcome(status: u16, cache_status: Option<&str>) -> Outcome {
    let Some(cs) = cache_status else {
        return Outcome::NotStored(format!("no Cache-Status (HTTP {status})"));
    };
    let params: Vec<&str> = cs.split(';').map(str::trim).collect();
    if params.contains(&"stored") {
        Outcome::Stored
    } else if params.contains(&"hit") || params.iter().any(|p| p.starts_with("fwd-status=304")) {
        Outcome::AlreadyCached
    } else if let Some(d) = params.iter().find_map(|p| p.strip_prefix("detail=")) {
        Outcome::NotStored(d.into())
    } else if let Some(f) = params.iter().find_map(|p| p.strip_prefix("fwd=")) {
        Outcome::NotStored(format!("fwd={f} (HTTP {status})"))
    } else {
        Outcome::NotStored(cs.into())
    }
}

/// Spaces requests at most `rate` a second across all workers.
struct Pacer {
    every: Option<Duration>,
    next: Mutex<Instant>,
}

impl Pacer {
    fn wait(&self) {
        let Some(every) = self.every else { return };
        let at = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let at = (*next).max(Instant::now());
            *next = at + every;
            at
        };
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
    }
}

/// Runs the subcommand; returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    let a = match parse(args) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return 0;
        }
        Err(e) => {
            eprintln!("shellac warm: {e}\n{USAGE}");
            return 2;
        }
    };
    let proxy = match target(&a.proxy, "") {
        Ok(t) if t.path == "/" => t.host,
        _ => {
            eprintln!("shellac warm: --proxy takes http://HOST:PORT");
            return 2;
        }
    };
    let list = match urls(&a.source) {
        Ok(l) if l.is_empty() => {
            eprintln!("shellac warm: no URLs found");
            return 1;
        }
        Ok(l) => l,
        Err(e) => {
            eprintln!("shellac warm: {e}");
            return 1;
        }
    };
    let started = Instant::now();
    let results = run(&list, &proxy, &a);
    report(&results, list.len(), started.elapsed())
}

fn run(list: &[String], proxy: &str, a: &Args) -> Vec<Outcome> {
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let results = Mutex::new(vec![Outcome::Error("not requested".into()); list.len()]);
    let pacer = Pacer {
        every: a.rate.map(|r| Duration::from_secs_f64(1.0 / r)),
        next: Mutex::new(Instant::now()),
    };
    // SAFETY: isatty only inspects a file descriptor number.
    let tty = unsafe { libc::isatty(2) } == 1;
    std::thread::scope(|s| {
        for _ in 0..a.concurrency.min(list.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(url) = list.get(i) else { break };
                pacer.wait();
                let o = match target(url, proxy) {
                    Ok(t) => {
                        match http_client::get(proxy, &t.host, &t.path, Duration::from_secs(30)) {
                            Ok(r) => outcome(r.status, r.header("cache-status")),
                            Err(e) => Outcome::Error(e),
                        }
                    }
                    Err(e) => Outcome::Error(e),
                };
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = o;
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                progress(n, list.len(), tty);
            });
        }
    });
    results.into_inner().unwrap_or_else(|e| e.into_inner())
}

fn progress(n: usize, total: usize, tty: bool) {
    let mut err = std::io::stderr().lock();
    if tty {
        let width = 40;
        let filled = n * width / total;
        let _ = write!(
            err,
            "\r[{}{}] {n}/{total}",
            "#".repeat(filled),
            " ".repeat(width - filled)
        );
        if n == total {
            let _ = writeln!(err);
        }
    } else if n % 100 == 0 || n == total {
        let _ = writeln!(err, "warm: {n}/{total}");
    }
}

fn report(results: &[Outcome], total: usize, took: Duration) -> i32 {
    let count = |f: fn(&Outcome) -> bool| results.iter().filter(|o| f(o)).count();
    let stored = count(|o| matches!(o, Outcome::Stored));
    let cached = count(|o| matches!(o, Outcome::AlreadyCached));
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
    for o in results {
        match o {
            Outcome::NotStored(r) => *reasons.entry(r).or_default() += 1,
            Outcome::Error(e) => *errors.entry(e).or_default() += 1,
            _ => {}
        }
    }
    println!("warmed {total} URLs in {:.1}s", took.as_secs_f64());
    println!("  stored:          {stored}");
    println!("  already cached:  {cached}");
    println!("  not stored:      {}", reasons.values().sum::<usize>());
    for (r, n) in &reasons {
        println!("    {r}: {n}");
    }
    let n_errors = errors.values().sum::<usize>();
    println!("  errors:          {n_errors}");
    for (e, n) in errors.iter().take(10) {
        println!("    {e}: {n}");
    }
    i32::from(n_errors > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sitemap_locs_and_targets() {
        let xml = "<urlset><url><loc> http://a.test/x?y=1&amp;z=2 </loc></url><url><loc>/p</loc></url></urlset>";
        let l = locs(xml);
        assert_eq!(l, ["http://a.test/x?y=1&z=2", "/p"]);
        assert_eq!(
            target(&l[0], "proxy").unwrap(),
            Target {
                host: "a.test".into(),
                path: "/x?y=1&z=2".into()
            }
        );
        assert_eq!(target("/p", "h:1").unwrap().host, "h:1");
        assert_eq!(target("http://b.test", "").unwrap().path, "/");
        assert!(target("https://a.test/", "").is_err());
    }

    #[test]
    fn outcomes_from_cache_status() {
        let o = |s| outcome(200, Some(s));
        assert_eq!(
            o("shellac; fwd=miss; fwd-status=200; stored"),
            Outcome::Stored
        );
        assert_eq!(o("shellac; hit; ttl=30"), Outcome::AlreadyCached);
        assert_eq!(
            o("shellac; fwd=miss; fwd-status=200; detail=private"),
            Outcome::NotStored("private".into())
        );
        assert_eq!(
            o("shellac; fwd=bypass"),
            Outcome::NotStored("fwd=bypass (HTTP 200)".into())
        );
    }
}
