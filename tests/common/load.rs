//! A fixed-rate load generator that checks every response: status 200 and the exact expected
//! body. Half the requests go on fresh connections, half on long-lived keep-alive connections.
//!
//! Like real clients (hyper's pool, browsers), a keep-alive connection the server has already
//! closed is noticed before reuse and replaced, not written to. The one thing forgiven is the
//! race every HTTP server has when it closes an idle keep-alive connection: a request sent on a
//! *reused* connection at that very moment gets EOF or a reset before any response byte. Such a request was never processed, so an idempotent GET is retried once
//! on a fresh connection, as browsers, curl and hyper do; these are counted in `retried`, not
//! hidden. Every other error (refused connect, reset or EOF after response bytes, any non-200,
//! a short or wrong body, a timeout) is a failure.

use super::http::{read_response, Response};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Default)]
pub struct Stats {
    pub ok: AtomicUsize,
    pub retried: AtomicUsize,
    pub failures: Mutex<Vec<String>>,
    /// Request ids of the successful responses.
    pub ids: Mutex<Vec<String>>,
}

impl Stats {
    pub fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }
    pub fn retried(&self) -> usize {
        self.retried.load(Ordering::SeqCst)
    }
    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap().clone()
    }
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

fn next_id() -> String {
    format!("load-{}", NEXT_ID.fetch_add(1, Ordering::SeqCst))
}

/// A connection that knows whether it has been used before.
pub struct Conn {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    reused: bool,
    closing: bool,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        Ok(Conn {
            r: BufReader::new(r),
            w,
            reused: false,
            closing: false,
        })
    }
}

impl Conn {
    /// The server closed this idle connection (EOF or reset already readable).
    fn closed_by_peer(&mut self) -> bool {
        use std::task::{Context, Poll};
        use tokio::io::AsyncBufRead;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Idle: nothing readable (Pending). Anything else before a request was sent means the
        // connection is closed or out of step.
        !matches!(
            std::pin::Pin::new(&mut self.r).poll_fill_buf(&mut cx),
            Poll::Pending
        )
    }
}

enum Attempt {
    Done(Response),
    /// Nothing came back on a reused connection: the request was never processed.
    NoResponseOnReused(String),
    Failed(String),
}

async fn attempt(conn: &mut Conn, path: &str, id: &str) -> Attempt {
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nX-Request-Id: {id}\r\n\r\n");
    let reused = conn.reused;
    let quiet = |e: String| {
        if reused {
            Attempt::NoResponseOnReused(e)
        } else {
            Attempt::Failed(e)
        }
    };
    if let Err(e) = conn.w.write_all(req.as_bytes()).await {
        return quiet(format!("write: {e}"));
    }
    // Whether any response byte arrived decides if a failure is the idle-close race.
    match conn.r.fill_buf().await {
        Ok([]) => return quiet("EOF before any response byte".into()),
        Err(e) => return quiet(format!("{e} before any response byte")),
        Ok(_) => {}
    }
    conn.reused = true;
    match read_response(&mut conn.r, false).await {
        Ok(resp) => {
            conn.closing = resp
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
            Attempt::Done(resp)
        }
        Err(e) => Attempt::Failed(format!("after response bytes: {e}")),
    }
}

/// One GET of `path`, checked against `expected`; `conn` is reused and replaced as needed.
pub async fn fetch(
    addr: SocketAddr,
    conn: &mut Option<Conn>,
    path: &str,
    expected: &[u8],
    stats: &Stats,
) {
    let id = next_id();
    let result = tokio::time::timeout(TIMEOUT, async {
        let mut retried = false;
        loop {
            if conn
                .as_mut()
                .is_some_and(|c| c.reused && c.closed_by_peer())
            {
                *conn = None;
            }
            if conn.is_none() {
                *conn = Some(
                    Conn::open(addr)
                        .await
                        .map_err(|e| format!("connect: {e}"))?,
                );
            }
            let c = conn.as_mut().expect("just set");
            match attempt(c, path, &id).await {
                Attempt::Done(resp) => {
                    if c.closing {
                        *conn = None;
                    }
                    return Ok(resp);
                }
                Attempt::NoResponseOnReused(e) if !retried => {
                    retried = true;
                    stats.retried.fetch_add(1, Ordering::SeqCst);
                    eprintln!("load: retrying {id} {path} on a fresh connection: {e}");
                    *conn = None;
                }
                Attempt::NoResponseOnReused(e) | Attempt::Failed(e) => {
                    *conn = None;
                    return Err(e);
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| Err(format!("no complete response in {TIMEOUT:?}")));
    let verdict = result.and_then(|resp| {
        if resp.status != 200 {
            Err(format!("status {}", resp.status))
        } else if resp.body != expected {
            Err(format!(
                "body of {} bytes, expected {}",
                resp.body.len(),
                expected.len()
            ))
        } else if resp.header("x-request-id") != Some(id.as_str()) {
            Err(format!("x-request-id {:?}", resp.header("x-request-id")))
        } else {
            Ok(())
        }
    });
    match verdict {
        Ok(()) => {
            stats.ok.fetch_add(1, Ordering::SeqCst);
            stats.ids.lock().unwrap().push(id);
        }
        Err(e) => stats
            .failures
            .lock()
            .unwrap()
            .push(format!("{id} {path}: {e}")),
    }
}

/// Steady load until [`Load::stop`]: `rate` requests per second in total, half on fresh
/// connections, half spread over `keepalive` persistent connections.
pub struct Load {
    pub stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(
        addr: SocketAddr,
        rate: u32,
        keepalive: u32,
        path: &'static str,
        expected: Arc<Vec<u8>>,
    ) -> Load {
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let fresh_every = Duration::from_secs(2) / rate;
        let keep_every = Duration::from_secs(2) * keepalive / rate;
        {
            let (stats, stop, expected) = (stats.clone(), stop.clone(), expected.clone());
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(fresh_every);
                let mut inflight = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    let (stats, expected) = (stats.clone(), expected.clone());
                    inflight.push(tokio::spawn(async move {
                        fetch(addr, &mut None, path, &expected, &stats).await
                    }));
                }
                for t in inflight {
                    let _ = t.await;
                }
            }));
        }
        for _ in 0..keepalive {
            let (stats, stop, expected) = (stats.clone(), stop.clone(), expected.clone());
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(keep_every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut conn = None;
                while !stop.load(Ordering::SeqCst) {
                    tick.tick().await;
                    fetch(addr, &mut conn, path, &expected, &stats).await;
                }
            }));
        }
        Load { stats, stop, tasks }
    }

    /// Stops issuing requests and waits for those in flight.
    pub async fn stop(self) -> Arc<Stats> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("load task");
        }
        self.stats
    }
}

/// `clients` keep-alive clients asking for `target`, each one request after another while
/// `more(requests it made so far)` holds; every response, in no particular order.
pub async fn sequential_clients(
    addr: SocketAddr,
    target: &'static str,
    clients: usize,
    more: impl Fn(usize) -> bool + Clone + Send + 'static,
) -> Vec<Response> {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let more = more.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = super::http::Client::connect(addr).await.unwrap();
            let mut got = Vec::new();
            while more(got.len()) {
                got.push(c.request("GET", target, &[], b"").await.unwrap());
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}
