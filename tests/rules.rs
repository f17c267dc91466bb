//! `rules:` through the real binary: each recipe of docs/rules.md, proven by what the origins
//! saw and what the client got; `-t` errors for bad rules; the plugin example binary.

mod common;

use common::http::{Client, Origin, Reply, Request};
use common::{backends, run, temp_dir, Shellac};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Upstreams `app` (and `api`), one caching route `site`, and `rules`.
fn conf(app: &Origin, api: Option<&Origin>, rules: &str) -> String {
    format!(
        "upstreams:\n  app: {{backends: {}}}\n  api: {{backends: {}}}\nroutes:\n  - {{name: site, upstream: app, cache: true}}\nrules:\n{rules}",
        backends(&[app]),
        backends(&[api.unwrap_or(app)]),
    )
}

fn cached(body: &'static str) -> impl Fn(&Request) -> Reply {
    move |req| Reply::ok(format!("{body} {}", req.target)).header("Cache-Control", "max-age=60")
}

fn status_of(r: &common::http::Response) -> &str {
    r.header("cache-status").unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn recipe_01_marketing_parameters_dropped_from_the_key_rest_sorted() {
    let origin = Origin::start(cached("page")).await;
    let rules = r#"
  - name: marketing
    request:
      key: {query: {drop: ["utm_*", gclid, fbclid], sort: true}}
"#;
    let s = Shellac::start(&conf(&origin, None, rules)).await;
    let r = s.get("/p?b=2&a=1&utm_source=news").await;
    assert!(status_of(&r).contains("fwd=miss"), "{}", status_of(&r));
    assert!(
        status_of(&r).contains("rules:marketing"),
        "{}",
        status_of(&r)
    );
    let r = s.get("/p?a=1&gclid=9&b=2").await;
    assert!(status_of(&r).contains("hit"), "{}", status_of(&r));
    assert_eq!(origin.count(), 1);
    s.get("/p?a=1&b=3").await;
    assert_eq!(origin.count(), 2, "other values are another entry");
    // The key drops them; the origin still gets the request as sent.
    assert_eq!(origin.requests()[0].target, "/p?b=2&a=1&utm_source=news");
}

#[tokio::test(flavor = "multi_thread")]
async fn recipe_02_session_cookie_passes_static_files_lose_cookie() {
    let origin = Origin::start(|req| {
        let cookie = req.header("cookie").unwrap_or("none").to_string();
        Reply::ok(format!("cookie {cookie}"))
            .header("Cache-Control", "max-age=60")
            .header("Vary", "Cookie")
    })
    .await;
    let rules = r#"
  - name: logged-in
    match: {cookie: {session: "*"}}
    final: true
    request: {cache: pass}
  - name: static-no-cookie
    match: {path: "/static/**"}
    request: {remove_headers: [Cookie]}
"#;
    let s = &Shellac::start(&conf(&origin, None, rules)).await;
    let get =
        |c: &'static str| async move { s.request("GET", "/static/a.css", &[("Cookie", c)]).await };
    let r = get("track=1").await;
    assert_eq!(r.text(), "cookie none", "the origin never sees the cookie");
    let r = get("track=2").await;
    assert!(status_of(&r).contains("hit"), "{}", status_of(&r));
    assert_eq!(origin.count(), 1);
    for _ in 0..2 {
        let r = get("session=abc").await;
        assert_eq!(r.text(), "cookie session=abc", "final: the cookie stays");
        assert!(
            status_of(&r).contains("rules:logged-in"),
            "{}",
            status_of(&r)
        );
    }
    assert_eq!(
        origin.count(),
        3,
        "logged-in requests always reach the origin"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn recipe_03_set_cookie_removed_from_static_responses() {
    let origin = Origin::start(|req| {
        Reply::ok(format!("body {}", req.target))
            .header("Cache-Control", "max-age=60")
            .header("Set-Cookie", "sid=1")
    })
    .await;
    let rules = r#"
  - name: static-no-set-cookie
    match: {path: "/static/**"}
    origin_response: {remove_headers: [Set-Cookie]}
"#;
    let s = Shellac::start(&conf(&origin, None, rules)).await;
    for _ in 0..2 {
        let r = s.get("/static/logo.png").await;
        assert!(r.header("set-cookie").is_none());
    }
    assert_eq!(origin.count_path("/static/logo.png"), 1, "stored once");
    for _ in 0..2 {
        let r = s.get("/account").await;
        assert_eq!(r.header("set-cookie"), Some("sid=1"));
    }
    assert_eq!(origin.count_path("/account"), 2, "others are not stored");
}

fn ttl_of(r: &common::http::Response) -> i64 {
    let s = status_of(r);
    let t = s.split("ttl=").nth(1).expect(s);
    t.split(';').next().unwrap().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn recipe_04_ttl_per_status_without_origin_freshness() {
    let origin = Origin::start(|req| match req.path() {
        "/ok" => Reply::ok("ok"),
        "/explicit" => Reply::ok("explicit").header("Cache-Control", "max-age=5"),
        _ => Reply::new(404, "missing"),
    })
    .await;
    let rules = r#"
  - name: ttls
    origin_response: {ttl: {200: 10m, 404: 1m}}
"#;
    let s = Shellac::start(&conf(&origin, None, rules)).await;
    s.get("/ok").await;
    let r = s.get("/ok").await;
    assert!((590..=600).contains(&ttl_of(&r)), "{}", status_of(&r));
    s.get("/missing").await;
    let r = s.get("/missing").await;
    assert_eq!(r.status, 404);
    assert!((50..=60).contains(&ttl_of(&r)), "{}", status_of(&r));
    s.get("/explicit").await;
    let r = s.get("/explicit").await;
    assert!(
        ttl_of(&r) <= 5,
        "explicit freshness wins: {}",
        status_of(&r)
    );
    assert_eq!(origin.count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn recipe_05_force_ttl_over_private_no_cache_for_one_path() {
    let origin = Origin::start(|req| {
        Reply::ok(format!("body {}", req.target)).header("Cache-Control", "private, no-cache")
    })
    .await;
    let rules = r#"
  - name: force
    match: {path: /report}
    origin_response: {force_ttl: 1h}
"#;
    let s = Shellac::start(&conf(&origin, None, rules)).await;
    s.get("/report").await;
    let r = s.get("/report").await;
    assert!(status_of(&r).contains("hit"), "{}", status_of(&r));
    assert!(ttl_of(&r) > 3500);
    assert_eq!(origin.count_path("/report"), 1);
    s.get("/other").await;
    s.get("/other").await;
    assert_eq!(
        origin.count_path("/other"),
        2,
        "opt-in: other paths obey the origin"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn recipe_06_stale_for_a_day_when_the_origin_fails() {
    let failing = Arc::new(AtomicUsize::new(0));
    let f = failing.clone();
    let origin = Origin::start(move |req| {
        if f.load(Ordering::SeqCst) == 1 {
            return Reply::new(503, "down");
        }
        Reply::ok(format!("good {}", req.path())).header("Cache-Control", "max-age=1")
    })
    .await;
    let rules = r#"
  - name: grace
    match: {path: /news}
    origin_response: {stale: {if_error: 1d}}
"#;
    let s = Shellac::start(&conf(&origin, None, rules)).await;
    s.get("/news").await;
    s.get("/plain").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    failing.store(1, Ordering::SeqCst);
    let r = s.get("/news").await;
    assert_eq!((r.status, r.text().as_str()), (200, "good /news"));
    assert!(
        status_of(&r).contains("stale-if-error"),
        "{}",
        status_of(&r)
    );
    let r = s.get("/plain").await;
    assert_eq!(r.status, 503, "no rule, no stale window");
}

#[tokio::test(flavor = "multi_thread")]
async fn recipe_07_device_class_in_the_key() {
    let origin = Origin::start(|req| {
        let d = req.header("x-device").unwrap_or("none").to_string();
        Reply::ok(format!("for {d}")).header("Cache-Control", "max-age=60")
    })
    .await;
    let rules = r#"
  - name: device
    request:
      set_headers: {X-Device: desktop}
      key: {headers: [X-Device]}
  - name: mobile
    match: {header: {User-Agent: "*Mobile*"}}
    request: {set_headers: {X-Device: mobile}}
"#;
    let s = &Shellac::start(&conf(&origin, None, rules)).await;
    let ua = |u: &'static str| async move { s.request("GET", "/home", &[("User-Agent", u)]).await };
    assert_eq!(ua("Phone Mobile Safari").await.text(), "for mobile");
    assert_eq!(ua("Desktop Firefox").await.text(), "for desktop");
    let r = ua("Other Mobile").await;
    assert_eq!(r.text(), "for mobile");
    assert!(status_of(&r).contains("hit"), "{}", status_of(&r));
    let r = s
        .request(
            "GET",
            "/home",
            &[("User-Agent", "x"), ("X-Device", "mobile")],
        )
        .await;
    assert_eq!(
        r.text(),
        "for desktop",
        "a client's own X-Device is replaced"
    );
    assert_eq!(origin.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn recipe_08_admin_acl_and_redirects() {
    let origin = Origin::start(cached("page")).await;
    let rules = r#"
  - name: admin-acl
    match: {path_regex: '^/admin(/|$)', not: {client: ["127.0.0.2/31"]}}
    request: {respond: {status: 403, body: "forbidden\n", headers: {Content-Type: text/plain}}}
  - name: moved
    match: {path_regex: '^/old/(.*)$'}
    request: {redirect: {status: 301, to: '/new/$1'}}
"#;
    let s = Shellac::start(&conf(&origin, None, rules)).await;
    let r = s.get("/admin/users").await;
    assert_eq!((r.status, r.text().as_str()), (403, "forbidden\n"));
    assert_eq!(r.header("content-type"), Some("text/plain"));
    let mut c = Client::connect_from("127.0.0.2".parse().unwrap(), s.addr)
        .await
        .unwrap();
    let r = c.request("GET", "/admin/users", &[], b"").await.unwrap();
    assert_eq!(r.status, 200, "allowed network reaches the origin");
    let r = s.get("/old/a/b.html").await;
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location"), Some("/new/a/b.html"));
    assert_eq!(origin.count(), 1, "only the allowed admin request");
}

#[tokio::test(flavor = "multi_thread")]
async fn recipe_09_scrub_headers_and_cors_on_hits_too() {
    let origin = Origin::start(|req| {
        Reply::ok(format!("body {}", req.target))
            .header("Cache-Control", "max-age=60")
            .header("Server", "origin/1.0")
            .header("X-Powered-By", "php")
    })
    .await;
    let rules = r#"
  - name: scrub
    deliver: {remove_headers: [Server, X-Powered-By]}
  - name: cors
    match: {path: "/api/**"}
    deliver: {set_headers: {Access-Control-Allow-Origin: "*"}}
"#;
    let s = Shellac::start(&conf(&origin, None, rules)).await;
    for i in 0..2 {
        let r = s.get("/api/items").await;
        assert!(r.header("server").is_none() && r.header("x-powered-by").is_none());
        assert_eq!(r.header("access-control-allow-origin"), Some("*"));
        if i == 1 {
            assert!(status_of(&r).contains("hit"), "{}", status_of(&r));
            assert!(
                status_of(&r).contains("rules:scrub+cors"),
                "{}",
                status_of(&r)
            );
        }
    }
    let r = s.get("/page").await;
    assert!(r.header("access-control-allow-origin").is_none());
    assert!(r.header("server").is_none());
    assert_eq!(origin.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn recipe_10_api_to_another_upstream_never_cached() {
    let app = Origin::start(cached("app")).await;
    let api = Origin::start(cached("api")).await;
    let rules = r#"
  - name: api
    match: {path: "/api/**"}
    request: {upstream: api, cache: pass}
"#;
    let s = Shellac::start(&conf(&app, Some(&api), rules)).await;
    for _ in 0..2 {
        let r = s.get("/api/x").await;
        assert_eq!(r.text(), "api /api/x");
    }
    assert_eq!(api.count(), 2, "never cached");
    s.get("/page").await;
    s.get("/page").await;
    assert_eq!((app.count(), api.count()), (1, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn recipe_11_rewrite_before_key_and_origin_later_phases_see_it() {
    let origin = Origin::start(cached("page")).await;
    let rules = r#"
  - name: v1
    match: {path: "/v1/**"}
    request: {rewrite: {from: '^/v1/(.*)$', to: '/api/v1/$1'}}
  - name: seen
    match: {path: "/api/v1/**"}
    origin_response: {set_headers: {X-Rewritten: "yes"}}
"#;
    let s = Shellac::start(&conf(&origin, None, rules)).await;
    let r = s.get("/v1/users?x=1").await;
    assert_eq!(r.text(), "page /api/v1/users?x=1");
    assert_eq!(
        r.header("x-rewritten"),
        Some("yes"),
        "origin_response saw the rewrite"
    );
    let r = s.get("/api/v1/users?x=1").await;
    assert!(status_of(&r).contains("hit"), "same key: {}", status_of(&r));
    assert_eq!(
        r.header("x-rewritten"),
        Some("yes"),
        "stored with the header"
    );
    assert_eq!(origin.count(), 1);
    assert_eq!(origin.requests()[0].target, "/api/v1/users?x=1");
}

#[tokio::test(flavor = "multi_thread")]
async fn recipe_12_synthetic_ping_never_reaches_the_origin() {
    let origin = Origin::start(cached("page")).await;
    let rules = r#"
  - name: ping
    match: {path: /ping}
    request: {respond: {status: 200, body: "ok\n"}}
"#;
    let s = Shellac::start(&conf(&origin, None, rules)).await;
    let r = s.get("/ping").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    assert!(status_of(&r).contains("rules:ping"), "{}", status_of(&r));
    let r = s.request("HEAD", "/ping", &[]).await;
    assert_eq!(r.status, 200);
    let mut c = Client::connect(s.addr).await.unwrap();
    for _ in 0..3 {
        let r = c.request("GET", "/ping", &[], b"").await.unwrap();
        assert_eq!(r.text(), "ok\n", "keep-alive survives synthetic answers");
    }
    assert_eq!(origin.count(), 0);
}

fn check(rules: &str) -> (i32, String) {
    let yaml = format!(
        "listen: [\"127.0.0.1:18080\"]\nadmin: {{listen: \"127.0.0.1:19091\"}}\nupstreams:\n  app: {{backends: [\"127.0.0.1:9001\"]}}\nroutes:\n  - {{name: site, upstream: app}}\nrules:\n{rules}"
    );
    let path = temp_dir().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    run(&["-t", "-c", path.to_str().unwrap()])
}

#[test]
fn bad_rules_fail_dash_t_with_rule_name_and_key_path() {
    let table: &[(&str, &[&str])] = &[
        (
            "  - {name: a, deliver: {}}\n  - {name: static, match: {path: \"/[ab]\"}, deliver: {}}\n",
            &["rules[1] (static).match.path", "not supported"],
        ),
        (
            "  - {name: re, match: {path_regex: \"(\"}, deliver: {}}\n",
            &["rules[0] (re).match.path_regex", "is not a regex"],
        ),
        (
            "  - {name: typo, match: {pth: /x}, deliver: {}}\n",
            &["rules[0] (typo).match", "unknown field `pth`"],
        ),
        (
            "  - {name: typo2, request: {cahce: pass}}\n",
            &["rules[0] (typo2).request", "unknown field `cahce`"],
        ),
        (
            "  - {name: early, match: {status: [404]}, request: {cache: pass}}\n",
            &["rules[0] (early).match.status", "only after the origin answers"],
        ),
        (
            "  - {name: early2, match: {not: {status: [404]}}, request: {cache: pass}}\n",
            &["rules[0] (early2).match.not.status"],
        ),
        (
            "  - {name: up, request: {upstream: nope}}\n",
            &["rules[0] (up).request.upstream", "no upstream named \"nope\""],
        ),
        (
            "  - {name: rt, match: {route: nope}, deliver: {}}\n",
            &["rules[0] (rt).match.route", "no route named \"nope\""],
        ),
        (
            "  - {name: dup, deliver: {}}\n  - {name: dup, deliver: {}}\n",
            &["rules[1] (dup).name", "unique"],
        ),
        (
            "  - {name: ttl, origin_response: {ttl: {200: 10}}}\n",
            &["rules[0] (ttl).origin_response.ttl", "no unit"],
        ),
        (
            "  - {name: q, request: {key: {query: {drop: [\"a[\"]}}}}\n",
            &["rules[0] (q).request.key.query.drop[0]"],
        ),
        (
            "  - {name: rd, request: {redirect: {status: 301, to: '/new/$1'}}}\n",
            &["rules[0] (rd).request.redirect.to", "path_regex"],
        ),
        (
            "  - {name: idle}\n",
            &["rules[0] (idle)", "does nothing"],
        ),
    ];
    for (rules, want) in table {
        let (code, out) = check(rules);
        assert_eq!(code, 1, "{rules}: {out}");
        for w in *want {
            assert!(out.contains(w), "{rules}: want {w:?} in {out}");
        }
    }
    let (code, out) =
        check("  - {name: fine, match: {status: [200]}, deliver: {remove_headers: [Server]}}\n");
    assert_eq!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_plugin_example_runs_with_its_plugin() {
    let bin = std::path::Path::new(common::BIN)
        .parent()
        .unwrap()
        .join("examples/plugin");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --examples` (scripts/test does)",
        bin.display()
    );
    let origin = Origin::start(cached("page")).await;
    let rules = "  - {name: ping, match: {path: /ping}, request: {respond: {body: pong}}}\n";
    let s = Shellac::start_bin(&bin, &conf(&origin, None, rules)).await;
    let r = s.get("/private/x").await;
    assert_eq!((r.status, r.text().as_str()), (401, "token required\n"));
    assert_eq!(r.header("x-plugin"), Some("token-gate"));
    let r = s
        .request("GET", "/private/x", &[("X-Token", "letmein")])
        .await;
    assert_eq!(r.text(), "page /private/x");
    assert!(status_of(&r).contains("fwd=bypass"), "{}", status_of(&r));
    let r = s.get("/ping").await;
    assert_eq!(r.text(), "pong", "the config's rules run too");
    assert_eq!(r.header("x-plugin"), Some("token-gate"));
    assert_eq!(origin.count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_reload_with_the_config_and_are_named_in_the_access_log() {
    let origin = Origin::start(cached("page")).await;
    let ping = |body: &str| {
        let rules = format!(
            "  - {{name: ping, match: {{path: /ping}}, request: {{respond: {{body: {body}}}}}}}\n"
        );
        format!(
            "{}access_log: {{target: \"{{DIR}}/access.log\"}}\n",
            conf(&origin, None, &rules)
        )
    };
    let mut s = Shellac::start(&ping("one")).await;
    assert_eq!(s.get("/ping").await.text(), "one");
    let yaml = Shellac::render(&ping("two"), &s.dir, s.addr, s.admin, 1);
    std::fs::write(&s.config_path, yaml).unwrap();
    let _old = s.reload().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if s.get("/ping").await.text() == "two" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "reload kept the old rules"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.get("/page").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = std::fs::read_to_string(s.dir.join("access.log")).unwrap_or_default();
        let fields = |l: &str| l.split(' ').nth(10).map(String::from);
        let ping = log.lines().find(|l| l.contains(" /ping ")).and_then(fields);
        let page = log.lines().find(|l| l.contains(" /page ")).and_then(fields);
        if ping.is_some() && page.is_some() {
            assert_eq!(ping.as_deref(), Some("ping"), "{log}");
            assert_eq!(page.as_deref(), Some("-"), "{log}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
