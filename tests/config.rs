//! The config surface from the outside: `-t`, exit codes, error messages, shipped files.

mod common;

use common::{free_port, run, temp_dir};

const GOOD: &str = r#"
listen: ["127.0.0.1:LISTEN"]
admin: {listen: "127.0.0.1:ADMIN"}
upstreams:
  app:
    backends: ["127.0.0.1:9001", {addr: "127.0.0.1:9002", weight: 2}]
    health_check: {kind: http, path: /healthz, interval: 1s}
routes:
  - {host: "*", path_prefix: /, upstream: app}
"#;

fn check(yaml: &str) -> (i32, String) {
    let path = temp_dir().join("c.yaml");
    std::fs::write(
        &path,
        yaml.replace("LISTEN", "18080").replace("ADMIN", "19091"),
    )
    .unwrap();
    run(&["-t", "-c", path.to_str().unwrap()])
}

#[test]
fn every_shipped_config_is_valid() {
    let mut n = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/conf")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            // `-t` opens the files start-up opens (the access log): point the deployment's
            // directories at a scratch one, as the package's install step creates them.
            let scratch = common::temp_dir();
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("/var/log/shellac/", &format!("{}/", scratch.display()))
                .replace("/run/shellac/", &format!("{}/", scratch.display()));
            let copy = scratch.join(path.file_name().unwrap());
            std::fs::write(&copy, text).unwrap();
            let (code, out) = run(&["-t", "-c", copy.to_str().unwrap()]);
            assert_eq!(code, 0, "{}: {out}", path.display());
            assert!(out.contains("configuration OK"));
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn bad_configs_name_the_key_and_the_fix() {
    let table: &[(&str, &str, &[&str])] = &[
        (
            "127.0.0.1:9002",
            "10.0.0.300:80",
            &[
                "upstreams.app.backends[1]",
                "\"10.0.0.300:80\" is not an IP:port",
            ],
        ),
        (
            "upstream: app}",
            "upstream: api}",
            &["routes[0].upstream", "no upstream named \"api\""],
        ),
        (
            "interval: 1s",
            "interval: 1",
            &["upstreams.app.health_check.interval", "no unit"],
        ),
        (
            "interval: 1s",
            "interval: 1s, flavour: x",
            &["unknown field `flavour`"],
        ),
        (
            "kind: http",
            "kind: icmp",
            &["upstreams.app.health_check.kind", "unknown variant `icmp`"],
        ),
        (
            "\"127.0.0.1:9001\", {addr: \"127.0.0.1:9002\", weight: 2}",
            "",
            &["upstreams.app.backends", "empty"],
        ),
        (
            "\"127.0.0.1:9001\", {addr: \"127.0.0.1:9002\", weight: 2}",
            "{addr: \"127.0.0.1:9001\", weight: 0}",
            &["upstreams.app.backends", "every weight is 0"],
        ),
        (
            "listen: [\"127.0.0.1:LISTEN\"]",
            "listen: [\"127.0.0.1:LISTEN\", \"127.0.0.1:LISTEN\"]",
            &["listen[1]", "twice"],
        ),
        (
            "listen: [\"127.0.0.1:LISTEN\"]",
            "listen: [\"127.0.0.1:ADMIN\"]",
            &["admin.listen", "also a public listener"],
        ),
        (
            "path: /healthz",
            "path: healthz",
            &["upstreams.app.health_check.path", "must start with /"],
        ),
        (
            "path_prefix: /",
            "path_prefix: x",
            &["routes[0].path_prefix", "must start with /"],
        ),
        (
            "host: \"*\"",
            "host: \"a.test:80\"",
            &["routes[0].host", "no port"],
        ),
        ("routes:", "rotues:", &["unknown field `rotues`"]),
        (
            "admin: {",
            "admin: {purge_alow: [], ",
            &["admin", "unknown field `purge_alow`"],
        ),
    ];
    for (from, to, expect) in table {
        assert!(GOOD.contains(from), "bad table row: {from}");
        let (code, out) = check(&GOOD.replacen(from, to, 1));
        assert_ne!(code, 0, "{to} accepted");
        for e in *expect {
            assert!(out.contains(e), "for {to:?} expected {e:?} in: {out}");
        }
    }
    let (code, out) = check("listen: [");
    assert_ne!(code, 0);
    assert!(!out.is_empty());
}

#[test]
fn a_bad_config_exits_before_binding_anything() {
    let port = free_port();
    let yaml = GOOD
        .replace("LISTEN", &port.to_string())
        .replace("ADMIN", &free_port().to_string())
        .replace("kind: http", "kind: nope");
    let path = temp_dir().join("bad.yaml");
    std::fs::write(&path, yaml).unwrap();
    // Without -t: a real start that must refuse.
    let (code, out) = run(&["-c", path.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("health_check.kind"), "{out}");
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the public port was left free");
}

#[test]
fn missing_file_and_missing_flag_are_clear() {
    let (code, out) = run(&["-c", "/nonexistent/shellac.yaml"]);
    assert_ne!(code, 0);
    assert!(
        out.contains("/nonexistent/shellac.yaml") && out.contains("cannot read"),
        "{out}"
    );
    let (code, out) = run(&[]);
    assert_ne!(code, 0);
    assert!(out.contains("-c"), "{out}");
}

#[test]
fn help_lists_the_flags() {
    let (code, out) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in ["--conf", "--test", "--daemon", "--upgrade"] {
        assert!(out.contains(flag), "{flag} missing from --help: {out}");
    }
}
