//! The `sdrt` command line under another name, so integration tests can start it as a process (a test crate
//! cannot reach another package's binary).

fn main() -> std::process::ExitCode {
    sdrt_cli::main_exit_code()
}
