//! The `sdrt` binary: generate images from the command line, inspect images and models, benchmark, serve
//! the HTTP API, run queue workers.

fn main() -> anyhow::Result<()> {
    sdrt_cli::run_cli()
}
