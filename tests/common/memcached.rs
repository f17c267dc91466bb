//! A real memcached per test, on an ephemeral loopback port, plus a raw meta-protocol client
//! for planting and inspecting items behind the storage's back.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = "/usr/bin/memcached";

pub struct Memcached {
    child: Option<Child>,
    pub addr: SocketAddr,
}

impl Memcached {
    pub fn start() -> Memcached {
        let port = super::free_port();
        let mut m = Memcached {
            child: None,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        };
        m.restart();
        m
    }

    fn spawn(port: u16) -> Child {
        // -u only matters (and is required) when running as root.
        Command::new(BIN)
            .args(["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0"])
            .args(["-m", "64", "-I", "1m", "-u", "root"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start /usr/bin/memcached (apt-get install memcached)")
    }

    /// Starts it (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        self.child = Some(Self::spawn(self.addr.port()));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(self.addr) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                if s.write_all(b"mn\r\n").is_ok() {
                    let mut buf = [0u8; 4];
                    if s.read_exact(&mut buf).is_ok() && &buf == b"MN\r\n" {
                        return;
                    }
                }
            }
            assert!(Instant::now() < deadline, "memcached did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL by PID, and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// Hangs it (SIGSTOP): connections are still accepted by the kernel, nothing answers.
    /// Returns once every thread is stopped: SIGSTOP is delivered asynchronously, and a worker
    /// still running could answer one more request.
    pub fn pause(&self) {
        self.signal("-STOP");
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.all_threads_stopped() {
            assert!(Instant::now() < deadline, "memcached did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn all_threads_stopped(&self) -> bool {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid())) else {
            return false;
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .ok()
                // The state follows the parenthesised command name.
                .and_then(|st| st.rsplit_once(") ").map(|(_, rest)| rest.starts_with('T')))
                .unwrap_or(false)
        })
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn conn(&self) -> BufReader<TcpStream> {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        BufReader::new(s)
    }

    fn line(r: &mut BufReader<TcpStream>) -> String {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        l.trim_end().to_string()
    }

    pub fn set(&self, key: &str, value: &[u8]) {
        let mut r = self.conn();
        let mut cmd = format!("ms {key} {}\r\n", value.len()).into_bytes();
        cmd.extend_from_slice(value);
        cmd.extend_from_slice(b"\r\n");
        r.get_mut().write_all(&cmd).unwrap();
        assert_eq!(Self::line(&mut r), "HD", "ms {key}");
    }

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let mut r = self.conn();
        r.get_mut()
            .write_all(format!("mg {key} v\r\n").as_bytes())
            .unwrap();
        let l = Self::line(&mut r);
        if l == "EN" {
            return None;
        }
        let len: usize = l
            .strip_prefix("VA ")
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("mg {key}: {l}"));
        let mut v = vec![0; len + 2];
        r.read_exact(&mut v).unwrap();
        v.truncate(len);
        Some(v)
    }

    /// True if it existed.
    pub fn delete(&self, key: &str) -> bool {
        let mut r = self.conn();
        r.get_mut()
            .write_all(format!("md {key}\r\n").as_bytes())
            .unwrap();
        Self::line(&mut r) == "HD"
    }

    /// Every key stored (via the LRU crawler), sorted. The crawler answers `BUSY` while its
    /// background pass runs, so that is retried.
    pub fn keys(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut r = self.conn();
            r.get_mut()
                .write_all(b"lru_crawler metadump all\r\n")
                .unwrap();
            let mut keys = Vec::new();
            let mut busy = None;
            loop {
                let l = Self::line(&mut r);
                if l == "END" || l.is_empty() {
                    break;
                }
                if let Some(k) = l.strip_prefix("key=") {
                    keys.push(percent_decode(k.split(' ').next().unwrap_or("")));
                } else {
                    busy = Some(l);
                    break;
                }
            }
            match busy {
                None => {
                    keys.sort();
                    return keys;
                }
                Some(l) => {
                    assert!(Instant::now() < deadline, "metadump: {l}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// A counter from `stats`.
    pub fn stat(&self, name: &str) -> u64 {
        let mut r = self.conn();
        r.get_mut().write_all(b"stats\r\n").unwrap();
        let mut found = None;
        loop {
            let l = Self::line(&mut r);
            if l == "END" || l.is_empty() {
                break;
            }
            let mut parts = l.split(' ');
            if parts.next() == Some("STAT") && parts.next() == Some(name) {
                found = parts.next().and_then(|v| v.parse().ok());
            }
        }
        found.unwrap_or_else(|| panic!("no stat {name}"))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Drop for Memcached {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One memcached for a whole test binary, for suites that only need "a memcached" (each
/// Shellac gets its own namespace, so tests never see each other's entries). It dies with the
/// test process (PR_SET_PDEATHSIG), since statics are never dropped.
pub fn shared() -> SocketAddr {
    use std::os::unix::process::CommandExt;
    use std::sync::OnceLock;
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let port = super::free_port();
        let mut cmd = Command::new(BIN);
        cmd.args(["-l", "127.0.0.1", "-p", &port.to_string(), "-U", "0"])
            .args(["-m", "256", "-I", "1m", "-u", "root"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        // PDEATHSIG fires when the spawning *thread* exits, and each test runs on its own
        // thread: spawn from one that lives as long as the process.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let child = cmd.spawn().expect("start /usr/bin/memcached");
            tx.send(()).unwrap();
            let _keep = child;
            loop {
                std::thread::park();
            }
        });
        rx.recv().unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "memcached did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        addr
    })
}

/// Waits until the servers together hold at least `n` object heads: the commit point of a fill
/// in memcached, which runs after the client was answered.
pub async fn wait_for_heads(servers: &[&Memcached], n: usize) {
    super::wait_for(
        &format!("{n} object heads in memcached"),
        Duration::from_secs(10),
        || {
            servers
                .iter()
                .map(|m| m.keys().iter().filter(|k| k.contains(":h:")).count())
                .sum::<usize>()
                >= n
        },
    )
    .await;
}

/// A TCP relay to `to` that delivers memcached's answers `latency` after they arrive, in
/// order: a constant network delay, so exchanges take that long whatever the CPU does.
pub async fn delay_line(to: SocketAddr, latency: Duration) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                return;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut cr, &mut sw).await;
            });
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0
                        || tx
                            .send((tokio::time::Instant::now() + latency, buf[..n].to_vec()))
                            .is_err()
                    {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                while let Some((at, bytes)) = rx.recv().await {
                    tokio::time::sleep_until(at).await;
                    if cw.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}
