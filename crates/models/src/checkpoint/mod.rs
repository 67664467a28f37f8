//! A1111 single-file checkpoints: `.safetensors` state dicts with the original (LDM/SGM) key names, read
//! without Python, their architecture detected from keys and shapes, and their ONNX graphs built by
//! `crate::graph`.
//!
//! # Detection rules
//!
//! Keys decide the family, first match wins:
//! 1. any `lora_up`/`lora_down`/`lora_A`/`lora_B`/`hada_`/`lokr_` key → a LoRA/LyCORIS file: refused;
//! 2. `conditioner.embedders.1.model.ln_final.weight` and `model.diffusion_model.label_emb.0.0.weight` →
//!    **SDXL** (text encoders `conditioner.embedders.0.transformer.` CLIP ViT-L and
//!    `conditioner.embedders.1.model.` OpenCLIP ViT-bigG);
//! 3. `cond_stage_model.model.ln_final.weight` → **SD 2.x** (OpenCLIP ViT-H, penultimate layer);
//! 4. `cond_stage_model.transformer.text_model.final_layer_norm.weight` → **SD 1.x** (CLIP ViT-L);
//! 5. `encoder.conv_in.weight` + `decoder.conv_in.weight` (with or without `first_stage_model.`) and no UNet →
//!    a standalone **VAE**;
//! 6. anything else: an unknown architecture, reported with the keys that were looked for.
//!
//! `model.diffusion_model.input_blocks.0.0.weight` with 9 input channels → **inpainting**. `model_ema.*`
//! copies are ignored (A1111 runs the `model.*` weights).
//!
//! What the weights cannot show comes from a sibling `<name>.yaml` (A1111's rule) when present, else the
//! family defaults: `parameterization` (v or eps), the UNet's `num_heads` (SD 1.x default 8) or
//! `num_head_channels` (SD 2.x/SDXL default 64), SDXL's time-id embedding width (`outdim` of the size
//! embedders, default 256); text encoders have width/64 heads. Two keys under a top-level `sdrt:` block cover
//! what LDM hard-codes and only sdrt's tiny test models change: `norm_groups` (32) and
//! `text_encoder_heads` (a list, one per encoder).
//!
//! The prediction type is, in order: the caller's override (`--prediction`), the yaml's `parameterization`,
//! for SD 2.x A1111's own test (one UNet call on constant inputs: v-prediction when the output minus the
//! input averages below −1), else epsilon.

mod build;
mod detect;
mod file;
mod pickle;

use std::path::{Path, PathBuf};

pub(crate) use build::model_folder;
pub(crate) use detect::{Architecture, PredictionSource};
pub use detect::{CheckpointKind, native_image_size};
pub(crate) use file::TensorFile;

use crate::error::{Error, Result};

/// A view of a checkpoint's tensors under one key prefix (`model.diffusion_model.`, `first_stage_model.`…).
#[derive(Clone, Copy)]
pub(crate) struct Weights<'f> {
    file: &'f TensorFile,
    prefix: &'f str,
    /// LoRA ΔW terms added to the weights they name.
    deltas: Option<&'f crate::lora::WeightDeltas>,
}

impl<'f> Weights<'f> {
    pub(crate) fn new(file: &'f TensorFile, prefix: &'f str) -> Self {
        Self { file, prefix, deltas: None }
    }

    /// The same view with `deltas` added to the weights they name.
    pub(crate) fn with_deltas(self, deltas: Option<&'f crate::lora::WeightDeltas>) -> Self {
        Self { deltas, ..self }
    }

