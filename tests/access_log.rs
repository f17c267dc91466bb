//! The access log from the outside: one line per request with the documented fields, request
//! ids, rotation by rename and by truncation, and the `stderr`/`off` targets.

mod common;

use common::http::{Origin, Reply};
use common::{simple_config, Shellac};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

async fn origin() -> Origin {
    Origin::start(|r| {
        let n: usize = common::http::query(&r.target)
            .get("n")
            .and_then(|n| n.parse().ok())
            .unwrap_or(10);
        Reply::ok(vec![b'x'; n])
    })
    .await
}

/// Lines of `path` by their last field (the request id), once every id in `ids` is there.
async fn lines_for(path: &Path, ids: &[String]) -> HashMap<String, Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut by_id: HashMap<String, Vec<String>> = HashMap::new();
        for line in text.lines() {
            let id = line.rsplit(' ').next().unwrap_or("").to_string();
            by_id.entry(id).or_default().push(line.to_string());
        }
        if ids.iter().all(|id| by_id.contains_key(id)) {
            return by_id;
        }
        assert!(
            Instant::now() < deadline,
            "ids missing from {}:\n{text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_line_per_request_with_every_field() {
    let origin = origin().await;
    let config = simple_config(&[&origin], "", "").replace("host: \"*\"", "host: \"a.test\"")
        + "access_log: {target: \"{DIR}/access.log\"}\n";
    let shellac = Shellac::start(&config).await;
    let backend = origin.addr.to_string();

    // (method, host, target, id sent, expected status, expected body bytes, upstream)
    let mut expected = Vec::new();
    for i in 0..20 {
        let target = format!("/p/{i}?n={}", i * 100);
        expected.push((
            "GET",
            "a.test",
            target,
            Some(format!("given-{i}")),
            200,
            i * 100,
        ));
    }
    for i in 0..5 {
        expected.push(("GET", "a.test", format!("/gen/{i}"), None, 200, 10));
    }
    for i in 0..5 {
        expected.push((
            "GET",
            "other.test",
            format!("/none/{i}"),
            Some(format!("miss-{i}")),
            404,
            0,
        ));
    }
    expected.push((
        "HEAD",
        "a.test",
        "/head?n=5".into(),
        Some("head-0".into()),
        200,
        0,
    ));
    expected.push((
        "GET",
        "a.test",
        "/sp%20ace\\".into(),
        Some("odd-0".into()),
        200,
        10,
    ));

    let mut ids = Vec::new();
    for (method, host, target, id, status, _) in &expected {
        let mut headers = vec![("Host", *host)];
        if let Some(id) = id {
            headers.push(("X-Request-Id", id.as_str()));
        }
        let resp = shellac.request(method, target, &headers).await;
        assert_eq!(resp.status, *status, "{method} {host}{target}");
        let id = match id {
            Some(id) => id.clone(),
            None => {
                let generated = resp.header("x-request-id").expect("generated id echoed");
                assert_ne!(generated, "");
                generated.to_string()
            }
        };
        if *status == 200 {
            assert_eq!(resp.header("x-request-id"), Some(id.as_str()));
            let at_origin = origin.requests().last().cloned().unwrap();
            assert_eq!(at_origin.header("x-request-id"), Some(id.as_str()));
        }
        ids.push(id);
    }

    let by_id = lines_for(&shellac.dir.join("access.log"), &ids).await;
    assert_eq!(by_id.values().map(Vec::len).sum::<usize>(), expected.len());
    for ((method, host, target, _, status, bytes), id) in expected.iter().zip(&ids) {
        let lines = &by_id[id];
        assert_eq!(lines.len(), 1, "{lines:?}");
        let f: Vec<&str> = lines[0].split(' ').collect();
        assert_eq!(f.len(), 12, "{}", lines[0]);
        assert!(
            f[0].len() == 24 && f[0].ends_with('Z') && f[0].as_bytes()[10] == b'T',
            "{}",
            f[0]
        );
        assert_eq!(f[1], "127.0.0.1");
        assert_eq!(f[2], *method);
        assert_eq!(f[3], *host);
        let logged_target = target.replace('\\', "\\x5c");
        assert_eq!(f[4], logged_target);
        assert_eq!(f[5], status.to_string());
        assert_eq!(f[6], bytes.to_string(), "{}", lines[0]);
        assert!(
            f[7].parse::<f64>().is_ok_and(|d| (0.0..5.0).contains(&d)),
            "{}",
            f[7]
        );
        let upstream = if *status == 404 {
            "-"
        } else {
            backend.as_str()
        };
        assert_eq!(f[8], upstream);
        assert_eq!(f[9], "-", "cache status until the cache fills it in");
        assert_eq!(f[10], "-", "no rule applied");
        assert_eq!(f[11], id);
    }
    let written = shellac
        .metric("shellac_access_log_lines_total", &[("result", "written")])
        .await;
    assert_eq!(written as usize, expected.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn rotation_by_rename_and_by_truncation() {
    let origin = origin().await;
    let config = simple_config(&[&origin], "", "") + "access_log: {target: \"{DIR}/access.log\"}\n";
    let shellac = Shellac::start(&config).await;
    let log = shellac.dir.join("access.log");
    let mut n = 0;
    let mut send = async |count: usize| -> Vec<String> {
        let mut ids = Vec::new();
        for _ in 0..count {
            let id = format!("r-{n}");
            n += 1;
            let resp = shellac.request("GET", "/", &[("X-Request-Id", &id)]).await;
            assert_eq!(resp.status, 200);
            ids.push(id);
        }
        ids
    };

    let first = send(5).await;
    lines_for(&log, &first).await;
    // logrotate `create`: rename, and the writer must re-open the path on its own.
    let rotated = shellac.dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let mut second = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !log.exists() {
        assert!(Instant::now() < deadline, "access.log not re-created");
        second.extend(send(1).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = send(3).await;
    // FIFO: once these are in the new file, everything sent before them is written somewhere.
    lines_for(&log, &after).await;
    second.extend(after);
    let old = lines_for(&rotated, &first).await;
    let new_lines = std::fs::read_to_string(&log).unwrap();
    let in_new = |id: &String| new_lines.lines().any(|l| l.ends_with(&format!(" {id}")));
    let in_old = |id: &String| old.contains_key(id);
    for id in &second {
        assert!(in_new(id) != in_old(id), "{id} must be in exactly one file");
    }
    assert!(second.iter().rev().take(3).all(in_new));

    // logrotate `copytruncate`: the file shrinks under the writer, which appends at the new end.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    let third = send(3).await;
    lines_for(&log, &third).await;
    let bytes = std::fs::read(&log).unwrap();
    assert!(!bytes.contains(&0), "no hole of NULs after truncation");
    assert_eq!(String::from_utf8(bytes).unwrap().lines().count(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn stderr_target_and_off() {
    let origin = origin().await;
    let on =
        Shellac::start(&(simple_config(&[&origin], "", "") + "access_log: {target: stderr}\n"))
            .await;
    on.request("GET", "/to-stderr", &[("X-Request-Id", "via-stderr")])
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !on.log().lines().any(|l| {
        l.contains(" GET ") && l.contains(" /to-stderr 200 10 ") && l.ends_with(" via-stderr")
    }) {
        assert!(Instant::now() < deadline, "{}", on.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Off is the default: nothing is written and nothing counted.
    let off = Shellac::start(&simple_config(&[&origin], "", "")).await;
    let resp = off
        .request("GET", "/quiet", &[("X-Request-Id", "not-logged")])
        .await;
    assert_eq!(resp.header("x-request-id"), Some("not-logged"));
    let lines = off.metric("shellac_access_log_lines_total", &[]).await;
    assert_eq!(lines, 0.0);
    assert!(!off.log().contains("not-logged"));
}

/// Lines wait in per-thread shards and are written in batches: under concurrent load every
/// request still gets exactly one whole line, and none is dropped while the disk keeps up.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_each_get_one_whole_line() {
    let origin = origin().await;
    let config = simple_config(&[&origin], "", "") + "access_log: {target: \"{DIR}/access.log\"}\n";
    let shellac = Shellac::start(&config).await;
    let responses =
        common::load::sequential_clients(shellac.addr, "/burst?n=700", 16, |n| n < 200).await;
    assert_eq!(responses.len(), 16 * 200);
    let ids: Vec<String> = responses
        .iter()
        .map(|r| r.header("x-request-id").expect("a request id").to_string())
        .collect();
    let by_id = lines_for(&shellac.dir.join("access.log"), &ids).await;
    for id in &ids {
        let lines = &by_id[id];
        assert_eq!(lines.len(), 1, "{id}: {lines:?}");
        let f: Vec<&str> = lines[0].split(' ').collect();
        assert_eq!(f.len(), 12, "{}", lines[0]);
        assert_eq!(&f[4..7], ["/burst?n=700", "200", "700"], "{}", lines[0]);
    }
    for (result, lines) in [("written", ids.len()), ("dropped", 0)] {
        let counted = shellac
            .metric("shellac_access_log_lines_total", &[("result", result)])
            .await;
        assert_eq!(counted as usize, lines, "{result}");
    }
}
