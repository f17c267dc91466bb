//! `GET /status.json`: the counters an operator looks at first, summarised from the Prometheus
//! registry (so it can never disagree with `/metrics`). Values are totals since the process
//! started; `shellac stat` and the status page turn two snapshots into rates.
//!
//! Shape (every number is a JSON number; maps are keyed by label value):
//! `time`, `started`, `draining`, `connections`, `requests{total,by_status,by_route}`,
//! `cache{lookups{result:{tier:n}},hits_by_tier,not_stored,served_bytes,memory{used,limit},
//! evictions,purges}`, `origin{requests,errors,latency{count,sum,buckets}}`,
//! `upstreams{name:{backends:[{addr,healthy,requests,errors,latency_count,latency_sum}]}}`,
//! `memcached` (null without a memcached tier) `{servers:[{addr,breaker,errors}],lookups,
//! exchange{count,sum}}`, `fleet{leases,fetches_avoided}`.

use prometheus::proto::{Metric, MetricFamily};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Results that were answered from storage (the hit ratio's numerator).
pub const FROM_STORAGE: [&str; 4] = ["hit", "coalesced", "stale", "revalidated"];

/// The snapshot, from the process-wide registry.
pub fn snapshot() -> Value {
    let families = prometheus::gather();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    summarise(&Families(&families), now, crate::reload::draining())
}

/// Lookup by metric name over one `gather()`.
struct Families<'a>(&'a [MetricFamily]);

impl Families<'_> {
    fn metrics(&self, name: &str) -> &[Metric] {
        self.0
            .iter()
            .find(|f| f.name() == name)
            .map_or(&[], |f| f.get_metric())
    }

    fn total(&self, name: &str) -> f64 {
        self.metrics(name).iter().map(value).sum()
    }

    /// Sum of `name` grouped by the values of `labels` (joined by a space).
    fn by(&self, name: &str, labels: &[&str]) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for m in self.metrics(name) {
            let key: Vec<&str> = labels.iter().map(|l| label(m, l)).collect();
            *out.entry(key.join(" ")).or_insert(0.0) += value(m);
        }
        out
    }

    fn exists(&self, name: &str) -> bool {
        self.0.iter().any(|f| f.name() == name)
    }
}

fn label<'a>(m: &'a Metric, name: &str) -> &'a str {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map_or("", |l| l.value())
}

/// A counter's or gauge's value; a histogram's sample count. A sample carries only its own
/// kind's field and the others are zero, so the sum is that one value.
fn value(m: &Metric) -> f64 {
    m.get_counter().get_value()
        + m.get_gauge().get_value()
        + m.get_histogram().get_sample_count() as f64
}

/// count, sum and cumulative buckets `[upper_bound, count]` of the matching histograms, merged.
fn histogram<'a>(ms: impl Iterator<Item = &'a Metric>) -> Value {
    let (mut count, mut sum) = (0u64, 0.0);
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for m in ms {
        let h = m.get_histogram();
        count += h.get_sample_count();
        sum += h.get_sample_sum();
        for (i, b) in h.get_bucket().iter().enumerate() {
            match buckets.get_mut(i) {
                Some(slot) => slot.1 += b.cumulative_count(),
                None => buckets.push((b.upper_bound(), b.cumulative_count())),
            }
        }
    }
    json!({"count": count, "sum": sum, "buckets": buckets})
}

fn map(m: BTreeMap<String, f64>) -> Value {
    Value::Object(m.into_iter().map(|(k, v)| (k, json!(v))).collect())
}

fn summarise(f: &Families, now: f64, draining: bool) -> Value {
    let mut lookups: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut hits_by_tier: BTreeMap<String, f64> = BTreeMap::new();
    for m in f.metrics("shellac_cache_lookups_total") {
        let (result, tier) = (label(m, "result"), label(m, "tier"));
        lookups
            .entry(result.to_string())
            .or_default()
            .insert(tier.to_string(), json!(value(m)));
        if FROM_STORAGE.contains(&result) {
            *hits_by_tier.entry(tier.to_string()).or_insert(0.0) += value(m);
        }
    }

    let mut upstreams: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for m in f.metrics("shellac_backend_healthy") {
        let (up, addr) = (label(m, "upstream"), label(m, "backend"));
        let of = |name: &str, class: Option<&str>| -> f64 {
            f.metrics(name)
                .iter()
                .filter(|x| label(x, "upstream") == up && label(x, "backend") == addr)
                .filter(|x| class.is_none_or(|c| label(x, "status_class") == c))
                .map(value)
                .sum()
        };
        let duration = f
            .metrics("shellac_upstream_response_seconds")
            .iter()
            .filter(|x| label(x, "upstream") == up && label(x, "backend") == addr);
        let latency = histogram(duration);
        upstreams.entry(up.to_string()).or_default().push(json!({
            "addr": addr,
            "healthy": value(m) >= 1.0,
            "requests": of("shellac_upstream_requests_total", None),
            "errors": of("shellac_upstream_requests_total", Some("error"))
                + of("shellac_upstream_requests_total", Some("5xx")),
            "latency_count": latency["count"],
            "latency_sum": latency["sum"],
        }));
    }

    let memcached = f.exists("shellac_cache_l2_lookups_total").then(|| {
        let errors = f.by("shellac_memcached_errors_total", &["server"]);
        let servers: Vec<Value> = f
            .metrics("shellac_memcached_breaker_state")
            .iter()
            .map(|m| {
                let addr = label(m, "server");
                let breaker = match value(m) as i64 {
                    0 => "closed",
                    1 => "open",
                    _ => "half-open",
                };
                json!({"addr": addr, "breaker": breaker, "errors": errors.get(addr).copied().unwrap_or(0.0)})
            })
            .collect();
        let exchange = histogram(f.metrics("shellac_memcached_exchange_seconds").iter());
        json!({
            "servers": servers,
            "lookups": map(f.by("shellac_cache_l2_lookups_total", &["result"])),
            "exchange": {"count": exchange["count"], "sum": exchange["sum"]},
            "read_bytes": f.total("shellac_memcached_read_bytes_total"),
            "written_bytes": f.total("shellac_memcached_written_bytes_total"),
        })
    });

    json!({
        "time": now,
        "started": f.total("shellac_start_time_seconds"),
        "draining": draining,
        "connections": f.total("shellac_open_connections"),
        "requests": {
            "total": f.total("shellac_requests_total"),
            "by_status": map(f.by("shellac_requests_total", &["status_class"])),
            "by_route": map(f.by("shellac_requests_total", &["route"])),
        },
        "cache": {
            "lookups": lookups,
            "hits_by_tier": map(hits_by_tier),
            "not_stored": map(f.by("shellac_cache_not_stored_total", &["reason"])),
            "served_bytes": f.total("shellac_cache_served_bytes_total"),
            "memory": {
                "used": f.total("shellac_cache_memory_bytes"),
                "limit": f.total("shellac_cache_memory_limit_bytes"),
            },
            "evictions": f.total("shellac_cache_evictions_total"),
            "purges": map(f.by("shellac_cache_purges_total", &["result"])),
        },
        "origin": {
            "requests": f.total("shellac_upstream_requests_total"),
            "errors": f.by("shellac_upstream_requests_total", &["status_class"]).get("error").copied().unwrap_or(0.0),
            "latency": histogram(f.metrics("shellac_upstream_response_seconds").iter()),
        },
        "upstreams": upstreams,
        "memcached": memcached,
        "fleet": {
            "leases": map(f.by("shellac_fleet_leases_total", &["result"])),
            "fetches_avoided": f.total("shellac_fleet_fetches_avoided_total"),
        },
    })
}
