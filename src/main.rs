//! `shellac -c FILE` runs the proxy; `-t` checks the config; `-d` daemonizes; `-u` takes over
//! the listeners of a running instance. These are Pingora's own flags (`shellac --help`).
//! `shellac reload -c FILE [-d]` validates FILE and replaces the running instance (see `reload`).
//! `shellac stat` and the other tools in `cli` talk to a running instance. All of it is
//! [`shellac::cli::main`], with no plugins beyond the config's rules.

// glibc malloc took about a tenth of the CPU on cache hits (many small, short-lived header and
// buffer allocations, freed on other worker threads); with mimalloc's per-thread free lists a
// hit costs about 7% less CPU (see README, "Performance").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    shellac::cli::main(Vec::new());
}
