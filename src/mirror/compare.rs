//! How a staging answer is judged against the production one: status, the header fields not
//! ignored, and the body (JSON structurally, anything else by length and block hashes). Pure
//! functions over captured summaries, so every rule has a table test.

use http::HeaderMap;
use serde_yaml::Value;
use std::hash::{DefaultHasher, Hasher};

/// Bodies are hashed in blocks so a byte mismatch can be located without keeping either body.
const BLOCK: usize = 4096;
/// Past 16 MiB the last block absorbs the rest: a 1 GiB body costs 32 KiB of hashes, not 2 MiB.
const MAX_BLOCKS: usize = 4096;

/// Fields never compared: they describe one connection or the framing, which differs between a
/// stored (length-framed) hit and a fresh chunked answer (the body comparison covers length);
/// and `Accept-Ranges`, which on caching routes Shellac sets itself, since it serves ranges from
/// the stored copy whatever the origin supports.
const NEVER_COMPARED: [&str; 9] = [
    "accept-ranges",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "transfer-encoding",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Status,
    Header,
    Body,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Status, Kind::Header, Kind::Body];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::Header => "header",
            Kind::Body => "body",
        }
    }
}

/// Compiled `compare` settings of one route.
#[derive(Debug, Default)]
pub struct Rules {
    /// Lower-cased.
    pub ignore_headers: Vec<String>,
    pub body: bool,
    pub ignore_json: Vec<Vec<String>>,
}

impl Rules {
    pub fn new(c: &crate::config::Compare) -> Rules {
        Rules {
            ignore_headers: c
                .ignore_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            body: c.body,
            ignore_json: c
                .ignore_json_fields
                .iter()
                .map(|p| p.split('.').map(String::from).collect())
                .collect(),
        }
    }

    fn compared(&self, name: &str) -> bool {
        !NEVER_COMPARED.contains(&name) && !self.ignore_headers.iter().any(|h| h == name)
    }
}

/// A body seen as a stream: its length, block hashes, and the bytes themselves when they were
/// to be kept (JSON within the route's `max_body`).
#[derive(Debug)]
pub struct Digest {
    len: u64,
    blocks: Vec<u64>,
    cur: DefaultHasher,
    cur_len: usize,
    kept: Option<Vec<u8>>,
    keep_limit: u64,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Body {
    pub len: u64,
    pub blocks: Vec<u64>,
    /// Present only if asked for and the whole body fitted the limit.
    pub kept: Option<Vec<u8>>,
}

impl Digest {
    /// `keep`: hold the bytes up to this many (then give them up and rely on hashes).
    pub fn new(keep: Option<u64>) -> Digest {
        Digest {
            len: 0,
            blocks: Vec::new(),
            // Fixed keys: both sides of one comparison must hash alike; nothing adversarial here.
            cur: DefaultHasher::new(),
            cur_len: 0,
            kept: keep.map(|_| Vec::new()),
            keep_limit: keep.unwrap_or(0),
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if let Some(k) = &mut self.kept {
            if self.len <= self.keep_limit {
                k.extend_from_slice(data);
            } else {
                self.kept = None;
            }
        }
        while !data.is_empty() {
            let last = self.blocks.len() + 1 >= MAX_BLOCKS;
            let take = if last {
                data.len()
            } else {
                (BLOCK - self.cur_len).min(data.len())
            };
            self.cur.write(&data[..take]);
            self.cur_len += take;
            data = &data[take..];
            if !last && self.cur_len == BLOCK {
                self.blocks.push(self.cur.finish());
                self.cur = DefaultHasher::new();
                self.cur_len = 0;
            }
        }
    }

    pub fn finish(mut self) -> Body {
        if self.cur_len > 0 {
            self.blocks.push(self.cur.finish());
        }
        Body {
            len: self.len,
            blocks: self.blocks,
            kept: self.kept,
        }
    }
}

/// One side's answer, as far as the comparison needs it.
#[derive(Debug, Default)]
pub struct Side {
    pub status: u16,
    pub headers: HeaderMap,
    /// `None` when the route does not compare bodies.
    pub body: Option<Body>,
}

/// Whether a Content-Type names JSON (`application/json`, `application/problem+json`…).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| {
            let t = t.trim().to_ascii_lowercase();
            t.ends_with("/json") || t.ends_with("+json")
        })
}

