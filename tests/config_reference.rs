//! docs/configuration.md against the config types: every key the types accept is documented,
//! and every documented default is the code's default. The key list comes from the parser
//! itself: an unknown key planted in a section makes serde list every field that section has.

use serde_yaml::{Mapping, Value};
use shellac::config::Config;
use std::collections::BTreeMap;

/// A config with every optional section present but no optional key set, so that setting a
/// key to its documented default must leave the parsed config unchanged.
const BASE: &str = r#"
listen: [{addr: "127.0.0.1:18080"}]
admin: {listen: "127.0.0.1:19091"}
upstreams:
  app: {backends: ["127.0.0.1:19001"], health_check: {kind: http}}
  staging: {backends: ["127.0.0.1:19002"]}
routes:
  - {upstream: app, mirror: {upstream: staging, compare: {}}}
cache: {memcached: {servers: ["127.0.0.1:11211"]}}
mirror_limits: {log: {path: /tmp/shellac-reference.log}}
"#;

/// Sections as (documented path, path in BASE).
const SECTIONS: &[(&str, &str)] = &[
    ("", ""),
    ("listen[]", "listen.0"),
    ("admin", "admin"),
    ("upstreams.NAME", "upstreams.app"),
    ("upstreams.NAME.health_check", "upstreams.app.health_check"),
    ("routes[]", "routes.0"),
    ("routes[].mirror", "routes.0.mirror"),
    ("routes[].mirror.compare", "routes.0.mirror.compare"),
    ("cache", "cache"),
    ("cache.memory", "cache.memory"),
    ("cache.memcached", "cache.memcached"),
    ("cache.tags", "cache.tags"),
    ("limits", "limits"),
    ("access_log", "access_log"),
    ("mirror_limits", "mirror_limits"),
    ("mirror_limits.log", "mirror_limits.log"),
];

/// `| `key` | default | meaning |` rows of the reference table.
fn documented() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split(" | ").collect();
        if cells.len() < 3 || !cells[0].starts_with("| `") {
            continue;
        }
        let key = cells[0].trim_start_matches("| ").trim_matches('`');
        rows.insert(key.to_string(), cells[1].trim().to_string());
    }
    assert!(rows.len() > 50, "the reference table was not found");
    rows
}

/// The mapping at `path` ("a.b.0.c") inside `v`, created when missing.
fn section<'a>(v: &'a mut Value, path: &str) -> &'a mut Mapping {
    let mut cur = v;
    for part in path.split('.').filter(|p| !p.is_empty()) {
        cur = match part.parse::<usize>() {
            Ok(i) => &mut cur.as_sequence_mut().unwrap()[i],
            Err(_) => {
                let m = cur.as_mapping_mut().unwrap();
                m.entry(Value::from(part))
                    .or_insert_with(|| Value::Mapping(Mapping::new()))
            }
        };
    }
    cur.as_mapping_mut()
        .unwrap_or_else(|| panic!("{path} is not a mapping"))
}

fn parse(v: &Value) -> Result<Config, String> {
    Config::parse(&serde_yaml::to_string(v).unwrap()).map_err(|e| e.to_string())
}

fn base() -> Value {
    serde_yaml::from_str(BASE).unwrap()
}

/// The fields serde accepts in a section, from its "unknown field" error.
fn fields_of(path: &str) -> Vec<String> {
    let mut v = base();
    section(&mut v, path).insert(Value::from("zz_not_a_key"), Value::from(1));
    let e = parse(&v).expect_err("an unknown key must be refused");
    let list = e
        .split("expected one of ")
        .nth(1)
        .or_else(|| e.split("expected ").nth(1))
        .unwrap_or_else(|| panic!("{path}: no field list in {e:?}"));
    list.split(',')
        .map(|f| f.trim().trim_matches(|c: char| c == '`' || !c.is_ascii()))
        .map(|f| f.split('`').next().unwrap_or("").to_string())
        .filter(|f| !f.is_empty())
        .collect()
}

#[test]
fn every_key_is_documented() {
    parse(&base()).expect("BASE is a valid config");
    let docs = documented();
    let mut missing = Vec::new();
    for (doc_path, path) in SECTIONS {
        for field in fields_of(path) {
            let key = if doc_path.is_empty() {
                field.clone()
            } else {
                format!("{doc_path}.{field}")
            };
            // A section counts as documented through its own keys.
            let prefix = format!("{key}.");
            if !docs.contains_key(&key)
                && !docs.contains_key(&format!("{key}[]"))
                && !docs.keys().any(|d| d.starts_with(&prefix))
            {
                missing.push(key);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keys the config accepts but docs/configuration.md does not list: {missing:?}"
    );
}

/// A documented default as YAML: the backticked literal, or `None` when the default is prose
/// ("required", "none", "Pingora's defaults", "host + path_prefix").
fn literal(default: &str) -> Option<Value> {
    let inner = default.strip_prefix('`')?.strip_suffix('`')?;
    if inner.contains('`') {
        return None;
    }
    Some(serde_yaml::from_str(inner).unwrap_or_else(|_| Value::from(inner)))
}

#[test]
fn documented_defaults_are_the_code_defaults() {
    let want = format!("{:?}", parse(&base()).unwrap());
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (key, default) in documented() {
        let Some(value) = literal(&default) else {
            continue;
        };
        let Some((doc_section, field)) = SECTIONS
            .iter()
            .filter_map(|(d, p)| {
                let field = if d.is_empty() {
                    Some(key.as_str())
                } else {
                    key.strip_prefix(&format!("{d}."))
                };
                field.filter(|f| !f.contains('.')).map(|f| (*p, f))
            })
            .next()
        else {
            panic!("{key}: documented in no known section");
        };
        let mut v = base();
        section(&mut v, doc_section).insert(Value::from(field), value);
        match parse(&v) {
            Ok(c) if format!("{c:?}") == want => checked += 1,
            Ok(_) => wrong.push(format!("{key}: the code's default is not {default}")),
            Err(e) => wrong.push(format!("{key}: {default} does not parse: {e}")),
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert!(checked > 40, "only {checked} defaults were checked");
}
