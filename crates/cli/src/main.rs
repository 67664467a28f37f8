//! The `sdrt` binary: generate images from the command line, inspect images and models, benchmark, serve
//! the HTTP API.

mod bench;
mod convert;
mod generate;
mod inspect;
mod serve;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "sdrt", version, about = "Stable Diffusion runtime: A1111-compatible images on ONNX Runtime")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Generate images from a text prompt.
    Txt2img(generate::Txt2ImgArgs),
    /// Generate images from an init image and a prompt.
    Img2img(generate::Img2ImgArgs),
    /// Print the generation parameters (A1111 infotext) stored in an image.
    PngInfo(inspect::PngInfoArgs),
    /// Show what the loader detects in a model folder or checkpoint, or in each model inside a folder.
    Models(inspect::ModelsArgs),
    /// Write a `.safetensors` checkpoint as an optimum-layout ONNX folder.
    Convert(convert::ConvertArgs),
    /// Time generations: per-stage medians, it/s, peak memory, as text and JSON.
    Bench(bench::BenchArgs),
    /// Serve A1111's HTTP API (`/sdapi/v1`: txt2img, img2img, progress, interrupt, …).
    Serve(serve::ServeArgs),
    /// Show where ONNX Runtime is loaded from.
    Doctor,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    exit_cleanly_on_signals();
    let result = run(Cli::parse().command);
    // `sdrt models DIR | head` closes stdout early; that is not a failure.
    match result {
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            Ok(())
        }
        other => other,
    }
}

/// Ctrl-C (and SIGTERM) end the process once the image being written is in place, so an interrupted save
/// leaves neither a half-written image nor a temporary file.
#[cfg(unix)]
fn exit_cleanly_on_signals() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(error) => {
            tracing::warn!(%error, "no signal watcher: Ctrl-C during a save may leave a temporary file");
            return;
        }
    };
    let watcher = std::thread::Builder::new().name("sdrt-signals".into()).spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let _saves_finished = sdrt_io::pause_saves();
            // Not `std::process::exit`: its at-exit hooks would tear ONNX Runtime down under running threads.
            if signal_hook::low_level::emulate_default_handler(signal).is_err() {
                signal_hook::low_level::exit(128 + signal);
            }
        }
    });
    if let Err(error) = watcher {
        tracing::warn!(%error, "no signal watcher: Ctrl-C during a save may leave a temporary file");
    }
}

#[cfg(not(unix))]
fn exit_cleanly_on_signals() {}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Txt2img(args) => generate::txt2img(&args),
        Command::Img2img(args) => generate::img2img(&args),
        Command::PngInfo(args) => inspect::png_info(&args),
        Command::Models(args) => inspect::models(&args),
        Command::Convert(args) => convert::convert(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Doctor => {
            let runtime = sdrt_models::ensure_runtime()?;
            println!(
                "ONNX Runtime {} from {} ({})",
                sdrt_models::PROVISIONED_ORT_VERSION,
                runtime.path.display(),
                runtime.source
            );
            Ok(())
        }
    }
}
