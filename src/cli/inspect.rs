//! `shellac inspect [--admin ADDR] [--token-file F] [--json] URL`: what the cache holds for URL
//! (`GET /cache?url=URL` on the admin listener), printed readably or as the JSON itself. Exit
//! status: 0 when answered completely (cached or not), 1 when the admin listener refused, could
//! not be reached or could not read a tier (the answer's `errors`), 2 for a usage error.

use super::http_client;
use serde_json::Value;
use std::fmt::Write;
use std::time::Duration;

const USAGE: &str = "usage: shellac inspect [--admin HOST:PORT] [--token-file FILE] [--json] URL
  --admin ADDR       the admin listener (default 127.0.0.1:9091)
  --token-file FILE  the file admin.purge_token_file names (sent as a bearer token)
  --json             print the admin listener's JSON answer as it is
  URL                http://host/path?query (or host/path), as clients request it";

#[derive(Debug, Default)]
struct Args {
    admin: String,
    token_file: Option<String>,
    json: bool,
    url: String,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        admin: super::stat::DEFAULT_ADMIN.into(),
        ..Args::default()
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--admin" | "-a" => a.admin = it.next().ok_or("--admin needs HOST:PORT")?.clone(),
            "--token-file" => {
                a.token_file = Some(it.next().ok_or("--token-file needs a file")?.clone())
            }
            "--json" => a.json = true,
            "-h" | "--help" => return Err(String::new()),
            other if other.starts_with('-') => return Err(format!("unknown argument {other:?}")),
            url if a.url.is_empty() => a.url = url.to_string(),
            other => return Err(format!("one URL at a time ({other:?})")),
        }
    }
    if a.url.is_empty() {
        return Err("say which URL to inspect".into());
    }
    Ok(a)
}

pub fn main(args: &[String]) -> i32 {
    super::tool("inspect", USAGE, args, parse, run)
}

