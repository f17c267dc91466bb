//! Command-line tools that talk to a running Shellac over HTTP: `shellac stat` reads the admin
//! listener's `/status.json`; `shellac warm` requests a list of URLs through the proxy;
//! `shellac purge` posts to the admin listener's `/purge`. They are subcommands of the one
//! binary, dispatched by [`dispatch`] before Pingora parses its own flags.

pub mod http_client;
pub mod purge;
pub mod run;
pub mod stat;
pub mod warm;

pub use run::main;

/// Runs `args[1]` if it names a tool; `None` leaves the arguments to the proxy.
pub fn dispatch(args: &[String]) -> Option<i32> {
    match args.get(1).map(String::as_str) {
        Some("stat") => Some(stat::main(&args[2..])),
        Some("warm") => Some(warm::main(&args[2..])),
        Some("purge") => Some(purge::main(&args[2..])),
        _ => None,
    }
}
