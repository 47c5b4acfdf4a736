//! The `socp` binary: parse the command line, run the library, print the
//! error chain and exit non-zero on failure.

use socp::cli::Cli;

/// mimalloc: per-thread heaps instead of glibc's locked arenas. The node's
/// frames are allocated on one thread and freed on another, where glibc
/// spent ~15% of a node's CPU and let its RSS balloon under load.
/// The `system-alloc` feature keeps the system allocator instead, so that a
/// heap profiler hooking `malloc` (heaptrack) sees every allocation.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_with_sources();
    match socp::app::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("socp: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
