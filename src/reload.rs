//! Zero-downtime reload and process signals.
//!
//! `shellac reload -c FILE [-d]` is the one reload action (shell and systemd `ExecReload`):
//! 1. the new config is loaded and validated exactly like `shellac -t`; an error is printed and
//!    the command exits 1 before the running process is touched;
//! 2. the running process is found through `pingora.pid_file`;
//! 3. this process becomes the new server, started as with `-u`: it listens on
//!    `pingora.upgrade_sock`, and only once that socket exists is `SIGQUIT` sent to the old one,
//!    so the old process never gives up its sockets to nobody;
//! 4. the old process hands over its listening sockets, keeps accepting for Pingora's fixed 5 s,
//!    then stops accepting and finishes in-flight requests within `grace_period_seconds`.
//!
//! Signals: `SIGQUIT` graceful upgrade (hand over), `SIGTERM` graceful stop, `SIGINT` fast stop,
//! as in Pingora. `SIGHUP` is ignored with a log line: a reload must validate first and start a
//! new process whose pid the supervisor learns, which `shellac reload` does and a signal cannot.

use crate::config::Config;
use async_trait::async_trait;
use pingora::proxy::Session;
use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// The first command-line argument that turns `shellac` into the reload action.
pub const SUBCOMMAND: &str = "reload";

static DRAINING: AtomicBool = AtomicBool::new(false);

/// True once this process was told to hand over or stop: its counters are about to vanish.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// Called first thing in `main`: until the signal watcher runs, a SIGHUP (e.g. from a closing
/// terminal) would otherwise kill the process with the default action.
pub fn ignore_sighup() {
    // SAFETY: installing SIG_IGN has no preconditions; no other thread exists yet.
    unsafe {
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// A takeover in progress: the thread that signals the old process once our upgrade socket is
/// listening.
pub struct Takeover {
    signaller: JoinHandle<()>,
}

/// Step 2 and the start of step 3: finds the old process and arranges for its `SIGQUIT`.
/// `opt.upgrade` is set so that bootstrap waits for the sockets.
pub fn prepare(opt: &mut Opt, config: &Config) -> Result<Takeover, String> {
    let pid_file = &config.pingora.pid_file;
    let old = running_pid(Path::new(pid_file))
        .map_err(|e| format!("no running shellac found through pingora.pid_file {pid_file}: {e}; start one with `shellac -c FILE` first"))?;
    let sock = PathBuf::from(&config.pingora.upgrade_sock);
    // A stale socket file would look like ours and trigger the signal too early.
    match std::fs::remove_file(&sock) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("pingora.upgrade_sock {}: {e}", sock.display())),
    }
    opt.upgrade = true;
    log::info!("reload: configuration valid; taking over from pid {old}");
    // Joined before the server runs, so no thread survives into daemonize's fork.
    let signaller = std::thread::spawn(move || signal_when_listening(&sock, old));
    Ok(Takeover { signaller })
}

impl Takeover {
    /// Bootstrap has received the sockets by the time this is called.
    pub fn finish(self) {
        let _ = self.signaller.join();
    }
}

fn signal_when_listening(sock: &Path, old: i32) {
    // Bootstrap creates the socket within milliseconds; Pingora's side of the hand-over retries
    // for about 5 s, so waiting longer than that would be pointless.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sock.exists() {
        if Instant::now() > deadline {
            log::error!(
                "reload: {} never appeared; pid {old} left running",
                sock.display()
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: kill(2) with a pid we checked belongs to a running shellac.
    if unsafe { libc::kill(old, libc::SIGQUIT) } == 0 {
        log::info!("reload: sent SIGQUIT to pid {old}; it hands over its sockets and drains");
    } else {
        log::error!(
            "reload: SIGQUIT to pid {old} failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The pid in `pid_file`, if that process is alive and is a shellac.
fn running_pid(pid_file: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(pid_file).map_err(|e| e.to_string())?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{:?} is not a pid", text.trim()))?;
    if pid <= 0 {
        return Err(format!("{pid} is not a pid"));
    }
    // The pid file may be stale and the number reused: never signal anything but a shellac.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map_err(|_| format!("pid {pid} is not running"))?;
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let name = Path::new(std::ffi::OsStr::new(
        std::str::from_utf8(argv0).unwrap_or(""),
    ))
    .file_name()
    .and_then(|n| n.to_str())
    .unwrap_or("");
    if !name.contains("shellac") {
        return Err(format!("pid {pid} is {name:?}, not shellac"));
    }
    Ok(pid)
}

/// Runs the server until it stops, then flushes the access log and exits.
pub fn run(server: Server, conf_path: String) -> ! {
    if !server.configuration.daemon {
        // Pingora writes the pid file only when daemonized; `shellac reload` needs it always.
        write_pid_file(&server.configuration.pid_file);
    }
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals { conf_path }),
    });
    crate::access_log::finish();
    std::process::exit(0)
}

fn write_pid_file(path: &str) {
    // Same convention as Pingora's daemon mode: the previous pid moves to `<pid_file>.old`.
    let _ = std::fs::rename(path, format!("{path}.old"));
    if let Err(e) = std::fs::write(path, format!("{}\n", std::process::id())) {
        log::warn!("pid file {path}: {e}; `shellac reload` will not find this process");
    }
}

/// Pingora's Unix signal handling plus SIGHUP, which it leaves at the default (terminate).
struct Signals {
    conf_path: String,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let register = |kind| signal(kind).expect("registering a signal handler");
        let mut quit = register(SignalKind::quit());
        let mut term = register(SignalKind::terminate());
        let mut int = register(SignalKind::interrupt());
        let mut hup = register(SignalKind::hangup());
        let signal = loop {
            tokio::select! {
                _ = quit.recv() => break ShutdownSignal::GracefulUpgrade,
                _ = term.recv() => break ShutdownSignal::GracefulTerminate,
                _ = int.recv() => break ShutdownSignal::FastShutdown,
                _ = hup.recv() => log::warn!(
                    "SIGHUP ignored: reload with `shellac reload -c {}` (systemd: `systemctl reload shellac`)",
                    self.conf_path
                ),
            }
        };
        DRAINING.store(true, Ordering::Relaxed);
        signal
    }
}

/// In `response_filter`: a response finishing while the process drains closes its connection,
/// so the client's next request goes to a fresh connection (the new process) instead of racing
/// the old process closing an idle keep-alive connection.
pub fn close_when_draining(session: &mut Session) {
    if session.is_process_shutting_down() {
        session.set_keepalive(None);
    }
}
