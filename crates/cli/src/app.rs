//! The `sdrt` command line: its commands, signal handling and the log subscriber (the binary only calls
//! [`run_cli`]; the integration tests start the same command line).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use clap::{Parser, Subcommand};
use sdrt_models::{ExecutionProvider, RuntimeBuild};

use crate::{bench, convert, generate, inspect, serve};

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
    /// Run jobs from a Redis queue filled by `sdrt serve --queue` (any number of workers, any machines).
    Worker(serve::WorkerArgs),
    /// Lay images out in a grid as A1111 does (rows = round(√n) unless given).
    Grid(inspect::GridArgs),
    /// Show where ONNX Runtime is loaded from.
    Doctor,
}

/// An error and its causes as one message, each cause on its own line, leaving out a cause whose text the
/// message above it already includes (the library errors print their source inside their own text, and also
/// expose it as `source()`: a plain chain would say everything twice).
pub fn error_report(error: &anyhow::Error) -> String {
    let mut lines: Vec<String> = Vec::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !lines.last().is_some_and(|above| above.contains(&text)) {
            lines.push(text);
        }
    }
    lines.join("\n  caused by: ")
}

/// `main` of the `sdrt` binary: [`run_cli`], with a failure printed as [`error_report`] and exit status 1.
pub fn main_exit_code() -> std::process::ExitCode {
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {}", error_report(&error));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the `sdrt` command line: parses the arguments, installs the log subscriber and signal handling, and
/// runs the command.
pub fn run_cli() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let command = Cli::parse().command;
    // A worker's first SIGTERM or Ctrl-C lets the job in progress finish; every other command exits at once.
    let shutdown = Arc::new(AtomicBool::new(false));
    exit_cleanly_on_signals(matches!(command, Command::Worker(_)).then(|| Arc::clone(&shutdown)));
    let result = run(command, shutdown);
    // `sdrt models DIR | head` closes stdout early; that is not a failure.
    match result {
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            Ok(())
        }
        other => other,
    }
}

/// Ctrl-C (and SIGTERM) end the process once the image being written is in place, so an interrupted save
/// leaves neither a half-written image nor a temporary file. With `graceful`, the first signal only sets it
/// (the worker stops after its job) and a second one exits.
#[cfg(unix)]
fn exit_cleanly_on_signals(graceful: Option<Arc<AtomicBool>>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        Ok(signals) => signals,
        Err(error) => {
            tracing::warn!(%error, "no signal watcher: Ctrl-C during a save may leave a temporary file");
            return;
        }
    };
    let watcher = std::thread::Builder::new().name("sdrt-signals".into()).spawn(move || {
        let mut signals = signals.forever();
        if let Some(flag) = graceful
            && signals.next().is_some()
        {
            eprintln!("finishing the job in progress, then stopping (signal again to stop now)");
            flag.store(true, Ordering::SeqCst);
        }
        if let Some(signal) = signals.next() {
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
fn exit_cleanly_on_signals(_graceful: Option<Arc<AtomicBool>>) {}

fn run(command: Command, shutdown: Arc<AtomicBool>) -> Result<()> {
    match command {
        Command::Txt2img(args) => generate::txt2img(&args),
        Command::Img2img(args) => generate::img2img(&args),
        Command::PngInfo(args) => inspect::png_info(&args),
        Command::Grid(args) => inspect::grid(&args),
        Command::Models(args) => inspect::models(&args),
        Command::Convert(args) => convert::convert(&args),
        Command::Bench(args) => bench::bench(&args),
        Command::Serve(args) => serve::serve(&args),
        Command::Worker(args) => serve::worker(&args, shutdown),
        Command::Doctor => doctor(),
    }
}

/// `sdrt doctor`: loads the standard ONNX Runtime and says where the OpenVINO and GPU builds are, what this CPU
/// computes, and what the CUDA provider would find (driver, CUDA, cuBLAS, cuRAND, cuDNN).
fn doctor() -> Result<()> {
    let runtime = sdrt_models::ensure_runtime()?;
    println!("{} from {} ({})", runtime.build, runtime.path.display(), runtime.source);
    for (build, flag) in [(RuntimeBuild::OpenVino, "openvino"), (RuntimeBuild::Gpu, "cuda|tensorrt")] {
        match sdrt_models::RuntimeSearch::for_build(build).locate() {
            Ok(found) => println!("{build} for --provider {flag}: {} ({})", found.path.display(), found.source),
            Err(_) => println!("{build} for --provider {flag}: not installed (`{}`)", build.provision_command()),
        }
    }
    match sdrt_models::cpu_bf16_extension() {
        Some(extension) => println!("CPU computes bf16 natively ({extension}): --provider openvino runs bf16"),
        None => println!("CPU has no AVX512_BF16/AMX: --provider openvino runs fp32"),
    }
    print_cuda_report(&sdrt_models::CudaSearch::from_env().report(&ExecutionProvider::Cuda { device_id: 0 }));
    Ok(())
}

fn print_cuda_report(report: &sdrt_models::CudaReport) {
    match &report.driver {
        Ok(driver) => println!(
            "NVIDIA driver {} (CUDA {} needs {}+)",
            driver.version,
            sdrt_models::CUDA_MAJOR,
            sdrt_models::MIN_DRIVER_MAJOR
        ),
        Err(reason) => println!("NVIDIA driver: {reason}"),
    }
    for found in &report.libraries {
        match &found.location {
            Some((path, source)) => println!("  {}: {} ({source})", found.library.soname, path.display()),
            None => println!("  {}: missing ({})", found.library.soname, found.library.fix),
        }
    }
    let problems = report.problems();
    if problems.is_empty() {
        println!("--provider cuda can start here");
    } else {
        println!("--provider cuda cannot start here ({} problems above)", problems.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_report_says_each_cause_once() {
        let io = std::io::Error::other("disk on fire");
        let error = anyhow::Error::new(io).context("loading the model in m: disk on fire").context("txt2img");
        assert_eq!(error_report(&error), "txt2img\n  caused by: loading the model in m: disk on fire");
    }
}