/// Every kind that differs, each with a description of its first difference; empty = match.
pub fn compare(rules: &Rules, prod: &Side, staging: &Side) -> Vec<(Kind, String)> {
    let mut out = Vec::new();
    if prod.status != staging.status {
        out.push((
            Kind::Status,
            format!("status {} vs {}", prod.status, staging.status),
        ));
    }
    if let Some(d) = headers(rules, &prod.headers, &staging.headers) {
        out.push((Kind::Header, d));
    }
    if rules.body {
        if let (Some(a), Some(b)) = (&prod.body, &staging.body) {
            if let Some(d) = body(rules, a, b) {
                out.push((Kind::Body, d));
            }
        }
    }
    out
}

/// The first compared field (in name order) whose values differ, as ordered lists.
fn headers(rules: &Rules, a: &HeaderMap, b: &HeaderMap) -> Option<String> {
    let mut names: Vec<&http::HeaderName> = a
        .keys()
        .chain(b.keys())
        .filter(|n| rules.compared(n.as_str()))
        .collect();
    names.sort_unstable_by(|x, y| x.as_str().cmp(y.as_str()));
    names.dedup();
    names.into_iter().find_map(|n| {
        let va: Vec<&[u8]> = a.get_all(n).iter().map(|v| v.as_bytes()).collect();
        let vb: Vec<&[u8]> = b.get_all(n).iter().map(|v| v.as_bytes()).collect();
        (va != vb).then(|| format!("header {n}: {} vs {}", show_list(&va), show_list(&vb)))
    })
}

