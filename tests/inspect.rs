//! `GET /cache?url=URL` on the admin listener and `shellac inspect`: what the cache holds for a
//! URL, per tier and variant, checked against what was stored. Real binary, real memcached.

mod common;

use common::http::{Client, Origin, Reply};
use common::memcached::{wait_for_heads, Memcached};
use common::{simple_config, Shellac};
use serde_json::Value;
use std::net::SocketAddr;

fn origin_reply() -> impl Fn(&common::http::Request) -> Reply + Send + Sync + 'static {
    |req| {
        let path = req.path().to_string();
        if path.starts_with("/vary") {
            let lang = req.header("accept-language").unwrap_or("en").to_string();
            Reply::ok(format!("hello in {lang}"))
                .header("Cache-Control", "max-age=120")
                .header("Vary", "Accept-Language")
                .header("Content-Language", lang)
        } else {
            Reply::ok(format!("body of {path}"))
                .header("Cache-Control", "max-age=300, stale-while-revalidate=30")
                .header("ETag", "\"v1\"")
                .header("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT")
                .header("Surrogate-Key", "product-42 catalog")
        }
    }
}

fn two_tier(origin: &Origin, mc: &Memcached, admin: &str) -> String {
    format!(
        "{admin}{}cache:\n  memory: {{size: 16MiB}}\n  memcached: {{servers: [\"{}\"], timeout: 500ms, purge_check: 500ms}}\n",
        simple_config(&[origin], "", ", cache: true"),
        mc.addr
    )
}

async fn inspect(admin: SocketAddr, url: &str, token: Option<&str>) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Host", "admin")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let target = format!("/cache?url={}", url.replace(':', "%3A").replace('/', "%2F"));
    let r = Client::connect(admin)
        .await
        .unwrap()
        .request("GET", &target, &headers, b"")
        .await
        .unwrap();
    let v = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    (r.status, v)
}

