//! The `tether` command: everything happens in `tether::cli`.

fn main() -> std::process::ExitCode {
    tether::cli::main()
}
