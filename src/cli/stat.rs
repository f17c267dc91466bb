//! `shellac stat [--admin ADDR | -c FILE] [-1] [--json]`: varnishstat for Shellac. Reads the
//! admin listener's `/status.json` once a second and shows rates over the last interval next to
//! totals since the process started: requests, hit ratio overall and per tier, lookups by
//! result, origin fetches and latency, not-stored reasons, backends, memcached servers and
//! their breakers, memory-store fill and evictions. `-1` prints one view (two snapshots a second
//! apart) and exits; `--json` prints the view as JSON (one object per line when live).

use super::http_client;
use crate::admin::status::FROM_STORAGE;
use serde_json::{json, Map, Value};
use std::fmt::Write;
use std::time::Duration;

/// conf/shellac.yaml's `admin.listen`.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9091";

const USAGE: &str = "usage: shellac stat [--admin HOST:PORT | -c CONFIG] [-1] [--json]
  --admin ADDR  the admin listener (default 127.0.0.1:9091, conf/shellac.yaml's admin.listen)
  -c FILE       read admin.listen from a Shellac config file
  -1            print one view (two snapshots a second apart) and exit
  --json        print the view as JSON";

struct Args {
    admin: String,
    once: bool,
    json: bool,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        admin: DEFAULT_ADMIN.to_string(),
        once: false,
        json: false,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "-1" => a.once = true,
            "--json" => a.json = true,
            "--admin" | "-a" => a.admin = it.next().ok_or("--admin needs HOST:PORT")?.clone(),
            "-c" | "--conf" => {
                let path = it.next().ok_or("-c needs a config file")?;
                let config =
                    crate::config::Config::load(path).map_err(|e| format!("{path}: {e}"))?;
                a.admin = config.admin.listen.to_string();
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

/// Runs the subcommand; returns the process exit code.
pub fn main(args: &[String]) -> i32 {
    super::tool("stat", USAGE, args, parse, run)
}

/// One `/status.json` snapshot from the admin listener at `admin`.
pub fn fetch(admin: &str) -> Result<Value, String> {
    let r =
        http_client::get(admin, admin, "/status.json", Duration::from_secs(3)).map_err(|e| {
            format!("cannot read the admin listener at {e} (is Shellac running? see --admin)")
        })?;
    if r.status != 200 {
        return Err(format!(
            "{admin}/status.json answered {}: {}",
            r.status,
            String::from_utf8_lossy(&r.body).trim()
        ));
    }
    serde_json::from_slice(&r.body).map_err(|e| format!("{admin}/status.json: {e}"))
}

fn run(a: &Args) -> Result<(), String> {
    // SAFETY: isatty only inspects a file descriptor number.
    let tty = unsafe { libc::isatty(1) } == 1 && !a.json;
    let mut prev = fetch(&a.admin)?;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let cur = fetch(&a.admin)?;
        let v = view(&a.admin, &prev, &cur);
        if a.json {
            println!("{v}");
        } else {
            // Home and clear on a terminal; plain frames one after another otherwise.
            let clear = if tty && !a.once { "\x1b[H\x1b[2J" } else { "" };
            print!("{clear}{}", render(&v));
        }
        if a.once {
            return Ok(());
        }
        prev = cur;
    }
}

fn num(v: &Value, path: &[&str]) -> f64 {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_f64)
        .unwrap_or(0.0)
}

fn ratio(n: f64, d: f64) -> Value {
    if d > 0.0 {
        json!(n / d)
    } else {
        Value::Null
    }
}

/// Looked-up requests (pass excluded), answered from storage, and per tier, in `s`.
fn lookups(s: &Value) -> (f64, f64, Map<String, Value>) {
    let (mut all, mut hits, mut tiers) = (0.0, 0.0, Map::new());
    if let Some(results) = s["cache"]["lookups"].as_object() {
        for (result, by_tier) in results.iter().filter(|(r, _)| *r != "pass") {
            for (tier, n) in by_tier.as_object().into_iter().flatten() {
                let n = n.as_f64().unwrap_or(0.0);
                all += n;
                if FROM_STORAGE.contains(&result.as_str()) {
                    hits += n;
                    let t = tiers.entry(tier.clone()).or_insert(json!(0.0));
                    *t = json!(t.as_f64().unwrap_or(0.0) + n);
                }
            }
        }
    }
    (all, hits, tiers)
}

fn hit_ratios(all: f64, hits: f64, tiers: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    out.insert("all".into(), ratio(hits, all));
    for tier in ["memory", "memcached"] {
        let n = tiers.get(tier).and_then(Value::as_f64).unwrap_or(0.0);
        out.insert(tier.into(), ratio(n, all));
    }
    Value::Object(out)
}

/// The `q` quantile in seconds from the difference of two cumulative bucket lists.
fn quantile(q: f64, prev: &Value, cur: &Value) -> Value {
    let list = |v: &Value| -> Vec<(f64, f64)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|b| (b[0].as_f64().unwrap_or(0.0), b[1].as_f64().unwrap_or(0.0)))
            .collect()
    };
    let (p, c) = (list(prev), list(cur));
    let delta: Vec<(f64, f64)> = c
        .iter()
        .enumerate()
        .map(|(i, (le, n))| (*le, n - p.get(i).map_or(0.0, |x| x.1)))
        .collect();
    let total = delta.last().map_or(0.0, |d| d.1);
    if total <= 0.0 {
        return Value::Null;
    }
    let target = q * total;
    let (mut lo, mut below) = (0.0, 0.0);
    for (le, n) in delta {
        if n >= target {
            let within = if n > below {
                (target - below) / (n - below)
            } else {
                1.0
            };
            return json!(lo + (le - lo) * within);
        }
        (lo, below) = (le, n);
    }
    json!(lo) // beyond the last bucket: its bound is the best we can say
}