fn cli(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(common::BIN)
        .arg("inspect")
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn copy<'a>(v: &'a Value, tier: &str) -> &'a Value {
    v["variants"][0]["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["tier"] == tier)
        .unwrap_or_else(|| panic!("no {tier} copy in {v:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_tier_node_shows_both_copies_with_their_ttls_and_an_unknown_url_is_not_cached() {
    let origin = Origin::start(origin_reply()).await;
    let mc = Memcached::start();
    let node = Shellac::start(&two_tier(&origin, &mc, "")).await;
    node.get("/a?x=1").await;
    wait_for_heads(&[&mc], 1).await;

    let (s, v) = inspect(node.admin, "http://test/a?x=1", None).await;
    assert_eq!(s, 200, "{v:#}");
    assert_eq!(v["cached"], true, "{v:#}");
    assert_eq!(v["url"], "http://test/a?x=1");
    assert_eq!(v["tiers"], serde_json::json!(["memory", "memcached"]));
    assert_eq!(v["variants"].as_array().unwrap().len(), 1, "{v:#}");
    for tier in ["memory", "memcached"] {
        let c = copy(&v, tier);
        assert_eq!(c["status"], 200);
        assert_eq!(c["size"], "body of /a".len());
        assert_eq!(c["fresh"], true);
        let ttl = c["ttl"].as_i64().unwrap();
        assert!((290..=300).contains(&ttl), "{tier} ttl {ttl}");
        assert!(c["age"].as_u64().unwrap() <= 10);
        assert_eq!(c["stale_while_revalidate"]["seconds"], 30);
        assert_eq!(c["etag"], "\"v1\"");
        assert_eq!(c["last_modified"], "Tue, 01 Dec 2026 10:00:00 GMT");
        assert_eq!(c["tags"], serde_json::json!(["product-42", "catalog"]));
        assert!(c["invalidated"].is_null());
    }
    // memcached keeps the item past freshness (stale windows, keep_stale_for).
    let item_ttl = copy(&v, "memcached")["item_ttl"].as_i64().unwrap();
    assert!(item_ttl >= 300, "item ttl {item_ttl}");
    assert_eq!(copy(&v, "memcached")["complete"], true);

    // The readable form names both tiers and their TTLs.
    let admin = node.admin.to_string();
    let (code, text) = cli(&["--admin", &admin, "http://test/a?x=1"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("cached in memory and memcached"), "{text}");
    assert!(text.contains("memory     status 200"), "{text}");
    assert!(text.contains("memcached  status 200"), "{text}");
    assert!(text.contains("fresh, ttl 29"), "{text}");
    assert!(text.contains("tags product-42 catalog"), "{text}");

    let (s, v) = inspect(node.admin, "http://test/never", None).await;
    assert_eq!(s, 200);
    assert_eq!(v["cached"], false, "{v:#}");
    assert_eq!(v["variants"], serde_json::json!([]));
    let (code, text) = cli(&["--admin", &admin, "test/never"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("not cached"), "{text}");
    let (code, json) = cli(&["--admin", &admin, "--json", "test/never"]);
    assert_eq!(code, 0, "{json}");
    let parsed: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["cached"], false);

    // Inspecting is read-only: the origin saw one request, and the object is still a hit.
    assert_eq!(origin.count(), 1);
    let r = node.get("/a?x=1").await;
    assert!(r.header("cache-status").unwrap().contains("hit"));

    // Usage errors and an unreachable admin listener exit non-zero.
    let (code, text) = cli(&["--admin", "127.0.0.1:1", "http://test/a"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("cannot reach"), "{text}");
    assert_eq!(cli(&[]).0, 2);
    let (s, _) = inspect(node.admin, "", None).await;
    assert_eq!(s, 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vary_url_shows_its_variants_and_purges_show_their_markers() {
    let origin = Origin::start(origin_reply()).await;
    let mc = Memcached::start();
    let node = Shellac::start(&two_tier(&origin, &mc, "")).await;
    for lang in ["en", "fr", "de"] {
        node.request("GET", "/vary", &[("Accept-Language", lang)])
            .await;
    }
    wait_for_heads(&[&mc], 3).await;
    let (s, v) = inspect(node.admin, "http://test/vary", None).await;
    assert_eq!(s, 200);
    let variants = v["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 3, "{v:#}");
    let mut langs: Vec<&str> = variants
        .iter()
        .map(|x| x["content_language"].as_str().unwrap())
        .collect();
    langs.sort();
    assert_eq!(langs, ["de", "en", "fr"]);
    for x in variants {
        assert_eq!(x["vary"], "Accept-Language");
        assert!(x["variance"].is_string(), "{x:#}");
        let tiers: Vec<&str> = x["copies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["tier"].as_str().unwrap())
            .collect();
        assert_eq!(tiers, ["memory", "memcached"], "{x:#}");
    }
    assert_eq!(
        variants.iter().filter(|x| x["slot"] == "primary").count(),
        1
    );
    assert!(!v["notes"].as_array().unwrap().is_empty());

    // A tag purge: the object stays stored, the marker applies to it.
    node.get("/a").await;
    wait_for_heads(&[&mc], 4).await;
    let r = node
        .request("PURGE", "/anything", &[("Shellac-Purge-Tags", "catalog")])
        .await;
    assert_eq!(r.status, 200);
    let (_, v) = inspect(node.admin, "http://test/a", None).await;
    let markers = v["purge"]["markers"].as_array().unwrap();
    assert!(
        markers
            .iter()
            .any(|m| m["kind"] == "tag" && m["name"] == "catalog" && m["hard"].is_object()),
        "{v:#}"
    );
    for c in v["variants"][0]["copies"].as_array().unwrap() {
        assert_eq!(c["invalidated"], "purged", "{c:#}");
        assert_eq!(c["invalidated_by"], serde_json::json!(["tag catalog"]));
    }

    // A URL purge: the copies are gone and the URL's fleet marker is on record.
    let r = node.request("PURGE", "/vary", &[]).await;
    assert_eq!(r.status, 200);
    let (_, v) = inspect(node.admin, "http://test/vary", None).await;
    assert!(v["purge"]["url_marker"]["date"].is_string(), "{v:#}");
    let admin = node.admin.to_string();
    let (code, text) = cli(&["--admin", &admin, "http://test/vary"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("url purged"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_file_makes_the_token_required() {
    let dir = common::temp_dir();
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, "inspect-token-0123456789").unwrap();
    let wrong_file = dir.join("wrong.token");
    std::fs::write(&wrong_file, "not-the-token-0000000000").unwrap();
    let origin = Origin::start(origin_reply()).await;
    let config = format!(
        "admin: {{listen: \"{{ADMIN}}\", purge_token_file: \"{}\"}}\n{}",
        token_file.display(),
        simple_config(&[&origin], "", ", cache: true")
    );
    let node = Shellac::start(&config).await;
    node.get("/a").await;
    let (s, v) = inspect(node.admin, "http://test/a", None).await;
    assert_eq!(s, 401, "{v:#}");
    let (s, _) = inspect(node.admin, "http://test/a", Some("wrong-token-000000")).await;
    assert_eq!(s, 403);
    let (s, v) = inspect(
        node.admin,
        "http://test/a",
        Some("inspect-token-0123456789"),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["cached"], true);
    assert_eq!(v["tiers"], serde_json::json!(["memory"]));

    let admin = node.admin.to_string();
    let wf = wrong_file.display().to_string();
    let tf = token_file.display().to_string();
    let (code, text) = cli(&["--admin", &admin, "http://test/a"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("401"), "{text}");
    let (code, text) = cli(&["--admin", &admin, "--token-file", &wf, "http://test/a"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("403"), "{text}");
    let (code, text) = cli(&["--admin", &admin, "--token-file", &tf, "http://test/a"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("cached in memory"), "{text}");
}