fn show_list(values: &[&[u8]]) -> String {
    if values.is_empty() {
        return "(absent)".into();
    }
    let shown: Vec<String> = values
        .iter()
        .map(|v| format!("{:?}", truncate(&String::from_utf8_lossy(v), 80)))
        .collect();
    format!("[{}]", shown.join(", "))
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn body(rules: &Rules, a: &Body, b: &Body) -> Option<String> {
    if let (Some(x), Some(y)) = (&a.kept, &b.kept) {
        if let (Some(mut vx), Some(mut vy)) = (parse_json(x), parse_json(y)) {
            for path in &rules.ignore_json {
                drop_path(&mut vx, path);
                drop_path(&mut vy, path);
            }
            let mut path = String::from("$");
            return json_diff(&vx, &vy, &mut path)
                .map(|(p, l, r)| format!("body json {p}: {l} vs {r}"));
        }
        if x == y {
            return None;
        }
        let at = x.iter().zip(y.iter()).take_while(|(p, q)| p == q).count();
        return Some(format!(
            "body bytes differ at offset {at} (lengths {} vs {})",
            x.len(),
            y.len()
        ));
    }
    if a.len == b.len && a.blocks == b.blocks {
        return None;
    }
    let block = a
        .blocks
        .iter()
        .zip(b.blocks.iter())
        .take_while(|(p, q)| p == q)
        .count();
    let from = (block * BLOCK) as u64;
    let at = if block + 1 >= MAX_BLOCKS || from >= a.len.min(b.len) {
        format!("from offset {}", from.min(a.len.min(b.len)))
    } else {
        format!("in bytes {from}..{}", from + BLOCK as u64)
    };
    Some(format!(
        "body bytes differ {at} (lengths {} vs {})",
        a.len, b.len
    ))
}

/// JSON is parsed with the YAML parser Shellac already links (JSON is valid YAML 1.2); a body
/// it refuses (tab indentation, keys over 1 KiB, duplicate keys) is compared as bytes instead.
/// Only objects and arrays: YAML would read any other text as a plain string, and a scalar
/// compares the same as bytes anyway.
fn parse_json(bytes: &[u8]) -> Option<Value> {
    match bytes.trim_ascii_start().first() {
        Some(b'{' | b'[') => serde_yaml::from_slice(bytes).ok(),
        _ => None,
    }
}

fn drop_path(v: &mut Value, path: &[String]) {
    let Some((head, rest)) = path.split_first() else {
        return;
    };
    match v {
        Value::Mapping(m) => match (head.as_str(), rest.is_empty()) {
            ("*", true) => m.clear(),
            ("*", false) => m.iter_mut().for_each(|(_, c)| drop_path(c, rest)),
            (key, true) => {
                m.remove(key);
            }
            (key, false) => {
                if let Some(c) = m.get_mut(key) {
                    drop_path(c, rest);
                }
            }
        },
        Value::Sequence(s) => {
            // Elements are nulled rather than removed, so later indices keep their meaning.
            let all = head == "*";
            let index: Option<usize> = head.parse().ok();
            for (i, c) in s.iter_mut().enumerate() {
                if all || index == Some(i) {
                    if rest.is_empty() {
                        *c = Value::Null;
                    } else {
                        drop_path(c, rest);
                    }
                }
            }
        }
        _ => {}
    }
}

/// The first difference as (JSON path, production value, staging value).
fn json_diff(a: &Value, b: &Value, path: &mut String) -> Option<(String, String, String)> {
    let here = |path: &String, x: Option<&Value>, y: Option<&Value>| {
        Some((path.clone(), show_json(x), show_json(y)))
    };
    match (a, b) {
        (Value::Mapping(x), Value::Mapping(y)) => {
            for (k, vx) in x {
                let len = path.len();
                push_key(path, k);
                let d = match y.get(k) {
                    Some(vy) => json_diff(vx, vy, path),
                    None => here(path, Some(vx), None),
                };
                if d.is_some() {
                    return d;
                }
                path.truncate(len);
            }
            for (k, vy) in y {
                if !x.contains_key(k) {
                    push_key(path, k);
                    return here(path, None, Some(vy));
                }
            }
            None
        }
        (Value::Sequence(x), Value::Sequence(y)) => {
            for i in 0..x.len().max(y.len()) {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let d = match (x.get(i), y.get(i)) {
                    (Some(vx), Some(vy)) => json_diff(vx, vy, path),
                    (vx, vy) => here(path, vx, vy),
                };
                if d.is_some() {
                    return d;
                }
                path.truncate(len);
            }
            None
        }
        _ if a == b => None,
        _ => here(path, Some(a), Some(b)),
    }
}

fn push_key(path: &mut String, k: &Value) {
    match k {
        Value::String(s) => {
            path.push('.');
            path.push_str(s);
        }
        other => path.push_str(&format!("[{}]", show_json(Some(other)))),
    }
}

fn show_json(v: Option<&Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(Value::Null) => "null".into(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::String(s)) => format!("{:?}", truncate(s, 80)),
        Some(Value::Sequence(s)) => format!("[…{} items]", s.len()),
        Some(Value::Mapping(m)) => format!("{{…{} keys}}", m.len()),
        Some(Value::Tagged(_)) => "(tagged)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(ignore_headers: &[&str], ignore_json: &[&str]) -> Rules {
        Rules::new(&crate::config::Compare {
            ignore_headers: ignore_headers.iter().map(|s| s.to_string()).collect(),
            body: true,
            ignore_json_fields: ignore_json.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn side(status: u16, headers: &[(&str, &str)], body: &[u8], keep: bool) -> Side {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let mut d = Digest::new(keep.then_some(1 << 20));
        // Uneven chunks: the digest must not depend on how the body was split.
        for c in body.chunks(1000) {
            d.update(c);
        }
        Side {
            status,
            headers: h,
            body: Some(d.finish()),
        }
    }

    fn kinds(r: &Rules, a: &Side, b: &Side) -> Vec<Kind> {
        compare(r, a, b).into_iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn digest_is_independent_of_chunking() {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let mut a = Digest::new(None);
        a.update(&data);
        let mut b = Digest::new(None);
        for c in data.chunks(7) {
            b.update(c);
        }
        assert_eq!(a.finish(), b.finish());
    }

    #[test]
    fn headers_case_insensitive_lists_and_ignores() {
        let r = rules(&["Date", "X-Request-Id"], &[]);
        let a = side(
            200,
            &[("x-a", "1"), ("date", "x"), ("content-length", "2")],
            b"hi",
            false,
        );
        let b = side(
            200,
            &[
                ("X-A", "1"),
                ("Date", "y"),
                ("transfer-encoding", "chunked"),
            ],
            b"hi",
            false,
        );
        assert!(compare(&r, &a, &b).is_empty());
        let c = side(200, &[("x-a", "1"), ("x-a", "2")], b"hi", false);
        let d = side(200, &[("x-a", "2"), ("x-a", "1")], b"hi", false);
        let diff = compare(&r, &c, &d);
        assert_eq!(diff.len(), 1);
        assert!(diff[0].1.contains("header x-a"), "{}", diff[0].1);
        let e = side(200, &[], b"hi", false);
        assert_eq!(kinds(&r, &c, &e), [Kind::Header]);
    }

    #[test]
    fn status_and_byte_bodies() {
        let r = rules(&[], &[]);
        let a = side(200, &[], b"hello", false);
        assert_eq!(
            kinds(&r, &a, &side(500, &[], b"hello", false)),
            [Kind::Status]
        );
        let big: Vec<u8> = vec![b'x'; 10_000];
        let mut other = big.clone();
        other[9000] = b'y';
        let diff = compare(
            &r,
            &side(200, &[], &big, false),
            &side(200, &[], &other, false),
        );
        assert_eq!(diff.len(), 1);
        assert!(diff[0].1.contains("8192..12288"), "{}", diff[0].1);
        let diff = compare(
            &r,
            &side(200, &[], &big, true),
            &side(200, &[], &other, true),
        );
        assert!(diff[0].1.contains("offset 9000"), "{}", diff[0].1);
        let diff = compare(
            &r,
            &side(200, &[], b"ab", false),
            &side(200, &[], b"abc", false),
        );
        assert!(diff[0].1.contains("lengths 2 vs 3"), "{}", diff[0].1);
    }

    #[test]
    fn json_structural_with_ignored_paths() {
        let r = rules(&[], &["meta.generated", "items.*.id"]);
        let a = br#"{"user": {"name": "alice", "age": 3}, "meta": {"generated": 1, "v": 2},
                    "items": [{"id": 1, "n": "a"}, {"id": 2, "n": "b"}]}"#;
        let same = br#"{"items":[{"n":"a","id":9},{"n":"b","id":8}],"meta":{"v":2,"generated":7},
                       "user":{"age":3,"name":"alice"}}"#;
        assert!(compare(&r, &side(200, &[], a, true), &side(200, &[], same, true)).is_empty());
        let changed = same.to_vec();
        let changed = String::from_utf8(changed).unwrap().replace("alice", "bob");
        let diff = compare(
            &r,
            &side(200, &[], a, true),
            &side(200, &[], changed.as_bytes(), true),
        );
        assert_eq!(diff.len(), 1);
        assert_eq!(diff[0].1, r#"body json $.user.name: "alice" vs "bob""#);
        let missing = br#"{"user": {"name": "alice", "age": 3}, "meta": {"generated": 1, "v": 2},
                          "items": [{"id": 1, "n": "a"}]}"#;
        let diff = compare(&r, &side(200, &[], a, true), &side(200, &[], missing, true));
        assert!(diff[0].1.contains("$.items[1]"), "{}", diff[0].1);
        // Not JSON after all: fall back to bytes.
        let diff = compare(
            &r,
            &side(200, &[], b"{oops", true),
            &side(200, &[], b"{oops!", true),
        );
        assert!(diff[0].1.contains("bytes"), "{}", diff[0].1);
    }

    #[test]
    fn json_content_types() {
        let h = |t: &str| {
            let mut m = HeaderMap::new();
            m.insert(http::header::CONTENT_TYPE, t.parse().unwrap());
            m
        };
        assert!(is_json(&h("application/json; charset=utf-8")));
        assert!(is_json(&h("application/problem+json")));
        assert!(!is_json(&h("text/html")));
        assert!(!is_json(&HeaderMap::new()));
    }
}