/// Everything but unreserved characters percent-encoded.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn run(a: &Args) -> Result<(), String> {
    let token = match &a.token_file {
        Some(f) => Some(
            crate::config::PurgeToken::load(std::path::Path::new(f)).map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let auth = token
        .as_ref()
        .map(|t| format!("Bearer {}", String::from_utf8_lossy(t.as_bytes())));
    let mut headers = vec![];
    if let Some(h) = &auth {
        headers.push(("Authorization", h.as_str()));
    }
    let target = format!("/cache?url={}", encode(&a.url));
    let r = http_client::get_with(&a.admin, &target, &headers, Duration::from_secs(10)).map_err(
        |e| format!("cannot reach the admin listener at {e} (is Shellac running? see --admin)"),
    )?;
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    if r.status != 200 {
        let why = v["error"].as_str().unwrap_or("unexpected answer");
        return Err(format!("HTTP {}: {why}", r.status));
    }
    if a.json {
        println!("{v:#}");
    } else {
        print!("{}", render(&v));
    }
    match v["errors"].as_array() {
        Some(e) if !e.is_empty() => Err(format!(
            "the answer is incomplete: {}",
            e.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        )),
        _ => Ok(()),
    }
}

fn or_dash(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// The readable form of a `/cache` answer.
pub fn render(v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{}  (key {})", or_dash(&v["url"]), or_dash(&v["key"]));
    let tiers: Vec<&str> = v["tiers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if v["cached"].as_bool() == Some(true) {
        let _ = writeln!(o, "cached in {}", tiers.join(" and "));
    } else {
        let _ = writeln!(o, "not cached");
    }
    if v["fill_in_progress"].as_bool() == Some(true) {
        let _ = writeln!(
            o,
            "a node is fetching it from the origin now (fleet lease held)"
        );
    }
    for var in v["variants"].as_array().into_iter().flatten() {
        let _ = write!(
            o,
            "\n{} slot {}",
            or_dash(&var["slot"]),
            or_dash(&var["key"])
        );
        if !var["vary"].is_null() {
            let _ = write!(
                o,
                "  vary: {}  variance {}",
                or_dash(&var["vary"]),
                or_dash(&var["variance"])
            );
        }
        let _ = writeln!(o);
        for h in ["content_type", "content_encoding", "content_language"] {
            if !var[h].is_null() {
                let _ = writeln!(o, "  {}: {}", h.replace('_', "-"), or_dash(&var[h]));
            }
        }
        for c in var["copies"].as_array().into_iter().flatten() {
            let fresh = if c["fresh"].as_bool() == Some(true) {
                format!("fresh, ttl {}s", c["ttl"])
            } else {
                "stale".into()
            };
            let _ = writeln!(
                o,
                "  {:<10} status {}, {} bytes, {fresh}, age {}s",
                or_dash(&c["tier"]),
                c["status"],
                c["size"],
                c["age"]
            );
            let pad = " ".repeat(13);
            let _ = writeln!(
                o,
                "{pad}stored {}, expires {}",
                or_dash(&c["stored_at"]["date"]),
                or_dash(&c["expires"]["date"])
            );
            let win = |w: &Value| format!("{}s ({}s left)", w["seconds"], w["left"]);
            let _ = writeln!(
                o,
                "{pad}stale-while-revalidate {}, stale-if-error {}",
                win(&c["stale_while_revalidate"]),
                win(&c["stale_if_error"])
            );
            let _ = writeln!(
                o,
                "{pad}etag {}, last-modified {}",
                or_dash(&c["etag"]),
                or_dash(&c["last_modified"])
            );
            let tags: Vec<&str> = c["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !tags.is_empty() {
                let _ = writeln!(o, "{pad}tags {}", tags.join(" "));
            }
            if c["tier"] == "memcached" {
                let body = if c["inline"].as_bool() == Some(true) {
                    "body inline".to_string()
                } else {
                    let complete = if c["complete"].as_bool() == Some(true) {
                        "all present"
                    } else {
                        "SOME MISSING (a lookup treats it as a miss)"
                    };
                    format!("{} chunk(s), {complete}", c["chunks"])
                };
                let _ = writeln!(o, "{pad}memcached item ttl {}s, {body}", c["item_ttl"]);
            }
            if let Some(how) = c["invalidated"].as_str() {
                let by: Vec<&str> = c["invalidated_by"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let _ = writeln!(
                    o,
                    "{pad}{} by a purge marker ({})",
                    how.to_uppercase(),
                    by.join(", ")
                );
            }
        }
    }
    let purge = &v["purge"];
    let mut marks = Vec::new();
    if !purge["url_marker"].is_null() {
        marks.push(format!(
            "url purged {}",
            or_dash(&purge["url_marker"]["date"])
        ));
    }
    for m in purge["markers"].as_array().into_iter().flatten() {
        let name = format!("{} {}", or_dash(&m["kind"]), or_dash(&m["name"]));
        for mode in ["hard", "soft"] {
            // A hard purge is a soft one too: say it once.
            let implied = mode == "soft" && m["soft"] == m["hard"];
            if !m[mode].is_null() && !implied {
                marks.push(format!(
                    "{} {mode} {}",
                    name.trim_end(),
                    or_dash(&m[mode]["date"])
                ));
            }
        }
    }
    if marks.is_empty() {
        let _ = writeln!(o, "\npurge markers: none");
    } else {
        let _ = writeln!(o, "\npurge markers:");
        for m in marks {
            let _ = writeln!(o, "  {m}");
        }
    }
    for n in v["notes"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "note: {}", or_dash(n));
    }
    for e in v["errors"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "error: {}", or_dash(e));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_encodes() {
        let a = parse(&["--json".into(), "http://a.test/x?y=1&z".into()]).unwrap();
        assert!(a.json);
        assert_eq!(encode(&a.url), "http%3A%2F%2Fa.test%2Fx%3Fy%3D1%26z");
        assert!(parse(&[]).is_err());
        assert!(parse(&["a".into(), "b".into()]).is_err());
        assert!(render(&serde_json::json!({"cached": false})).contains("not cached"));
    }
}
