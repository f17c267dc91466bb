//! `/readyz` on the admin listener: whether a load balancer should send this process traffic.
//!
//! 503 while the process drains (a reload's old process, or a stop): the load balancer moves
//! traffic to the new process or other nodes while in-flight requests finish. 200 otherwise,
//! whatever the origins' health: a cache that can answer from storage (and stale-if-error)
//! must stay in rotation when its origins are down, and taking every node out because a shared
//! origin failed would turn a partial outage into a full one. The body is one line: the reason,
//! then each upstream group's healthy backend count, for the operator reading a check log.
//! `/healthz` stays liveness: 200 as long as the process answers at all.

use crate::metrics;
use http::StatusCode;
use prometheus::core::Collector;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Status, content type and body, as the admin listener's routes return them.
pub fn readyz() -> (StatusCode, &'static str, Vec<u8>) {
    let (status, reason) = if crate::reload::draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "draining: this process is being replaced or stopped",
        )
    } else {
        (StatusCode::OK, "ready")
    };
    let mut line = String::from(reason);
    line.push_str("; upstreams:");
    for (group, (healthy, total)) in upstream_health() {
        let _ = write!(line, " {group} {healthy}/{total} healthy,");
    }
    if line.ends_with(',') {
        line.pop();
    } else {
        line.push_str(" none");
    }
    line.push('\n');
    (status, "text/plain", line.into_bytes())
}

/// Healthy and total backends per group, read from `shellac_backend_healthy`: the health
/// checks already publish it, so readiness needs no wiring to the proxy's upstream groups.
fn upstream_health() -> BTreeMap<String, (usize, usize)> {
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for family in metrics::BACKEND_HEALTHY.collect() {
        for m in family.get_metric() {
            let Some(group) = m.get_label().iter().find(|l| l.name() == "upstream") else {
                continue;
            };
            let e = out.entry(group.value().to_string()).or_default();
            e.1 += 1;
            if m.get_gauge().get_value() > 0.0 {
                e.0 += 1;
            }
        }
    }
    out
}
