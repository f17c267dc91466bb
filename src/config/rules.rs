//! The YAML shape of `rules:`, parsed into typed values (every struct `deny_unknown_fields`).
//! Globs and regexes stay text here and are compiled by `rules::Rules::compile` (which names the
//! rule and the key path in its errors); serde's own errors get the rule's name added by
//! [`with_rule_name`].

use super::values;
use super::Cidr;
use serde::de::{Deserializer, Error as _, MapAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConf {
    /// Required and unique; shown in `Cache-Status` detail.
    pub name: String,
    #[serde(rename = "match", default)]
    pub when: MatchConf,
    /// No later rule is evaluated for this request once this one matched.
    #[serde(rename = "final", default)]
    pub stop: bool,
    pub request: Option<RequestConf>,
    pub origin_response: Option<OriginConf>,
    pub deliver: Option<DeliverConf>,
}

/// Every condition must hold; an omitted one matches anything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConf {
    pub route: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub path_regex: Option<String>,
    pub method: Option<Vec<String>>,
    #[serde(default, deserialize_with = "values::cidrs")]
    pub client: Vec<Cidr>,
    #[serde(default)]
    pub header: BTreeMap<String, String>,
    #[serde(default)]
    pub cookie: BTreeMap<String, String>,
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    pub status: Option<Vec<u16>>,
    pub not: Option<Box<MatchConf>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestConf {
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub remove_headers: Vec<String>,
    pub rewrite: Option<Rewrite>,
    pub upstream: Option<String>,
    pub cache: Option<CacheMode>,
    pub key: Option<KeyConf>,
    pub respond: Option<Respond>,
    pub redirect: Option<Redirect>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    pub from: String,
    pub to: String,
}

/// `pass`: neither look up nor store. `bypass`: skip the lookup, fetch, store the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    Pass,
    Bypass,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConf {
    pub query: Option<QueryConf>,
    pub headers: Option<Vec<String>>,
    pub cookies: Option<Vec<String>>,
}

/// `sort`, `ignore`, or `{drop: [...], sort: true}` / `{keep: [...]}`; names are globs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryConf {
    Sort,
    Ignore,
    Filter {
        drop: Vec<String>,
        keep: Option<Vec<String>>,
        sort: bool,
    },
}

impl<'de> Deserialize<'de> for QueryConf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Map {
            #[serde(default)]
            drop: Vec<String>,
            keep: Option<Vec<String>>,
            #[serde(default)]
            sort: bool,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = QueryConf;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("sort, ignore, {drop: [names], sort: true} or {keep: [names]}")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<QueryConf, E> {
                match s {
                    "sort" => Ok(QueryConf::Sort),
                    "ignore" => Ok(QueryConf::Ignore),
                    _ => Err(E::custom(format!(
                        "{s:?} is not a query key mode; write sort, ignore, {{drop: [utm_*]}} or {{keep: [page]}}"
                    ))),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<QueryConf, A::Error> {
                let m = Map::deserialize(serde::de::value::MapAccessDeserializer::new(m))?;
                if !m.drop.is_empty() && m.keep.is_some() {
                    return Err(A::Error::custom(
                        "drop and keep together are ambiguous; use one of them",
                    ));
                }
                Ok(QueryConf::Filter {
                    drop: m.drop,
                    keep: m.keep,
                    sort: m.sort,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn ok() -> u16 {
    200
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default = "found")]
    pub status: u16,
    /// `$1`… are `match.path_regex` captures.
    pub to: String,
}

fn found() -> u16 {
    302
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginConf {
    /// TTL per status when the origin gives no explicit freshness.
    #[serde(default)]
    pub ttl: BTreeMap<u16, Dur>,
    /// Overrides the origin's freshness, `no-cache` and `private`.
    pub force_ttl: Option<Dur>,
    pub stale: Option<StaleConf>,
    #[serde(default)]
    pub remove_headers: Vec<String>,
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaleConf {
    #[serde(default, deserialize_with = "values::duration")]
    pub while_revalidate: Duration,
    #[serde(default, deserialize_with = "values::duration")]
    pub if_error: Duration,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverConf {
    #[serde(default)]
    pub remove_headers: Vec<String>,
    #[serde(default)]
    pub set_headers: BTreeMap<String, String>,
}

/// A duration written like every other (`10m`, `1h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        values::duration(d).map(Dur)
    }
}

/// serde_yaml names `rules[2].match` but not the rule; add its name (`rules[2] (static).match`)
/// when the text still says it.
pub fn with_rule_name(text: &str, message: String) -> String {
    let Some(rest) = message.strip_prefix("rules[") else {
        return message;
    };
    let Some((index, tail)) = rest.split_once(']') else {
        return message;
    };
    let Ok(i) = index.parse::<usize>() else {
        return message;
    };
    let name = serde_yaml::from_str::<serde_yaml::Value>(text)
        .ok()
        .and_then(|v| {
            v.get("rules")?
                .get(i)?
                .get("name")?
                .as_str()
                .map(String::from)
        });
    match name {
        Some(n) => format!("rules[{i}] ({n}){tail}"),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_modes() {
        let q = |s: &str| serde_yaml::from_str::<QueryConf>(s);
        assert_eq!(q("sort").unwrap(), QueryConf::Sort);
        assert_eq!(q("ignore").unwrap(), QueryConf::Ignore);
        assert!(matches!(
            q("{drop: [utm_*], sort: true}").unwrap(),
            QueryConf::Filter { sort: true, .. }
        ));
        assert!(q("shuffle").is_err());
        assert!(q("{drop: [a], keep: [b]}").is_err());
        assert!(q("{dorp: [a]}").is_err());
    }

    #[test]
    fn names_the_rule_in_serde_errors() {
        let text = "rules:\n  - name: a\n  - name: static\n    match: {pth: x}\n";
        let m = with_rule_name(text, "rules[1].match: unknown field `pth`".into());
        assert_eq!(m, "rules[1] (static).match: unknown field `pth`");
        assert_eq!(with_rule_name(text, "routes[0]: x".into()), "routes[0]: x");
    }
}
