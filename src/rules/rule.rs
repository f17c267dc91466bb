//! One YAML rule, compiled: its match block and its actions, as a [`Plugin`]. Compilation
//! checks everything `-t` promises and names the rule and key path in each error.

use super::key::{KeySpec, QueryKey};
use super::matcher::{Glob, Match};
use super::plugin::{DeliverCx, Names, OriginCx, Phases, Plugin, RequestCx, Synthetic, Verdict};
use crate::config::rules::{CacheMode, KeyConf, OriginConf, QueryConf, RequestConf, RuleConf};
use crate::config::{err, ConfigError};
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use regex::Regex;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub struct Rule {
    name: String,
    when: Match,
    stop: bool,
    phases: Phases,
    request: Option<RequestActions>,
    origin: Option<OriginActions>,
    deliver: Option<HeaderEdits>,
}

/// Headers removed, then set (replacing any value).
#[derive(Default)]
struct HeaderEdits {
    remove: Vec<HeaderName>,
    set: Vec<SetHeader>,
}

/// A header a rule sets, built once: its name as the operator spelled it (what Pingora writes on
/// the wire) and its value, both over `'static` bytes ([`forever`]), so that setting it on a
/// request copies pointers and writes no reference count another core also writes.
struct SetHeader {
    spelled: bytes::Bytes,
    value: HeaderValue,
}

impl HeaderEdits {
    fn compile(
        at: &str,
        remove: &[String],
        set: &BTreeMap<String, String>,
    ) -> Result<HeaderEdits, ConfigError> {
        let mut e = HeaderEdits::default();
        for (i, n) in remove.iter().enumerate() {
            e.remove
                .push(header_name(&format!("{at}.remove_headers[{i}]"), n)?);
        }
        for (n, v) in set {
            let p = format!("{at}.set_headers.{n}");
            header_name(&p, n)?;
            let value = bytes::Bytes::from_static(forever(v).as_bytes());
            let value = HeaderValue::from_maybe_shared(value)
                .or_else(|_| err(p, format!("{v:?} is not a valid header value")))?;
            let spelled = bytes::Bytes::from_static(forever(n).as_bytes());
            e.set.push(SetHeader { spelled, value });
        }
        Ok(e)
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty()
    }

    fn on_request(&self, req: &mut RequestHeader) {
        for n in &self.remove {
            req.remove_header(n);
        }
        for h in &self.set {
            let _ = req.insert_header(h.spelled.clone(), h.value.clone());
        }
    }

    fn on_response(&self, resp: &mut ResponseHeader) {
        for n in &self.remove {
            resp.remove_header(n);
        }
        for h in &self.set {
            let _ = resp.insert_header(h.spelled.clone(), h.value.clone());
        }
    }
}

