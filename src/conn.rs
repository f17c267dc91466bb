//! The accept side of the public listeners: open-connection count, a per-client-IP connection
//! cap, and a deadline on the whole request header (`limits.header_timeout`).
//!
//! Pingora only times each read (60 s, issue #447), so a client that sends one header byte
//! every few seconds holds a connection forever. [`Counted`] wraps the proxy's `ServerApp`; the
//! first time it sees a connection it wraps the stream in [`Guarded`], which every later call
//! (Pingora hands a reusable stream back to `process_new`) recognises by type, so each count is
//! taken once per connection and released when the stream is dropped, i.e. exactly when the
//! connection closes.
//!
//! # Header deadline
//! `Guarded` watches the bytes Pingora reads and writes and keeps a phase per connection:
//! - `Header`: a request header is being read. The deadline is armed when the connection opens
//!   (a client that connects and sends nothing is a slowloris too) and when the first byte of a
//!   later request arrives. Read bytes are scanned for the blank line that ends a header
//!   (`\r\n\r\n`, or the bare-LF forms the parser also accepts); the scanner's state carries
//!   across reads, so a terminator split over reads is found. Once the deadline passes with the
//!   header incomplete, reads fail with `TimedOut` and Pingora closes the connection.
//! - `Body`: the header ended; the request body and the response are not timed here
//!   (`read_timeout`s and `max_body` cover them). Writing a final response moves to `Idle`.
//! - `Idle`: between requests on a keep-alive connection. Nothing is timed: that is
//!   `keepalive_timeout`'s job (Pingora's idle read timeout). The next byte read starts
//!   `Header`.
//! - `Tunnel`: after a `101`, bytes are no longer HTTP.
//!
//! Writes that begin a `1xx` other than 101 (`100 Continue`) do not end the request: its body
//! follows. Bytes a client pipelines after a header are read together with it and parsed by
//! Pingora without another read, so a pipelined request is timed from its first read only if it
//! arrives incomplete; a request body still arriving after the response started (an early 413)
//! is read as `Header` and may be cut at the deadline, which only hurts a connection that is
//! being closed anyway.
//!
//! Cost on the hit path: a byte scan of the header as it is read and a phase check per read and
//! write. The clock is read only when a header needs a second read (or a connection opens), and
//! the timer (one per connection, reused across requests) is allocated only when a read of an
//! incomplete header has to wait.
//!
//! # PROXY protocol
//! On a `proxy_protocol: true` listener (told apart by the connection's local address) the
//! PROXY header is read first, within `limits.header_timeout` of the accept, which also bounds
//! the request header that follows. A connection without a valid one is closed before Pingora
//! sees it (counted under `proxy_protocol_*` in `shellac_connections_refused_total`). The
//! header's source replaces the peer address in the stream's `SocketDigest`, so everything
//! downstream (`Session::client_addr`) sees the client; bytes read past the header are replayed
//! first.
//!
//! # Per-IP cap
//! A sharded map of IP → open connections, each shard behind a `parking_lot` mutex held for a
//! hash-map update only (never across an await). A connection over `limits.max_connections_per_ip`
//! is dropped before Pingora reads a byte of HTTP (counted in
//! `shellac_connections_refused_total`); 0 is no cap. The IP is the connection's source (PROXY
//! or TCP); connections from `trusted_proxies` are not capped, since each carries many clients
//! (see [`crate::client`]). IPv4-mapped IPv6 peers count as their IPv4 address; other IPv6 peers count by their /64
//! ([`cap_key`]), since one host is routinely given a whole /64 and could otherwise open
//! `max_connections_per_ip` connections from each of 2^64 addresses.

use crate::client::{proxy_protocol, Clients};
use crate::config::{Limits, Listener};
use crate::metrics;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::apps::ServerApp;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub struct Counted<A> {
    app: Arc<A>,
    header_timeout: Duration,
    per_ip: Arc<PerIp>,
    listeners: Vec<Listener>,
    clients: Arc<Clients>,
}

