//! The A1111 settings a generation depends on beyond its request (`randn_source`, clip skip, ENSD, …), and
//! applying them by name from `override_settings` or `POST /sdapi/v1/options`.

use std::path::PathBuf;
use std::sync::Arc;

use sdrt_api_types::RequestLimits;
use sdrt_io::StyleDatabase;
use sdrt_processing::{CpuKernel, Emphasis, RandomSource};
use serde_json::{Map, Value};

/// The A1111 settings (not request fields) a generation depends on; requests may override them through
/// `override_settings` (`randn_source`, `CLIP_stop_at_last_layers`, `eta_noise_seed_delta`, `emphasis`).
#[derive(Debug, Clone)]
pub struct GenerationSettings {
    /// Model name or folder; `None` = the provider's resident model.
    pub model: Option<String>,
    /// A1111's "Live preview display period": a preview every N sampling steps; 0 or less = none.
    pub show_progress_every_n_steps: i64,
    /// A1111's "Random number generator source".
    pub randn_source: RandomSource,
    /// A1111's "Clip skip".
    pub clip_skip: u32,
    /// A1111's "Eta noise seed delta".
    pub eta_noise_seed_delta: u64,
    /// A1111's "Emphasis mode".
    pub emphasis: Emphasis,
    /// A1111's `pad_cond_uncond`: pad prompts of different chunk counts to share one UNet call.
    pub pad_cond_uncond: bool,
    /// A1111's "Inpainting conditioning mask strength" (`inpainting_mask_weight`, infotext "Conditional mask
    /// weight"): how much of the masked area inpainting UNets see blanked out (1 = all of it).
    pub inpainting_mask_weight: f64,
    /// A folder of upscaler models (`<name>.onnx`, ESRGAN family) that `hr_upscaler` may name.
    pub upscaler_dir: Option<PathBuf>,
    /// A1111's `ESRGAN_tile`: the tile side upscaler models run on (0 = the whole image at once).
    pub esrgan_tile: u32,
    /// A1111's `ESRGAN_tile_overlap`: pixels the tiles overlap by.
    pub esrgan_tile_overlap: u32,
    /// Where images are saved; `None` keeps them in memory only.
    pub outdir: Option<PathBuf>,
    /// A1111 file name pattern (`None` = `[seed]-[prompt_spaces]` after the number).
    pub filename_pattern: Option<String>,
    /// Also save each image's final latents as a float32 `.npy` beside it.
    pub save_latents: bool,
    /// The `Version` infotext value.
    pub version: String,
    /// What one request may ask for (sizes, steps, images, prompt length); `sdrt serve --max-*`.
    pub limits: RequestLimits,
    /// A1111's saved prompt styles (`styles.csv`), which a request's `styles` names.
    pub styles: Arc<StyleDatabase>,
    /// The LoRA networks prompts may name (`<lora:NAME:…>`).
    pub loras: Arc<crate::LoraLibrary>,
    /// A1111's "SD VAE" (`sd_vae`): `Automatic`, `None` or a file name from `vaes`.
    pub sd_vae: String,
    /// The standalone VAE files `sd_vae` may name.
    pub vaes: Arc<crate::VaeLibrary>,
    /// The textual-inversion embeddings prompts may name.
    pub embeddings: Arc<crate::EmbeddingLibrary>,
}

impl Default for GenerationSettings {
    fn default() -> Self {
        Self {
            show_progress_every_n_steps: 10,
            model: None,
            randn_source: RandomSource::Gpu,
            clip_skip: 1,
            eta_noise_seed_delta: 0,
            emphasis: Emphasis::Original,
            pad_cond_uncond: false,
            inpainting_mask_weight: 1.0,
            upscaler_dir: None,
            esrgan_tile: 192,
            esrgan_tile_overlap: 8,
            outdir: None,
            filename_pattern: None,
            save_latents: false,
            version: format!("sdrt-{}", env!("CARGO_PKG_VERSION")),
            limits: RequestLimits::default(),
            styles: Arc::default(),
            loras: Arc::default(),
            sd_vae: "Automatic".to_owned(),
            vaes: Arc::default(),
            embeddings: Arc::default(),
        }
    }
}

/// Parses A1111's random source names (`GPU`, `CPU`, `NV`, any case).
pub fn parse_randn_source(name: &str) -> Option<RandomSource> {
    match name.to_ascii_lowercase().as_str() {
        "gpu" => Some(RandomSource::Gpu),
        "cpu" => Some(RandomSource::Cpu(CpuKernel::default())),
        "nv" => Some(RandomSource::Nv),
        _ => None,
    }
}

