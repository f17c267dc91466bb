//! Test harness: the real `shellac` binary as a child process on ephemeral loopback ports, real
//! origins ([`http::Origin`]) and raw clients. Each test gets its own process, so Prometheus
//! counters start at zero and no state leaks between tests.

#![allow(dead_code)]

pub mod config;
pub mod http;
pub mod load;
pub mod memcached;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_shellac");

/// Polls `cond` every 10 ms until it holds, failing the test with `what` after `within`. The one
/// way tests wait: for a fact (a counter, a key, a log line), never for a fixed time.
pub async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `n` deterministic pseudo-random bytes (xorshift64): bodies whose every byte matters.
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x = xorshift(x);
            x as u8
        })
        .collect()
}

/// One xorshift64 step.
pub fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// A loopback port no other caller in this test process has been given.
pub fn free_port() -> u16 {
    static ISSUED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if ISSUED
            .lock()
            .unwrap()
            .get_or_insert_with(HashSet::new)
            .insert(port)
        {
            return port;
        }
    }
}

pub fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "shellac-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `backends: [...]` for the given origins.
pub fn backends(origins: &[&http::Origin]) -> String {
    let list: Vec<String> = origins.iter().map(|o| format!("\"{}\"", o.addr)).collect();
    format!("[{}]", list.join(", "))
}

/// A config with one upstream group `app` over `origins` and one catch-all route, with raw YAML
/// fragments for the upstream and the route. New tests use [`config::TestConfig`] instead.
pub fn simple_config(origins: &[&http::Origin], upstream_extra: &str, route_extra: &str) -> String {
    format!(
        "upstreams:\n  app:\n    backends: {}\n{upstream_extra}\nroutes:\n  - {{host: \"*\", path_prefix: /, upstream: app{route_extra}}}\n",
        backends(origins)
    )
}

pub struct Shellac {
    child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
    pub config_path: PathBuf,
}

impl Shellac {
    /// Writes `body` (upstreams, routes, cache…) under a generated header with fresh ports and
    /// starts the binary, waiting until both listeners answer. `{LISTEN}`/`{ADMIN}` in `body`
    /// are replaced with the chosen addresses; `admin:` is added unless `body` has one.
    pub async fn start(body: &str) -> Shellac {
        Self::start_with_grace(body, 1).await
    }

