//! The `sdrt` binary: generate images from the command line, inspect images and models, benchmark, serve
//! the HTTP API, run queue workers.

fn main() -> std::process::ExitCode {
    sdrt_cli::main_exit_code()
}
