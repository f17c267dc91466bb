//! The demo origin that `scripts/demo` puts behind Shellac: a slow dynamic page, a cacheable
//! page, an uncacheable one, and a health endpoint, on every port given (default 9001 9002).
//!
//! `cargo run --release --example demo_origin -- 9001 9002`

#[path = "../tests/common/http.rs"]
mod http;

use http::{Origin, Reply};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn page(port: u16, req: &http::Request) -> Reply {
    let served = |r: Reply| r.header("X-Served-By", format!("demo-origin:{port}"));
    match req.path() {
        "/healthz" => Reply::ok("ok\n"),
        "/slow" => served(
            Reply::ok(format!(
                "slow dynamic page, rendered at {} by :{port} after 1 s of work\n",
                now()
            ))
            .header("Cache-Control", "public, max-age=10")
            .header("Content-Type", "text/plain")
            .delay(Duration::from_secs(1)),
        ),
        "/cacheable" => served(
            Reply::ok(format!("cacheable page from :{port}\n"))
                .header("Cache-Control", "public, max-age=60")
                .header("ETag", "\"v1\"")
                .header("Content-Type", "text/plain"),
        ),
        "/uncacheable" => served(
            Reply::ok(format!(
                "uncacheable page, rendered at {} by :{port}\n",
                now()
            ))
            .header("Cache-Control", "no-store")
            .header("Content-Type", "text/plain"),
        ),
        _ => served(
            Reply::ok("Shellac demo origin: try /slow, /cacheable, /uncacheable\n")
                .header("Content-Type", "text/plain"),
        ),
    }
}

#[tokio::main]
async fn main() {
    let mut ports: Vec<u16> = std::env::args()
        .skip(1)
        .map(|p| p.parse().expect("a port number"))
        .collect();
    if ports.is_empty() {
        ports = vec![9001, 9002];
    }
    let mut origins = Vec::new();
    for port in ports {
        origins
            .push(Origin::start_on(&format!("127.0.0.1:{port}"), move |req| page(port, req)).await);
        println!("demo origin on http://127.0.0.1:{port}");
    }
    std::future::pending::<()>().await;
}
