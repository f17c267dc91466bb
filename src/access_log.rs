//! The access log: one line per request, written by a dedicated thread.
//!
//! The request path formats the line into a reused per-thread buffer and appends it to its
//! thread's shard of pending lines: a short lock over a copy, never held across an await, and no
//! allocation. A writer thread swaps the shards out and writes them in batches, every
//! [`FLUSH_EVERY`] or sooner when a shard fills, so a busy proxy wakes it tens of times a second,
//! not once per line (a per-line channel send and wake-up had cost about 18 µs per request, as
//! much as serving a hit). When a shard is full (the disk stalls) the line is dropped and counted
//! in `shellac_access_log_lines_total{result="dropped"}`, because a slow log must not slow
//! traffic. Lines of different worker threads can be written out of time order within one batch.
//!
//! Line format (space separated; every field is present, `-` when empty; bytes outside visible
//! ASCII and `\` are written `\xHH`, so fields never contain spaces):
//!
//! ```text
//! time client method host target status bytes duration upstream cache rules request_id
//! 2025-03-01T12:00:00.123Z 127.0.0.1 GET example.com /a?b=1 200 5120 0.003120 127.0.0.1:9001 - static+cors 3f9a1c0b7e42-1a
//! ```
//!
//! `client` is the real client ([`crate::client`]: the PROXY source, or what trusted proxies
//! vouch for), `time` is when the request arrived (UTC, ms), `bytes` the response body bytes sent to the
//! client, `duration` seconds from request arrival to the last byte, `status` 0 when no response
//! was sent, `rules` the names of the rules and plugins that applied, joined by `+`.
//!
//! Files are opened with `O_APPEND` and re-opened when the path stops naming the open file
//! (checked every second by the writer thread), so both logrotate styles work without a signal:
//! `create` (rename, then we re-open a new file within a second) and `copytruncate` (appends
//! land at the new end of the truncated file).

use crate::config::LogTarget;
use crate::metrics;
use pingora::proxy::Session;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Shards of pending lines; worker threads take one each, round robin.
const SHARDS: usize = 16;
/// Pending bytes per shard before lines are dropped: 4 MiB in all, seconds of peak traffic.
const SHARD_LIMIT: usize = 256 * 1024;
/// A shard this full wakes the writer before its next tick.
const SHARD_WAKE: usize = 64 * 1024;
/// How long a line may wait for the writer when traffic is light.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
const ROTATION_CHECK: Duration = Duration::from_secs(1);

/// What the proxy knows about a request beyond the session itself.
pub struct Facts<'a> {
    pub client: Option<std::net::IpAddr>,
    pub status: u16,
    pub started: Instant,
    pub upstream: Option<&'a SocketAddr>,
    pub cache_status: &'a str,
    pub request_id: &'a str,
    /// Rules and plugins that applied, `+`-joined; empty for none.
    pub rules: &'a str,
}

enum Msg {
    /// A shard passed [`SHARD_WAKE`]: write now rather than at the next tick.
    Wake,
    Finish(SyncSender<()>),
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    lines: u64,
}

struct Sink {
    shards: [Mutex<Pending>; SHARDS],
    tx: OnceLock<SyncSender<Msg>>,
    /// Taken by the writer thread when it starts.
    output: Mutex<Option<Output>>,
}

thread_local! {
    /// This thread's shard, and the buffer its lines are formatted in (kept between requests).
    static LOCAL: (usize, RefCell<String>) = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        (NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS, RefCell::new(String::with_capacity(512)))
    };
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Opens the target (so a bad path fails at start-up, before anything binds). The writer thread
/// starts with the first request, because daemonizing forks later and a thread started now
/// would not exist in the daemon.
pub fn init(target: &LogTarget) -> io::Result<()> {
    let output = match target {
        LogTarget::Off => return Ok(()),
        LogTarget::Stderr => Output::Stderr,
        LogTarget::File(path) => Output::open(path.clone())?,
    };
    let sink = Sink {
        shards: std::array::from_fn(|_| Mutex::default()),
        tx: OnceLock::new(),
        output: Mutex::new(Some(output)),
    };
    if SINK.set(sink).is_err() {
        log::warn!("access log initialised twice; keeping the first target");
    }
    Ok(())
}