/// The computed view over the interval between two snapshots.
pub fn view(admin: &str, prev: &Value, cur: &Value) -> Value {
    let dt = (num(cur, &["time"]) - num(prev, &["time"])).max(0.001);
    let rate = |path: &[&str]| (num(cur, path) - num(prev, path)).max(0.0) / dt;
    let per_second = |key: &[&str]| -> Value {
        let mut out = Map::new();
        let at = |v: &Value| key.iter().try_fold(v, |v, k| v.get(k)).cloned();
        if let Some(Value::Object(m)) = at(cur) {
            let p = at(prev).unwrap_or(Value::Null);
            for (k, v) in m {
                let d =
                    v.as_f64().unwrap_or(0.0) - p.get(&k).and_then(Value::as_f64).unwrap_or(0.0);
                out.insert(k, json!(d.max(0.0) / dt));
            }
        }
        Value::Object(out)
    };
    let (all1, hits1, tiers1) = lookups(cur);
    let (all0, hits0, tiers0) = lookups(prev);
    let mut dtiers = tiers1.clone();
    for (k, v) in dtiers.iter_mut() {
        *v =
            json!(v.as_f64().unwrap_or(0.0) - tiers0.get(k).and_then(Value::as_f64).unwrap_or(0.0));
    }
    let mut results = Map::new();
    if let Some(m) = cur["cache"]["lookups"].as_object() {
        for result in m.keys() {
            let sum = |s: &Value| -> f64 {
                s["cache"]["lookups"][result]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(_, n)| n.as_f64())
                    .sum()
            };
            results.insert(result.clone(), json!((sum(cur) - sum(prev)).max(0.0) / dt));
        }
    }
    let mut not_stored: Vec<Value> = cur["cache"]["not_stored"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(reason, n)| {
            let total = n.as_f64().unwrap_or(0.0);
            let before = num(prev, &["cache", "not_stored", reason]);
            json!({"reason": reason, "total": total, "per_second": (total - before).max(0.0) / dt})
        })
        .collect();
    not_stored.sort_by(|a, b| {
        b["total"]
            .as_f64()
            .partial_cmp(&a["total"].as_f64())
            .unwrap()
    });

    let mut backends = Vec::new();
    for (up, list) in cur["upstreams"].as_object().into_iter().flatten() {
        for b in list.as_array().into_iter().flatten() {
            let addr = b["addr"].as_str().unwrap_or("");
            let before = prev["upstreams"][up]
                .as_array()
                .and_then(|l| l.iter().find(|x| x["addr"] == addr))
                .cloned()
                .unwrap_or(Value::Null);
            let d = |k: &str| (num(b, &[k]) - num(&before, &[k])).max(0.0);
            backends.push(json!({
                "upstream": up, "addr": addr, "healthy": b["healthy"],
                "requests_per_second": d("requests") / dt,
                "errors_per_second": d("errors") / dt,
                "latency_mean_seconds": ratio(d("latency_sum"), d("latency_count")),
            }));
        }
    }

    let memcached = cur["memcached"].as_object().map(|_| {
        let m = &cur["memcached"];
        let servers: Vec<Value> = m["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                let before = prev["memcached"]["servers"]
                    .as_array()
                    .and_then(|l| l.iter().find(|x| x["addr"] == s["addr"]))
                    .map_or(0.0, |x| num(x, &["errors"]));
                json!({"addr": s["addr"], "breaker": s["breaker"], "errors": s["errors"],
                       "errors_per_second": (num(s, &["errors"]) - before).max(0.0) / dt})
            })
            .collect();
        let lk = |s: &Value, r: &str| num(s, &["memcached", "lookups", r]);
        let l2_all = |s: &Value| -> f64 {
            s["memcached"]["lookups"].as_object().into_iter().flatten().filter_map(|(_, n)| n.as_f64()).sum()
        };
        json!({
            "servers": servers,
            "lookups_per_second": per_second(&["memcached", "lookups"]),
            "hit_ratio": {
                "interval": ratio(lk(cur, "hit") - lk(prev, "hit"), l2_all(cur) - l2_all(prev)),
                "since_start": ratio(lk(cur, "hit"), l2_all(cur)),
            },
            "exchange_mean_seconds": ratio(
                num(cur, &["memcached", "exchange", "sum"]) - num(prev, &["memcached", "exchange", "sum"]),
                num(cur, &["memcached", "exchange", "count"]) - num(prev, &["memcached", "exchange", "count"]),
            ),
        })
    });

    let used = num(cur, &["cache", "memory", "used"]);
    let limit = num(cur, &["cache", "memory", "limit"]);
    let lat = |k: &str, s: &Value| num(s, &["origin", "latency", k]);
    json!({
        "admin": admin,
        "interval_seconds": dt,
        "uptime_seconds": (num(cur, &["time"]) - num(cur, &["started"])).max(0.0),
        "draining": cur["draining"],
        "connections": cur["connections"],
        "requests_per_second": rate(&["requests", "total"]),
        "status_per_second": per_second(&["requests", "by_status"]),
        "hit_ratio": {
            "interval": hit_ratios(all1 - all0, hits1 - hits0, &dtiers),
            "since_start": hit_ratios(all1, hits1, &tiers1),
        },
        "lookups_per_second": Value::Object(results),
        "origin": {
            "fetches_per_second": rate(&["origin", "requests"]),
            "errors_per_second": rate(&["origin", "errors"]),
            "latency_mean_seconds": ratio(lat("sum", cur) - lat("sum", prev), lat("count", cur) - lat("count", prev)),
            "latency_p50_seconds": quantile(0.5, &prev["origin"]["latency"]["buckets"], &cur["origin"]["latency"]["buckets"]),
            "latency_p99_seconds": quantile(0.99, &prev["origin"]["latency"]["buckets"], &cur["origin"]["latency"]["buckets"]),
            "since_start_mean_seconds": ratio(lat("sum", cur), lat("count", cur)),
        },
        "not_stored": not_stored,
        "backends": backends,
        "memcached": memcached,
        "memory": {"used": used, "limit": limit, "fill": ratio(used, limit)},
        "evictions": num(cur, &["cache", "evictions"]),
        "evictions_per_second": rate(&["cache", "evictions"]),
        "purges": cur["cache"]["purges"],
    })
}

