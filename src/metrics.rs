//! Every metric Shellac exports, declared here and nowhere else. Labels take values from closed
//! sets (route names and backends from the config, status classes, enum reasons), so series
//! cardinality is fixed by the config, never by traffic.

use prometheus::{
    exponential_buckets, register_histogram, register_histogram_vec, register_int_counter,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec, Histogram, HistogramVec,
    IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use std::sync::LazyLock;

fn latency_buckets() -> Vec<f64> {
    // 100 µs … ~52 s: hits sit at the low end, slow origins at the high end.
    exponential_buckets(0.0001, 2.0, 20).unwrap()
}

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_requests_total",
        "Client requests answered, by route and status class (1xx..5xx; `none` when no response could be sent)",
        &["route", "status_class"]
    )
    .unwrap()
});

pub static REQUEST_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "shellac_request_duration_seconds",
        "Time from the request header to the last response byte, by route",
        &["route"],
        latency_buckets()
    )
    .unwrap()
});

pub static UPSTREAM_REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_upstream_requests_total",
        "Requests sent to a backend, by upstream group, backend and status class (`error` when no response header arrived)",
        &["upstream", "backend", "status_class"]
    )
    .unwrap()
});

pub static UPSTREAM_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "shellac_upstream_response_seconds",
        "Time from choosing a backend to the end of its response, by upstream group and backend",
        &["upstream", "backend"],
        latency_buckets()
    )
    .unwrap()
});

pub static BACKEND_HEALTHY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "shellac_backend_healthy",
        "1 while a backend is in rotation, 0 while its health check fails",
        &["upstream", "backend"]
    )
    .unwrap()
});

pub static OPEN_CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "shellac_open_connections",
        "Client connections currently open on the public listeners"
    )
    .unwrap()
});

pub static CONNECTIONS_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_connections_refused_total",
        "Client connections closed on accept, by reason: `per_ip_cap` (the client IP already holds limits.max_connections_per_ip); on proxy_protocol listeners `proxy_protocol_invalid` (no valid PROXY header, e.g. bare HTTP), `proxy_protocol_timeout` (header not complete within limits.header_timeout), `proxy_protocol_closed` (closed before a header)",
        &["reason"]
    )
    .unwrap()
});

pub static HEADER_TIMEOUTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "shellac_header_timeouts_total",
        "Client connections closed because a request header was not complete within limits.header_timeout"
    )
    .unwrap()
});

pub static ACCESS_LOG_LINES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_access_log_lines_total",
        "Access-log lines by result: `written`, `dropped` (pending lines full: the disk is too slow), `failed` (write error)",
        &["result"]
    )
    .unwrap()
});

pub static START_TIME: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "shellac_start_time_seconds",
        "Unix time this process started; changes on every reload, which is when counters restart at 0"
    )
    .unwrap()
});

/// The label for a status code's class; `none` for 0 (no response written).
pub fn status_class(code: u16) -> &'static str {
    match code {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "none",
    }
}

/// Make every declared metric exist at start-up, so a scrape shows all names even before traffic.
pub fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&REQUEST_DURATION);
    LazyLock::force(&UPSTREAM_REQUESTS);
    LazyLock::force(&UPSTREAM_DURATION);
    LazyLock::force(&BACKEND_HEALTHY);
    LazyLock::force(&OPEN_CONNECTIONS);
    for reason in [
        "per_ip_cap",
        "proxy_protocol_invalid",
        "proxy_protocol_timeout",
        "proxy_protocol_closed",
    ] {
        CONNECTIONS_REFUSED.with_label_values(&[reason]);
    }
    LazyLock::force(&HEADER_TIMEOUTS);
    LazyLock::force(&CACHE_LOOKUPS);
    LazyLock::force(&CACHE_LOOKUP_CHILDREN);
    LazyLock::force(&CACHE_SERVED_BYTES);
    LazyLock::force(&CACHE_MEMORY_USED);
    LazyLock::force(&CACHE_MEMORY_LIMIT);
    LazyLock::force(&CACHE_EVICTIONS);
    LazyLock::force(&CACHE_NOT_STORED);
    LazyLock::force(&CACHE_PURGES);
    for result in ["hit", "stored", "combined", "completed", "failed"] {
        CACHE_PARTIALS.with_label_values(&[result]);
    }
    for kind in ["url", "tag", "host", "prefix", "all"] {
        for mode in ["hard", "soft"] {
            CACHE_INVALIDATIONS.with_label_values(&[kind, mode]);
        }
    }
    for result in ["purged", "stale"] {
        CACHE_INVALIDATED_ON_LOOKUP.with_label_values(&[result]);
    }
    LazyLock::force(&PURGE_API_ERRORS);
    for result in ["written", "dropped", "failed"] {
        ACCESS_LOG_LINES.with_label_values(&[result]);
    }
    START_TIME.set(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64),
    );
}

// --- cache ---------------------------------------------------------------------------------