impl<A> Counted<A> {
    pub fn new(
        app: Arc<A>,
        limits: &Limits,
        listeners: &[Listener],
        clients: Arc<Clients>,
    ) -> Counted<A> {
        Counted {
            app,
            header_timeout: limits.header_timeout,
            per_ip: Arc::new(PerIp::new(limits.max_connections_per_ip)),
            listeners: listeners.to_vec(),
            clients,
        }
    }

    /// Whether the listener that accepted a connection to `local` requires a PROXY header: the
    /// listener with exactly that address, else a wildcard one on that port.
    fn requires_proxy_header(&self, local: Option<SocketAddr>) -> bool {
        let Some(local) = local else { return false };
        let ip = local.ip().to_canonical();
        let exact = self
            .listeners
            .iter()
            .find(|l| l.addr.port() == local.port() && l.addr.ip().to_canonical() == ip);
        exact
            .or_else(|| {
                self.listeners
                    .iter()
                    .find(|l| l.addr.port() == local.port() && l.addr.ip().is_unspecified())
            })
            .is_some_and(|l| l.proxy_protocol)
    }

    /// Wraps a newly accepted connection, or `None` when it lacks a required PROXY header or
    /// its IP is at the cap.
    async fn admit(&self, mut stream: Stream) -> Option<Stream> {
        let accepted = Instant::now();
        let digest = stream.get_socket_digest();
        let local = digest
            .as_ref()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied());
        let mut prefix = Vec::new();
        let mut socket = None;
        if self.requires_proxy_header(local) {
            match proxy_protocol::read(&mut stream, self.header_timeout).await {
                Ok((source, rest)) => {
                    prefix = rest;
                    if let Some(source) = source {
                        // A fresh digest of the same socket (an l4 stream's id is its fd): the
                        // local address and TCP info stay the socket's, the peer is the client.
                        let d = SocketDigest::from_raw_fd(stream.id());
                        let _ = d.peer_addr.set(Some(
                            pingora::protocols::l4::socket::SocketAddr::Inet(source),
                        ));
                        socket = Some(Arc::new(d));
                    }
                }
                Err(e) => {
                    log::debug!("connection without a PROXY header closed: {e:?}");
                    metrics::CONNECTIONS_REFUSED
                        .with_label_values(&[e.reason()])
                        .inc();
                    return None;
                }
            }
        }
        let source = socket
            .as_ref()
            .or(digest.as_ref())
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let Some(slot) = Slot::take(&self.per_ip, self.clients.cap_key(source).map(cap_key)) else {
            metrics::CONNECTIONS_REFUSED
                .with_label_values(&["per_ip_cap"])
                .inc();
            return None;
        };
        Some(Box::new(Guarded {
            inner: stream,
            _slot: slot,
            timeout: self.header_timeout,
            phase: Phase::Header {
                deadline: Some(accepted + self.header_timeout),
            },
            scan: Scan::default(),
            timer: None,
            prefix,
            socket,
            date: Default::default(),
        }))
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Counted<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream = if stream.as_any().is::<Guarded>() {
            stream
        } else {
            self.admit(stream).await?
        };
        self.app.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.app.cleanup().await
    }
}

// --- per-IP cap ------------------------------------------------------------------------------

const SHARDS: usize = 16;

/// What the per-IP cap counts a peer as: IPv4 (also when IPv4-mapped) as itself, IPv6 as its
/// /64 network (RFC 4291 §2.5.4: the interface identifier is the host's to choose).
pub fn cap_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

struct PerIp {
    max: usize,
    hasher: RandomState,
    shards: [Mutex<HashMap<IpAddr, usize>>; SHARDS],
}