/// Whether lines are written at all (`access_log.target: off` is none), so callers can skip
/// gathering what a line would say.
pub fn enabled() -> bool {
    SINK.get().is_some()
}

/// Queues one line for `session`; never blocks (the shard's lock covers one copy).
pub fn record(session: &Session, facts: &Facts) {
    let Some(sink) = SINK.get() else {
        return;
    };
    let tx = sink.tx.get_or_init(|| sink.start());
    let (kept, wake) = LOCAL.with(|(shard, line)| {
        let mut line = line.borrow_mut();
        line.clear();
        format_line(&mut line, session, facts, SystemTime::now());
        let Ok(mut pending) = sink.shards[*shard].lock() else {
            return (false, false);
        };
        let before = pending.bytes.len();
        if before + line.len() > SHARD_LIMIT {
            return (false, false);
        }
        pending.bytes.extend_from_slice(line.as_bytes());
        pending.lines += 1;
        (
            true,
            before < SHARD_WAKE && pending.bytes.len() >= SHARD_WAKE,
        )
    });
    if wake {
        // Full means a wake-up is already queued.
        let _ = tx.try_send(Msg::Wake);
    }
    if !kept {
        metrics::ACCESS_LOG_LINES
            .with_label_values(&["dropped"])
            .inc();
    }
}

/// Writes out every queued line; called once the server has stopped, before the process exits.
pub fn finish() {
    let Some(tx) = SINK.get().and_then(|s| s.tx.get()) else {
        return;
    };
    let (ack, done) = mpsc::sync_channel(1);
    if tx.send(Msg::Finish(ack)).is_ok() {
        let _ = done.recv_timeout(Duration::from_secs(2));
    }
}

impl Sink {
    fn start(&'static self) -> SyncSender<Msg> {
        let (tx, rx) = mpsc::sync_channel(4);
        let output = self.output.lock().ok().and_then(|mut o| o.take());
        if let Some(output) = output {
            let spawned = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || Writer::new(output).run(&self.shards, rx));
            if let Err(e) = spawned {
                log::error!("access log writer thread could not start: {e}; lines are dropped");
            }
        }
        tx
    }
}

fn format_line(line: &mut String, session: &Session, f: &Facts, now: SystemTime) {
    let req = session.req_header();
    let elapsed = f.started.elapsed();
    write_time(line, now.checked_sub(elapsed).unwrap_or(now));
    line.push(' ');
    match f.client {
        Some(ip) => {
            let _ = write!(line, "{ip}");
        }
        None => line.push('-'),
    }
    line.push(' ');
    push_field(line, req.method.as_str().as_bytes());
    line.push(' ');
    push_field(line, crate::authority::Authority::of(req).host().as_bytes());
    line.push(' ');
    let target = req.uri.path_and_query().map_or("", |p| p.as_str());
    push_field(line, target.as_bytes());
    let _ = write!(
        line,
        " {} {} {:.6} ",
        f.status,
        session.body_bytes_sent(),
        elapsed.as_secs_f64()
    );
    match f.upstream {
        Some(a) => {
            let _ = write!(line, "{a}");
        }
        None => line.push('-'),
    }
    line.push(' ');
    push_field(line, f.cache_status.as_bytes());
    line.push(' ');
    push_field(line, f.rules.as_bytes());
    line.push(' ');
    push_field(line, f.request_id.as_bytes());
    line.push('\n');
}

/// Appends `v`, escaped so that a field can never contain a space or a line break.
fn push_field(line: &mut String, v: &[u8]) {
    if v.is_empty() {
        line.push('-');
        return;
    }
    for &b in v {
        if (0x21..=0x7e).contains(&b) && b != b'\\' {
            line.push(b as char);
        } else {
            let _ = write!(line, "\\x{b:02x}");
        }
    }
}

/// RFC 3339 UTC with milliseconds, without a date crate (days-to-civil, H. Hinnant).
fn write_time(out: &mut String, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let sod = secs % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        d.subsec_millis()
    );
}

