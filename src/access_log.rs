//! The access log: one line per request, written by a dedicated thread.
//!
//! The request path only formats the line and `try_send`s it into a bounded queue; it never
//! waits for the disk or takes a lock across an await. When the queue is full (the disk stalls)
//! the line is dropped and counted in `shellac_access_log_lines_total{result="dropped"}`, because
//! a slow log must not slow traffic.
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
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Lines queued for the writer; about 4 MiB at typical line lengths, seconds of peak traffic.
const QUEUE_LINES: usize = 16 * 1024;
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
    Line(String),
    Finish(SyncSender<()>),
}

struct Sink {
    tx: OnceLock<SyncSender<Msg>>,
    /// Taken by the writer thread when it starts.
    output: Mutex<Option<Output>>,
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
        tx: OnceLock::new(),
        output: Mutex::new(Some(output)),
    };
    if SINK.set(sink).is_err() {
        log::warn!("access log initialised twice; keeping the first target");
    }
    Ok(())
}

/// Queues one line for `session`; never blocks.
/// Whether lines are written at all (`access_log.target: off` is none), so callers can skip
/// gathering what a line would say.
pub fn enabled() -> bool {
    SINK.get().is_some()
}

pub fn record(session: &Session, facts: &Facts) {
    let Some(sink) = SINK.get() else {
        return;
    };
    let line = format_line(session, facts, SystemTime::now());
    let tx = sink.tx.get_or_init(|| sink.start());
    let result = match tx.try_send(Msg::Line(line)) {
        Ok(()) => return,
        Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => "dropped",
    };
    metrics::ACCESS_LOG_LINES.with_label_values(&[result]).inc();
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
    fn start(&self) -> SyncSender<Msg> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_LINES);
        let output = self.output.lock().ok().and_then(|mut o| o.take());
        if let Some(output) = output {
            let spawned = std::thread::Builder::new()
                .name("access-log".into())
                .spawn(move || Writer::new(output).run(rx));
            if let Err(e) = spawned {
                log::error!("access log writer thread could not start: {e}; lines are dropped");
            }
        }
        tx
    }
}

fn format_line(session: &Session, f: &Facts, now: SystemTime) -> String {
    let req = session.req_header();
    let elapsed = f.started.elapsed();
    let mut line = String::with_capacity(256);
    write_time(&mut line, now.checked_sub(elapsed).unwrap_or(now));
    line.push(' ');
    match f.client {
        Some(ip) => {
            let _ = write!(line, "{ip}");
        }
        None => line.push('-'),
    }
    line.push(' ');
    push_field(&mut line, req.method.as_str().as_bytes());
    line.push(' ');
    push_field(
        &mut line,
        crate::authority::Authority::of(req).host().as_bytes(),
    );
    line.push(' ');
    let target = req.uri.path_and_query().map_or("", |p| p.as_str());
    push_field(&mut line, target.as_bytes());
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
    push_field(&mut line, f.cache_status.as_bytes());
    line.push(' ');
    push_field(&mut line, f.rules.as_bytes());
    line.push(' ');
    push_field(&mut line, f.request_id.as_bytes());
    line.push('\n');
    line
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
    out: BufWriter<Output>,
    /// Lines in `out`'s buffer or written since the last flush, counted when the flush tells
    /// whether they reached the file.
    pending: u64,
    checked: Instant,
}

impl Writer {
    fn new(output: Output) -> Writer {
        Writer {
            // Whole lines only: BufWriter flushes before a line that does not fit, so each write
            // holds complete lines and appends from two processes during a reload never split one.
            out: BufWriter::with_capacity(64 * 1024, output),
            pending: 0,
            checked: Instant::now(),
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        loop {
            match rx.recv_timeout(ROTATION_CHECK) {
                Ok(msg) => {
                    let mut next = Some(msg);
                    // Drain what is queued, then flush once: one write per burst, not per line.
                    while let Some(msg) = next {
                        match msg {
                            Msg::Line(line) => self.write(&line),
                            Msg::Finish(ack) => {
                                self.flush();
                                let _ = ack.send(());
                                return;
                            }
                        }
                        next = rx.try_recv().ok();
                    }
                    self.flush();
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return self.flush(),
            }
            if self.checked.elapsed() >= ROTATION_CHECK {
                self.checked = Instant::now();
                self.reopen_if_rotated();
            }
        }
    }

    fn write(&mut self, line: &str) {
        self.pending += 1;
        if self.out.write_all(line.as_bytes()).is_err() {
            self.failed();
        }
    }

    fn flush(&mut self) {
        if self.out.flush().is_err() {
            self.failed();
        } else if self.pending > 0 {
            metrics::ACCESS_LOG_LINES
                .with_label_values(&["written"])
                .inc_by(self.pending);
            self.pending = 0;
        }
    }

    fn failed(&mut self) {
        metrics::ACCESS_LOG_LINES
            .with_label_values(&["failed"])
            .inc_by(self.pending);
        self.pending = 0;
        // Drop what could not be written rather than retrying it forever. BufWriter offers no
        // "clear"; a fresh one over the same output does it.
        let out = std::mem::replace(&mut self.out, BufWriter::with_capacity(0, Output::Stderr));
        let (output, _unwritten) = out.into_parts();
        self.out = BufWriter::with_capacity(64 * 1024, output);
    }

    fn reopen_if_rotated(&mut self) {
        let Output::File { path, .. } = self.out.get_ref() else {
            return;
        };
        if !self.out.get_ref().rotated() {
            return;
        }
        let path = path.clone();
        self.flush();
        match Output::open(path.clone()) {
            Ok(output) => {
                log::info!("access log {} re-opened after rotation", path.display());
                *self.out.get_mut() = output;
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
