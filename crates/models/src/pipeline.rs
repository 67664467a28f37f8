//! Every component of a model folder loaded into sessions, checked against the detected family.

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::folder::{ModelFamily, ModelFolder, PredictionType};
use crate::lora::{AppliedLora, Component};
use crate::options::{ExecutionProvider, SessionConfig};
use crate::text_encoder::TextEncoder;
use crate::tokenizer::ClipTokenizer;
use crate::unet::Unet;
use crate::vae::{VaeDecoder, VaeEncoder};

/// A loaded Stable Diffusion model: tokenizers, encoders, UNet and VAE.
#[derive(Debug)]
pub struct LoadedModel {
    /// The folder and what was detected in it.
    pub folder: ModelFolder,
    /// `tokenizer/`.
    pub tokenizer: Option<ClipTokenizer>,
    /// `tokenizer_2/` (SDXL).
    pub tokenizer_2: Option<ClipTokenizer>,
    /// `text_encoder/`.
    pub text_encoder: Option<TextEncoder>,
    /// `text_encoder_2/` (SDXL).
    pub text_encoder_2: Option<TextEncoder>,
    /// `unet/`.
    pub unet: Unet,
    /// `vae_encoder/`, loaded on first use (only img2img and inpainting need it).
    vae_encoder: Option<VaeEncoder>,
    /// `vae_decoder/`.
    pub vae_decoder: VaeDecoder,
    /// The execution provider every session runs on.
    pub provider: ExecutionProvider,
    config: SessionConfig,
    /// The LoRA networks merged into the text encoders and UNet now.
    networks: ActiveNetworks,
    /// A standalone VAE file used instead of the model's own (A1111's `sd_vae`).
    external_vae: Option<std::sync::Arc<Checkpoint>>,
    /// Sessions of recent LoRA sets, most recent first (at most `config.network_cache`).
    cached_text: Vec<(Vec<NetworkKey>, TextEncoders)>,
    cached_unet: Vec<(Vec<NetworkKey>, Unet)>,
}

/// One network's identity in a component: (file, multiplier bits, dyn).
type NetworkKey = (std::path::PathBuf, u32, Option<usize>);
type TextEncoders = (Option<TextEncoder>, Option<TextEncoder>);

/// The sessions kept for `key`, taken out of `cache`.
fn take_cached<T>(cache: &mut Vec<(Vec<NetworkKey>, T)>, key: &[NetworkKey]) -> Option<T> {
    let index = cache.iter().position(|(k, _)| k.as_slice() == key)?;
    Some(cache.remove(index).1)
}

/// Keeps `sessions` for `key` as the most recent entry, dropping the oldest beyond `keep`.
fn keep_cached<T>(cache: &mut Vec<(Vec<NetworkKey>, T)>, key: Vec<NetworkKey>, sessions: T, keep: usize) {
    cache.insert(0, (key, sessions));
    cache.truncate(keep);
}

/// What each component's sessions were built with, to rebuild only those a new LoRA set changes.
#[derive(Debug, Clone, Default, PartialEq)]
struct ActiveNetworks {
    /// Each network's key, for the text encoders and for the UNet.
    text: Vec<NetworkKey>,
    unet: Vec<NetworkKey>,
}

impl ActiveNetworks {
    fn of(networks: &[AppliedLora]) -> Self {
        let entry = |n: &AppliedLora, multiplier: f32| (n.lora.path().to_owned(), multiplier.to_bits(), n.dyn_dim);
        Self {
            text: networks.iter().map(|n| entry(n, n.te_multiplier)).collect(),
            unet: networks.iter().map(|n| entry(n, n.unet_multiplier)).collect(),
        }
    }
}

