//! `shellac -t` builds every component exactly as start-up does, binding nothing: for each
//! edge-case config below, `-t` and a real start agree. A config that passes `-t` starts and
//! serves; one that fails `-t` fails to start with the same message, and neither ever panics.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A full config around `upstream` (the body of upstream group `app`) and `extra` top-level
/// keys, on fresh ports; returns (path, public, admin).
fn write(dir: &std::path::Path, upstream: &str, extra: &str) -> (std::path::PathBuf, String) {
    let admin = format!("127.0.0.1:{}", common::free_port());
    let yaml = format!(
        "pingora:\n  threads: 1\n  pid_file: {d}/shellac.pid\n  upgrade_sock: {d}/upgrade.sock\n  grace_period_seconds: 1\n  graceful_shutdown_timeout_seconds: 1\nlisten: [\"127.0.0.1:{}\"]\nadmin: {{listen: \"{admin}\"}}\nupstreams:\n  app:\n{upstream}\nroutes:\n  - {{upstream: app}}\n{extra}",
        common::free_port(),
        d = dir.display()
    );
    let path = dir.join("shellac.yaml");
    std::fs::write(&path, yaml).unwrap();
    (path, admin)
}

enum Started {
    /// The admin listener answered.
    Serving,
    /// Exited on its own, with its code and output.
    Exited(i32, String),
}

/// Starts the binary for real and waits for a fact: the admin port answers, or it exits.
fn start(path: &std::path::Path, admin: &str) -> Started {
    let log = path.with_file_name("shellac.log");
    let mut child = Command::new(common::BIN)
        .args(["-c", path.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = std::fs::read_to_string(&log).unwrap_or_default();
            return Started::Exited(status.code().unwrap_or(-1), out);
        }
        if std::net::TcpStream::connect(admin).is_ok() {
            let _ = child.kill();
            let _ = child.wait();
            return Started::Serving;
        }
        assert!(Instant::now() < deadline, "neither served nor exited");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn t_and_a_real_start_agree_on_every_edge_case() {
    let backend = format!("127.0.0.1:{}", common::free_port());
    let up = |rest: &str| format!("    backends: [\"{backend}\"]\n{rest}");
    let hc = |rest: &str| up(&format!("    health_check: {{{rest}}}\n"));
    // (what, upstream body, extra top-level keys, -t passes, what a failure must name)
    let cases: Vec<(&str, String, String, bool, &str)> = vec![
        ("plain", up(""), String::new(), true, ""),
        ("http check", hc("kind: http, path: /healthz?x=1, host: \"a.test:8080\""), String::new(), true, ""),
        ("tcp check", hc("kind: tcp"), String::new(), true, ""),
        ("check path with a space", hc("kind: http, path: \"/a b\""), String::new(), false, "upstreams.app.health_check.path"),
        // The URI type accepts a bare quote (as browsers do): both accept it.
        ("check path with a quote", hc("kind: http, path: \"/a\\\"b\""), String::new(), true, ""),
        ("check host with a control byte", hc("kind: http, host: \"a\\u0007b\""), String::new(), false, "upstreams.app.health_check.host"),
        ("check host with a space", hc("kind: http, host: \"a b\""), String::new(), false, "upstreams.app.health_check.host"),
        ("check host empty", hc("kind: http, host: \"\""), String::new(), false, "upstreams.app.health_check.host"),
        ("zero weight beside a one", format!("    backends: [{{addr: \"{backend}\", weight: 0}}, {{addr: \"127.0.0.1:1\", weight: 1}}]\n"), String::new(), true, ""),
        ("access log in a missing directory", up(""), "access_log: {target: /nonexistent/dir/access.log}\n".into(), false, "access_log.target"),
    ];
    for (what, upstream, extra, passes, names) in cases {
        let dir = common::temp_dir();
        let (path, admin) = write(&dir, &upstream, &extra);
        let (code, out) = common::run(&["-t", "-c", path.to_str().unwrap()]);
        assert!(!out.contains("panicked"), "{what}: -t panicked:\n{out}");
        assert_eq!(code == 0, passes, "{what}: -t said {code}:\n{out}");
        match start(&path, &admin) {
            Started::Serving => assert!(passes, "{what}: started although -t refused it:\n{out}"),
            Started::Exited(code, log) => {
                assert!(!log.contains("panicked"), "{what}: start panicked:\n{log}");
                assert!(
                    !passes,
                    "{what}: passed -t but exited {code} at start:\n{log}"
                );
                assert_ne!(code, 0, "{what}");
                assert!(out.contains(names), "{what}: -t names {names}:\n{out}");
                assert!(log.contains(names), "{what}: start names {names}:\n{log}");
            }
        }
    }
}
