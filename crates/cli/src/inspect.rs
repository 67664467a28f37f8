//! `sdrt png-info` and `sdrt models`: read what an image or a model folder holds.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct PngInfoArgs {
    /// A PNG, JPEG or WebP image written by sdrt or A1111.
    pub file: PathBuf,
    /// Print the parsed fields as A1111's /sdapi/v1/png-info JSON.
    #[arg(long)]
    pub json: bool,
    /// LoRA folders (A1111's `models/Lora`): pasted `<lora:NAME:…>` tags are renamed to the local files with the
    /// infotext's `Lora hashes`, as A1111's paste does.
    #[arg(long)]
    pub lora_dir: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ModelsArgs {
    /// A model folder or `.safetensors` checkpoint, or a folder of them (subfolders included).
    pub dir: PathBuf,
    /// Prediction type of checkpoints whose `.yaml` does not say (`eps` or `v`).
    #[arg(long, value_enum)]
    pub prediction: Option<crate::generate::PredictionArg>,
}

pub fn png_info(args: &PngInfoArgs) -> Result<()> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let info = sdrt_io::read_image_info(&bytes).with_context(|| format!("reading {}", args.file.display()))?;
    let Some(text) = info.infotext.clone() else {
        anyhow::bail!(
            "{} holds no generation parameters (no `parameters` text chunk or EXIF comment)",
            args.file.display()
        );
    };
    let parsed = sdrt_io::ParsedInfotext::parse(&text);
    let mut parameters = parsed.to_a1111_parameters();
    if !args.lora_dir.is_empty() {
        let loras = sdrt_runtime::LoraLibrary::new(args.lora_dir.clone()).context("--lora-dir")?;
        loras.rename_pasted(&mut parameters);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let json = serde_json::json!({ "info": text, "parameters": parameters });
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        return Ok(());
    }
    writeln!(out, "{text}\n")?;
    writeln!(out, "Prompt: {}", parameters.get("Prompt").and_then(|p| p.as_str()).unwrap_or(&parsed.prompt))?;
    if !parsed.negative_prompt.is_empty() {
        writeln!(out, "Negative prompt: {}", parsed.negative_prompt)?;
    }
    for (key, value) in &parsed.params {
        writeln!(out, "{key}: {value}")?;
    }
    Ok(())
}

pub fn models(args: &ModelsArgs) -> Result<()> {
    let single = args.dir.join("model_index.json").is_file() || sdrt_models::is_checkpoint_file(&args.dir);
    let models: Vec<PathBuf> = if single {
        vec![args.dir.clone()]
    } else {
        let mut provider = sdrt_runtime::ModelProvider::new(sdrt_models::SessionConfig::default());
        provider.register_folder_of_models(&args.dir).with_context(|| format!("reading {}", args.dir.display()))?;
        provider.registered().values().cloned().collect()
    };
    if models.is_empty() {
        anyhow::bail!(
            "{} holds no model (a folder with model_index.json or a .safetensors checkpoint)",
            args.dir.display()
        );
    }
    let mut out = std::io::stdout().lock();
    for path in models {
        let options = sdrt_models::CheckpointOptions { prediction: args.prediction.map(Into::into) };
        match sdrt_models::ModelFolder::open_with(&path, options) {
            Ok(model) => {
                let hash = sdrt_io::model_hash(&path).unwrap_or_else(|e| format!("unavailable ({e})"));
                writeln!(out, "{model}")?;
                if let Some(checkpoint) = &model.checkpoint {
                    writeln!(out, "  checkpoint tensors: {}", checkpoint.dtypes())?;
                }
                writeln!(out, "  Model hash: {hash}\n")?;
            }
            Err(e) => writeln!(out, "{}: not loadable: {e}\n", path.display())?,
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct GridArgs {
    /// Where to write the grid (PNG, JPEG or WebP, by its extension).
    #[arg(long)]
    pub out: PathBuf,
    /// Rows [default: A1111's round(√n)].
    #[arg(long)]
    pub rows: Option<u32>,
    /// The images, row by row.
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// `sdrt grid`: images laid out as A1111 lays out its grids.
pub fn grid(args: &GridArgs) -> Result<()> {
    let images = args
        .images
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let image = sdrt_io::load_image(&bytes).with_context(|| format!("{}: not an image", path.display()))?;
            Ok(sdrt_io::flatten(&image))
        })
        .collect::<Result<Vec<_>>>()?;
    let grid = sdrt_io::image_grid(&images, args.rows)?;
    grid.save(&args.out).with_context(|| format!("writing {}", args.out.display()))?;
    println!("{} ({}×{}, {} images)", args.out.display(), grid.width(), grid.height(), images.len());
    Ok(())
}
