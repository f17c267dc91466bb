//! The origin `bench/run` puts behind every proxy (the same process for all of them), on every
//! port given. Answers are prebuilt so the origin spends as little of the shared CPU as it can:
//!
//! - `/static/1k`, `/static/256k`: cacheable files (`max-age=3600`)
//! - `/tagged/1k`: the 1 KiB file with four `Surrogate-Key` tags (tagged hits vs untagged)
//! - `/dyn/...`: a cacheable dynamic page that takes 20 ms
//! - `/storm/...`: a cacheable page that takes 200 ms (the cold-miss storm)
//! - `/pass/...`: `no-store`, answered at once (pass-through)
//! - `/healthz`; `/stats`: request counts (all but `/stats`), and storm requests and distinct
//!   storm URLs (and those fetched more than once), so the bench can report origin requests per
//!   new object.
//!
//! `cargo run --release --example bench_origin -- 18001 18002`

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    storm: AtomicU64,
    storm_urls: Mutex<HashMap<Vec<u8>, u64>>,
}

fn reply(port: u16, cache_control: &str, body_len: usize) -> Vec<u8> {
    tagged_reply(port, cache_control, body_len, "")
}

fn tagged_reply(port: u16, cache_control: &str, body_len: usize, extra: &str) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nCache-Control: {cache_control}\r\n\
         X-Served-By: bench-origin:{port}\r\n{extra}Content-Length: {body_len}\r\n\r\n"
    )
    .into_bytes();
    r.extend(std::iter::repeat_n(b'x', body_len));
    r
}

struct Replies {
    k1: Vec<u8>,
    tagged: Vec<u8>,
    k256: Vec<u8>,
    dynamic: Vec<u8>,
    storm: Vec<u8>,
    pass: Vec<u8>,
    health: Vec<u8>,
}

async fn serve(mut s: TcpStream, r: Arc<Replies>, stats: Arc<Stats>) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut buf = Vec::with_capacity(4096);
    let mut tmp = [0u8; 4096];
    loop {
        // One request head at a time; the proxies send GETs without bodies.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = s.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let head: Vec<u8> = buf.drain(..end).collect();
        let line_end = head.iter().position(|&b| b == b'\r').unwrap_or(0);
        let mut parts = head[..line_end].split(|&b| b == b' ');
        let method = parts.next().unwrap_or_default();
        let path = parts.next().unwrap_or_default();
        let close = head
            .to_ascii_lowercase()
            .windows(17)
            .any(|w| w == b"connection: close");
        if path == b"/stats" {
            // URLs fetched more than once: the bench reports them besides the average, since
            // the object in flight when wrk stops is abandoned by all its clients at once.
            let (urls, multi) = stats
                .storm_urls
                .lock()
                .map(|u| (u.len(), u.values().filter(|&&n| n > 1).count()))
                .unwrap_or_default();
            let body = format!(
                "requests {}\nstorm {}\nstorm_urls {urls}\nstorm_urls_refetched {multi}\n",
                stats.requests.load(Ordering::Relaxed),
                stats.storm.load(Ordering::Relaxed),
            );
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).await?;
            s.write_all(body.as_bytes()).await?;
            continue;
        }
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let out: &[u8] = if path.starts_with(b"/static/256k") {
            &r.k256
        } else if path.starts_with(b"/static/") {
            &r.k1
        } else if path.starts_with(b"/tagged/") {
            &r.tagged
        } else if path.starts_with(b"/dyn/") {
            tokio::time::sleep(Duration::from_millis(20)).await;
            &r.dynamic
        } else if path.starts_with(b"/storm/") {
            stats.storm.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut urls) = stats.storm_urls.lock() {
                *urls.entry(path.to_vec()).or_default() += 1;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            &r.storm
        } else if path.starts_with(b"/pass/") {
            &r.pass
        } else {
            &r.health
        };
        if method == b"HEAD" {
            let hend = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 4;
            s.write_all(&out[..hend]).await?;
        } else {
            s.write_all(out).await?;
        }
        if close {
            return Ok(());
        }
    }
}

#[tokio::main]
async fn main() {
    let ports: Vec<u16> = std::env::args()
        .skip(1)
        .map(|p| p.parse().expect("a port number"))
        .collect();
    let stats = Arc::new(Stats::default());
    for port in ports {
        let replies = Arc::new(Replies {
            k1: reply(port, "public, max-age=3600", 1024),
            tagged: tagged_reply(
                port,
                "public, max-age=3600",
                1024,
                "Surrogate-Key: site product-42 category-7 home\r\n",
            ),
            k256: reply(port, "public, max-age=3600", 256 * 1024),
            dynamic: reply(port, "public, max-age=3600", 8 * 1024),
            storm: reply(port, "public, max-age=3600", 1024),
            pass: reply(port, "no-store", 1024),
            health: reply(port, "no-store", 3),
        });
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind origin port");
        let stats = stats.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, replies.clone(), stats.clone()));
            }
        });
        println!("bench origin on http://127.0.0.1:{port}");
    }
    std::future::pending::<()>().await;
}