    /// As [`Shellac::start`], running `bin` (a binary built on the library, e.g. an example
    /// with plugins) instead of `shellac`.
    pub async fn start_bin(bin: &std::path::Path, body: &str) -> Shellac {
        let dir = temp_dir();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config_path = dir.join("shellac.yaml");
        std::fs::write(&config_path, Self::render(body, &dir, addr, admin, 1)).unwrap();
        let log = std::fs::File::create(dir.join("shellac.log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn the binary");
        let mut s = Shellac {
            child,
            addr,
            admin,
            dir,
            config_path,
        };
        s.wait_ready().await;
        s
    }

    /// As [`Shellac::start`], with `pingora.grace_period_seconds` set to `grace`.
    pub async fn start_with_grace(body: &str, grace: u64) -> Shellac {
        Self::start_with_pingora(body, grace, "").await
    }

    /// As [`Shellac::start_with_grace`], with `pingora` (indented lines) added to the generated
    /// `pingora:` section.
    pub async fn start_with_pingora(body: &str, grace: u64, pingora: &str) -> Shellac {
        let dir = temp_dir();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config_path = dir.join("shellac.yaml");
        let yaml = Self::render(body, &dir, addr, admin, grace).replacen(
            "pingora:\n",
            &format!("pingora:\n{pingora}"),
            1,
        );
        std::fs::write(&config_path, yaml).unwrap();
        let mut s = Shellac {
            child: Self::spawn(&config_path, &dir, &[]),
            addr,
            admin,
            dir,
            config_path,
        };
        s.wait_ready().await;
        s
    }

    pub fn render(
        body: &str,
        dir: &std::path::Path,
        addr: SocketAddr,
        admin: SocketAddr,
        grace: u64,
    ) -> String {
        let mut yaml = format!(
            "pingora:\n  threads: 2\n  pid_file: {d}/shellac.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period_seconds: {grace}\n  graceful_shutdown_timeout_seconds: 1\n",
            d = dir.display()
        );
        // A body with its own `listen:` (e.g. PROXY protocol listeners) uses `{LISTEN}` in it.
        if !body.lines().any(|l| l.starts_with("listen:")) {
            yaml.push_str(&format!("listen: [\"{addr}\"]\n"));
        }
        if !body.contains("admin:") {
            yaml.push_str(&format!("admin: {{listen: \"{admin}\"}}\n"));
        }
        yaml.push_str(body);
        yaml.replace("{LISTEN}", &addr.to_string())
            .replace("{ADMIN}", &admin.to_string())
            .replace("{DIR}", &dir.display().to_string())
    }

    fn spawn(config: &std::path::Path, dir: &std::path::Path, extra: &[&str]) -> Child {
        Self::spawn_args(dir, &[], config, extra)
    }

    /// `shellac [before…] -c config [extra…]`, logging to the test's shellac.log.
    fn spawn_args(
        dir: &std::path::Path,
        before: &[&str],
        config: &std::path::Path,
        extra: &[&str],
    ) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("shellac.log"))
            .unwrap();
        Command::new(BIN)
            .args(before)
            .arg("-c")
            .arg(config)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("SHELLAC_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn shellac")
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("shellac exited during start-up ({status}):\n{}", self.log());
            }
            let public = tokio::net::TcpStream::connect(self.addr).await.is_ok();
            let admin = http::get(self.admin, "/healthz")
                .await
                .is_ok_and(|r| r.status == 200);
            if public && admin {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "shellac not ready after 20 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("shellac.pid")
    }

    /// Starts `shellac reload -c config` without waiting for it.
    pub fn spawn_reload(&self, config: &std::path::Path) -> Child {
        Self::spawn_args(&self.dir, &["reload"], config, &[])
    }

    /// Reloads with `self.config_path` and waits until the new process has taken the sockets
    /// over (it writes the pid file right after); the new process becomes `self`, the old one is
    /// returned, still draining.
    pub async fn reload(&mut self) -> Exiting {
        let started = Instant::now();
        let mut new = self.spawn_reload(&self.config_path);
        let deadline = started + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = new.try_wait() {
                panic!("shellac reload exited ({status}):\n{}", self.log());
            }
            let pid = std::fs::read_to_string(self.pid_file()).unwrap_or_default();
            if pid.trim() == new.id().to_string() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "reload did not take over in 15 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Exiting {
            child: std::mem::replace(&mut self.child, new),
            since: started,
        }
    }

    /// Sends `sig` to the current process (by the pid this harness started).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, sig) }, 0);
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("shellac.log")).unwrap_or_default()
    }

    pub async fn get(&self, target: &str) -> http::Response {
        http::get(self.addr, target)
            .await
            .expect("request through shellac")
    }

    pub async fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> http::Response {
        http::request(self.addr, method, target, headers)
            .await
            .expect("request through shellac")
    }

    pub async fn metrics(&self) -> String {
        http::get(self.admin, "/metrics")
            .await
            .expect("scrape")
            .text()
    }

    /// Sum of the samples of metric `name` whose labels include every pair in `labels`. A
    /// series that does not exist fails the test: "present and zero" and "never registered"
    /// (a typo, a renamed label) must not look alike. For a labelled counter that legitimately
    /// has no series until it first counts, use [`Shellac::metric_or_zero`].
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self.metrics().await;
        find_metric(&text, name, labels)
            .unwrap_or_else(|| panic!("no series {name}{labels:?} in /metrics:\n{text}"))
    }

    /// As [`Shellac::metric`], with a missing series read as 0 (a labelled counter that has
    /// not counted yet).
    pub async fn metric_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sum_metric(&self.metrics().await, name, labels)
    }
}

/// The sum of the matching samples, or `None` when no sample matches.
pub fn find_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        let set = rest.trim_end_matches('}');
        let ok = n == name
            && labels
                .iter()
                .all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if let (true, Ok(v)) = (ok, value.parse::<f64>()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

pub fn sum_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let set = rest.trim_end_matches('}');
            let ok = labels
                .iter()
                .all(|(k, v)| set.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            ok.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

impl Drop for Shellac {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- shellac log ---\n{}", self.log());
        }
    }
}

/// A process that was replaced by a reload and is draining; killed if dropped while alive.
pub struct Exiting {
    pub child: Child,
    /// When the reload that replaced it started.
    pub since: Instant,
}

impl Exiting {
    /// Waits up to `limit` after the reload started; returns how long after it the process
    /// exited, and its exit code.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<(Duration, Option<i32>)> {
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some((self.since.elapsed(), status.code()));
            }
            if self.since.elapsed() > limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// [`Exiting::exited_within`] in a background task, so exits are timed as they happen.
    pub fn watch(
        mut self,
        limit: Duration,
    ) -> tokio::task::JoinHandle<Option<(Duration, Option<i32>)>> {
        tokio::spawn(async move { self.exited_within(limit).await })
    }
}

impl Drop for Exiting {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `shellac` with `args` to completion and returns (exit code, stdout + stderr).
pub fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run shellac");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}
