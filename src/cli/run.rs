//! The proxy's command line, shared by `shellac` and custom binaries built with plugins:
//! the tools of [`super::dispatch`] (`stat`, `warm`…), else `shellac -c FILE` runs the proxy; `-t` checks the config; `-d` daemonizes; `-u` takes over
//! the listeners of a running instance. These are Pingora's own flags (`shellac --help`).
//! `shellac reload -c FILE [-d]` validates FILE and replaces the running instance (see `reload`).

use crate::config::Config;
use crate::reload;
use crate::rules::Plugin;
use pingora::server::configuration::Opt;
use std::process::exit;
use std::sync::Arc;

/// Runs Shellac with `plugins` after the config's rules; a custom binary's whole `main`.
pub fn main(plugins: Vec<Arc<dyn Plugin>>) {
    small_pages();
    reload::ignore_sighup();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(code) = super::dispatch(&args) {
        exit(code);
    }
    let reloading = args.get(1).is_some_and(|a| a == reload::SUBCOMMAND);
    if reloading {
        args.remove(1);
    }
    let mut opt = Opt::parse_from_args(args);
    // Our file is not Pingora's: take it out so Pingora does not try to read it too.
    let Some(path) = opt.conf.take() else {
        eprintln!("shellac: no configuration given; run `shellac -c conf/shellac.yaml`");
        exit(2);
    };
    // Everything start-up would refuse, refused here, before anything binds (and by -t).
    let config = match Config::load(&path).and_then(|c| crate::rules::Rules::of(&c).map(|_| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shellac: {path}: {e}");
            exit(1);
        }
    };
    // `-t` builds every component exactly as start-up does and stops before binding; Pingora
    // must not see the flag, or its bootstrap would exit before saying what it checked.
    let test = std::mem::take(&mut opt.test);
    let takeover = (reloading && !test).then(|| {
        reload::prepare(&mut opt, &config).unwrap_or_else(|e| {
            eprintln!("shellac reload: {e}");
            exit(1);
        })
    });
    let mut server = match crate::app::build_with(opt, config, plugins) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("shellac: {path}: {e}");
            exit(1);
        }
    };
    if test {
        println!("shellac: {path}: configuration OK");
        return;
    }
    // Takes over the listening sockets of a running instance when started with -u.
    server.bootstrap();
    if let Some(t) = takeover {
        t.finish();
    }
    reload::run(server, path);
}

/// Transparent huge pages off for this process, unless the operator chose through mimalloc's
/// own `MIMALLOC_ALLOW_THP`. With 2 MiB pages, the small buffers of many connections keep whole
/// huge pages resident: at 1000 connections the peak RSS was 72 MiB with them and 46 MiB
/// without (docs/performance.md). mimalloc is built with `no_thp`, so it never asks for huge
/// pages (hosts in THP `madvise` mode, Debian's default); this flag covers hosts in `always`
/// mode. It belongs to the process, is inherited by `-d` and by a reload's new process, and
/// applies to every page touched from now on.
fn small_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
        unsafe {
            libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
        }
    }
}
