//! A read-only look at what the cache holds for one URL, for `GET /cache?url=URL` on the admin
//! listener and `shellac inspect`. Nothing here serves, promotes, touches or deletes.
//!
//! - Memory tier: the URL's primary slot and every Vary variant its index lists.
//! - memcached: the primary slot's head (the key a lookup reads first) and, for each variant the
//!   memory tier lists, that variant's head. Other variants memcached may hold are keyed by a
//!   hash of request header values and cannot be listed; the answer says so when the URL varies.
//! - Purge markers: the URL's fleet marker (memcached), and every tag, host, prefix and "all"
//!   marker that names the object, each copy judged against them as a lookup would.
//!
//! The request header values that select a variant are not stored (only their hash is), so a
//! variant shows its `Vary` field names, its variance hash and its representation headers.

use super::invalidation::marks::{Marks, Verdict};
use super::invalidation::Invalidator;
use super::memcached::peek::Found;
use super::tags;
use super::tiered::Tiered;
use crate::authority::Authority;
use pingora::cache::key::CacheHashKey;
use pingora::cache::CacheMeta;
use serde_json::{json, Map, Value};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A handle on the cache for inspection ([`super::Cache::inspector`]).
#[derive(Clone, Copy)]
pub struct Inspector {
    storage: &'static Tiered,
    inv: &'static Invalidator,
}

/// Facts about one stored copy, besides its tier-specific ones.
struct Copy {
    tier: &'static str,
    meta: CacheMeta,
    size: usize,
    extra: Map<String, Value>,
}

impl Inspector {
    pub fn new(storage: &'static Tiered, inv: &'static Invalidator) -> Inspector {
        Inspector { storage, inv }
    }

    /// What is held for `authority` + `path_and_query` (as [`super::key::build`] keys it).
    pub async fn inspect(&self, authority: &str, path_and_query: &str) -> Value {
        let key = super::key::build(authority, path_and_query.as_bytes());
        let host = Authority::parse(authority).host().to_string();
        let primary = key.primary();
        let now = SystemTime::now();
        let mut errors: Vec<String> = Vec::new();
        // (full key hex, copies), primary slot first.
        let mut slots: Vec<(String, Vec<Copy>)> = vec![(primary.clone(), Vec::new())];
        if let Some(l1) = self.storage.l1 {
            for (k, e) in l1.peek_all(&key) {
                let hex = format!("{k:032x}");
                let copy = Copy {
                    tier: "memory",
                    meta: e.cache_meta(),
                    size: e.body_len(),
                    extra: Map::new(),
                };
                slot(&mut slots, hex).push(copy);
            }
        }
        let mut url_marker = None;
        let mut filling = None;
        if let Some(l2) = self.storage.l2 {
            let hexes: Vec<String> = slots.iter().map(|(h, _)| h.clone()).collect();
            for hex in hexes {
                match l2.peek(&hex).await {
                    Ok(Found::Absent) => {}
                    Ok(Found::Unusable(why)) => {
                        errors.push(format!(
                            "memcached head {hex}: unusable ({why}); a lookup treats it as a miss"
                        ));
                    }
                    Ok(Found::Head(p)) => {
                        let mut extra = Map::new();
                        extra.insert("item_ttl".into(), json!(p.item_ttl));
                        extra.insert("inline".into(), json!(p.inline));
                        extra.insert("chunks".into(), json!(p.chunks));
                        extra.insert("complete".into(), json!(p.complete));
                        let copy = Copy {
                            tier: "memcached",
                            meta: p.meta,
                            size: p.body_len,
                            extra,
                        };
                        slot(&mut slots, hex).push(copy);
                    }
                    Err(e) => errors.push(format!("memcached head {hex}: {e}")),
                }
            }
            match l2.url_purged_at(&primary).await {
                Ok(at) => url_marker = at,
                Err(e) => errors.push(format!("memcached URL purge marker: {e}")),
            }
            filling = l2.filling(&primary).await;
        }

        let mut all_tags: Vec<String> = Vec::new();
        for (_, copies) in &slots {
            for c in copies {
                for t in tags::of_stored(c.meta.response_header()) {
                    if !all_tags.iter().any(|x| x == t) {
                        all_tags.push(t.to_string());
                    }
                }
            }
        }
        let markers = match self
            .inv
            .markers_for(&host, path_and_query.as_bytes(), &all_tags)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                errors.push(format!("invalidation markers: {e}"));
                Vec::new()
            }
        };

        let mut tiers: Vec<&str> = Vec::new();
        let mut variants = Vec::new();
        let mut varies = false;
        for (hex, copies) in &slots {
            if copies.is_empty() {
                continue;
            }
            let first = &copies[0].meta;
            varies |= first.variance().is_some();
            let copies: Vec<Value> = copies
                .iter()
                .map(|c| {
                    if !tiers.contains(&c.tier) {
                        tiers.push(c.tier);
                    }
                    describe(c, now, &markers, url_marker)
                })
                .collect();
            variants.push(json!({
                "key": hex,
                "slot": if *hex == primary { "primary" } else { "variant" },
                "variance": first.variance().map(hex16),
                "vary": header(first, "vary"),
                "content_type": header(first, "content-type"),
                "content_encoding": header(first, "content-encoding"),
                "content_language": header(first, "content-language"),
                "copies": copies,
            }));
        }
        let mut notes: Vec<String> = Vec::new();
        if varies && self.storage.l2.is_some() {
            notes.push("memcached may hold further variants of this URL: their keys hash the request's Vary'd header values, so only the primary slot and the variants this node's memory tier indexes can be read".into());
        }
        if varies {
            notes.push("request header values are stored only as the variance hash; each variant shows its Vary field names and representation headers".into());
        }
        let a = Authority::parse(authority);
        let port = if a.port().is_empty() {
            String::new()
        } else {
            format!(":{}", a.port())
        };
        json!({
            "url": format!("http://{}{port}{path_and_query}", a.host()),
            "key": primary,
            "cached": !variants.is_empty(),
            "tiers": tiers,
            "tiers_configured": {
                "memory": self.storage.l1.is_some(),
                "memcached": self.storage.l2.is_some(),
            },
            "variants": variants,
            "fill_in_progress": filling,
            "purge": {
                "url_marker": url_marker.map(time),
                "markers": markers.iter().map(|(kind, name, m)| json!({
                    "kind": kind,
                    "name": name,
                    "hard": (m.hard != 0).then(|| time(UNIX_EPOCH + Duration::from_millis(m.hard))),
                    "soft": (m.soft != 0).then(|| time(UNIX_EPOCH + Duration::from_millis(m.soft))),
                })).collect::<Vec<_>>(),
            },
            "notes": notes,
            "errors": errors,
        })
    }
}

