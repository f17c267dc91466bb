//! `shellac -c FILE` runs the proxy; `-t` checks the config; `-d` daemonizes; `-u` takes over
//! the listeners of a running instance. These are Pingora's own flags (`shellac --help`).

use pingora::server::configuration::Opt;
use shellac::config::Config;
use std::process::exit;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let mut opt = Opt::parse_args();
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
    shellac::app::build(opt, config).run_forever();
}