impl LoadedModel {
    /// Loads every component of `folder` with `config`, then checks the sessions agree with the detected family
    /// (an SDXL folder whose UNet lacks `text_embeds`, or the reverse, is an error).
    pub fn load(folder: ModelFolder, config: &SessionConfig) -> Result<Self> {
        let _span = tracing::info_span!("models::load_model", model = %folder.name()).entered();
        if let Some(checkpoint) = folder.checkpoint.clone() {
            return Self::load_checkpoint(folder, &checkpoint, config);
        }
        let [eps_1, eps_2] = folder.text_encoder_layer_norm_eps;
        let parts = load_components(
            config.parallel_load,
            || load_text_encoder("text_encoder", folder.text_encoder.as_deref(), config, eps_1),
            || load_text_encoder("text_encoder_2", folder.text_encoder_2.as_deref(), config, eps_2),
            || Unet::load(&folder.unet, config),
            || VaeDecoder::load(&folder.vae_decoder, config),
        )?;
        let mut folder = folder;
        check_unet_family(&mut folder, &parts.unet)?;
        Self::assemble(folder, parts, config)
    }

    /// The loaded components with the folder's tokenizers.
    fn assemble(folder: ModelFolder, parts: Components, config: &SessionConfig) -> Result<Self> {
        let tokenizer = folder.tokenizer.as_ref().map(ClipTokenizer::load).transpose()?;
        let tokenizer_2 = folder.tokenizer_2.as_ref().map(ClipTokenizer::load).transpose()?;
        Ok(Self {
            folder,
            tokenizer,
            tokenizer_2,
            text_encoder: parts.text_encoder,
            text_encoder_2: parts.text_encoder_2,
            unet: parts.unet,
            vae_encoder: None,
            vae_decoder: parts.vae_decoder,
            external_vae: None,
            provider: config.provider,
            config: config.clone(),
            networks: ActiveNetworks::default(),
            cached_text: Vec::new(),
            cached_unet: Vec::new(),
        })
    }

    /// Merges `networks` into the weights (A1111's `W += ΔW · scale · multiplier`), replacing the set merged
    /// before: only the text encoders and UNet whose networks or multipliers changed are rebuilt (from the
    /// checkpoint's weights plus the new ΔW; the VAE never), or taken back from the sessions kept for recent
    /// sets (`SessionConfig::network_cache`). Returns the modules left out, `file: module (why)`, which A1111
    /// logs and goes on without.
    pub fn apply_networks(&mut self, networks: &[AppliedLora]) -> Result<Vec<String>> {
        let wanted = ActiveNetworks::of(networks);
        if wanted == self.networks {
            return Ok(Vec::new());
        }
        let Some(checkpoint) = self.folder.checkpoint.clone() else {
            return Err(Error::Family {
                folder: self.folder.root.clone(),
                problem: "LoRA networks apply to single-file checkpoints (.safetensors); this is an ONNX export"
                    .to_owned(),
            });
        };
        let _span = tracing::info_span!("models::apply_networks", networks = networks.len()).entered();
        let applied = crate::lora::apply(&checkpoint, networks)?;
        let deltas = |component| applied.deltas.get(&component).filter(|d| !d.is_empty());
        let keep = self.config.network_cache;
        if wanted.text != self.networks.text {
            let built = match take_cached(&mut self.cached_text, &wanted.text) {
                Some(encoders) => encoders,
                None => {
                    let build = |index: usize, present: bool| {
                        present
                            .then(|| {
                                let deltas = deltas(Component::TextEncoder(index));
                                checkpoint.load_text_encoder(index, &self.config, deltas)
                            })
                            .transpose()
                    };
                    (build(0, self.text_encoder.is_some())?, build(1, self.text_encoder_2.is_some())?)
                }
            };
            let previous = (
                std::mem::replace(&mut self.text_encoder, built.0),
                std::mem::replace(&mut self.text_encoder_2, built.1),
            );
            keep_cached(&mut self.cached_text, self.networks.text.clone(), previous, keep);
        }
        if wanted.unet != self.networks.unet {
            let built = match take_cached(&mut self.cached_unet, &wanted.unet) {
                Some(unet) => unet,
                None => checkpoint.load_unet(&self.config, deltas(Component::Unet))?,
            };
            let previous = std::mem::replace(&mut self.unet, built);
            keep_cached(&mut self.cached_unet, self.networks.unet.clone(), previous, keep);
        }
        self.networks = wanted;
        for skipped in &applied.skipped {
            tracing::warn!("LoRA module left out: {skipped}");
        }
        Ok(applied.skipped)
    }