/// Text of the compiled rules that requests copy from, kept for the life of the process. A
/// reload is a new process (Pingora's graceful upgrade) and a config is compiled a handful of
/// times per process (start-up, `-t`), so what is kept is bounded by the config's size.
fn forever(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

fn header_name(at: &str, n: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(n.as_bytes()).or_else(|_| err(at, format!("{n:?} is not a header name")))
}

struct RequestActions {
    headers: HeaderEdits,
    rewrite: Option<(Regex, String)>,
    upstream: Option<usize>,
    cache: Option<CacheMode>,
    key: KeySpec,
    respond: Option<Arc<Synthetic>>,
    /// Status and `Location` template (`$1` = `match.path_regex` captures).
    redirect: Option<(u16, String)>,
}

struct OriginActions {
    ttl: Vec<(u16, Duration)>,
    force_ttl: Option<Duration>,
    stale: Option<(Duration, Duration)>,
    headers: HeaderEdits,
}

impl Rule {
    pub(crate) fn compile(i: usize, c: &RuleConf, names: &Names) -> Result<Rule, ConfigError> {
        let at = format!("rules[{i}] ({})", c.name);
        let when = Match::compile(&c.when, &format!("{at}.match"), &names.routes)?;
        if c.request.is_some() {
            if let Some(p) = Match::status_at(&c.when, &format!("{at}.match")) {
                return err(p, "the status is known only after the origin answers, so a rule with request: cannot match on it; move the request actions into a rule without status");
            }
        }
        let request = match &c.request {
            Some(r) => Some(request(&at, r, &when, names)?),
            None => None,
        };
        let origin = match &c.origin_response {
            Some(o) => Some(origin(&format!("{at}.origin_response"), o)?),
            None => None,
        };
        let deliver = match &c.deliver {
            Some(d) => {
                let p = format!("{at}.deliver");
                Some(HeaderEdits::compile(&p, &d.remove_headers, &d.set_headers)?)
            }
            None => None,
        };
        let mut phases = Phases::NONE;
        for (on, p) in [
            (request.is_some(), Phases::REQUEST),
            (origin.is_some(), Phases::ORIGIN_RESPONSE),
            (deliver.is_some(), Phases::DELIVER),
        ] {
            if on {
                phases = phases | p;
            }
        }
        if phases == Phases::NONE {
            if !c.stop {
                return err(at, "the rule does nothing; add request:, origin_response:, deliver: or final: true");
            }
            phases = if when.needs_status() {
                Phases::ORIGIN_RESPONSE | Phases::DELIVER
            } else {
                Phases::ALL
            };
        }
        Ok(Rule {
            name: c.name.clone(),
            when,
            stop: c.stop,
            phases,
            request,
            origin,
            deliver,
        })
    }

    fn verdict(&self) -> Verdict {
        if self.stop {
            Verdict::Final
        } else {
            Verdict::Applied
        }
    }
}

fn request(
    at: &str,
    r: &RequestConf,
    when: &Match,
    names: &Names,
) -> Result<RequestActions, ConfigError> {
    let at = format!("{at}.request");
    let headers = HeaderEdits::compile(&at, &r.remove_headers, &r.set_headers)?;
    let rewrite = match &r.rewrite {
        Some(rw) => {
            let re = Regex::new(&rw.from).or_else(|e| {
                err(
                    format!("{at}.rewrite.from"),
                    format!("{:?} is not a regex: {e}", rw.from),
                )
            })?;
            if !rw.to.starts_with('/') {
                return err(format!("{at}.rewrite.to"), "must start with /");
            }
            Some((re, rw.to.clone()))
        }
        None => None,
    };
    let upstream = match &r.upstream {
        Some(u) => match names.upstreams.iter().position(|n| n == u) {
            Some(i) => Some(i),
            None => {
                return err(
                    format!("{at}.upstream"),
                    format!("no upstream named {u:?}; use one of {:?}", names.upstreams),
                )
            }
        },
        None => None,
    };
    if r.respond.is_some() && r.redirect.is_some() {
        return err(at, "respond and redirect together; keep one");
    }
    let respond = match &r.respond {
        Some(s) => {
            let p = format!("{at}.respond");
            if !(200..=599).contains(&s.status) {
                return err(format!("{p}.status"), "must be 200 to 599");
            }
            let h = HeaderEdits::compile(&format!("{p}.headers"), &[], &s.headers)?;
            Some(Arc::new(Synthetic {
                status: s.status,
                headers: h
                    .set
                    .into_iter()
                    .map(|h| {
                        let name = HeaderName::from_bytes(&h.spelled).expect("checked at compile");
                        (name, h.value)
                    })
                    .collect(),
                body: bytes::Bytes::from(s.body.clone()),
            }))
        }
        None => None,
    };
    let redirect = match &r.redirect {
        Some(rd) => {
            let p = format!("{at}.redirect");
            if !(300..=399).contains(&rd.status) {
                return err(
                    format!("{p}.status"),
                    "must be a 3xx status, e.g. 301 or 302",
                );
            }
            if rd.to.contains('$') && when.path_regex.is_none() {
                return err(
                    format!("{p}.to"),
                    "uses $n captures but the rule has no match.path_regex to take them from",
                );
            }
            if HeaderValue::from_str(&rd.to).is_err() {
                return err(format!("{p}.to"), "is not a valid Location value");
            }
            Some((rd.status, rd.to.clone()))
        }
        None => None,
    };
    Ok(RequestActions {
        headers,
        rewrite,
        upstream,
        cache: r.cache,
        key: match &r.key {
            Some(k) => key(&format!("{at}.key"), k)?,
            None => KeySpec::default(),
        },
        respond,
        redirect,
    })
}

fn key(at: &str, k: &KeyConf) -> Result<KeySpec, ConfigError> {
    let globs = |key: &str, names: &[String]| {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| Glob::value(n).or_else(|m| err(format!("{at}.query.{key}[{i}]"), m)))
            .collect::<Result<Vec<_>, _>>()
    };
    let query = match &k.query {
        None => None,
        Some(QueryConf::Sort) => Some(QueryKey::Sort),
        Some(QueryConf::Ignore) => Some(QueryKey::Ignore),
        Some(QueryConf::Filter { drop, keep, sort }) => Some(match keep {
            Some(keep) => QueryKey::Filter {
                names: globs("keep", keep)?,
                keep: true,
                sort: *sort,
            },
            None => QueryKey::Filter {
                names: globs("drop", drop)?,
                keep: false,
                sort: *sort,
            },
        }),
    };
    let headers = match &k.headers {
        Some(h) => Some(
            h.iter()
                .enumerate()
                .map(|(i, n)| header_name(&format!("{at}.headers[{i}]"), n))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        None => None,
    };
    // Kept for the process's life, as the set headers are ([`forever`]).
    Ok(KeySpec {
        query: query.map(|q| &*Box::leak(Box::new(q))),
        headers: headers.map(|h| &*h.leak()),
        cookies: k.cookies.as_ref().map(|c| &*c.clone().leak()),
    })
}

fn origin(at: &str, o: &OriginConf) -> Result<OriginActions, ConfigError> {
    for s in o.ttl.keys() {
        if !(100..=599).contains(s) {
            return err(format!("{at}.ttl.{s}"), "is not a status");
        }
    }
    if o.force_ttl.is_some_and(|d| d.0.is_zero()) {
        return err(format!("{at}.force_ttl"), "must be greater than 0");
    }
    Ok(OriginActions {
        ttl: o.ttl.iter().map(|(s, d)| (*s, d.0)).collect(),
        force_ttl: o.force_ttl.map(|d| d.0),
        stale: o.stale.map(|s| (s.while_revalidate, s.if_error)),
        headers: HeaderEdits::compile(at, &o.remove_headers, &o.set_headers)?,
    })
}

impl Rule {
    /// The request actions, synchronously: [`super::Rules`] calls this directly, so a YAML
    /// rule costs no boxed future on the request path.
    pub(crate) fn request_now(&self, cx: &mut RequestCx<'_>) -> Verdict {
        let Some(a) = &self.request else {
            return self.verdict();
        };
        // Captures are taken from the path the rule matched, before this rule rewrites it.
        if let Some((status, to)) = &a.redirect {
            let location = match &self.when.path_regex {
                Some(re) => match re.captures(cx.req().uri.path()) {
                    Some(caps) => {
                        let mut s = String::new();
                        caps.expand(to, &mut s);
                        s
                    }
                    None => to.clone(),
                },
                None => to.clone(),
            };
            if let Ok(v) = HeaderValue::from_str(&location) {
                cx.respond(Arc::new(Synthetic {
                    status: *status,
                    headers: vec![(http::header::LOCATION, v)],
                    body: bytes::Bytes::new(),
                }));
            }
        }
        if !a.headers.is_empty() {
            a.headers.on_request(cx.req_mut());
        }
        if let Some((re, to)) = &a.rewrite {
            let target = std::str::from_utf8(crate::cache::key::path_and_query(cx.req()))
                .ok()
                .filter(|t| re.is_match(t))
                .map(|t| re.replace(t, to.as_str()).into_owned());
            if let Some(t) = target {
                cx.rewrite(&t);
            }
        }
        if let Some(u) = a.upstream {
            cx.d.upstream = Some(u);
        }
        if let Some(c) = a.cache {
            cx.set_cache(c);
        }
        let k = cx.key();
        k.query = a.key.query.or(k.query);
        k.headers = a.key.headers.or(k.headers);
        k.cookies = a.key.cookies.or(k.cookies);
        if let Some(r) = &a.respond {
            cx.respond(r.clone());
        }
        self.verdict()
    }
}

#[async_trait]
impl Plugin for Rule {
    fn name(&self) -> &str {
        &self.name
    }

    fn phases(&self) -> Phases {
        self.phases
    }

    fn request_matches(&self, cx: &RequestCx<'_>) -> bool {
        self.when.matches(&cx.facts())
    }

    async fn request(&self, cx: &mut RequestCx<'_>) -> Verdict {
        self.request_now(cx)
    }

    fn origin_response(&self, cx: &mut OriginCx<'_>) -> Verdict {
        if !self.when.matches(&cx.facts()) {
            return Verdict::NoMatch;
        }
        if let Some(a) = &self.origin {
            a.headers.on_response(cx.resp_mut());
            if let Some((_, ttl)) = a.ttl.iter().find(|(s, _)| *s == cx.status()) {
                cx.set_ttl(*ttl);
            }
            if let Some(f) = a.force_ttl {
                cx.force_ttl(f);
            }
            if let Some((swr, sie)) = a.stale {
                cx.set_stale(swr, sie);
            }
        }
        self.verdict()
    }

    fn deliver(&self, cx: &mut DeliverCx<'_>) -> Verdict {
        if !self.when.matches(&cx.facts()) {
            return Verdict::NoMatch;
        }
        if let Some(e) = &self.deliver {
            e.on_response(cx.resp_mut());
        }
        self.verdict()
    }
}
