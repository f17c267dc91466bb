//! `shellac purge [--admin ADDR] [--token-file F] (--url U | --tag T | --host H | --prefix P |
//! --all) [--soft]`: sends one `POST /purge` to the admin listener and prints what was done per
//! item. Flags repeat (`--tag a --tag b`). Exit status: 0 when everything was purged, 1 when
//! the server refused or failed any of it (or could not be reached), 2 for a usage error.

use super::http_client;
use serde_json::{json, Value};
use std::time::Duration;

const USAGE: &str = "usage: shellac purge [--admin HOST:PORT] [--token-file FILE] (--url URL | --tag TAG | --host HOST | --prefix HOST/PATH | --all)... [--soft]
  --admin ADDR       the admin listener (default 127.0.0.1:9091)
  --token-file FILE  the file admin.purge_token_file names (sent as a bearer token)
  --url URL          http://host/path?query: that URL, every Vary variant
  --tag TAG          every object the origin tagged TAG (Surrogate-Key / Cache-Tag)
  --host HOST        every object of HOST (any port)
  --prefix HOST/P    every object of HOST whose path starts with /P
  --all              everything
  --soft             mark stale (revalidate, or serve stale within its windows) instead of removing";

#[derive(Debug, Default)]
struct Args {
    admin: String,
    token_file: Option<String>,
    body: serde_json::Map<String, Value>,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        admin: super::stat::DEFAULT_ADMIN.into(),
        ..Args::default()
    };
    let mut it = args.iter();
    let mut any = false;
    while let Some(arg) = it.next() {
        let mut push = |field: &str, what: &str| -> Result<(), String> {
            let v = it.next().ok_or(format!("{arg} needs {what}"))?;
            let list = a.body.entry(field).or_insert_with(|| json!([]));
            list.as_array_mut().expect("a list").push(json!(v));
            any = true;
            Ok(())
        };
        match arg.as_str() {
            "--url" => push("urls", "a URL")?,
            "--tag" => push("tags", "a tag")?,
            "--host" => push("hosts", "a host")?,
            "--prefix" => push("prefixes", "HOST/PATH")?,
            "--all" => {
                a.body.insert("all".into(), json!(true));
                any = true;
            }
            "--soft" => {
                a.body.insert("soft".into(), json!(true));
            }
            "--admin" | "-a" => a.admin = it.next().ok_or("--admin needs HOST:PORT")?.clone(),
            "--token-file" => {
                a.token_file = Some(it.next().ok_or("--token-file needs a file")?.clone())
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if !any {
        return Err("say what to purge: --url, --tag, --host, --prefix or --all".into());
    }
    Ok(a)
}

pub fn main(args: &[String]) -> i32 {
    super::tool("purge", USAGE, args, parse, run)
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
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(h) = &auth {
        headers.push(("Authorization", h.as_str()));
    }
    let body = Value::Object(a.body.clone()).to_string();
    let r = http_client::post(
        &a.admin,
        "/purge",
        &headers,
        body.as_bytes(),
        Duration::from_secs(10),
    )
    .map_err(|e| {
        format!("cannot reach the admin listener at {e} (is Shellac running? see --admin)")
    })?;
    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    for item in v["results"].as_array().into_iter().flatten() {
        let name = item["name"].as_str().unwrap_or("");
        let mut line = format!(
            "{:<6} {:<8} {name}",
            item["kind"].as_str().unwrap_or("?"),
            item["result"].as_str().unwrap_or("?")
        );
        if let Some(e) = item["error"].as_str() {
            line.push_str(&format!(" ({e})"));
        }
        println!("{}", line.trim_end());
    }
    if r.status == 200 {
        return Ok(());
    }
    let why = match v["error"].as_str() {
        Some(e) => match v["field"].as_str() {
            Some(f) => format!("{e} (field {f})"),
            None => e.to_string(),
        },
        None => format!("{} item(s) failed", v["failed"].as_u64().unwrap_or(0)),
    };
    Err(format!("HTTP {}: {why}", r.status))
}