    /// Builds every component's graph from the checkpoint and loads it; decides an SD 2.x checkpoint's
    /// prediction type with A1111's UNet test when nothing else did.
    fn load_checkpoint(mut folder: ModelFolder, checkpoint: &Checkpoint, config: &SessionConfig) -> Result<Self> {
        let text_count = if folder.family == ModelFamily::Sdxl { 2 } else { 1 };
        let load_text =
            |index: usize| (index < text_count).then(|| checkpoint.load_text_encoder(index, config, None)).transpose();
        let mut parts = load_components(
            config.parallel_load,
            || load_text(0),
            || load_text(1),
            || checkpoint.load_unet(config, None),
            || checkpoint.load_vae_decoder(config),
        )?;
        if checkpoint.needs_prediction_test() {
            let v = parts.unet.a1111_v_prediction_test()?;
            folder.scheduler.prediction_type = if v { PredictionType::VPrediction } else { PredictionType::Epsilon };
            folder.detected_by.push(format!(
                "A1111's SD 2.x UNet test (mean of output − input below −1 on constant inputs): {}",
                folder.scheduler.prediction_type
            ));
        }
        Self::assemble(folder, parts, config)
    }

    /// Decodes and encodes with the standalone VAE file `vae` (`*.vae.safetensors` or a `models/VAE` file, with or
    /// without `first_stage_model.`) instead of the model's own, or with the model's own again for `None`
    /// (A1111's `sd_vae`). Only the VAE sessions are rebuilt; the same file again changes nothing.
    pub fn apply_vae(&mut self, vae: Option<&std::path::Path>) -> Result<()> {
        if self.external_vae.as_deref().map(Checkpoint::path) == vae {
            return Ok(());
        }
        let _span = tracing::info_span!("models::apply_vae", vae = ?vae).entered();
        let external = match vae {
            Some(path) => {
                let mut file = Checkpoint::open(path, crate::CheckpointOptions::default())?;
                // A VAE made for a model has its GroupNorm groups; without its own .yaml, take the model's.
                if let Some(base) = &self.folder.checkpoint
                    && !crate::checkpoint::sibling_yaml(path).is_file()
                {
                    file.arch.norm_groups = base.arch.norm_groups;
                }
                if file.kind() != crate::CheckpointKind::Vae {
                    return Err(file.file.file_error(
                        "is a whole model, not a VAE: select a *.vae.safetensors or a file from models/VAE".to_owned(),
                    ));
                }
                Some(std::sync::Arc::new(file))
            }
            None => None,
        };
        self.vae_decoder = match (&external, &self.folder.checkpoint) {
            (Some(vae), _) => vae.load_vae_decoder(&self.config)?,
            (None, Some(checkpoint)) => checkpoint.load_vae_decoder(&self.config)?,
            (None, None) => VaeDecoder::load(&self.folder.vae_decoder, &self.config)?,
        };
        self.vae_encoder = None;
        self.external_vae = external;
        Ok(())
    }

    /// The standalone VAE file in use, if any.
    pub fn vae_file(&self) -> Option<&std::path::Path> {
        self.external_vae.as_deref().map(Checkpoint::path)
    }

    /// Whether the folder has a VAE encoder (img2img and inpainting need one).
    pub fn has_vae_encoder(&self) -> bool {
        self.folder.vae_encoder.is_some() || self.external_vae.is_some()
    }

    /// Whether the VAE encoder session exists yet.
    pub fn vae_encoder_loaded(&self) -> bool {
        self.vae_encoder.is_some()
    }