/// The A1111 name of a random source.
pub fn randn_source_name(source: RandomSource) -> &'static str {
    match source {
        RandomSource::Gpu => "GPU",
        RandomSource::Cpu(_) => "CPU",
        RandomSource::Nv => "NV",
    }
}

/// A setting value sdrt cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingProblem {
    /// A1111's setting name (`randn_source`, `CLIP_stop_at_last_layers`, …).
    pub key: &'static str,
    /// What is wrong and how to fix it.
    pub problem: String,
}

impl GenerationSettings {
    /// Applies A1111 settings by name (`override_settings`, `POST /sdapi/v1/options`): `randn_source`,
    /// `CLIP_stop_at_last_layers`, `eta_noise_seed_delta`, `emphasis`, `pad_cond_uncond`,
    /// `inpainting_mask_weight`, `ESRGAN_tile`, `ESRGAN_tile_overlap`, `show_progress_every_n_steps`,
    /// `live_previews_enable`, `sd_model_checkpoint`, `sd_vae`. Returns the names it does not implement (they change nothing, as unknown
    /// settings do in A1111).
    pub fn apply_settings(&mut self, entries: &Map<String, Value>) -> std::result::Result<Vec<String>, SettingProblem> {
        let bad = |key: &'static str, problem: String| SettingProblem { key, problem };
        let mut ignored = Vec::new();
        for (key, value) in entries {
            match key.as_str() {
                "randn_source" => {
                    let name = value.as_str().unwrap_or_default();
                    self.randn_source = parse_randn_source(name)
                        .ok_or_else(|| bad("randn_source", format!("{value} is not a source; use GPU, CPU or NV")))?;
                }
                "CLIP_stop_at_last_layers" => {
                    self.clip_skip =
                        value.as_u64().filter(|n| (1..=12).contains(n)).ok_or_else(|| {
                            bad("CLIP_stop_at_last_layers", format!("{value} is not a layer count 1–12"))
                        })? as u32;
                }
                "eta_noise_seed_delta" => {
                    self.eta_noise_seed_delta = value
                        .as_u64()
                        .ok_or_else(|| bad("eta_noise_seed_delta", format!("{value} is not a non-negative integer")))?;
                }
                "emphasis" => {
                    let name = value.as_str().unwrap_or_default();
                    self.emphasis = name.parse().map_err(|_| {
                        bad("emphasis", format!("{value} is not a mode; use Original, No norm or None"))
                    })?;
                }
                "pad_cond_uncond" => {
                    self.pad_cond_uncond = value
                        .as_bool()
                        .ok_or_else(|| bad("pad_cond_uncond", format!("{value} is not true or false")))?;
                }
                "inpainting_mask_weight" => {
                    self.inpainting_mask_weight = value
                        .as_f64()
                        .filter(|w| (0.0..=1.0).contains(w))
                        .ok_or_else(|| bad("inpainting_mask_weight", format!("{value} is not a weight from 0 to 1")))?;
                }
                "ESRGAN_tile" | "ESRGAN_tile_overlap" => {
                    let pixels = value.as_u64().filter(|v| *v <= 4096).ok_or_else(|| {
                        let key = if key == "ESRGAN_tile" { "ESRGAN_tile" } else { "ESRGAN_tile_overlap" };
                        bad(key, format!("{value} is not a pixel count from 0 to 4096"))
                    })? as u32;
                    if key == "ESRGAN_tile" {
                        self.esrgan_tile = pixels;
                    } else {
                        self.esrgan_tile_overlap = pixels;
                    }
                }
                "sd_vae" => {
                    // A1111 takes any name and falls back to the model's own VAE when no file has it (with a
                    // warning at generation); only names of listed files are ever opened.
                    self.sd_vae = value
                        .as_str()
                        .ok_or_else(|| {
                            bad("sd_vae", format!("{value} is not a VAE name; use Automatic, None or a file name"))
                        })?
                        .to_owned();
                }
                "show_progress_every_n_steps" => {
                    self.show_progress_every_n_steps = value.as_i64().ok_or_else(|| {
                        bad("show_progress_every_n_steps", format!("{value} is not a step count (-1 disables)"))
                    })?;
                }
                "live_previews_enable" => {
                    let enabled = value
                        .as_bool()
                        .ok_or_else(|| bad("live_previews_enable", format!("{value} is not true or false")))?;
                    if !enabled {
                        self.show_progress_every_n_steps = -1;
                    }
                }
                "sd_model_checkpoint" => {
                    let name = value.as_str().ok_or_else(|| {
                        bad("sd_model_checkpoint", format!("{value} is not a model name; send a string"))
                    })?;
                    self.model = Some(name.to_owned());
                }
                other => ignored.push(other.to_owned()),
            }
        }
        Ok(ignored)
    }
}