impl PerIp {
    fn new(max: usize) -> PerIp {
        PerIp {
            max,
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        &self.shards[self.hasher.hash_one(ip) as usize % SHARDS]
    }
}

/// One open connection: counted in the gauge and against its IP until dropped.
struct Slot {
    table: Arc<PerIp>,
    ip: Option<IpAddr>,
}

impl Slot {
    fn take(table: &Arc<PerIp>, ip: Option<IpAddr>) -> Option<Slot> {
        if let Some(ip) = ip {
            let mut shard = table.shard(&ip).lock();
            let n = shard.entry(ip).or_insert(0);
            if table.max > 0 && *n >= table.max {
                return None;
            }
            *n += 1;
        }
        metrics::OPEN_CONNECTIONS.inc();
        Some(Slot {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        metrics::OPEN_CONNECTIONS.dec();
        if let Some(ip) = self.ip {
            let mut shard = self.table.shard(&ip).lock();
            if let Some(n) = shard.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    // Entries for gone clients would otherwise grow the map without bound.
                    shard.remove(&ip);
                }
            }
        }
    }
}

// --- header deadline -------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// `deadline` is `None` until the first read of this header leaves it incomplete: a header
    /// that arrives in one read never reads the clock.
    Header {
        deadline: Option<Instant>,
    },
    Body,
    Idle,
    Tunnel,
}

/// Finds the blank line ending a header across reads: 0 nothing, 1 `\r`, 2 a line end, 3 a line
/// end then `\r`. Equivalent to keeping the last three bytes.
#[derive(Debug, Default, Clone, Copy)]
struct Scan(u8);

impl Scan {
    /// Feeds `bytes`; true once a header end has been seen.
    fn feed(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            self.0 = match (self.0, b) {
                (2 | 3, b'\n') => {
                    self.0 = 0;
                    return true;
                }
                (_, b'\n') => 2,
                (2, b'\r') => 3,
                (_, b'\r') => 1,
                _ => 0,
            };
        }
        false
    }
}

struct Guarded {
    inner: Stream,
    _slot: Slot,
    timeout: Duration,
    phase: Phase,
    scan: Scan,
    timer: Option<Pin<Box<Sleep>>>,
    /// Bytes read with the PROXY header that belong to the HTTP stream; served first.
    prefix: Vec<u8>,
    /// The stream's digest with the PROXY source as its peer, on PROXY listeners.
    socket: Option<Arc<SocketDigest>>,
    /// The origin's `Date` for the response being written ([`crate::date`]).
    date: crate::date::Kept,
}

/// The `Date` slot of a client connection's stream (every public listener's stream is one).
pub fn kept_date(stream: &Stream) -> Option<&crate::date::Kept> {
    stream.as_any().downcast_ref::<Guarded>().map(|g| &g.date)
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .finish()
    }
}

fn timed_out() -> io::Error {
    metrics::HEADER_TIMEOUTS.inc();
    io::Error::new(io::ErrorKind::TimedOut, "request header deadline passed")
}

impl Guarded {
    /// Advances the phase over freshly read bytes.
    fn on_read(&mut self, bytes: &[u8]) {
        match self.phase {
            Phase::Idle => {
                self.scan = Scan::default();
                self.date.forget();
                self.phase = Phase::Header { deadline: None };
                self.on_read(bytes);
            }
            Phase::Header { deadline } => {
                if self.scan.feed(bytes) {
                    self.phase = Phase::Body;
                } else if deadline.is_none() {
                    self.phase = Phase::Header {
                        deadline: Some(Instant::now() + self.timeout),
                    };
                }
            }
            Phase::Body | Phase::Tunnel => {}
        }
    }

    /// Whether a write begins a final (non-1xx) response header: Pingora writes one in one call
    /// starting with the status line, while a request is being answered.
    fn starts_final_header(&self, bytes: &[u8]) -> bool {
        !matches!(self.phase, Phase::Idle | Phase::Tunnel)
            && bytes.len() >= 10
            && bytes.starts_with(b"HTTP/1.")
            && bytes[9] != b'1'
    }

    fn on_write(&mut self, bytes: &[u8]) {
        if matches!(self.phase, Phase::Idle | Phase::Tunnel) || bytes.len() < 10 {
            return;
        }
        // Pingora writes a response header in one call starting with the status line.
        let informational = bytes.starts_with(b"HTTP/1.") && bytes[8] == b' ' && bytes[9] == b'1';
        if informational {
            if bytes[9..].starts_with(b"101") {
                self.phase = Phase::Tunnel;
            }
            return;
        }
        self.phase = Phase::Idle;
    }

