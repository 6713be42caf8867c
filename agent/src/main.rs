//! The `tether` command: parses the arguments; everything else is in `tether::cli`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    tether::cli::main(tether::cli::Cli::parse())
}