fn pct(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |r| format!("{:.1}%", r * 100.0))
}

fn ms(v: &Value) -> String {
    v.as_f64()
        .map_or("-".into(), |s| format!("{:.1}ms", s * 1000.0))
}

fn bytes(b: f64) -> String {
    match b {
        b if b >= 1024.0 * 1024.0 * 1024.0 => format!("{:.1} GiB", b / (1024.0 * 1024.0 * 1024.0)),
        b if b >= 1024.0 * 1024.0 => format!("{:.1} MiB", b / (1024.0 * 1024.0)),
        b => format!("{:.1} KiB", b / 1024.0),
    }
}

/// A count (a JSON number) without decimals.
fn int(v: &Value) -> String {
    format!("{:.0}", v.as_f64().unwrap_or(0.0))
}

fn rates(v: &Value) -> String {
    let mut s = String::new();
    for (k, r) in v.as_object().into_iter().flatten() {
        let _ = write!(s, "  {k} {:.1}", r.as_f64().unwrap_or(0.0));
    }
    s
}

/// The view as the terminal screen.
pub fn render(v: &Value) -> String {
    let mut s = String::new();
    let up = num(v, &["uptime_seconds"]) as u64;
    let _ = writeln!(
        s,
        "shellac stat  {}  up {}h{:02}m{:02}s  interval {:.1}s{}",
        v["admin"].as_str().unwrap_or(""),
        up / 3600,
        up / 60 % 60,
        up % 60,
        num(v, &["interval_seconds"]),
        if v["draining"] == true {
            "  DRAINING"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "requests      {:.1}/s {}   open connections {}",
        num(v, &["requests_per_second"]),
        rates(&v["status_per_second"]),
        int(&v["connections"])
    );
    for (label, key) in [
        ("hit ratio now", "interval"),
        ("since start  ", "since_start"),
    ] {
        let h = &v["hit_ratio"][key];
        let _ = writeln!(
            s,
            "{label} {}   memory {}   memcached {}",
            pct(&h["all"]),
            pct(&h["memory"]),
            pct(&h["memcached"])
        );
    }
    let _ = writeln!(s, "lookups/s    {}", rates(&v["lookups_per_second"]));
    let o = &v["origin"];
    let _ = writeln!(
        s,
        "origin        fetches {:.1}/s  errors {:.1}/s  latency mean {} p50 {} p99 {} (since start {})",
        num(o, &["fetches_per_second"]),
        num(o, &["errors_per_second"]),
        ms(&o["latency_mean_seconds"]),
        ms(&o["latency_p50_seconds"]),
        ms(&o["latency_p99_seconds"]),
        ms(&o["since_start_mean_seconds"])
    );
    let _ = write!(s, "not stored   ");
    for n in v["not_stored"].as_array().into_iter().flatten().take(6) {
        let _ = write!(
            s,
            "  {} {:.1}/s ({})",
            n["reason"].as_str().unwrap_or(""),
            num(n, &["per_second"]),
            int(&n["total"])
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "memory store  {} / {} ({})   evictions {:.1}/s ({})",
        bytes(num(v, &["memory", "used"])),
        bytes(num(v, &["memory", "limit"])),
        pct(&v["memory"]["fill"]),
        num(v, &["evictions_per_second"]),
        int(&v["evictions"])
    );
    let _ = writeln!(s, "backends");
    for b in v["backends"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "  {:<10} {:<22} {:<5} {:.1}/s  errors {:.1}/s  mean {}",
            b["upstream"].as_str().unwrap_or(""),
            b["addr"].as_str().unwrap_or(""),
            if b["healthy"] == true { "up" } else { "DOWN" },
            num(b, &["requests_per_second"]),
            num(b, &["errors_per_second"]),
            ms(&b["latency_mean_seconds"])
        );
    }
    if let Some(m) = v["memcached"].as_object() {
        let _ = writeln!(
            s,
            "memcached     hit ratio now {} since start {}   exchange mean {}  lookups/s{}",
            pct(&m["hit_ratio"]["interval"]),
            pct(&m["hit_ratio"]["since_start"]),
            ms(&m["exchange_mean_seconds"]),
            rates(&m["lookups_per_second"])
        );
        for srv in m["servers"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "  {:<22} breaker {:<9} errors {:.1}/s ({})",
                srv["addr"].as_str().unwrap_or(""),
                srv["breaker"].as_str().unwrap_or(""),
                num(srv, &["errors_per_second"]),
                int(&srv["errors"])
            );
        }
    }
    let mut purges = String::new();
    for (k, n) in v["purges"].as_object().into_iter().flatten() {
        let _ = write!(purges, "  {k} {}", int(n));
    }
    let _ = writeln!(
        s,
        "purges       {}",
        if purges.is_empty() { "  none" } else { &purges }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_bucket_deltas() {
        let prev = json!([[0.1, 10.0], [0.2, 10.0], [0.4, 10.0]]);
        let cur = json!([[0.1, 10.0], [0.2, 15.0], [0.4, 20.0]]);
        // 10 new samples: 5 in (0.1, 0.2], 5 in (0.2, 0.4].
        assert_eq!(quantile(0.5, &prev, &cur), json!(0.2));
        let p99 = quantile(0.99, &prev, &cur).as_f64().unwrap();
        assert!((p99 - 0.396).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(0.5, &cur, &cur), Value::Null);
    }
}
