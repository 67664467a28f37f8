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
}

#[derive(Args, Debug)]
pub struct ModelsArgs {
    /// A model folder, or a folder of model folders.
    pub dir: PathBuf,
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
    let mut out = std::io::stdout().lock();
    if args.json {
        let json = serde_json::json!({
            "info": text,
            "parameters": parsed.to_a1111_parameters(),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        return Ok(());
    }
    writeln!(out, "{text}\n")?;
    writeln!(out, "Prompt: {}", parsed.prompt)?;
    if !parsed.negative_prompt.is_empty() {
        writeln!(out, "Negative prompt: {}", parsed.negative_prompt)?;
    }
    for (key, value) in &parsed.params {
        writeln!(out, "{key}: {value}")?;
    }
    Ok(())
}

pub fn models(args: &ModelsArgs) -> Result<()> {
    let folders: Vec<PathBuf> = if args.dir.join("model_index.json").is_file() {
        vec![args.dir.clone()]
    } else {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&args.dir)
            .with_context(|| format!("reading {}", args.dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("model_index.json").is_file())
            .collect();
        found.sort();
        found
    };
    if folders.is_empty() {
        anyhow::bail!("{} holds no model folder (a folder with model_index.json)", args.dir.display());
    }
    let mut out = std::io::stdout().lock();
    for folder in folders {
        match sdrt_models::ModelFolder::open(&folder) {
            Ok(model) => {
                let hash = sdrt_io::model_hash(&folder).unwrap_or_else(|e| format!("unavailable ({e})"));
                writeln!(out, "{model}\n  Model hash: {hash}\n")?;
            }
            Err(e) => writeln!(out, "{}: not loadable: {e}\n", folder.display())?,
        }
    }
    Ok(())
}
