//! `sdrt convert`: an A1111 `.safetensors` checkpoint written as a standard optimum-layout ONNX folder.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::generate::{GraphArgs, PredictionArg};

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// The `.safetensors` checkpoint (a sibling `.yaml` is read as A1111 does).
    pub checkpoint: PathBuf,
    /// The folder to write (must not exist, or be empty).
    pub outdir: PathBuf,
    /// What the checkpoint predicts when its `.yaml` does not say: `eps` or `v`.
    #[arg(long, value_enum)]
    pub prediction: Option<PredictionArg>,
    /// Graph choices; `--graph-attention plain --no-transposed-matmul` writes only standard ONNX operators (the
    /// defaults use ONNX Runtime's `com.microsoft` MultiHeadAttention and FusedMatMul).
    #[command(flatten)]
    pub graph: GraphArgs,
}

pub fn convert(args: &ConvertArgs) -> Result<()> {
    let occupied = args.outdir.read_dir().map(|mut entries| entries.next().is_some()).unwrap_or(false);
    if occupied {
        bail!("{} is not empty; choose a new folder for the converted model", args.outdir.display());
    }
    sdrt_models::ensure_runtime()?;
    let options = sdrt_models::CheckpointOptions { prediction: args.prediction.map(Into::into) };
    let checkpoint = sdrt_models::Checkpoint::open(&args.checkpoint, options)?;
    let started = std::time::Instant::now();
    checkpoint
        .convert(&args.outdir, args.graph.options()?)
        .with_context(|| format!("converting {}", args.checkpoint.display()))?;
    let folder = sdrt_models::ModelFolder::open(&args.outdir)?;
    println!("wrote {} in {:.1} s\n{folder}", args.outdir.display(), started.elapsed().as_secs_f64());
    Ok(())
}
