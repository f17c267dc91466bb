//! Command-line tools that talk to a running Shellac over HTTP: `shellac stat` reads the admin
//! listener's `/status.json`; `shellac warm` requests a list of URLs through the proxy;
//! `shellac purge` posts to the admin listener's `/purge`; `shellac inspect` reads its
//! `/cache?url=URL`. They are subcommands of the one
//! binary, dispatched by [`dispatch`] before Pingora parses its own flags.

pub mod http_client;
pub mod inspect;
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
        Some("inspect") => Some(inspect::main(&args[2..])),
        _ => None,
    }
}

/// What every tool does with its arguments and its outcome: `-h` prints the usage (exit 0), a
/// usage error prints it with the error (exit 2), a failure says what failed (exit 1).
fn tool<A>(
    name: &str,
    usage: &str,
    args: &[String],
    parse: fn(&[String]) -> Result<A, String>,
    run: fn(&A) -> Result<(), String>,
) -> i32 {
    let a = match parse(args) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{usage}");
            return 0;
        }
        Err(e) => {
            eprintln!("shellac {name}: {e}\n{usage}");
            return 2;
        }
    };
    match run(&a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shellac {name}: {e}");
            1
        }
    }
}
