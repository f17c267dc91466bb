//! Programmable caching: the `rules:` of the config file and Rust [`Plugin`]s, one mechanism.
//!
//! - [`crate::config::rules`]: the YAML shape (typed, `deny_unknown_fields`), owned by `config`.
//! - [`matcher`]: match blocks and globs, compiled once at load.
//! - [`rule`]: a YAML rule compiled into a [`Plugin`].
//! - [`plugin`]: the extension trait and what each phase may see and do.
//! - [`key`]: what rules put into the cache key.
//!
//! [`Rules`] holds the plugins in order and runs each phase; the proxy hooks call it and read
//! the per-request [`Decisions`]. With no plugin for a phase, the phase costs one empty loop;
//! a plugin that does not match allocates nothing.

pub mod key;
pub mod matcher;
pub mod plugin;
pub mod rule;

pub use async_trait::async_trait;
pub use plugin::{
    CacheMode, Decisions, DeliverCx, OriginCx, Phases, Plugin, RequestCx, Synthetic, Verdict,
};

use crate::cache::policy::{Overrides, StaleDefaults};
use crate::cache::CacheRule;
use crate::config::ConfigError;
use pingora::cache::CacheKey;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use plugin::Names;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Default)]
pub struct Rules {
    plugins: Vec<Entry>,
    /// Each plugin's name as a `Cache-Status` token, made once (see [`Rules::push_applied`]).
    tokens: Vec<Box<str>>,
    /// Plugin indices per phase.
    request: Vec<usize>,
    origin: Vec<usize>,
    deliver: Vec<usize>,
    names: Names,
}

/// One plugin of the list. A YAML rule is a [`Plugin`] too; it is kept by its own type so that
/// its request phase runs as a plain call, not through a boxed future.
enum Entry {
    Yaml(Box<rule::Rule>),
    Rust(Arc<dyn Plugin>),
}

impl Entry {
    fn plugin(&self) -> &dyn Plugin {
        match self {
            Entry::Yaml(r) => r.as_ref(),
            Entry::Rust(p) => p.as_ref(),
        }
    }
}

impl Rules {
    /// Compiles the config's rules; `routes` and `upstreams` are the names by index.
    pub fn compile(
        conf: &[crate::config::rules::RuleConf],
        routes: Vec<String>,
        upstreams: Vec<String>,
    ) -> Result<Rules, ConfigError> {
        let names = Names { routes, upstreams };
        let mut seen = std::collections::HashSet::new();
        let mut plugins = Vec::with_capacity(conf.len());
        for (i, c) in conf.iter().enumerate() {
            let at = format!("rules[{i}]");
            let valid = !c.name.is_empty() && c.name.chars().all(is_token);
            if !valid {
                return crate::config::err(
                    format!("{at}.name"),
                    format!(
                        "{:?}: use letters, digits, - _ and . (it goes into Cache-Status)",
                        c.name
                    ),
                );
            }
            if !seen.insert(c.name.as_str()) {
                return crate::config::err(
                    format!("{at} ({}).name", c.name),
                    "another rule has this name; names must be unique",
                );
            }
            plugins.push(Entry::Yaml(Box::new(rule::Rule::compile(i, c, &names)?)));
        }
        if plugins.len() > u16::MAX as usize {
            return crate::config::err("rules", "at most 65535 rules");
        }
        let mut rules = Rules {
            names,
            ..Rules::default()
        };
        for p in plugins {
            rules.push(p);
        }
        Ok(rules)
    }

    /// The rules of `config`, compiled against its route and upstream names. `-t` and start-up
    /// both call this, so a rule that passes `-t` compiles at start.
    pub fn of(config: &crate::config::Config) -> Result<Rules, ConfigError> {
        let routes = config
            .routes
            .iter()
            .map(crate::config::Route::label)
            .collect();
        let upstreams = config.upstreams.keys().cloned().collect();
        Rules::compile(&config.rules, routes, upstreams)
    }

