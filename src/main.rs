//! The `socp` binary: parse the command line, run the library, print the
//! error chain and exit non-zero on failure.

use clap::Parser;
use socp::cli::Cli;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match socp::app::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("socp: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