    /// The VAE encoder, loaded on first use.
    pub fn vae_encoder(&mut self) -> Result<&mut VaeEncoder> {
        let encoder = match self.vae_encoder.take() {
            Some(encoder) => encoder,
            None if self.external_vae.is_some() => {
                let vae = self.external_vae.clone();
                vae.as_deref().map(|v| v.load_vae_encoder(&self.config)).transpose()?.ok_or_else(|| Error::Family {
                    folder: self.folder.root.clone(),
                    problem: "no VAE file".to_owned(),
                })?
            }
            None if self.folder.checkpoint.is_some() => {
                let checkpoint = self.folder.checkpoint.clone();
                checkpoint.as_deref().map(|c| c.load_vae_encoder(&self.config)).transpose()?.ok_or_else(|| {
                    Error::Family { folder: self.folder.root.clone(), problem: "no checkpoint".to_owned() }
                })?
            }
            None => {
                let path = self.folder.vae_encoder.as_ref().ok_or_else(|| Error::Family {
                    folder: self.folder.root.clone(),
                    problem: "there is no vae_encoder/model.onnx, which img2img and inpainting need; export the \
                              model with its VAE encoder"
                        .to_owned(),
                })?;
                VaeEncoder::load(path, &self.config)?
            }
        };
        Ok(self.vae_encoder.insert(encoder))
    }
}

fn load_text_encoder(
    component: &str,
    path: Option<&std::path::Path>,
    config: &SessionConfig,
    eps: f32,
) -> Result<Option<TextEncoder>> {
    path.map(|path| TextEncoder::load(component, path, config, eps)).transpose()
}

/// The sessions of one model.
struct Components {
    text_encoder: Option<TextEncoder>,
    text_encoder_2: Option<TextEncoder>,
    unet: Unet,
    vae_decoder: VaeDecoder,
}

/// Runs the four loaders, side by side when `parallel`: sessions are independent, and creating one is mostly
/// graph optimisation on one core, so the UNet dominates and the others hide behind it.
fn load_components(
    parallel: bool,
    text_1: impl FnOnce() -> Result<Option<TextEncoder>> + Send,
    text_2: impl FnOnce() -> Result<Option<TextEncoder>> + Send,
    unet: impl FnOnce() -> Result<Unet>,
    decoder: impl FnOnce() -> Result<VaeDecoder> + Send,
) -> Result<Components> {
    let (text_encoder, text_encoder_2, unet, vae_decoder) = if parallel {
        std::thread::scope(|scope| {
            let text_1 = scope.spawn(text_1);
            let text_2 = scope.spawn(text_2);
            let decoder = scope.spawn(decoder);
            let unet = unet();
            (joined(text_1), joined(text_2), unet, joined(decoder))
        })
    } else {
        (text_1(), text_2(), unet(), decoder())
    };
    Ok(Components {
        text_encoder: text_encoder?,
        text_encoder_2: text_encoder_2?,
        unet: unet?,
        vae_decoder: vae_decoder?,
    })
}

/// The result of a scoped loader thread; a panic inside ONNX Runtime's loader is re-raised here.
fn joined<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn check_unet_family(folder: &mut ModelFolder, unet: &Unet) -> Result<()> {
    let is_xl = folder.family == ModelFamily::Sdxl;
    if is_xl != unet.takes_sdxl_conditioning() {
        return Err(Error::Family {
            folder: folder.root.clone(),
            problem: if is_xl {
                "the configs say SDXL, but unet/model.onnx does not take text_embeds and time_ids".to_owned()
            } else {
                format!("the configs say {}, but unet/model.onnx takes SDXL's text_embeds and time_ids", folder.family)
            },
        });
    }
    match (folder.inpainting, unet.in_channels()) {
        (false, Some(9)) => {
            folder.inpainting = true;
            folder.detected_by.push("unet session input sample has 9 channels → inpainting".to_owned());
        }
        (true, Some(channels)) if channels != 9 => {
            return Err(Error::Family {
                folder: folder.root.clone(),
                problem: format!(
                    "unet/config.json says in_channels 9 (inpainting) but the model's sample input has {channels}"
                ),
            });
        }
        _ => {}
    }
    Ok(())
}
