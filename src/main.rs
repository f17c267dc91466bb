//! `shellac`: the command line of [`shellac::cli`], with no plugins beyond the config's rules.

// glibc malloc took about a tenth of the CPU on cache hits (many small, short-lived header and
// buffer allocations, freed on other worker threads); with mimalloc's per-thread free lists a
// hit costs about 7% less CPU (see README, "Performance").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    shellac::cli::main(Vec::new());
}