    /// Appends Rust plugins after the config's rules.
    pub fn extend(&mut self, plugins: impl IntoIterator<Item = Arc<dyn Plugin>>) {
        for p in plugins {
            self.push(Entry::Rust(p));
        }
    }

    fn push(&mut self, e: Entry) {
        let i = self.plugins.len();
        let p = e.plugin();
        let phases = p.phases();
        for (phase, list) in [
            (Phases::REQUEST, &mut self.request),
            (Phases::ORIGIN_RESPONSE, &mut self.origin),
            (Phases::DELIVER, &mut self.deliver),
        ] {
            if phases.contains(phase) {
                list.push(i);
            }
        }
        // Rule names are checked at load to be tokens; a Rust plugin's name is filtered to the
        // same set, so the value stays a valid `Cache-Status` token.
        self.tokens
            .push(p.name().chars().filter(|c| is_token(*c)).collect());
        self.plugins.push(e);
    }

    /// The request phase; returns the synthetic answer, if a plugin made one.
    /// `client` is the real client address ([`crate::client`]); later phases read it back.
    pub async fn request(
        &self,
        session: &mut Session,
        client: Option<IpAddr>,
        route: Option<usize>,
        d: &mut Decisions,
    ) -> Option<Arc<Synthetic>> {
        d.client = client;
        if self.request.is_empty() {
            return None;
        }
        let client = d.client;
        let mut cx = RequestCx {
            session,
            route,
            client,
            names: &self.names,
            d,
        };
        for &i in &self.request {
            if cx.d.limit.is_some_and(|l| i > l) {
                break;
            }
            let v = match &self.plugins[i] {
                Entry::Yaml(r) if r.request_matches(&cx) => r.request_now(&mut cx),
                Entry::Rust(p) if p.request_matches(&cx) => p.request(&mut cx).await,
                _ => continue,
            };
            record(cx.d, i, v);
        }
        cx.d.respond.take()
    }

    /// The origin's answer, before the cache decides; returns the freshness overrides.
    pub fn origin_response(
        &self,
        session: &Session,
        resp: &mut ResponseHeader,
        route: Option<usize>,
        d: &mut Decisions,
    ) -> Overrides {
        if !self.origin.is_empty() {
            let mut status = resp.status.as_u16();
            if status == 304 {
                if let Some(meta) = session.cache.maybe_cache_meta() {
                    status = meta.response_header().status.as_u16();
                }
            }
            let mut cx = OriginCx {
                req: session.req_header(),
                resp,
                status,
                route,
                client: d.client,
                names: &self.names,
                d,
            };
            for &i in &self.origin {
                if cx.d.limit.is_some_and(|l| i > l) {
                    break;
                }
                let v = self.plugins[i].plugin().origin_response(&mut cx);
                record(cx.d, i, v);
            }
        }
        Overrides {
            ttl: d.ttl,
            force_ttl: d.force_ttl,
            stale: d.stale,
        }
    }

    /// On an origin failure with a stale copy at hand: the `stale` windows the origin_response
    /// rules give the stored response (evaluated on a copy, deciding nothing else).
    pub fn stored_stale(
        &self,
        session: &Session,
        route: Option<usize>,
        d: &Decisions,
    ) -> Option<StaleDefaults> {
        if self.origin.is_empty() {
            return None;
        }
        let mut stored = session.cache.maybe_cache_meta()?.response_header().clone();
        let mut scratch = Decisions {
            limit: d.limit,
            ..Decisions::default()
        };
        self.origin_response(session, &mut stored, route, &mut scratch)
            .stale
    }

    /// Every response to the client; then the names of the plugins that applied go into
    /// `Cache-Status`.
    pub fn deliver(
        &self,
        req: &RequestHeader,
        client: Option<IpAddr>,
        resp: &mut ResponseHeader,
        route: Option<usize>,
        d: &mut Decisions,
    ) {
        if !self.deliver.is_empty() {
            let mut cx = DeliverCx {
                req,
                resp,
                route,
                client,
                names: &self.names,
            };
            for &i in &self.deliver {
                if d.limit.is_some_and(|l| i > l) {
                    break;
                }
                let v = self.plugins[i].plugin().deliver(&mut cx);
                record(d, i, v);
            }
        }
        if !d.applied.is_empty() {
            self.annotate(resp, d);
        }
    }

