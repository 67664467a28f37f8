//! `sdrt bench`: the same generation N times after warm-up, through the runner, reporting per-stage medians,
//! it/s, time inside ONNX Runtime, peak RSS and the provider, as text and JSON.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use sdrt_api_types::Txt2ImgRequest;
use sdrt_models::LoadedModel;
use sdrt_runtime::{GenerationJob, JobControl, NoProgress, ProcessingRequest, ProcessingRunner};

use crate::generate::GenerateArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub common: GenerateArgs,
    /// Timed runs.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Also save the images of every run (off: the save stage is skipped).
    #[arg(long)]
    pub save: bool,
    /// Load the VAE encoder right after the model (txt2img never needs it; this shows what loading it
    /// lazily saves in load time and memory).
    #[arg(long)]
    pub load_vae_encoder: bool,
    /// Write the JSON report here as well.
    #[arg(long = "json-out", alias = "json-file")]
    pub json_out: Option<PathBuf>,
}

const STAGES: [&str; 6] = ["total", "prepare", "text_encode", "sample", "decode", "save"];
const COMPONENTS: [&str; 3] = ["text_encoder", "unet", "vae_decoder"];

/// Cumulative ONNX Runtime time per component of a loaded model.
fn onnx_times(model: &LoadedModel) -> [Duration; 3] {
    let time = |m: Option<&sdrt_models::OnnxModel>| m.map_or(Duration::ZERO, |m| m.run_stats().0);
    let text =
        time(model.text_encoder.as_ref().map(|e| e.model())) + time(model.text_encoder_2.as_ref().map(|e| e.model()));
    [text, time(Some(model.unet.model())), time(Some(model.vae_decoder.model()))]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Peak resident set size of this process (Linux `VmHWM`), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    let common = &args.common;
    let (settings, provider) = common.prepare(args.save)?;
    let model_name = settings.model.clone().unwrap_or_default();
    let handle = provider.get(&model_name).context("loading the model")?;
    let mut load_ms = handle.load_time.as_secs_f64() * 1e3;
    if args.load_vae_encoder {
        let started = std::time::Instant::now();
        let mut model = handle.model.lock().map_err(|_| anyhow::anyhow!("model lock poisoned"))?;
        model.vae_encoder().context("loading the VAE encoder")?;
        load_ms += started.elapsed().as_secs_f64() * 1e3;
    }
    let base = common.base_request(crate::generate::model_side(&settings, &provider));
    let runner = ProcessingRunner::new();
    let mut stage_ms: Vec<Vec<f64>> = vec![Vec::new(); STAGES.len()];
    let mut onnx_ms: Vec<Vec<f64>> = vec![Vec::new(); COMPONENTS.len() + 1];
    let mut it_per_s = Vec::new();
    for run in 0..args.warmup + args.runs {
        let request = Txt2ImgRequest { base: base.clone(), ..Txt2ImgRequest::default() };
        let before = onnx_times(&*handle.model.lock().map_err(|_| anyhow::anyhow!("model lock poisoned"))?);
        let job = GenerationJob::new(ProcessingRequest::Txt2Img(request), settings.clone(), provider.clone());
        let (_, metrics) = runner.run_with(job, std::sync::Arc::new(NoProgress), JobControl::default())?;
        let after = onnx_times(&*handle.model.lock().map_err(|_| anyhow::anyhow!("model lock poisoned"))?);
        if run < args.warmup {
            continue;
        }
        for (i, stage) in STAGES.iter().enumerate() {
            stage_ms[i].push(metrics.get(stage).as_secs_f64() * 1e3);
        }
        let deltas: Vec<f64> = after.iter().zip(&before).map(|(a, b)| (*a - *b).as_secs_f64() * 1e3).collect();
        onnx_ms[COMPONENTS.len()].push(deltas.iter().sum());
        for (i, delta) in deltas.into_iter().enumerate() {
            onnx_ms[i].push(delta);
        }
        it_per_s.push(metrics.iterations_per_second());
    }
    let runs_total_ms = stage_ms[0].clone();
    let medians: serde_json::Map<String, serde_json::Value> =
        STAGES.iter().zip(stage_ms.iter_mut()).map(|(s, v)| ((*s).to_owned(), median(v).into())).collect();
    let onnx: serde_json::Map<String, serde_json::Value> = COMPONENTS
        .iter()
        .chain(std::iter::once(&"total"))
        .zip(onnx_ms.iter_mut())
        .map(|(s, v)| ((*s).to_owned(), median(v).into()))
        .collect();
    let config = provider.session_config();
    let report = serde_json::json!({
        "provider": config.provider.to_string(),
        "precision": match config.provider {
            sdrt_models::ExecutionProvider::OpenVino { precision, .. } => precision.name(),
            _ => "fp32",
        },
        "cpu_bf16": sdrt_models::cpu_bf16_extension(),
        "model": handle.name,
        "width": base.width,
        "height": base.height,
        "steps": common.steps,
        "runs": args.runs,
        "warmup": args.warmup,
        "threads": config.resolved_intra_op_threads(),
        "session": {
            "optimization": format!("{:?}", config.optimization),
            "intra_op_spinning": config.intra_op_spinning,
            "prepacking": config.prepacking,
            "memory_arena": config.memory_arena.map_or("auto".to_owned(), |on| on.to_string()),
            "release_unet_memory": config.release_unet_memory.map_or("auto".to_owned(), |on| on.to_string()),
            "memory_pattern": config.memory_pattern,
            "bound_io": config.bound_io,
            "parallel_load": config.parallel_load,
            "vae_encoder_loaded": args.load_vae_encoder,
        },
        "load_ms": load_ms,
        "median_ms": medians,
        "runs_total_ms": runs_total_ms,
        "it_per_s": median(&mut it_per_s),
        "onnx_ms": onnx,
        "peak_rss_bytes": peak_rss_bytes(),
    });
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    if common.json {
        println!("{text}");
    } else {
        println!(
            "{} on {}, {}x{}, {} steps, {} runs after {} warm-up",
            handle.name, config.provider, base.width, base.height, common.steps, args.runs, args.warmup
        );
        println!("load {load_ms:.1} ms");
        for (stage, value) in &medians {
            println!("{stage:>12}: {:.2} ms (median)", value.as_f64().unwrap_or(0.0));
        }
        println!("  onnx total: {:.2} ms (median)", onnx["total"].as_f64().unwrap_or(0.0));
        println!("        it/s: {:.2}", report["it_per_s"].as_f64().unwrap_or(0.0));
    }
    Ok(())
}
