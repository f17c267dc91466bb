//! The admin listener: metrics content, health endpoint, and never on the public port.

mod common;

use common::http::{get, Client, Origin, Reply};
use common::{simple_config, Shellac};

#[tokio::test(flavor = "multi_thread")]
async fn metrics_describe_traffic_and_backends() {
    let origin = Origin::start(|req| {
        if req.path() == "/missing" {
            Reply::new(404, "no")
        } else {
            Reply::ok("yes")
        }
    })
    .await;
    let shellac = Shellac::start(&simple_config(&[&origin], "", "")).await;
    for _ in 0..3 {
        shellac.get("/ok").await;
    }
    shellac.get("/missing").await;
    let mut idle = Client::connect(shellac.addr).await.unwrap();
    idle.request("GET", "/ok", &[], b"").await.unwrap();

    // The logging hook counts a request just after its response is written: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let text = loop {
        let text = shellac.metrics().await;
        let done = common::sum_metric(
            &text,
            "shellac_requests_total",
            &[("route", "*/"), ("status_class", "2xx")],
        );
        if done >= 4.0 || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let m = |name, labels: &[(&str, &str)]| common::sum_metric(&text, name, labels);
    assert_eq!(
        m(
            "shellac_requests_total",
            &[("route", "*/"), ("status_class", "2xx")]
        ),
        4.0,
        "{text}"
    );
    assert_eq!(
        m(
            "shellac_requests_total",
            &[("route", "*/"), ("status_class", "4xx")]
        ),
        1.0
    );
    assert_eq!(
        m("shellac_request_duration_seconds_count", &[("route", "*/")]),
        5.0
    );
    let backend = origin.addr.to_string();
    assert_eq!(
        m(
            "shellac_upstream_requests_total",
            &[("backend", &backend), ("status_class", "2xx")]
        ),
        4.0
    );
    assert_eq!(
        m(
            "shellac_upstream_response_seconds_count",
            &[("backend", &backend)]
        ),
        5.0
    );
    assert_eq!(
        m(
            "shellac_backend_healthy",
            &[("upstream", "app"), ("backend", &backend)]
        ),
        1.0
    );
    assert!(
        m("shellac_open_connections", &[]) >= 1.0,
        "the idle keep-alive connection is open"
    );
    drop(idle);

    // An unmatched route is counted under route="none".
    let s2 = Shellac::start(
        &common::simple_config(&[&origin], "", "").replace("host: \"*\"", "host: only.test"),
    )
    .await;
    assert_eq!(s2.get("/").await.status, 404);
    // As above: the logging hook counts it just after the response is written.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let none = loop {
        let n = s2
            .metric(
                "shellac_requests_total",
                &[("route", "none"), ("status_class", "4xx")],
            )
            .await;
        if n >= 1.0 || std::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(none, 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_paths_are_not_served_on_the_public_listener() {
    let origin = Origin::start(|req| Reply::ok(format!("origin saw {}", req.path()))).await;
    let shellac = Shellac::start(&simple_config(&[&origin], "", "")).await;
    for path in ["/metrics", "/healthz"] {
        let r = shellac.get(path).await;
        assert_eq!(
            r.text(),
            format!("origin saw {path}"),
            "public {path} must be proxied"
        );
        assert!(!r.text().contains("# TYPE"));
    }
    let r = get(shellac.admin, "/healthz").await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    let r = get(shellac.admin, "/metrics").await.unwrap();
    assert!(r.text().contains("# TYPE shellac_requests_total counter"));
    assert_eq!(get(shellac.admin, "/other").await.unwrap().status, 404);
}