    /// Whether the header deadline has passed, registering for a wake-up at it otherwise.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Phase::Header {
            deadline: Some(at), ..
        } = self.phase
        else {
            return false;
        };
        let timer = match self.timer.as_mut() {
            Some(t) => {
                if t.deadline() != at {
                    t.as_mut().reset(at);
                }
                t
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(at))),
        };
        timer.as_mut().poll(cx).is_ready()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.drain(..n);
            this.on_read(&buf.filled()[before..]);
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    this.on_read(&buf.filled()[before..]);
                }
                // A trickling client gets a byte in before each wait; it must still be cut.
                if n > 0 && this.expired(cx) {
                    return Poll::Ready(Err(timed_out()));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let header = this.starts_final_header(buf);
        let out = this.date.patch(buf, header);
        let res = Pin::new(&mut this.inner).poll_write(cx, out);
        if let Poll::Ready(Ok(n)) = res {
            this.date.wrote(n);
            this.on_write(&buf[..n]);
        }
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.date.pending() {
            // The rest of a header whose Date is being replaced: one piece at a time.
            let first = bufs
                .iter()
                .find(|b| !b.is_empty())
                .map_or(&[][..], |b| &b[..]);
            return self.poll_write(cx, first);
        }
        let this = self.get_mut();
        let res = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = res {
            if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                this.on_write(&first[..n.min(first.len())]);
            }
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for Guarded {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for Guarded {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Guarded {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Guarded {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Guarded {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Guarded {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.socket
            .clone()
            .or_else(|| self.inner.get_socket_digest())
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Guarded {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(chunks: &[&[u8]]) -> Vec<bool> {
        let mut s = Scan::default();
        chunks.iter().map(|c| s.feed(c)).collect()
    }

    #[test]
    fn header_end_is_found_across_reads() {
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]), [true]);
        assert_eq!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]), [false]);
        assert_eq!(
            ends(&[b"GET / HTTP/1.1\r", b"\nHost: a\r", b"\n", b"\r", b"\n"]),
            [false, false, false, false, true]
        );
        assert_eq!(ends(&[b"GET / HTTP/1.1\nHost: a\n", b"\n"]), [false, true]);
        assert_eq!(
            ends(&[b"A\r\r\n\r\r\n"]),
            [false],
            "a lone CR is not a line end"
        );
        assert_eq!(ends(&[b"X: a\r\n\r", b"x\r\n"]), [false, false]);
    }

    #[test]
    fn ipv6_peers_count_by_their_64_and_mapped_ipv4_as_ipv4() {
        let k = |s: &str| cap_key(s.parse().unwrap()).to_string();
        assert_eq!(k("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2:ffff:ffff:ffff:ffff"), "2001:db8:1:2::");
        assert_ne!(k("2001:db8:1:3::1"), k("2001:db8:1:2::1"));
        assert_eq!(k("::ffff:192.0.2.7"), "192.0.2.7");
        assert_eq!(k("192.0.2.7"), "192.0.2.7");
    }

    #[test]
    fn the_cap_counts_per_ip_and_releases_on_drop() {
        let table = Arc::new(PerIp::new(2));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = Slot::take(&table, Some(a)).unwrap();
        let _s2 = Slot::take(&table, Some(a)).unwrap();
        assert!(Slot::take(&table, Some(a)).is_none());
        assert!(Slot::take(&table, Some(b)).is_some());
        drop(s1);
        let _s3 = Slot::take(&table, Some(a)).unwrap();
        drop(_s3);
        drop(_s2);
        let open = Arc::new(PerIp::new(0));
        let many: Vec<Slot> = (0..1000)
            .map(|_| Slot::take(&open, Some(a)).expect("0 is no cap"))
            .collect();
        drop(many);
        assert!(
            table.shards.iter().all(|s| s.lock().is_empty()),
            "entries of gone clients are removed"
        );
    }
}