enum Output {
    Stderr,
    File { path: PathBuf, file: File, ino: u64 },
}

impl Output {
    fn open(path: PathBuf) -> io::Result<Output> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let ino = file.metadata()?.ino();
        Ok(Output::File { path, file, ino })
    }

    /// The path names another file (rotated by rename) or none: open the path afresh.
    fn rotated(&self) -> bool {
        match self {
            Output::Stderr => false,
            Output::File { path, ino, .. } => {
                std::fs::metadata(path).map_or(true, |m| m.ino() != *ino)
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Stderr => io::stderr().write(buf),
            Output::File { file, .. } => file.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stderr => io::stderr().flush(),
            Output::File { file, .. } => file.flush(),
        }
    }
}

struct Writer {
    out: Output,
    /// The shards' buffers, swapped out under each lock and written outside it; swapped back
    /// empty next time, so neither side allocates once both have grown.
    spare: Vec<Vec<u8>>,
    checked: Instant,
}

impl Writer {
    fn new(output: Output) -> Writer {
        Writer {
            out: output,
            spare: (0..SHARDS).map(|_| Vec::new()).collect(),
            checked: Instant::now(),
        }
    }

    fn run(mut self, shards: &[Mutex<Pending>; SHARDS], rx: Receiver<Msg>) {
        loop {
            let msg = rx.recv_timeout(FLUSH_EVERY);
            self.write_pending(shards);
            match msg {
                Ok(Msg::Finish(ack)) => {
                    let _ = ack.send(());
                    return;
                }
                Err(RecvTimeoutError::Disconnected) => return,
                Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
            }
            if self.checked.elapsed() >= ROTATION_CHECK {
                self.checked = Instant::now();
                self.reopen_if_rotated();
            }
        }
    }

    /// Takes every shard's lines first, then writes them: one write per shard that has lines,
    /// each holding whole lines, so appends from two processes during a reload never split one.
    fn write_pending(&mut self, shards: &[Mutex<Pending>; SHARDS]) {
        let mut lines = [0u64; SHARDS];
        for (i, shard) in shards.iter().enumerate() {
            if let Ok(mut pending) = shard.lock() {
                std::mem::swap(&mut pending.bytes, &mut self.spare[i]);
                lines[i] = std::mem::take(&mut pending.lines);
            }
        }
        let (mut written, mut failed) = (0, 0);
        for (buf, n) in self.spare.iter_mut().zip(lines) {
            if buf.is_empty() {
                continue;
            }
            // A failed write drops its lines rather than retrying them forever.
            match self.out.write_all(buf) {
                Ok(()) => written += n,
                Err(_) => failed += n,
            }
            buf.clear();
        }
        for (result, n) in [("written", written), ("failed", failed)] {
            if n > 0 {
                metrics::ACCESS_LOG_LINES
                    .with_label_values(&[result])
                    .inc_by(n);
            }
        }
    }

    fn reopen_if_rotated(&mut self) {
        let Output::File { path, .. } = &self.out else {
            return;
        };
        if !self.out.rotated() {
            return;
        }
        let path = path.clone();
        match Output::open(path.clone()) {
            Ok(output) => {
                log::info!("access log {} re-opened after rotation", path.display());
                self.out = output;
            }
            Err(e) => log::error!("access log {}: cannot re-open: {e}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(secs: u64, ms: u64) -> String {
        let mut s = String::new();
        write_time(
            &mut s,
            UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms),
        );
        s
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(time(951_782_400, 7), "2000-02-29T00:00:00.007Z");
        assert_eq!(time(1_700_000_000, 123), "2023-11-14T22:13:20.123Z");
        assert_eq!(time(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn fields_never_contain_spaces() {
        let mut s = String::new();
        push_field(&mut s, b"/a b\\c\n\xff");
        assert_eq!(s, "/a\\x20b\\x5cc\\x0a\\xff");
        s.clear();
        push_field(&mut s, b"");
        assert_eq!(s, "-");
    }
}