fn slot(slots: &mut Vec<(String, Vec<Copy>)>, hex: String) -> &mut Vec<Copy> {
    let i = match slots.iter().position(|(h, _)| *h == hex) {
        Some(i) => i,
        None => {
            slots.push((hex, Vec::new()));
            slots.len() - 1
        }
    };
    &mut slots[i].1
}

fn hex16(b: [u8; 16]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn header(meta: &CacheMeta, name: &str) -> Option<String> {
    let v: Vec<&str> = meta
        .headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!v.is_empty()).then(|| v.join(", "))
}

/// A time as an HTTP-date and Unix seconds.
fn time(t: SystemTime) -> Value {
    json!({
        "date": httpdate::fmt_http_date(t),
        "unix": t.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
    })
}

/// Signed whole seconds from `now` to `t` (negative when `t` has passed).
fn secs_until(t: SystemTime, now: SystemTime) -> i64 {
    match t.duration_since(now) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

fn describe(
    c: &Copy,
    now: SystemTime,
    markers: &[(&'static str, String, Marks)],
    url_marker: Option<SystemTime>,
) -> Value {
    let m = &c.meta;
    let stored = m.epoch().max(m.updated());
    let ttl = secs_until(m.fresh_until(), now);
    let swr = m.stale_while_revalidate_sec();
    let sie = m.stale_if_error_sec();
    let window = |w: u32| json!({"seconds": w, "left": (ttl + w as i64).clamp(0, w as i64)});
    let tags: Vec<&str> = tags::of_stored(m.response_header()).collect();
    // The markers that name this copy (a tag marker only if it carries the tag).
    let mut by: Vec<String> = Vec::new();
    let mut total = Marks::default();
    for (kind, name, mk) in markers {
        if *kind == "tag" && !tags.contains(&name.as_str()) {
            continue;
        }
        if mk.verdict(stored) != Verdict::Keep {
            by.push(format!("{kind} {name}").trim_end().to_string());
        }
        total = total.merge(*mk);
    }
    let mut invalidated = match total.verdict(stored) {
        Verdict::Keep => None,
        Verdict::Purged => Some("purged"),
        Verdict::Stale(at) if m.fresh_until() > at => Some("stale"),
        Verdict::Stale(_) => None,
    };
    if let Some(at) = url_marker {
        // As the lookups judge it: memcached keeps a plain copy already stale at a soft purge.
        let retired = c.tier == "memory"
            || m.variance().is_some()
            || m.fresh_until() > at + Duration::from_secs(1);
        if at >= m.created() && retired {
            invalidated = Some("purged");
            by.push("url".into());
        }
    }
    let mut v = json!({
        "tier": c.tier,
        "status": m.response_header().status.as_u16(),
        "size": c.size,
        "stored_at": time(m.created()),
        "validated_at": time(stored),
        "age": m.age().as_secs(),
        "fresh": m.is_fresh(now),
        "ttl": ttl.max(0),
        "expires": time(m.fresh_until()),
        "stale_while_revalidate": window(swr),
        "stale_if_error": window(sie),
        "etag": header(m, "etag"),
        "last_modified": header(m, "last-modified"),
        "tags": tags,
        "invalidated": invalidated,
        "invalidated_by": by,
    });
    let obj = v.as_object_mut().expect("an object");
    obj.extend(c.extra.clone());
    v
}
