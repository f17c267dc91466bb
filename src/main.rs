//! `shellac -c FILE` runs the proxy; `-t` checks the config; `-d` daemonizes; `-u` takes over
//! the listeners of a running instance. These are Pingora's own flags (`shellac --help`).
//! `shellac reload -c FILE [-d]` validates FILE and replaces the running instance (see `reload`).
//! `shellac stat` and the other tools in `cli` talk to a running instance.

use pingora::server::configuration::Opt;
use shellac::config::Config;
use shellac::reload;
use std::process::exit;

// glibc malloc took about a tenth of the CPU on cache hits (many small, short-lived header and
// buffer allocations, freed on other worker threads); with mimalloc's per-thread free lists a
// hit costs about 7% less CPU (see docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    reload::ignore_sighup();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(code) = shellac::cli::dispatch(&args) {
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
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shellac: {path}: {e}");
            exit(1);
        }
    };
    if opt.test {
        println!("shellac: {path}: configuration OK");
        return;
    }
    let takeover = reloading.then(|| {
        reload::prepare(&mut opt, &config).unwrap_or_else(|e| {
            eprintln!("shellac reload: {e}");
            exit(1);
        })
    });
    let server = shellac::app::build(opt, config);
    if let Some(t) = takeover {
        t.finish();
    }
    reload::run(server, path);
}
