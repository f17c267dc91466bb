//! Wiring: turns a validated [`Config`] into a Pingora [`Server`] with its services. Reads like
//! a checklist; the details live in the modules it calls.

use crate::admin::Admin;
use crate::config::{Config, ConfigError};
use crate::conn::Counted;
use crate::proxy::Proxy;
use crate::route::Router;
use crate::rules::Plugin;
use crate::upstream::Group;
use pingora::apps::http_app::HttpServer;
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::proxy::HttpProxy;
use pingora::server::configuration::Opt;
use pingora::server::Server;

const READ_BUFFER: usize = 0;
const WRITE_BUFFER: usize = 16 * 1024;
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::sync::Arc;

/// Builds every component start-up runs, binding nothing: `-t` calls exactly this and stops,
/// so a config that passes `-t` builds the same way at start. The caller bootstraps (takes over
/// a running instance's sockets with `-u`) and runs the server.
pub fn build(opt: Opt, config: Config) -> Result<Server, ConfigError> {
    build_with(opt, config, Vec::new())
}

/// As [`build`], with Rust plugins run after the config's rules (see [`crate::rules::plugin`]).
pub fn build_with(
    opt: Opt,
    config: Config,
    plugins: Vec<Arc<dyn Plugin>>,
) -> Result<Server, ConfigError> {
    crate::metrics::init();
    let mut rules = crate::rules::Rules::of(&config).expect("checked by cli::run before building");
    rules.extend(plugins);
    let Config {
        pingora,
        listen,
        trusted_proxies,
        admin,
        upstreams,
        routes,
        cache,
        limits,
        access_log,
        mirror_limits,
        rules: _,
    } = config;
    if let Err(e) = crate::access_log::init(&access_log.target) {
        return Err(ConfigError {
            path: "access_log.target".into(),
            message: format!("{:?}: {e}", access_log.target),
        });
    }

    let mut server = Server::new_with_opt_and_conf(opt, pingora);
    let names: Vec<&String> = upstreams.keys().collect();
    let groups: Vec<Group> = upstreams
        .iter()
        .map(|(name, u)| Group::new(&mut server, name, u))
        .collect::<Result<_, _>>()?;
    let router = Router::new(&routes, |n| {
        names.iter().position(|k| *k == n).expect("validated")
    });
    let clients = Arc::new(crate::client::Clients::new(trusted_proxies));
    let cache = crate::cache::Cache::new(&cache, &admin);
    if let Some(l2) = cache.shared_tier() {
        let probe = background_service("memcached probe", crate::cache::Probe(l2));
        server.add_service(probe);
    }
    crate::admin::purge::install(cache.purge_handle(), admin.purge_token.clone());
    let proxy = Proxy::new(router, groups, cache, limits.clone(), clients.clone());
    let mirror = crate::mirror::Mirror::new(&routes, &mirror_limits, |n| {
        names.iter().position(|k| *k == n).expect("validated")
    });
    let proxy = proxy.with_mirror(mirror).with_rules(rules);

    let mut http = HttpProxy::new(proxy, server.configuration.clone());
    http.handle_init_modules();
    let mut public = Service::new(
        "shellac proxy".into(),
        Counted::new(Arc::new(http), &limits, &listen, clients),
    );
    for l in &listen {
        let endpoint = ListenerConfig::tcp(l.addr.to_string())
            .l4_buffer(L4BufferSettings::new(READ_BUFFER, WRITE_BUFFER));
        public.add_listener(endpoint);
        let proxy = if l.proxy_protocol {
            " (PROXY protocol required)"
        } else {
            ""
        };
        log::info!("public listener http://{}{proxy}", l.addr);
    }
    server.add_service(public);

    let mut admin_svc = Service::new("shellac admin".into(), HttpServer::new_app(Admin));
    admin_svc.add_tcp(&admin.listen.to_string());
    log::info!("admin listener (metrics, healthz) http://{}", admin.listen);
    server.add_service(admin_svc);
    Ok(server)
}