pub static CACHE_LOOKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_cache_lookups_total",
        "Requests on caching routes by outcome (hit, coalesced: hit after waiting for another request's fetch, stale: served stale, revalidated: 304 from origin, miss, pass: not looked up) and by the tier that answered (memory, memcached; none for miss and pass)",
        &["result", "tier"]
    )
    .unwrap()
});

/// The children of [`CACHE_LOOKUPS`], resolved once: one is counted on every request of a
/// caching route, where `with_label_values` would hash both labels, take the vector's lock and
/// write a reference count that every core shares.
static CACHE_LOOKUP_CHILDREN: LazyLock<Vec<IntCounter>> = LazyLock::new(|| {
    LOOKUP_RESULTS
        .iter()
        .flat_map(|r| {
            LOOKUP_TIERS
                .iter()
                .map(move |t| CACHE_LOOKUPS.with_label_values(&[r, t]))
        })
        .collect()
});
const LOOKUP_RESULTS: [&str; 6] = ["hit", "coalesced", "stale", "revalidated", "miss", "pass"];
const LOOKUP_TIERS: [&str; 3] = ["memory", "memcached", "none"];

/// `shellac_cache_lookups_total{result, tier}`; a label outside the lists above is counted
/// through the vector.
pub fn count_lookup(result: &str, tier: &str) {
    let r = LOOKUP_RESULTS.iter().position(|l| *l == result);
    let t = LOOKUP_TIERS.iter().position(|l| *l == tier);
    match (r, t) {
        (Some(r), Some(t)) => CACHE_LOOKUP_CHILDREN[r * LOOKUP_TIERS.len() + t].inc(),
        _ => CACHE_LOOKUPS.with_label_values(&[result, tier]).inc(),
    }
}

pub static CACHE_SERVED_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "shellac_cache_served_bytes_total",
        "Body bytes sent to clients from the cache"
    )
    .unwrap()
});

pub static CACHE_MEMORY_USED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "shellac_cache_memory_bytes",
        "Bytes held by the memory store (bodies, headers and per-entry overhead)"
    )
    .unwrap()
});

pub static CACHE_MEMORY_LIMIT: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "shellac_cache_memory_limit_bytes",
        "Configured size of the memory store (cache.memory.size)"
    )
    .unwrap()
});

pub static CACHE_EVICTIONS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "shellac_cache_evictions_total",
        "Entries evicted from the memory store to stay within its size"
    )
    .unwrap()
});

pub static CACHE_NOT_STORED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_cache_not_stored_total",
        "Responses on caching routes that were not stored, by reason (RFC 9111 rule or limit)",
        &["reason"]
    )
    .unwrap()
});

pub static CACHE_PARTIALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_cache_partials_total",
        "Partial content (RFC 9111 §3.3, §3.4): ranges answered from a stored partial (hit), 206s stored as partials (stored), combined with a stored part of the same strong ETag (combined), completed into a whole stored 200 (completed), or not written (failed)",
        &["result"]
    )
    .unwrap()
});

pub static CACHE_PURGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_cache_purges_total",
        "PURGE requests and unsafe-method invalidations, by result: purged, not_found, forbidden (address not in admin.purge_allow, no token), bad_token (wrong Authorization bearer token), failed, invalidated, and marker_dropped (an invalidation over cache.memcached.invalidations_per_second: removed from this node and memcached, but no purge marker written, so other nodes keep their memory copies until they expire)",
        &["result"]
    )
    .unwrap()
});

pub static CACHE_INVALIDATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_cache_invalidations_total",
        "Purges by tag, host, prefix, all or URL (kind) and hard or soft (mode), from POST /purge or PURGE",
        &["kind", "mode"]
    )
    .unwrap()
});

pub static CACHE_INVALIDATED_ON_LOOKUP: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_cache_invalidated_on_lookup_total",
        "Cached objects a purge marker turned into a miss (purged) or a stale hit (stale) on lookup",
        &["result"]
    )
    .unwrap()
});

pub static PURGE_API_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_purge_api_errors_total",
        "POST /purge requests refused or failed, by reason (bad_request, unauthorized, forbidden, method, unavailable)",
        &["reason"]
    )
    .unwrap()
});

// --- memcached (L2 cache storage) ---------------------------------------------------------
// The `server` label is a configured memcached address and `op` a fixed name from
// `cache::memcached`, so these series are bounded by the config too.

fn memcached_buckets() -> Vec<f64> {
    // 50 µs … ~1.6 s: a LAN exchange sits at the low end; the top covers any sane timeout.
    exponential_buckets(0.00005, 2.0, 16).unwrap()
}

pub static L2_LOOKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_cache_l2_lookups_total",
        "memcached lookups by result: hit, miss, error (memcached failed or its breaker is open), corrupt (undecodable head or chunk), incomplete (a chunk was evicted)",
        &["result"]
    )
    .unwrap()
});

pub static MEMCACHED_READ_BYTES: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "shellac_memcached_read_bytes_total",
        "Bytes of item values read from memcached (heads and chunks)"
    )
    .unwrap()
});

