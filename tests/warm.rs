//! `shellac warm` against the real binary: a sitemap of 200 URLs is stored, a second run finds
//! them cached (the origin proves both), and a proxy that is down is a non-zero exit.

mod common;

use common::http::{Origin, Reply};
use common::{simple_config, Shellac, BIN};
use std::process::Command;

fn warm(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).arg("warm").args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn line_count(text: &str, label: &str) -> usize {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} line in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sitemap_is_stored_then_found_cached() {
    let origin = Origin::start(|req| {
        if req.path().starts_with("/private") {
            return Reply::ok("p").header("Cache-Control", "private");
        }
        Reply::ok(format!("page {}", req.path())).header("Cache-Control", "max-age=300")
    })
    .await;
    let shellac = Shellac::start(&simple_config(&[&origin], "", ", cache: true")).await;
    let mut xml = String::from("<?xml version=\"1.0\"?><urlset>");
    for i in 0..200 {
        xml.push_str(&format!("<url><loc>http://site.test/p/{i}</loc></url>"));
    }
    xml.push_str("<url><loc>http://site.test/private/1</loc></url></urlset>");
    let sitemap = shellac.dir.join("sitemap.xml");
    std::fs::write(&sitemap, xml).unwrap();
    let proxy = format!("http://{}", shellac.addr);
    let s = sitemap.to_str().unwrap();

    let (code, out) = warm(&["--sitemap", s, "--proxy", &proxy, "--concurrency", "8"]);
    eprintln!("{out}");
    assert_eq!(code, 0, "{out}");
    assert_eq!(line_count(&out, "stored:"), 200, "{out}");
    assert_eq!(line_count(&out, "not stored:"), 1, "{out}");
    assert!(out.contains("private: 1"), "{out}");
    assert_eq!(origin.count(), 201);

    let (code, out) = warm(&["--sitemap", s, "--proxy", &proxy, "--rate", "1000"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(line_count(&out, "already cached:"), 200, "{out}");
    assert_eq!(line_count(&out, "stored:"), 0, "{out}");
    assert_eq!(
        origin.count(),
        202,
        "only the private page went to the origin again"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_that_is_down_is_a_failure() {
    let dir = common::temp_dir();
    let list = dir.join("urls.txt");
    std::fs::write(&list, "/a\n/b\n").unwrap();
    let proxy = format!("http://127.0.0.1:{}", common::free_port());
    let (code, out) = warm(&[list.to_str().unwrap(), "--proxy", &proxy]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(line_count(&out, "errors:"), 2, "{out}");
    let (code, out) = warm(&["--concurrency", "0", list.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}");
}