    /// The ΔW terms to add to weight `key`.
    pub(crate) fn deltas(&self, key: &str) -> &'f [crate::lora::Delta] {
        self.deltas.map_or(&[], |d| d.get(&self.full_key(key)))
    }

    pub(crate) fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.file.entry(&self.full_key(key)).is_some()
    }

    pub(crate) fn shape(&self, key: &str) -> Option<Vec<usize>> {
        self.file.entry(&self.full_key(key)).map(|e| e.shape.clone())
    }

    /// Keys under the prefix, without it.
    pub(crate) fn names(&self) -> impl Iterator<Item = &'f str> + 'f {
        let prefix = self.prefix;
        self.file.names().filter_map(move |k| k.strip_prefix(prefix))
    }

    pub(crate) fn entry(&self, key: &str) -> Option<&'f file::TensorEntry> {
        self.file.entry(&self.full_key(key))
    }

    pub(crate) fn path(&self) -> &'f Path {
        self.file.path()
    }

    pub(crate) fn f32(&self, key: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        self.file.f32(&self.full_key(key))
    }

    pub(crate) fn error(&self, key: &str, problem: String) -> Error {
        self.file.tensor_error(&self.full_key(key), problem)
    }
}

/// What the caller may decide instead of the detection rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckpointOptions {
    /// Force epsilon or v-prediction (`--prediction eps|v`).
    pub prediction: Option<crate::folder::PredictionType>,
}

/// An opened checkpoint file and what was detected in it.
pub struct Checkpoint {
    pub(crate) file: TensorFile,
    pub(crate) arch: Architecture,
}

impl PartialEq for Checkpoint {
    fn eq(&self, other: &Self) -> bool {
        self.path() == other.path()
    }
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint").field("path", &self.file.path()).field("kind", &self.arch.kind).finish()
    }
}

impl Checkpoint {
    /// Opens `path` (a `.safetensors` file), validates its header and detects the architecture.
    pub fn open(path: &Path, options: CheckpointOptions) -> Result<Self> {
        let _span = tracing::info_span!("models::open_checkpoint", path = %path.display()).entered();
        let file = TensorFile::open(path)?;
        let arch = detect::detect(&file, options)?;
        Ok(Self { file, arch })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// A full pipeline or a standalone VAE.
    pub fn kind(&self) -> CheckpointKind {
        self.arch.kind
    }

    /// What decided each detected property, for `sdrt models`.
    pub fn detected_by(&self) -> &[String] {
        &self.arch.detected_by
    }

    /// The dtypes of the stored tensors, e.g. `F16` or `F32, F16`.
    pub fn dtypes(&self) -> String {
        let mut seen: Vec<String> = Vec::new();
        for name in self.file.names() {
            if let Some(entry) = self.file.entry(name) {
                let dtype = format!("{:?}", entry.dtype);
                if !seen.contains(&dtype) {
                    seen.push(dtype);
                }
            }
        }
        seen.join(", ")
    }
}

/// One tensor of a `.safetensors` file, as f32.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Its key.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, converted from f32, f16, bf16 or f64.
    pub values: Vec<f32>,
}

/// Every tensor of the file at `path` (small files: embeddings): a `.safetensors` file, header checked as for
/// checkpoints, or a `torch.save` `.pt`/`.bin` file read by a restricted reader that executes nothing and refuses
/// anything but tensors in dictionaries (nested keys joined with `.`).
pub fn read_tensors(path: &Path) -> Result<Vec<NamedTensor>> {
    let torch = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["pt", "bin"].contains(&e.to_ascii_lowercase().as_str()));
    if torch {
        return pickle::read_torch_tensors(path);
    }
    let file = TensorFile::open(path)?;
    file.names()
        .map(|name| {
            let (shape, values) = file.f32(name)?;
            Ok(NamedTensor { name: name.to_owned(), shape, values })
        })
        .collect()
}

/// Whether `path` names a file sdrt treats as a checkpoint (by extension).
pub fn is_checkpoint_file(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| ["safetensors", "ckpt", "pt", "pth"].contains(&e.to_ascii_lowercase().as_str()))
}

/// The sibling `<stem>.yaml` A1111 reads a checkpoint's config from.
pub(crate) fn sibling_yaml(path: &Path) -> PathBuf {
    path.with_extension("yaml")
}