pub static MEMCACHED_WRITTEN_BYTES: LazyLock<prometheus::IntCounter> = LazyLock::new(|| {
    prometheus::register_int_counter!(
        "shellac_memcached_written_bytes_total",
        "Bytes of item values written to memcached (heads and chunks)"
    )
    .unwrap()
});

pub static MEMCACHED_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_memcached_errors_total",
        "Failed memcached exchanges by operation and server (timeouts, I/O and protocol errors, server errors, breaker rejections)",
        &["op", "server"]
    )
    .unwrap()
});

pub static MEMCACHED_EXCHANGE_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "shellac_memcached_exchange_seconds",
        "Duration of one memcached exchange (a command or a pipelined batch), by operation",
        &["op"],
        memcached_buckets()
    )
    .unwrap()
});

pub static MEMCACHED_LOOKUP_BATCH: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "shellac_memcached_lookup_batch_size",
        "Lookups sent to one memcached server in one pipelined exchange: 1 under light load, more as concurrent lookups queue while a batch is out",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    )
    .unwrap()
});

pub static MEMCACHED_BREAKER_STATE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "shellac_memcached_breaker_state",
        "Circuit breaker per memcached server: 0 closed (in use), 1 open (skipped), 2 half-open (one probe allowed)",
        &["server"]
    )
    .unwrap()
});

pub static CACHE_BODY_RESUMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_cache_body_resumes_total",
        "memcached hit bodies that failed after the header was sent, by outcome: resumed (the rest came from the origin with Range + If-Range) or aborted (the connection was cut; the client saw an error, never a short complete body)",
        &["result"]
    )
    .unwrap()
});

/// Make the memcached metrics exist at start-up (call when the memcached tier is configured).
pub static MEMCACHED_REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_memcached_rejected_total",
        "memcached values that failed authentication (cache.memcached.key_file), by kind (head, chunk, lease, purge_marker, invalidation) and reason (short: too short to hold a tag; bad_tag: no tag, wrong key, wrong item or forged); each was treated as absent and deleted",
        &["kind", "reason"]
    )
    .unwrap()
});

pub fn init_memcached() {
    LazyLock::force(&L2_LOOKUPS);
    LazyLock::force(&MEMCACHED_READ_BYTES);
    LazyLock::force(&MEMCACHED_WRITTEN_BYTES);
    LazyLock::force(&MEMCACHED_ERRORS);
    LazyLock::force(&MEMCACHED_EXCHANGE_DURATION);
    LazyLock::force(&MEMCACHED_LOOKUP_BATCH);
    LazyLock::force(&MEMCACHED_BREAKER_STATE);
    LazyLock::force(&MEMCACHED_REJECTED);
    for r in ["resumed", "aborted"] {
        CACHE_BODY_RESUMES.with_label_values(&[r]);
    }
}

// --- fleet ---------------------------------------------------------------------------------

pub static FLEET_LEASES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_fleet_leases_total",
        "Misses coordinated through memcached leases: won (this node fetches for the fleet), waited (another node was fetching), timed_out (waited lock_timeout, then fetched)",
        &["result"]
    )
    .unwrap()
});

pub static FLEET_FETCHES_AVOIDED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "shellac_fleet_fetches_avoided_total",
        "Misses answered from another node's fill instead of the origin"
    )
    .unwrap()
});

pub fn init_fleet() {
    for r in ["won", "waited", "timed_out"] {
        FLEET_LEASES.with_label_values(&[r]);
    }
    LazyLock::force(&FLEET_FETCHES_AVOIDED);
}

// --- traffic mirroring ----------------------------------------------------------------------
// `route` is a configured route name; `result` and `kind` come from fixed sets in `mirror`.

pub static MIRROR_FORKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_mirror_forks_total",
        "Sampled requests on mirroring routes by result: match, mismatch (staging answered differently), error (staging failed or timed out), dropped (max_inflight reached, or staging read the body too slowly), skipped (method, body over max_body, or no complete production answer)",
        &["route", "result"]
    )
    .unwrap()
});

pub static MIRROR_MISMATCHES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_mirror_mismatches_total",
        "Mismatching forks by what differed: status, header, body (a fork can count under several kinds)",
        &["route", "kind"]
    )
    .unwrap()
});

pub static MIRROR_INFLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "shellac_mirror_inflight",
        "Forks in flight (bounded by mirror_limits.max_inflight)"
    )
    .unwrap()
});

pub static MIRROR_LOG_LINES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "shellac_mirror_log_lines_total",
        "Mirror log lines by result: written, suppressed (over max_lines_per_minute), failed (write error)",
        &["result"]
    )
    .unwrap()
});

/// Make the mirror metrics exist at start-up (call when a route mirrors).
pub fn init_mirror() {
    LazyLock::force(&MIRROR_FORKS);
    LazyLock::force(&MIRROR_MISMATCHES);
    LazyLock::force(&MIRROR_INFLIGHT);
    for result in ["written", "suppressed", "failed"] {
        MIRROR_LOG_LINES.with_label_values(&[result]);
    }
}