    /// The names of the plugins that applied, joined by `+` (empty, unallocated, if none).
    pub fn applied(&self, d: &Decisions) -> String {
        let mut names = String::new();
        self.push_applied(&mut names, d);
        names
    }

    /// Appends the applied names to `out`, as the tokens made when each plugin was added.
    fn push_applied(&self, out: &mut String, d: &Decisions) {
        for (n, &i) in d.applied.iter().enumerate() {
            if n > 0 {
                out.push('+');
            }
            out.push_str(&self.tokens[i as usize]);
        }
    }

    /// `detail=rules:a+b` in `Cache-Status` (appended to an existing detail), built in one
    /// allocation: this runs on every response a rule touched, hits included.
    fn annotate(&self, resp: &mut ResponseHeader, d: &Decisions) {
        let old = resp
            .headers
            .get("cache-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("shellac");
        let names: usize = d
            .applied
            .iter()
            .map(|&i| self.tokens[i as usize].len() + 1)
            .sum();
        let mut value = String::with_capacity(old.len() + 16 + names);
        match old.find("detail=") {
            Some(at) => {
                let end = old[at..].find(';').map_or(old.len(), |e| at + e);
                value.push_str(&old[..end]);
                value.push_str("+rules:");
                self.push_applied(&mut value, d);
                value.push_str(&old[end..]);
            }
            None => {
                value.push_str(old);
                value.push_str("; detail=rules:");
                self.push_applied(&mut value, d);
            }
        }
        let _ = resp.insert_header(crate::cache::status::FIELD.clone(), value);
    }

    /// Writes a synthetic answer (deliver rules apply to it too).
    pub async fn answer(
        &self,
        session: &mut Session,
        syn: &Synthetic,
        route: Option<usize>,
        d: &mut Decisions,
    ) -> pingora::Result<()> {
        let mut resp = ResponseHeader::build(syn.status, Some(syn.headers.len() + 2))?;
        for (n, v) in &syn.headers {
            resp.insert_header(n.clone(), v.clone())?;
        }
        resp.insert_header(http::header::CONTENT_LENGTH, syn.body.len())?;
        let client = d.client;
        self.deliver(session.req_header(), client, &mut resp, route, d);
        if !session.is_body_empty() {
            // The request body is never read: the connection cannot frame a next request.
            session.set_keepalive(None);
        }
        let body = session.req_header().method != http::Method::HEAD && !syn.body.is_empty();
        session.write_response_header(Box::new(resp), !body).await?;
        if body {
            session
                .write_response_body(Some(syn.body.clone()), true)
                .await?;
        }
        Ok(())
    }
}

/// What a plugin name may hold: letters, digits and `- _ .` (it goes into `Cache-Status`).
fn is_token(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn record(d: &mut Decisions, i: usize, v: Verdict) {
    if v == Verdict::NoMatch {
        return;
    }
    if !d.applied.contains(&(i as u16)) {
        d.applied.push(i as u16);
    }
    if v == Verdict::Final {
        d.limit = Some(i);
    }
}

impl Decisions {
    /// The route's cache rule as the plugins left it (`pass` turns it off).
    pub fn cache_rule(&self, mut rule: CacheRule) -> CacheRule {
        if self.cache == Some(CacheMode::Pass) {
            rule.enabled = false;
        }
        rule
    }

    /// `bypass`: a stored answer is treated as a miss, and the fresh one stored.
    pub fn bypass(&self) -> bool {
        self.cache == Some(CacheMode::Bypass)
    }

    /// The upstream group chosen by a plugin, if any.
    pub fn upstream(&self) -> Option<usize> {
        self.upstream
    }

    /// The cache key as the plugins shaped it; `None` for the default key.
    pub fn cache_key(&self, req: &RequestHeader) -> Option<CacheKey> {
        key::cache_key(req, &self.key)
    }
}
